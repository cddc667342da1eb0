//! The crash journal of in-process mode: which jobs are inside plugin code right now, kept in a file that
//! outlives the process, so that the host starting after a crash knows what was running and which job's
//! thread crashed.
//!
//! One file per run, `run-<pid>-<start>.journal` in `STATE_DIR`, held under an exclusive `flock` for the
//! whole run: a file nobody holds belongs to a dead run, whichever replica (sharing the directory) finds
//! it. Layout, all fixed-size so that the file never grows with the job count:
//!
//! - bytes 0..64: the crash note ([`super::crashnote`]: `crash <signal> <slot>\n`), zeros until a crash;
//! - bytes 64..512: the identity line `frostguard-worker journal v1 <redis> <prefix>\n`, so a journal is
//!   only ever settled against the Redis and prefix it was written for;
//! - then one 512-byte slot per job running plugin code: `<queue>\t<job id>\t<plugin>\n`, or a zero first
//!   byte when free. A slot is written before the plugin is called and cleared after it returned.
//!
//! A job's slot is written with plain stores into a shared mapping of the file (`MAP_SHARED`), not with a
//! system call: the stores land in the page cache, which keeps them when the process dies, and nothing is
//! `fsync`ed anyway — the journal must survive the process, not the machine. The first [`MAPPED_SLOTS`]
//! slots are mapped (the file is that long from the start, sparse); a slot beyond them, which only a run
//! with that many jobs inside plugin code at once reaches, is written with `pwrite`. A record's first byte
//! is stored last, so a reader never takes half a record for a live one. Before the mapping stores into
//! a part of the file, that part is written once through the descriptor ([`CLAIM`]): a full disk then
//! shows as a failed write (the job runs unrecorded) rather than as a `SIGBUS` on a store.
//! The crash note is still written through the descriptor (from a signal handler); the mapping never
//! touches the header.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapOptions, MmapRaw};

/// Size of the note area at the start of the file.
const NOTE_AREA: u64 = 64;
/// Size of the header (note area and identity line).
const HEADER: u64 = 512;
/// Size of one job slot.
const SLOT: u64 = 512;
const MAGIC: &str = "frostguard-worker journal v1";
/// Slots written through the mapping: far above any concurrency a host runs in-process, and the header with
/// them makes the file exactly 512 KiB.
pub const MAPPED_SLOTS: u32 = 1023;
/// The mapping stores only into parts of the file already written through the descriptor, which are claimed
/// in steps of this many bytes (the largest page size Linux uses), so every page stored into is backed.
const CLAIM: u64 = 64 * 1024;

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
    /// The slot area of the first `mapped_slots` slots, shared with the page cache; `None` when the file
    /// could not be mapped (every slot is then written with `pwrite`).
    map: Option<MmapRaw>,
    mapped_slots: u32,
    slots: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    free: Vec<u32>,
    next: u32,
    /// The file is written through the descriptor up to this offset: the mapping may store below it.
    claimed: u64,
}

/// A job's slot, cleared when dropped (the plugin call returned, however).
#[derive(Debug)]
pub struct Entry<'a> {
    journal: &'a Journal,
    slot: u32,
    /// Written through the mapping (else with `pwrite`).
    mapped: bool,
}

impl Entry<'_> {
    /// The slot number, for the crash note.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if self.mapped {
            self.journal.slot_bytes(self.slot)[0].store(0, Ordering::Release);
        } else {
            // A failed clear leaves a stale slot that a later start reads as interrupted, never as blamed.
            let _ = self.journal.file.write_all_at(&[0], slot_offset(self.slot));
        }
        self.journal.slots().free.push(self.slot);
    }
}

/// The identity line of a journal written for `redis` (redacted) and `prefix`.
pub fn identity(redis: &str, prefix: &str) -> String {
    format!("{MAGIC} {redis} {prefix}")
}

fn slot_offset(slot: u32) -> u64 {
    HEADER + u64::from(slot - 1) * SLOT
}

/// Copies the record `<queue>\t<job id>\t<plugin>\n` into `slot` (which holds at least its length).
/// The first byte is left to the caller, to be stored last.
fn put_record(slot: &mut [u8; SLOT as usize], parts: [&str; 3]) -> usize {
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        slot[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
        slot[at] = if i == 2 { b'\n' } else { b'\t' };
        at += 1;
    }
    at
}

impl Journal {
    /// Creates this run's journal in `dir` (created if missing) and locks it for the life of the process.
    pub fn create(dir: &Path, identity: &str) -> io::Result<Journal> {
        Self::create_mapping(dir, identity, MAPPED_SLOTS)
    }

    /// [`Self::create`] with the first `mapped_slots` slots mapped.
    fn create_mapping(dir: &Path, identity: &str, mapped_slots: u32) -> io::Result<Journal> {
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
        let map = map_slots(&file, mapped_slots);
        if let Err(e) = &map {
            tracing::debug!(error = %e, "crash journal not mapped; its slots are written with pwrite");
        }
        let map = map.ok();
        Ok(Journal {
            file,
            path,
            mapped_slots: if map.is_some() { mapped_slots } else { 0 },
            map,
            slots: Mutex::new(Slots {
                free: Vec::new(),
                next: 0,
                claimed: HEADER,
            }),
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

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `job_id` of `queue` is about to enter `plugin`. `None` (with the job still run) when
    /// the record cannot be written or does not fit a slot. Allocates nothing once the slot list has grown
    /// to the run's concurrency.
    pub fn begin(&self, queue: &str, job_id: &str, plugin: &str) -> Option<Entry<'_>> {
        let parts = [queue, job_id, plugin];
        let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
        if len > SLOT as usize || parts.iter().any(|s| s.contains(['\t', '\n'])) {
            return None;
        }
        let (slot, mapped) = {
            let mut slots = self.slots();
            let slot = match slots.free.pop() {
                Some(slot) => slot,
                None => {
                    slots.next += 1;
                    slots.next
                }
            };
            let mapped = slot <= self.mapped_slots;
            if mapped && self.claim(&mut slots, slot).is_err() {
                // Not backed by the file: the mapping must not store into it (see `claim`).
                slots.free.push(slot);
                return None;
            }
            (slot, mapped)
        };
        let mut record = [0u8; SLOT as usize];
        let len = put_record(&mut record, parts);
        let entry = Entry {
            journal: self,
            slot,
            mapped,
        };
        if mapped {
            let bytes = self.slot_bytes(slot);
            for (to, from) in bytes[1..len].iter().zip(&record[1..len]) {
                to.store(*from, Ordering::Relaxed);
            }
            // Stored last: until then the slot reads as free.
            bytes[0].store(record[0], Ordering::Release);
            return Some(entry);
        }
        match self.file.write_all_at(&record, slot_offset(slot)) {
            Ok(()) => Some(entry),
            Err(_) => None,
        }
    }

    /// Makes sure the file is written through the descriptor up to the end of `slot` (a mapped one), in
    /// [`CLAIM`] steps, before the mapping stores into it. A store into a page of a sparse file that the
    /// filesystem cannot back (disk or tmpfs full) is a `SIGBUS`; a write fails cleanly instead. The zeros
    /// written cover only slots never handed out yet (slots are handed out in order), under the slot lock.
    fn claim(&self, slots: &mut Slots, slot: u32) -> io::Result<()> {
        let end = slot_offset(slot) + SLOT;
        if end <= slots.claimed {
            return Ok(());
        }
        let mapped_end = slot_offset(self.mapped_slots) + SLOT;
        let to = end.div_ceil(CLAIM).saturating_mul(CLAIM).min(mapped_end);
        let zeros = vec![0u8; (to - slots.claimed) as usize];
        self.file.write_all_at(&zeros, slots.claimed)?;
        slots.claimed = to;
        Ok(())
    }

    /// The bytes of a mapped slot.
    fn slot_bytes(&self, slot: u32) -> &[AtomicU8] {
        let start = ((slot - 1) as u64 * SLOT) as usize;
        &self.mapped_area()[start..start + SLOT as usize]
    }

    /// The mapped slot area as bytes that several threads may store into (each into its own slots).
    #[allow(unsafe_code)]
    fn mapped_area(&self) -> &[AtomicU8] {
        let Some(map) = &self.map else { return &[] };
        // SAFETY: the mapping is `map.len()` writable bytes (MAP_SHARED, read-write) that live as long as
        // `self`; `AtomicU8` has the size and alignment of `u8` and every byte value is valid. The file is
        // this run's own, created here and held under an exclusive flock, so no other process writes it,
        // and it is never truncated. In this process the bytes are only accessed through this atomic view;
        // the descriptor writes the header (outside the mapping) and, under the slot lock, zeros over slots
        // not handed out yet (`claim`). Stores to one slot come from the one job that holds it.
        unsafe { std::slice::from_raw_parts(map.as_mut_ptr().cast::<AtomicU8>(), map.len()) }
    }
}

/// Sizes the file for `mapped_slots` slots (sparse: nothing is allocated until written) and maps their area.
fn map_slots(file: &File, mapped_slots: u32) -> io::Result<MmapRaw> {
    if mapped_slots == 0 {
        return Err(io::Error::other("no slots to map"));
    }
    let len = u64::from(mapped_slots) * SLOT;
    file.set_len(HEADER + len)?;
    MmapOptions::new()
        .offset(HEADER)
        .len(len as usize)
        .map_raw(file)
}

/// Takes the exclusive `flock` of `file` without waiting (refused while another open file holds it).
/// (std's `File::try_lock` is newer than the workspace's `rust-version`.)
#[allow(unsafe_code)]
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

    /// The running jobs a separate open of the journal file reads: (slot, job id).
    fn read_back(journal: &Journal, id: &str) -> Vec<(u32, String)> {
        let bytes = std::fs::read(journal.path()).unwrap();
        let run = parse(journal.path(), &bytes, id).unwrap();
        run.running
            .into_iter()
            .map(|j| (j.slot, j.job_id))
            .collect()
    }

    #[test]
    fn records_stored_through_the_mapping_outlive_the_run() {
        let dir = temp_dir("mapped");
        let id = identity("redis://r:6379", "bull");
        let journal = Journal::create(&dir, &id).unwrap();
        let path = journal.path().to_owned();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER + u64::from(MAPPED_SLOTS) * SLOT
        );
        let long = journal
            .begin("q1", "a-rather-long-job-id-0001", "p")
            .unwrap();
        let other = journal.begin("q2", "42", "p2").unwrap();
        assert!(long.mapped && other.mapped);
        assert_eq!(
            read_back(&journal, &id),
            [(1, "a-rather-long-job-id-0001".into()), (2, "42".into())]
        );
        // Cleared through the mapping; the slot is reused by a shorter record, whose end hides the rest of
        // the old one.
        drop(long);
        assert_eq!(read_back(&journal, &id), [(2, "42".to_owned())]);
        let short = journal.begin("q1", "7", "p").unwrap();
        assert_eq!(short.slot(), 1);
        // The run dies inside both jobs: neither slot is cleared, and the crash note goes through the
        // descriptor as the signal handler writes it; then the mapping, the descriptor and the lock go.
        std::mem::forget(short);
        std::mem::forget(other);
        journal.file.write_all_at(b"crash 11 1\n", 0).unwrap();
        drop(journal);
        let mine = Journal::create(&dir, &id).unwrap();
        let dead = dead_runs(&dir, &id, mine.path()).unwrap();
        assert_eq!(dead.len(), 1);
        let run = &dead[0].0;
        assert_eq!(
            (run.path.as_path(), run.note),
            (path.as_path(), Some((11, 1)))
        );
        let running: Vec<(u32, &str, &str, &str)> = run
            .running
            .iter()
            .map(|j| {
                (
                    j.slot,
                    j.queue.as_str(),
                    j.job_id.as_str(),
                    j.plugin.as_str(),
                )
            })
            .collect();
        assert_eq!(running, [(1, "q1", "7", "p"), (2, "q2", "42", "p2")]);
        drop((dead, mine));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slots_beyond_the_mapping_are_written_with_pwrite() {
        let dir = temp_dir("beyond");
        let id = identity("redis://r:6379", "bull");
        let journal = Journal::create_mapping(&dir, &id, 2).unwrap();
        let a = journal.begin("q", "1", "p").unwrap();
        let b = journal.begin("q", "2", "p").unwrap();
        let c = journal.begin("q", "3", "p").unwrap();
        assert_eq!(
            [
                (a.slot(), a.mapped),
                (b.slot(), b.mapped),
                (c.slot(), c.mapped)
            ],
            [(1, true), (2, true), (3, false)]
        );
        let all = |ids: &[&str]| -> Vec<(u32, String)> {
            ids.iter()
                .map(|i| (i.parse().unwrap(), (*i).to_owned()))
                .collect()
        };
        assert_eq!(read_back(&journal, &id), all(&["1", "2", "3"]));
        drop(c);
        assert_eq!(read_back(&journal, &id), all(&["1", "2"]));
        drop(a);
        assert_eq!(read_back(&journal, &id), all(&["2"]));
        drop(b);
        assert_eq!(read_back(&journal, &id), all(&[]));

        // A file that cannot be mapped (here: no slots asked for) works as before, all through pwrite.
        let unmapped = Journal::create_mapping(&dir, &id, 0).unwrap();
        let d = unmapped.begin("q", "4", "p").unwrap();
        assert!(!d.mapped);
        assert_eq!(read_back(&unmapped, &id), [(1, "4".to_owned())]);
        drop(d);
        assert_eq!(read_back(&unmapped, &id), all(&[]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_that_cannot_be_read_back_are_not_written() {
        let dir = temp_dir("refused");
        let id = identity("redis://r:6379", "bull");
        let journal = Journal::create(&dir, &id).unwrap();
        let long_id = "x".repeat(SLOT as usize);
        for (queue, job_id) in [("q", long_id.as_str()), ("q\t2", "1"), ("q", "1\n")] {
            assert!(
                journal.begin(queue, job_id, "p").is_none(),
                "{queue:?} {job_id:?}"
            );
        }
        // The longest record that fits still does, newline included.
        let fits = "y".repeat(SLOT as usize - "q\t\tp\n".len());
        let entry = journal.begin("q", &fits, "p").unwrap();
        assert_eq!(read_back(&journal, &id), [(entry.slot(), fits.clone())]);
        drop(entry);
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
