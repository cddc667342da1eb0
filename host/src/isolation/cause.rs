//! How a plugin process ended, in words: exit statuses and signals turned into the reasons jobs fail with.
//!
//! Pure functions, tested as a table, so that the texts operators grep for (`plugin process crashed:
//! SIGSEGV`, `crashed the worker (signal SIGABRT)`) are decided in one place.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The way a process running plugin code ended (or was seen to end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Killed by this signal (SIGSEGV, SIGABRT, ...).
    Signal(i32),
    /// Exited with this status (a plugin calling `exit`, or the child giving up).
    Exit(i32),
    /// Plugin code called `exit` (status not known to the recorder).
    ExitCalled,
}

impl Ending {
    /// From a child's wait status (`None` for a status that is neither, which Linux never reports).
    pub fn from_status(status: ExitStatus) -> Option<Ending> {
        match (status.signal(), status.code()) {
            (Some(sig), _) => Some(Ending::Signal(sig)),
            (None, Some(code)) => Some(Ending::Exit(code)),
            (None, None) => None,
        }
    }

    /// From a crash note's signal field (0 = `exit` was called).
    pub fn from_note(signal: i32) -> Ending {
        if signal == 0 {
            Ending::ExitCalled
        } else {
            Ending::Signal(signal)
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Signal(sig) => f.write_str(&signal_name(*sig)),
            Ending::Exit(code) => write!(f, "exit status {code}"),
            Ending::ExitCalled => f.write_str("exit called by the plugin"),
        }
    }
}

/// The conventional name of a signal (`SIGSEGV`), or `signal N` for one without a common name.
pub fn signal_name(sig: i32) -> String {
    match super::crashnote::signal_name(sig) {
        Some(name) => name.to_owned(),
        None => format!("signal {sig}"),
    }
}

/// The reason of every job a crashed plugin process held (retryable: attempts and backoff apply).
pub fn process_crash_reason(plugin: &str, ending: Ending) -> String {
    format!("plugin process crashed: {ending} (plugin {plugin})")
}

/// The reason of a job failed for good because running it crashed the worker `crashes` times.
pub fn poison_reason(plugin: &str, ending: Ending, crashes: u64) -> String {
    let what = match ending {
        Ending::Signal(sig) => match signal_name(sig) {
            name if name.starts_with("SIG") => format!("signal {name}"),
            unnamed => unnamed,
        },
        other => other.to_string(),
    };
    let times = if crashes == 1 {
        "once".to_owned()
    } else {
        format!("{crashes} times")
    };
    format!("crashed the worker ({what}) {times} (plugin {plugin}); not run again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_notes_become_endings() {
        // Raw wait statuses: low 7 bits = signal, else the exit code in the next byte.
        let table = [
            (11, Some(Ending::Signal(11))),
            (6 | 0x80, Some(Ending::Signal(6))), // core dumped
            (3 << 8, Some(Ending::Exit(3))),
            (0, Some(Ending::Exit(0))),
        ];
        for (raw, want) in table {
            assert_eq!(
                Ending::from_status(ExitStatus::from_raw(raw)),
                want,
                "{raw:#x}"
            );
        }
        assert_eq!(Ending::from_note(0), Ending::ExitCalled);
        assert_eq!(Ending::from_note(11), Ending::Signal(11));
    }

    #[test]
    fn reasons_name_the_plugin_and_the_signal() {
        let table = [
            (
                process_crash_reason("test-crashes", Ending::Signal(libc::SIGSEGV)),
                "plugin process crashed: SIGSEGV (plugin test-crashes)",
            ),
            (
                process_crash_reason("p", Ending::Exit(3)),
                "plugin process crashed: exit status 3 (plugin p)",
            ),
            (
                poison_reason("p", Ending::Signal(libc::SIGABRT), 2),
                "crashed the worker (signal SIGABRT) 2 times (plugin p); not run again",
            ),
            (
                poison_reason("p", Ending::ExitCalled, 1),
                "crashed the worker (exit called by the plugin) once (plugin p); not run again",
            ),
            (
                poison_reason("p", Ending::Signal(64), 3),
                "crashed the worker (signal 64) 3 times (plugin p); not run again",
            ),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
    }
}
