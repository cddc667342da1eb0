//! The raw worker above concurrency 1: `concurrency` slot tasks on one thread (a current-thread runtime and a
//! `LocalSet`, so the shared state needs no locks between threads), each holding at most one job. A slot
//! processes its job, completes it with `moveToFinished` (fetch-next) and goes on with the job that came
//! back; when none came, it fetches under the fetch lock as Node's fetch loop does: `moveToActive`, and once
//! the queue is drained `BZPOPMIN` on the marker (a connection of its own) before each `moveToActive`.
//!
//! On SIGTERM the slots stop fetching: a slot waiting for the fetch lock or on the marker ends at once (it
//! holds no job), a slot with a job completes it without fetching another. A `moveToActive` already sent is
//! never abandoned, so no job is left locked in active.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Mutex};

use crate::calls::{self, Fetched, Job, Queue, Work};

/// What every slot shares.
struct Shared {
    queue: RefCell<Queue>,
    /// Held by the slot that is fetching; guards whether the queue was last seen drained (Node's
    /// `drained`), and the connection `BZPOPMIN` blocks.
    fetch: Mutex<Fetcher>,
    closing: watch::Receiver<bool>,
}

struct Fetcher {
    drained: bool,
    blocking: MultiplexedConnection,
}

pub async fn run(client: Client, queue: String, concurrency: usize) -> anyhow::Result<()> {
    // No response timeout: it would arm a timer for every call, and `BZPOPMIN` blocks for seconds.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connect")?;
    let blocking = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connect the blocking connection")?;
    let [load_active, load_finished] = calls::load_commands()?;
    let shas = [
        load_active.query_async::<String>(&mut conn).await?,
        load_finished.query_async::<String>(&mut conn).await?,
    ];
    let (close, closing) = watch::channel(false);
    let shared = Rc::new(Shared {
        queue: RefCell::new(Queue::new(&queue, shas)),
        fetch: Mutex::new(Fetcher {
            drained: false,
            blocking,
        }),
        closing,
    });
    let mut terminate = signal(SignalKind::terminate())?;
    let local = tokio::task::LocalSet::new();
    let slots: Vec<_> = (0..concurrency)
        .map(|_| local.spawn_local(slot(shared.clone(), conn.clone())))
        .collect();
    println!("ready");
    local
        .run_until(async {
            terminate.recv().await;
            let _ = close.send(true);
            for slot in slots {
                match slot.await {
                    Ok(Err(e)) => eprintln!("slot: {e:#}"),
                    Err(e) => eprintln!("slot: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        })
        .await;
    Ok(())
}

fn is_closing(shared: &Shared) -> bool {
    *shared.closing.borrow()
}

/// One unit of concurrency: fetch, process, complete (and take the next), until the worker closes.
async fn slot(shared: Rc<Shared>, mut conn: MultiplexedConnection) -> anyhow::Result<()> {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match fetch(&shared, &mut conn).await? {
                Some(job) => job,
                None => return Ok(()),
            },
        };
        let sleep;
        let returnvalue = match job.work {
            Work::Complete(ref value) => value.as_str(),
            Work::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                sleep = format!("{{\"slept\":{ms}}}");
                sleep.as_str()
            }
        };
        let fetch_next = !is_closing(&shared);
        let cmd = shared
            .queue
            .borrow()
            .move_to_completed(&job, returnvalue, fetch_next);
        let reply: Value = cmd.query_async(&mut conn).await.context("moveToFinished")?;
        // The next job is locked under the finished job's token, as in Node (the script passes it on).
        let Job { id, token, .. } = job;
        match calls::fetched(reply, token) {
            Ok(Fetched::Job(job)) => next = Some(job),
            Ok(Fetched::Empty { .. }) => {}
            Err(e) => eprintln!("job {id}: {e:#}"),
        }
        if next.is_none() && is_closing(&shared) {
            return Ok(());
        }
    }
}

/// Node's fetch for a slot with no job: under the fetch lock, `moveToActive`; while it finds none,
/// `BZPOPMIN` on the marker and `moveToActive` again. `None` once the worker is closing.
async fn fetch(shared: &Shared, conn: &mut MultiplexedConnection) -> anyhow::Result<Option<Job>> {
    let mut closing = shared.closing.clone();
    let mut fetcher = tokio::select! {
        fetcher = shared.fetch.lock() => fetcher,
        _ = closing.wait_for(|c| *c) => return Ok(None),
    };
    let mut block_until = 0;
    loop {
        if is_closing(shared) {
            return Ok(None);
        }
        if fetcher.drained {
            if let Some(seconds) = calls::block_timeout(block_until) {
                let cmd = shared.queue.borrow().wait_for_marker(seconds);
                let blocking = &mut fetcher.blocking;
                let reply: Value = tokio::select! {
                    reply = cmd.query_async(blocking) => reply.context("BZPOPMIN")?,
                    _ = closing.wait_for(|c| *c) => return Ok(None),
                };
                if let Some(score) = calls::marker(&reply) {
                    if block_until == 0 || score < block_until {
                        block_until = score;
                    }
                    if block_until > 0 && block_until > calls::now_ms() {
                        continue;
                    }
                }
            }
        }
        let (cmd, token) = {
            let mut queue = shared.queue.borrow_mut();
            let token = queue.token();
            (queue.move_to_active(&token), token)
        };
        let reply: Value = cmd.query_async(conn).await.context("moveToActive")?;
        match calls::fetched(reply, token)? {
            Fetched::Job(job) => {
                fetcher.drained = false;
                return Ok(Some(job));
            }
            Fetched::Empty {
                rate_limited_ms,
                next_delayed,
            } => {
                fetcher.drained = true;
                block_until = next_delayed;
                if rate_limited_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(rate_limited_ms.min(30_000))).await;
                    fetcher.drained = false;
                }
            }
        }
    }
}
