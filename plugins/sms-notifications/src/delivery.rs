//! Delivery tracking in FrostGuard's `notification_deliveries` table, and the claim that lets one run at a
//! time send a delivery.
//!
//! The API inserts the row as `pending` and puts its id in the job (`deliveryId`); the worker records what
//! happened. The row is also the idempotency record: a retry (or a stalled job run again) after Telnyx
//! accepted the message finds `sent`/`delivered` and does not text the recipient a second time.
//!
//! Reading the row is not enough when two runs of one delivery overlap (a job whose lock was lost while
//! Telnyx was slow is recovered as stalled and started elsewhere while the first run still sends): both would
//! read `pending`. So a run first **claims** the row with one statement ([`DeliveryRepo::claim`]): it stamps
//! `sent_at` with the database's clock while the status stays `pending`, and only if no other claim is
//! younger than the claim timeout. A pending row's `sent_at` thus means "an attempt started sending then and
//! has not finished". The run's final write (sent, failed, or a retryable failure whose provider answer shows
//! nothing went out) ends the claim; an attempt whose outcome is unknown (a timeout, a connection broken after
//! the request was written, a crash) leaves it, so the next run waits until the claim is older than the claim
//! timeout — longer than any live run can hold it — and then sends again, logging and counting it as a
//! *possibly sent* re-run. FrostGuard's schema is untouched (`notification_status` keeps its four values).
//!
//! Every statement is a single auto-committed statement with typed parameters (`query_typed`: an unnamed
//! statement, no session state), so the claim holds behind PgBouncer in transaction mode exactly as on a
//! direct connection. Every call is bounded by [`OP_TIMEOUT`], so a database that hangs becomes a retryable
//! job failure, never a stuck job. Writes never downgrade a row that already reached `sent`/`delivered`
//! (e.g. set by the delivery-receipt webhook).

use std::future::Future;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use crate::pgtls;

/// Upper bound for getting a connection plus running one statement.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a new database connection (TLS handshake included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections are held only for one statement at a time; this serves well above the default concurrency.
const POOL_SIZE: usize = 16;

/// The state of a delivery row as far as sending is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    /// `pending`, `sent`, `delivered` or `failed`.
    pub status: String,
    pub external_id: Option<String>,
}

impl DeliveryState {
    /// Already handed to the provider: do not send again.
    pub fn already_sent(&self) -> bool {
        self.status == "sent" || self.status == "delivered"
    }
}

/// What a run may do with a delivery ([`DeliveryRepo::claim`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This run holds the delivery and may send. `stamp` is the claim time written to `sent_at` (the token
    /// the run's final write checks). `abandoned` is set when an earlier attempt's claim was found, older
    /// than the claim timeout, with no outcome recorded: that attempt may have sent the SMS.
    Claimed {
        stamp: SystemTime,
        abandoned: Option<Duration>,
    },
    /// The row says the message went out; nothing to send.
    AlreadySent(DeliveryState),
    /// Another run claimed the delivery `age` ago and may be sending right now.
    Busy { age: Duration },
    /// No such row.
    Missing,
}

/// The claim statement's answer for the row, before it is judged ([`judge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRow {
    pub status: String,
    pub external_id: Option<String>,
    /// The claim this statement wrote, if it could claim.
    pub claimed_at: Option<SystemTime>,
    /// Age of the claim found on the row before this statement (a pending row's `sent_at`), if any.
    pub prior_claim_age: Option<Duration>,
}

/// Decides what a claim attempt means (pure: the statement did the locking).
pub fn judge(row: Option<ClaimRow>) -> Claim {
    let Some(row) = row else {
        return Claim::Missing;
    };
    let state = DeliveryState {
        status: row.status,
        external_id: row.external_id,
    };
    if state.already_sent() {
        return Claim::AlreadySent(state);
    }
    match row.claimed_at {
        Some(stamp) => Claim::Claimed {
            stamp,
            abandoned: row.prior_claim_age,
        },
        None => Claim::Busy {
            age: row.prior_claim_age.unwrap_or_default(),
        },
    }
}

/// One statement: lock the row, claim it when it is claimable, and say what was there. `FOR UPDATE` makes a
/// second, concurrent claim wait for the first to commit and then see its stamp; the update re-checks its
/// own conditions on the newest row version as well.
const CLAIM_SQL: &str = "\
WITH cur AS (
    SELECT id, status, external_id, sent_at FROM notification_deliveries WHERE id = $1 FOR UPDATE
), claimed AS (
    UPDATE notification_deliveries AS d SET sent_at = now()
    FROM cur
    WHERE d.id = cur.id
      AND d.status IN ('pending', 'failed')
      AND (d.sent_at IS NULL OR d.sent_at <= now() - make_interval(secs => $2))
    RETURNING d.sent_at
)
SELECT cur.status::text AS status, cur.external_id,
       (SELECT sent_at FROM claimed) AS claimed_at,
       CASE WHEN cur.status IN ('pending', 'failed') AND cur.sent_at IS NOT NULL
            THEN extract(epoch FROM now() - cur.sent_at)::float8 END AS prior_claim_age_s
FROM cur";

pub struct DeliveryRepo {
    pool: Pool,
    /// A claim older than this is abandoned (see [`crate::processor::claim_timeout`]).
    claim_timeout: Duration,
}

impl DeliveryRepo {
    /// Builds the pool without connecting: a database that is down at start must not disable the plugin
    /// (sending still works; affected jobs fail retryably until it is back). `database_url` may carry libpq's
    /// `sslmode` and `sslrootcert` ([`pgtls`]).
    pub fn new(database_url: &str, claim_timeout: Duration) -> Result<DeliveryRepo, String> {
        let tls = pgtls::split_tls_params(database_url)?;
        let mut config: tokio_postgres::Config = tls
            .url
            .parse()
            .map_err(|e| format!("DATABASE_URL is not a valid PostgreSQL URL ({e})"))?;
        // A key=value string keeps the sslmode tokio-postgres read from it.
        if database_url.contains("://") {
            config.ssl_mode(tls.mode.driver_mode());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("frostguard-worker-sms");
        }
        let connector = MakeRustlsConnect::new(pgtls::client_config(&tls)?);
        let manager = Manager::from_config(
            config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| format!("cannot build the database pool: {e}"))?;
        Ok(DeliveryRepo {
            pool,
            claim_timeout,
        })
    }

    /// Claims delivery `id` for this run ([`Claim`]).
    pub async fn claim(&self, id: Uuid) -> Result<Claim, String> {
        let secs = self.claim_timeout.as_secs_f64();
        let rows = self
            .query(CLAIM_SQL, &[(&id, Type::UUID), (&secs, Type::FLOAT8)])
            .await?;
        let row = rows.first().map(|r| ClaimRow {
            status: r.get("status"),
            external_id: r.get("external_id"),
            claimed_at: r.get("claimed_at"),
            prior_claim_age: r
                .get::<_, Option<f64>>("prior_claim_age_s")
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        });
        Ok(judge(row))
    }

    /// Reads the row; `None` when no such row exists (the start-up connectivity check).
    pub async fn load(&self, id: Uuid) -> Result<Option<DeliveryState>, String> {
        let rows = self
            .query(
                "SELECT status::text, external_id FROM notification_deliveries WHERE id = $1",
                &[(&id, Type::UUID)],
            )
            .await?;
        Ok(rows.first().map(|r| DeliveryState {
            status: r.get(0),
            external_id: r.get(1),
        }))
    }

    /// Telnyx accepted the message: `sent`, its id, and `sent_at` now (which also ends the claim).
    pub async fn mark_sent(&self, id: Uuid, external_id: &str) -> Result<(), String> {
        self.query(
            "UPDATE notification_deliveries SET status = 'sent', external_id = $2, sent_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered') RETURNING id",
            &[(&id, Type::UUID), (&external_id, Type::VARCHAR)],
        )
        .await
        .map(drop)
    }

    /// The message can never be sent: invalid job data or a permanent provider error. Ends any claim.
    pub async fn mark_failed(&self, id: Uuid, reason: &str) -> Result<(), String> {
        self.query(
            "UPDATE notification_deliveries SET status = 'failed', error_message = $2, failed_at = now(), \
             sent_at = NULL WHERE id = $1 AND status NOT IN ('sent', 'delivered') RETURNING id",
            &[(&id, Type::UUID), (&reason, Type::TEXT)],
        )
        .await
        .map(drop)
    }

    /// A retryable failure: `retry_count` = attempts made so far including this one, `last_retry_at` now.
    /// With `release`, this run's claim (`stamp`) ends — Telnyx answered, so nothing went out; without, it
    /// stays, because the attempt's outcome is unknown (see the module docs).
    ///
    /// The count is bound as an `int4` and PostgreSQL converts it on assignment: deployed FrostGuard databases
    /// have `retry_count varchar(10)` (its migration to integer is not journaled), hand-migrated ones an
    /// integer; both take it.
    pub async fn record_retry(
        &self,
        id: Uuid,
        attempts: i32,
        stamp: Option<SystemTime>,
        release: bool,
    ) -> Result<(), String> {
        self.query(
            "UPDATE notification_deliveries SET retry_count = $2, last_retry_at = now(), \
             sent_at = CASE WHEN $4 AND sent_at = $3 THEN NULL ELSE sent_at END \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered') RETURNING id",
            &[
                (&id, Type::UUID),
                (&attempts, Type::INT4),
                (&stamp, Type::TIMESTAMPTZ),
                (&release, Type::BOOL),
            ],
        )
        .await
        .map(drop)
    }

    /// The last attempt failed retryably: nothing will try again, so the row is final (the Node original
    /// left it `pending` forever).
    pub async fn mark_exhausted(
        &self,
        id: Uuid,
        attempts: i32,
        reason: &str,
    ) -> Result<(), String> {
        self.query(
            "UPDATE notification_deliveries SET status = 'failed', error_message = $3, failed_at = now(), \
             retry_count = $2, last_retry_at = now(), sent_at = NULL \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered') RETURNING id",
            &[(&id, Type::UUID), (&attempts, Type::INT4), (&reason, Type::TEXT)],
        )
        .await
        .map(drop)
    }

    /// Ends this run's claim without an outcome (it stopped before sending anything).
    pub async fn release(&self, id: Uuid, stamp: SystemTime) -> Result<(), String> {
        self.query(
            "UPDATE notification_deliveries SET sent_at = NULL \
             WHERE id = $1 AND sent_at = $2 AND status IN ('pending', 'failed') RETURNING id",
            &[(&id, Type::UUID), (&stamp, Type::TIMESTAMPTZ)],
        )
        .await
        .map(drop)
    }

    /// One statement on a pooled connection, bounded by [`OP_TIMEOUT`].
    async fn query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, String> {
        bounded(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.query_typed(sql, params).await.map_err(describe)
        })
        .await
    }
}

/// The driver's error with the server's message when there is one ("db error" alone says nothing).
fn describe(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

async fn bounded<T>(op: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer from the database within {} s",
            OP_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, claimed: bool, prior_s: Option<u64>) -> Option<ClaimRow> {
        Some(ClaimRow {
            status: status.to_owned(),
            external_id: (status == "sent").then(|| "msg-1".to_owned()),
            claimed_at: claimed.then_some(SystemTime::UNIX_EPOCH),
            prior_claim_age: prior_s.map(Duration::from_secs),
        })
    }

    #[test]
    fn what_a_claim_attempt_means() {
        let stamp = SystemTime::UNIX_EPOCH;
        let secs = Duration::from_secs;
        let table: [(Option<ClaimRow>, Claim); 7] = [
            (None, Claim::Missing),
            (
                row("pending", true, None),
                Claim::Claimed {
                    stamp,
                    abandoned: None,
                },
            ),
            // An earlier attempt's claim, older than the timeout: it may have sent.
            (
                row("pending", true, Some(300)),
                Claim::Claimed {
                    stamp,
                    abandoned: Some(secs(300)),
                },
            ),
            // A re-run of a delivery marked failed may send again (an operator retried it).
            (
                row("failed", true, None),
                Claim::Claimed {
                    stamp,
                    abandoned: None,
                },
            ),
            (row("pending", false, Some(2)), Claim::Busy { age: secs(2) }),
            (
                row("sent", false, None),
                Claim::AlreadySent(DeliveryState {
                    status: "sent".into(),
                    external_id: Some("msg-1".into()),
                }),
            ),
            (
                row("delivered", false, None),
                Claim::AlreadySent(DeliveryState {
                    status: "delivered".into(),
                    external_id: None,
                }),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(judge(input.clone()), expected, "{input:?}");
        }
    }
}
