//! One `sms:send` job from validated data to an outcome: idempotency check, send, row update, and the
//! mapping of every failure to what BullMQ should do with the job.
//!
//! A tracked job (a `deliveryId` and a database) runs the check, the send and the row update under its
//! delivery's advisory lock ([`crate::delivery::DeliveryLock`]): two overlapping runs of one delivery (a
//! stalled job started again while its first run still waits for Telnyx) cannot both read `pending` and
//! both send. The run that finds the lock taken sends nothing and comes back later, when the row says `sent`.
//!
//! Kept free of the ABI types' plumbing (runtime, cancellation, JobView) so the decision logic reads top to
//! bottom; `lib.rs` wraps it with the plugin's runtime, the job's deadline and cancellation.

use std::future::Future;
use std::time::Duration;

use plugin_api::serde_json::json;
use plugin_api::tracing::{error, info, warn};
use plugin_api::Outcome;
use uuid::Uuid;

use crate::classify::{ErrorClass, DEFAULT_RATE_LIMIT_DELAY};
use crate::delivery::{Claim, DeliveryLock, DeliveryRepo};
use crate::redact::mask_phone;
use crate::telnyx::{Accepted, SendError, TelnyxClient};
use crate::validate::{Invalid, SmsJob};

/// Time kept back from the job's deadline so that the outcome (and the row update) still fit in it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Upper bound for recording a send on the row (all tries together), so a hung database cannot hold a job
/// long past the provider's answer.
pub const MARK_SENT_BUDGET: Duration = Duration::from_secs(12);
/// How long a run that found its delivery locked by another run waits before trying again (no attempt is
/// used). Short, since the other run usually finishes within one Telnyx round trip; by then the row says
/// `sent` (and the job completes idempotently) or the other run has failed and released the lock.
pub const BUSY_RETRY_DELAY: Duration = Duration::from_secs(3);

/// Where this run stands among the job's attempts.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job_id: String,
    /// 1-based number of this attempt (`attemptsMade + 1`).
    pub number: u32,
    pub max: u32,
    /// A retryable failure now would be final.
    pub is_last: bool,
    /// Time left before the host's deadline, if the job has one.
    pub time_left: Option<Duration>,
}

/// What Telnyx answered.
type Sent = Result<Accepted, SendError>;

/// The sending side of the plugin (absent in dry-run mode).
pub struct Processor {
    pub telnyx: TelnyxClient,
    /// `None` when `DATABASE_URL` is not set: no tracking and no idempotency check.
    pub deliveries: Option<DeliveryRepo>,
    pub auth_retry_delay: Duration,
}

impl Processor {
    /// Invalid data: unrecoverable, no HTTP, and the delivery row (if we know it) records the reason.
    pub async fn reject(&self, invalid: &Invalid, attempt: &Attempt) -> Outcome {
        warn!(job_id = %attempt.job_id, reason = %invalid.reason, "rejecting sms:send job");
        if let (Some(id), Some(repo)) = (invalid.delivery_id, &self.deliveries) {
            if let Err(e) = repo.mark_failed(id, &invalid.reason, None).await {
                error!(job_id = %attempt.job_id, delivery_id = %id, error = %e, "could not mark the delivery failed");
            }
        }
        Outcome::unrecoverable(invalid.reason.clone())
    }

    /// Sends one validated job. `interrupt` resolves (with a reason) when the host cancels the job or its
    /// deadline passes; it can stop the job only *before* Telnyx has answered. Once the provider has
    /// answered, the bookkeeping (above all marking the row `sent`, which is what prevents a second SMS on a
    /// re-run) always finishes, bounded by the database timeouts.
    ///
    /// The delivery's lock, when taken, is released here on every path; if this future is dropped instead,
    /// dropping the lock closes its connection, which releases it too.
    pub async fn send(
        &self,
        job: &SmsJob,
        attempt: &Attempt,
        interrupt: impl Future<Output = &'static str>,
    ) -> Outcome {
        let mut lock = None;
        let outcome = self.send_locked(job, attempt, &mut lock, interrupt).await;
        if let Some(lock) = lock {
            if let Err(e) = lock.release().await {
                warn!(job_id = %attempt.job_id, error = %e,
                      "could not release the delivery lock; its database connection was closed instead");
            }
        }
        outcome
    }

    /// [`Processor::send`] with the lock left in `lock` (by [`Processor::check_and_send`]) for the caller
    /// to release, whichever way this returns.
    async fn send_locked(
        &self,
        job: &SmsJob,
        attempt: &Attempt,
        lock: &mut Option<DeliveryLock>,
        interrupt: impl Future<Output = &'static str>,
    ) -> Outcome {
        let to = mask_phone(&job.phone_number);
        let delivery = job
            .delivery_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        info!(job_id = %attempt.job_id, to = %to, attempt = attempt.number, max_attempts = attempt.max,
              delivery_id = %delivery, "sending SMS");
        let answer = tokio::select! {
            answer = self.check_and_send(job, attempt, lock) => answer,
            reason = interrupt => {
                warn!(job_id = %attempt.job_id, reason, "SMS job interrupted before Telnyx answered");
                return Outcome::failed(reason);
            }
        };
        let lock = lock.as_ref();
        match answer {
            Err(outcome) => outcome,
            Ok((Ok(accepted), tracked)) => {
                info!(job_id = %attempt.job_id, to = %to, message_id = %accepted.message_id, status = %accepted.status,
                      "Telnyx accepted the SMS");
                if let Some(id) = tracked {
                    self.record_sent(id, &accepted.message_id, attempt, lock)
                        .await;
                }
                Outcome::completed(json!({ "success": true, "messageId": accepted.message_id }))
            }
            Ok((Err(e), tracked)) => self.failed(e, tracked, attempt, &to, lock).await,
        }
    }

    /// The lock, the idempotency check and the HTTP call: everything that may be abandoned safely. Returns
    /// the provider's answer with the delivery row to update (if tracked), or an outcome that ends the job
    /// early. The delivery's lock, once taken, is put in `lock` at once, so that it outlives this future.
    async fn check_and_send(
        &self,
        job: &SmsJob,
        attempt: &Attempt,
        lock: &mut Option<DeliveryLock>,
    ) -> Result<(Sent, Option<Uuid>), Outcome> {
        // Idempotency: a retry, a re-run stalled job or a run overlapping this one must not text the
        // recipient twice.
        let mut tracked = job.delivery_id.filter(|_| self.deliveries.is_some());
        if let (Some(id), Some(repo)) = (tracked, &self.deliveries) {
            let state = match repo.claim(id).await {
                Err(e) => {
                    warn!(job_id = %attempt.job_id, delivery_id = %id, error = %e, "delivery database unavailable");
                    return Err(Outcome::failed(format!(
                        "delivery tracking database unavailable: {e}"
                    )));
                }
                Ok(Claim::Busy) => {
                    info!(job_id = %attempt.job_id, delivery_id = %id, retry_in_ms = BUSY_RETRY_DELAY.as_millis() as u64,
                          "delivery is being sent by another run; not sending, retrying later");
                    return Err(Outcome::retry_job_later(
                        BUSY_RETRY_DELAY.as_millis() as u64,
                        format!("delivery {id} is being sent by another run"),
                    ));
                }
                Ok(Claim::Held(held, state)) => {
                    *lock = Some(*held);
                    state
                }
            };
            match state {
                Some(state) if state.already_sent() => {
                    let message_id = state.external_id.unwrap_or_default();
                    info!(job_id = %attempt.job_id, delivery_id = %id, status = %state.status, message_id = %message_id,
                          "delivery already sent; not sending again");
                    return Err(Outcome::completed(
                        json!({ "success": true, "messageId": message_id, "alreadySent": true }),
                    ));
                }
                Some(_) => {}
                None => {
                    // An alert SMS matters more than its bookkeeping: send, but say loudly that it is untracked.
                    // The lock is kept all the same: it still keeps overlapping runs from sending twice.
                    warn!(job_id = %attempt.job_id, delivery_id = %id,
                          "delivery row not found; sending without delivery tracking");
                    tracked = None;
                }
            }
        }

        let timeout = match attempt.time_left {
            None => self.telnyx.request_timeout(),
            Some(left) => match left.checked_sub(DEADLINE_MARGIN) {
                Some(usable) if !usable.is_zero() => usable.min(self.telnyx.request_timeout()),
                _ => {
                    return Err(Outcome::failed(
                        "job deadline reached before the SMS could be sent",
                    ))
                }
            },
        };

        let answer = self
            .telnyx
            .send(&job.phone_number, &job.message, timeout)
            .await;
        Ok((answer, tracked))
    }

    /// The SMS went out: the row must say so, or a later retry of this job would send it again. Retried a
    /// few times (on the locked connection while it lives); if the database still refuses, the job completes
    /// anyway (the provider accepted it) and the error is logged with the message id so the row can be fixed
    /// by hand.
    async fn record_sent(
        &self,
        id: Uuid,
        message_id: &str,
        attempt: &Attempt,
        lock: Option<&DeliveryLock>,
    ) {
        let Some(repo) = &self.deliveries else { return };
        let tries = async {
            let mut last_error = String::new();
            for pause in [
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_secs(1),
            ] {
                tokio::time::sleep(pause).await;
                match repo.mark_sent(id, message_id, lock).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = e,
                }
            }
            Err(last_error)
        };
        let result = tokio::time::timeout(MARK_SENT_BUDGET, tries)
            .await
            .unwrap_or_else(|_| Err(format!("gave up after {} s", MARK_SENT_BUDGET.as_secs())));
        if let Err(e) = result {
            error!(job_id = %attempt.job_id, delivery_id = %id, message_id = %message_id, error = %e,
                   "SMS sent but the delivery row could not be marked sent");
        }
    }

    async fn failed(
        &self,
        e: SendError,
        tracked: Option<Uuid>,
        attempt: &Attempt,
        to: &str,
        lock: Option<&DeliveryLock>,
    ) -> Outcome {
        let reason = e.describe();
        match e.class() {
            ErrorClass::Permanent => {
                warn!(job_id = %attempt.job_id, to = %to, reason = %reason, "Telnyx rejected the SMS permanently");
                if let (Some(id), Some(repo)) = (tracked, &self.deliveries) {
                    if let Err(db) = repo.mark_failed(id, &reason, lock).await {
                        error!(job_id = %attempt.job_id, delivery_id = %id, error = %db,
                               "could not mark the delivery failed");
                    }
                }
                Outcome::unrecoverable(format!("Permanent SMS failure: {reason}"))
            }
            ErrorClass::RateLimited => {
                let delay = match &e {
                    SendError::Rejected {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => DEFAULT_RATE_LIMIT_DELAY,
                };
                warn!(job_id = %attempt.job_id, delay_ms = delay.as_millis() as u64, reason = %reason,
                      "Telnyx is rate limiting; pausing the queue");
                Outcome::retry_queue_later(
                    delay.as_millis() as u64,
                    format!(
                        "Telnyx rate limit ({reason}); retrying in {} ms",
                        delay.as_millis()
                    ),
                )
            }
            ErrorClass::Auth => {
                // Logged at error level on every occurrence: nothing is sent until an operator fixes the key.
                error!(job_id = %attempt.job_id, reason = %reason,
                       "Telnyx rejected our credentials; check TELNYX_API_KEY and the messaging profile");
                let delay = self.auth_retry_delay;
                Outcome::retry_queue_later(
                    delay.as_millis() as u64,
                    format!(
                        "Telnyx rejected the API credentials ({reason}); retrying in {} ms",
                        delay.as_millis()
                    ),
                )
            }
            ErrorClass::Transient => {
                warn!(job_id = %attempt.job_id, to = %to, attempt = attempt.number, max_attempts = attempt.max,
                      last_attempt = attempt.is_last, reason = %reason, "SMS send failed; retryable");
                if let (Some(id), Some(repo)) = (tracked, &self.deliveries) {
                    let attempts = i32::try_from(attempt.number).unwrap_or(i32::MAX);
                    let written = if attempt.is_last {
                        repo.mark_exhausted(id, attempts, &reason, lock).await
                    } else {
                        repo.record_retry(id, attempts, lock).await
                    };
                    if let Err(db) = written {
                        error!(job_id = %attempt.job_id, delivery_id = %id, error = %db,
                               "could not record the failed attempt on the delivery");
                    }
                }
                Outcome::failed(format!("SMS send failed: {reason}"))
            }
        }
    }
}
