//! The benchmark's floor (`raw` in tests/benches/throughput): the leanest BullMQ worker found, with no
//! library around it, making the Redis calls a Node BullMQ `Worker` makes per job — BullMQ's own
//! `moveToActive` script (Node BullMQ 6.7's text, `SCRIPT LOAD` then `EVALSHA`) to fetch, `moveToFinished`
//! with fetch-next to complete a job and take the next in one round trip, and a `BZPOPMIN` on the queue's
//! marker while the queue is empty — so that producers, QueueEvents and Queue getters see what a Node worker
//! leaves (the completed set, `returnvalue`, `active`/`completed`/`drained` events). It does the test
//! plugin's work, like the bare worker: a `sleep` job waits `data.ms`, any other job returns `data.result`.
//! It never fails a job.
//!
//! Left out, on purpose: lock renewal and the stalled-job check. A job's lock lasts 30 s (Node's default)
//! and the drains this worker runs last seconds; a Node worker renews locks every 15 s and checks for
//! stalled jobs every 30 s, neither of which is a per-job cost. So is reconnection: an error ends the worker.
//!
//! Driving style, the cheapest per job for each case:
//! * concurrency 1: a plain blocking loop on one connection (`redis::Connection`), no runtime. A job costs
//!   one `write` and one `read` of the socket; there is nothing else to wait for, so no `epoll` and no task
//!   wake-ups.
//! * concurrency above 1: one current-thread tokio runtime, one slot task per unit of concurrency on a
//!   `LocalSet`, all sending over one multiplexed connection (`redis::aio::MultiplexedConnection`), which
//!   pipelines the slots' scripts: `concurrency` of them in flight, written together and read together.
//!   `BZPOPMIN` has a second connection, as Node's blocking connection, so that it never holds up the
//!   pipeline. A slot with no job takes the fetch lock: one slot blocks on the marker, the others queue
//!   behind it, as Node's fetch loop lets only one wait happen at a time.
//!
//! Usage: `raw-worker <redisUrl> <queue> <concurrency>`; prints `ready` once started, stops on SIGTERM
//! (jobs in hand are finished first, without fetching more). `RAW_WORKER_DRIVER=async` runs concurrency 1
//! on the runtime too (to compare the two); `RAW_WORKER_SCRIPTS` names another directory of Node BullMQ's
//! compiled scripts.

mod blocking;
mod calls;
mod slots;

use anyhow::Context;
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo};

/// The host's allocator, as the bare contender has it, so that the plugin boundary compares like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: raw-worker <redisUrl> <queue> <concurrency>");
    };
    let concurrency: usize = concurrency.parse().context("concurrency")?;
    anyhow::ensure!(concurrency > 0, "concurrency must be at least 1");
    // No Nagle delay on the scripts' small writes (ioredis sets the same).
    let info = url
        .as_str()
        .into_connection_info()
        .context("redis url")?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = Client::open(info)?;
    let force_async = std::env::var("RAW_WORKER_DRIVER").is_ok_and(|d| d == "async");
    if concurrency == 1 && !force_async {
        blocking::run(&client, queue)
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(slots::run(client, queue.clone(), concurrency))
    }
}
