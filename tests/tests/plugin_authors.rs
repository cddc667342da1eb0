//! A plugin author outside this repository: `frostguard-worker plugins new` writes a crate that builds and
//! passes its own test, with a different compiler than the host's, and runs jobs in the host; and the
//! compatibility rule of docs/plugins.md holds: the compiler, the optimisation level and the plugin's own
//! dependency versions do not matter, while another interface minor or `panic = "abort"` is refused at load
//! with a reason the author can act on. (Target and glibc are in host/tests/plugin_files.rs.)
//!
//! Plugins are built the way an author builds them: cargo in the crate's own directory, outside this
//! workspace. Builds with the host's toolchain share the workspace's target directory (its dependencies are
//! already built); builds with another toolchain share `target/plugin-authors/<toolchain>` across runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frostguard_tests::{json, worker_bin, workspace_root, NodeQueue, RedisServer, TempDir, Worker};
use serde_json::Value;

/// `rustc -V` of the toolchain that built the host (the one `rust-toolchain.toml` pins).
fn host_rustc() -> String {
    let out = clean(Command::new("rustc"))
        .arg("-V")
        .current_dir(workspace_root())
        .output()
        .expect("rustc");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The toolchain `rust-toolchain.toml` pins (`1.95.0`).
fn pinned_toolchain() -> String {
    let text = std::fs::read_to_string(workspace_root().join("rust-toolchain.toml")).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .expect("rust-toolchain.toml names a channel")
        .to_owned()
}

fn have_rustup() -> bool {
    Command::new("rustup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An installed rustup toolchain whose rustc differs from the host's (nightly first, then stable, beta and
/// the rest), with its `rustc -V`.
fn other_toolchain() -> Option<(String, String)> {
    if !have_rustup() {
        return None;
    }
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .ok()?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let rank = |n: &str| {
        ["nightly", "stable", "beta"]
            .iter()
            .position(|p| n.starts_with(p))
            .unwrap_or(3)
    };
    names.sort_by_key(|n| rank(n));
    let host = host_rustc();
    names.into_iter().find_map(|name| {
        let out = clean(Command::new("rustup"))
            .args(["run", &name, "rustc", "-V"])
            .output()
            .ok()?;
        let version = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && version != host && !version.is_empty()).then_some((name, version))
    })
}

/// Removes what the cargo running this test passed down (its toolchain, target directory, package
/// variables), so that a nested cargo behaves as in an author's shell.
fn clean(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS"
            || key.starts_with("NEXTEST")
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// `cargo` of `toolchain` (rustup) in `dir` with target directory `target`.
fn cargo(toolchain: &str, dir: &Path, target: &Path) -> Command {
    let mut cmd = if have_rustup() {
        let mut c = clean(Command::new("rustup"));
        c.args(["run", toolchain, "cargo"]);
        c
    } else {
        clean(Command::new("cargo"))
    };
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target);
    cmd
}

fn workspace_target() -> PathBuf {
    workspace_root().join("target")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds the crate in `cmd`'s directory and returns its `cdylib`; the crate itself must compile without a
/// warning.
fn build_cdylib(mut cmd: Command, extra: &[&str]) -> PathBuf {
    let out = run(cmd
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(extra));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .expect("cargo built a cdylib")
}

/// `frostguard-worker plugins new NAME --queue QUEUE --path <dir>/NAME [extra]`; the crate's directory.
fn plugins_new(dir: &Path, name: &str, queue: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out = run(clean(Command::new(worker_bin()))
        .args(["plugins", "new", name, "--queue", queue, "--path"])
        .arg(&path)
        .args(extra));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("created plugin crate {name}")),
        "{text}"
    );
    path
}

fn plugins(args: &[&str], lib: &Path) -> (Option<i32>, String) {
    let dir = TempDir::new("author-plugins").unwrap();
    std::fs::copy(lib, dir.path().join(lib.file_name().unwrap())).unwrap();
    let out = clean(Command::new(worker_bin()))
        .arg("plugins")
        .args(args)
        .arg("--plugin-dir")
        .arg(dir.path())
        .env_remove("PLUGIN_DIR")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `plugins --json` for a directory holding `lib` only: the rejection (stage, reason) of that one file.
fn rejection(lib: &Path) -> (String, String) {
    let (code, stdout) = plugins(&["--json"], lib);
    assert_eq!(code, Some(1), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let d = &report["disabled"][0];
    (
        d["stage"].as_str().unwrap().to_owned(),
        d["reason"].as_str().unwrap().to_owned(),
    )
}

fn plugins_run(lib: &Path, queue: &str, name: &str, data: Value) -> Value {
    let out = clean(Command::new(worker_bin()))
        .args(["plugins", "run", "--plugin"])
        .arg(lib)
        .args([
            "--queue",
            queue,
            "--name",
            name,
            "--data",
            &data.to_string(),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).expect("plugins run prints JSON")
}

#[test]
fn new_plugin_built_by_another_toolchain_passes_its_test_and_runs_jobs_in_the_host() {
    let (toolchain, version) = other_toolchain().unwrap_or_else(|| {
        eprintln!("no toolchain other than the host's is installed: building with the host's");
        (pinned_toolchain(), host_rustc())
    });
    let scratch = TempDir::new("author-new").unwrap();
    let krate = plugins_new(scratch.path(), "fg-author-words", "author-words", &[]);
    let target = workspace_target().join("plugin-authors").join(&toolchain);

    // As generated: its harness test passes (release: another optimisation level than the debug host too).
    let out = run(cargo(&toolchain, &krate, &target).args(["test", "--release"]));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("test result: ok. 3 passed"), "{report}");
    let lib = build_cdylib(cargo(&toolchain, &krate, &target), &["--release"]);
    let lib_bytes = std::fs::read(&lib).unwrap();
    let stamp = version.replacen("rustc ", "rustc version ", 1);
    assert!(
        lib_bytes
            .windows(stamp.len())
            .any(|w| w == stamp.as_bytes()),
        "{} was not built by {version}",
        lib.display()
    );

    let (code, listing) = plugins(&["--init"], &lib);
    assert_eq!(code, Some(0), "{listing}");
    assert!(listing.contains("fg-author-words 0.1.0 — ok"), "{listing}");
    assert!(
        listing.contains("queue author-words: concurrency 2"),
        "{listing}"
    );

    let run = plugins_run(
        &lib,
        "author-words",
        "count-words",
        json!({"text": "a b c\nd"}),
    );
    assert_eq!(
        run["outcome"],
        json!({"status": "completed", "result": {"words": 4, "lines": 2}}),
        "{run:#}"
    );

    // The real worker, with jobs from Node BullMQ.
    let redis = RedisServer::start().unwrap();
    let worker = Worker::builder()
        .redis(&redis)
        .plugin_file(&lib)
        .spawn_ready()
        .unwrap();
    let queue = NodeQueue::new(&redis, "author-words");
    let good = queue
        .add_one(
            "count-words",
            json!({"text": "hello plugin world"}),
            json!({}),
        )
        .unwrap();
    let bad = queue
        .add_one(
            "count-words",
            json!({"txt": "typo"}),
            json!({"attempts": 3}),
        )
        .unwrap();
    let jobs = queue.wait_finished(&[good, bad]).unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!({"words": 3, "lines": 1}));
    assert_eq!(jobs[0].logs, vec!["counted 3 words in 1 lines".to_owned()]);
    assert_eq!(jobs[1].state, "failed", "{:?}", jobs[1]);
    assert_eq!(jobs[1].attempts_made, 1, "bad data is not retried");
    assert!(
        jobs[1]
            .failed_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("invalid job data: missing field `text`")),
        "{:?}",
        jobs[1]
    );
    drop(worker);
}

/// `name = "<crate>"` followed by `version = "<v>"` in a Cargo.lock.
fn locked_version(lockfile: &Path, krate: &str) -> String {
    let text = std::fs::read_to_string(lockfile).unwrap();
    let header = format!("name = \"{krate}\"\n");
    let at = text
        .find(&header)
        .unwrap_or_else(|| panic!("{krate} in {}", lockfile.display()));
    text[at + header.len()..]
        .lines()
        .next()
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_owned()
}

#[test]
fn a_plugin_with_its_own_tokio_and_serde_versions_runs_jobs() {
    let fixture = workspace_root().join("tests/fixtures/own-deps-plugin");
    for krate in ["tokio", "serde", "serde_json"] {
        let host = locked_version(&workspace_root().join("Cargo.lock"), krate);
        let plugin = locked_version(&fixture.join("Cargo.lock"), krate);
        assert_ne!(
            host, plugin,
            "the fixture must use another {krate} than the host"
        );
    }
    let lib = build_cdylib(
        cargo(&pinned_toolchain(), &fixture, &workspace_target()),
        &["--locked"],
    );

    let run = plugins_run(&lib, "own-deps", "double", json!({"ms": 5}));
    assert_eq!(
        run["outcome"],
        json!({"status": "completed", "result": {"doubled": 10}})
    );

    // In the worker, next to the host's own tokio runtime.
    let redis = RedisServer::start().unwrap();
    let _worker = Worker::builder()
        .redis(&redis)
        .plugin_file(&lib)
        .spawn_ready()
        .unwrap();
    let queue = NodeQueue::new(&redis, "own-deps");
    let ids: Vec<String> = (1..=4)
        .map(|ms| {
            queue
                .add_one("double", json!({"ms": ms}), json!({}))
                .unwrap()
        })
        .collect();
    for (job, ms) in queue.wait_finished(&ids).unwrap().iter().zip(1..) {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.returnvalue, json!({"doubled": 2 * ms}));
    }
}

/// Copies the directory `from` to `to`, subdirectories (a module's own files) included.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of `plugin-api/` as a standalone crate of version `version` (workspace-inherited fields resolved).
fn api_copy(dir: &Path, version: &str) -> PathBuf {
    let root = workspace_root();
    let workspace = manifest_values::Manifest::read(&root.join("Cargo.toml"));
    let copy = dir.join(format!("plugin-api-{version}"));
    copy_tree(&root.join("plugin-api/src"), &copy.join("src"));
    let manifest = std::fs::read_to_string(root.join("plugin-api/Cargo.toml")).unwrap();
    let mut out = String::new();
    for line in manifest.lines() {
        let resolved = match line.split_once(".workspace = true") {
            Some((key, "")) => match workspace.get("workspace.package", key) {
                Some(value) => format!("{key} = {value}"),
                None => format!(
                    "{key} = {}",
                    workspace.get("workspace.dependencies", key).unwrap()
                ),
            },
            _ if line.starts_with("version = ") => format!("version = \"{version}\""),
            _ => line.to_owned(),
        };
        out.push_str(&resolved);
        out.push('\n');
    }
    out.push_str("\n[workspace]\n");
    std::fs::write(copy.join("Cargo.toml"), out).unwrap();
    copy
}

/// Reads the one-line `key = value` entries of a table of the workspace manifest (all that the inherited
/// fields of `plugin-api/Cargo.toml` use).
mod manifest_values {
    use std::path::Path;

    pub struct Manifest(String);

    impl Manifest {
        pub fn read(path: &Path) -> Manifest {
            Manifest(std::fs::read_to_string(path).unwrap())
        }

        /// The raw value text of `key` in `[table]`.
        pub fn get(&self, table: &str, key: &str) -> Option<String> {
            let header = format!("[{table}]");
            let mut inside = false;
            for line in self.0.lines() {
                let line = line.trim();
                if line.starts_with('[') {
                    inside = line == header;
                } else if inside {
                    if let Some((k, v)) = line.split_once('=') {
                        if k.trim() == key {
                            return Some(v.trim().to_owned());
                        }
                    }
                }
            }
            None
        }
    }
}

#[test]
fn a_plugin_built_against_another_api_minor_is_disabled_naming_both_versions() {
    let scratch = TempDir::new("author-minor").unwrap();
    let api = api_copy(scratch.path(), "0.2.0");
    let krate = plugins_new(
        scratch.path(),
        "fg-author-minor",
        "author-minor",
        &["--api-path", api.to_str().unwrap()],
    );
    let lib = build_cdylib(cargo(&pinned_toolchain(), &krate, &workspace_target()), &[]);
    let (stage, reason) = rejection(&lib);
    assert_eq!(stage, "abi", "{reason}");
    assert!(
        reason.contains("frostguard-plugin-api 0.2.0") && reason.contains("0.1.0"),
        "{reason}"
    );
}

#[test]
fn a_plugin_built_with_panic_abort_is_disabled() {
    let scratch = TempDir::new("author-abort").unwrap();
    let krate = plugins_new(scratch.path(), "fg-author-abort", "author-abort", &[]);
    let mut build = cargo(&pinned_toolchain(), &krate, &workspace_target());
    build.env("CARGO_PROFILE_DEV_PANIC", "abort");
    let lib = build_cdylib(build, &[]);
    let (stage, reason) = rejection(&lib);
    assert_eq!(stage, "describe", "{reason}");
    assert!(
        reason.starts_with("built with panic = \"abort\": a panic would abort the host"),
        "{reason}"
    );
}
