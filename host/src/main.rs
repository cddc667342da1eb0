//! `frostguard-worker`: a BullMQ worker host whose job served are plugins loaded from a directory.
//!
//! This file only parses the command line, sets up logging and hands over to the subcommand.

// The host needs `unsafe` only where it calls C directly: crash isolation (signal handlers, descriptors of a
// plugin process, the crash journal's lock: `isolation/{child,crashnote,journal,process}.rs`) and the
// allocator's options (`allocator.rs`); every such block gives its `SAFETY:` reason.
#![deny(unsafe_code)]

mod allocator;
mod cli;
mod clock;
mod config;
mod enqueue_cmd;
mod healthcheck;
mod http;
mod isolation;
mod output;
mod plugins;
mod plugins_cmd;
mod plugins_new;
mod queue_stats;
mod redis_nodes;
mod runtime;
mod shutdown;
mod stats_cmd;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::{LogFormat, Logging};

fn main() -> ExitCode {
    allocator::give_memory_back();
    let cli = Cli::parse_with_env_help();
    init_logging(&logging_from_env());
    let result = match cli.command {
        Some(Command::Plugins(args)) => plugins_cmd::main(args),
        Some(Command::Stats(args)) => stats_cmd::main(args),
        Some(Command::Enqueue(args)) => enqueue_cmd::main(args),
        Some(Command::Healthcheck(args)) => healthcheck::main(args),
        Some(Command::PluginProcess(args)) => isolation::child::main(&args.plugin),
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
fn logging_from_env() -> Logging {
    Logging::from_env().unwrap_or(Logging {
        format: LogFormat::Text,
        filter: "info".to_owned(),
    })
}

/// Logs go to stderr (stdout is kept for command output such as `plugins --json`); `RUST_LOG` filters,
/// default `info` (also when the filter cannot be parsed).
fn init_logging(logging: &Logging) {
    let filter = EnvFilter::try_new(&logging.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// `run`: configuration first (a missing Redis setting fails before any plugin loads), then the plugins
/// (outside the async runtime: their `init` may build runtimes of their own), then the host runtime. The
/// runtime is shut down without waiting for plugin calls abandoned by the drain.
fn run() -> anyhow::Result<ExitCode> {
    let config = config::Config::from_env()?;
    // Hot reload loads every build from a private copy, the start-up ones included: a file written over in
    // place must never touch a mapped library.
    let copies = config.watch.as_ref().and_then(|w| {
        plugins::watch::PrivateCopies::create(&w.cache_dir)
            .map_err(|e| tracing::error!("{e}; hot reload is off"))
            .ok()
            .map(std::sync::Arc::new)
    });
    let registry = plugins::Registry::load_dir_with(
        &config.plugin_dir,
        &config::Env::from_process(),
        &config.isolation,
        copies.as_deref(),
    );
    if config.redis.is_cluster() {
        let served = registry.queues();
        config::cluster::require_one_slot(
            &config.prefix,
            served.iter().map(|(_, p)| p.queue.as_str()),
        )?;
    }
    let rt = runtime::build_tokio(runtime::blocking_threads_needed(&config, &registry))?;
    let result = rt.block_on(runtime::run(config, registry, copies));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result.map(|()| ExitCode::SUCCESS)
}
