//! Reads a digest's inputs from FrostGuard's PostgreSQL: the profile, the organization's name and the
//! alerts of the window (alerts → units → areas → sites). Read-only: a digest writes nothing.
//!
//! A small deadpool pool on the plugin's private runtime; every call is bounded by [`OP_TIMEOUT`], so a
//! database that hangs becomes a retryable job failure, never a stuck job.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::digest::{AlertRow, Profile, MAX_ALERTS};

/// Upper bound for getting a connection plus running one statement.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each job runs three short reads one after the other; twice the default concurrency of 2 is plenty.
const POOL_SIZE: usize = 4;

/// A user may have a profile in more than one organization: the one in the job's organization wins.
const PROFILE_SQL: &str =
    "SELECT organization_id, email, full_name, email_enabled, digest_daily, digest_weekly, \
     digest_site_ids, timezone FROM profiles WHERE user_id = $1 \
     ORDER BY (organization_id = $2) DESC, id LIMIT 1";

const ORGANIZATION_SQL: &str = "SELECT name FROM organizations WHERE id = $1";

/// Newest first, at most [`MAX_ALERTS`]; `count(*) OVER ()` is evaluated before the LIMIT, so it counts
/// every alert of the window. `$4` NULL means every site.
const ALERTS_SQL: &str =
    "SELECT a.id, a.severity::text, a.status::text, a.message, a.triggered_at, \
            u.id, u.name, s.id, s.name, count(*) OVER () \
     FROM alerts a \
     JOIN units u ON u.id = a.unit_id \
     JOIN areas ar ON ar.id = u.area_id \
     JOIN sites s ON s.id = ar.site_id \
     WHERE s.organization_id = $1 \
       AND a.triggered_at >= $2 AND a.triggered_at <= $3 \
       AND ($4::uuid[] IS NULL OR s.id = ANY($4)) \
     ORDER BY a.triggered_at DESC, a.id \
     LIMIT $5";

pub struct Store {
    pool: Pool,
}

impl Store {
    /// Builds the pool without connecting: a database that is down at start must not disable the plugin
    /// (jobs retry until it is back).
    pub fn new(database_url: &str) -> Result<Store, String> {
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
            config.application_name("frostguard-worker-email");
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
        Ok(Store { pool })
    }

    /// The profile of auth user `user_id` (`profiles.user_id`), preferring the one in `organization_id`.
    pub async fn profile(
        &self,
        user_id: Uuid,
        organization_id: Uuid,
    ) -> Result<Option<Profile>, String> {
        bounded(async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let row = conn
                .query_opt(PROFILE_SQL, &[&user_id, &organization_id])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.map(|r| Profile {
                organization_id: r.get(0),
                email: r.get(1),
                full_name: r.get(2),
                email_enabled: r.get(3),
                digest_daily: r.get(4),
                digest_weekly: r.get(5),
                digest_site_ids: r.get(6),
                timezone: r.get(7),
            }))
        })
        .await
    }

    pub async fn organization_name(&self, id: Uuid) -> Result<Option<String>, String> {
        bounded(async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let row = conn
                .query_opt(ORGANIZATION_SQL, &[&id])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// The newest alerts of the window `[from, to]` (both ends included) and how many the window holds.
    pub async fn alerts(
        &self,
        organization_id: Uuid,
        sites: Option<&[Uuid]>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<AlertRow>, usize), String> {
        bounded(async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let sites: Option<Vec<Uuid>> = sites.map(<[Uuid]>::to_vec);
            let rows = conn
                .query(
                    ALERTS_SQL,
                    &[&organization_id, &from, &to, &sites, &MAX_ALERTS],
                )
                .await
                .map_err(|e| e.to_string())?;
            let in_window = rows.first().map(|r| r.get::<_, i64>(9)).unwrap_or(0);
            let alerts = rows
                .into_iter()
                .map(|r| AlertRow {
                    id: r.get(0),
                    severity: r.get(1),
                    status: r.get(2),
                    message: r.get(3),
                    triggered_at: r.get(4),
                    unit_id: r.get(5),
                    unit_name: r.get(6),
                    site_id: r.get(7),
                    site_name: r.get(8),
                })
                .collect();
            Ok((alerts, usize::try_from(in_window).unwrap_or(0)))
        })
        .await
    }
}

async fn bounded<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(OP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", OP_TIMEOUT.as_secs())))
}
