//! One `sms:send` job from validated data to an outcome: claim, idempotency check, send, row update, and the
//! mapping of every failure to what BullMQ should do with the job.
//!
//! A tracked job (a `deliveryId` and a database) first claims its delivery row ([`crate::delivery`]): two
//! overlapping runs of one delivery (a stalled job started again while its first run still waits for Telnyx)
//! cannot both send; the run that finds the row claimed sends nothing and comes back later, when the row says
//! `sent`. A claim left by an attempt whose outcome is unknown (crash, timeout) is taken over once it is older
//! than [`claim_timeout`], and that re-run is logged and counted as *possibly sent*: alarms are delivered at
//! least once, a duplicate beating a lost alarm.
//!
//! Kept free of the ABI types' plumbing (runtime, cancellation, JobView) so the decision logic reads top to
//! bottom; `lib.rs` wraps it with the plugin's runtime, the job's deadline and cancellation.

use std::future::Future;
use std::time::{Duration, SystemTime};

use plugin_api::serde_json::json;
use plugin_api::tracing::{error, info, warn};
use plugin_api::Outcome;
use uuid::Uuid;

use crate::classify::{ErrorClass, DEFAULT_RATE_LIMIT_DELAY};
use crate::delivery::{Claim, DeliveryRepo};
use crate::redact::mask_phone;
use crate::telnyx::{Accepted, SendError, TelnyxClient};
use crate::validate::{Invalid, SmsJob};

/// Time kept back from the job's deadline so that the outcome (and the row update) still fit in it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Upper bound for recording a send on the row (all tries together), so a hung database cannot hold a job
/// long past the provider's answer.
pub const MARK_SENT_BUDGET: Duration = Duration::from_secs(12);
/// How long a run that found its delivery claimed by another run waits before trying again (no attempt is
/// used). Short, since the other run usually finishes within one Telnyx round trip; by then the row says
/// `sent` (and the job completes idempotently) or the other run has failed and ended its claim.
pub const BUSY_RETRY_DELAY: Duration = Duration::from_secs(3);
/// Slack on top of the longest a live run can hold a claim.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// Age past which a claim on a delivery is abandoned: a live run claims just before its Telnyx request, the
/// request is cut at `request_timeout`, and recording an accepted message takes at most
/// [`MARK_SENT_BUDGET`]; no live run holds a claim longer. (Both ends of the age are read on the database's
/// clock, so workers' clocks do not matter.)
pub fn claim_timeout(request_timeout: Duration) -> Duration {
    request_timeout + MARK_SENT_BUDGET + CLAIM_MARGIN
}

/// The tracing field that makes the host count an event (`frostguard_plugin_events_total{event=…}`).
pub const EVENT_POSSIBLY_SENT: &str = "possibly_sent";
/// Counted each time Telnyx refuses our credentials (the queue is then held).
pub const EVENT_CREDENTIALS_REJECTED: &str = "credentials_rejected";

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

/// The delivery row a run writes its outcome to, and its claim on it.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    id: Uuid,
    stamp: SystemTime,
}

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
            if let Err(e) = repo.mark_failed(id, &invalid.reason).await {
                error!(job_id = %attempt.job_id, delivery_id = %id, error = %e, "could not mark the delivery failed");
            }
        }
        Outcome::unrecoverable(invalid.reason.clone())
    }

    /// Sends one validated job. `interrupt` resolves (with a reason) when the host cancels the job or its
    /// deadline passes; it can stop the job only *before* Telnyx has answered (the claim then stays: the
    /// request may be on its way). Once the provider has answered, the bookkeeping (above all marking the row
    /// `sent`, which is what prevents a second SMS on a re-run) always finishes, bounded by the database
    /// timeouts.
    pub async fn send(
        &self,
        job: &SmsJob,
        attempt: &Attempt,
        interrupt: impl Future<Output = &'static str>,
    ) -> Outcome {
        let to = mask_phone(&job.phone_number);
        let delivery = job
            .delivery_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        info!(job_id = %attempt.job_id, to = %to, attempt = attempt.number, max_attempts = attempt.max,
              delivery_id = %delivery, "sending SMS");
        let answer = tokio::select! {
            answer = self.check_and_send(job, attempt) => answer,
            reason = interrupt => {
                warn!(job_id = %attempt.job_id, reason, "SMS job interrupted before Telnyx answered");
                return Outcome::failed(reason);
            }
        };
        match answer {
            Err(outcome) => outcome,
            Ok((Ok(accepted), tracked)) => {
                info!(job_id = %attempt.job_id, to = %to, message_id = %accepted.message_id, status = %accepted.status,
                      "Telnyx accepted the SMS");
                if let Some(tracked) = tracked {
                    self.record_sent(tracked.id, &accepted.message_id, attempt)
                        .await;
                }
                Outcome::completed(json!({ "success": true, "messageId": accepted.message_id }))
            }
            Ok((Err(e), tracked)) => self.failed(e, tracked, attempt, &to).await,
        }
    }

    /// The claim, the idempotency check and the HTTP call: everything that may be abandoned safely. Returns
    /// the provider's answer with the claimed delivery row (if tracked), or an outcome that ends the job early.
    async fn check_and_send(
        &self,
        job: &SmsJob,
        attempt: &Attempt,
    ) -> Result<(Sent, Option<Tracked>), Outcome> {
        let mut tracked = None;
        if let (Some(id), Some(repo)) = (job.delivery_id, &self.deliveries) {
            match repo.claim(id).await {
                Err(e) => {
                    warn!(job_id = %attempt.job_id, delivery_id = %id, error = %e, "delivery database unavailable");
                    return Err(Outcome::failed(format!(
                        "delivery tracking database unavailable: {e}"
                    )));
                }
                Ok(Claim::Busy { age }) => {
                    info!(job_id = %attempt.job_id, delivery_id = %id, claimed_ms_ago = age.as_millis() as u64,
                          retry_in_ms = BUSY_RETRY_DELAY.as_millis() as u64,
                          "delivery is being sent by another run; not sending, retrying later");
                    return Err(Outcome::retry_job_later(
                        BUSY_RETRY_DELAY.as_millis() as u64,
                        format!("delivery {id} is being sent by another run"),
                    ));
                }
                Ok(Claim::AlreadySent(state)) => {
                    let message_id = state.external_id.unwrap_or_default();
                    info!(job_id = %attempt.job_id, delivery_id = %id, status = %state.status, message_id = %message_id,
                          "delivery already sent; not sending again");
                    return Err(Outcome::completed(
                        json!({ "success": true, "messageId": message_id, "alreadySent": true }),
                    ));
                }
                Ok(Claim::Missing) => {
                    // An alert SMS matters more than its bookkeeping: send, but say loudly that it is untracked.
                    warn!(job_id = %attempt.job_id, delivery_id = %id,
                          "delivery row not found; sending without delivery tracking or duplicate protection");
                }
                Ok(Claim::Claimed { stamp, abandoned }) => {
                    if let Some(age) = abandoned {
                        warn!(job_id = %attempt.job_id, delivery_id = %id, event = EVENT_POSSIBLY_SENT,
                              earlier_attempt_started_s_ago = age.as_secs(), attempt = attempt.number,
                              "an earlier attempt of this delivery started sending and never recorded an outcome: \
                               the SMS may already have gone out; sending again (alarms are delivered at least once)");
                    }
                    tracked = Some(Tracked { id, stamp });
                }
            }
        }

        let timeout = match attempt.time_left {
            None => self.telnyx.request_timeout(),
            Some(left) => match left.checked_sub(DEADLINE_MARGIN) {
                Some(usable) if !usable.is_zero() => usable.min(self.telnyx.request_timeout()),
                _ => {
                    self.release(tracked, attempt).await;
                    return Err(Outcome::failed(
                        "job deadline reached before the SMS could be sent",
                    ));
                }
            },
        };

        let answer = self
            .telnyx
            .send(&job.phone_number, &job.message, timeout)
            .await;
        Ok((answer, tracked))
    }

    /// Ends a claim this run took but did not use.
    async fn release(&self, tracked: Option<Tracked>, attempt: &Attempt) {
        if let (Some(t), Some(repo)) = (tracked, &self.deliveries) {
            if let Err(e) = repo.release(t.id, t.stamp).await {
                warn!(job_id = %attempt.job_id, delivery_id = %t.id, error = %e,
                      "could not end the claim on the delivery; it expires by itself");
            }
        }
    }

    /// The SMS went out: the row must say so, or a later retry of this job would send it again. Retried a
    /// few times; if the database still refuses, the job completes anyway (the provider accepted it) and the
    /// error is logged with the message id so the row can be fixed by hand.
    async fn record_sent(&self, id: Uuid, message_id: &str, attempt: &Attempt) {
        let Some(repo) = &self.deliveries else { return };
        let tries = async {
            let mut last_error = String::new();
            for pause in [
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_secs(1),
            ] {
                tokio::time::sleep(pause).await;
                match repo.mark_sent(id, message_id).await {
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
        tracked: Option<Tracked>,
        attempt: &Attempt,
        to: &str,
    ) -> Outcome {
        let reason = e.describe();
        let repo = self.deliveries.as_ref();
        match e.class() {
            ErrorClass::Permanent => {
                warn!(job_id = %attempt.job_id, to = %to, reason = %reason, "Telnyx rejected the SMS permanently");
                if let (Some(t), Some(repo)) = (tracked, repo) {
                    if let Err(db) = repo.mark_failed(t.id, &reason).await {
                        error!(job_id = %attempt.job_id, delivery_id = %t.id, error = %db,
                               "could not mark the delivery failed");
                    }
                }
                Outcome::unrecoverable(format!("Permanent SMS failure: {reason}"))
            }
            ErrorClass::RateLimited => {
                self.release(tracked, attempt).await;
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
                self.release(tracked, attempt).await;
                let delay = self.auth_retry_delay;
                // Logged at error level on every occurrence (and counted): nothing is sent until an operator
                // fixes the key; the host shows the held queue and this reason on /readyz.
                error!(job_id = %attempt.job_id, reason = %reason, event = EVENT_CREDENTIALS_REJECTED,
                       hold_ms = delay.as_millis() as u64,
                       "Telnyx rejected our credentials; holding the queue: check TELNYX_API_KEY and the messaging profile");
                Outcome::retry_queue_later(
                    delay.as_millis() as u64,
                    format!(
                        "Telnyx rejected the API credentials ({reason}); retrying in {} ms",
                        delay.as_millis()
                    ),
                )
            }
            ErrorClass::Transient => {
                let unknown = e.outcome_unknown();
                warn!(job_id = %attempt.job_id, to = %to, attempt = attempt.number, max_attempts = attempt.max,
                      last_attempt = attempt.is_last, outcome_unknown = unknown, reason = %reason,
                      "SMS send failed; retryable");
                if let (Some(t), Some(repo)) = (tracked, repo) {
                    let attempts = i32::try_from(attempt.number).unwrap_or(i32::MAX);
                    let written = if attempt.is_last {
                        repo.mark_exhausted(t.id, attempts, &reason).await
                    } else {
                        // Telnyx answered: nothing went out, the claim ends. No answer: it may have; the
                        // claim stays until it expires, and the re-run after it counts as possibly sent.
                        repo.record_retry(t.id, attempts, Some(t.stamp), !unknown)
                            .await
                    };
                    if let Err(db) = written {
                        error!(job_id = %attempt.job_id, delivery_id = %t.id, error = %db,
                               "could not record the failed attempt on the delivery");
                    }
                }
                Outcome::failed(format!("SMS send failed: {reason}"))
            }
        }
    }
}
