//! Command output on stdout that ends quietly when its reader goes away.
//!
//! `println!` panics with "failed printing to stdout: Broken pipe" when the reader of a pipe has exited
//! (`frostguard-worker plugins run … | head`). Every subcommand that prints writes through [`out!`] instead,
//! which returns the write error; [`is_broken_pipe`] lets `main` recognise it and exit 0 without a message, as
//! command-line tools do. (Rust ignores SIGPIPE, so a closed pipe is an `EPIPE` error, never a signal; the
//! worker's own sockets rely on that, so the signal is left ignored.)

use std::io;

/// Writes one line to stdout, `?`-propagating the error (a closed pipe included) to the caller.
///
/// ```ignore
/// out!("plugin directory: {}", dir.display());
/// ```
macro_rules! out {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        writeln!(::std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use out;

/// True when `err` (or anything in its chain) is a write to a pipe whose reader has gone.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("print");
        assert!(is_broken_pipe(&pipe));
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_broken_pipe(&other));
        assert!(!is_broken_pipe(&anyhow::anyhow!("Broken pipe")));
    }
}
