//! Re-emits the log records a plugin forwards as events on the host's `tracing` subscriber, tagged with the
//! plugin's name, so plugin output shares the host's format (text or JSON), filter and destination.

use plugin_api::loader::{ForwardedLog, HostLogger, LogLevel};
use tracing::level_filters::LevelFilter;

/// The [`HostLogger`] given to one plugin.
pub struct TracingLogger {
    plugin: String,
}

impl TracingLogger {
    /// A logger for the plugin named `plugin`.
    pub fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
        }
    }
}

impl HostLogger for TracingLogger {
    fn log(&self, record: ForwardedLog) {
        // A record with an `event` field is also counted (`frostguard_plugin_events_total`): a plugin's way
        // to make something it logs (e.g. a possibly duplicated SMS) visible on /metrics.
        if let Some((_, event)) = record.fields.iter().find(|(k, _)| k == "event") {
            crate::runtime::metrics::plugin_event(&self.plugin, event.trim_matches('"'));
        }
        let fields = record
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = self.plugin.as_str();
        let target = record.target.as_str();
        let message = record.message.as_str();
        // `tracing` needs the level at compile time, hence one arm per level.
        match record.level {
            LogLevel::Error => {
                tracing::error!(target: "plugin", plugin, plugin_target = target, fields, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "plugin", plugin, plugin_target = target, fields, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "plugin", plugin, plugin_target = target, fields, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "plugin", plugin, plugin_target = target, fields, "{message}")
            }
            LogLevel::Trace => {
                tracing::trace!(target: "plugin", plugin, plugin_target = target, fields, "{message}")
            }
        }
    }

    fn max_level(&self) -> LogLevel {
        // With the host's logging off the plugin still forwards errors; the host's filter decides what is printed.
        LogLevel::most_verbose_in(LevelFilter::current()).unwrap_or(LogLevel::Error)
    }
}
