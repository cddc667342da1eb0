//! FrostGuard SMS processor plugin: queue `sms-notifications`, job `sms:send`.
//!
//! Sends critical-alert SMS through the Telnyx Messages API and records the outcome in FrostGuard's
//! `notification_deliveries` table, replacing the Node worker's `processSmsNotification` without its
//! defects (see the plugin's README).
//!
//! Modules, in the order a job meets them:
//! * [`config`]: FrostGuard's variable names, parsed and checked once at init;
//! * [`validate`]: job data → [`validate::SmsJob`], or an unrecoverable reason;
//! * [`processor`]: delivery claim, idempotency check, send, row update, outcome;
//! * [`telnyx`] + [`classify`]: the HTTP call and what each answer means;
//! * [`delivery`]: the delivery row and the claim on it; [`pgtls`]: TLS to PostgreSQL (`sslmode`);
//! * [`redact`]: masking of phone numbers in logs and reasons.
//!
//! `sms:send` is a pending job: `start` validates the job on the thread that received it and hands the
//! send to a runtime private to this plugin (a `cdylib` cannot use the host's tokio), which completes the
//! job when Telnyx and the database have answered, raced against the host's cancellation flag and the
//! job's deadline. No thread waits for a job meanwhile, so a slow provider costs memory per job, not a
//! thread. `process` does the same work from a host blocking thread (`block_on`) for any other job name
//! (`handles_unknown_names`: such a job only gets its delivery row marked failed).

#![forbid(unsafe_code)]

pub mod classify;
pub mod config;
pub mod delivery;
pub mod pgtls;
pub mod processor;
pub mod redact;
pub mod telnyx;
pub mod validate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::serde_json::json;
use plugin_api::tracing::{info, warn};
use plugin_api::{
    export_plugin, InitError, JobContext, JobView, Outcome, PendingJob, Plugin, PluginConfig,
    PluginInfo, QueueInfo, RateLimitHint,
};
use tokio::runtime::{Handle, Runtime};

use crate::config::SmsConfig;
use crate::delivery::DeliveryRepo;
use crate::processor::{Attempt, Processor};
use crate::redact::mask_phone;
use crate::telnyx::TelnyxClient;

pub const PLUGIN_NAME: &str = "sms-notifications";
pub const QUEUE: &str = "sms-notifications";
/// FrostGuard's worker ran this queue with concurrency 5.
pub const DEFAULT_CONCURRENCY: u32 = 5;
/// A ceiling against bursts (an alert storm across many users), not a throttle: a Telnyx long code sends
/// about one message per second per number, but the API itself takes far more, and throttling per number
/// is Telnyx's job (it queues). Operators override it with `QUEUE_SMS_NOTIFICATIONS_RATE_LIMIT_*`.
pub const RATE_LIMIT: RateLimitHint = RateLimitHint {
    max: 10,
    duration_ms: 1000,
};
/// Bound on the start-up connectivity check of the delivery database (it only logs; it never fails init).
const INIT_DB_PROBE: Duration = Duration::from_secs(3);
/// Suggested time budget of one job (`QueueInfo::timeout_ms`): above the default Telnyx request timeout
/// (30 s) plus the delivery's claim (one `delivery::OP_TIMEOUT`) and recording the send
/// (`processor::MARK_SENT_BUDGET`), so the host only cancels a
/// job that is stuck beyond the plugin's own timeouts. An operator who raises
/// `SMS_REQUEST_TIMEOUT_MS` raises `QUEUE_SMS_NOTIFICATIONS_JOB_TIMEOUT_MS` with it.
pub const JOB_TIMEOUT_MS: u64 = 60_000;
const _: () = assert!(
    JOB_TIMEOUT_MS
        > (config::DEFAULT_REQUEST_TIMEOUT.as_millis()
            + delivery::OP_TIMEOUT.as_millis()
            + processor::MARK_SENT_BUDGET.as_millis()) as u64
);

/// How often a running job checks the host's cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The plugin instance shared by every job.
pub struct SmsPlugin {
    /// Taken out in `shutdown`; jobs use `handle`, so they never contend on this lock.
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    /// `None` in dry-run mode. Shared with the tasks that send pending jobs.
    processor: Option<Arc<Processor>>,
    stopping: AtomicBool,
}

impl Plugin for SmsPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: PLUGIN_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: vec![QueueInfo {
                queue: QUEUE.to_owned(),
                job_names: vec![validate::JOB_NAME.to_owned()],
                default_concurrency: DEFAULT_CONCURRENCY,
                rate_limit: Some(RATE_LIMIT),
                handles_unknown_names: true,
                timeout_ms: Some(JOB_TIMEOUT_MS),
                // Every send is an HTTP call to Telnyx and a database write: never inline, and awaited on
                // the plugin's runtime rather than on a thread of the host's.
                inline_jobs: vec![],
                pending_jobs: vec![validate::JOB_NAME.to_owned()],
            }],
            config_keys: config::KEYS.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn init(plugin_config: &PluginConfig) -> Result<Self, InitError> {
        let config = SmsConfig::from_lookup(&|key| plugin_config.get(key).map(str::to_owned))?;
        // Loads libphonenumber's metadata now, so the first alarm does not wait for it.
        let _ = validate::to_e164("+15550000000");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fg-sms-runtime")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the plugin's async runtime: {e}"))?;
        let handle = runtime.handle().clone();

        let processor = match config.telnyx {
            None => {
                warn!("SMS_DRY_RUN=true: jobs are validated and logged but no SMS is sent and no delivery row is written");
                None
            }
            Some(settings) => {
                info!(endpoint = %settings.messages_url, from = %mask_phone(&settings.from),
                      messaging_profile = settings.messaging_profile_id.is_some(),
                      timeout_ms = settings.request_timeout.as_millis() as u64, "Telnyx client ready");
                let telnyx = TelnyxClient::new(settings)?;
                let deliveries = match &config.database_url {
                    None => {
                        warn!("DATABASE_URL not set: SMS are sent without delivery tracking or duplicate protection");
                        None
                    }
                    Some(url) => {
                        let claim_timeout = processor::claim_timeout(telnyx.request_timeout());
                        let repo = DeliveryRepo::new(url.expose(), claim_timeout)?;
                        // A database that is down must not disable sending; say so now, jobs retry later.
                        // (The timer must be created inside the runtime, hence the async block.)
                        let probe = handle.block_on(async {
                            tokio::time::timeout(INIT_DB_PROBE, repo.load(uuid::Uuid::nil())).await
                        });
                        match probe.unwrap_or_else(|_| Err("no answer within 3 s".to_owned())) {
                            Ok(_) => info!("delivery tracking enabled (notification_deliveries)"),
                            Err(e) => {
                                warn!(error = %e, "delivery database not reachable at start; jobs will retry until it is")
                            }
                        }
                        Some(repo)
                    }
                };
                Some(Arc::new(Processor {
                    telnyx,
                    deliveries,
                    auth_retry_delay: config.auth_retry_delay,
                }))
            }
        };
        Ok(SmsPlugin {
            runtime: Mutex::new(Some(runtime)),
            handle,
            processor,
            stopping: AtomicBool::new(false),
        })
    }

    fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome {
        match self.begin(job) {
            Begun::Done(outcome) => outcome,
            Begun::Work(work) => self.handle.block_on(work.run(|| ctx.is_cancelled())),
        }
    }

    fn start(&self, job: &JobView, pending: PendingJob) {
        match self.begin(job) {
            Begun::Done(outcome) => {
                pending.complete(outcome);
            }
            Begun::Work(work) => {
                // Dropped unfinished only when the runtime shuts down; the host then fails the job
                // retryably ("dropped without an outcome"), as it would a blocking call cut short.
                self.handle.spawn(async move {
                    let outcome = work.run(|| pending.is_cancelled()).await;
                    pending.complete(outcome);
                });
            }
        }
    }

    fn shutdown(&self, deadline: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(deadline);
        }
        info!("sms plugin stopped");
    }
}

/// A job after the checks that need no I/O: its outcome already, or the work left to do.
enum Begun {
    Done(Outcome),
    Work(Work),
}

/// The I/O half of a job: owned, so that it can run on the plugin's runtime after `start` returned.
struct Work {
    processor: Arc<Processor>,
    attempt: Attempt,
    validated: Result<validate::SmsJob, validate::Invalid>,
}

impl SmsPlugin {
    /// Validates `job` and decides what is left: in dry-run mode (or while shutting down) its outcome,
    /// otherwise the send (or, for invalid data, the delivery row's update).
    fn begin(&self, job: &JobView) -> Begun {
        if self.stopping.load(Ordering::SeqCst) {
            return Begun::Done(Outcome::failed("sms plugin is shutting down"));
        }
        let attempt = Attempt {
            job_id: job.id.clone(),
            number: job.attempts_made + 1,
            max: job.max_attempts(),
            is_last: job.is_last_attempt(),
            time_left: job.time_left(),
        };
        let validated = validate::validate(&job.name, job.data.get());
        let Some(processor) = &self.processor else {
            return Begun::Done(match validated {
                Err(invalid) => {
                    warn!(job_id = %job.id, reason = %invalid.reason, "rejecting sms:send job (dry run)");
                    Outcome::unrecoverable(invalid.reason)
                }
                Ok(sms) => {
                    info!(job_id = %job.id, to = %mask_phone(&sms.phone_number), chars = sms.message.chars().count(),
                          delivery_id = ?sms.delivery_id, "dry run: SMS not sent");
                    Outcome::completed(json!({ "success": true, "dryRun": true }))
                }
            });
        };
        Begun::Work(Work {
            processor: Arc::clone(processor),
            attempt,
            validated,
        })
    }
}

impl Work {
    /// Does the job's I/O; `cancelled` is the host's flag for this job.
    async fn run(self, cancelled: impl Fn() -> bool) -> Outcome {
        let Work {
            processor,
            attempt,
            validated,
        } = self;
        match validated {
            // Only a bounded row update: nothing to interrupt.
            Err(invalid) => processor.reject(&invalid, &attempt).await,
            Ok(sms) => {
                let interrupt = interrupted(cancelled, attempt.time_left);
                processor.send(&sms, &attempt, interrupt).await
            }
        }
    }
}

/// Resolves, with the reason, once the host cancels the job (shutdown or timeout) or the job's deadline
/// passes; polled every [`CANCEL_POLL`] since the host's flag is a plain query.
async fn interrupted(cancelled: impl Fn() -> bool, deadline: Option<Duration>) -> &'static str {
    let cancelled = async {
        while !cancelled() {
            tokio::time::sleep(CANCEL_POLL).await;
        }
    };
    let expired = async {
        match deadline {
            Some(left) => tokio::time::sleep(left).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = cancelled => "cancelled by the worker (shutdown or timeout) before Telnyx answered",
        () = expired => "job deadline passed before Telnyx answered",
    }
}

export_plugin!(SmsPlugin);
