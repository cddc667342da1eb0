//! Delivery tracking in FrostGuard's `notification_deliveries` table.
//!
//! The API inserts the row as `pending` and puts its id in the job (`deliveryId`); the worker records what
//! happened. The row is also our idempotency record: a retry (or a stalled job run again) after Telnyx
//! accepted the message finds `sent`/`delivered` and must not text the recipient a second time.
//!
//! Reading the row is not enough when two runs of the same delivery overlap (a job whose lock was lost while
//! Telnyx was slow is recovered as stalled and started elsewhere while the first run is still sending): both
//! would read `pending` and both would send. So a run first takes a PostgreSQL *session* advisory lock keyed
//! by the delivery ([`lock_key`]) and holds it, on one pooled connection ([`DeliveryLock`]), across the
//! check, the send and the row update; FrostGuard's schema stays untouched. A run that finds the lock taken
//! does not send. If that connection dies, PostgreSQL drops the lock with the session; a connection is never
//! handed back to the pool while it may still hold one (it is closed instead).
//!
//! A small deadpool pool on the plugin's private runtime; every call is bounded by [`OP_TIMEOUT`] so a
//! database that hangs becomes a retryable job failure, never a stuck job. Writes never downgrade a row that
//! already reached `sent`/`delivered` (e.g. set by the delivery-receipt webhook).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// Upper bound for getting a connection plus running one statement.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a new database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on releasing a delivery's lock; past it the connection is closed instead, which releases the lock
/// just as surely.
pub const UNLOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// A tracked job holds one connection (the one with its delivery's lock) from the idempotency check until
/// its row is updated, i.e. across the Telnyx call. This leaves room for three times the default concurrency
/// of 5 plus rejections; with `QUEUE_SMS_NOTIFICATIONS_CONCURRENCY` above that, jobs wait for a connection
/// (at most [`OP_TIMEOUT`], then a retryable failure).
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

    /// Takes the delivery's advisory lock and, holding it, reads the row. [`Claim::Busy`] when another run
    /// (in this process or another worker) holds the lock: it is sending this delivery right now.
    pub async fn claim(&self, id: Uuid) -> Result<Claim, String> {
        bounded(async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            // Guarded before the lock is asked for: if this future is dropped (timeout, cancellation) while
            // PostgreSQL may already have granted it, the guard closes the connection instead of pooling it.
            let mut lock = DeliveryLock {
                conn: Some(conn),
                key: lock_key(id),
            };
            let client = lock.client().ok_or("database connection closed")?;
            let granted: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&lock.key])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if !granted {
                // Nothing of ours is held on this session: it may go back to the pool as it is.
                drop(lock.conn.take());
                return Ok(Claim::Busy);
            }
            let state = load_on(client, id).await?;
            Ok(Claim::Held(Box::new(lock), state))
        })
        .await
    }

    /// Reads the row, without any lock; `None` when no such row exists.
    pub async fn load(&self, id: Uuid) -> Result<Option<DeliveryState>, String> {
        bounded(async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            load_on(&client, id).await
        })
        .await
    }

    /// Telnyx accepted the message.
    pub async fn mark_sent(
        &self,
        id: Uuid,
        external_id: &str,
        lock: Option<&DeliveryLock>,
    ) -> Result<(), String> {
        self.execute(
            lock,
            "UPDATE notification_deliveries SET status = 'sent', external_id = $2, sent_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            &[&id, &external_id],
        )
        .await
    }

    /// The message can never be sent: invalid job data or a permanent provider error.
    pub async fn mark_failed(
        &self,
        id: Uuid,
        reason: &str,
        lock: Option<&DeliveryLock>,
    ) -> Result<(), String> {
        self.execute(
            lock,
            "UPDATE notification_deliveries SET status = 'failed', error_message = $2, failed_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            &[&id, &reason],
        )
        .await
    }

    /// A retryable failure: `retry_count` = attempts made so far, including this one.
    pub async fn record_retry(
        &self,
        id: Uuid,
        attempts: i32,
        lock: Option<&DeliveryLock>,
    ) -> Result<(), String> {
        self.execute(
            lock,
            "UPDATE notification_deliveries SET retry_count = $2, last_retry_at = now() \
             WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            &[&id, &attempts],
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
        lock: Option<&DeliveryLock>,
    ) -> Result<(), String> {
        self.execute(
            lock,
            "UPDATE notification_deliveries SET status = 'failed', error_message = $3, failed_at = now(), \
             retry_count = $2, last_retry_at = now() WHERE id = $1 AND status NOT IN ('sent', 'delivered')",
            &[&id, &attempts, &reason],
        )
        .await
    }

    /// Runs a write on the locked connection when there is one still alive (taking a second pooled
    /// connection while holding one could exhaust the pool under load), else on a pooled connection.
    async fn execute(
        &self,
        lock: Option<&DeliveryLock>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), String> {
        bounded(async {
            let written = match lock.and_then(DeliveryLock::client) {
                Some(client) => client.execute(sql, params).await,
                None => {
                    let client = self.pool.get().await.map_err(|e| e.to_string())?;
                    client.execute(sql, params).await
                }
            };
            written.map(drop).map_err(|e| e.to_string())
        })
        .await
    }
}

/// The result of [`DeliveryRepo::claim`].
pub enum Claim {
    /// This run holds the delivery's lock; the row as read under it (`None`: no such row). Boxed: a pooled
    /// connection is large next to `Busy`.
    Held(Box<DeliveryLock>, Option<DeliveryState>),
    /// Another run holds the lock.
    Busy,
}

/// The advisory-lock key of a delivery: the UUID's two 64-bit halves XOR-ed, read as a signed integer
/// (`pg_try_advisory_lock(bigint)`). Every bit of the id contributes, so the fixed version and variant bits
/// of a v4 UUID cost nothing and random ids spread over the whole key space. Distinct ids can share a key
/// (as can an unrelated advisory lock of FrostGuard's that happens to use the same number); that only makes
/// one run wait for the other (it is retried later), it never lets a delivery be skipped.
pub fn lock_key(id: Uuid) -> i64 {
    let bits = id.as_u128();
    ((bits >> 64) as u64 ^ bits as u64) as i64
}

/// A delivery's advisory lock, and the pooled connection whose session holds it.
///
/// Release it with [`DeliveryLock::release`]. Dropped without that (an error path, a timeout, a cancelled
/// job), it cannot unlock (that needs an `await`), so it takes the connection out of the pool and closes it:
/// PostgreSQL ends the session and with it the lock. Either way no connection returns to the pool locked.
pub struct DeliveryLock {
    /// `None` once handed back or closed.
    conn: Option<Object>,
    key: i64,
}

impl DeliveryLock {
    /// The locked session's client, unless its connection has died (the lock died with it).
    fn client(&self) -> Option<&Client> {
        self.conn
            .as_deref()
            .map(|wrapper| &**wrapper)
            .filter(|client| !client.is_closed())
    }

    /// Unlocks and hands the connection back to the pool. If the unlock fails, times out or reports that the
    /// session did not hold the lock, the connection is closed instead (the error says why).
    pub async fn release(mut self) -> Result<(), String> {
        let Some(client) = self.client() else {
            return Err("the locked connection was already closed".to_owned());
        };
        let unlocked = tokio::time::timeout(
            UNLOCK_TIMEOUT,
            client.query_one("SELECT pg_advisory_unlock($1)", &[&self.key]),
        )
        .await;
        match unlocked {
            Ok(Ok(row)) if row.get::<_, bool>(0) => {
                drop(self.conn.take());
                Ok(())
            }
            Ok(Ok(_)) => Err("the session did not hold the lock".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer to the unlock within {} s",
                UNLOCK_TIMEOUT.as_secs()
            )),
        }
        // Any error: `self` drops here with the connection still in it and closes it.
    }
}

impl Drop for DeliveryLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Detached from the pool (which then opens a fresh one when needed) and dropped: the client goes
            // and its connection task is aborted, closing the socket.
            drop(Object::take(conn));
        }
    }
}

async fn load_on(client: &Client, id: Uuid) -> Result<Option<DeliveryState>, String> {
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
    use super::lock_key;
    use uuid::Uuid;

    fn key(id: &str) -> i64 {
        lock_key(Uuid::parse_str(id).unwrap())
    }

    #[test]
    fn the_lock_key_folds_the_two_halves_of_the_uuid() {
        assert_eq!(key("00000000-0000-0000-0000-000000000000"), 0);
        assert_eq!(key("00000000-0000-0001-0000-000000000002"), 3);
        assert_eq!(key("12345678-9abc-def0-1234-56789abcdef0"), 0);
        assert_eq!(
            key("0000000f-0000-0000-0000-0000000000f0"),
            0x0000_000f_0000_00f0
        );
        // The top bit of either half makes the key negative: the whole bigint range is used.
        assert_eq!(key("80000000-0000-0000-0000-000000000000"), i64::MIN);
        assert_eq!(key("00000000-0000-0000-ffff-ffffffffffff"), -1);
    }

    #[test]
    fn the_lock_key_is_stable_and_uses_every_bit_of_the_id() {
        let id = "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b";
        // Stable: another worker process derives the same key for the same delivery.
        assert_eq!(key(id), key(id));
        assert_eq!(
            key(id),
            0x7a1c_3f2e_5b8d_4e6f_u64 as i64 ^ 0x9a0b_1c2d_3e4f_5a6b_u64 as i64
        );
        // Flipping any single bit of the id changes the key.
        let base = Uuid::parse_str(id).unwrap().as_u128();
        for bit in 0..128 {
            let other = Uuid::from_u128(base ^ (1u128 << bit));
            assert_ne!(lock_key(other), key(id), "bit {bit}");
        }
    }
}
