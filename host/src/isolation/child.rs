//! The plugin process's side (`frostguard-worker plugin-process --plugin FILE`, a hidden subcommand the host
//! starts): loads the library through the same loader and checks as the host, starts it with the settings
//! the host sends, then runs each job it is given on a thread of its own (an inline job, which the plugin
//! declares quick, on the thread that read it: [`super::inline`]; a pending job is started there and completed
//! from the plugin's own threads) and reports progress, job log lines, the
//! plugin's `tracing` records and the outcome back over the framed protocol.
//!
//! Each job is read once out of its frame into a `JobView` (the host writes job frames in a binary form,
//! `protocol::encode_job_frame`). A plugin that takes jobs lent (`LoadedPlugin::lends_jobs`) is lent that
//! view; one built before gets it written as JSON, and the process keeps its id, queue and name ([`HeldJob`]).
//! Either way the plugin's outcome goes into the outcome frame as the text the plugin wrote once it parses
//! as an outcome ([`LoadedPlugin::process_to_json`], [`LoadedPlugin::process_json`]).
//!
//! Job threads are reused: they come from a thread pool (tokio's blocking pool, with no async runtime
//! driven) that starts a thread only when every existing one is busy and lets idle ones exit after a while.
//! Starting a thread per job cost more than a no-op job itself (a `clone`, a stack mapping and a thread
//! exit each time).
//!
//! The protocol uses private copies of the original stdin and stdout; descriptors 0 and 1 are then pointed at
//! /dev/null and stderr, so a plugin that prints cannot corrupt a frame. Descriptor 3, when the host passes
//! it, receives the crash note ([`super::crashnote`]) naming the request whose thread crashed.

use foldhash::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use plugin_api::loader::{
    ForwardedLog, HostLogger, JobCallbacks, LoadedPlugin, LogLevel, OutcomeJson,
};
use plugin_api::JobView;
use serde_json::value::RawValue;

use super::crashnote;
use super::inline::InlineJobs;
use super::protocol::{
    decode_body, decode_job, read_frame, read_frame_body, write_frame, ChildOutput, FromChild,
    ToChild, BINARY_JOB,
};

/// The descriptor on which the host reads crash notes.
pub const NOTE_FD: libc::c_int = 3;

/// The shared writer of frames to the host.
#[derive(Clone)]
struct Out(Arc<Mutex<BufWriter<File>>>);

impl Out {
    fn send(&self, msg: &ChildOutput<'_>) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if write_frame(&mut *w, msg).is_err() {
            // The host is gone: nobody is left to run jobs for.
            std::process::exit(0);
        }
    }
}

struct ChildLogger {
    out: Out,
    max: LogLevel,
}

impl HostLogger for ChildLogger {
    fn log(&self, record: ForwardedLog) {
        self.out.send(&FromChild::Log { record });
    }

    fn max_level(&self) -> LogLevel {
        self.max
    }
}

struct ChildCallbacks {
    id: u64,
    out: Out,
    cancelled: Arc<AtomicBool>,
}

impl JobCallbacks for ChildCallbacks {
    fn progress(&self, json: &str) {
        self.out.send(&FromChild::Progress {
            id: self.id,
            json: json.to_owned(),
        });
    }

    fn log(&self, line: &str) {
        self.out.send(&FromChild::JobLog {
            id: self.id,
            line: line.to_owned(),
        });
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// Takes the protocol descriptors away from stdin/stdout (see the module docs).
fn protocol_streams() -> anyhow::Result<(File, File)> {
    // SAFETY: dup/dup2/open on the process's own standard descriptors; the new descriptors are owned by
    // the returned files only.
    unsafe {
        let input = libc::dup(0);
        let output = libc::dup(1);
        if input < 0 || output < 0 {
            anyhow::bail!("cannot duplicate the protocol descriptors");
        }
        libc::fcntl(input, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(output, libc::F_SETFD, libc::FD_CLOEXEC);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        libc::dup2(2, 1);
        Ok((File::from_raw_fd(input), File::from_raw_fd(output)))
    }
}

/// Does nothing: SIGINT and SIGTERM are the host's to act on.
extern "C" fn ignore_signal(_sig: libc::c_int) {}

/// Runs the plugin process until the host says stop or goes away. Returns the exit status.
pub fn main(plugin_path: &Path) -> anyhow::Result<std::process::ExitCode> {
    // A Ctrl-C reaches the whole process group and a service manager may signal every process of the
    // service: the plugin process must outlive those so the host can drain its jobs, then it is told to stop
    // (or sees the host go away). A handler, not SIG_IGN, so processes the plugin starts get the defaults.
    // SAFETY: installing a handler that does nothing is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            ignore_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            ignore_signal as *const () as libc::sighandler_t,
        );
    }
    let (input, output) = protocol_streams()?;
    // SAFETY: fcntl on a descriptor number; only used as the note sink when it is open.
    if unsafe { libc::fcntl(NOTE_FD, libc::F_GETFD) } >= 0 {
        // Not inherited by processes the plugin starts (they would keep the host's read waiting).
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(NOTE_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        crashnote::install(crashnote::Sink::Pipe(NOTE_FD));
    }
    let out = Out(Arc::new(Mutex::new(BufWriter::new(output))));
    let mut input = BufReader::new(input);
    let plugin = match LoadedPlugin::load(plugin_path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            out.send(&FromChild::InitFailed {
                reason: e.to_string(),
            });
            return Ok(std::process::ExitCode::FAILURE);
        }
    };
    let Some(ToChild::Init { config, max_level }) =
        read_frame::<ToChild>(&mut input).context("reading the init message")?
    else {
        anyhow::bail!("the host did not start with an init message");
    };
    let logger = Arc::new(ChildLogger {
        out: out.clone(),
        max: max_level,
    });
    if let Err(reason) = plugin.init(&config, logger) {
        out.send(&FromChild::InitFailed { reason });
        return Ok(std::process::ExitCode::FAILURE);
    }
    out.send(&FromChild::Ready);
    let pool = job_threads()?;
    let ended = serve(&mut input, &plugin, &out, &pool);
    // Jobs still running when the host goes away end with the process (the host answers them); dropping
    // the pool would wait for them.
    pool.shutdown_background();
    ended
}

/// Runs the jobs the host sends on `pool`'s threads until the host says stop or goes away.
fn serve(
    input: &mut BufReader<File>,
    plugin: &Arc<LoadedPlugin>,
    out: &Out,
    pool: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    let running: Running = Arc::default();
    let inline = Arc::new(InlineJobs::of(plugin.info()));
    let lend = plugin.lends_jobs();
    loop {
        let msg = match next_message(input, lend) {
            Ok(Some(msg)) => msg,
            // The host closed our input (or died): stop.
            Ok(None) => return Ok(std::process::ExitCode::SUCCESS),
            Err(e) => anyhow::bail!("unreadable message from the host: {e}"),
        };
        match msg {
            ToChild::Job { id, job } => {
                let cancelled = Arc::new(AtomicBool::new(false));
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Arc::clone(&cancelled));
                if plugin.is_pending(job.queue(), job.name()) {
                    start_pending(plugin, &inline, out, &running, id, &job, cancelled);
                    continue;
                }
                let (plugin, out, running) =
                    (Arc::clone(plugin), out.clone(), Arc::clone(&running));
                // Quick by the plugin's word: run on this thread, without waking a job thread (a
                // cancellation arriving meanwhile is read once it returned, when there is nothing left to
                // cancel), and hold the plugin's call to its promise.
                let measure = inline
                    .runs_inline(job.queue(), job.name())
                    .then(|| Arc::clone(&inline));
                let run_inline = measure.is_some();
                // Detached: the outcome travels over the protocol, not through the join handle.
                let job_thread = move || {
                    let callbacks = Arc::new(ChildCallbacks {
                        id,
                        out: out.clone(),
                        cancelled,
                    });
                    let outcome = {
                        let _entered = crashnote::enter_job(
                            slot_of(id),
                            job.id(),
                            job.queue(),
                            &plugin.info().name,
                        );
                        match measure {
                            None => job.process(&plugin, callbacks),
                            Some(inline) => {
                                let probe = inline.probe(job.queue(), job.name());
                                let outcome = job.process(&plugin, callbacks);
                                inline.ran(job.queue(), job.name(), &probe.finish());
                                outcome
                            }
                        }
                    };
                    finish_job(&out, &running, id, &outcome);
                };
                if run_inline {
                    job_thread();
                } else {
                    drop(pool.spawn_blocking(job_thread));
                }
            }
            ToChild::Cancel { id } => {
                if let Some(flag) = running.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                    flag.store(true, Ordering::Release);
                }
            }
            ToChild::Shutdown { deadline_ms } => {
                plugin.shutdown(Duration::from_millis(deadline_ms));
                out.send(&FromChild::ShutdownDone);
                let _ = out.0.lock().unwrap_or_else(|p| p.into_inner()).flush();
                return Ok(std::process::ExitCode::SUCCESS);
            }
            ToChild::Init { .. } => anyhow::bail!("a second init message"),
        }
    }
}

/// Starts pending job `id` on the reader thread: the plugin's `start` takes it and returns, and whichever
/// thread of the plugin completes it sends the outcome. The crash note names the job during `start` only
/// (afterwards it runs on threads of the plugin's own, which no job can be told apart on).
fn start_pending(
    plugin: &Arc<LoadedPlugin>,
    inline: &InlineJobs,
    out: &Out,
    running: &Running,
    id: u64,
    job: &HeldJob,
    cancelled: Arc<AtomicBool>,
) {
    let callbacks = Arc::new(ChildCallbacks {
        id,
        out: out.clone(),
        cancelled,
    });
    let (out, running) = (out.clone(), Arc::clone(running));
    let done = Box::new(move |outcome| {
        finish_job(&out, &running, id, &OutcomeJson::of(&outcome));
    });
    let _entered = crashnote::enter_job(slot_of(id), job.id(), job.queue(), &plugin.info().name);
    let probe = inline.start_probe();
    match job {
        HeldJob::Lent(view) => plugin.start(view, callbacks, done),
        HeldJob::Text { json, .. } => plugin.start_json(json.get(), callbacks, done),
    }
    inline.started(job.queue(), job.name(), &probe.finish());
}

/// The jobs running in this process, by request id, each with its cancellation flag.
type Running = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

/// Ends job `id`: it leaves the running jobs (a cancel for it is then ignored) and its outcome goes to the
/// host.
fn finish_job(out: &Out, running: &Running, id: u64, outcome: &OutcomeJson) {
    running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    out.send(&FromChild::Outcome {
        id,
        outcome: outcome.raw(),
    });
}

/// A job as this process holds it: whole, for a plugin that takes jobs lent, or written as JSON text for a
/// plugin built before (which parses it itself), with the head this process keeps.
enum HeldJob {
    Lent(Box<JobView>),
    Text { json: Box<RawValue>, head: JobHead },
}

impl HeldJob {
    fn id(&self) -> &str {
        match self {
            HeldJob::Lent(view) => &view.id,
            HeldJob::Text { head, .. } => &head.id,
        }
    }

    fn name(&self) -> &str {
        match self {
            HeldJob::Lent(view) => &view.name,
            HeldJob::Text { head, .. } => &head.name,
        }
    }

    fn queue(&self) -> &str {
        match self {
            HeldJob::Lent(view) => &view.queue,
            HeldJob::Text { head, .. } => &head.queue,
        }
    }

    /// Runs the job through the plugin's `process`: its outcome as JSON text for the outcome frame.
    fn process(&self, plugin: &LoadedPlugin, callbacks: Arc<ChildCallbacks>) -> OutcomeJson {
        match self {
            HeldJob::Lent(view) => plugin.process_to_json(view, callbacks),
            HeldJob::Text { json, .. } => plugin.process_json(json.get(), callbacks),
        }
    }
}

/// The next message from the host (`Ok(None)` once it closed our input), a job in it (a binary job frame, or
/// a JSON one) read into a `JobView` and held as the plugin takes it: whole when `lend`, else as JSON text.
fn next_message(input: &mut impl Read, lend: bool) -> std::io::Result<Option<ToChild<HeldJob>>> {
    let Some(body) = read_frame_body(input)? else {
        return Ok(None);
    };
    let msg = match body.split_first() {
        Some((&BINARY_JOB, job)) => {
            let (id, view) = decode_job(job)?;
            ToChild::Job {
                id,
                job: Box::new(view),
            }
        }
        _ => decode_body::<ToChild>(&body)?,
    };
    msg.try_map_job(|view| hold(view, lend)).map(Some)
}

/// How the process holds a job: whole, to lend it, or written as JSON for a plugin built before lent jobs.
fn hold(view: Box<JobView>, lend: bool) -> std::io::Result<HeldJob> {
    if lend {
        return Ok(HeldJob::Lent(view));
    }
    let json = serde_json::value::to_raw_value(&*view).map_err(std::io::Error::other)?;
    let JobView {
        id, name, queue, ..
    } = *view;
    Ok(HeldJob::Text {
        json,
        head: JobHead { id, name, queue },
    })
}

/// What the plugin process itself keeps of a job it hands on as text: whom to name in a crash note, and
/// whether it runs inline or pending.
struct JobHead {
    id: String,
    name: String,
    queue: String,
}

/// The pool of job threads: as many as jobs run at once (the host bounds that by the queue's concurrency),
/// each kept for [`JOB_THREAD_KEEP_ALIVE`] after its last job.
fn job_threads() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_JOB_THREADS)
        .thread_keep_alive(JOB_THREAD_KEEP_ALIVE)
        .thread_name("job")
        .build()
        .context("starting the job thread pool")
}

/// Upper bound of job threads (beyond any sensible queue concurrency; jobs past it would wait for a thread).
const MAX_JOB_THREADS: usize = 4096;
/// How long an idle job thread waits for another job before it exits.
const JOB_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The crash-note slot of request `id` (non-zero, 32 bits: request ids wrap around long before that
/// matters for the few requests in flight).
pub fn slot_of(id: u64) -> u32 {
    (id % u64::from(u32::MAX)) as u32 + 1
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::isolation::protocol::{encode_frame, encode_job_frame};

    /// The frames a host writes: a job (its data with escapes and non-ASCII text; in the binary form the
    /// host writes, or as JSON), a cancel, a shutdown.
    fn host_frames(job: &JobView, binary: bool) -> Vec<u8> {
        let mut bytes = if binary {
            encode_job_frame(9, job).unwrap()
        } else {
            encode_frame(&ToChild::Job {
                id: 9,
                job: Box::new(job.clone()),
            })
            .unwrap()
        };
        bytes.extend(encode_frame(&ToChild::<Box<JobView>>::Cancel { id: 9 }).unwrap());
        bytes.extend(encode_frame(&ToChild::<Box<JobView>>::Shutdown { deadline_ms: 5 }).unwrap());
        bytes
    }

    #[test]
    fn a_job_is_held_whole_for_a_plugin_that_takes_jobs_lent_and_as_its_text_for_one_built_before()
    {
        let job = JobView {
            id: "sms:ü-1".into(),
            name: "sms:send".into(),
            queue: "sms-notifications".into(),
            data: RawValue::from_string(r#"{"body":"Temp \"high\" ❄\n","n":[1,2.5]}"#.into())
                .unwrap(),
            attempts_made: 1,
            attempts_started: 2,
            opts: plugin_api::JobOpts {
                attempts: 3,
                backoff: Some(json!({"type": "exponential", "delay": 2000})),
                delay: None,
                priority: Some(1),
            },
            timestamp: 5,
            deadline_ms: Some(6),
        };
        for (lend, binary) in [(true, true), (true, false), (false, true), (false, false)] {
            let frames = host_frames(&job, binary);
            let mut input = frames.as_slice();
            let Some(ToChild::Job { id: 9, job: held }) = next_message(&mut input, lend).unwrap()
            else {
                panic!("lend={lend} binary={binary}: not the job");
            };
            assert_eq!(
                (held.id(), held.name(), held.queue()),
                ("sms:ü-1", "sms:send", "sms-notifications"),
                "lend={lend} binary={binary}"
            );
            match (lend, held) {
                (true, HeldJob::Lent(view)) => assert_eq!(
                    serde_json::to_value(&*view).unwrap(),
                    serde_json::to_value(&job).unwrap()
                ),
                (false, HeldJob::Text { json, .. }) => {
                    assert_eq!(json.get(), serde_json::to_string(&job).unwrap())
                }
                (lend, _) => panic!("lend={lend} binary={binary}: held the other way"),
            }
            assert!(matches!(
                next_message(&mut input, lend).unwrap(),
                Some(ToChild::Cancel { id: 9 })
            ));
            assert!(matches!(
                next_message(&mut input, lend).unwrap(),
                Some(ToChild::Shutdown { deadline_ms: 5 })
            ));
            assert!(
                next_message(&mut input, lend).unwrap().is_none(),
                "lend={lend} binary={binary}"
            );
        }
    }

    #[test]
    fn a_job_without_its_head_is_an_unreadable_message_either_way() {
        let frame = br#"{"job":{"id":9,"job":{"id":"1","queue":"q"}}}"#;
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        for lend in [true, false] {
            let err = next_message(&mut bytes.as_slice(), lend)
                .err()
                .expect("a job with no name is refused");
            assert!(err.to_string().contains("name"), "lend={lend}: {err}");
        }
    }
}
