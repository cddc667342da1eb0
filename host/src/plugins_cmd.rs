//! `frostguard-worker plugins`: what an operator runs to see which plugins a directory holds and whether they
//! load, `plugins run` to push one job through a plugin without Redis (in its isolation mode; a crash is
//! reported with its signal), and `plugins new` (in `plugins_new`) to start a plugin crate.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use plugin_api::harness::{Harness, JobRecorder, JobSpec, LogRecorder};
use plugin_api::loader::{LoadError, LoadStage, LoadedPlugin};
use plugin_api::{JobOpts, JobView, Outcome, PluginConfig};
use serde_json::json;

use crate::cli::{PluginsAction, PluginsArgs, RunJobArgs};
use crate::config::Env;
use crate::isolation::{cause, crashnote, Isolation, IsolationSettings, PluginProcess, Reply};
use crate::output::out;
use crate::plugins::{settings, Registry};

/// Runs `plugins` or `plugins run`.
pub fn main(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(PluginsAction::Run(run)) => run_job(run),
        Some(PluginsAction::New(new)) => crate::plugins_new::main(new),
        None if args.running => running(&args),
        None => list(&args),
    }
}

/// The running worker's `/readyz` body is small; more than this is not our worker.
const MAX_READYZ: usize = 1 << 20;

/// `plugins --running`: what the local worker serves now, from its `/readyz`.
fn running(args: &PluginsArgs) -> anyhow::Result<ExitCode> {
    let (status, body) = crate::healthcheck::get_local(args.addr, args.port, "/readyz", MAX_READYZ)
        .context("asking the running worker (is it running with this HTTP_PORT?)")?;
    let ready: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
        format!(
            "the answer of /readyz on port {} (HTTP {status}) is not the worker's",
            args.port
        )
    })?;
    if args.json {
        let report = json!({
            "ready": ready["ready"],
            "plugins": ready["plugins"],
            "disabled": ready["disabled_plugins"],
        });
        out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "running worker on port {} (ready: {})",
        args.port,
        ready["ready"]
    );
    let none = Vec::new();
    let plugins = ready["plugins"].as_array().unwrap_or(&none);
    if plugins.is_empty() {
        out!("  no plugin serving");
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    for p in plugins {
        let queues: Vec<String> = p["queues"]
            .as_array()
            .unwrap_or(&none)
            .iter()
            .map(text)
            .collect();
        out!(
            "{}: {} {} serving {}",
            text(&p["file"]),
            text(&p["plugin"]),
            text(&p["version"]),
            queues.join(", ")
        );
        let refused = &p["refused_replacement"];
        if refused.is_object() {
            out!(
                "    refused replacement {} (version {}) at stage {}: {}",
                text(&refused["file"]),
                text(&refused["version"]),
                text(&refused["stage"]),
                text(&refused["reason"])
            );
        }
    }
    for d in ready["disabled_plugins"].as_array().unwrap_or(&none) {
        out!(
            "{}: {} DISABLED at stage {}: {}",
            text(&d["file"]),
            text(&d["plugin"]),
            text(&d["stage"]),
            text(&d["reason"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: &PluginsArgs) -> anyhow::Result<ExitCode> {
    let registry = if args.init {
        let isolation = isolation_from_env()?;
        Registry::load_dir(&args.plugin_dir, &Env::from_process(), &isolation)
    } else {
        Registry::inspect_dir(&args.plugin_dir, &Env::from_process())
    };
    if args.init {
        for p in &registry.active {
            p.shutdown(Duration::from_secs(5));
        }
    }
    if args.json {
        let loaded: Vec<_> = registry
            .active
            .iter()
            .map(|p| json!({ "file": p.library.path(), "plugin": p.info }))
            .collect();
        let report = json!({
            "pluginDir": args.plugin_dir,
            "directoryError": registry.dir_error,
            "loaded": loaded,
            "disabled": registry.disabled,
        });
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(args, &registry)?;
    }
    let all_ok = registry.dir_error.is_none() && registry.disabled.is_empty();
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(args: &PluginsArgs, registry: &Registry) -> std::io::Result<()> {
    out!("plugin directory: {}", args.plugin_dir.display());
    if let Some(e) = &registry.dir_error {
        out!("  error: {e}");
        return Ok(());
    }
    if registry.active.is_empty() && registry.disabled.is_empty() {
        out!("  (no plugin files)");
    }
    for p in &registry.active {
        out!(
            "{}: {} {} — ok",
            p.library.path().display(),
            p.info.name,
            p.info.version
        );
        for proc in &p.info.queues {
            let limit = proc
                .rate_limit
                .map(|r| format!(", rate limit {}/{}ms", r.max, r.duration_ms))
                .unwrap_or_default();
            let budget = proc
                .timeout_ms
                .map(|ms| format!(", job timeout {ms}ms"))
                .unwrap_or_default();
            let others = if proc.handles_unknown_names {
                " (other names: rejected by the plugin)"
            } else {
                ""
            };
            out!(
                "    queue {}: concurrency {}{limit}{budget}; jobs: {}{others}",
                proc.queue,
                proc.default_concurrency,
                proc.job_names.join(", ")
            );
        }
        if !p.info.config_keys.is_empty() {
            out!(
                "    settings: {} (env, or {}<KEY>)",
                p.info.config_keys.join(", "),
                settings::env_prefix(&p.info.name)
            );
        }
    }
    for d in &registry.disabled {
        let name = d
            .name
            .as_deref()
            .map(|n| format!("{n} "))
            .unwrap_or_default();
        out!(
            "{}: {name}DISABLED at stage {}: {}",
            d.path.display(),
            d.stage,
            d.reason
        );
    }
    Ok(())
}

fn run_job(args: RunJobArgs) -> anyhow::Result<ExitCode> {
    let data: serde_json::Value =
        serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let mut overrides = Vec::new();
    for pair in &args.config {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--config expects KEY=VALUE, got {pair:?}");
        };
        overrides.push((k.to_owned(), v.to_owned()));
    }
    let mode = match &args.isolation {
        Some(mode) => Isolation::parse(mode).map_err(|e| anyhow::anyhow!("--isolation: {e}"))?,
        None => {
            // The plugin's own variable may decide: its name comes from its description.
            let plugin = LoadedPlugin::load(&args.plugin).map_err(anyhow::Error::new)?;
            isolation_from_env()?.for_plugin(&plugin.info().name)
        }
    };
    match mode {
        Isolation::InProcess => run_in_process(&args, data, overrides),
        Isolation::Process => run_in_child(&args, data, overrides),
    }
}

/// `PLUGIN_ISOLATION` and `PLUGIN_ISOLATION_<NAME>` from the process environment.
fn isolation_from_env() -> anyhow::Result<IsolationSettings> {
    Ok(IsolationSettings::read(&Env::from_process())?)
}

fn job_spec(args: &RunJobArgs, data: serde_json::Value) -> JobSpec {
    let mut spec = JobSpec::new(&args.queue, &args.name, data);
    spec.attempts_made = args.attempts_made;
    spec.opts = JobOpts {
        attempts: args.attempts,
        ..JobOpts::default()
    };
    spec.timeout = args.timeout_ms.map(Duration::from_millis);
    spec
}

fn exit_code(outcome: &Outcome) -> ExitCode {
    match outcome {
        Outcome::Completed { .. } => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// The job runs in this process, through the harness. A crash ends this process with the plugin's signal;
/// the crash-note handler names the signal and the job on stderr first.
fn run_in_process(
    args: &RunJobArgs,
    data: serde_json::Value,
    overrides: Vec<(String, String)>,
) -> anyhow::Result<ExitCode> {
    let mut config_error = None;
    let harness = Harness::load_with(&args.plugin, |info| {
        let mut config = settings::resolve(info, &Env::from_process()).unwrap_or_else(|e| {
            config_error = Some(e);
            PluginConfig::new()
        });
        for (k, v) in overrides {
            config.insert(k, v);
        }
        config
    });
    if let Some(e) = config_error {
        bail!("configuration of {}: {e}", args.plugin.display());
    }
    let harness = harness.map_err(anyhow::Error::new)?;
    crashnote::install(crashnote::Sink::StderrOnly);
    let run = {
        let _entered = crashnote::enter_job(1, &args.name, &args.queue, &harness.info().name);
        harness.run(job_spec(args, data))
    };
    harness.shutdown(Duration::from_secs(5));
    out!("{}", serde_json::to_string_pretty(&run)?);
    Ok(exit_code(&run.outcome))
}

/// The job runs in a plugin process, as the host runs it in process isolation; a crash is reported as
/// `"crash": {"cause", "reason"}` with exit status 1.
fn run_in_child(
    args: &RunJobArgs,
    data: serde_json::Value,
    overrides: Vec<(String, String)>,
) -> anyhow::Result<ExitCode> {
    let plugin = LoadedPlugin::load(&args.plugin).map_err(anyhow::Error::new)?;
    let info = plugin.info().clone();
    let mut config = settings::resolve(&info, &Env::from_process())
        .map_err(|e| anyhow::anyhow!("configuration of {}: {e}", args.plugin.display()))?;
    for (k, v) in overrides {
        config.insert(k, v);
    }
    let logs = Arc::new(LogRecorder::default());
    let child =
        PluginProcess::start(&args.plugin, &info.name, config, logs.clone()).map_err(|reason| {
            anyhow::Error::new(LoadError::new(&args.plugin, LoadStage::Init, reason))
        })?;
    let spec = job_spec(args, data);
    let rejection = match info.queue(&spec.queue) {
        None => Some(format!("queue {} is not served by this plugin", spec.queue)),
        Some(p) if !p.accepts(&spec.name) => Some(p.rejection(&spec.name)),
        Some(_) => None,
    };
    let callbacks = Arc::new(JobRecorder::new(spec.timeout));
    let _ = logs.take();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let reply = match rejection {
        Some(reason) => Reply::Outcome(Outcome::unrecoverable(reason)),
        None => {
            let job = JobView {
                id: "harness-1".to_owned(),
                name: spec.name.clone(),
                queue: spec.queue.clone(),
                data: serde_json::value::to_raw_value(&spec.data)?,
                attempts_made: spec.attempts_made,
                attempts_started: spec.attempts_made + 1,
                opts: spec.opts.clone(),
                timestamp: now,
                deadline_ms: spec.timeout.map(|t| now + t.as_millis() as u64),
            };
            let pending = plugin.is_pending(&spec.queue, &spec.name);
            child.process(&job, callbacks.clone(), pending)
        }
    };
    let records = logs.take();
    child.shutdown(Duration::from_secs(5));
    let (progress, job_logs) = callbacks.take();
    let mut report = json!({ "progress": progress, "jobLogs": job_logs, "logs": records });
    let code = match reply {
        Reply::Outcome(outcome) => {
            let code = exit_code(&outcome);
            report["outcome"] = serde_json::to_value(&outcome)?;
            code
        }
        Reply::Crashed(crash) => {
            let reason = cause::process_crash_reason(&info.name, crash.ending);
            eprintln!("frostguard-worker: {reason}");
            report["crash"] = json!({ "cause": crash.ending.to_string(), "reason": reason });
            ExitCode::FAILURE
        }
    };
    out!("{}", serde_json::to_string_pretty(&report)?);
    Ok(code)
}
