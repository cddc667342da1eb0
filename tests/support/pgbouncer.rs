//! A throwaway PgBouncer (the Debian package's `pgbouncer` binary) in front of a [`Postgres`], in transaction
//! pooling mode as FrostGuard runs it: each transaction may run on a different server connection, so nothing
//! a client leaves in its session (advisory locks, named prepared statements) carries over.

use crate::process::{ChildGuard, LineLog};
use crate::tempdir::TempDir;
use crate::Postgres;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `pgbouncer` binary: `FROSTGUARD_PGBOUNCER`, else `pgbouncer` on PATH or in /usr/sbin (Debian).
pub fn pgbouncer_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FROSTGUARD_PGBOUNCER") {
        return Ok(PathBuf::from(bin));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "pgbouncer not found; install it (Debian: apt-get install pgbouncer) or set FROSTGUARD_PGBOUNCER"
            )
        })
}

/// PgBouncer on a free 127.0.0.1 port, `pool_mode = transaction`, trust auth, database `frostguard` pointing
/// at the given [`Postgres`]. Stopped and removed on drop.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    _dir: TempDir,
    _child: ChildGuard,
    log: Arc<LineLog>,
}

impl PgBouncer {
    /// Starts it with at most `pool_size` server connections to PostgreSQL: with 1, every client shares one
    /// server session, transaction by transaction.
    pub fn start(pg: &Postgres, pool_size: u32) -> anyhow::Result<PgBouncer> {
        let bin = pgbouncer_bin()?;
        let dir = TempDir::new("pgbouncer")?;
        let user = if crate::running_as_root() {
            let (uid, gid) = crate::postgres::server_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some((uid, gid))
        } else {
            None
        };
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n")?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = crate::free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     {db} = host=127.0.0.1 port={pg_port} dbname={db} user=postgres\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = trust\n\
                     auth_file = {userlist}\n\
                     pool_mode = transaction\n\
                     default_pool_size = {pool_size}\n\
                     min_pool_size = 0\n\
                     reserve_pool_size = 0\n\
                     max_client_conn = 100\n\
                     ignore_startup_parameters = extra_float_digits\n\
                     server_reset_query =\n",
                    db = crate::postgres::DATABASE,
                    pg_port = pg.port(),
                    userlist = dir.path().join("userlist.txt").display(),
                ),
            )?;
            if let Some((uid, gid)) = user {
                for file in ["pgbouncer.ini", "userlist.txt"] {
                    std::os::unix::fs::chown(dir.path().join(file), Some(uid), Some(gid))?;
                }
            }
            let mut cmd = Command::new(&bin);
            cmd.arg(&ini)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            let mut child = ChildGuard::new(
                cmd.spawn()
                    .map_err(|e| anyhow::anyhow!("cannot run {} ({e})", bin.display()))?,
            );
            let log = LineLog::new();
            let tag = format!("pgbouncer:{port}");
            log.follow(&tag, child.child_mut().stdout.take().expect("piped"), false);
            log.follow(&tag, child.child_mut().stderr.take().expect("piped"), false);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.try_status()? {
                    last_error = Some(anyhow::anyhow!(
                        "pgbouncer exited with {status}: {}",
                        log.snapshot().join("\n")
                    ));
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(PgBouncer {
                        port,
                        _dir: dir,
                        _child: child,
                        log,
                    });
                }
                if Instant::now() >= deadline {
                    anyhow::bail!("pgbouncer on port {port} not listening in 15 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pgbouncer did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/frostguard`: a `DATABASE_URL` through the pooler.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            crate::postgres::DATABASE
        )
    }

    /// PgBouncer's log so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }
}
