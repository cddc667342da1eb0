//! One `email:digest` job from checked data to an outcome: profile and skip rules, the window's alerts,
//! rendering, then Resend (or the dry-run directory), and the mapping of every failure to what BullMQ should
//! do with the job.
//!
//! Kept free of the ABI plumbing (runtime, cancellation, JobView); `lib.rs` wraps it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugin_api::serde_json::{json, Value};
use plugin_api::tracing::{error, info, warn};
use plugin_api::Outcome;

use crate::digest::{self, Digest};
use crate::job::{DigestJob, Run};
use crate::render::{Recipient, Rendered, Renderer};
use crate::resend::{ErrorClass, ResendClient, SendError, IN_PROGRESS_DELAY};
use crate::store::Store;
use crate::unsubscribe::{self, Signer};

/// Time kept back from the job's deadline so the outcome still fits in it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Where this run stands among the job's attempts.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job_id: String,
    /// 1-based number of this attempt.
    pub number: u32,
    pub max: u32,
    pub time_left: Option<Duration>,
}

/// Where rendered digests go.
pub enum Sink {
    Resend {
        client: ResendClient,
        /// How long the queue pauses after Resend refuses our key.
        auth_retry_delay: Duration,
    },
    /// Written as files to this directory; nothing is sent.
    DryRun { dir: PathBuf },
}

pub struct Processor {
    pub store: Store,
    pub renderer: Renderer,
    pub signer: Signer,
    pub from: String,
    pub app_url: String,
    pub sink: Sink,
}

/// The email as Resend gets it, with its idempotency key.
pub struct Email {
    pub body: Value,
    pub idempotency_key: String,
}

impl Processor {
    /// Runs one digest job. `interrupt` resolves (with a reason) when the host cancels the job or its
    /// deadline passes; it can stop the job only before Resend has answered.
    pub async fn process(
        &self,
        job: &DigestJob,
        run: &Run,
        attempt: &Attempt,
        interrupt: impl Future<Output = &'static str>,
    ) -> Outcome {
        let email = match self.prepare(job, run, attempt).await {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        match &self.sink {
            Sink::DryRun { dir } => write_dry_run(dir, &email, attempt),
            Sink::Resend {
                client,
                auth_retry_delay,
            } => {
                let timeout = match attempt.time_left {
                    None => client.request_timeout(),
                    Some(left) => match left.checked_sub(DEADLINE_MARGIN) {
                        Some(usable) if !usable.is_zero() => usable.min(client.request_timeout()),
                        _ => {
                            return Outcome::failed(
                                "job deadline reached before the digest could be sent",
                            )
                        }
                    },
                };
                let answer = tokio::select! {
                    answer = client.send(&email.body, &email.idempotency_key, timeout) => answer,
                    reason = interrupt => {
                        warn!(job_id = %attempt.job_id, reason, "digest job interrupted before Resend answered");
                        return Outcome::failed(reason);
                    }
                };
                match answer {
                    Ok(id) => {
                        info!(job_id = %attempt.job_id, message_id = %id, key = %email.idempotency_key,
                              "Resend accepted the digest");
                        Outcome::completed(json!({ "success": true, "messageId": id }))
                    }
                    Err(e) => failed(&e, *auth_retry_delay, attempt, &email.idempotency_key),
                }
            }
        }
    }

    /// Everything before the send: skips and empty digests end the job here (as `Err`).
    async fn prepare(
        &self,
        job: &DigestJob,
        run: &Run,
        attempt: &Attempt,
    ) -> Result<Email, Outcome> {
        let db = |e: String| {
            warn!(job_id = %attempt.job_id, error = %e, "digest database unavailable");
            Outcome::failed(format!("digest database unavailable: {e}"))
        };
        let profile = self
            .store
            .profile(job.user_id, job.organization_id)
            .await
            .map_err(db)?;
        if let Some(skip) = digest::skip(profile.as_ref(), job.period, job.organization_id) {
            info!(job_id = %attempt.job_id, user_id = %job.user_id, period = job.period.as_str(),
                  reason = skip.reason(), "digest skipped");
            return Err(Outcome::completed(
                json!({ "success": false, "reason": skip.reason() }),
            ));
        }
        let profile = profile.expect("skip() returns UserNotFound without a profile");
        let sites = digest::site_filter(profile.digest_site_ids.as_deref()).unwrap_or_else(|why| {
            warn!(job_id = %attempt.job_id, user_id = %job.user_id, why = %why,
                  "digest_site_ids is unusable; covering every site");
            None
        });
        let to = run.due;
        let from = to - job.period.window();
        let (rows, in_window) = self
            .store
            .alerts(job.organization_id, sites.as_deref(), from, to)
            .await
            .map_err(db)?;
        let organization = self
            .store
            .organization_name(job.organization_id)
            .await
            .map_err(db)?;
        let Some(content) = Digest::build(organization, rows, in_window) else {
            info!(job_id = %attempt.job_id, user_id = %job.user_id, period = job.period.as_str(),
                  from = %from, to = %to, "no alerts in the window; nothing sent");
            return Err(Outcome::completed(
                json!({ "success": true, "reason": "no_content" }),
            ));
        };
        if crate::render::zone(&profile.timezone).1 != profile.timezone.trim() {
            warn!(job_id = %attempt.job_id, timezone = %profile.timezone,
                  "profile time zone is not a known IANA zone; showing times in UTC");
        }
        let token = self
            .signer
            .token(&job.user_id.to_string(), job.period, run.due)
            .map_err(Outcome::failed)?;
        let unsubscribe_url = unsubscribe::link(&self.app_url, &token);
        let dashboard_url = format!("{}/alerts", self.app_url);
        let rendered = self
            .renderer
            .render(
                job.period,
                &content,
                &Recipient {
                    name: profile.full_name.as_deref(),
                    timezone: &profile.timezone,
                    dashboard_url: &dashboard_url,
                    unsubscribe_url: &unsubscribe_url,
                },
            )
            .map_err(|e| {
                error!(job_id = %attempt.job_id, error = %e, "digest rendering failed");
                Outcome::failed(e)
            })?;
        Ok(Email {
            body: email_body(&self.from, &profile.email, &rendered, &unsubscribe_url),
            idempotency_key: run.idempotency_key(job),
        })
    }
}

/// The `POST /emails` body: FrostGuard's fields plus the `List-Unsubscribe` headers (RFC 2369 / 8058).
pub fn email_body(from: &str, to: &str, rendered: &Rendered, unsubscribe_url: &str) -> Value {
    json!({
        "from": from,
        "to": [to],
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
        "headers": {
            "List-Unsubscribe": format!("<{unsubscribe_url}>"),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "tags": [{ "name": "type", "value": "digest" }],
    })
}

fn failed(e: &SendError, auth_retry_delay: Duration, attempt: &Attempt, key: &str) -> Outcome {
    let reason = e.describe();
    match e.class() {
        ErrorClass::Permanent => {
            warn!(job_id = %attempt.job_id, reason = %reason, key, "Resend rejected the digest permanently");
            Outcome::unrecoverable(format!("Resend rejected the digest: {reason}"))
        }
        ErrorClass::Auth => {
            // Logged at error level every time: nothing is sent until an operator fixes the key or domain.
            error!(job_id = %attempt.job_id, reason = %reason,
                   "Resend refused our credentials or sender; check RESEND_API_KEY and EMAIL_FROM_ADDRESS");
            Outcome::retry_queue_later(
                auth_retry_delay.as_millis() as u64,
                format!(
                    "Resend refused the API key or sender ({reason}); retrying in {} ms",
                    auth_retry_delay.as_millis()
                ),
            )
        }
        ErrorClass::RateLimited => {
            let delay = match e {
                SendError::Rejected {
                    retry_after: Some(d),
                    ..
                } => *d,
                _ => crate::resend::DEFAULT_RATE_LIMIT_DELAY,
            };
            warn!(job_id = %attempt.job_id, delay_ms = delay.as_millis() as u64, reason = %reason,
                  "Resend is rate limiting; pausing the queue");
            Outcome::retry_queue_later(
                delay.as_millis() as u64,
                format!(
                    "Resend rate limit ({reason}); retrying in {} ms",
                    delay.as_millis()
                ),
            )
        }
        ErrorClass::InProgress => {
            info!(job_id = %attempt.job_id, key, "Resend is still processing this digest's first request; retrying later");
            Outcome::retry_job_later(
                IN_PROGRESS_DELAY.as_millis() as u64,
                format!(
                    "Resend is still processing a request with idempotency key {key} ({reason})"
                ),
            )
        }
        ErrorClass::Transient => {
            warn!(job_id = %attempt.job_id, attempt = attempt.number, max_attempts = attempt.max,
                  reason = %reason, "digest send failed; retryable");
            Outcome::failed(format!("digest send failed: {reason}"))
        }
    }
}

/// Dry run: the email goes to `<dir>/<key>.html`, `.txt` and `.json` (everything else Resend would get).
fn write_dry_run(dir: &Path, email: &Email, attempt: &Attempt) -> Outcome {
    let stem: String = email
        .idempotency_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let html_path = dir.join(format!("{stem}.html"));
    let mut meta = email.body.clone();
    let html = meta["html"].take();
    let text = meta["text"].take();
    meta["idempotencyKey"] = json!(email.idempotency_key);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&html_path, html.as_str().unwrap_or_default()))
        .and_then(|()| {
            std::fs::write(
                dir.join(format!("{stem}.txt")),
                text.as_str().unwrap_or_default(),
            )
        })
        .and_then(|()| {
            let pretty = serde_json::to_string_pretty(&meta).unwrap_or_default();
            std::fs::write(dir.join(format!("{stem}.json")), pretty)
        });
    match written {
        Ok(()) => {
            info!(job_id = %attempt.job_id, path = %html_path.display(), "dry run: digest written, not sent");
            Outcome::completed(json!({
                "success": true, "dryRun": true, "path": html_path.display().to_string(),
            }))
        }
        Err(e) => {
            error!(job_id = %attempt.job_id, dir = %dir.display(), error = %e, "dry run: cannot write the digest");
            Outcome::failed(format!(
                "dry run: cannot write the digest to {}: {e}",
                dir.display()
            ))
        }
    }
}
