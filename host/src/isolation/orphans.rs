//! Settling what a dead in-process run left behind: the jobs that were inside plugin code when it died.
//!
//! At start the host reads every crash journal in `STATE_DIR` that no live run holds and was written for the
//! same Redis and prefix ([`super::journal`]). The job whose thread crashed (named by the crash note) has
//! its crash count incremented on its job hash (`fgCrashes`); once the count reaches `JOB_CRASH_LIMIT` the
//! job gets BullMQ's deferred failure (`defa`) with the reason `crashed the worker (signal …)`, so the next
//! worker to fetch it — this host, a replica or a Node worker — fails it for good instead of running it
//! again. Every other job that was running is only logged: stalled-job recovery puts it back as before.
//! A journal is removed once settled; one that cannot be settled (Redis unreachable) stays for the next
//! start.

use std::path::Path;

use bullmq::QueueKeys;

use super::cause::{self, Ending};
use super::journal::{self, DeadRun};
use crate::runtime::redis_admin::AdminRedis;

/// Settles every dead run's journal in `dir`. Never fails: problems are logged.
pub async fn settle(
    admin: &AdminRedis,
    prefix: &str,
    dir: &Path,
    identity: &str,
    own: &Path,
    limit: u32,
) {
    let runs = match journal::dead_runs(dir, identity, own) {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(state_dir = %dir.display(), error = %e, "cannot read the crash journals of earlier runs");
            return;
        }
    };
    for (run, file) in runs {
        if settle_run(admin, prefix, &run, limit).await {
            journal::remove(&run, file);
        }
    }
}

/// What to do about one job of a dead run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its thread crashed the run: count the crash (failing the job for good at the limit).
    Blamed(Ending),
    /// It was only running alongside: stalled-job recovery handles it.
    Interrupted,
}

/// The verdict for the job in `slot` given the run's crash note.
pub fn verdict(note: Option<(i32, u32)>, slot: u32) -> Verdict {
    match note {
        Some((signal, crashed)) if crashed == slot => Verdict::Blamed(Ending::from_note(signal)),
        _ => Verdict::Interrupted,
    }
}

async fn settle_run(admin: &AdminRedis, prefix: &str, run: &DeadRun, limit: u32) -> bool {
    if run.running.is_empty() {
        return true;
    }
    let mut settled = true;
    for job in &run.running {
        match verdict(run.note, job.slot) {
            Verdict::Interrupted => tracing::warn!(
                queue = %job.queue, job_id = %job.job_id, plugin = %job.plugin,
                "job was running when an earlier run of the worker died; stalled-job recovery will put it back"
            ),
            Verdict::Blamed(ending) => {
                crate::runtime::metrics::plugin_crash(&job.plugin);
                let keys = QueueKeys::new(&job.queue, Some(prefix));
                let poison = cause::poison_reason(&job.plugin, ending, u64::from(limit));
                match admin
                    .count_crash(&keys, &job.job_id, limit, &poison, true)
                    .await
                {
                    Ok(None) => tracing::warn!(
                        queue = %job.queue, job_id = %job.job_id, plugin = %job.plugin, cause = %ending,
                        "job crashed an earlier run of the worker; it no longer exists"
                    ),
                    Ok(Some(crashes)) if crashes >= u64::from(limit) => tracing::error!(
                        queue = %job.queue, job_id = %job.job_id, plugin = %job.plugin, cause = %ending,
                        crashes, "job crashed the worker {crashes} times; it fails for good when next fetched: {poison}"
                    ),
                    Ok(Some(crashes)) => tracing::error!(
                        queue = %job.queue, job_id = %job.job_id, plugin = %job.plugin, cause = %ending,
                        crashes, limit,
                        "job crashed an earlier run of the worker; stalled-job recovery will run it again"
                    ),
                    Err(e) => {
                        tracing::warn!(
                            queue = %job.queue, job_id = %job.job_id, error = %format!("{e:#}"),
                            "cannot record the crash of the job yet; kept for the next start"
                        );
                        settled = false;
                    }
                }
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_job_on_the_crashing_thread_is_blamed() {
        let table = [
            (Some((11, 2)), 2, Verdict::Blamed(Ending::Signal(11))),
            (Some((11, 2)), 1, Verdict::Interrupted),
            (Some((0, 4)), 4, Verdict::Blamed(Ending::ExitCalled)),
            // No note: killed from outside (SIGKILL, out of memory); nobody's fault that a job can own.
            (None, 1, Verdict::Interrupted),
        ];
        for (note, slot, want) in table {
            assert_eq!(verdict(note, slot), want, "{note:?} {slot}");
        }
    }
}
