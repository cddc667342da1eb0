//! Spawning the `frostguard-worker` binary and watching its log.

use crate::process::{ChildGuard, LineLog};
use crate::redis::RedisServer;
use crate::tempdir::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variables passed through from the test process; everything else is cleared so that a developer's
/// `REDIS_URL`, `QUEUE_*` or provider keys never leak into a test.
const PASS_THROUGH: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER"];

/// The `frostguard-worker` binary: `FROSTGUARD_WORKER_BIN`, else `<build dir>/frostguard-worker`.
pub fn worker_bin() -> PathBuf {
    let path = std::env::var_os("FROSTGUARD_WORKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::build_dir().join("frostguard-worker"));
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace` (or scripts/test.sh) first",
        path.display()
    );
    path
}

/// Builder for a [`Worker`] (a long-running `frostguard-worker run`) or a one-shot command ([`Finished`]).
///
/// Defaults: a cleared environment plus `PATH`/`HOME`, `HTTP_PORT=0` (no health server unless a test sets
/// one), `LOG_FORMAT=text`, `RUST_LOG=info`, `NO_COLOR=1`; arguments `run`.
#[derive(Debug)]
pub struct WorkerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    plugin_libs: Vec<PathBuf>,
}

impl WorkerBuilder {
    /// Sets `REDIS_URL` to the server's URL.
    pub fn redis(self, redis: &RedisServer) -> Self {
        self.env("REDIS_URL", redis.url())
    }

    /// Sets an environment variable (later calls win).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Removes an environment variable set earlier (including a default).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// Replaces the command-line arguments (default `["run"]`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Puts a copy of each built plugin (library names such as [`crate::TEST_PLUGIN`]) into a private plugin
    /// directory and points `PLUGIN_DIR` at it.
    pub fn plugins(mut self, lib_names: &[&str]) -> Self {
        self.plugin_libs
            .extend(lib_names.iter().map(|n| crate::plugin_lib(n)));
        self
    }

    /// Adds an arbitrary file (e.g. a corrupt library made by a test) to the private plugin directory.
    pub fn plugin_file(mut self, path: impl AsRef<Path>) -> Self {
        self.plugin_libs.push(path.as_ref().to_path_buf());
        self
    }

    fn command(&self) -> anyhow::Result<(Command, Vec<TempDir>, Option<PathBuf>)> {
        let mut cmd = Command::new(worker_bin());
        cmd.args(&self.args).env_clear();
        for key in PASS_THROUGH {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        let mut dirs = Vec::new();
        // A private crash-journal directory, so that no two tests ever read each other's journals; a test
        // that restarts a worker after a crash passes the same STATE_DIR to both.
        if !self.env.iter().any(|(k, _)| k == "STATE_DIR") {
            let state = TempDir::new("state")?;
            cmd.env("STATE_DIR", state.path());
            dirs.push(state);
        }
        let plugin_dir = if self.plugin_libs.is_empty() {
            None
        } else {
            let dir = TempDir::new("plugins")?;
            for lib in &self.plugin_libs {
                let name = lib.file_name().expect("plugin file has a name");
                std::fs::copy(lib, dir.path().join(name))
                    .map_err(|e| anyhow::anyhow!("copy {}: {e}", lib.display()))?;
            }
            cmd.env("PLUGIN_DIR", dir.path());
            Some(dir)
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let plugin_path = plugin_dir.as_ref().map(|d| d.path().to_owned());
        dirs.extend(plugin_dir);
        Ok((cmd, dirs, plugin_path))
    }

    /// Starts the worker; its stdout and stderr lines are captured (and echoed to the test's stderr).
    pub fn spawn(self) -> anyhow::Result<Worker> {
        let (mut cmd, dirs, plugin_dir) = self.command()?;
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {:?}: {e}", cmd.get_program()))?;
        let mut child = ChildGuard::new(child);
        let log = LineLog::new();
        let tag = format!("worker:{}", child.pid());
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let err = child.child_mut().stderr.take().expect("piped stderr");
        let readers = vec![log.follow(&tag, out, true), log.follow(&tag, err, true)];
        Ok(Worker {
            child,
            log,
            readers,
            _dirs: dirs,
            plugin_dir,
        })
    }

    /// [`spawn`](Self::spawn), then wait for `worker ready` ([`Worker::wait_ready`]).
    pub fn spawn_ready(self) -> anyhow::Result<Worker> {
        let w = self.spawn()?;
        w.wait_ready()?;
        Ok(w)
    }

    /// Runs the command to completion (killing it after `timeout`) and returns its status and output.
    pub fn output(self, timeout: Duration) -> anyhow::Result<Finished> {
        let mut worker = self.spawn()?;
        let status = worker.wait_exit(timeout)?;
        Ok(Finished {
            status,
            lines: worker.lines(),
        })
    }
}

/// A command that ran to completion.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    /// stdout and stderr lines, interleaved in arrival order.
    pub lines: Vec<String>,
}

impl Finished {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A running `frostguard-worker`. Killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Worker {
    child: ChildGuard,
    log: Arc<LineLog>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// The private plugin and state directories, removed with the worker.
    _dirs: Vec<TempDir>,
    /// The private plugin directory, when plugins were given.
    plugin_dir: Option<PathBuf>,
}

impl Worker {
    /// The private plugin directory the worker was started with (`PLUGIN_DIR`), when plugins were given: a
    /// hot reload test changes files in it while the worker runs.
    pub fn plugin_dir(&self) -> Option<&Path> {
        self.plugin_dir.as_deref()
    }

    /// A builder with the defaults described on [`WorkerBuilder`].
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            args: vec!["run".into()],
            env: vec![
                ("HTTP_PORT".into(), "0".into()),
                ("LOG_FORMAT".into(), "text".into()),
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            plugin_libs: Vec::new(),
        }
    }

    /// The common case: `run` against `redis` with the test plugin only, waiting for `worker ready`.
    pub fn start_test_outcomes(
        redis: &RedisServer,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Worker> {
        let mut b = Worker::builder()
            .redis(redis)
            .plugins(&[crate::TEST_PLUGIN]);
        for (k, v) in extra_env {
            b = b.env(*k, *v);
        }
        b.spawn_ready()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// All captured lines so far (stdout and stderr, ANSI codes removed).
    pub fn lines(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// The captured output as one string (for failure messages).
    pub fn output_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Whether any captured line contains `needle`.
    pub fn has_line(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// Waits for a line containing `needle`; fails early if the worker exits first.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_line_after(0, needle, timeout).map(|(_, l)| l)
    }

    /// Waits for a line containing `needle` at index >= `from` (see [`Worker::line_count`]); returns its index
    /// and text. Fails early, with the output, if the worker exits first.
    pub fn wait_for_line_after(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            if let Some(hit) = self.log.wait_for(from, step, |l| l.contains(needle)) {
                return Ok(hit);
            }
            // Not found yet: stop waiting once the worker's output has ended (it exited).
            let exited = self.log.all_closed();
            if Instant::now() >= deadline || exited {
                if let Some(hit) = self
                    .log
                    .wait_for(from, Duration::ZERO, |l| l.contains(needle))
                {
                    return Ok(hit);
                }
                anyhow::bail!(
                    "no log line containing {needle:?} {} ; output so far:\n{}",
                    if exited {
                        "before the worker exited".to_string()
                    } else {
                        format!("within {timeout:?}")
                    },
                    self.output_text()
                );
            }
        }
    }

    /// Number of lines captured so far (a position for [`Worker::wait_for_line_after`]).
    pub fn line_count(&self) -> usize {
        self.log.snapshot().len()
    }

    /// Waits (up to 60 s) for the `worker ready` line.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_for_line("worker ready", Duration::from_secs(60))
            .map(|_| ())
    }

    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.child.signal(libc::SIGTERM)
    }

    pub fn sigint(&mut self) -> anyhow::Result<()> {
        self.child.signal(libc::SIGINT)
    }

    /// SIGKILL (a crash: no shutdown, locks left behind) and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_status(), Ok(None))
    }

    /// Waits for the process to exit (up to `timeout`) and for its output to be fully read.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = self
            .child
            .wait_timeout(timeout)
            .map_err(|e| anyhow::anyhow!("{e}; output so far:\n{}", self.output_text()))?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(status)
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.sigterm()?;
        self.wait_exit(timeout)
    }
}
