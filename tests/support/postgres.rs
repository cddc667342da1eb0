//! A throwaway PostgreSQL with the FrostGuard schema loaded.

use crate::ports::PortReservation;
use crate::process::{ChildGuard, LineLog};
use crate::tempdir::TempDir;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database the schema is loaded into.
pub const DATABASE: &str = "frostguard";

/// The FrostGuard schema copied into the repository (`tests/fixtures/frostguard-schema.sql`).
pub fn schema_path() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/frostguard-schema.sql")
}

/// Which FrostGuard tables a [`Postgres`] starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `tests/fixtures/frostguard-schema.sql`: the columns the processors use, `retry_count` an integer.
    Fixture,
    /// `tests/fixtures/frostguard-migrated.sql`: the delivery tables exactly as FrostGuard's journaled
    /// migrations leave a deployed database (`retry_count varchar(10) DEFAULT '0'`).
    Migrated,
    /// [`Schema::Migrated`] plus the one statement of FrostGuard's unjournaled migration 0009 that turns
    /// `retry_count` into an integer (a database someone migrated by hand).
    MigratedIntegerRetryCount,
}

impl Schema {
    fn files(self) -> Vec<PathBuf> {
        let fixtures = crate::workspace_root().join("tests/fixtures");
        match self {
            Schema::Fixture => vec![schema_path()],
            Schema::Migrated | Schema::MigratedIntegerRetryCount => {
                vec![fixtures.join("frostguard-migrated.sql")]
            }
        }
    }

    fn extra_sql(self) -> Option<&'static str> {
        // 0009's statement as FrostGuard wrote it fails on such a database ("default for column retry_count
        // cannot be cast automatically to type integer": the text default '0' is in the way), so whoever
        // applied it by hand dropped the default first; the result is 0009's column.
        (self == Schema::MigratedIntegerRetryCount).then_some(
            "ALTER TABLE notification_deliveries \
             ALTER COLUMN retry_count DROP DEFAULT, \
             ALTER COLUMN retry_count TYPE integer USING COALESCE(retry_count::integer, 0), \
             ALTER COLUMN retry_count SET DEFAULT 0",
        )
    }
}

/// The directory with `initdb`, `postgres` and `psql`: `FROSTGUARD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FROSTGUARD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let version = entry.file_name().to_string_lossy().parse::<u32>().ok();
        let bin = entry.path().join("bin");
        if let Some(v) = version {
            if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        anyhow::anyhow!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; install them \
             (Debian: apt-get install postgresql) or set FROSTGUARD_PG_BIN"
        )
    })
}

/// The uid/gid to run the server as when the tests run as root (PostgreSQL refuses root): user `postgres` if
/// it exists, else `nobody`.
pub(crate) fn server_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == wanted {
                return Ok((fields[2].parse()?, fields[3].parse()?));
            }
        }
    }
    anyhow::bail!("running as root and neither user postgres nor nobody exists to run PostgreSQL")
}

/// A PostgreSQL server on a free 127.0.0.1 port (trust auth, user `postgres`, unix socket in its temp dir) with
/// database [`DATABASE`] holding the FrostGuard schema. Stopped and removed on drop.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    /// Keeps other tests' [`crate::free_port`] off the port while the server is stopped.
    reservation: Option<PortReservation>,
    bin: PathBuf,
    dir: TempDir,
    user: Option<(u32, u32)>,
    child: Option<ChildGuard>,
    log: Arc<LineLog>,
    /// With TLS on: the CA that signed the server's certificate.
    tls: Option<PathBuf>,
}

impl Postgres {
    /// initdb, start, create the database and load the schema ([`Schema::Fixture`]).
    pub fn start() -> anyhow::Result<Postgres> {
        Postgres::start_with(Schema::Fixture, false)
    }

    /// As [`Postgres::start`], with the given tables; with `tls`, the server runs with `ssl=on` and a
    /// certificate for `localhost` (not for the address 127.0.0.1) signed by a CA generated here ([`Postgres::ca_cert`]), and TCP
    /// clients that do not use TLS are rejected (`hostnossl … reject`), so a connection that works is a TLS one.
    pub fn start_with(schema: Schema, tls: bool) -> anyhow::Result<Postgres> {
        let bin = pg_bin_dir()?;
        let dir = TempDir::new("pg")?;
        let user = if crate::running_as_root() {
            let (uid, gid) = server_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some((uid, gid))
        } else {
            None
        };
        let mut pg = Postgres {
            port: 0,
            reservation: None,
            bin,
            dir,
            user,
            child: None,
            log: LineLog::new(),
            tls: None,
        };
        let mut initdb = pg.server_command("initdb");
        initdb.arg("-D").arg(pg.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = initdb.output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            pg.enable_tls()?;
        }
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = crate::free_port();
            pg.reservation = Some(PortReservation::new(pg.port)?);
            match pg.spawn() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        pg.psql_on("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        for file in schema.files() {
            let out = pg.psql_command(DATABASE).arg("-f").arg(&file).output()?;
            anyhow::ensure!(
                out.status.success(),
                "loading {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(sql) = schema.extra_sql() {
            pg.execute(sql)?;
        }
        Ok(pg)
    }

    /// Generates a CA and a server certificate (openssl CLI) in the server's directory, turns `ssl` on and
    /// makes TCP connections TLS-only.
    fn enable_tls(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().join("tls");
        std::fs::create_dir(&dir)?;
        let ca = crate::tls::generate_ca(&dir, "ca", "frostguard-tests CA")?;
        // Named for `localhost` only: a client that checks names accepts it as localhost, not as 127.0.0.1.
        crate::tls::generate_server_cert(&dir, &ca, "server", &["DNS:localhost"])?;
        if let Some((uid, gid)) = self.user {
            for entry in std::fs::read_dir(&dir)? {
                std::os::unix::fs::chown(entry?.path(), Some(uid), Some(gid))?;
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let conf = format!(
            "\nssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
            dir.display()
        );
        let data = self.data_dir();
        let mut postgresql_conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut postgresql_conf, conf.as_bytes())?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )?;
        self.tls = Some(ca.cert);
        Ok(())
    }

    /// The CA certificate (PEM) that signed the server's certificate, when started with TLS.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.tls.as_deref()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for a server-side binary, run as the server user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::new(cmd.spawn()?);
        let tag = format!("postgres:{}", self.port);
        let out = child.child_mut().stdout.take().expect("piped");
        let err = child.child_mut().stderr.take().expect("piped");
        // Server chatter is kept for error messages but not echoed.
        self.log.follow(&tag, out, false);
        self.log.follow(&tag, err, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_status()? {
                anyhow::bail!(
                    "postgres on port {} exited with {status}: {}",
                    self.port,
                    self.log.snapshot().join("\n")
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("postgres on port {} not ready in 30 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/frostguard` (the `DATABASE_URL` for plugins).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn psql_command(&self, database: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .env(
                "PGSSLMODE",
                if self.tls.is_some() {
                    "require"
                } else {
                    "prefer"
                },
            )
            .stdin(Stdio::null());
        cmd
    }

    fn psql_on(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .psql_command(database)
            .args(["-A", "-t", "-c", sql])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs SQL statements (no result needed), e.g. inserts of fixture rows.
    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.psql_on(DATABASE, sql).map(|_| ())
    }

    /// Runs a query and returns its rows as JSON objects (column name → value, via `row_to_json`).
    pub fn query_json(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({query}) AS q");
        let out = self.psql_on(DATABASE, &wrapped)?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// Runs a query returning one value and gives it as text (`None` for SQL NULL or no row).
    pub fn query_scalar(&self, query: &str) -> anyhow::Result<Option<String>> {
        let rows = self.query_json(query)?;
        Ok(rows.first().and_then(|row| {
            row.as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
        }))
    }

    /// Stops the server (to simulate a database outage): open connections are cut, committed data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT = "fast" shutdown: disconnect clients, checkpoint, exit.
            let _ = child.signal(libc::SIGINT);
            if child.wait_timeout(Duration::from_secs(10)).is_err() {
                child.kill();
            }
        }
    }

    /// Starts the server again on the same port after [`Postgres::stop`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The server's log so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
