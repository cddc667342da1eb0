//! What the reloader tells operators about each change: the serving set and `/readyz` (serving versions,
//! refused replacements, disabled files), the plugin metrics and change log lines, and the mapped size of
//! retired builds.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use plugin_api::loader::LoadStage;

use super::Reloader;
use crate::clock::now_ms;
use crate::plugins::reload::file_name;
use crate::plugins::watch as dir;
use crate::plugins::{ActivePlugin, DisabledPlugin};
use crate::runtime::health::{RefusedReplacement, ServingEntry};
use crate::runtime::metrics;

impl Reloader {
    pub(super) fn now_serving(&self, new: &Arc<ActivePlugin>) {
        if let Ok(mut serving) = self.serving.lock() {
            serving.push(Arc::clone(new));
        }
        self.fleet.health.set_serving(serving_entry(new));
        metrics::plugin_serving(&new.info.name, &new.info.version, true);
        self.publish_counts();
    }

    pub(super) fn refused_replacement(
        &self,
        old: &Arc<ActivePlugin>,
        file: &Path,
        new_version: Option<String>,
        stage: LoadStage,
        reason: String,
    ) {
        tracing::error!(
            change = %"replaced",
            plugin = %old.info.name,
            old_version = %old.info.version,
            new_version = new_version.as_deref().unwrap_or("-"),
            file = %file_name(file),
            %stage,
            "plugin change refused, the serving version keeps running: {reason}"
        );
        metrics::plugin_change(&old.info.name, "replaced", false);
        self.fleet.health.set_refused_replacement(
            &old.info.name,
            RefusedReplacement {
                file: file_name(file),
                version: new_version,
                stage: stage.to_string(),
                reason,
                at_ms: now_ms(),
            },
        );
    }

    pub(super) fn disabled(
        &self,
        file: &Path,
        name: Option<String>,
        version: Option<String>,
        stage: LoadStage,
        reason: String,
    ) {
        let plugin = name.clone().unwrap_or_else(|| file_name(file));
        tracing::error!(
            change = %"new",
            plugin = %plugin,
            old_version = %"-",
            new_version = version.as_deref().unwrap_or("-"),
            file = %file_name(file),
            %stage,
            "plugin change refused: {reason}"
        );
        metrics::plugin_change(&plugin, "new", false);
        let entry = DisabledPlugin {
            path: file.to_owned(),
            stage,
            reason,
            name,
        };
        let file = entry.file();
        for old in self
            .fleet
            .health
            .disabled()
            .iter()
            .filter(|d| d.file() == file)
        {
            metrics::plugin_enabled_again(&old.plugin(), &file, &old.stage.to_string());
        }
        self.fleet.health.set_disabled(entry);
        self.publish_counts();
    }

    pub(super) fn enabled_again(&self, file: &Path) {
        let name = file_name(file);
        for old in self
            .fleet
            .health
            .disabled()
            .iter()
            .filter(|d| d.file() == name)
        {
            metrics::plugin_enabled_again(&old.plugin(), &name, &old.stage.to_string());
        }
        self.fleet.health.clear_disabled(&name);
        self.publish_counts();
    }

    /// Sets the plugin gauges from the serving set and the disabled entries.
    pub(super) fn publish_counts(&self) {
        let disabled: Vec<(String, String, String)> = self
            .fleet
            .health
            .disabled()
            .into_iter()
            .map(|d| (d.plugin(), d.file(), d.stage.to_string()))
            .collect();
        metrics::plugins(self.serving_now().len(), &disabled);
    }

    /// Measures the retired images and warns past the threshold.
    pub(super) fn report_images(&self) {
        let serving: BTreeSet<String> = self
            .serving_now()
            .iter()
            .map(|p| p.library.path().display().to_string())
            .collect();
        let mapped = dir::mapped_bytes(&self.copies.dir().display().to_string());
        let retired: Vec<u64> = mapped
            .iter()
            .filter(|(path, _)| !serving.contains(*path))
            .map(|(_, bytes)| *bytes)
            .collect();
        let bytes: u64 = retired.iter().sum();
        metrics::retired_images(retired.len(), bytes);
        if retired.len() > self.settings.retired_warn {
            tracing::warn!(
                retired_images = retired.len(),
                mapped_mb = bytes / (1024 * 1024),
                threshold = self.settings.retired_warn,
                "replaced and removed plugin libraries stay mapped (never unloaded); restart the worker to \
                 release them"
            );
        } else {
            tracing::debug!(
                retired_images = retired.len(),
                mapped_bytes = bytes,
                "retired plugin images"
            );
        }
    }
}

/// What `/readyz` shows for a serving plugin.
pub fn serving_entry(p: &ActivePlugin) -> ServingEntry {
    ServingEntry {
        plugin: p.info.name.clone(),
        version: p.info.version.clone(),
        file: file_name(&p.source),
        queues: p.info.queues.iter().map(|q| q.queue.clone()).collect(),
        since_ms: now_ms(),
        refused_replacement: None,
    }
}
