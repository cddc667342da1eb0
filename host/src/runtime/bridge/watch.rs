//! One watcher of a queue's plugin calls in flight, instead of a timer and waiters armed by every call.
//!
//! A call the bridge waits for (on a blocking thread, a pending job, a job in a plugin process) must be
//! woken for more than its end: the shutdown drain abandoning it, a cancellation to forward to the plugin's
//! process, its deadline passing (the overrun is logged) and a pending job's grace after that. Arming a
//! timer for the cancellation poll, a timer for each deadline and two waiters on the drain for every call,
//! and dropping them when the plugin answered, was about 2k instructions a job in process mode (a job's
//! whole host side is about 46k). Here a call only takes a slot in the queue's [`CallWatch`] (a lock and a
//! store) and gives it back as it ends. One task per queue looks at the calls in their slots every
//! [`LOOK_EVERY`] while there are any, and at once when the drain abandons its jobs, and rings a call's
//! bell ([`Callbacks::ring`], which the call already waits on for its progress and log writes) once for
//! each thing that came due. The call then looks for itself at what changed (`call.rs`).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;

use crate::isolation::process::CANCEL_POLL;
use crate::runtime::callbacks::Callbacks;
use crate::shutdown::DrainState;
use plugin_api::loader::{JobCallbacks as _, PENDING_GRACE};

/// How often the calls in flight are looked at: the delay of a cancellation forwarded to a plugin process,
/// of an overrun's log line and of the end of a pending job's grace.
pub const LOOK_EVERY: Duration = CANCEL_POLL;

/// The calls of one queue that the bridge is waiting for.
pub struct CallWatch {
    shared: Arc<Shared>,
    /// The watcher task, started by the first call (the bridge is built before the runtime runs), stopped
    /// with the watch.
    task: OnceLock<AbortOnDrop>,
}

struct Shared {
    calls: Mutex<Slab<Watched>>,
    /// Rung when a call takes a slot while none were taken (the watcher then starts looking).
    first: Notify,
    drain: Arc<DrainState>,
}

/// One call in its slot.
struct Watched {
    callbacks: Arc<Callbacks>,
    due: Due,
    /// What the call was rung for already.
    rung: Rung,
}

/// When a call has something to look at, besides its end and the drain's abandon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The job's deadline, for the overrun's log line.
    pub deadline: Option<Instant>,
    /// A pending job's end of grace after its deadline: the bridge then gives it up.
    pub grace_end: Option<Instant>,
    /// The call runs in a plugin process, which learns of a cancellation only when told.
    pub forwards_cancel: bool,
}

impl Due {
    /// What a call with `deadline` has to be woken for; `pending` calls are given up after their grace,
    /// calls in a plugin process are told of a cancellation.
    pub fn of(deadline: Option<Instant>, pending: bool, forwards_cancel: bool) -> Due {
        Due {
            deadline,
            grace_end: deadline
                .filter(|_| pending)
                .and_then(|d| d.checked_add(PENDING_GRACE)),
            forwards_cancel,
        }
    }
}

/// What a call was rung for already: each reason rings once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rung {
    cancel: bool,
    deadline: bool,
    grace: bool,
}

/// Whether a call due as `due`, already rung for `rung`, is to be rung now (at `now`, cancelled or not),
/// and what it will then have been rung for.
fn ring_now(due: Due, rung: Rung, now: Instant, cancelled: bool) -> Option<Rung> {
    let passed = |at: Option<Instant>| at.is_some_and(|at| now >= at);
    let next = Rung {
        cancel: rung.cancel || (due.forwards_cancel && cancelled),
        deadline: rung.deadline || passed(due.deadline),
        grace: rung.grace || passed(due.grace_end),
    };
    (next != rung).then_some(next)
}

/// A call's slot; dropping it gives the slot back.
pub struct Slot {
    shared: Arc<Shared>,
    key: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.calls().try_remove(self.key);
    }
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Slab<Watched>> {
        // No holder leaves the slab half-changed (insert and remove are whole).
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CallWatch {
    /// The watch of a queue whose jobs run under `drain`.
    pub fn new(drain: Arc<DrainState>) -> CallWatch {
        CallWatch {
            shared: Arc::new(Shared {
                calls: Mutex::new(Slab::new()),
                first: Notify::new(),
                drain,
            }),
            task: OnceLock::new(),
        }
    }

    /// Takes a slot for a call whose `callbacks` are rung when something in `due` comes due or the drain
    /// abandons its jobs; the call must look at the drain's flag itself after taking the slot (an abandon
    /// just before is not rung). Must run on the runtime: the first call starts the watcher.
    pub fn watch(&self, callbacks: &Arc<Callbacks>, due: Due) -> Slot {
        self.task
            .get_or_init(|| AbortOnDrop(tokio::spawn(look_after(Arc::clone(&self.shared)))));
        let mut calls = self.shared.calls();
        let key = calls.insert(Watched {
            callbacks: Arc::clone(callbacks),
            due,
            rung: Rung::default(),
        });
        let first = calls.len() == 1;
        drop(calls);
        if first {
            self.shared.first.notify_one();
        }
        Slot {
            shared: Arc::clone(&self.shared),
            key,
        }
    }
}

/// The watcher: while calls are in their slots, looks at them every [`LOOK_EVERY`]; once the drain
/// abandons its jobs, rings them all and ends (a call taking a slot later sees the drain's flag itself).
async fn look_after(shared: Arc<Shared>) {
    let abandoned = shared.drain.abandoned();
    tokio::pin!(abandoned);
    loop {
        let idle = shared.calls().is_empty();
        let look = async {
            if idle {
                shared.first.notified().await;
            } else {
                tokio::time::sleep(LOOK_EVERY).await;
            }
        };
        tokio::select! {
            () = look => {}
            () = &mut abandoned => {
                for (_, call) in shared.calls().iter() {
                    call.callbacks.ring();
                }
                return;
            }
        }
        let now = Instant::now();
        for (_, call) in shared.calls().iter_mut() {
            let cancelled =
                call.due.forwards_cancel && !call.rung.cancel && call.callbacks.is_cancelled();
            if let Some(rung) = ring_now(call.due, call.rung, now, cancelled) {
                call.rung = rung;
                call.callbacks.ring();
            }
        }
    }
}

/// A task aborted when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::callbacks::Writes;
    use bullmq::worker::CancellationToken;

    #[test]
    fn each_reason_rings_once_when_it_comes_due() {
        let now = Instant::now();
        let before = now - Duration::from_millis(1);
        let after = now + Duration::from_millis(1);
        let none = Rung::default();
        let rung = |cancel, deadline, grace| Rung {
            cancel,
            deadline,
            grace,
        };
        let due = |deadline, grace_end, forwards_cancel| Due {
            deadline,
            grace_end,
            forwards_cancel,
        };
        // (due, rung already, cancelled, rung now and for what)
        let table = [
            (due(None, None, false), none, true, None),
            (due(None, None, true), none, false, None),
            (
                due(None, None, true),
                none,
                true,
                Some(rung(true, false, false)),
            ),
            (due(None, None, true), rung(true, false, false), true, None),
            (due(Some(after), None, false), none, false, None),
            (
                due(Some(now), None, false),
                none,
                false,
                Some(rung(false, true, false)),
            ),
            (
                due(Some(before), None, false),
                rung(false, true, false),
                false,
                None,
            ),
            (
                due(Some(before), Some(after), true),
                rung(false, true, false),
                true,
                Some(rung(true, true, false)),
            ),
            (
                due(Some(before), Some(before), false),
                rung(false, true, false),
                false,
                Some(rung(false, true, true)),
            ),
            (
                due(Some(before), Some(before), false),
                rung(false, true, true),
                false,
                None,
            ),
        ];
        for (due, already, cancelled, want) in table {
            assert_eq!(
                ring_now(due, already, now, cancelled),
                want,
                "{due:?} {already:?} {cancelled}"
            );
        }
    }

    /// A call's callbacks under `drain`, with the library's token `token` and `deadline`.
    fn call(
        drain: &Arc<DrainState>,
        token: &CancellationToken,
        deadline: Option<Instant>,
    ) -> (Arc<Callbacks>, Writes) {
        Callbacks::new("q", "1", Arc::clone(drain), token.clone(), deadline)
    }

    #[tokio::test]
    async fn a_call_is_rung_once_its_deadline_passed() {
        let drain = DrainState::new();
        let watch = CallWatch::new(Arc::clone(&drain));
        let deadline = Instant::now() + Duration::from_millis(20);
        let (callbacks, mut writes) = call(&drain, &CancellationToken::new(), Some(deadline));
        let _slot = watch.watch(&callbacks, Due::of(Some(deadline), false, false));
        let rung = tokio::time::timeout(Duration::from_secs(2), writes.next()).await;
        assert_eq!(rung, Ok(None), "rung without a write");
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancellation_rings_a_call_in_a_plugin_process_and_the_abandon_rings_every_call() {
        let drain = DrainState::new();
        let watch = CallWatch::new(Arc::clone(&drain));
        let token = CancellationToken::new();
        let (in_child, mut child_writes) = call(&drain, &token, None);
        let (on_thread, mut thread_writes) = call(&drain, &token, None);
        let _child = watch.watch(&in_child, Due::of(None, false, true));
        let _thread = watch.watch(&on_thread, Due::of(None, false, false));
        token.cancel();
        assert_eq!(
            tokio::time::timeout(LOOK_EVERY * 2, child_writes.next()).await,
            Ok(None),
            "a plugin process must be told"
        );
        let thread_rung = tokio::select! {
            _ = thread_writes.next() => true,
            () = tokio::time::sleep(LOOK_EVERY * 4) => false,
        };
        assert!(!thread_rung, "a call on the host's threads asks for itself");
        // The drain's abandon, reached with one job in flight that never ends.
        let in_flight = drain.job_started();
        let draining = Arc::clone(&drain);
        let drained = tokio::spawn(async move {
            crate::shutdown::drain_phases(&draining, Duration::ZERO, "t").await
        });
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), thread_writes.next()).await,
            Ok(None)
        );
        assert!(drain.is_abandoned());
        drop(in_flight);
        drained.await.unwrap();
    }

    #[test]
    fn only_a_pending_call_with_a_deadline_has_a_grace() {
        let deadline = Instant::now();
        assert_eq!(
            Due::of(Some(deadline), true, false).grace_end,
            Some(deadline + PENDING_GRACE)
        );
        assert_eq!(Due::of(Some(deadline), false, true).grace_end, None);
        assert_eq!(Due::of(None, true, false).grace_end, None);
    }
}
