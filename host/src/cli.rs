//! Command-line interface of `frostguard-worker`: the subcommands an operator (or a container) runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PLUGIN_DIR;

/// BullMQ worker host for FrostGuard: consumes BullMQ queues with processors loaded from plugins.
///
/// Configuration comes from the environment (REDIS_URL or REDIS_HOST/REDIS_PORT, PLUGIN_DIR, BULLMQ_PREFIX,
/// QUEUE_<Q>_*, …); see the README.
#[derive(Debug, Parser)]
#[command(name = "frostguard-worker", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the plugins and process jobs until SIGTERM or SIGINT (the default).
    Run,
    /// List the plugins of a directory, or run one job through a plugin without Redis.
    Plugins(PluginsArgs),
}

/// `plugins [--plugin-dir DIR] [--init] [--json]` or `plugins run …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PluginsArgs {
    /// Plugin directory to inspect.
    #[arg(long, env = "PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    pub plugin_dir: PathBuf,
    /// Also initialise each plugin with its configuration from the environment (then shut it down), as
    /// `run` would; without it no plugin code beyond `describe` runs.
    #[arg(long)]
    pub init: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// `run`: process one job through a plugin.
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
}

/// Subcommands of `plugins`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Run one job through a built plugin without Redis and print the outcome, progress, job log lines and
    /// the plugin's log records as JSON. Exit status 0 when the job completed, 1 otherwise.
    Run(RunJobArgs),
}

/// Arguments of `plugins run`.
#[derive(Debug, Args)]
pub struct RunJobArgs {
    /// The plugin library (`.so`).
    #[arg(long)]
    pub plugin: PathBuf,
    /// Queue the job belongs to.
    #[arg(long)]
    pub queue: String,
    /// Job name.
    #[arg(long)]
    pub name: String,
    /// Job data as JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Attempts already made (to exercise last-attempt behaviour).
    #[arg(long, default_value_t = 0)]
    pub attempts_made: u32,
    /// Total attempts of the job (BullMQ `opts.attempts`).
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// Cancel the job after this many milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Plugin setting `KEY=VALUE`, overriding the environment; repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
}
