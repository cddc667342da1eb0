//! The Kubernetes manifests (`deploy/kubernetes/`) checked offline: the core objects against Kubernetes'
//! own OpenAPI schemas (`kubernetes-validate` from PyPI, strict: unknown fields are errors), the KEDA
//! `ScaledObject` and the prometheus-operator `PodMonitor` against validators generated from those projects'
//! CRDs (`@kubernetes-models/keda`, `@kubernetes-models/prometheus-operator`), and the files against each
//! other (`tests/kube/validate.mjs`). Broken manifests are shown to fail, so the checks can fail.
//!
//! The tools are installed on first use (as `scripts/test.sh` does): `npm ci` in `tests/kube`, and
//! `kubernetes-validate` into `target/kube-validate` with pip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use frostguard_tests::{workspace_root, TempDir};
use serde_json::Value;

/// The Kubernetes version the core objects are validated against: the oldest minor still commonly run.
const KUBERNETES_VERSION: &str = "1.30.0";
/// The pinned validator.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn manifests() -> Vec<PathBuf> {
    let dir = workspace_root().join("deploy").join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn kube_dir() -> PathBuf {
    workspace_root().join("tests").join("kube")
}

/// `target/kube-validate`, where pip installs kubernetes-validate.
fn validate_dir() -> PathBuf {
    frostguard_tests::build_dir()
        .parent()
        .expect("target dir")
        .join("kube-validate")
}

/// Installs the tools where missing, under `flock` (the lock file in the target directory, out of the
/// source tree) so parallel test processes install once.
fn ensure_tools() {
    let lock = validate_dir().with_extension("lock");
    let run = |dir: &Path, script: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("flock")
            .arg(&lock)
            .args(["sh", "-c", script])
            .current_dir(dir)
            .stdin(Stdio::null())
            .status()
            .expect("flock");
        assert!(
            status.success(),
            "installing in {}: {status}",
            dir.display()
        );
    };
    run(
        &kube_dir(),
        "[ -f node_modules/@kubernetes-models/keda/package.json ] || npm ci --no-audit --no-fund",
    );
    run(
        &validate_dir(),
        &format!(
            "[ -d kubernetes_validate ] || python3 -m pip install --quiet --disable-pip-version-check \
             --target . '{KUBERNETES_VALIDATE}'"
        ),
    );
}

fn kubernetes_validate(files: &[PathBuf]) -> Output {
    Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .args(files)
        .env("PYTHONPATH", validate_dir())
        .stdin(Stdio::null())
        .output()
        .expect("python3")
}

fn validate_mjs(files: &[PathBuf]) -> (bool, Value) {
    let out = Command::new("node")
        .arg(kube_dir().join("validate.mjs"))
        .args(files)
        .current_dir(kube_dir())
        .stdin(Stdio::null())
        .output()
        .expect("node");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "validate.mjs printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_manifests_pass_the_kubernetes_keda_and_prometheus_operator_schemas_offline() {
    ensure_tools();
    let files = manifests();
    let (ok, report) = validate_mjs(&files);
    assert!(ok, "{report:#}");
    let objects = report["objects"].as_array().expect("objects");
    let checked_by = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .and_then(|o| o["checkedBy"].as_str())
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes: {report:#}"))
            .to_owned()
    };
    assert_eq!(checked_by("ScaledObject"), "@kubernetes-models");
    assert_eq!(checked_by("PodMonitor"), "@kubernetes-models");
    for kind in [
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert_eq!(checked_by(kind), "kubernetes-validate", "{kind}");
    }

    // Every core object passes kubernetes-validate (strict); the CRD objects are the ones it cannot know.
    let core: Vec<PathBuf> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            objects
                .iter()
                .any(|o| o["file"] == *name && o["checkedBy"] == "kubernetes-validate")
        })
        .cloned()
        .collect();
    let out = kubernetes_validate(&core);
    let out_text = text(&out);
    assert!(out.status.success(), "{out_text}");
    assert_eq!(
        out_text.matches(" passed for resource ").count(),
        core.len(),
        "{out_text}"
    );
}

#[test]
fn broken_manifests_are_rejected() {
    ensure_tools();
    let dir = TempDir::new("kube").unwrap();
    let write = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let original = |name: &str| {
        std::fs::read_to_string(workspace_root().join("deploy/kubernetes").join(name)).unwrap()
    };

    // A core schema error (a string where an integer belongs) and an unknown field.
    let deployment = original("deployment.yaml");
    let bad_replicas = write(
        "deployment.yaml",
        deployment.replace("replicas: 2", "replicas: two"),
    );
    let out = kubernetes_validate(std::slice::from_ref(&bad_replicas));
    assert!(!out.status.success(), "{}", text(&out));
    let typo = write(
        "typo.yaml",
        deployment.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
        ),
    );
    let out = kubernetes_validate(&[typo]);
    assert!(!out.status.success(), "{}", text(&out));

    // CRD schema errors: a ScaledObject trigger without a type, a PodMonitor port given as a number.
    let scaled = write(
        "scaledobject.yaml",
        original("scaledobject.yaml")
            .replacen("    - type: prometheus\n", "    - \n", 1)
            .replace("minReplicaCount: 1", "minReplicaCount: \"one\""),
    );
    let monitor = write(
        "podmonitor.yaml",
        original("podmonitor.yaml").replace("- port: metrics", "- port: 9090"),
    );
    let (ok, report) = validate_mjs(&[scaled, monitor]);
    assert!(!ok, "{report:#}");
    let problems = report["problems"].to_string();
    for want in [
        "must have required property type",
        "minReplicaCount must be integer",
        "port must be string",
    ] {
        assert!(problems.contains(want), "{want}: {report:#}");
    }

    // Consistency: a grace period shorter than the shutdown timeout, a scrape of a port the pod lacks, and
    // a cluster without a hash-tagged prefix.
    let files = vec![
        write(
            "deployment.yaml",
            deployment.replace(
                "terminationGracePeriodSeconds: 45",
                "terminationGracePeriodSeconds: 20",
            ),
        ),
        write(
            "configmap.yaml",
            original("configmap.yaml")
                .replace("BULLMQ_PREFIX: \"{bull}\"", "BULLMQ_PREFIX: \"bull\""),
        ),
        write(
            "podmonitor.yaml",
            original("podmonitor.yaml").replace("- port: metrics", "- port: web"),
        ),
        write("scaledobject.yaml", original("scaledobject.yaml")),
    ];
    let (ok, report) = validate_mjs(&files);
    assert!(!ok, "{report:#}");
    let problems = report["problems"].to_string();
    for want in [
        "terminationGracePeriodSeconds 20 must exceed SHUTDOWN_TIMEOUT_MS 30000",
        "port web is not a named port",
        "hash-tagged BULLMQ_PREFIX",
    ] {
        assert!(problems.contains(want), "{want}: {report:#}");
    }
}
