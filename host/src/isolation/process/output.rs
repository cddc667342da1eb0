//! A plugin process's output, the host's side: the child's frames parsed from a buffer, read either on the
//! tokio runtime or on the supervisor thread.
//!
//! On the runtime (the usual case in `run`), the child's write wakes the runtime thread itself, which hands
//! an outcome straight to the task awaiting it: no other thread is woken for a reply. Without a runtime
//! (`plugins run`, and a host's start-up plugins until its runtime runs) the supervisor thread reads. The
//! reading moves from the thread to the runtime between two reads, with the bytes read and not yet parsed,
//! when a runtime is attached ([`Wake`] interrupts the thread's wait); and back to the thread if the runtime
//! drops it (shuts down) while the child lives. Whoever reads, frames are dispatched one at a time in the
//! order the child wrote them, so a job's progress and log lines come before its outcome.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::mpsc;

use tokio::io::unix::AsyncFd;

use crate::isolation::protocol::{decode_body, FromChild, MAX_FRAME};

/// Bytes asked for per read: a pipe's default capacity, so one read usually empties the pipe.
const READ_CHUNK: usize = 64 << 10;

/// Bytes read from the child and not yet dispatched; complete frames are taken from the front.
#[derive(Debug, Default)]
pub(super) struct Frames {
    buf: Vec<u8>,
    /// Where the first byte not yet taken is.
    start: usize,
}

impl Frames {
    /// Appends bytes just read.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame; `Ok(None)` while it is incomplete. `Err` for a frame over [`MAX_FRAME`] or
    /// one that is not a message (the stream is broken: nothing after it can be trusted).
    pub(super) fn next(&mut self) -> io::Result<Option<FromChild>> {
        let rest = &self.buf[self.start..];
        let Some(len) = rest.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the limit"),
            ));
        }
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = decode_body(body)?;
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// How the stream ended, judged at its end: cleanly unless a frame's body was cut off. A cut-off length
    /// counts as a clean end, as it always has (the child died between frames while starting the next).
    fn at_end(&self) -> io::Result<()> {
        if self.buf.len() - self.start >= 4 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the output ended inside a frame",
            ));
        }
        Ok(())
    }
}

/// The read end of a child's output (non-blocking) and what was read from it and not yet dispatched.
pub(super) struct Output<P> {
    pipe: P,
    frames: Frames,
    scratch: Box<[u8]>,
}

/// What one wait on the supervisor thread brought.
pub(super) enum Next {
    /// A frame.
    Frame(FromChild),
    /// The output ended: `Ok` cleanly, `Err` broken (unreadable, cut off mid-frame).
    Ended(io::Result<()>),
    /// [`Wake::ring`] was called: a runtime may have been attached.
    Woken,
}

impl<P: Read + AsRawFd> Output<P> {
    /// Takes over `pipe`, switching it to non-blocking reads (the thread waits in `poll`, the runtime in
    /// its reactor).
    pub(super) fn new(pipe: P) -> io::Result<Self> {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a descriptor `pipe` owns and keeps open.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !set {
            return Err(io::Error::last_os_error());
        }
        Ok(Output {
            pipe,
            frames: Frames::default(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Waits on the calling thread for the next frame, the end of the output, or (with `wake`) a ring.
    pub(super) fn next_on_thread(&mut self, wake: Option<&Wake>) -> Next {
        loop {
            match self.frames.next() {
                Ok(Some(msg)) => return Next::Frame(msg),
                Ok(None) => {}
                Err(e) => return Next::Ended(Err(e)),
            }
            match wait_readable(self.pipe.as_raw_fd(), wake) {
                Ok(true) => return Next::Woken,
                Ok(false) => {}
                Err(e) => return Next::Ended(Err(e)),
            }
            match self.pipe.read(&mut self.scratch) {
                Ok(0) => return Next::Ended(self.frames.at_end()),
                Ok(n) => self.frames.extend(&self.scratch[..n]),
                Err(e) if is_retry(&e) => {}
                Err(e) => return Next::Ended(Err(e)),
            }
        }
    }

    /// Dispatches frames on the calling thread until the output ends (`Some`) or `wake` rings (`None`).
    pub(super) fn read_on_thread(
        &mut self,
        wake: &Wake,
        dispatch: &mut impl FnMut(FromChild),
    ) -> Option<io::Result<()>> {
        loop {
            match self.next_on_thread(Some(wake)) {
                Next::Frame(msg) => dispatch(msg),
                Next::Ended(ended) => return Some(ended),
                Next::Woken => return None,
            }
        }
    }
}

impl<P: Read + AsRawFd + Send + 'static> Output<P> {
    /// Reading on the runtime: the future to spawn there. Whatever happens to it, the output comes back on
    /// `back` (with how it ended, or `None` when the runtime dropped the future or could not watch the
    /// pipe: the thread then reads on), so the descriptor is never closed under a live child by accident.
    pub(super) fn read_on_runtime(
        self,
        back: mpsc::Sender<Handback<P>>,
        mut dispatch: impl FnMut(FromChild) + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut held = Held {
            reading: Some(Reading::Plain(self)),
            ended: None,
            back,
        };
        async move {
            let Some(Reading::Plain(Output {
                pipe,
                frames,
                scratch,
            })) = held.reading.take()
            else {
                return;
            };
            // SAFETY: `pipe` owns its descriptor and keeps it open, the same one, until `into_inner` gives it
            // back (in `Held::drop`) or it is dropped with the `AsyncFd`.
            match unsafe { AsyncFd::register(pipe) } {
                Ok(pipe) => held.keep(Reading::Polled(Output {
                    pipe,
                    frames,
                    scratch,
                })),
                Err(e) => {
                    let (pipe, error) = e.into_parts();
                    tracing::warn!(%error, "cannot watch a plugin process's output on the runtime; a thread reads it");
                    held.keep(Reading::Plain(Output {
                        pipe,
                        frames,
                        scratch,
                    }));
                    return;
                }
            }
            let Some(Reading::Polled(output)) = &mut held.reading else {
                return;
            };
            let ended = output.pump(&mut dispatch).await;
            held.ended(ended);
        }
    }
}

impl<P: Read + AsRawFd> Output<AsyncFd<P>> {
    /// Dispatches frames as the runtime's reactor reports the pipe readable, until the output ends.
    async fn pump(&mut self, dispatch: &mut impl FnMut(FromChild)) -> io::Result<()> {
        loop {
            while let Some(msg) = self.frames.next()? {
                dispatch(msg);
            }
            let mut ready = self.pipe.readable_mut().await?;
            match ready.try_io(|pipe| pipe.get_mut().read(&mut self.scratch)) {
                Ok(Ok(0)) => return self.frames.at_end(),
                Ok(Ok(n)) => {
                    // A short read emptied the pipe: wait for the next write rather than read again only to
                    // hear "would block". A write landing meanwhile is reported anew by the reactor.
                    if n < self.scratch.len() {
                        ready.clear_ready();
                    }
                    self.frames.extend(&self.scratch[..n]);
                }
                Ok(Err(e)) if is_retry(&e) => {}
                Ok(Err(e)) => return Err(e),
                // Would block: readiness cleared, wait again.
                Err(_) => {}
            }
        }
    }
}

/// What the runtime's reading hands back to the supervisor thread.
pub(super) struct Handback<P> {
    /// The output, still open.
    pub(super) output: Output<P>,
    /// How it ended; `None` when it did not end (the runtime dropped the reading): the thread reads on.
    pub(super) ended: Option<io::Result<()>>,
}

enum Reading<P: AsRawFd> {
    Plain(Output<P>),
    Polled(Output<AsyncFd<P>>),
}

/// Owns the output while the runtime reads it, and sends it back when dropped: at the end of the output,
/// or when the runtime drops the task unfinished.
struct Held<P: AsRawFd> {
    reading: Option<Reading<P>>,
    ended: Option<io::Result<()>>,
    back: mpsc::Sender<Handback<P>>,
}

impl<P: AsRawFd> Held<P> {
    fn keep(&mut self, reading: Reading<P>) {
        self.reading = Some(reading);
    }

    fn ended(&mut self, ended: io::Result<()>) {
        self.ended = Some(ended);
    }
}

impl<P: AsRawFd> Drop for Held<P> {
    fn drop(&mut self) {
        let output = match self.reading.take() {
            Some(Reading::Plain(output)) => output,
            Some(Reading::Polled(Output {
                pipe,
                frames,
                scratch,
            })) => Output {
                pipe: pipe.into_inner(),
                frames,
                scratch,
            },
            None => return,
        };
        let _ = self.back.send(Handback {
            output,
            ended: self.ended.take(),
        });
    }
}

/// A supervisor thread's doorbell (an eventfd): rung when a runtime is attached, so that a thread waiting
/// for the child's output stops and hands the reading over.
pub(super) struct Wake(File);

impl Wake {
    pub(super) fn new() -> io::Result<Wake> {
        // SAFETY: eventfd returns a new descriptor (or -1), owned by the file below alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Wake(unsafe { File::from_raw_fd(fd) }))
    }

    /// Interrupts the thread's wait (now, or at its next wait if it is not waiting).
    pub(super) fn ring(&self) {
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    fn clear(&self) {
        let mut count = [0u8; 8];
        let _ = (&self.0).read(&mut count);
    }
}

/// Waits until `pipe` is readable (or closed): `Ok(false)`; or until `wake` rings: `Ok(true)`, the ring
/// consumed.
fn wait_readable(pipe: RawFd, wake: Option<&Wake>) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: pipe,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.map_or(-1, |w| w.0.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on two pollfd structs we own, for descriptors open for the whole call (a negative fd
        // is ignored by poll).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if fds[1].revents & libc::POLLIN != 0 {
        if let Some(wake) = wake {
            wake.clear();
        }
        return Ok(true);
    }
    Ok(false)
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
