//! Shared support for the integration tests of the frostguard-worker workspace.
//!
//! Everything here talks to real parts: a `redis-server` and a PostgreSQL started on free ports in throwaway
//! directories, the built `frostguard-worker` binary and plugins from the cargo target directory, the Node
//! `bullmq` client from `tests/node`, and a small scripted HTTP server standing in for an external provider.
//! Every handle cleans up on drop (child processes are killed, directories removed).
//!
//! * [`RedisServer`] — `redis-server` on a free port; [`RedisServer::kill`] / [`RedisServer::restart`] simulate a
//!   Redis restart on the same port; [`RedisServer::cmd`] runs a raw command.
//! * [`RedisCluster`] — a Redis Cluster (primaries with replicas) on free ports; [`RedisCluster::kill`] and
//!   [`RedisCluster::wait_failover`] for a failover.
//! * [`Postgres`] — `initdb` + `postgres` on a free port with the FrostGuard schema loaded into database
//!   `frostguard`; [`Postgres::query_json`] and [`Postgres::execute`] run SQL through `psql`.
//! * [`Worker`] — spawns `frostguard-worker` with a clean environment, captures its log lines, waits for a line,
//!   signals it and collects the exit status.
//! * [`NodeQueue`] / [`drive`] — run `tests/node/drive.mjs` commands (Node BullMQ producer, getters, events,
//!   Node workers) with JSON in and out.
//! * [`FakeHttp`] — records every request and answers from a script.
//! * FrostGuard fixtures for the SMS tests: [`insert_sms_delivery`], [`delivery_row`], [`assert_delivery`],
//!   [`sms_sent`], [`telnyx_error`].
//!
//! The binary and plugins are looked up in the target directory of the test binary (`target/debug` under
//! `cargo test`); `FROSTGUARD_WORKER_BIN` and `FROSTGUARD_PLUGIN_DIR_BUILT` override that. Build them first
//! (`cargo build --workspace`): `cargo test` does not build other packages' binaries and cdylibs.

mod cluster;
mod events;
mod frostguard;
mod http;
mod node;
mod pgbouncer;
mod ports;
mod postgres;
mod probe;
mod process;
mod redis;
mod tempdir;
mod tls;
mod worker;

pub use cluster::{RedisCluster, CLUSTER_NODE_TIMEOUT_MS};
pub use events::{queue_events, wait_for_event};
pub use frostguard::{
    assert_delivery, assert_no_secrets, delivery_row, insert_sms_delivery, sms_sent, telnyx_error,
};
pub use http::{FakeHttp, RecordedRequest, Reply};
pub use node::{
    bullmq_project_dir, drive, ensure_node_modules, node_bullmq_version, node_dir, JobSnapshot,
    NodeQueue, NodeTask, NODE_BULLMQ_ENV,
};
pub use pgbouncer::{pgbouncer_bin, PgBouncer};
pub use ports::{free_port, reserved_port, PortReservation};
pub use postgres::{Postgres, Schema};
pub use probe::{http_get, http_get_body};
pub use process::{process_tree, thread_count};
pub use redis::{Monitor, RedisServer, Resp};
pub use tempdir::TempDir;
pub use tls::{generate_ca, generate_server_cert, CertFiles};
pub use worker::{worker_bin, Finished, Worker, WorkerBuilder};

pub use anyhow;
pub use serde_json;
pub use serde_json::json;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the test plugin's queue.
pub const TEST_QUEUE: &str = "test-outcomes";
/// Library name (without `lib` and `.so`) of the test plugin `test-outcomes`.
pub const TEST_PLUGIN: &str = "fg_test_outcomes";
/// Library name of the test plugin `test-crashes` (jobs that segfault, abort, overflow the stack, exit).
pub const CRASH_PLUGIN: &str = "fg_test_crashes";
/// The name of the crash test plugin's queue.
pub const CRASH_QUEUE: &str = "test-crashes";
/// Library names of the hot reload test plugin `test-reload` (queue `test-reload`), versions 1.0.0 and
/// 2.0.0 of one source: a job returns `{"v": 1}` or `{"v": 2}`.
pub const RELOAD_V1_PLUGIN: &str = "fg_test_reload_v1";
/// See [`RELOAD_V1_PLUGIN`].
pub const RELOAD_V2_PLUGIN: &str = "fg_test_reload_v2";
/// Library name of the test plugin built against an incompatible plugin API (rejected at load).
pub const BAD_ABI_PLUGIN: &str = "fg_test_bad_abi";
/// Library name of the SMS plugin.
pub const SMS_PLUGIN: &str = "fg_sms_notifications";
/// Library name of the email digest plugin.
pub const EMAIL_PLUGIN: &str = "fg_email_digests";

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The directory holding the built binary and plugins: `FROSTGUARD_BUILD_DIR`, else the directory of the running
/// test binary's profile (`target/debug` when run by cargo), else `<workspace>/target/debug`.
pub fn build_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FROSTGUARD_BUILD_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<test binary>
        if let Some(deps) = exe.parent() {
            if deps.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile) = deps.parent() {
                    return profile.to_path_buf();
                }
            }
        }
    }
    workspace_root().join("target").join("debug")
}

/// The path of a built plugin library, e.g. `plugin_lib(TEST_PLUGIN)` → `target/debug/libfg_test_outcomes.so`.
/// Panics with the command to run when it has not been built.
pub fn plugin_lib(lib_name: &str) -> PathBuf {
    let dir = std::env::var_os("FROSTGUARD_PLUGIN_DIR_BUILT")
        .map(PathBuf::from)
        .unwrap_or_else(build_dir);
    let path = dir.join(format!("lib{lib_name}.so"));
    assert!(
        path.is_file(),
        "plugin {} is not built; run `cargo build --workspace` (or scripts/test.sh) first",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what` in the message.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the Unix epoch, BullMQ's unit for a job's `timestamp`, `processedOn` and event times.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Whether the current process runs as root (servers that refuse root are then run as another user).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
