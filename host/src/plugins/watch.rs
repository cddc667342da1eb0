//! Watching the plugin directory (hot reload), and reading a new build safely: the I/O half of hot reload
//! (`plugins/reload.rs` decides what a change means, `runtime/reloader/` applies it).
//!
//! - **Events.** One non-recursive inotify watch through `notify-debouncer-full`, which gathers a burst of
//!   events into one batch after a quiet period (`PLUGIN_WATCH_DEBOUNCE_MS`) and stitches a rename from a
//!   temporary name into events on the final name. A batch only says "look again": the reloader rescans the
//!   directory and compares each file's [`Fingerprint`] with the last one it saw.
//! - **Never a half-written file.** A file created or written to counts as *being written* until the watch
//!   reports it closed after writing; the reloader waits for that, then for its size and modification time to
//!   stay the same for two more debounce periods (the watch reports a write only after one quiet period), and
//!   only then reads it. The load stages check the ELF file
//!   against its real length as well, so a file cut short is refused, never mapped.
//! - **Private copies.** The dynamic loader caches libraries by path (opening the same path again returns the
//!   old code) and a library file written over in place while mapped corrupts the running code. Every build
//!   is therefore copied to `<PLUGIN_CACHE_DIR>/frostguard-worker-<pid>/` under a unique name and loaded from
//!   there; the copy stays while its build may serve (a plugin's child process loads it, again after a crash)
//!   and is removed once the build is retired or refused (the mapping keeps the image alive).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// How long a file may be reported as being written without a close before its size alone decides.
const WRITING_LIMIT: Duration = Duration::from_secs(60);

/// What identifies one state of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// Inode (a rename onto the name brings another one).
    pub inode: u64,
}

impl Fingerprint {
    /// The fingerprint of `path` now.
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Fingerprint {
            len: meta.len(),
            mtime_ns,
            inode: meta.ino(),
        })
    }
}

/// The plugin files of `dir` with their fingerprints (files that vanish while listed are left out).
pub fn scan(dir: &Path) -> Result<BTreeMap<PathBuf, Fingerprint>, String> {
    Ok(super::plugin_files_quiet(dir)?
        .into_iter()
        .filter_map(|path| Fingerprint::of(&path).ok().map(|f| (path, f)))
        .collect())
}

/// What one debounced batch said about individual files.
#[derive(Debug, Default)]
pub struct Batch {
    /// Files created or written to (being written until closed).
    pub written: Vec<PathBuf>,
    /// Files closed after writing.
    pub closed: Vec<PathBuf>,
}

/// The directory watch; dropping it stops watching.
pub struct DirWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl DirWatch {
    /// Watches `dir`; every debounced batch is sent to the returned receiver.
    pub fn start(
        dir: &Path,
        debounce: Duration,
    ) -> Result<(DirWatch, mpsc::UnboundedReceiver<Batch>), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) => {
                    // Opening and reading (the reloader's own scans and reads included) changes nothing;
                    // answering them with a rescan would loop.
                    let relevant = events.iter().any(|e| match e.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    });
                    if !relevant {
                        return;
                    }
                    let mut batch = Batch::default();
                    for event in events {
                        let list = match event.kind {
                            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                                Some(&mut batch.written)
                            }
                            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                                Some(&mut batch.closed)
                            }
                            _ => None,
                        };
                        if let Some(list) = list {
                            list.extend(event.paths.iter().cloned());
                        }
                    }
                    let _ = tx.send(batch);
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "plugin directory watch error");
                    }
                    // Look again anyway: an overflow of the event queue loses events, not changes.
                    let _ = tx.send(Batch::default());
                }
            }
        })
        .map_err(|e| format!("cannot watch the plugin directory: {e}"))?;
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch the plugin directory {}: {e}", dir.display()))?;
        Ok((
            DirWatch {
                _debouncer: debouncer,
            },
            rx,
        ))
    }
}

/// Files reported as being written and not closed yet.
#[derive(Debug, Default)]
pub struct Writing {
    since: BTreeMap<PathBuf, Instant>,
}

impl Writing {
    /// Takes in one batch.
    pub fn update(&mut self, batch: &Batch) {
        // Events of a batch are in order per file, but the lists lose that order across the two kinds: a
        // close reported in the same batch as the write ends it.
        for p in &batch.written {
            self.since.entry(p.clone()).or_insert_with(Instant::now);
        }
        for p in &batch.closed {
            self.since.remove(p);
        }
    }

    /// Whether `path` is still being written (a writer that never closes is trusted after a minute).
    pub fn is_writing(&self, path: &Path) -> bool {
        self.since
            .get(path)
            .is_some_and(|t| t.elapsed() < WRITING_LIMIT)
    }

    /// Forgets files that are gone.
    pub fn retain_existing(&mut self, present: &BTreeSet<&PathBuf>) {
        self.since.retain(|p, _| present.contains(p));
    }
}

/// Where private copies of plugin builds are made.
#[derive(Debug)]
pub struct PrivateCopies {
    dir: PathBuf,
    seq: AtomicU64,
}

/// A build copied for loading.
#[derive(Debug)]
pub struct Copied {
    /// The copy (removed once its build serves no more).
    pub path: PathBuf,
    /// SHA-256 of the content, in hex.
    pub digest: String,
}

impl PrivateCopies {
    /// A fresh directory for this process under `parent`.
    pub fn create(parent: &Path) -> Result<PrivateCopies, String> {
        let dir = parent.join(format!("frostguard-worker-{}", std::process::id()));
        // A directory left by an earlier process with the same pid is stale.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create the private plugin copy directory {} (PLUGIN_CACHE_DIR): {e}",
                dir.display()
            )
        })?;
        Ok(PrivateCopies {
            dir,
            seq: AtomicU64::new(0),
        })
    }

    /// Copies `source` under a name no earlier copy had.
    pub fn copy(&self, source: &Path) -> std::io::Result<Copied> {
        let bytes = std::fs::read(source)?;
        let digest = hex(&Sha256::digest(&bytes));
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(
            "{stem}.{seq}.{}{}",
            &digest[..12],
            std::env::consts::DLL_SUFFIX
        ));
        std::fs::write(&path, &bytes)?;
        Ok(Copied { path, digest })
    }

    /// The directory of this process's copies.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory (at exit; mapped copies stay mapped).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SHA-256 of a file's content, in hex.
pub fn digest_of(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mapped size in bytes of every file of `/proc/self/maps` whose path contains `needle` (a private copy),
/// grouped by path: what old plugin images cost the process.
pub fn mapped_bytes(needle: &str) -> BTreeMap<String, u64> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return BTreeMap::new();
    };
    mapped_bytes_in(&maps, needle)
}

fn mapped_bytes_in(maps: &str, needle: &str) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let Some(range) = fields.next() else { continue };
        let Some(path) = fields.nth(4).map(str::trim) else {
            continue;
        };
        if !path.contains(needle) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let path = path.trim_end_matches(" (deleted)").to_owned();
        *sizes.entry(path).or_insert(0) += end.saturating_sub(start);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_being_written_from_its_creation_to_its_close() {
        let mut w = Writing::default();
        let a = PathBuf::from("/p/a.so");
        let b = PathBuf::from("/p/b.so");
        let table: [(Batch, bool, bool); 4] = [
            (
                Batch {
                    written: vec![a.clone()],
                    closed: vec![],
                },
                true,
                false,
            ),
            (
                Batch {
                    written: vec![b.clone()],
                    closed: vec![b.clone()],
                },
                true,
                false,
            ),
            (Batch::default(), true, false),
            (
                Batch {
                    written: vec![],
                    closed: vec![a.clone()],
                },
                false,
                false,
            ),
        ];
        for (i, (batch, a_writing, b_writing)) in table.into_iter().enumerate() {
            w.update(&batch);
            assert_eq!(w.is_writing(&a), a_writing, "batch {i}, a");
            assert_eq!(w.is_writing(&b), b_writing, "batch {i}, b");
        }
    }

    #[test]
    fn mapped_sizes_are_summed_per_copy() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 12 /tmp/fw/libx.0.abc.so (deleted)
7f0000001000-7f0000004000 r-xp 00001000 08:01 12 /tmp/fw/libx.0.abc.so (deleted)
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
7f0000005000-7f0000006000 r--p 00000000 08:01 13 /tmp/fw/libx.1.def.so
7f0000006000-7f0000007000 r--p 00000000 08:01 14 /usr/lib/libc.so.6";
        let sizes = mapped_bytes_in(maps, "/tmp/fw/");
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            vec![
                ("/tmp/fw/libx.0.abc.so".to_owned(), 0x4000),
                ("/tmp/fw/libx.1.def.so".to_owned(), 0x1000)
            ]
        );
    }

    #[test]
    fn copies_never_share_a_name() {
        let parent = std::env::temp_dir().join(format!("fg-copies-test-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let src = parent.join("libp.so");
        std::fs::write(&src, b"same bytes").unwrap();
        let copies = PrivateCopies::create(&parent).unwrap();
        let one = copies.copy(&src).unwrap();
        let two = copies.copy(&src).unwrap();
        assert_ne!(one.path, two.path);
        assert_eq!(one.digest, two.digest);
        assert_eq!(one.digest, digest_of(&src).unwrap());
        assert_eq!(std::fs::read(&two.path).unwrap(), b"same bytes");
        copies.remove();
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
