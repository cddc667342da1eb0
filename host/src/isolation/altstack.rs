//! A roomy alternate signal stack for the threads that run plugin code, so a crash's handlers can nest.
//!
//! When plugin code overflows its stack, the SIGSEGV is handled on the thread's alternate signal stack:
//! first the crash note's handler, then Rust's stack-overflow report, which calls `abort`; the SIGABRT
//! that follows is delivered while still on that stack, and its handler (the crash note's again) needs a
//! second signal frame there. The stack Rust's runtime gives each thread is sized for one frame
//! (`max(SIGSTKSZ, AT_MINSIGSTKSZ)`); on a CPU whose signal frame is large (AVX-512 state makes it ~3.4 KiB)
//! the nested frame does not fit, and the process dies of a second SIGSEGV in the handler instead of the
//! SIGABRT the report announced. Each thread that runs plugin code therefore gets one of these once: 256 KiB
//! with a guard page below it, replaced by nothing else and unmapped when the thread ends.

use std::cell::RefCell;

/// Usable size of the stack.
const SIZE: usize = 256 * 1024;

thread_local! {
    /// This thread's stack, once installed (`None` inside: installing it failed; not retried).
    static STACK: RefCell<Option<Option<AltStack>>> = const { RefCell::new(None) };
}

/// Gives the calling thread the roomy alternate signal stack, unless it has it already.
pub fn ensure() {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(AltStack::install());
        }
    });
}

/// One mapped alternate signal stack: `len` bytes at `base`, the lowest page a guard.
struct AltStack {
    base: *mut libc::c_void,
    len: usize,
}

impl AltStack {
    fn install() -> Option<AltStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = SIZE + page;
        // SAFETY: an anonymous private mapping owned by this value alone; the guard page is inside it, and
        // `sigaltstack` is given the writable part above the guard. On any failure the mapping is undone.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return None;
            }
            let stack = libc::stack_t {
                ss_sp: base.cast::<u8>().add(page).cast(),
                ss_flags: 0,
                ss_size: SIZE,
            };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0
                || libc::sigaltstack(&stack, std::ptr::null_mut()) != 0
            {
                libc::munmap(base, len);
                return None;
            }
            Some(AltStack { base, len })
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: the stack is switched off first if it is still this thread's (a thread ending is never
        // inside a signal handler), then the mapping this value owns is unmapped.
        unsafe {
            let mut current: libc::stack_t = std::mem::zeroed();
            if libc::sigaltstack(std::ptr::null(), &mut current) == 0
                && current.ss_flags & libc::SS_DISABLE == 0
                && current.ss_sp.cast::<u8>() >= self.base.cast::<u8>()
                && current.ss_sp.cast::<u8>() < self.base.cast::<u8>().add(self.len)
            {
                let off = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&off, std::ptr::null_mut());
            }
            libc::munmap(self.base, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> libc::stack_t {
        // SAFETY: reads this thread's alternate signal stack into a zeroed struct.
        unsafe {
            let mut s: libc::stack_t = std::mem::zeroed();
            assert_eq!(libc::sigaltstack(std::ptr::null(), &mut s), 0);
            s
        }
    }

    #[test]
    fn a_thread_gets_the_roomy_stack_once_and_gives_it_back() {
        std::thread::spawn(|| {
            ensure();
            let first = current();
            assert_eq!(first.ss_flags & libc::SS_DISABLE, 0);
            assert_eq!(first.ss_size, SIZE);
            ensure();
            assert_eq!(current().ss_sp, first.ss_sp, "installed once per thread");
            // Dropped here at thread end: switched off, unmapped (a second thread installs its own).
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            ensure();
            assert_eq!(current().ss_size, SIZE);
        })
        .join()
        .unwrap();
    }
}
