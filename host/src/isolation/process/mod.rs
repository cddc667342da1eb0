//! Process mode, the host's side: one child process per plugin (the host's own binary, hidden subcommand
//! `plugin-process`), supervised and restarted with backoff when it dies.
//!
//! [`PluginProcess::process`] has the same shape as an in-process call (a blocking call that returns the
//! job's outcome while forwarding progress, job log lines and cancellation), so the bridge runs both modes on
//! its blocking threads the same way and the queue's concurrency bound holds unchanged. While the child is
//! ready, [`PluginProcess::start_job`] does the same from an async task without a blocking thread (the
//! reply comes on a oneshot channel): the usual path, a thread hop less per job. The child's frames are read
//! on the tokio runtime once one is attached ([`PluginProcess::read_output_on`]), else on the plugin's
//! supervisor thread (`output.rs`); either way progress and log lines go to the job's callbacks and the
//! plugin's `tracing` records to the host's log, in the child's order. When the child's output ends, the
//! supervisor thread collects its exit status and crash note, answers every job the child held with a
//! [`Crash`], and starts a new child after a backoff. Jobs that arrive meanwhile wait for the new child (or
//! for cancellation).
//!
//! This file is the jobs' side (starting a job, waiting for its reply, shutdown); `child_life.rs` is the
//! child's: spawning it, the supervisor thread, reaping and restarting; `output.rs` reads its frames;
//! `outbox.rs` writes the runtime's frames to it.

use foldhash::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use plugin_api::loader::{not_completed, HostLogger, JobCallbacks, PENDING_GRACE};
use plugin_api::{JobView, Outcome, PluginConfig};

use super::cause::Ending;
use super::child::{slot_of, NOTE_FD};
use super::crashnote;
use super::protocol::{encode_frame, encode_job_frame, FromChild, ToChild};
use outbox::Outbox;
use output::{Handback, Next, Output, Wake};

mod child_life;
mod outbox;
mod output;
#[cfg(test)]
mod output_tests;

/// First wait before restarting a crashed child; doubled per crash up to [`RESTART_BACKOFF_MAX`].
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between restarts.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child that lived this long before dying restarts after the shortest wait again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often a job waiting for its outcome checks whether it was cancelled.
pub const CANCEL_POLL: Duration = Duration::from_millis(50);
/// The largest job data [`PluginProcess::start_job`] queues from an async task (larger jobs go through a
/// blocking thread; so does the outbox's write when the pipe lacks the room for it).
const ASYNC_WRITE_MAX: usize = 16 << 10;

/// A plugin process died while holding a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// How the process ended.
    pub ending: Ending,
    /// True when this job is the one whose thread crashed (the crash note named it), or when nothing
    /// named another: only a blamed job counts towards the poison-job limit.
    pub blamed: bool,
}

/// How one call through a plugin process ended.
#[derive(Debug)]
pub enum Reply {
    /// The plugin returned.
    Outcome(Outcome),
    /// The process died first.
    Crashed(Crash),
}

/// One plugin's child process, restarted whenever it dies, until [`PluginProcess::shutdown`].
pub struct PluginProcess {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProcess")
            .field("plugin", &self.shared.name)
            .finish()
    }
}

struct Shared {
    name: String,
    path: PathBuf,
    exe: PathBuf,
    config: PluginConfig,
    logger: Arc<dyn HostLogger>,
    state: Mutex<State>,
    changed: Condvar,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Set once a stopped plugin's child has exited (what [`PluginProcess::shutdown`] waits for).
    exited: Mutex<bool>,
    gone: Condvar,
    /// The runtime the child's output is read on; `None`: the supervisor thread reads it.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// Rung when `runtime` is set, to take the reading off the supervisor thread.
    wake: Wake,
}

enum State {
    /// Between a crash and the next child being ready.
    Starting,
    Ready(Arc<Conn>),
    /// The last start failed (the reason is logged); retried after the backoff.
    Down,
    /// Shut down (or shutting down): no new jobs.
    Stopped,
}

struct Conn {
    input: Mutex<ChildStdin>,
    pid: u32,
    /// Frames from the runtime not yet written (`outbox.rs`).
    outbox: Outbox,
}

struct Pending {
    tx: Waiter,
    callbacks: Arc<dyn JobCallbacks>,
    slot: u32,
}

/// Where a job's reply goes: to a blocking thread waiting in [`PluginProcess::process`], or to the task
/// that started it with [`PluginProcess::start_job`].
enum Waiter {
    Thread(mpsc::Sender<Reply>),
    Task(tokio::sync::oneshot::Sender<Reply>),
}

impl Waiter {
    /// Hands over the reply (a waiter that stopped waiting, e.g. abandoned at shutdown, is not an error).
    fn send(self, reply: Reply) {
        let _ = match self {
            Waiter::Thread(tx) => tx.send(reply).map_err(|_| ()),
            Waiter::Task(tx) => tx.send(reply).map_err(|_| ()),
        };
    }
}

/// A job running in the child, started without a blocking thread: its reply arrives on `reply`.
pub struct ChildJob {
    id: u64,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    /// The outcome, or the child's crash (the sender is dropped only if the host itself gives up on it).
    pub reply: tokio::sync::oneshot::Receiver<Reply>,
}

impl ChildJob {
    /// Turns the job's `is_cancelled()` true in the child: the cancel message is queued behind the job's
    /// own frame and, like it, written without waiting (`outbox.rs`). Returns whether it was queued (not when
    /// called outside the runtime); the caller tries again later when not.
    pub fn try_cancel(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let cancel: ToChild = ToChild::Cancel { id: self.id };
        let Ok(frame) = encode_frame(&cancel) else {
            return false;
        };
        outbox::send_soon(&self.conn, &runtime, &frame);
        true
    }
}

impl Drop for ChildJob {
    /// A job given up before its reply (a pending job past its grace, the shutdown's abandon) is forgotten
    /// here, so a reply that never comes holds nothing; one that still comes is ignored. (Once the reply
    /// came, the reader has removed the entry already.)
    fn drop(&mut self) {
        self.shared.lock_pending().remove(&self.id);
    }
}

/// Bytes the pipe whose write end is `fd` takes now without a write waiting, counted as the kernel does:
/// in pages (a pipe holds a fixed number of page buffers, and what is unread may start and end in
/// partly used ones). `None` when the kernel cannot tell (not a pipe).
fn pipe_room(fd: std::os::unix::io::RawFd) -> Option<usize> {
    // SAFETY: fcntl and ioctl(FIONREAD) on a descriptor the caller owns; FIONREAD writes one c_int.
    let (capacity, unread) = unsafe {
        let capacity = libc::fcntl(fd, libc::F_GETPIPE_SZ);
        let mut unread: libc::c_int = 0;
        let read = libc::ioctl(fd, libc::FIONREAD, &mut unread);
        (capacity, if read == 0 { unread } else { -1 })
    };
    let capacity = usize::try_from(capacity).ok()?;
    let unread = usize::try_from(unread).ok()?;
    let used_pages = if unread == 0 {
        0
    } else {
        unread.div_ceil(PAGE) + 1
    };
    Some((capacity / PAGE).saturating_sub(used_pages) * PAGE)
}

/// The unit in which a pipe's buffer is counted.
const PAGE: usize = 4096;

/// Whether a frame of `len` bytes fits in `room` (it may begin in a fresh page and end in another).
fn fits(len: usize, room: usize) -> bool {
    (len.div_ceil(PAGE) + 1) * PAGE <= room
}

/// A started child: its process, its output and the read end of its crash-note pipe.
struct Started {
    child: Child,
    output: Output<ChildStdout>,
    notes: File,
    conn: Arc<Conn>,
}

impl PluginProcess {
    /// Starts the plugin's child with `config` and waits until its `init` answered. `Err` carries the
    /// reason the plugin cannot run (its `init` refused, the library failed the loader's checks in the
    /// child, the child could not be started). Started within a tokio runtime (a blocking thread of it, as
    /// hot reload does), the child's output is read on that runtime; otherwise on the supervisor thread
    /// until [`Self::read_output_on`].
    pub fn start(
        path: &Path,
        name: &str,
        config: PluginConfig,
        logger: Arc<dyn HostLogger>,
    ) -> Result<PluginProcess, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the host binary to start the plugin process: {e}"))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            path: path.to_owned(),
            exe,
            config,
            logger,
            state: Mutex::new(State::Starting),
            changed: Condvar::new(),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            exited: Mutex::new(false),
            gone: Condvar::new(),
            runtime: Mutex::new(tokio::runtime::Handle::try_current().ok()),
            wake: Wake::new()
                .map_err(|e| format!("cannot create the supervisor's eventfd: {e}"))?,
        });
        // The child is started from its supervisor thread, which lives as long as the plugin: a child's
        // parent-death signal follows the thread that forked it, and the thread calling `start` may be one of
        // the runtime's blocking threads (hot reload), which exits once idle and would take the child along.
        let (answer, init) = mpsc::channel();
        let supervisor = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || match supervisor.spawn() {
                Ok(started) => {
                    *supervisor.lock_state() = State::Ready(Arc::clone(&started.conn));
                    let _ = answer.send(Ok(()));
                    supervisor.supervise(started)
                }
                Err(reason) => {
                    let _ = answer.send(Err(reason));
                }
            })
            .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
        init.recv().unwrap_or_else(|_| {
            Err("the supervisor thread ended before the plugin started".into())
        })?;
        Ok(PluginProcess { shared })
    }

    /// From now on reads the child's output (this one's and every restarted one's) on `runtime`: a reply
    /// then wakes the runtime thread directly instead of a supervisor thread that wakes it in turn. The
    /// host calls it once its runtime runs, for the plugins it loaded before. Afterwards
    /// [`Self::process`] and [`Self::shutdown`] must not be called on the runtime's own thread (they wait for
    /// frames that thread reads); the host calls them on blocking threads.
    pub fn read_output_on(&self, runtime: tokio::runtime::Handle) {
        *self
            .shared
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(runtime);
        self.shared.wake.ring();
    }

    /// Starts one job in the child without blocking, when the child is ready: the caller awaits
    /// [`ChildJob::reply`] and forwards cancellation with [`ChildJob::try_cancel`]. This spares each job a
    /// hop to a blocking thread and back. The job's frame is written together with those of the other jobs
    /// the runtime starts meanwhile (`outbox.rs`). `None` while no child is ready (being restarted, or
    /// stopped), outside the runtime, and for a job too large to queue (its data over 16 KiB): then
    /// [`Self::process`], on a blocking thread, waits or answers as it always did.
    pub fn start_job(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>) -> Option<ChildJob> {
        if job.data.get().len() > ASYNC_WRITE_MAX {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_job_frame(id, job).ok()?;
        let (tx, reply) = tokio::sync::oneshot::channel();
        let state = shared.lock_state();
        let State::Ready(conn) = &*state else {
            return None;
        };
        let conn = Arc::clone(conn);
        // Registered under the state lock, as in `process`.
        shared.lock_pending().insert(
            id,
            Pending {
                tx: Waiter::Task(tx),
                callbacks,
                slot: slot_of(id),
            },
        );
        drop(state);
        // Written without waiting, after the tasks the runtime has ready queued theirs. Should the child be
        // dying, the supervisor answers this job with its crash.
        outbox::send_soon(&conn, &runtime, &frame);
        Some(ChildJob {
            id,
            conn,
            shared: Arc::clone(shared),
            reply,
        })
    }

    /// Runs one job in the child. Blocks until the outcome, the child's death, or (while no child is
    /// running) cancellation: call it from a blocking thread, as an in-process call. A `pending` job (the
    /// plugin completes it from threads of its own) is also given up `PENDING_GRACE` after its deadline, as
    /// the runtime gives one up, so that a job the plugin never completes does not hold this thread for good;
    /// a blocking call still runs on a thread of the child, and is waited for.
    pub fn process(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>, pending: bool) -> Reply {
        let give_up = job
            .deadline_ms
            .filter(|_| pending)
            .map(|ms| crate::clock::instant_at(ms) + PENDING_GRACE);
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let conn = {
            let mut state = shared.lock_state();
            loop {
                match &*state {
                    State::Ready(conn) => {
                        // Registered under the state lock: the supervisor marks the child gone under the
                        // same lock before answering the jobs it held, so this job is either answered or
                        // sees the restart.
                        shared.lock_pending().insert(
                            id,
                            Pending {
                                tx: Waiter::Thread(tx),
                                callbacks: Arc::clone(&callbacks),
                                slot: slot_of(id),
                            },
                        );
                        break Arc::clone(conn);
                    }
                    State::Stopped => {
                        return Reply::Outcome(Outcome::failed(format!(
                            "plugin {} is shutting down",
                            shared.name
                        )))
                    }
                    // While the child is being restarted (or its restart keeps failing) the job waits,
                    // holding its lock, rather than using up its attempts on a plugin that cannot run.
                    State::Starting | State::Down => {
                        if callbacks.is_cancelled() {
                            return Reply::Outcome(Outcome::failed(format!(
                                "cancelled while the plugin process of {} restarted",
                                shared.name
                            )));
                        }
                        state = shared
                            .changed
                            .wait_timeout(state, CANCEL_POLL)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        };
        // A failed write means the child is dying; the supervisor answers this job with its crash.
        let _ = encode_job_frame(id, job).and_then(|frame| conn.send_raw(&frame));
        let mut cancel_sent = false;
        loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(reply) => return reply,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if give_up.is_some_and(|at| Instant::now() >= at) {
                        // Forgotten, as a `ChildJob` given up is: a reply that still comes is ignored.
                        shared.lock_pending().remove(&id);
                        if !cancel_sent {
                            let _ = conn.send(&ToChild::Cancel { id });
                        }
                        return Reply::Outcome(Outcome::failed(not_completed(&shared.name)));
                    }
                    if !cancel_sent && callbacks.is_cancelled() {
                        cancel_sent = true;
                        let _ = conn.send(&ToChild::Cancel { id });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Reply::Outcome(Outcome::failed(format!(
                        "plugin process of {} went away without an answer",
                        shared.name
                    )))
                }
            }
        }
    }

    /// Asks the child to run the plugin's `shutdown` within `budget` and exit; kills it when it does not.
    /// Blocks: call it from a blocking thread.
    pub fn shutdown(&self, budget: Duration) {
        let shared = &self.shared;
        let conn = match std::mem::replace(&mut *shared.lock_state(), State::Stopped) {
            State::Ready(conn) => conn,
            _ => return,
        };
        shared.changed.notify_all();
        let ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
        let _ = conn.send(&ToChild::Shutdown { deadline_ms: ms });
        // Within the runtime's own bound on plugin shutdowns (the budget plus 500 ms).
        let until = Instant::now() + budget + Duration::from_millis(300);
        let mut exited = shared.exited.lock().unwrap_or_else(|p| p.into_inner());
        while !*exited {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(plugin = %shared.name, pid = conn.pid, "plugin process did not exit after shutdown; killing it");
                // SAFETY: kill of our own child's pid (not yet reaped: the supervisor has not seen it exit).
                unsafe {
                    libc::kill(conn.pid as libc::pid_t, libc::SIGKILL);
                }
                return;
            }
            exited = shared
                .gone
                .wait_timeout(exited, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Conn {
    /// Writes `msg` from a blocking thread (it may wait for the child to read).
    fn send(&self, msg: &ToChild) -> std::io::Result<()> {
        self.send_raw(&encode_frame(msg)?)
    }

    /// Writes `frame` after whatever the runtime queued before it: a shutdown comes after the jobs started.
    fn send_raw(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        input.write_all(&self.outbox.take())?;
        input.write_all(frame)
    }
}

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::io::AsRawFd;

    use super::*;

    #[test]
    fn the_room_in_a_pipe_is_counted_in_pages_and_returns_as_they_are_read() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe fills `fds` with two new descriptors, owned by the files below alone.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (mut reader, mut writer) =
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let empty = pipe_room(writer.as_raw_fd()).expect("a pipe tells its room");
        assert!(empty >= 4 * PAGE, "{empty}");
        writer.write_all(&[7u8; 1000]).unwrap();
        // One page holds the bytes, one more is counted for where the next write may start.
        assert_eq!(pipe_room(writer.as_raw_fd()), Some(empty - 2 * PAGE));
        let mut buf = [0u8; 1000];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(pipe_room(writer.as_raw_fd()), Some(empty));
        // Frames of 8 KiB: a write is only made while the room surely holds it, so it never waits.
        let frame = vec![0u8; 2 * PAGE + 100];
        let mut written = 0;
        while pipe_room(writer.as_raw_fd()).is_some_and(|room| fits(frame.len(), room)) {
            writer.write_all(&frame).unwrap();
            written += 1;
        }
        assert!(written >= 2, "{written}");
        assert!(!fits(frame.len(), pipe_room(writer.as_raw_fd()).unwrap()));
        // Not a pipe: unknown, never taken for room.
        let file = File::open("/proc/self/status").unwrap();
        assert_eq!(pipe_room(file.as_raw_fd()), None);
    }
}
