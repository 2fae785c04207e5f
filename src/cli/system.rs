//! The machine's side of `tmem swap`: what the kernel says (`/proc/swaps`, `MemTotal`, which
//! block drivers it has), the checks made before anything is created (root, room for the
//! backing file), and the system tools it runs (`modprobe`, `mkswap`, `swapon`, `swapoff`,
//! `nbd-client`). The parsers are pure functions over text, tested below; everything else is a
//! thin call with its failure typed as a [`SystemError`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Why the machine cannot do what `tmem swap` asks.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// Not root: mkswap, swapon and the block drivers need it.
    #[error(
        "tmem swap {what} needs root (it runs mkswap, turns swap on and off and makes block devices): run it with sudo"
    )]
    NotRoot {
        /// `on` or `off`.
        what: &'static str,
    },
    /// Neither ublk nor NBD is available.
    #[error(
        "no block driver for a swap device: ublk is not available ({ublk}), and NBD, the fallback, is not either ({nbd})"
    )]
    NoDriver {
        /// Why not ublk.
        ublk: String,
        /// Why not NBD.
        nbd: String,
    },
    /// The one transport asked for is not available.
    #[error("{transport} is not available: {why}")]
    Unavailable {
        /// `ublk` or `NBD`.
        transport: &'static str,
        /// Why not.
        why: String,
    },
    /// The backing file's file system has no room for it.
    #[error(
        "no room for the backing file {path}: it is reserved at the device's size, {need} bytes, and its file system has {free} bytes free (pass a smaller --size, or --backing on a larger disk)"
    )]
    NoRoom {
        /// The backing file.
        path: PathBuf,
        /// Bytes it needs.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// A file could not be read or examined.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tool failed (or could not be run).
    #[error("{command} failed: {why}")]
    Tool {
        /// The command line.
        command: String,
        /// Its status and standard error, or why it could not start.
        why: String,
    },
    /// swapon(2) or swapoff(2) failed.
    #[error("{call} {path}: {source}{hint}")]
    Swap {
        /// `swapon` or `swapoff`.
        call: &'static str,
        /// The device.
        path: String,
        /// What the kernel said.
        source: std::io::Error,
        /// What it usually means.
        hint: &'static str,
    },
    /// A block device did not appear.
    #[error("{path} did not appear within {seconds} s")]
    NoDevice {
        /// The device node.
        path: PathBuf,
        /// How long it was waited for.
        seconds: u64,
    },
}

/// One active swap area, a line of `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapArea {
    /// The device or file, as the kernel names it.
    pub path: String,
    /// Its size, in KiB.
    pub size_kib: u64,
    /// What of it is in use, in KiB.
    pub used_kib: u64,
    /// Its priority.
    pub priority: i32,
}

/// Parses `/proc/swaps` (a header line, then `Filename Type Size Used Priority`).
pub fn parse_swaps(text: &str) -> Vec<SwapArea> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [path, _kind, size, used, priority] = words[..] else { return None };
            Some(SwapArea {
                // The kernel escapes spaces and the like as octal (`\040`).
                path: path.replace("\\040", " "),
                size_kib: size.parse().ok()?,
                used_kib: used.parse().ok()?,
                priority: priority.parse().ok()?,
            })
        })
        .collect()
}

/// The active swap areas.
pub fn swaps() -> Result<Vec<SwapArea>, SystemError> {
    let path = Path::new("/proc/swaps");
    let text = std::fs::read_to_string(path).map_err(|source| SystemError::Io { path: path.into(), source })?;
    Ok(parse_swaps(&text))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The machine's RAM, in bytes.
pub fn mem_total() -> Result<u64, SystemError> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|source| SystemError::Io { path: path.into(), source })?;
    parse_mem_total(&text).ok_or_else(|| SystemError::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemTotal line"),
    })
}

/// Fails unless this process is root.
pub fn require_root(what: &'static str) -> Result<(), SystemError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 { Ok(()) } else { Err(SystemError::NotRoot { what }) }
}

/// Bytes an unprivileged writer may still allocate on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, SystemError> {
    use std::os::unix::ffi::OsStrExt;
    let io = |source| SystemError::Io { path: path.into(), source };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path")))?;
    // SAFETY: statvfs writes only into `stat`; the path is a valid NUL-terminated string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Checks that a backing file of `size` bytes fits at `path` before anything is made: a block
/// device (the host checks its size) or an existing file of that size needs nothing more; any
/// other file needs `size` bytes free (less what it already has) in its file system.
pub fn check_room(path: &Path, size: u64) -> Result<(), SystemError> {
    use std::os::unix::fs::FileTypeExt;
    let existing = match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => return Ok(()),
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => return Err(SystemError::Io { path: path.into(), source }),
    };
    let need = size.saturating_sub(existing);
    if need == 0 {
        return Ok(());
    }
    // The nearest directory that exists (the host makes the missing ones).
    let mut dir = path.parent().unwrap_or(Path::new("/"));
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let free = free_bytes(dir)?;
    if free < need { Err(SystemError::NoRoom { path: path.into(), need: size, free }) } else { Ok(()) }
}

/// Where ublk stands: `Ok` when `/dev/ublk-control` exists (after a `modprobe ublk_drv` if it
/// did not), else why not.
pub fn ublk_available() -> Result<(), String> {
    let control = Path::new("/dev/ublk-control");
    if control.exists() {
        return Ok(());
    }
    let loaded = modprobe("ublk_drv");
    if control.exists() {
        return Ok(());
    }
    Err(match loaded {
        Ok(()) => {
            "modprobe ublk_drv ran but /dev/ublk-control is still missing (Linux 6.0+ with CONFIG_BLK_DEV_UBLK)".into()
        }
        Err(why) => format!("/dev/ublk-control is missing and {why}"),
    })
}

/// Where NBD stands: `Ok(nbd-client's path)` when the kernel has NBD devices (after a
/// `modprobe nbd` if it had none) and nbd-client is installed, else why not.
pub fn nbd_available() -> Result<PathBuf, String> {
    let client = find_program("nbd-client").ok_or("nbd-client is not installed (apt install nbd-client)")?;
    let has_devices = || Path::new("/sys/block/nbd0").exists();
    if has_devices() {
        return Ok(client);
    }
    let loaded = modprobe("nbd");
    if has_devices() {
        return Ok(client);
    }
    Err(match loaded {
        Ok(()) => "modprobe nbd ran but there is no /dev/nbd0".into(),
        Err(why) => format!("there is no /dev/nbd0 and {why}"),
    })
}

/// The first NBD device no client holds (`/dev/nbdN` with no `pid` and size 0).
pub fn free_nbd_device() -> Option<PathBuf> {
    (0..1024).map(|n| format!("nbd{n}")).take_while(|name| Path::new("/sys/block").join(name).exists()).find_map(
        |name| {
            let sys = Path::new("/sys/block").join(&name);
            let size = std::fs::read_to_string(sys.join("size")).ok()?;
            (!sys.join("pid").exists() && size.trim() == "0").then(|| Path::new("/dev").join(&name))
        },
    )
}

fn modprobe(module: &str) -> Result<(), String> {
    let program = find_program("modprobe").ok_or_else(|| format!("there is no modprobe to load {module}"))?;
    let output = Command::new(&program).arg(module).output().map_err(|e| format!("modprobe {module}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("modprobe {module} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// An executable of `PATH` or the sbin directories (where Debian keeps mkswap and nbd-client).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `program args`, failing with its status and standard error.
pub fn run(program: &str, args: &[&str]) -> Result<(), SystemError> {
    let command = format!("{program} {}", args.join(" "));
    let path = find_program(program)
        .ok_or_else(|| SystemError::Tool { command: command.clone(), why: format!("{program} is not installed") })?;
    let output = Command::new(path)
        .args(args)
        .output()
        .map_err(|e| SystemError::Tool { command: command.clone(), why: e.to_string() })?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(SystemError::Tool { command, why: format!("{} ({})", stderr.trim(), output.status) })
    }
}

// linux/swap.h: the flags of swapon(2).
const SWAP_FLAG_PREFER: libc::c_int = 0x8000;
const SWAP_FLAG_PRIO_MASK: libc::c_int = 0x7fff;
const SWAP_FLAG_DISCARD: libc::c_int = 0x10000;

fn c_path(path: &str) -> Result<std::ffi::CString, SystemError> {
    std::ffi::CString::new(path).map_err(|_| SystemError::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"),
    })
}

/// Turns swap on on `path` (swapon(2), as `swapon -d -p PRIORITY` does): with discard (freed
/// slots are discarded as they are freed, which reaches the pool as invalidates) and
/// `priority`, or the kernel's next default priority when `None`. Called directly rather than
/// through swapon(8), whose options differ between util-linux and busybox.
pub fn swapon(path: &str, priority: Option<u16>) -> Result<(), SystemError> {
    let c_path = c_path(path)?;
    let mut flags = SWAP_FLAG_DISCARD;
    if let Some(priority) = priority {
        flags |= SWAP_FLAG_PREFER | (libc::c_int::from(priority) & SWAP_FLAG_PRIO_MASK);
    }
    // SAFETY: a valid NUL-terminated path; swapon reads it and nothing else.
    if unsafe { libc::swapon(c_path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EINVAL) => " (no swap signature: mkswap it first)",
        Some(libc::EBUSY) => " (already a swap area, or in use)",
        _ => "",
    };
    Err(SystemError::Swap { call: "swapon", path: path.into(), source, hint })
}

/// Turns swap off on `path` (swapoff(2)): the kernel reads every page back first.
pub fn swapoff(path: &str) -> Result<(), SystemError> {
    let c_path = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; swapoff reads it and nothing else.
    if unsafe { libc::swapoff(c_path.as_ptr()) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::ENOMEM) => " (the kernel needs free memory or other swap for the pages it takes back)",
        _ => "",
    };
    Err(SystemError::Swap { call: "swapoff", path: path.into(), source, hint })
}

/// Waits until the block device `path` exists (udev or devtmpfs makes it after the attach).
pub fn wait_for_device(path: &Path, limit: Duration) -> Result<(), SystemError> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + limit;
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SystemError::NoDevice { path: path.into(), seconds: limit.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_swaps_parses_with_escaped_names() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /dev/ublkb0                             partition\t1048572\t\t2048\t\t100\n\
                    /swap\\040file                          file\t\t4096\t\t0\t\t-2\n\
                    garbage\n";
        assert_eq!(
            parse_swaps(text),
            [
                SwapArea { path: "/dev/ublkb0".into(), size_kib: 1048572, used_kib: 2048, priority: 100 },
                SwapArea { path: "/swap file".into(), size_kib: 4096, used_kib: 0, priority: -2 },
            ]
        );
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        assert_eq!(parse_mem_total("MemFree: 1 kB\nMemTotal:        8048212 kB\n"), Some(8048212 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn room_is_checked_against_the_file_system() {
        let dir = std::env::temp_dir().join(format!("tmem-room-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0);
        // A missing directory below an existing one is checked on the existing one.
        assert!(check_room(&dir.join("a/b/swap.backing"), 4096).is_ok());
        match check_room(&dir.join("swap.backing"), free.saturating_mul(2) + (1 << 30)) {
            Err(SystemError::NoRoom { free: f, .. }) => assert!(f > 0),
            other => panic!("{other:?}"),
        }
        // A file that already has the size needs nothing more.
        let file = dir.join("kept.backing");
        std::fs::File::create(&file).unwrap().set_len(1 << 40).unwrap();
        assert!(check_room(&file, 1 << 40).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
