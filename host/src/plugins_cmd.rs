//! `frostguard-worker plugins`: what an operator runs to see which plugins a directory holds and whether they
//! load, `plugins run` to push one job through a plugin without Redis, and `plugins new` (in `plugins_new`)
//! to start a plugin crate.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use plugin_api::harness::{Harness, JobSpec};
use plugin_api::{JobOpts, Outcome, PluginConfig};
use serde_json::json;

use crate::cli::{PluginsAction, PluginsArgs, RunJobArgs};
use crate::output::out;
use crate::plugins::{settings, Registry};

/// Runs `plugins` or `plugins run`.
pub fn main(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(PluginsAction::Run(run)) => run_job(run),
        Some(PluginsAction::New(new)) => crate::plugins_new::main(new),
        None => list(&args),
    }
}

fn env_var(key: &str) -> Result<String, std::env::VarError> {
    std::env::var(key)
}

fn list(args: &PluginsArgs) -> anyhow::Result<ExitCode> {
    let registry = if args.init {
        Registry::load_dir(&args.plugin_dir, &env_var)
    } else {
        Registry::inspect_dir(&args.plugin_dir, &env_var)
    };
    if args.init {
        for p in &registry.active {
            p.plugin.shutdown(Duration::from_secs(5));
        }
    }
    if args.json {
        let loaded: Vec<_> = registry
            .active
            .iter()
            .map(|p| json!({ "file": p.plugin.path(), "plugin": p.info }))
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
            p.plugin.path().display(),
            p.info.name,
            p.info.version
        );
        for proc in &p.info.processors {
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
    let mut config_error = None;
    let harness = Harness::load_with(&args.plugin, |info| {
        let mut config = settings::resolve(info, &env_var).unwrap_or_else(|e| {
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
    let mut spec = JobSpec::new(&args.queue, &args.name, data);
    spec.attempts_made = args.attempts_made;
    spec.opts = JobOpts {
        attempts: args.attempts,
        ..JobOpts::default()
    };
    spec.timeout = args.timeout_ms.map(Duration::from_millis);
    let run = harness.run(spec);
    harness.shutdown(Duration::from_secs(5));
    out!("{}", serde_json::to_string_pretty(&run)?);
    Ok(match run.outcome {
        Outcome::Completed { .. } => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
