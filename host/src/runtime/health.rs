//! Liveness and readiness state shared by the runtime and the HTTP endpoint.
//!
//! Ready means: not shutting down, Redis answers the host's ping, and every queue that has a loaded plugin
//! is being consumed. Disabled plugins do not make the worker unready (their queues are deliberately not
//! consumed) but are listed in the readiness report so an operator sees them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::metrics;
use super::redis_admin::AdminRedis;
use crate::plugins::DisabledPlugin;

/// A queue its plugin holds (an outcome "retry the whole queue later": rejected credentials, a provider's
/// rate limit), as `/readyz` shows it while the hold lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldQueue {
    /// The held queue.
    pub queue: String,
    /// The plugin that asked for the hold.
    pub plugin: String,
    /// The plugin's reason.
    pub reason: String,
    /// Unix ms until which no job is fetched from the queue.
    pub until_ms: u64,
}

/// A plugin being served, as `/readyz` and `frostguard-worker plugins --running` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServingEntry {
    /// Plugin name.
    pub plugin: String,
    /// The version serving its queues.
    pub version: String,
    /// The file in the plugin directory it was loaded from.
    pub file: String,
    /// Its queues.
    pub queues: Vec<String>,
    /// Unix ms since when this version serves.
    pub since_ms: u64,
    /// The last new build of this plugin that was refused (the version above kept serving), if any since
    /// this version started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_replacement: Option<RefusedReplacement>,
}

/// A new build that did not replace the serving version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedReplacement {
    /// The new build's file.
    pub file: String,
    /// Its version, when it got far enough to describe itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The load stage that refused it.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Unix ms when it was refused.
    pub at_ms: u64,
}

/// The shared state.
#[derive(Debug)]
pub struct Health {
    queues: Mutex<BTreeMap<String, bool>>,
    held: Mutex<BTreeMap<String, HeldQueue>>,
    redis_up: AtomicBool,
    shutting_down: AtomicBool,
    disabled: Mutex<Vec<DisabledPlugin>>,
    plugins: Mutex<BTreeMap<String, ServingEntry>>,
    plugin_dir_error: Option<String>,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether the worker is ready.
    pub ready: bool,
    /// Whether Redis answered the last ping.
    pub redis: bool,
    /// Whether shutdown has begun.
    pub shutting_down: bool,
    /// Each served queue and whether it is consuming.
    pub queues: BTreeMap<String, bool>,
    /// Plugins serving, with their version and any refused replacement.
    pub plugins: Vec<ServingEntry>,
    /// Queues held by their plugin right now, with the plugin and its reason. A held queue does not make the
    /// worker unready (restarting it would not help; the hold ends by itself), but an operator sees why no
    /// job moves.
    pub held_queues: Vec<HeldQueue>,
    /// Plugins that are not running, each as `{plugin, file, stage, reason}`.
    #[serde(serialize_with = "disabled_for_readyz")]
    pub disabled_plugins: Vec<DisabledPlugin>,
    /// Why the plugin directory could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_dir_error: Option<String>,
}

/// `/readyz` names a disabled plugin by its name (or file name) and file name, and gives the stage as text.
fn disabled_for_readyz<S: Serializer>(
    disabled: &[DisabledPlugin],
    s: S,
) -> Result<S::Ok, S::Error> {
    struct Entry<'a>(&'a DisabledPlugin);
    impl Serialize for Entry<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut entry = s.serialize_struct("DisabledPlugin", 4)?;
            entry.serialize_field("plugin", &self.0.plugin())?;
            entry.serialize_field("file", &self.0.file())?;
            entry.serialize_field("stage", &self.0.stage.to_string())?;
            entry.serialize_field("reason", &self.0.reason)?;
            entry.end()
        }
    }
    s.collect_seq(disabled.iter().map(Entry))
}

impl Health {
    /// State for the given queues, none of them consuming yet.
    pub fn new(
        queues: impl IntoIterator<Item = String>,
        disabled: Vec<DisabledPlugin>,
        plugin_dir_error: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            queues: Mutex::new(queues.into_iter().map(|q| (q, false)).collect()),
            held: Mutex::new(BTreeMap::new()),
            redis_up: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            disabled: Mutex::new(disabled),
            plugins: Mutex::new(BTreeMap::new()),
            plugin_dir_error,
        })
    }

    /// Records that `entry.plugin` serves at `entry.version` (replacing what was recorded for it).
    pub fn set_serving(&self, entry: ServingEntry) {
        if let Ok(mut plugins) = self.plugins.lock() {
            plugins.insert(entry.plugin.clone(), entry);
        }
    }

    /// Records that `plugin` no longer serves.
    pub fn remove_serving(&self, plugin: &str) {
        if let Ok(mut plugins) = self.plugins.lock() {
            plugins.remove(plugin);
        }
    }

    /// Records a refused new build of the serving `plugin`.
    pub fn set_refused_replacement(&self, plugin: &str, refused: RefusedReplacement) {
        if let Ok(mut plugins) = self.plugins.lock() {
            if let Some(p) = plugins.get_mut(plugin) {
                p.refused_replacement = Some(refused);
            }
        }
    }

    /// Replaces the disabled entry of `entry`'s file (or adds it).
    pub fn set_disabled(&self, entry: DisabledPlugin) {
        if let Ok(mut disabled) = self.disabled.lock() {
            let file = entry.file();
            disabled.retain(|d| d.file() != file);
            disabled.push(entry);
        }
    }

    /// Removes the disabled entry of `file`, if any.
    pub fn clear_disabled(&self, file: &str) {
        if let Ok(mut disabled) = self.disabled.lock() {
            disabled.retain(|d| d.file() != file);
        }
    }

    /// The disabled entries now.
    pub fn disabled(&self) -> Vec<DisabledPlugin> {
        self.disabled.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Stops reporting `queue` (its plugin was removed): it no longer counts for readiness.
    pub fn remove_queue(&self, queue: &str) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.remove(queue);
        }
        metrics::queue_consuming(queue, false);
    }

    /// Records whether `queue` is consuming.
    pub fn set_consuming(&self, queue: &str, consuming: bool) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.insert(queue.to_owned(), consuming);
        }
        metrics::queue_consuming(queue, consuming);
    }

    /// Records that `hold.plugin` holds `hold.queue` until `hold.until_ms` (a later hold replaces it).
    pub fn set_held(&self, hold: HeldQueue) {
        metrics::queue_held(&hold.queue, &hold.plugin, true);
        if let Ok(mut held) = self.held.lock() {
            held.insert(hold.queue.clone(), hold);
        }
    }

    /// Forgets `queue`'s hold once it has expired at `now_ms`; true when it did (no later hold replaced it).
    pub fn clear_expired_hold(&self, queue: &str, now_ms: u64) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        match held.get(queue) {
            Some(h) if h.until_ms <= now_ms => {
                metrics::queue_held(queue, &h.plugin, false);
                held.remove(queue);
                true
            }
            _ => false,
        }
    }

    /// Records the result of a Redis ping; returns the previous value.
    pub fn set_redis_up(&self, up: bool) -> bool {
        metrics::redis_up(up);
        self.redis_up.swap(up, Ordering::AcqRel)
    }

    /// Whether Redis answered the last ping.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Acquire)
    }

    /// Marks the start of shutdown (readiness turns false for good).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// The current readiness report.
    pub fn readiness(&self) -> Readiness {
        let queues = self.queues.lock().map(|q| q.clone()).unwrap_or_default();
        let redis = self.redis_up.load(Ordering::Acquire);
        let shutting_down = self.shutting_down.load(Ordering::Acquire);
        let ready = !shutting_down && redis && !queues.is_empty() && queues.values().all(|c| *c);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let held_queues = self
            .held
            .lock()
            .map(|h| h.values().filter(|h| h.until_ms > now).cloned().collect())
            .unwrap_or_default();
        Readiness {
            ready,
            redis,
            shutting_down,
            queues,
            plugins: self
                .plugins
                .lock()
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default(),
            held_queues,
            disabled_plugins: self.disabled(),
            plugin_dir_error: self.plugin_dir_error.clone(),
        }
    }
}

/// Pings Redis every `period` and keeps the health state and metric current; logs changes.
pub async fn monitor_redis(health: Arc<Health>, admin: AdminRedis, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(Duration::from_secs(2), admin.ping()).await;
        let up = matches!(result, Ok(Ok(())));
        let was = health.set_redis_up(up);
        match (was, up) {
            (true, false) => {
                let reason = match result {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "ping timed out".to_owned(),
                };
                tracing::warn!(error = %reason, "Redis unreachable; workers keep retrying")
            }
            (false, true) => tracing::info!("Redis reachable"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_names_a_disabled_plugin_by_name_or_file_and_one_entry_per_file() {
        let nameless = DisabledPlugin {
            path: "/plugins/libbroken.so".into(),
            stage: plugin_api::loader::LoadStage::Abi,
            reason: "not a plugin".into(),
            name: None,
        };
        let h = Health::new(["a".to_owned()], vec![nameless], None);
        h.set_disabled(DisabledPlugin {
            path: "/plugins/libsms.so".into(),
            stage: plugin_api::loader::LoadStage::Init,
            reason: "no key".into(),
            name: Some("sms".into()),
        });
        h.set_disabled(DisabledPlugin {
            path: "/plugins/libsms.so".into(),
            stage: plugin_api::loader::LoadStage::Config,
            reason: "bad".into(),
            name: Some("sms".into()),
        });
        let json = serde_json::to_value(h.readiness()).unwrap();
        assert_eq!(
            json["disabled_plugins"],
            serde_json::json!([
                {"plugin": "libbroken.so", "file": "libbroken.so", "stage": "abi", "reason": "not a plugin"},
                {"plugin": "sms", "file": "libsms.so", "stage": "config", "reason": "bad"},
            ])
        );
    }

    #[test]
    fn ready_only_when_all_queues_consume_and_redis_is_up() {
        let h = Health::new(["a".to_owned(), "b".to_owned()], vec![], None);
        assert!(!h.readiness().ready);
        h.set_redis_up(true);
        h.set_consuming("a", true);
        assert!(!h.readiness().ready);
        h.set_consuming("b", true);
        assert!(h.readiness().ready);
        h.set_redis_up(false);
        assert!(!h.readiness().ready);
        h.set_redis_up(true);
        h.set_shutting_down();
        let r = h.readiness();
        assert!(!r.ready && r.shutting_down);
    }

    #[test]
    fn no_queue_is_not_ready() {
        let h = Health::new(Vec::<String>::new(), vec![], Some("gone".into()));
        h.set_redis_up(true);
        assert!(!h.readiness().ready);
    }
}
