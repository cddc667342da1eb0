//! A plugin's child process from birth to death, the host's side: starting it (the crash-note pipe on a
//! fixed descriptor, the `init` handshake), the supervisor thread that has its frames read while it lives
//! (on the runtime, or itself: `output.rs`) and dispatches them, and, when its output ends, reaping it,
//! answering every job it held with its [`Crash`] and starting the next child after the restart backoff.

use super::*;

impl Shared {
    /// Starts a child and waits for its `init` to answer.
    pub(super) fn spawn(&self) -> Result<Started, String> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors, both close-on-exec.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!(
                "cannot create the crash-note pipe: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the two descriptors were just created and are owned by these files alone.
        let (notes, note_writer) =
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let writer_fd = fds[1];
        let mut cmd = Command::new(&self.exe);
        cmd.arg("plugin-process")
            .arg("--plugin")
            .arg(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls between fork and exec: dup2 (which clears close-on-exec on
        // the copy) and prctl.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(writer_fd, NOTE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The child must not outlive a host killed outright.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the plugin process: {e}"))?;
        drop(note_writer);
        // Read without blocking once the child is gone: a process the plugin started may still hold the
        // pipe's write end, and everything the dead child wrote is already in the pipe.
        // SAFETY: fcntl on the read end we own.
        unsafe {
            let flags = libc::fcntl(fds[0], libc::F_GETFL);
            libc::fcntl(fds[0], libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let input = child.stdin.take().expect("piped stdin");
        let output = child.stdout.take().expect("piped stdout");
        let conn = Arc::new(Conn {
            input: Mutex::new(input),
            pid: child.id(),
            outbox: Outbox::default(),
        });
        let mut output = match Output::new(output) {
            Ok(output) => output,
            Err(e) => {
                let _ = reap(&mut child, false);
                return Err(format!("cannot read the plugin process's output: {e}"));
            }
        };
        let max_level = self.logger.max_level();
        let init = ToChild::Init {
            config: self.config.clone(),
            max_level,
        };
        let answer = match conn.send(&init) {
            Ok(()) => self.await_init(&mut output),
            Err(e) => Err(Refusal::Broken(format!(
                "cannot talk to the plugin process: {e}"
            ))),
        };
        match answer {
            Ok(()) => Ok(Started {
                child,
                output,
                notes,
                conn,
            }),
            Err(refusal) => {
                let status = reap(&mut child, true).ok();
                Err(match refusal {
                    Refusal::Plugin(reason) => reason,
                    // The child died or talked nonsense: say how it ended.
                    Refusal::Broken(reason) => match status.and_then(Ending::from_status) {
                        Some(ending) => format!("{reason} ({ending})"),
                        None => reason,
                    },
                })
            }
        }
    }

    /// Reads the child's answer to `init`, forwarding the plugin's log records meanwhile.
    fn await_init(&self, output: &mut Output<ChildStdout>) -> Result<(), Refusal> {
        loop {
            match output.next_on_thread(None) {
                Next::Frame(FromChild::Ready) => return Ok(()),
                Next::Frame(FromChild::InitFailed { reason }) => {
                    return Err(Refusal::Plugin(reason))
                }
                Next::Frame(FromChild::Log { record }) => self.logger.log(record),
                Next::Frame(other) => {
                    return Err(Refusal::Broken(format!(
                        "unexpected message before init answered: {other:?}"
                    )))
                }
                Next::Ended(Ok(())) | Next::Woken => {
                    return Err(Refusal::Broken(
                        "the plugin process exited during init".to_owned(),
                    ))
                }
                Next::Ended(Err(e)) => {
                    return Err(Refusal::Broken(format!("reading the plugin process: {e}")))
                }
            }
        }
    }

    /// The supervisor thread: has the child's frames read; on its death answers its jobs and restarts it.
    pub(super) fn supervise(self: Arc<Self>, mut started: Started) {
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let born = Instant::now();
            let (clean_end, output) = self.watch_output(started.output);
            let status = reap(&mut started.child, clean_end);
            // Closed only now: a child killed while still writing dies of the kill, not of a closed pipe.
            drop(output);
            let mut note = Vec::new();
            let _ = started.notes.read_to_end(&mut note);
            let note = crashnote::parse(&note);
            let ending = status.ok().and_then(Ending::from_status);
            let stopping = {
                let mut state = self.lock_state();
                let stopping = matches!(*state, State::Stopped);
                if !stopping {
                    *state = State::Starting;
                }
                stopping
            };
            let held: Vec<Pending> = self.lock_pending().drain().map(|(_, p)| p).collect();
            if stopping {
                for p in held {
                    p.tx.send(Reply::Outcome(Outcome::failed("plugin shut down")));
                }
                self.mark_exited();
                return;
            }
            // A crash note names the job whose thread crashed; without one (killed from outside, out of
            // memory) every job the child held is blamed.
            let ending = match (note, ending) {
                (Some((0, _)), Some(e)) => e,
                (Some((sig, _)), _) if sig != 0 => Ending::from_note(sig),
                (_, Some(e)) => e,
                (_, None) => Ending::ExitCalled,
            };
            let blamed_slot = note.map(|(_, slot)| slot);
            tracing::error!(
                plugin = %self.name,
                pid = started.conn.pid,
                cause = %ending,
                jobs = held.len(),
                "plugin process crashed; failing the jobs it held and restarting it"
            );
            crate::runtime::metrics::plugin_crash(&self.name);
            for p in held {
                let blamed = blamed_slot.is_none_or(|slot| slot == p.slot);
                p.tx.send(Reply::Crashed(Crash { ending, blamed }));
            }
            if born.elapsed() >= STABLE_AFTER {
                backoff = RESTART_BACKOFF_MIN;
            }
            started = loop {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                if matches!(*self.lock_state(), State::Stopped) {
                    self.mark_exited();
                    return;
                }
                match self.spawn() {
                    Ok(started) => {
                        let mut state = self.lock_state();
                        if matches!(*state, State::Stopped) {
                            drop(state);
                            let mut started = started;
                            let _ = started.child.kill();
                            let _ = started.child.wait();
                            continue;
                        }
                        *state = State::Ready(Arc::clone(&started.conn));
                        drop(state);
                        self.changed.notify_all();
                        tracing::info!(plugin = %self.name, pid = started.conn.pid, "plugin process restarted");
                        break started;
                    }
                    Err(reason) => {
                        tracing::error!(plugin = %self.name, retry_in_ms = backoff.as_millis() as u64, "plugin process cannot be restarted: {reason}");
                        let mut state = self.lock_state();
                        if !matches!(*state, State::Stopped) {
                            *state = State::Down;
                        }
                        drop(state);
                        self.changed.notify_all();
                    }
                }
            };
        }
    }

    fn mark_exited(&self) {
        *self.exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.gone.notify_all();
    }

    /// Has the child's frames dispatched until its output ends, on the attached runtime if there is one
    /// (this thread then waits for the runtime to report the end), else on this thread until a runtime is
    /// attached. Returns true at a clean end (the child is exiting), false when the stream broke mid-frame
    /// or made no sense (the child is then killed); and the output, still open.
    fn watch_output(
        self: &Arc<Self>,
        mut output: Output<ChildStdout>,
    ) -> (bool, Option<Output<ChildStdout>>) {
        let ended = loop {
            let runtime = self
                .runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(runtime) = runtime {
                let (back, handed) = mpsc::channel();
                let shared = Arc::clone(self);
                runtime.spawn(output.read_on_runtime(back, move |msg| shared.dispatch(msg)));
                match handed.recv() {
                    Ok(Handback {
                        output,
                        ended: Some(ended),
                    }) => break (ended, Some(output)),
                    // The runtime is gone (shut down) while the child lives: this thread reads on.
                    Ok(Handback {
                        output: returned,
                        ended: None,
                    }) => {
                        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        output = returned;
                    }
                    // Not expected: the reading always sends the output back.
                    Err(_) => {
                        break (
                            Err(std::io::Error::other("the runtime lost the output")),
                            None,
                        )
                    }
                }
            }
            // `None`: woken, a runtime was attached meanwhile (or the ring came before the runtime was
            // taken): look again.
            if let Some(ended) = output.read_on_thread(&self.wake, &mut |msg| self.dispatch(msg)) {
                break (ended, Some(output));
            }
        };
        match ended {
            (Ok(()), output) => (true, output),
            (Err(e), output) => {
                tracing::error!(plugin = %self.name, error = %e, "unreadable message from the plugin process");
                (false, output)
            }
        }
    }

    /// Hands one frame of the child's output to whoever waits for it.
    fn dispatch(&self, msg: FromChild) {
        match msg {
            FromChild::Progress { id, json } => {
                if let Some(cb) = self.callbacks(id) {
                    cb.progress(&json);
                }
            }
            FromChild::JobLog { id, line } => {
                if let Some(cb) = self.callbacks(id) {
                    cb.log(&line);
                }
            }
            FromChild::Log { record } => self.logger.log(record),
            FromChild::Outcome { id, outcome } => {
                if let Some(p) = self.lock_pending().remove(&id) {
                    p.tx.send(Reply::Outcome(outcome));
                }
            }
            FromChild::Ready | FromChild::InitFailed { .. } | FromChild::ShutdownDone => {}
        }
    }

    fn callbacks(&self, id: u64) -> Option<Arc<dyn JobCallbacks>> {
        self.lock_pending()
            .get(&id)
            .map(|p| Arc::clone(&p.callbacks))
    }
}

/// Why a child did not become ready.
enum Refusal {
    /// The plugin (or the loader in the child) said why: its words are the reason.
    Plugin(String),
    /// The child died or broke the protocol.
    Broken(String),
}

/// Waits for a child whose output ended. After a clean end it is exiting on its own and gets a moment to
/// do so (so its real status is seen); otherwise, or when it lingers, it is killed.
fn reap(child: &mut Child, clean_end: bool) -> std::io::Result<std::process::ExitStatus> {
    if clean_end {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = child.kill();
    child.wait()
}
