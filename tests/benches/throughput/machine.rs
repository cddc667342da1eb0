//! The machine and software a benchmark ran on, for the record in docs/benchmarks.md: cores and CPU model,
//! kernel, load average, and the versions of redis-server, Node, the two Node BullMQs and rustc.

use std::process::Command;

use frostguard_tests::workspace_root;

/// First line of `<program> <arg>`'s output, or `unknown`.
fn version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The `version` of the `bullmq` installed in a Node project under tests/.
fn node_bullmq(project: &str) -> String {
    let path = workspace_root()
        .join("tests")
        .join(project)
        .join("node_modules/bullmq/package.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "not installed".into())
}

/// The version of `bullmq-official` in the workspace's Cargo.lock.
fn bullmq_official() -> String {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"bullmq-official\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A Markdown paragraph describing this machine now.
pub fn describe() -> String {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = read("/proc/loadavg");
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    format!(
        "Measured {} on {cores} cores ({model}), Linux {}, load average {} at the end. {}; Node {}, Node \
         BullMQ {} and {}; {}; bullmq-official {}.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        read("/proc/sys/kernel/osrelease"),
        load.join(" "),
        version("redis-server", "--version"),
        version("node", "--version"),
        node_bullmq("node"),
        node_bullmq("node-bullmq5"),
        version("rustc", "--version"),
        bullmq_official(),
    )
}
