//! Child processes that are killed when their handle drops, with signals and bounded waits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Owns a child process: SIGKILL + reap on drop unless it already exited.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub(crate) fn new(child: Child) -> ChildGuard {
        ChildGuard {
            child,
            status: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) unless the process has been reaped already.
    pub(crate) fn signal(&mut self, sig: i32) -> anyhow::Result<()> {
        if self.try_status()?.is_some() {
            anyhow::bail!("process {} already exited", self.pid());
        }
        // SAFETY: kill(2) with a pid we spawned and have not reaped (so it cannot have been reused).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        if rc != 0 {
            anyhow::bail!(
                "kill({}, {sig}): {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub(crate) fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "process {} still running after {timeout:?}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap (no-op if it already exited).
    pub(crate) fn kill(&mut self) {
        if matches!(self.try_status(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.status = Some(status);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines read from a child's stdout and stderr (ANSI colour codes removed), shared with reader threads.
#[derive(Debug, Default)]
pub(crate) struct LineLog {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    open_streams: AtomicUsize,
}

impl LineLog {
    pub(crate) fn new() -> Arc<LineLog> {
        Arc::new(LineLog::default())
    }

    /// Starts a thread that appends each line of `source`, echoed to stderr as `[<tag>] line` when `echo`.
    pub(crate) fn follow(
        self: &Arc<Self>,
        tag: &str,
        source: impl Read + Send + 'static,
        echo: bool,
    ) -> JoinHandle<()> {
        let log = Arc::clone(self);
        let tag = tag.to_string();
        self.open_streams.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf));
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if echo {
                            eprintln!("[{tag}] {line}");
                        }
                        log.lines.lock().expect("line log lock").push(line);
                        log.changed.notify_all();
                    }
                }
            }
            log.open_streams.fetch_sub(1, Ordering::SeqCst);
            log.changed.notify_all();
        })
    }

    /// Whether every followed stream has reached end of file (the child exited or closed its output).
    pub(crate) fn all_closed(&self) -> bool {
        self.open_streams.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines.lock().expect("line log lock").clone()
    }

    /// Waits until a line at index >= `from` satisfies `pred`; returns its index and text.
    pub(crate) fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().expect("line log lock");
        loop {
            if let Some((i, l)) = lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| pred(l.as_str()))
            {
                return Some((i, l.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Wake up at least every 100 ms so that a child that exited is noticed by callers' loops.
            let wait = (deadline - now).min(Duration::from_millis(100));
            lines = self
                .changed
                .wait_timeout(lines, wait)
                .expect("line log lock")
                .0;
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from a line.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Every process in the tree under `pid` (a host and its plugin processes), `pid` first, from the kernel's
/// `children` list of each of their threads.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        let children: std::collections::BTreeSet<u32> = tasks
            .iter()
            .filter_map(|t| std::fs::read_to_string(t.join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        all.extend(children);
        i += 1;
    }
    all
}

/// Threads of `pid` and of every process under it: what a job held on a thread would show up in.
pub fn thread_count(pid: u32) -> usize {
    process_tree(pid)
        .iter()
        .map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m worker ready"),
            "2026  INFO worker ready"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
