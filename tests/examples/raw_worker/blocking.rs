//! The raw worker at concurrency 1: one thread, one blocking connection, no runtime. Each job is one
//! round trip (`moveToFinished` with fetch-next); an empty queue is waited on with `BZPOPMIN` on the same
//! connection, which has nothing else in flight.
//!
//! SIGTERM: the handler only sets a flag, unless the worker is idle (blocked on the marker, holding no
//! job), where it ends the process at once, since there is nothing to finish and the wait lasts up to
//! 5 s. Otherwise the loop sees the flag after the job in hand and completes it without fetching another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::{Client, Connection, Value};

use crate::calls::{self, Fetched, Job, Queue, Work};

static TERMINATING: AtomicBool = AtomicBool::new(false);
static IDLE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATING.store(true, Ordering::SeqCst);
    if IDLE.load(Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe; no job is held while idle.
        unsafe { libc::_exit(0) };
    }
}

fn install_handler() -> anyhow::Result<()> {
    // SAFETY: a plain handler that only touches atomics and calls `_exit`.
    let previous = unsafe {
        libc::signal(
            libc::SIGTERM,
            on_terminate as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    anyhow::ensure!(previous != libc::SIG_ERR, "install the SIGTERM handler");
    Ok(())
}

pub fn run(client: &Client, queue: &str) -> anyhow::Result<()> {
    let mut conn = client.get_connection().context("connect")?;
    let [load_active, load_finished] = calls::load_commands()?;
    let shas = [
        load_active.query::<String>(&mut conn)?,
        load_finished.query::<String>(&mut conn)?,
    ];
    let mut queue = Queue::new(queue, shas);
    install_handler()?;
    println!("ready");
    let mut drained = false;
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match fetch(&mut conn, &mut queue, &mut drained)? {
                Some(job) => job,
                None => return Ok(()),
            },
        };
        let returnvalue = match job.work {
            Work::Complete(ref value) => value.clone(),
            Work::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                format!("{{\"slept\":{ms}}}")
            }
        };
        let fetch_next = !TERMINATING.load(Ordering::SeqCst);
        let reply: Value = queue
            .move_to_completed(&job, &returnvalue, fetch_next)
            .query(&mut conn)
            .context("moveToFinished")?;
        // The next job is locked under the finished job's token, as in Node (the script passes it on).
        match calls::fetched(reply, job.token.clone()) {
            Ok(Fetched::Job(job)) => next = Some(job),
            Ok(Fetched::Empty { .. }) => {}
            Err(e) => eprintln!("job {}: {e:#}", job.id),
        }
        if TERMINATING.load(Ordering::SeqCst) && next.is_none() {
            return Ok(());
        }
    }
}

/// Node's fetch when no job came with the last completion: `moveToActive`, and while that finds none,
/// `BZPOPMIN` on the marker then `moveToActive` again. `None` once SIGTERM arrived.
fn fetch(
    conn: &mut Connection,
    queue: &mut Queue,
    drained: &mut bool,
) -> anyhow::Result<Option<Job>> {
    let mut block_until = 0;
    loop {
        if TERMINATING.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if *drained {
            if let Some(seconds) = calls::block_timeout(block_until) {
                IDLE.store(true, Ordering::SeqCst);
                if TERMINATING.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                let reply: redis::RedisResult<Value> = queue.wait_for_marker(seconds).query(conn);
                IDLE.store(false, Ordering::SeqCst);
                let reply = reply.context("BZPOPMIN")?;
                if TERMINATING.load(Ordering::SeqCst) {
                    return Ok(None);
                }
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
        let token = queue.token();
        let reply: Value = queue
            .move_to_active(&token)
            .query(conn)
            .context("moveToActive")?;
        match calls::fetched(reply, token)? {
            Fetched::Job(job) => {
                *drained = false;
                return Ok(Some(job));
            }
            Fetched::Empty {
                rate_limited_ms,
                next_delayed,
            } => {
                *drained = true;
                block_until = next_delayed;
                if rate_limited_ms > 0 {
                    std::thread::sleep(Duration::from_millis(rate_limited_ms.min(30_000)));
                    *drained = false;
                }
            }
        }
    }
}
