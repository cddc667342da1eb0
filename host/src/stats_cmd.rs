//! `frostguard-worker stats [--json] [QUEUE…]`: what an operator asks first about a queue — how many jobs
//! are in each state (the numbers Node's `getJobCounts()` gives, so they match Bull Board), whether it is
//! paused, how many workers are connected and how long the oldest waiting job has waited.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bullmq::redis_connection::RedisConnection;
use bullmq::QueueKeys;
use serde::Serialize;

use crate::cli::StatsArgs;
use crate::config::RedisSettings;
use crate::output::out;
use crate::queue_stats::{self, JobCounts, Reader};

/// Bound on connecting and on the whole read, so a wrong address fails promptly.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One queue's line of the report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueReport {
    queue: String,
    counts: JobCounts,
    paused: bool,
    /// `None` when Redis refuses `CLIENT LIST` (some managed services do).
    workers: Option<usize>,
    /// `None` when no job waits.
    oldest_waiting_ms: Option<u64>,
    /// False when Redis holds no key of this queue under the prefix (a typo, or another prefix).
    exists: bool,
}

/// The whole report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    prefix: String,
    queues: Vec<QueueReport>,
}

/// Runs `stats`.
pub fn main(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let settings = RedisSettings::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the async runtime")?;
    let report = rt.block_on(async {
        tokio::time::timeout(TIMEOUT, collect(&settings, &args.queues))
            .await
            .with_context(|| {
                format!(
                    "Redis at {} did not answer within {} s",
                    settings.target.redacted(),
                    TIMEOUT.as_secs()
                )
            })?
    })?;
    for q in report.queues.iter().filter(|q| !q.exists) {
        tracing::warn!(queue = %q.queue, prefix = %report.prefix, "no such queue under this prefix");
    }
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn collect(settings: &RedisSettings, queues: &[String]) -> anyhow::Result<Report> {
    let connection = RedisConnection::new_managed_only(&settings.target.connection_options())
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.target.redacted()))?;
    let mut conn = connection.connection();
    let names = if queues.is_empty() {
        queue_stats::discover_queues(&conn, &settings.prefix).await?
    } else {
        queues.to_vec()
    };
    if settings.target.is_cluster() {
        crate::config::cluster::require_one_slot(
            &settings.prefix,
            names.iter().map(String::as_str),
        )?;
    }
    let client_lists = match crate::redis_nodes::client_lists(&conn).await {
        Ok(list) => Some(list),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list clients; workers are not counted");
            None
        }
    };
    let reader = Reader::default();
    let now = crate::clock::now_ms();
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        let keys = QueueKeys::new(&name, Some(&settings.prefix));
        let snapshot = reader.read(&mut conn, &keys).await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.meta())
            .arg(keys.id())
            .query_async::<u64>(&mut conn)
            .await
            .context("EXISTS")?
            > 0;
        reports.push(QueueReport {
            workers: client_lists
                .as_deref()
                .map(|lists| queue_stats::workers_in_client_lists(lists, &keys)),
            oldest_waiting_ms: snapshot
                .oldest_ready_ms
                .map(|_| snapshot.oldest_waiting_ms(now)),
            counts: snapshot.counts,
            paused: snapshot.paused,
            exists,
            queue: name,
        });
    }
    Ok(Report {
        prefix: settings.prefix.clone(),
        queues: reports,
    })
}

/// `1234` ms → `1.2s`, `95000` → `1m35s`, `7200000` → `2h0m`.
fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 60_000 => format!("{s}.{}s", (ms % 1000) / 100),
        _ if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        _ if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    let header = [
        "QUEUE",
        "WAITING",
        "PRIORITIZED",
        "DELAYED",
        "ACTIVE",
        "COMPLETED",
        "FAILED",
        "WAITING-CHILDREN",
        "PAUSED",
        "WORKERS",
        "OLDEST WAITING",
    ];
    let rows: Vec<[String; 11]> = report
        .queues
        .iter()
        .map(|q| {
            let c = &q.counts;
            [
                q.queue.clone(),
                c.waiting.to_string(),
                c.prioritized.to_string(),
                c.delayed.to_string(),
                c.active.to_string(),
                c.completed.to_string(),
                c.failed.to_string(),
                c.waiting_children.to_string(),
                if q.paused { "yes" } else { "no" }.to_owned(),
                q.workers.map_or("?".to_owned(), |w| w.to_string()),
                q.oldest_waiting_ms.map_or("-".to_owned(), human_age),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out!("{}", line(&header.map(str::to_owned)));
    for row in &rows {
        out!("{}", line(row));
    }
    if rows.is_empty() {
        out!("(no queues under prefix {})", report.prefix);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_clock() {
        let table = [
            (0, "0.0s"),
            (1_234, "1.2s"),
            (59_999, "59.9s"),
            (60_000, "1m0s"),
            (95_000, "1m35s"),
            (7_200_000, "2h0m"),
            (90_061_000, "1d1h"),
        ];
        for (ms, want) in table {
            assert_eq!(human_age(ms), want, "{ms}");
        }
    }
}
