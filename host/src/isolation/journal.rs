//! The crash journal of in-process mode: which jobs are inside plugin code right now, kept in a file that
//! outlives the process, so that the host starting after a crash knows what was running and which job's
//! thread crashed.
//!
//! One file per run, `run-<pid>-<start>.journal` in `STATE_DIR`, held under an exclusive `flock` for the
//! whole run: a file nobody holds belongs to a dead run, whichever replica (sharing the directory) finds
//! it. Layout, all fixed-size so that every update is one `pwrite` and the file never grows with the job
//! count:
//!
//! - bytes 0..64: the crash note ([`super::crashnote`]: `crash <signal> <slot>\n`), zeros until a crash;
//! - bytes 64..512: the identity line `frostguard-worker journal v1 <redis> <prefix>\n`, so a journal is
//!   only ever settled against the Redis and prefix it was written for;
//! - then one 512-byte slot per job running plugin code: `<queue>\t<job id>\t<plugin>\n`, or a zero first
//!   byte when free. A slot is written before the plugin is called and cleared after it returned.
//!
//! Nothing is `fsync`ed: the journal must survive the process, not the machine (the page cache outlives
//! a crashed process).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Size of the note area at the start of the file.
const NOTE_AREA: u64 = 64;
/// Size of the header (note area and identity line).
const HEADER: u64 = 512;
/// Size of one job slot.
const SLOT: u64 = 512;
const MAGIC: &str = "frostguard-worker journal v1";

/// One job that was inside plugin code, as read back from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    /// Slot number (1-based), as named by a crash note.
    pub slot: u32,
    /// Queue name.
    pub queue: String,
    /// Job id.
    pub job_id: String,
    /// The plugin serving the queue.
    pub plugin: String,
}

/// What a dead run left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRun {
    /// The journal file (removed once settled).
    pub path: PathBuf,
    /// The crash note: (signal, slot), signal 0 for `exit`.
    pub note: Option<(i32, u32)>,
    /// Jobs inside plugin code when the run died.
    pub running: Vec<RunningJob>,
}

/// This run's journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    free: Vec<u32>,
    next: u32,
}

/// A job's slot, cleared when dropped (the plugin call returned, however).
#[derive(Debug)]
pub struct Entry<'a> {
    journal: &'a Journal,
    slot: u32,
}

impl Entry<'_> {
    /// The slot number, for the crash note.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        // A failed clear leaves a stale slot that a later start reads as interrupted, never as blamed.
        let _ = self.journal.file.write_all_at(&[0], slot_offset(self.slot));
        let mut slots = self.journal.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.free.push(self.slot);
    }
}

/// The identity line of a journal written for `redis` (redacted) and `prefix`.
pub fn identity(redis: &str, prefix: &str) -> String {
    format!("{MAGIC} {redis} {prefix}")
}

fn slot_offset(slot: u32) -> u64 {
    HEADER + u64::from(slot - 1) * SLOT
}

impl Journal {
    /// Creates this run's journal in `dir` (created if missing) and locks it for the life of the process.
    pub fn create(dir: &Path, identity: &str) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("run-{}-{nanos}.journal", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        lock(&file)?;
        let mut header = vec![0u8; HEADER as usize];
        let line = format!("{identity}\n");
        let line = line.as_bytes();
        let len = line.len().min((HEADER - NOTE_AREA) as usize);
        header[NOTE_AREA as usize..NOTE_AREA as usize + len].copy_from_slice(&line[..len]);
        file.write_all_at(&header, 0)?;
        Ok(Journal {
            file,
            path,
            slots: Mutex::default(),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the crash note is written to (offset 0).
    pub fn note_fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    /// Records that `job_id` of `queue` is about to enter `plugin`. `None` (with the job still run) when
    /// the record cannot be written or does not fit a slot.
    pub fn begin(&self, queue: &str, job_id: &str, plugin: &str) -> Option<Entry<'_>> {
        let record = format!("{queue}\t{job_id}\t{plugin}\n");
        if record.len() > SLOT as usize
            || [queue, job_id, plugin]
                .iter()
                .any(|s| s.contains(['\t', '\n']))
        {
            return None;
        }
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.free.pop() {
                Some(slot) => slot,
                None => {
                    slots.next += 1;
                    slots.next
                }
            }
        };
        let mut buf = vec![0u8; SLOT as usize];
        buf[..record.len()].copy_from_slice(record.as_bytes());
        let entry = Entry {
            journal: self,
            slot,
        };
        match self.file.write_all_at(&buf, slot_offset(slot)) {
            Ok(()) => Some(entry),
            Err(_) => None,
        }
    }
}

/// Takes the exclusive `flock` of `file` without waiting (refused while another open file holds it).
fn lock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The journals in `dir` of runs that are gone (nobody holds their lock) and were written for `identity`.
/// Each returned file stays locked by this process until settled and removed ([`remove`]).
pub fn dead_runs(dir: &Path, identity: &str, own: &Path) -> io::Result<Vec<(DeadRun, File)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let is_journal = path.extension().is_some_and(|e| e == "journal")
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"));
        if !is_journal || path == own {
            continue;
        }
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        if lock(&file).is_err() {
            continue; // a live run
        }
        let bytes = std::fs::read(&path)?;
        if let Some(run) = parse(&path, &bytes, identity) {
            found.push((run, file));
        }
    }
    Ok(found)
}

/// Removes a settled journal (the lock goes with the file).
pub fn remove(run: &DeadRun, file: File) {
    let _ = std::fs::remove_file(&run.path);
    drop(file);
}

/// Reads a journal's bytes; `None` when it was written for another identity or is not a journal.
pub fn parse(path: &Path, bytes: &[u8], identity: &str) -> Option<DeadRun> {
    if bytes.len() < HEADER as usize {
        return None;
    }
    let id_area = &bytes[NOTE_AREA as usize..HEADER as usize];
    let id_line = id_area.split(|b| *b == b'\n').next()?;
    if id_line != identity.as_bytes() {
        return None;
    }
    let note = super::crashnote::parse(&bytes[..NOTE_AREA as usize]);
    let mut running = Vec::new();
    for (i, slot) in bytes[HEADER as usize..].chunks(SLOT as usize).enumerate() {
        if slot.first().is_none_or(|b| *b == 0) {
            continue;
        }
        let Some(end) = slot.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let Ok(line) = std::str::from_utf8(&slot[..end]) else {
            continue;
        };
        let mut parts = line.split('\t');
        if let (Some(queue), Some(job_id), Some(plugin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            running.push(RunningJob {
                slot: i as u32 + 1,
                queue: queue.to_owned(),
                job_id: job_id.to_owned(),
                plugin: plugin.to_owned(),
            });
        }
    }
    Some(DeadRun {
        path: path.to_owned(),
        note,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fg-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn running_jobs_and_the_note_are_read_back() {
        let dir = temp_dir("read");
        let id = identity("redis://r:6379", "bull");
        let journal = Journal::create(&dir, &id).unwrap();
        let a = journal.begin("q1", "7", "p").unwrap();
        let b = journal.begin("q2", "job:x", "p2").unwrap();
        let c = journal.begin("q1", "8", "p").unwrap();
        assert_eq!((a.slot(), b.slot(), c.slot()), (1, 2, 3));
        drop(a);
        // A freed slot is reused.
        let d = journal.begin("q1", "9", "p").unwrap();
        assert_eq!(d.slot(), 1);
        journal.file.write_all_at(b"crash 11 2\n", 0).unwrap();
        let bytes = std::fs::read(journal.path()).unwrap();
        let run = parse(journal.path(), &bytes, &id).unwrap();
        assert_eq!(run.note, Some((11, 2)));
        let jobs: Vec<(u32, &str, &str)> = run
            .running
            .iter()
            .map(|j| (j.slot, j.queue.as_str(), j.job_id.as_str()))
            .collect();
        assert_eq!(jobs, [(1, "q1", "9"), (2, "q2", "job:x"), (3, "q1", "8")]);
        // Another Redis or prefix never settles this journal.
        assert_eq!(
            parse(journal.path(), &bytes, &identity("redis://r:6379", "other")),
            None
        );
        drop((b, c, d));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_journals_nobody_holds_are_dead() {
        let dir = temp_dir("dead");
        let id = identity("redis://r:6379", "bull");
        let live = Journal::create(&dir, &id).unwrap();
        let _entry = live.begin("q", "1", "p").unwrap();
        let mine = Journal::create(&dir, &id).unwrap();
        // The live journal is locked by `live` (flock locks are per open file, so even this process is
        // refused): not dead.
        assert!(dead_runs(&dir, &id, mine.path()).unwrap().is_empty());
        let live_path = live.path().to_owned();
        drop(_entry);
        drop(live);
        // Same bytes, lock released: now it is a dead run with nothing running.
        let dead = dead_runs(&dir, &id, mine.path()).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0.path, live_path);
        assert!(dead[0].0.running.is_empty());
        let (run, file) = dead.into_iter().next().unwrap();
        remove(&run, file);
        assert!(!live_path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
