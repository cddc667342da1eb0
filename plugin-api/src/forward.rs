//! Plugin side of log forwarding: a `tracing` subscriber, installed in the plugin's own copy of `tracing`,
//! that hands every event to the host.
//!
//! A `cdylib` carries its own copy of every static, so the host's global subscriber is invisible from inside
//! the plugin; without this layer a plugin's `tracing::info!` would go nowhere. Records from crates that use
//! `log` (tokio-postgres, for one) are bridged too. Spans do not cross: put the job id in fields instead.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::abi::{level, HostServicesBox};

static HOST: OnceLock<HostServicesBox> = OnceLock::new();

/// Keeps the host services and routes this image's `tracing`, `log` and panic messages to them.
/// Only the first call in a plugin image has an effect.
pub(crate) fn install(host: HostServicesBox) {
    let max = level_filter(host.max_level());
    if HOST.set(host).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(ForwardLayer.with_filter(max));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let log_max = match max.into_level() {
            Some(Level::ERROR) => tracing_log::log::LevelFilter::Error,
            Some(Level::WARN) => tracing_log::log::LevelFilter::Warn,
            Some(Level::INFO) => tracing_log::log::LevelFilter::Info,
            Some(Level::DEBUG) => tracing_log::log::LevelFilter::Debug,
            Some(Level::TRACE) => tracing_log::log::LevelFilter::Trace,
            None => tracing_log::log::LevelFilter::Off,
        };
        let _ = tracing_log::LogTracer::builder()
            .with_max_level(log_max)
            .init();
    }
    // The default hook would print "thread '<unnamed>' panicked" to stderr, outside the host's log format.
    std::panic::set_hook(Box::new(|info| {
        forward(
            level::ERROR,
            "plugin::panic",
            &format!("panic: {info}"),
            "{}",
        );
    }));
}

/// Sends one record to the host, if the plugin has been initialised by one.
pub(crate) fn forward(lvl: u8, target: &str, message: &str, fields_json: &str) {
    if let Some(host) = HOST.get() {
        host.log(
            lvl,
            RStr::from_str(target),
            RStr::from_str(message),
            RStr::from_str(fields_json),
        );
    }
}

fn level_filter(max: u8) -> LevelFilter {
    match max {
        0 => LevelFilter::OFF,
        level::ERROR => LevelFilter::ERROR,
        level::WARN => LevelFilter::WARN,
        level::INFO => LevelFilter::INFO,
        level::DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn level_code(l: &Level) -> u8 {
    match *l {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARN,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        Level::TRACE => level::TRACE,
    }
}

struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = FieldCollector::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        // Records bridged from `log` carry their real target in a `log.target` field.
        let target = visitor
            .fields
            .remove("log.target")
            .unwrap_or_else(|| meta.target().to_owned());
        visitor.fields.retain(|k, _| !k.starts_with("log."));
        let fields = serde_json::to_string(&visitor.fields).unwrap_or_else(|_| "{}".into());
        forward(level_code(meta.level()), &target, &visitor.message, &fields);
    }
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
}
