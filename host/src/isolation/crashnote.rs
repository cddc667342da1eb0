//! The last words of a process that plugin code is crashing: which job was running on the crashing thread,
//! and which signal (or `exit` call) ended it.
//!
//! Before plugin code runs on a thread, [`enter_job`] records the job's slot number and its label on that
//! thread. Handlers for the fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS) and an `atexit`
//! hook then write one note, `crash <signal> <slot>\n` (signal 0 for `exit`), to the sink chosen at
//! [`install`] — the crash journal in in-process mode, a pipe to the host in a plugin process — and one line
//! naming the signal and the job to stderr, so the log says what died. Only async-signal-safe calls are
//! made (`write`, `pwrite`, `sigaction`, `raise`), from buffers on the stack. Then the signal takes its
//! course: a fault goes back to the previous handler (Rust's stack-overflow report, else the default action),
//! a raised signal (`abort`) is re-raised with the default action, so the exit status is unchanged.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Signals that mean plugin code crashed.
const FATAL: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGSYS,
];
/// Longest job label kept for the stderr line.
const LABEL_MAX: usize = 160;

/// Where the note goes.
#[derive(Debug, Clone, Copy)]
pub enum Sink {
    /// Written at offset 0 of this file (the crash journal's note area).
    FileStart(libc::c_int),
    /// Appended to this pipe (a plugin process's crash-note descriptor).
    Pipe(libc::c_int),
    /// Nowhere (no journal could be opened): only the stderr line is written.
    StderrOnly,
}

static SINK_FD: AtomicI32 = AtomicI32::new(-1);
static SINK_IS_FILE: AtomicBool = AtomicBool::new(false);
static NOTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The handlers that were in place before ours, per signal number (restored before the signal goes on).
static mut PREVIOUS: [Option<libc::sigaction>; 32] = [None; 32];

thread_local! {
    /// The job running plugin code on this thread (slot 0 = none).
    static CURRENT: Cell<Running> = const { Cell::new(Running::NONE) };
}

/// The job a thread runs plugin code for: its slot and the texts of its label, borrowed from the caller of
/// [`enter_job`] for as long as its guard lives, and put into words only if the thread crashes (a label
/// formatted for every job would cost more than the rest of the note's bookkeeping).
#[derive(Clone, Copy)]
struct Running {
    slot: u32,
    id: Borrowed,
    queue: Borrowed,
    plugin: Borrowed,
}

impl Running {
    const NONE: Running = Running {
        slot: 0,
        id: Borrowed::EMPTY,
        queue: Borrowed::EMPTY,
        plugin: Borrowed::EMPTY,
    };

    /// The label the stderr line names the job by, cut at [`LABEL_MAX`] bytes. Async-signal-safe.
    fn label(&self) -> Truncating {
        let mut label = Truncating {
            buf: [0u8; LABEL_MAX],
            len: 0,
        };
        // SAFETY: the texts were borrowed by `enter_job` for the life of its guard, whose drop clears
        // CURRENT before they can go; only this thread reads them.
        let (id, queue, plugin) =
            unsafe { (self.id.text(), self.queue.text(), self.plugin.text()) };
        for part in ["job ", id, " of queue ", queue, " (plugin ", plugin, ")"] {
            label.push(part);
        }
        label
    }
}

/// A `&str` kept as its address and length in the thread's cell.
#[derive(Clone, Copy)]
struct Borrowed {
    ptr: *const u8,
    len: usize,
}

impl Borrowed {
    const EMPTY: Borrowed = Borrowed {
        ptr: std::ptr::null(),
        len: 0,
    };

    fn of(text: &str) -> Borrowed {
        Borrowed {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }

    /// # Safety
    /// The `&str` it was made from must still be alive.
    unsafe fn text<'a>(self) -> &'a str {
        if self.ptr.is_null() {
            return "";
        }
        // SAFETY: made from a live `&str` (the caller's promise), so the bytes are UTF-8 and in bounds.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(self.ptr, self.len)) }
    }
}

/// Marks this thread as running plugin code for `job` of `queue` (plugin `plugin`) in `slot` (non-zero)
/// until the guard is dropped, and gives the thread a signal stack roomy enough for the handlers of a crash
/// to nest (`altstack.rs`). Nothing is copied or formatted: the guard borrows the texts.
pub fn enter_job<'a>(slot: u32, id: &'a str, queue: &'a str, plugin: &'a str) -> Entered<'a> {
    super::altstack::ensure();
    CURRENT.with(|c| {
        c.set(Running {
            slot,
            id: Borrowed::of(id),
            queue: Borrowed::of(queue),
            plugin: Borrowed::of(plugin),
        })
    });
    Entered(PhantomData)
}

/// A fixed buffer that keeps what fits of the text pushed to it (never splitting a character).
struct Truncating {
    buf: [u8; LABEL_MAX],
    len: usize,
}

impl Truncating {
    fn push(&mut self, s: &str) {
        let room = LABEL_MAX - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }
}

/// Clears the thread's job when dropped; borrows the job's texts until then.
pub struct Entered<'a>(PhantomData<&'a str>);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(Running::NONE));
    }
}

/// Installs the handlers (once per process) writing notes to `sink`.
pub fn install(sink: Sink) {
    let (fd, is_file) = match sink {
        Sink::FileStart(fd) => (fd, true),
        Sink::Pipe(fd) => (fd, false),
        Sink::StderrOnly => (-1, false),
    };
    SINK_IS_FILE.store(is_file, Ordering::SeqCst);
    SINK_FD.store(fd, Ordering::SeqCst);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: plain libc calls with zero-initialised `sigaction` structs; PREVIOUS is written only here,
    // once, before any handler of ours can run.
    unsafe {
        for sig in FATAL {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &action, &mut old) == 0 {
                (*std::ptr::addr_of_mut!(PREVIOUS))[sig as usize] = Some(old);
            }
        }
        libc::atexit(on_exit);
    }
}

/// Writes the note for `signal` (0 = exit) if this thread runs a job and no note was written yet, and the
/// stderr line. Async-signal-safe.
fn note(signal: libc::c_int) {
    let running = CURRENT.with(|c| c.get());
    let slot = running.slot;
    if slot == 0 {
        return;
    }
    if !NOTED.swap(true, Ordering::SeqCst) {
        let mut buf = [0u8; 48];
        buf[..6].copy_from_slice(b"crash ");
        let mut at = 6;
        at += write_decimal(&mut buf[at..], signal as u64);
        buf[at] = b' ';
        at += 1;
        at += write_decimal(&mut buf[at..], u64::from(slot));
        buf[at] = b'\n';
        at += 1;
        let fd = SINK_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: write/pwrite of a stack buffer; both are async-signal-safe.
            unsafe {
                if SINK_IS_FILE.load(Ordering::SeqCst) {
                    libc::pwrite(fd, buf.as_ptr().cast(), at, 0);
                } else {
                    libc::write(fd, buf.as_ptr().cast(), at);
                }
            }
        }
    }
    let mut line = [0u8; 96 + LABEL_MAX];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(line.len() - at);
        line[at..at + n].copy_from_slice(&bytes[..n]);
        at += n;
    };
    put(b"frostguard-worker: plugin code ");
    if signal == 0 {
        put(b"called exit");
    } else {
        put(b"crashed with ");
        match signal_name(signal) {
            Some(name) => put(name.as_bytes()),
            None => {
                put(b"signal ");
                let mut digits = [0u8; 20];
                let n = write_decimal(&mut digits, signal as u64);
                put(&digits[..n]);
            }
        }
    }
    put(b" while running ");
    let label = running.label();
    put(&label.buf[..label.len]);
    put(b"\n");
    // SAFETY: write of a stack buffer to stderr.
    unsafe {
        libc::write(2, line.as_ptr().cast(), at);
    }
}

/// The conventional name of a signal (`SIGSEGV`), if it has a common one. Async-signal-safe.
pub fn signal_name(sig: libc::c_int) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Writes `n` in decimal at the start of `buf`; returns the length. Async-signal-safe (no allocation).
fn write_decimal(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    len
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    note(sig);
    // SAFETY: sigaction and raise are async-signal-safe; `info` is the kernel's siginfo for this signal.
    unsafe {
        let previous = (*std::ptr::addr_of!(PREVIOUS))
            .get(sig as usize)
            .copied()
            .flatten();
        let kernel_fault = !info.is_null() && (*info).si_code > 0;
        match previous {
            // A fault re-executes the faulting instruction on return, now with the previous handler (Rust's
            // stack-overflow report, or the default action).
            Some(old) if kernel_fault => {
                libc::sigaction(sig, &old, std::ptr::null_mut());
            }
            _ => {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
                libc::raise(sig);
            }
        }
    }
}

extern "C" fn on_exit() {
    note(0);
}

/// A note as written by the handlers: `(signal, slot)`, signal 0 meaning `exit`. `None` when `text` holds
/// no complete note (nothing crashed, or the write was cut short).
pub fn parse(text: &[u8]) -> Option<(i32, u32)> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.split('\n').next().filter(|_| text.contains('\n'))?;
    let mut parts = line.split(' ');
    if parts.next()? != "crash" {
        return None;
    }
    let signal = parts.next()?.parse().ok()?;
    let slot = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((signal, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_parsed_only_when_whole() {
        type Case = (&'static [u8], Option<(i32, u32)>);
        let table: [Case; 7] = [
            (b"crash 11 3\n", Some((11, 3))),
            (b"crash 0 12\n", Some((0, 12))),
            (b"crash 6 1\nrest", Some((6, 1))),
            (b"crash 11 3", None),
            (b"\0\0\0\0", None),
            (b"", None),
            (b"crash x 1\n", None),
        ];
        for (text, want) in table {
            assert_eq!(parse(text), want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn the_label_names_the_job_and_is_cut_on_a_character_boundary() {
        let label = |id: &str, queue: &str, plugin: &str| {
            let _entered = enter_job(3, id, queue, plugin);
            let running = CURRENT.with(|c| c.get());
            assert_eq!(running.slot, 3);
            let label = running.label();
            String::from_utf8(label.buf[..label.len].to_vec()).unwrap()
        };
        assert_eq!(label("7", "q", "p"), "job 7 of queue q (plugin p)");
        let long = "é".repeat(LABEL_MAX);
        let cut = label(&long, "q", "p");
        assert!(
            cut.len() <= LABEL_MAX && cut.len() > LABEL_MAX - 2,
            "{}",
            cut.len()
        );
        assert!(cut.starts_with("job éé"));
        // The guard's drop clears the thread's job.
        assert_eq!(CURRENT.with(|c| c.get()).slot, 0);
        assert_eq!(
            CURRENT.with(|c| c.get()).label().len,
            "job  of queue  (plugin )".len()
        );
    }

    #[test]
    fn decimals_without_allocation() {
        let mut buf = [0u8; 20];
        for (n, want) in [
            (0u64, "0"),
            (7, "7"),
            (11, "11"),
            (4_294_967_295, "4294967295"),
        ] {
            let len = write_decimal(&mut buf, n);
            assert_eq!(&buf[..len], want.as_bytes());
        }
    }
}
