//! Command-line interface of `frostguard-worker`: the subcommands an operator (or a container) runs.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::vars;
use crate::config::DEFAULT_PLUGIN_DIR;

/// BullMQ worker host for FrostGuard: consumes BullMQ queues with processors loaded from plugins.
///
/// Configuration comes from the environment; `frostguard-worker help <COMMAND>` lists the variables each
/// subcommand reads.
#[derive(Debug, Parser)]
#[command(name = "frostguard-worker", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command-line definition with each subcommand's "Environment:" section (from the table of
    /// variables) appended to its help; `run`'s is also shown by the top-level help.
    pub fn command_with_env_help() -> clap::Command {
        let mut cmd = Cli::command().after_long_help(vars::help_section(vars::Command::Run));
        for command in vars::Command::ALL {
            cmd = cmd.mut_subcommand(command.name(), |sub| {
                sub.after_help(vars::help_section(command))
            });
        }
        cmd
    }

    /// Parses the process arguments (exits with usage or help output as clap does).
    pub fn parse_with_env_help() -> Cli {
        let matches = Self::command_with_env_help().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the plugins and process jobs until SIGTERM or SIGINT (the default).
    Run,
    /// List the plugins of a directory, or run one job through a plugin without Redis.
    Plugins(PluginsArgs),
    /// Per queue: job counts (as Node's getJobCounts reports them), paused state, workers connected and the
    /// age of the oldest waiting job.
    Stats(StatsArgs),
    /// Add one job as Node's Queue.add would; prints its id, or with --wait its outcome (exit status 1 when
    /// it failed).
    Enqueue(EnqueueArgs),
    /// Exit 0 when the local worker's `/healthz` (on HTTP_PORT) answers healthy, 1 otherwise, within 2 s;
    /// for a container HEALTHCHECK.
    Healthcheck(HealthcheckArgs),
    /// The plugin process the host starts per plugin in process isolation (not for operators).
    #[command(hide = true)]
    PluginProcess(PluginProcessArgs),
}

/// `plugin-process --plugin FILE` (started by the host; speaks the framed protocol on stdin/stdout).
#[derive(Debug, Args)]
pub struct PluginProcessArgs {
    /// The plugin library (`.so`).
    #[arg(long)]
    pub plugin: PathBuf,
}

/// `healthcheck [--addr ADDR] [--port PORT]`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address the worker's health endpoint binds (the worker's HTTP_ADDR); an unspecified address
    /// (0.0.0.0 or ::) is asked on the loopback interface of the same family.
    #[arg(long, env = vars::HTTP_ADDR.name, default_value = vars::DEFAULT_HTTP_ADDR)]
    pub addr: std::net::IpAddr,
    /// Port of the worker's health endpoint (the worker's HTTP_PORT).
    #[arg(long, env = vars::HTTP_PORT.name, default_value = vars::DEFAULT_HTTP_PORT)]
    pub port: u16,
}

/// `stats [--json] [QUEUE…]`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Queues to show; every queue found under the prefix when none is given.
    #[arg(value_name = "QUEUE")]
    pub queues: Vec<String>,
}

/// `enqueue QUEUE NAME DATA [--opts JSON] [--wait]`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue name.
    pub queue: String,
    /// Job name.
    pub name: String,
    /// Job data as JSON.
    pub data: String,
    /// Job options as JSON, with Node's names (attempts, backoff, delay, priority, lifo, jobId,
    /// removeOnComplete, removeOnFail, deduplication).
    #[arg(long, value_name = "JSON")]
    pub opts: Option<String>,
    /// Wait until the job completed or failed for good and print the outcome.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many milliseconds (exit status 1); 0 waits indefinitely.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

/// `plugins [--plugin-dir DIR] [--init] [--json]`, `plugins run …` or `plugins new …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PluginsArgs {
    /// Plugin directory to inspect.
    #[arg(long, env = vars::PLUGIN_DIR.name, default_value = DEFAULT_PLUGIN_DIR)]
    pub plugin_dir: PathBuf,
    /// Also initialise each plugin with its configuration from the environment (then shut it down), as
    /// `run` would; without it no plugin code beyond `describe` runs.
    #[arg(long)]
    pub init: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask the worker running on this machine (its `/readyz` on HTTP_ADDR:HTTP_PORT, as `healthcheck` asks)
    /// instead of reading the directory: per plugin the version serving and any refused replacement (hot
    /// reload), and the disabled files.
    #[arg(long)]
    pub running: bool,
    /// Address the running worker's endpoint binds, with --running (the worker's HTTP_ADDR).
    #[arg(long, env = vars::HTTP_ADDR.name, default_value = vars::DEFAULT_HTTP_ADDR)]
    pub addr: std::net::IpAddr,
    /// Port of the running worker's endpoint, with --running (the worker's HTTP_PORT).
    #[arg(long, env = vars::HTTP_PORT.name, default_value = vars::DEFAULT_HTTP_PORT)]
    pub port: u16,
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
    /// Write a new plugin crate (outside this repository) that builds, passes its harness test and runs a job
    /// as generated; see docs/plugins.md.
    New(NewPluginArgs),
}

/// Arguments of `plugins new`.
#[derive(Debug, Args)]
pub struct NewPluginArgs {
    /// Plugin, package and library name: lower-case letters, digits and single dashes.
    pub name: String,
    /// The BullMQ queue its processor consumes (default: NAME).
    #[arg(long)]
    pub queue: Option<String>,
    /// Directory to create the crate in; must not exist or be empty (default: ./NAME).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The `plugin-api/` directory of a frostguard-worker checkout to depend on (default: the checkout this
    /// binary was built from). A relative path is written relative to the new crate, an absolute one as is.
    #[arg(long)]
    pub api_path: Option<PathBuf>,
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
    /// Run the plugin in a child process (`process`) or in this one (`in-process`); default: the plugin's
    /// PLUGIN_ISOLATION_<NAME>, else PLUGIN_ISOLATION. A crash is reported with its signal either way.
    #[arg(long, value_name = "MODE")]
    pub isolation: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::tests::read_by;

    /// The variable names of the "Environment:" section of `frostguard-worker <command> --help`.
    fn documented(command: vars::Command) -> BTreeSet<String> {
        let mut cli = Cli::command_with_env_help();
        let sub = cli
            .find_subcommand_mut(command.name())
            .expect("subcommand exists");
        let help = sub.render_help().to_string();
        let section = help
            .split_once("Environment:\n")
            .unwrap_or_else(|| panic!("no environment section in:\n{help}"))
            .1;
        section
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn help_lists_exactly_the_variables_the_config_code_reads() {
        for command in vars::Command::ALL {
            let read: BTreeSet<String> = read_by(command).into_iter().map(str::to_owned).collect();
            assert_eq!(documented(command), read, "{command:?}");
        }
    }

    #[test]
    fn plugins_takes_its_directory_from_the_table_entry() {
        let cli = Cli::command();
        let plugins = cli.find_subcommand("plugins").unwrap();
        let dir = plugins
            .get_arguments()
            .find(|a| a.get_id() == "plugin_dir")
            .unwrap();
        assert_eq!(
            dir.get_env().and_then(|e| e.to_str()),
            Some(vars::PLUGIN_DIR.name)
        );
    }

    #[test]
    fn healthcheck_takes_its_address_from_the_table_entry() {
        let cli = Cli::command();
        let healthcheck = cli.find_subcommand("healthcheck").unwrap();
        let addr = healthcheck
            .get_arguments()
            .find(|a| a.get_id() == "addr")
            .unwrap();
        assert_eq!(
            addr.get_env().and_then(|e| e.to_str()),
            Some(vars::HTTP_ADDR.name)
        );
        let default: Vec<String> = addr
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        assert_eq!(default, [vars::DEFAULT_HTTP_ADDR]);
    }

    #[test]
    fn healthcheck_takes_its_port_from_the_table_entry() {
        let cli = Cli::command();
        let healthcheck = cli.find_subcommand("healthcheck").unwrap();
        let port = healthcheck
            .get_arguments()
            .find(|a| a.get_id() == "port")
            .unwrap();
        assert_eq!(
            port.get_env().and_then(|e| e.to_str()),
            Some(vars::HTTP_PORT.name)
        );
        let default: Vec<String> = port
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        assert_eq!(default, [vars::DEFAULT_HTTP_PORT]);
        assert_eq!(
            vars::HTTP_PORT.default,
            vars::Default::Value(vars::DEFAULT_HTTP_PORT)
        );
    }
}
