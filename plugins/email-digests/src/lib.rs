//! FrostGuard email digest plugin: queue `email-digests`, job `email:digest`.
//!
//! FrostGuard's API creates one BullMQ job scheduler per user and period (`digest-daily-<userId>`,
//! `digest-weekly-<userId>`, cron in the user's time zone); each of their jobs becomes one digest email
//! of the organization's alerts of the last 24 hours or 7 days, rendered as HTML and text and sent through
//! Resend with an idempotency key, so a retry never sends a second email.
//!
//! Modules, in the order a job meets them:
//! * [`config`]: FrostGuard's variable names, parsed and checked once at init;
//! * [`job`]: job data → [`job::DigestJob`], and the scheduled run it belongs to ([`job::Run`]);
//! * [`store`]: profile, organization and alerts from PostgreSQL;
//! * [`digest`]: skip rules, site filter, summary and grouping (pure);
//! * [`unsubscribe`] + [`render`]: the unsubscribe token and the email from the templates;
//! * [`resend`]: the HTTP call and what each answer means;
//! * [`processor`]: all of the above for one job, and the outcome;
//! * [`sample`]: sample content for the preview example and the template snapshots.
//!
//! `process` runs on a host blocking thread; the async work runs on a runtime private to this plugin.

#![forbid(unsafe_code)]

pub mod config;
pub mod digest;
pub mod job;
pub mod processor;
pub mod render;
pub mod resend;
pub mod sample;
pub mod store;
pub mod unsubscribe;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use plugin_api::tracing::{info, warn};
use plugin_api::{
    export_plugin, InitError, JobContext, JobView, Outcome, Plugin, PluginConfig, PluginInfo,
    QueueInfo, RateLimitHint,
};
use tokio::runtime::{Handle, Runtime};

use crate::config::{Delivery, DigestConfig};
use crate::processor::{Attempt, Processor, Sink};
use crate::render::Renderer;
use crate::resend::ResendClient;
use crate::store::Store;
use crate::unsubscribe::Signer;

pub const PLUGIN_NAME: &str = "email-digests";
pub const QUEUE: &str = "email-digests";
/// FrostGuard's worker ran this queue with concurrency 2.
pub const DEFAULT_CONCURRENCY: u32 = 2;
/// Resend's default limit: 2 requests per second per team. Operators with a raised limit override it with
/// `QUEUE_EMAIL_DIGESTS_RATE_LIMIT_*`.
pub const RATE_LIMIT: RateLimitHint = RateLimitHint {
    max: 2,
    duration_ms: 1000,
};
/// Suggested time budget of one job: three bounded reads and the Resend call (30 s by default), with room.
pub const JOB_TIMEOUT_MS: u64 = 90_000;
const _: () = assert!(
    JOB_TIMEOUT_MS
        > (config::DEFAULT_REQUEST_TIMEOUT.as_millis() + 3 * store::OP_TIMEOUT.as_millis()) as u64
);
/// Bound on the start-up connectivity check of the database (it only logs; it never fails init).
const INIT_DB_PROBE: Duration = Duration::from_secs(3);
/// How often a running job checks the host's cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

pub struct EmailDigestsPlugin {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    processor: Processor,
    stopping: AtomicBool,
}

impl Plugin for EmailDigestsPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: PLUGIN_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: vec![QueueInfo {
                queue: QUEUE.to_owned(),
                job_names: vec![job::JOB_NAME.to_owned()],
                default_concurrency: DEFAULT_CONCURRENCY,
                rate_limit: Some(RATE_LIMIT),
                handles_unknown_names: false,
                timeout_ms: Some(JOB_TIMEOUT_MS),
                // Every digest reads the database and calls Resend: never inline.
                inline_jobs: vec![],
                pending_jobs: vec![],
            }],
            config_keys: config::KEYS.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn init(plugin_config: &PluginConfig) -> Result<Self, InitError> {
        let config = DigestConfig::from_lookup(&|key| plugin_config.get(key).map(str::to_owned))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fg-email-runtime")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the plugin's async runtime: {e}"))?;
        let handle = runtime.handle().clone();

        let signer = match &config.unsubscribe_secret {
            Some(secret) => Signer::new(secret.expose().as_bytes()),
            None => {
                warn!("no UNSUBSCRIBE_SECRET or JWT_SECRET (dry run): unsubscribe links are signed with a throwaway secret and will not verify");
                let throwaway = format!(
                    "dry-run-{}-{:?}",
                    std::process::id(),
                    std::time::SystemTime::now()
                );
                Signer::new(throwaway.as_bytes())
            }
        };
        let sink = match config.delivery {
            Delivery::DryRun { dir } => {
                warn!(dir = %dir.display(), "EMAIL_DRY_RUN=true: digests are rendered to files, never sent");
                Sink::DryRun { dir }
            }
            Delivery::Resend {
                api_key,
                emails_url,
                request_timeout,
                auth_retry_delay,
            } => {
                info!(endpoint = %emails_url, from = %config.from, timeout_ms = request_timeout.as_millis() as u64,
                      "Resend client ready");
                Sink::Resend {
                    client: ResendClient::new(api_key, emails_url, request_timeout)?,
                    auth_retry_delay,
                }
            }
        };
        let store = Store::new(config.database_url.expose())?;
        // A database that is down must not disable the plugin; say so now, jobs retry until it is back.
        let probe = handle.block_on(async {
            tokio::time::timeout(INIT_DB_PROBE, store.organization_name(uuid::Uuid::nil())).await
        });
        match probe.unwrap_or_else(|_| Err("no answer within 3 s".to_owned())) {
            Ok(_) => info!("digest database reachable"),
            Err(e) => {
                warn!(error = %e, "digest database not reachable at start; jobs will retry until it is")
            }
        }
        let processor = Processor {
            store,
            renderer: Renderer::new()?,
            signer,
            from: config.from,
            app_url: config.app_url,
            sink,
        };
        Ok(EmailDigestsPlugin {
            runtime: Mutex::new(Some(runtime)),
            handle,
            processor,
            stopping: AtomicBool::new(false),
        })
    }

    fn process(&self, view: &JobView, ctx: &JobContext<'_>) -> Outcome {
        if self.stopping.load(Ordering::SeqCst) {
            return Outcome::failed("email digest plugin is shutting down");
        }
        let digest_job = match job::parse(&view.name, view.data.get()) {
            Ok(j) => j,
            Err(reason) => {
                warn!(job_id = %view.id, reason = %reason, "rejecting email:digest job");
                return Outcome::unrecoverable(reason);
            }
        };
        let run = job::Run::of(&view.id, view.timestamp, view.opts.delay);
        let attempt = Attempt {
            job_id: view.id.clone(),
            number: view.attempts_made + 1,
            max: view.max_attempts(),
            time_left: view.time_left(),
        };
        info!(job_id = %view.id, user_id = %digest_job.user_id, period = digest_job.period.as_str(),
              run = %run.due, attempt = attempt.number, "building digest");
        self.handle.block_on(self.processor.process(
            &digest_job,
            &run,
            &attempt,
            interrupted(ctx, attempt.time_left),
        ))
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
        info!("email digest plugin stopped");
    }
}

/// Resolves, with the reason, once the host cancels the job (shutdown or timeout) or its deadline passes.
async fn interrupted(ctx: &JobContext<'_>, deadline: Option<Duration>) -> &'static str {
    let cancelled = async {
        while !ctx.is_cancelled() {
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
        () = cancelled => "cancelled by the worker (shutdown or timeout) before Resend answered",
        () = expired => "job deadline passed before Resend answered",
    }
}

export_plugin!(EmailDigestsPlugin);
