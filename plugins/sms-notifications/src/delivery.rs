//! Delivery tracking in FrostGuard's `notification_deliveries` table.
//!
//! The API inserts the row as `pending` and puts its id in the job (`deliveryId`); the worker records what
//! happened. The row is also our idempotency record: a retry (or a stalled job run again) after Telnyx
//! accepted the message finds `sent`/`delivered` and must not text the recipient a second time.
//!
//! A small deadpool pool on the plugin's private runtime; every call is bounded by [`OP_TIMEOUT`] so a
//! database that hangs becomes a retryable job failure, never a stuck job. Writes never downgrade a row that
//! already reached `sent`/`delivered` (e.g. set by the delivery-receipt webhook).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Upper bound for getting a connection plus running one statement.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a new database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Enough for the default concurrency of 5 plus a little headroom; each job holds a connection only for
/// the duration of one statement, never across the HTTP call.
const POOL_SIZE: usize = 8;

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

pub struct DeliveryRepo {
    pool: Pool,
}

impl DeliveryRepo {
    /// Builds the pool without connecting: a database that is down at start must not disable the plugin
    /// (sending still works; affected jobs fail retryably until it is back).
    pub fn new(database_url: &str) -> Result<DeliveryRepo, String> {
        let mut config: tokio_postgres::Config = database_url
            .parse()
            .map_err(|e| format!("DATABASE_URL is not a valid PostgreSQL URL ({e})"))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "DATABASE_URL asks for sslmode=require, but this plugin connects without TLS"
                    .to_owned(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("frostguard-worker-sms");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
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
        Ok(DeliveryRepo { pool })
    }

    /// Reads the row; `None` when no such row exists.
    pub async fn load(&self, id: Uuid) -> Result<Option<DeliveryState>, String> {
        bounded(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let row = client
                .query_opt(
                    "SELECT status::text, external_id FROM notification_deliveries WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.map(|r| DeliveryState {
                status: r.get(0),
                external_id: r.get(1),
            }))
        })
        .await
    }

    /// Telnyx accepted the message.
    pub async fn mark_sent(&self, id: Uuid, external_id: &str) -> Result<(), String> {
        self.execute(
            "UPDATE notification_deliveries SET status = 'sent', external_id = $2, sent_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            id,
            &external_id,
        )
        .await
    }

    /// The message can never be sent: invalid job data or a permanent provider error.
    pub async fn mark_failed(&self, id: Uuid, reason: &str) -> Result<(), String> {
        self.execute(
            "UPDATE notification_deliveries SET status = 'failed', error_message = $2, failed_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            id,
            &reason,
        )
        .await
    }

    /// A retryable failure: `retry_count` = attempts made so far, including this one.
    pub async fn record_retry(&self, id: Uuid, attempts: i32) -> Result<(), String> {
        self.execute(
            "UPDATE notification_deliveries SET retry_count = $2, last_retry_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            id,
            &attempts,
        )
        .await
    }

    /// The last attempt failed retryably: nothing will try again, so the row is final (the Node original
    /// left it `pending` forever).
    pub async fn mark_exhausted(
        &self,
        id: Uuid,
        attempts: i32,
        reason: &str,
    ) -> Result<(), String> {
        bounded(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(
                    "UPDATE notification_deliveries SET status = 'failed', error_message = $3, failed_at = now(), \
                     retry_count = $2, last_retry_at = now() WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
                    &[&id, &attempts, &reason],
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn execute(
        &self,
        sql: &str,
        id: Uuid,
        value: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<(), String> {
        bounded(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(sql, &[&id, value])
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
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
