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
use tracing::{Event, Subscriber};
use tracing_log::AsLog;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::abi::{level, HostServicesBox};
use crate::log_level::{self, LogLevel};

static HOST: OnceLock<HostServicesBox> = OnceLock::new();

/// Keeps the host services and routes this image's `tracing`, `log` and panic messages to them.
/// Only the first call in a plugin image has an effect.
pub(crate) fn install(host: HostServicesBox) {
    let max = log_level::filter_of_code(host.max_level());
    if HOST.set(host).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(ForwardLayer.with_filter(max));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = tracing_log::LogTracer::builder()
            .with_max_level(max.as_log())
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
        forward(
            LogLevel::from_tracing(*meta.level()).code(),
            &target,
            &visitor.message,
            &fields,
        );
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
