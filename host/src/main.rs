//! `frostguard-worker`: a BullMQ worker host whose job processors are plugins loaded from a directory.
//!
//! This file only parses the command line, sets up logging and hands over to the subcommand.

mod cli;
mod config;
mod http;
mod output;
mod plugins;
mod plugins_cmd;
mod runtime;
mod shutdown;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(log_format_from_env());
    let result = match cli.command {
        Some(Command::Plugins(args)) => plugins_cmd::main(args),
        Some(Command::Run) | None => run(),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`… | head`): it has all it wanted.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("frostguard-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `LOG_FORMAT` is validated again (with a proper error) by `Config::from_env` for `run`; here an unknown
/// value just falls back to text so that the error itself can be printed.
fn log_format_from_env() -> LogFormat {
    match std::env::var("LOG_FORMAT").as_deref().map(str::trim) {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Logs go to stderr (stdout is kept for command output such as `plugins --json`); `RUST_LOG` filters,
/// default `info`.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// `run`: configuration first (a missing Redis setting fails before any plugin loads), then the plugins
/// (outside the async runtime: their `init` may build runtimes of their own), then the host runtime. The
/// runtime is shut down without waiting for plugin calls abandoned by the drain.
fn run() -> anyhow::Result<ExitCode> {
    let config = config::Config::from_env()?;
    let registry = plugins::Registry::load_dir(&config.plugin_dir, &|k| std::env::var(k));
    let rt = runtime::build_tokio(runtime::blocking_threads_needed(&config, &registry))?;
    let result = rt.block_on(runtime::run(config, registry));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result.map(|()| ExitCode::SUCCESS)
}
