//! The frames the runtime has for a plugin process, written to its input together: the jobs started by the
//! tasks the runtime polls one after another (a reply from Redis often brings several) go out in one write,
//! so the child is woken and reads once for them instead of once per job, and the host makes one write.
//!
//! The task that starts a job (or cancels one) queues its frame; the first frame queued schedules a flush, a
//! task the runtime polls after the tasks that were ready already, which have queued theirs by then. Frames
//! leave the outbox only in the hands of the holder of the input's lock, so they reach the child in the
//! order they were queued (a job's cancel after the job) and after anything a blocking writer sent before.
//! The runtime never waits on the pipe: when a blocking writer holds it, or it lacks the room for what is
//! queued (a child that stopped reading), a blocking thread writes instead.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use super::{fits, pipe_room, Conn};

/// Frames queued for one child's input.
#[derive(Debug, Default)]
pub(super) struct Outbox(Mutex<Queued>);

#[derive(Debug, Default)]
struct Queued {
    bytes: Vec<u8>,
    /// A flush is scheduled that will take what is queued (so a frame queued now needs none of its own).
    flush_coming: bool,
}

impl Outbox {
    /// Adds `frame`; true when no flush is coming for it yet (the caller schedules one).
    fn push(&self, frame: &[u8]) -> bool {
        let mut queued = self.lock();
        queued.bytes.extend_from_slice(frame);
        !std::mem::replace(&mut queued.flush_coming, true)
    }

    /// Everything queued. Only under the input's lock, so what is taken is written before anything queued
    /// after it; a frame queued after this schedules a flush of its own.
    pub(super) fn take(&self) -> Vec<u8> {
        let mut queued = self.lock();
        queued.flush_coming = false;
        std::mem::take(&mut queued.bytes)
    }

    /// [`Self::take`] when `writable_now` says the pipe takes that many bytes without waiting; `None` (and
    /// everything left queued, with its flush still to come) when it does not.
    fn take_if(&self, writable_now: impl FnOnce(usize) -> bool) -> Option<Vec<u8>> {
        let mut queued = self.lock();
        if !queued.bytes.is_empty() && !writable_now(queued.bytes.len()) {
            return None;
        }
        queued.flush_coming = false;
        Some(std::mem::take(&mut queued.bytes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues `frame` for `conn`'s child, to be written once the tasks `runtime` has ready ran.
pub(super) fn send_soon(conn: &Arc<Conn>, runtime: &tokio::runtime::Handle, frame: &[u8]) {
    if conn.outbox.push(frame) {
        drop(runtime.spawn(flush(Arc::clone(conn))));
    }
}

/// Writes what is queued for `conn`'s child: here when nobody holds its input and the pipe has the room,
/// else from a blocking thread (which may wait for the child to read).
async fn flush(conn: Arc<Conn>) {
    if let Ok(mut input) = conn.input.try_lock() {
        let fd = input.as_raw_fd();
        let writable_now = |len| pipe_room(fd).is_some_and(|room| fits(len, room));
        if let Some(bytes) = conn.outbox.take_if(writable_now) {
            // Cannot wait: the room was there and only the child's reads change it while the lock is held.
            // A failed write means the child is dying; the supervisor answers its jobs with the crash.
            if !bytes.is_empty() {
                let _ = input.write_all(&bytes);
            }
            return;
        }
    }
    drop(tokio::task::spawn_blocking(move || conn.send_raw(&[])));
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::os::unix::io::FromRawFd;
    use std::process::ChildStdin;

    use super::*;

    /// A connection whose input is the write end of a fresh pipe, and that pipe's read end.
    fn conn_on_pipe() -> (Arc<Conn>, std::fs::File) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe fills `fds` with two new descriptors, each owned by one value below alone.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (reader, writer) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let conn = Conn {
            input: Mutex::new(ChildStdin::from(writer)),
            pid: 0,
            outbox: Outbox::default(),
        };
        (Arc::new(conn), reader)
    }

    fn unread(pipe: &std::fs::File) -> usize {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD on a descriptor `pipe` owns writes one c_int.
        assert_eq!(
            unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut unread) },
            0
        );
        unread as usize
    }

    fn read_exactly(pipe: &mut std::fs::File, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        pipe.read_exact(&mut bytes).unwrap();
        bytes
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_queued_by_ready_tasks_go_out_together_in_order() {
        let (conn, mut pipe) = conn_on_pipe();
        let runtime = tokio::runtime::Handle::current();
        for frame in [b"job-1", b"job-2", b"cnl-1"] {
            send_soon(&conn, &runtime, frame);
        }
        // Nothing is written while this task runs: the flush waits its turn.
        assert_eq!(unread(&pipe), 0);
        tokio::task::yield_now().await;
        assert_eq!(read_exactly(&mut pipe, 15), b"job-1job-2cnl-1");
        // The next frame schedules a flush of its own.
        send_soon(&conn, &runtime, b"job-3");
        tokio::task::yield_now().await;
        assert_eq!(read_exactly(&mut pipe, 5), b"job-3");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_pipe_is_written_from_a_blocking_thread_and_keeps_the_order() {
        let (conn, mut pipe) = conn_on_pipe();
        let runtime = tokio::runtime::Handle::current();
        // Fill the pipe until it has no room for another page.
        let page = vec![b'.'; 4096];
        while pipe_room(conn.input.lock().unwrap().as_raw_fd()).is_some_and(|r| fits(page.len(), r))
        {
            conn.input.lock().unwrap().write_all(&page).unwrap();
        }
        let filled = unread(&pipe);
        send_soon(&conn, &runtime, b"job-1");
        tokio::task::yield_now().await;
        // The runtime did not wait: the frame is left to a blocking thread, and frames queued meanwhile
        // follow it.
        send_soon(&conn, &runtime, b"job-2");
        tokio::task::yield_now().await;
        let mut drained = 0;
        while drained < filled {
            drained += read_exactly(&mut pipe, 4096).len();
        }
        assert_eq!(read_exactly(&mut pipe, 10), b"job-1job-2");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_writer_sends_what_is_queued_first() {
        let (conn, mut pipe) = conn_on_pipe();
        let runtime = tokio::runtime::Handle::current();
        send_soon(&conn, &runtime, b"job-1");
        let writer = Arc::clone(&conn);
        tokio::task::spawn_blocking(move || writer.send_raw(b"stop"))
            .await
            .unwrap()
            .unwrap();
        // The flush scheduled for job-1 finds nothing left to write.
        tokio::task::yield_now().await;
        assert_eq!(read_exactly(&mut pipe, 9), b"job-1stop");
        assert_eq!(unread(&pipe), 0);
    }
}
