//! Why a plugin file is rejected, and the checks that say so: the file itself before `dlopen` (ELF, length,
//! machine, glibc), abi_stable's verdicts on the library reduced to one line each, and the plugin's
//! description of itself. Every rejection names the file and the stage of loading it stopped at.

use std::fmt;
use std::path::{Path, PathBuf};

use abi_stable::library::LibraryError;
use abi_stable::std_types::RResult;
use serde::Serialize;

use crate::abi::PluginModuleRef;
use crate::elf_check::Mismatch;
use crate::types::PluginInfo;

/// The step of loading at which a plugin was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadStage {
    /// The file is missing, unreadable, or not a shared library.
    File,
    /// The dynamic loader refused it.
    Open,
    /// It is not a plugin, or was built against an incompatible plugin ABI.
    Abi,
    /// Its self-description is unusable.
    Describe,
    /// It claims a queue another plugin already serves.
    QueueConflict,
    /// Its configuration could not be assembled.
    Config,
    /// Its `init` refused to start.
    Init,
}

impl fmt::Display for LoadStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadStage::File => "file",
            LoadStage::Open => "open",
            LoadStage::Abi => "abi",
            LoadStage::Describe => "describe",
            LoadStage::QueueConflict => "queue-conflict",
            LoadStage::Config => "config",
            LoadStage::Init => "init",
        })
    }
}

/// Why one plugin file could not be used: which file, at which stage, and a one-line reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {path} rejected at stage {stage}: {reason}", path = .path.display())]
pub struct LoadError {
    /// The plugin file.
    pub path: PathBuf,
    /// Where loading stopped.
    pub stage: LoadStage,
    /// What went wrong, short enough for one log line.
    pub reason: String,
}

impl LoadError {
    /// A rejection of `path` at `stage`.
    pub fn new(path: &Path, stage: LoadStage, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            stage,
            reason: reason.into(),
        }
    }
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Rejects what must never reach `dlopen`: a missing or non-ELF file, and a truncated one. The dynamic loader
/// maps segments past the end of a truncated file and the process dies of SIGBUS when it touches them, so the
/// segment and section tables are checked against the file's real length first. Then a file built for another
/// machine or needing a newer glibc is rejected in plain words (`elf_check`; the loader's own are cryptic).
pub(super) fn check_file(path: &Path) -> Result<(), LoadError> {
    use object::{Object, ObjectSection, ObjectSegment};
    let reject = |reason: String| LoadError::new(path, LoadStage::File, reason);
    let meta = std::fs::metadata(path).map_err(|e| reject(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(reject("not a regular file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| reject(format!("cannot read: {e}")))?;
    if !bytes.starts_with(&ELF_MAGIC) {
        return Err(reject("not an ELF shared library".into()));
    }
    let elf = object::File::parse(&*bytes)
        .map_err(|e| reject(format!("corrupt or truncated ELF file: {e}")))?;
    let len = bytes.len() as u64;
    let beyond_end = |(offset, size): (u64, u64)| offset.saturating_add(size) > len;
    let truncated = elf.segments().any(|s| beyond_end(s.file_range()))
        || elf
            .sections()
            .any(|s| s.file_range().is_some_and(beyond_end));
    if truncated {
        return Err(reject(format!(
            "truncated ELF file: its segments extend past its {len} bytes"
        )));
    }
    crate::elf_check::check(&elf, &bytes).map_err(|mismatch| match mismatch {
        Mismatch::Machine(reason) => reject(reason),
        Mismatch::Glibc(reason) => LoadError::new(path, LoadStage::Open, reason),
    })
}

pub(super) fn library_error(path: &Path, err: LibraryError) -> LoadError {
    let (stage, reason) = match err {
        LibraryError::OpenError { err, .. } => (LoadStage::Open, format!("dlopen failed: {err}")),
        LibraryError::GetSymbolError { .. } => (
            LoadStage::Abi,
            "not a frostguard plugin: it exports no plugin root module".to_owned(),
        ),
        LibraryError::InvalidAbiHeader(h) => (
            LoadStage::Abi,
            format!(
                "built with an incompatible abi_stable (ABI {}.{}); this host uses abi_stable 0.11",
                h.abi_major, h.abi_minor
            ),
        ),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => (
            LoadStage::Abi,
            api_version_mismatch(&actual_version.to_string(), &expected_version.to_string()),
        ),
        LibraryError::AbiInstability(e) => {
            let summary = summarize_layout_error(&e.to_string());
            // Another 0.MINOR with an unchanged layout passes abi_stable's version check and is caught by the
            // layout check, which compares the package version recorded in every type.
            let versions = summary
                .strip_prefix("incompatible package versions (host expects ")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|rest| rest.split_once(", plugin has "));
            let reason = match versions {
                Some((host, plugin)) => api_version_mismatch(plugin, host),
                None => format!("incompatible plugin ABI layout: {summary}"),
            };
            (LoadStage::Abi, reason)
        }
        LibraryError::RootModule { err, .. } => (
            LoadStage::Abi,
            format!("the plugin's root module constructor failed: {err}"),
        ),
        other => (LoadStage::Abi, one_line(&other.to_string(), 300)),
    };
    LoadError::new(path, stage, reason)
}

fn api_version_mismatch(plugin: &str, host: &str) -> String {
    format!(
        "built against frostguard-plugin-api {plugin}, this host has {host} (a plugin needs the same 0.MINOR \
         and a version at least the host's)"
    )
}

/// abi_stable reports a layout mismatch as a dump of both layouts (hundreds of lines) whose verdict reads
/// `Error:<what>` / `Expected:` / `<value>` / `Found:` / `<value>`; keep only the first verdict.
fn summarize_layout_error(full: &str) -> String {
    let lines: Vec<&str> = full.lines().map(str::trim).collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("Error:")) else {
        return one_line(full, 300);
    };
    let what = lines[start].trim_start_matches("Error:").trim();
    let value_after = |label: &str| -> Option<&str> {
        let at = start + lines[start..].iter().position(|l| l.starts_with(label))?;
        let same_line = lines[at][label.len()..].trim();
        if same_line.is_empty() {
            lines.get(at + 1).copied().filter(|l| !l.is_empty())
        } else {
            Some(same_line)
        }
    };
    let verdict = match (value_after("Expected:"), value_after("Found:")) {
        (Some(e), Some(f)) => format!("{what} (host expects {e}, plugin has {f})"),
        _ => what.to_owned(),
    };
    one_line(&verdict, 300)
}

fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

pub(super) fn describe(path: &Path, module: PluginModuleRef) -> Result<PluginInfo, LoadError> {
    let reject = |reason: String| LoadError::new(path, LoadStage::Describe, reason);
    let json = match (module.describe())() {
        RResult::ROk(json) => json,
        RResult::RErr(reason) => return Err(reject(reason.into_string())),
    };
    let info: PluginInfo = serde_json::from_str(json.as_str())
        .map_err(|e| reject(format!("description is not valid JSON: {e}")))?;
    if info.name.trim().is_empty() {
        return Err(reject("the plugin has no name".into()));
    }
    if info.queues.is_empty() {
        return Err(reject("the plugin serves no queue".into()));
    }
    for p in &info.queues {
        if p.queue.trim().is_empty() || p.queue.contains(':') {
            return Err(reject(format!("invalid queue name {:?}", p.queue)));
        }
        if p.job_names.is_empty() {
            return Err(reject(format!("queue {} accepts no job names", p.queue)));
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dump_is_reduced_to_its_verdict() {
        let dump = "lots\n  of layout\nError:mismatched type\nExpected:\n    u32\nFound:\n    u64\n\nError:other";
        assert_eq!(
            summarize_layout_error(dump),
            "mismatched type (host expects u32, plugin has u64)"
        );
    }
}
