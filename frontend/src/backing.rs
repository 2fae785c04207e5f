//! [`BackingFile`]: a frontend's own device for the pages a pool refuses — frontswap's swap
//! device. Page `p` lives at byte `p * page_size`; a page that leaves the file (it went to the
//! pool, or was discarded) is punched out, so the file stays sparse and its allocated ranges
//! are exactly the pages it holds.
//!
//! Two frontends use it: the userfaultfd [`Region`](super::region::Region) (an unlinked
//! temporary file, [`BackingFile::temporary`]) and the host's block devices (a named file sized
//! to the device, [`BackingFile::open`], locked so two devices never share one).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A sparse file of pages.
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    page_size: u64,
}

impl BackingFile {
    /// An unlinked read-write file in `dir` (`O_TMPFILE`, or a unique name unlinked at once
    /// where the file system has no `O_TMPFILE`): nothing is left behind when it is closed.
    pub fn temporary(dir: &Path, page_size: usize) -> io::Result<BackingFile> {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("creating the backing file in {}: {e}", dir.display()));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
        {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let name =
                    dir.join(format!(".tmem-region-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&name)
                    .map_err(context)?;
                std::fs::remove_file(&name).map_err(context)?;
                file
            }
            Err(e) => return Err(context(e)),
        };
        Ok(BackingFile { file, page_size: page_size as u64 })
    }

    /// Opens (creating it, mode 0600, if missing) the file at `path` for a device of `len`
    /// bytes, takes an exclusive lock on it (`flock`: a file another device or process holds
    /// is refused with `WouldBlock`), and sizes it to `len` (sparse: no blocks are allocated).
    /// With `keep` false every byte already in it is punched out (a new device reads zeros).
    pub fn open(path: &Path, len: u64, page_size: usize, keep: bool) -> io::Result<BackingFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another device or process", path.display()),
                )
            } else {
                e
            });
        }
        let backing = BackingFile { file, page_size: page_size as u64 };
        let old_len = backing.file.metadata()?.len();
        if !keep && old_len > 0 {
            backing.punch_bytes(0, old_len)?;
        }
        backing.file.set_len(len)?;
        Ok(backing)
    }

    /// Reads page `p` into `buf` (one page long).
    pub fn read_page(&self, p: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, p * self.page_size)
    }

    /// Writes page `p` (`bytes` is one page long).
    pub fn write_page(&self, p: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, p * self.page_size)
    }

    /// Punches `count` pages from page `p` out of the file (they read as zeros and take no
    /// space).
    pub fn punch(&self, p: u64, count: u64) -> io::Result<()> {
        self.punch_bytes(p * self.page_size, count * self.page_size)
    }

    fn punch_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own descriptor.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The pages of the first `pages` that hold data (not holes), as `(first, count)` runs,
    /// found with `SEEK_DATA`/`SEEK_HOLE`.
    pub fn allocated(&self, pages: u64) -> io::Result<Vec<(u64, u64)>> {
        let end = pages * self.page_size;
        let fd = self.file.as_raw_fd();
        let mut runs = Vec::new();
        let mut at = 0u64;
        while at < end {
            // SAFETY: lseek on our own descriptor.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(e);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let (data, hole) = (data as u64, (hole as u64).min(end));
            if data >= end {
                break;
            }
            let first = data / self.page_size;
            let last = hole.div_ceil(self.page_size);
            runs.push((first, last - first));
            at = hole.max(data + 1);
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_punched_pages_leave_the_allocated_runs() {
        let path = std::env::temp_dir().join(format!("tmem-backing-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = BackingFile::open(&path, 64 * 4096, 4096, false).unwrap();
        assert!(BackingFile::open(&path, 64 * 4096, 4096, false).unwrap_err().kind() == io::ErrorKind::WouldBlock);
        for p in [3u64, 4, 5, 40] {
            file.write_page(p, &[p as u8; 4096]).unwrap();
        }
        let mut buf = vec![0u8; 4096];
        file.read_page(40, &mut buf).unwrap();
        assert_eq!(buf, vec![40u8; 4096]);
        file.punch(4, 1).unwrap();
        file.read_page(4, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
        // tmpfs and ext4 report page-granular holes; some file systems round up, never down.
        let runs = file.allocated(64).unwrap();
        for p in [3u64, 5, 40] {
            assert!(runs.iter().any(|&(f, n)| (f..f + n).contains(&p)), "page {p} in {runs:?}");
        }
        drop(file);
        let reopened = BackingFile::open(&path, 64 * 4096, 4096, false).unwrap();
        assert!(reopened.allocated(64).unwrap().is_empty(), "a new device starts with no data");
        std::fs::remove_file(&path).unwrap();
    }
}
