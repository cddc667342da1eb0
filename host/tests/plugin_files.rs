//! What `frostguard-worker plugins` tells an author whose plugin file cannot run on this host (built for
//! another machine, or against a newer glibc), and that every printing subcommand ends quietly when the reader
//! of its output has gone (`frostguard-worker plugins … | head`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use plugin_api::harness::build_plugin;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_frostguard-worker");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fg-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn outcomes_lib() -> PathBuf {
    build_plugin("fg-test-outcomes").unwrap()
}

/// `plugins --json` over a directory holding only `lib`; the one disabled entry of the report.
fn disabled_entry(lib: &[u8]) -> Value {
    let dir = Scratch::new(&format!("one-{}", lib.len()));
    std::fs::write(dir.0.join("libpatched.so"), lib).unwrap();
    let out = Command::new(BIN)
        .args(["plugins", "--json", "--plugin-dir"])
        .arg(&dir.0)
        .env_remove("PLUGIN_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["loaded"], serde_json::json!([]), "{report:#}");
    report["disabled"][0].clone()
}

/// The glibc this machine runs, as `getconf` reports it (`2.36`).
fn system_glibc() -> String {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .expect("getconf");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .strip_prefix("glibc ")
        .expect("getconf GNU_LIBC_VERSION prints `glibc X.Y`")
        .to_owned()
}

/// Rewrites the newest two-digit `GLIBC_2.NN` symbol-version name the library needs into `GLIBC_2.99`, in
/// place (same length), as if it had been linked against a glibc from the future. Returns the old name.
fn require_future_glibc(lib: &mut [u8]) -> String {
    let mut newest: Option<(u32, usize)> = None;
    let pattern = b"\0GLIBC_2.";
    for at in 0..lib.len().saturating_sub(pattern.len() + 3) {
        if &lib[at..at + pattern.len()] != pattern {
            continue;
        }
        let digits = &lib[at + pattern.len()..at + pattern.len() + 3];
        if digits[0].is_ascii_digit() && digits[1].is_ascii_digit() && digits[2] == 0 {
            let minor = (digits[0] - b'0') as u32 * 10 + (digits[1] - b'0') as u32;
            if newest.is_none_or(|(m, _)| minor > m) {
                newest = Some((minor, at + pattern.len()));
            }
        }
    }
    let (minor, at) = newest.expect("the plugin needs some GLIBC_2.NN symbol version");
    lib[at..at + 2].copy_from_slice(b"99");
    format!("GLIBC_2.{minor}")
}

#[test]
fn a_plugin_needing_a_newer_glibc_is_disabled_naming_the_missing_version_and_the_host_glibc() {
    let mut lib = std::fs::read(outcomes_lib()).unwrap();
    let replaced = require_future_glibc(&mut lib);
    let entry = disabled_entry(&lib);
    assert_eq!(entry["stage"], "open", "{entry:#}");
    let reason = entry["reason"].as_str().unwrap();
    let host = system_glibc();
    assert!(
        reason.starts_with(&format!(
            "needs glibc 2.99 but this host has glibc {host}: missing symbol version GLIBC_2.99 (libc.so.6: "
        )),
        "{replaced} -> GLIBC_2.99: {reason}"
    );
    assert!(
        reason.contains("inside the container image's build stage"),
        "{reason}"
    );
}

#[test]
fn a_plugin_built_for_another_machine_is_disabled_naming_both_machines() {
    let mut lib = std::fs::read(outcomes_lib()).unwrap();
    // e_machine (offset 18, little-endian): EM_AARCH64 on an x86_64 host, EM_X86_64 on an aarch64 one.
    let other: u16 = if cfg!(target_arch = "x86_64") {
        183
    } else {
        62
    };
    lib[18..20].copy_from_slice(&other.to_le_bytes());
    let entry = disabled_entry(&lib);
    assert_eq!(entry["stage"], "file", "{entry:#}");
    let reason = entry["reason"].as_str().unwrap();
    let (theirs, ours) = if cfg!(target_arch = "x86_64") {
        ("aarch64", "x86_64")
    } else {
        ("x86_64", "aarch64")
    };
    assert!(
        reason.starts_with(&format!(
            "built for another machine ({theirs}, 64-bit) than this host ({ours}, 64-bit)"
        )),
        "{reason}"
    );
}

/// Runs the host with its stdout on a pipe whose reader has already gone: the first write fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> Output {
    // The write end of a pipe whose only reader (the stdin of `true`) is gone once `true` has exited;
    // std::io::pipe would say this more plainly but is newer than the workspace's rust-version.
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run true");
    let writer = reader.stdin.take().expect("piped stdin");
    reader.wait().expect("true exits");
    Command::new(BIN)
        .args(args)
        .env_remove("PLUGIN_DIR")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn printing_subcommands_end_quietly_when_the_reader_has_gone() {
    let lib = outcomes_lib();
    let dir = Scratch::new("pipe");
    std::fs::copy(&lib, dir.0.join("libfg_test_outcomes.so")).unwrap();
    let dir = dir.0.to_str().unwrap();
    let lib = lib.to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["plugins", "--plugin-dir", dir],
        &["plugins", "--plugin-dir", dir, "--json"],
        &["plugins", "--plugin-dir", dir, "--init"],
        &[
            "plugins",
            "run",
            "--plugin",
            lib,
            "--queue",
            "test-outcomes",
            "--name",
            "progress",
        ],
    ];
    for args in commands {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}
