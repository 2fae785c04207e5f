//! Persistent pools: the pool's own sled database (`DATA_DIR/pools/NAME-ID/`) behind the host
//! page store of a store granted `storage`, and **when** changes reach the disk.
//!
//! Durability (the full statement is `docs/durability.md`):
//!
//! - [`Durability::Sync`]: the pool calls [`PoolDisk::make_durable`] after every change (store,
//!   invalidate, invalidate_area, exclusive load) and acknowledges only when it returns. Calls
//!   from many threads share flushes (**group commit**): a flusher thread takes every request
//!   made so far, flushes once, and wakes all of them; requests that arrive during a flush are
//!   served by the next one. One fsync per batch, not per page.
//! - [`Durability::Written`]: as `Sync`, but a flush writes the database's log to the kernel
//!   and does not wait for the disk (no `fdatasync`, no blob sync): acknowledged changes
//!   survive a crash or SIGKILL of the host (the page cache is the kernel's), not a power loss
//!   — a swap pool's mode, where a swap-out must never wait on the file system's journal.
//! - [`Durability::Periodic`]: `make_durable` only notes that something changed; the flusher
//!   flushes at most every interval. sled recovers a prefix of its log, so after a crash the
//!   pool is as it was at one moment no more than the interval (plus one flush) before the
//!   crash: whole pages, each the latest version as of that moment.
//!
//! One database per pool keeps pools independent: one pool's flushes never wait for another's
//! writes, and destroying a pool deletes its directory, so its space is returned at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::pool::PoolError;

/// When a persistent pool's changes are acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After they are on disk.
    #[default]
    Sync,
    /// At once; on disk within the interval.
    Periodic(Duration),
    /// After they are written to the kernel (the host's crash cannot lose them; a power loss
    /// can).
    Written,
}

impl Durability {
    /// Whether every change is flushed before it is acknowledged (`Sync`, `Written`).
    pub fn flushes_each_change(self) -> bool {
        matches!(self, Durability::Sync | Durability::Written)
    }

    /// Whether a flush waits for the disk (everything but `Written`).
    fn to_disk(self) -> bool {
        self != Durability::Written
    }
}

/// What sled (0.34) leaves out of its own flush, which is no durability barrier against a
/// power loss — the guest's power-loss test (`tests/guest/power-loss.sh`, a dm-flakey cut) lost
/// both until they were added here:
///
/// - its **log** (`db`): sled's flush writes it with `sync_file_range`, which writes the data
///   pages but neither the file's size and block allocation (the file system's journal) nor
///   the disk's cache: after a cut the log of a pool was back to its last journal commit and
///   every acknowledged page since was gone. [`SledFiles::flush`] `fdatasync`s the log after
///   sled's flush;
/// - the files it never syncs at all: `conf`, written when the database is made, and each
///   **blob** — a value above about a quarter of a segment (128 KiB: the catalog's plugin
///   modules, a pool's pages of 128 KiB and more) lives in a file of its own under `blobs/`,
///   which the log only points to: after a cut the catalog's modules were empty blobs and no
///   pool could be restored. They are synced before every flush of the log, so what the log
///   points to is durable first.
pub(crate) struct SledFiles {
    dir: PathBuf,
    /// The log, `DIR/db` (read-only: `fdatasync` needs no more).
    log: std::fs::File,
    /// The blob files synced so far (a blob is written once, under a name of its own).
    synced: Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

/// `fsync` of the file or directory at `path`.
fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl SledFiles {
    /// For the database just opened in `dir`: its `conf`, its blobs, its log, the directory
    /// and the directory's entry in its parent are made durable.
    pub(crate) fn open(dir: &Path) -> std::io::Result<SledFiles> {
        let log = std::fs::File::open(dir.join("db"))?;
        log.sync_data()?;
        let files = SledFiles { dir: dir.to_path_buf(), log, synced: Mutex::new(Default::default()) };
        match sync_path(&dir.join("conf")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        files.sync()?;
        sync_path(dir)?;
        if let Some(parent) = dir.parent() {
            sync_path(parent)?;
        }
        Ok(files)
    }

    /// Syncs every blob file not synced yet, then (when there was one) the blobs directory.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced.lock();
        let mut present = std::collections::HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match sync_path(&entry.path()) {
                    Ok(()) => new = true,
                    // Removed meanwhile (sled's blob collection).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        if new {
            sync_path(&blobs)?;
        }
        *synced = present;
        Ok(())
    }

    /// [`SledFiles::sync`], sled's flush of the log, then `fdatasync` of the log; without
    /// `to_disk` ([`Durability::Written`]) sled's flush alone, which writes its buffers to the
    /// kernel.
    pub(crate) fn flush(&self, db: &sled::Db, to_disk: bool) -> sled::Result<()> {
        if !to_disk {
            return db.flush().map(drop);
        }
        self.sync().map_err(sled::Error::Io)?;
        db.flush()?;
        self.log.sync_data().map_err(sled::Error::Io)
    }
}

/// The default flush interval of periodic durability.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Opens a sled database, waiting up to two seconds for the lock of one just closed in this
/// process: sled's background threads let go of the file lock a moment after the database is
/// dropped, so an immediate reopen (a host restarted in-process) would otherwise fail.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Bytes of a pool database's page cache (sled's), charged to the host's memory budget while
/// the pool lives: a persistent pool costs this much host memory besides its index.
pub const CACHE_BYTES: u64 = 64 << 20;

/// The longest flush interval accepted.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

impl Durability {
    /// Checks the mode makes sense (a periodic interval from 1 ms to [`MAX_FLUSH_INTERVAL`]).
    pub fn check(self) -> Result<(), PoolError> {
        match self {
            Durability::Periodic(interval) if interval.is_zero() || interval > MAX_FLUSH_INTERVAL => {
                Err(PoolError::BadFlushInterval(interval))
            }
            _ => Ok(()),
        }
    }
}

/// A failure of a persistent pool's database: the host's disk, never the client's mistake.
/// The text names paths and sled's or the OS's own words, so it belongs in the host's log,
/// not in an API response.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The database cannot be opened or created.
    #[error("cannot open the pool database {}: {source}", dir.display())]
    Open {
        /// The database's directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A shard's tree cannot be opened.
    #[error("cannot open shard {shard}'s tree: {source}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What sled said.
        source: sled::Error,
    },
    /// The flusher thread cannot be started.
    #[error("cannot start the flusher thread: {0}")]
    Flusher(#[source] std::io::Error),
    /// An explicit flush failed.
    #[error("flush of {} failed: {source}", dir.display())]
    Flush {
        /// The database's directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The flush that was to make a change durable failed (group commit).
    #[error("the pool database could not be flushed: {0}")]
    FlushFailed(sled::Error),
    /// The database is closing: the change may not be on disk.
    #[error("the pool is closing")]
    Closing,
    /// A kept pool's database directory is gone.
    #[error("its database {} is missing", .0.display())]
    Missing(PathBuf),
    /// The lost-pages tree (a block device's) could not be read or written.
    #[error("the lost-pages record of {} failed: {source}", dir.display())]
    LostPages {
        /// The database's directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
}

/// The tree of a pool database that keeps its block device's **lost** pages (offsets whose
/// only copy the pool lost: they read as EIO until written again, also after a restart).
const LOST_TREE: &str = "device-lost";

struct CommitState {
    durability: Durability,
    /// Tickets handed out to sync callers (each waits until `durable >= its ticket`).
    requested: u64,
    /// Every ticket up to this one is on disk (or failed, see `failed_through`).
    durable: u64,
    /// The last ticket covered by a flush that failed.
    failed_through: u64,
    failure: Option<sled::Error>,
    /// Something changed since the last flush (periodic mode).
    dirty: bool,
    stop: bool,
}

struct Commit {
    state: Mutex<CommitState>,
    /// Wakes the flusher: a ticket was taken, the mode changed, or stop.
    work: Condvar,
    /// Wakes sync callers: a flush finished.
    done: Condvar,
}

/// A persistent pool's database and its flusher.
pub struct PoolDisk {
    /// The database's page cache, charged to the host's memory budget.
    cache: Mutex<Option<crate::memory::budget::Charge>>,
    db: sled::Db,
    files: Arc<SledFiles>,
    dir: PathBuf,
    commit: Arc<Commit>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Bytes the database uses on disk, updated after every flush.
    size_on_disk: Arc<std::sync::atomic::AtomicU64>,
    remove_on_drop: AtomicBool,
    /// Test-only fault injection: while set, every flush fails as a failing disk's would.
    #[cfg(test)]
    fail_flushes: Arc<AtomicBool>,
}

impl std::fmt::Debug for PoolDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolDisk").field("dir", &self.dir).finish()
    }
}

impl PoolDisk {
    /// Opens (or creates) the database in `dir` and starts its flusher.
    pub fn open(dir: &Path, durability: Durability) -> Result<Arc<Self>, DiskError> {
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).flush_every_ms(None);
        let db = open_sled(&config).map_err(|source| DiskError::Open { dir: dir.to_path_buf(), source })?;
        let files = Arc::new(
            SledFiles::open(dir).map_err(|e| DiskError::Open { dir: dir.to_path_buf(), source: sled::Error::Io(e) })?,
        );
        let commit = Arc::new(Commit {
            state: Mutex::new(CommitState {
                durability,
                requested: 0,
                durable: 0,
                failed_through: 0,
                failure: None,
                dirty: false,
                stop: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let size_on_disk = Arc::new(std::sync::atomic::AtomicU64::new(db.size_on_disk().unwrap_or(0)));
        let fail_flushes = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (db, files, commit, size) = (db.clone(), files.clone(), commit.clone(), size_on_disk.clone());
            let fail = fail_flushes.clone();
            let name = format!("tmem-flush-{}", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn(move || run_flusher(&db, &files, &commit, &size, &fail))
                .map_err(DiskError::Flusher)?
        };
        Ok(Arc::new(PoolDisk {
            cache: Mutex::new(None),
            db,
            files,
            dir: dir.to_path_buf(),
            commit,
            flusher: Mutex::new(Some(flusher)),
            size_on_disk,
            remove_on_drop: AtomicBool::new(false),
            #[cfg(test)]
            fail_flushes,
        }))
    }

    /// Holds `charge` (the cache's bytes charged to the host's budget) while the database lives.
    pub fn hold_cache_charge(&self, charge: crate::memory::budget::Charge) {
        *self.cache.lock() = Some(charge);
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tree of one pool shard.
    pub fn shard_tree(&self, shard: usize) -> Result<sled::Tree, DiskError> {
        self.db.open_tree(format!("shard-{shard}")).map_err(|source| DiskError::Shard { shard, source })
    }

    /// The current durability mode.
    pub fn durability(&self) -> Durability {
        self.commit.state.lock().durability
    }

    /// Changes the durability mode (takes effect for the next change; switching to sync
    /// flushes at once).
    pub fn set_durability(&self, durability: Durability) {
        let mut state = self.commit.state.lock();
        state.durability = durability;
        state.dirty = true;
        self.commit.work.notify_one();
    }

    /// Called after a change: in sync mode returns once it is on disk (sharing the flush with
    /// every concurrent caller); in periodic mode returns at once.
    pub fn make_durable(&self) -> Result<(), DiskError> {
        let mut state = self.commit.state.lock();
        if !state.dirty {
            // The flusher sleeps while nothing is dirty: start its interval now.
            self.commit.work.notify_one();
        }
        state.dirty = true;
        if !state.durability.flushes_each_change() {
            return Ok(());
        }
        state.requested += 1;
        let ticket = state.requested;
        self.commit.work.notify_one();
        while state.durable < ticket && !state.stop {
            self.commit.done.wait(&mut state);
        }
        if state.failed_through >= ticket
            && let Some(failure) = &state.failure
        {
            return Err(DiskError::FlushFailed(failure.clone()));
        }
        if state.durable < ticket {
            return Err(DiskError::Closing);
        }
        Ok(())
    }

    /// Records page `offset` of the pool's block device as lost (`lost`) or no longer lost,
    /// and flushes: when this returns `Ok`, a restart sees it. Not on any hot path — a page is
    /// lost only when a copy could not be kept.
    pub fn set_lost(&self, offset: u64, lost: bool) -> Result<(), DiskError> {
        let failed = |source| DiskError::LostPages { dir: self.dir.clone(), source };
        let tree = self.db.open_tree(LOST_TREE).map_err(failed)?;
        if lost {
            tree.insert(offset.to_be_bytes(), &[][..]).map_err(failed)?;
        } else if tree.remove(offset.to_be_bytes()).map_err(failed)?.is_none() {
            return Ok(());
        }
        self.flush()
    }

    /// The block device's lost pages, in order.
    pub fn lost_pages(&self) -> Result<Vec<u64>, DiskError> {
        let failed = |source| DiskError::LostPages { dir: self.dir.clone(), source };
        let tree = self.db.open_tree(LOST_TREE).map_err(failed)?;
        tree.iter()
            .keys()
            .map(|k| {
                let k = k.map_err(failed)?;
                Ok(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8])))
            })
            .collect()
    }

    /// Forgets every lost page (a new device over the pool), and flushes.
    pub fn clear_lost(&self) -> Result<(), DiskError> {
        let failed = |source| DiskError::LostPages { dir: self.dir.clone(), source };
        let tree = self.db.open_tree(LOST_TREE).map_err(failed)?;
        if tree.is_empty() {
            return Ok(());
        }
        tree.clear().map_err(failed)?;
        self.flush()
    }

    /// Flushes everything now, whatever the mode.
    pub fn flush(&self) -> Result<(), DiskError> {
        #[cfg(test)]
        if self.fail_flushes.load(Ordering::Relaxed) {
            return Err(DiskError::Flush { dir: self.dir.clone(), source: io_failure("injected flush failure") });
        }
        self.files
            .flush(&self.db, self.durability().to_disk())
            .map_err(|source| DiskError::Flush { dir: self.dir.clone(), source })
    }

    /// Test-only fault injection: while `fail` is set, every flush (the flusher's and
    /// [`PoolDisk::flush`]) fails as a failing disk's would.
    #[cfg(test)]
    pub(crate) fn fail_flushes(&self, fail: bool) {
        self.fail_flushes.store(fail, Ordering::Relaxed);
    }

    /// Bytes the database uses on disk (as of the last flush).
    pub fn size_on_disk(&self) -> u64 {
        self.size_on_disk.load(Ordering::Relaxed)
    }

    /// Deletes the directory once the last user of the database is gone (pool destroyed).
    pub fn remove_when_dropped(&self) {
        self.remove_on_drop.store(true, Ordering::Relaxed);
    }
}

/// `fail`: test-only fault injection (see [`PoolDisk::fail_flushes`]); never set otherwise.
fn run_flusher(
    db: &sled::Db,
    files: &SledFiles,
    commit: &Commit,
    size_on_disk: &std::sync::atomic::AtomicU64,
    fail: &AtomicBool,
) {
    let mut last_flush = Instant::now();
    loop {
        let (target, to_disk) = {
            let mut state = commit.state.lock();
            loop {
                if state.stop {
                    return;
                }
                if state.requested > state.durable {
                    break;
                }
                match state.durability {
                    Durability::Periodic(interval) if state.dirty => {
                        let due = last_flush + interval;
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        commit.work.wait_for(&mut state, due - now);
                    }
                    _ => {
                        commit.work.wait(&mut state);
                    }
                }
            }
            state.dirty = false;
            (state.requested, state.durability.to_disk())
        };
        let result = if cfg!(test) && fail.load(Ordering::Relaxed) {
            Err(sled::Error::Io(std::io::Error::other("injected flush failure")))
        } else {
            files.flush(db, to_disk)
        };
        last_flush = Instant::now();
        if let Ok(size) = db.size_on_disk() {
            size_on_disk.store(size, Ordering::Relaxed);
        }
        let mut state = commit.state.lock();
        if let Err(e) = result {
            tracing::error!("pool database flush failed: {e}");
            state.failed_through = target;
            state.failure = Some(e);
        }
        state.durable = state.durable.max(target);
        commit.done.notify_all();
    }
}

impl Drop for PoolDisk {
    fn drop(&mut self) {
        {
            let mut state = self.commit.state.lock();
            state.stop = true;
            self.commit.work.notify_all();
            self.commit.done.notify_all();
        }
        if let Some(flusher) = self.flusher.lock().take() {
            let _ = flusher.join();
        }
        if self.remove_on_drop.load(Ordering::Relaxed) {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), "could not remove a destroyed pool's database: {e}");
            }
        } else if let Err(e) = self.files.flush(&self.db, true) {
            tracing::error!(dir = %self.dir.display(), "final flush of a pool database failed: {e}");
        }
    }
}

/// A storage error carrying `text`, for tests of how storage failures are reported (so they
/// need not name the storage engine).
#[cfg(test)]
pub(crate) fn io_failure(text: &str) -> sled::Error {
    sled::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tmem-persist-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sync_callers_share_flushes_and_see_their_writes_after_reopening() {
        let dir = dir("sync");
        {
            let disk = PoolDisk::open(&dir, Durability::Sync).unwrap();
            let tree = disk.shard_tree(0).unwrap();
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let (disk, tree) = (&disk, &tree);
                    s.spawn(move || {
                        for i in 0..50u64 {
                            tree.insert((t * 1000 + i).to_be_bytes(), &b"page"[..]).unwrap();
                            disk.make_durable().unwrap();
                        }
                    });
                }
            });
            assert!(disk.size_on_disk() > 0);
        }
        let disk = PoolDisk::open(&dir, Durability::Sync).unwrap();
        assert_eq!(disk.shard_tree(0).unwrap().len(), 400);
        disk.remove_when_dropped();
        drop(disk);
        assert!(!dir.exists(), "a destroyed pool's directory is removed");
    }

    #[test]
    fn periodic_mode_acknowledges_at_once_and_flushes_within_the_interval() {
        let dir = dir("periodic");
        let disk = PoolDisk::open(&dir, Durability::Periodic(Duration::from_millis(20))).unwrap();
        let tree = disk.shard_tree(1).unwrap();
        tree.insert(1u64.to_be_bytes(), &b"x"[..]).unwrap();
        disk.make_durable().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while disk.size_on_disk() == 0 || disk.commit.state.lock().dirty {
            assert!(Instant::now() < deadline, "the flusher did not flush");
            std::thread::sleep(Duration::from_millis(5));
        }
        disk.set_durability(Durability::Sync);
        tree.insert(2u64.to_be_bytes(), &b"y"[..]).unwrap();
        disk.make_durable().unwrap();
        disk.remove_when_dropped();
    }
}
