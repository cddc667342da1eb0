//! Liveness and readiness state shared by the runtime and the HTTP endpoint.
//!
//! Ready means: not shutting down, Redis answers the host's ping, and every queue that has a loaded plugin
//! is being consumed. Disabled plugins do not make the worker unready (their queues are deliberately not
//! consumed) but are listed in the readiness report so an operator sees them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::metrics;
use super::redis_admin::AdminRedis;

/// A plugin that is not running, as shown by `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct DisabledEntry {
    /// Plugin name when known, else the file name.
    pub plugin: String,
    /// The plugin's file name (two copies of one plugin differ only here).
    pub file: String,
    /// Stage at which it was rejected.
    pub stage: String,
    /// Why.
    pub reason: String,
}

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

/// The shared state.
#[derive(Debug)]
pub struct Health {
    queues: Mutex<BTreeMap<String, bool>>,
    held: Mutex<BTreeMap<String, HeldQueue>>,
    redis_up: AtomicBool,
    shutting_down: AtomicBool,
    disabled: Vec<DisabledEntry>,
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
    /// Queues held by their plugin right now, with the plugin and its reason. A held queue does not make the
    /// worker unready (restarting it would not help; the hold ends by itself), but an operator sees why no
    /// job moves.
    pub held_queues: Vec<HeldQueue>,
    /// Plugins that are not running.
    pub disabled_plugins: Vec<DisabledEntry>,
    /// Why the plugin directory could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_dir_error: Option<String>,
}

impl Health {
    /// State for the given queues, none of them consuming yet.
    pub fn new(
        queues: impl IntoIterator<Item = String>,
        disabled: Vec<DisabledEntry>,
        plugin_dir_error: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            queues: Mutex::new(queues.into_iter().map(|q| (q, false)).collect()),
            held: Mutex::new(BTreeMap::new()),
            redis_up: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            disabled,
            plugin_dir_error,
        })
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
            held_queues,
            disabled_plugins: self.disabled.clone(),
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
