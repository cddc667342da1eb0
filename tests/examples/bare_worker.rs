//! The benchmark's bare contender (tests/benches/throughput): a plain `bullmq-official` Worker with no host
//! around it, run as a process of its own so that its CPU time and peak RSS are measured exactly like the
//! Node worker's and the host's. It does the test plugin's work: a `sleep` job waits `data.ms` on a tokio
//! timer (as an HTTP call to a provider would), any other job returns `data.result`. It runs on one async
//! thread (a current-thread runtime), as the host does, so that the two differ only by what the host adds:
//! with no blocking calls to make, one thread is also the cheapest way to drive the library per job. It
//! is built with the host's allocator (mimalloc) and the host's copy of the library (the workspace's
//! patched bullmq-official) for the same reason.
//!
//! Usage: `bare-worker <redisUrl> <queue> <concurrency>`; prints `ready` once started, stops on SIGTERM.

use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: bare-worker <redisUrl> <queue> <concurrency>");
    };
    let mut options = bullmq::WorkerOptions::default();
    options.connection.url = url.clone();
    options.concurrency = concurrency.parse().context("concurrency")?;
    let worker = bullmq::Worker::with_options(
        queue,
        |job: bullmq::Job, _token| async move {
            if job.name() == "sleep" {
                let ms = job.data()["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return Ok(serde_json::json!({ "slept": ms }));
            }
            Ok(job.data()["result"].clone())
        },
        options,
    )
    .await
    .context("start the worker")?;
    println!("ready");
    let mut terminate = signal(SignalKind::terminate())?;
    // The worker's events are drained (and dropped) so that its event channel never fills up.
    tokio::select! {
        _ = terminate.recv() => {}
        _ = async { while worker.next_event().await.is_some() {} } => {}
    }
    worker.close(5_000).await.context("close the worker")?;
    Ok(())
}
