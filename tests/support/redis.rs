//! A throwaway `redis-server` and a minimal RESP client for assertions.

use crate::ports::PortReservation;
use crate::process::{ChildGuard, LineLog};
use crate::tempdir::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` on a free 127.0.0.1 port, persisting nothing, killed and its directory removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Keeps other tests' [`crate::free_port`] off the port while the server is down between a kill and a
    /// restart.
    _reservation: PortReservation,
    extra_args: Vec<String>,
    child: Option<ChildGuard>,
    log: Arc<LineLog>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server (`--save '' --appendonly no`) and waits until it answers PING.
    pub fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with_args(&[])
    }

    /// Like [`RedisServer::start`] with extra server arguments, e.g. `["--requirepass", "secret"]`.
    pub fn start_with_args(extra_args: &[&str]) -> anyhow::Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let mut server = RedisServer::unstarted(extra_args)?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                // Most likely the port was taken between picking and binding: try another one.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// A server that is not running yet, its port reserved: the case of a worker started before its Redis
    /// exists. [`RedisServer::launch`] starts it.
    pub fn reserve() -> anyhow::Result<RedisServer> {
        RedisServer::unstarted(&[])
    }

    fn unstarted(extra_args: &[&str]) -> anyhow::Result<RedisServer> {
        let port = crate::free_port();
        Ok(RedisServer {
            port,
            _reservation: PortReservation::new(port)?,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: LineLog::new(),
            dir: TempDir::new("redis")?,
        })
    }

    /// Starts a server made by [`RedisServer::reserve`] on its reserved port (the same as [`restart`]).
    ///
    /// [`restart`]: RedisServer::restart
    pub fn launch(&mut self) -> anyhow::Result<()> {
        self.restart()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::new(cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot run redis-server ({e}); install it (Debian: apt-get install redis-server)"
            )
        })?);
        let tag = format!("redis:{}", self.port);
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let err = child.child_mut().stderr.take().expect("piped stderr");
        self.log.follow(&tag, out, true);
        self.log.follow(&tag, err, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_status()? {
                anyhow::bail!(
                    "redis-server on port {} exited with {status}: {}",
                    self.port,
                    self.log.snapshot().join("\n")
                );
            }
            if self.ping() {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    fn ping(&self) -> bool {
        self.cmd(&["PING"])
            .is_ok_and(|r| r == Resp::Simple("PONG".into()))
    }

    /// The password given with `--requirepass`, if any.
    pub fn password(&self) -> Option<String> {
        self.extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra_args.get(i + 1).cloned())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, with the password (`redis://:<password>@…`) when started with
    /// `--requirepass`.
    pub fn url(&self) -> String {
        match self.password() {
            Some(p) => format!("redis://:{}@127.0.0.1:{}", percent_encode(&p), self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_status(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server at once (SIGKILL); all data is gone, as after a crash of a non-persistent Redis.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Stops the server gracefully (SIGTERM: a server with `--appendonly yes` writes its data first), as an
    /// operator's restart or a container stop does. [`RedisServer::restart`] starts it again with its data.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM)?;
            child.wait_timeout(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]), retrying while the port is still
    /// held by the old process's sockets. The port stayed reserved meanwhile, so no other test took it.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs one command on a fresh connection (authenticating if the server was started with
    /// `--requirepass`). Errors returned by Redis come back as `Ok(Resp::Error(..))`.
    pub fn cmd(&self, args: &[&str]) -> anyhow::Result<Resp> {
        let mut conn = RespConn::connect(self.port)?;
        if let Some(p) = self.password() {
            conn.cmd(&["AUTH", &p])?;
        }
        conn.cmd(args)
    }

    /// Starts a `MONITOR` connection: every command the server runs from now on, one line each (`<time>
    /// [<db> <client>] "<command>" "<arg>" ...`), to wait for what a worker did rather than sleep.
    pub fn monitor(&self) -> anyhow::Result<Monitor> {
        let mut conn = RespConn::connect(self.port)?;
        if let Some(p) = self.password() {
            conn.cmd(&["AUTH", &p])?;
        }
        let ok = conn.cmd(&["MONITOR"])?;
        anyhow::ensure!(ok == Resp::Simple("OK".into()), "MONITOR answered {ok:?}");
        let stream = conn.reader.into_inner();
        stream.set_read_timeout(None)?;
        let log = LineLog::new();
        log.follow(
            &format!("monitor:{}", self.port),
            stream.try_clone()?,
            false,
        );
        Ok(Monitor { log, stream })
    }

    /// The server's own log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }
}

/// The commands a Redis server runs, as `MONITOR` reports them ([`RedisServer::monitor`]). Closed on drop.
#[derive(Debug)]
pub struct Monitor {
    log: Arc<LineLog>,
    stream: TcpStream,
}

impl Monitor {
    /// Lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// Waits for a line at index >= `from` satisfying `pred`; returns its index and text.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(usize, String)> {
        self.log.wait_for(from, timeout, pred).ok_or_else(|| {
            anyhow::anyhow!(
                "no such command within {timeout:?}; seen:\n{}",
                self.log.snapshot().join("\n")
            )
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for credentials in a URL).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a simple or bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            Resp::Simple(s) | Resp::Bulk(Some(s)) => s.parse().ok(),
            _ => None,
        }
    }

    /// The elements of an array reply (empty for a nil array).
    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(Some(v)) => Some(v),
            Resp::Array(None) => Some(&[]),
            _ => None,
        }
    }

    /// An array of strings (e.g. SMEMBERS, KEYS, LRANGE) as owned strings.
    pub fn strings(&self) -> Vec<String> {
        self.as_array()
            .unwrap_or(&[])
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect()
    }
}

struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    fn connect(port: u16) -> anyhow::Result<RespConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RespConn {
            reader: BufReader::new(stream),
        })
    }

    fn cmd(&mut self, args: &[&str]) -> anyhow::Result<Resp> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&req)?;
        self.read()
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            anyhow::bail!("redis closed the connection");
        }
        Ok(line.trim_end_matches("\r\n").to_string())
    }

    fn read(&mut self) -> anyhow::Result<Resp> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    std::io::Read::read_exact(&mut self.reader, &mut buf)?;
                    buf.truncate(len as usize);
                    Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            other => anyhow::bail!("unexpected RESP type {other:?} in {line:?}"),
        })
    }
}
