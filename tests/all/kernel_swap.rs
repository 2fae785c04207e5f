//! A real Linux kernel swapping (issue 8's proof). Debian trixie's kernel boots under QEMU
//! (software emulation: no KVM here) from an initramfs this module builds; the scenario's
//! `/init` (`tests/guest/*.init`) sets up the guest's only swap device and runs `swapcheck`
//! (`tests/guest/swapcheck.c`), which writes and re-reads verified data larger than the guest's
//! RAM. The test on the outside reads marker lines from the serial console.
//!
//! The harness is [`boot_guest`]: it fetches the kernel once (`scripts/guest/fetch-kernel.sh`,
//! cached under the target dir), compiles `swapcheck`, builds the initramfs
//! (`scripts/guest/build-initramfs.sh`), runs one QEMU at a time under an overall timeout (QEMU is
//! killed past it) and saves the serial log as an artifact, `CARGO_TARGET_TMPDIR/guest/NAME.serial.log`.
//! A scenario is a [`Scenario`]: an init script, the binaries it needs, a memory size.
//!
//! Scenarios: `tmem-ublk-recover` (ublk user recovery across a SIGKILL of the host; about 40
//! s), `zram` (the harness's self-test: proves the workload exceeds the guest's RAM and
//! that swapping happened, with no tmem involved), `tmem-nbd` and `tmem-ublk` (the guest runs
//! `tmem serve`, a `[zstd, ram]` pool and a block device of it, and swaps to it: over NBD through
//! `nbd-client`, or over ublk). Another scenario is an init script under `tests/guest/` (or a
//! parameter of `tmem.init`) and a `Scenario` naming it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One guest run's recipe.
struct Scenario {
    /// Names the artifacts (`CARGO_TARGET_TMPDIR/guest/NAME.*`).
    name: &'static str,
    /// The `/init` script, a file under `tests/guest/` (it sources `/lib/guest.sh`).
    init: &'static str,
    /// Executables the init script runs besides busybox and `swapcheck`: (host path, guest path).
    bins: Vec<(PathBuf, &'static str)>,
    /// Guest RAM in MiB.
    memory_mib: u32,
    /// Guest CPUs. One is fastest under TCG (a second vCPU costs more in cross-CPU work than
    /// it gains on this 2-core machine).
    cpus: u32,
    /// `swapcheck`'s size in MiB (`tmem.mib`); more than the guest's RAM.
    workload_mib: u32,
    /// `swapcheck`'s passes (`tmem.passes`).
    passes: u32,
    /// More `tmem.NAME=VALUE` parameters for the init script.
    params: &'static [(&'static str, &'static str)],
    /// The limit of the memory cgroup the init script runs `swapcheck` in, in MiB
    /// (`tmem.workload_max`; `None`: no cgroup).
    workload_limit_mib: Option<u32>,
    /// Boot to power-off; QEMU is killed past it.
    timeout: Duration,
    /// QEMU is also killed when the guest prints nothing for this long: a task blocked in D
    /// state panics the guest (`tests/guest/guest.sh`), but a livelock (tasks spinning in
    /// reclaim) does not.
    silence: Duration,
}

/// What a guest printed on its serial console, and when.
struct GuestRun {
    /// Every line, as printed.
    serial: String,
    /// Where the serial log (each line with the host's seconds since QEMU started) was saved.
    log: PathBuf,
    /// From QEMU's start to the init script's first line (`GUEST INIT`).
    boot: Duration,
    /// From QEMU's start to `SWAPCHECK START` and to `SWAPCHECK OK|FAIL`: the workload's span.
    workload: Option<(Duration, Duration)>,
    /// From QEMU's start to its exit.
    total: Duration,
}

impl GuestRun {
    /// The key=value fields of the last line containing `marker` (e.g. `SWAPCHECK OK`), if any.
    fn marker(&self, marker: &str) -> Option<BTreeMap<String, String>> {
        let line = self.serial.lines().rev().find_map(|line| line.find(marker).map(|at| &line[at + marker.len()..]))?;
        Some(
            line.split_whitespace()
                .filter_map(|field| field.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        )
    }

    /// A numeric field of the last `marker` line; panics (showing the log) when absent.
    fn number(&self, marker: &str, key: &str) -> u64 {
        let fields = self.marker(marker).unwrap_or_else(|| self.fail(&format!("no `{marker}` line")));
        let value = fields.get(key).unwrap_or_else(|| self.fail(&format!("`{marker}` has no {key}=")));
        value.parse().unwrap_or_else(|_| self.fail(&format!("`{marker}` {key}={value} is not a number")))
    }

    /// The lines strictly between two marker lines.
    fn between(&self, begin: &str, end: &str) -> String {
        let mut lines = self.serial.lines().skip_while(|line| !line.contains(begin)).skip(1);
        lines.by_ref().take_while(|line| !line.contains(end)).collect::<Vec<_>>().join("\n")
    }

    /// Panics with `what`, the log's path and its last lines.
    fn fail(&self, what: &str) -> ! {
        let lines: Vec<&str> = self.serial.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("{what}\n--- serial log {} (last 40 lines) ---\n{tail}", self.log.display())
    }

    /// The checks every swap scenario shares: the guest's script ran to the end, `swapcheck`
    /// verified every page of every pass, the workload was larger than the guest's RAM, and
    /// pages were swapped out and back in. Returns `pswpout`.
    fn assert_swapped_and_verified(&self, scenario: &Scenario) -> u64 {
        if let Some(failed) =
            self.serial.lines().find(|line| line.contains("GUEST FAIL") || line.contains("SWAPCHECK FAIL"))
        {
            self.fail(&format!("the guest reported a failure: {failed}"));
        }
        if !self.serial.contains("GUEST SWAPCHECK EXIT 0") {
            self.fail("swapcheck did not exit 0 (killed? out of memory?)");
        }
        let pages = self.number("SWAPCHECK OK", "pages");
        let verified = self.number("SWAPCHECK OK", "verified");
        let memtotal_kib = self.number("SWAPCHECK OK", "memtotal_kib");
        let pswpout = self.number("SWAPCHECK OK", "pswpout");
        let pswpin = self.number("SWAPCHECK OK", "pswpin");
        assert_eq!(pages, u64::from(scenario.workload_mib) * 256, "swapcheck's size");
        assert_eq!(verified, pages * u64::from(scenario.passes), "every page of every pass verified");
        assert!(
            pages * 4 > memtotal_kib,
            "the workload ({pages} pages) must exceed the guest's RAM ({memtotal_kib} KiB)"
        );
        assert!(
            pswpout > 0 && pswpin > 0,
            "the kernel must have swapped out and in (pswpout={pswpout}, pswpin={pswpin})"
        );
        assert!(self.serial.contains("GUEST DONE"), "the init script ran to its end");
        pswpout
    }

    /// One line of timings for the test's output.
    fn timings(&self) -> String {
        let workload = match self.workload {
            Some((start, end)) => format!("{:.1}s", (end - start).as_secs_f64()),
            None => "-".into(),
        };
        format!("boot {:.1}s, workload {workload}, total {:.1}s", self.boot.as_secs_f64(), self.total.as_secs_f64())
    }
}

/// The repository root (the root package owns this test binary).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `CARGO_TARGET_TMPDIR/guest`: the kernel cache, built images and serial logs.
fn work_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a helper command; panics with its output when it fails.
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The kernel directory of `fetch-kernel.sh` (fetched on first use, then cached).
fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = work_dir().join("kernel");
        let started = Instant::now();
        run(Command::new("bash").arg(repo().join("scripts/guest/fetch-kernel.sh")).arg(&dir));
        let package = std::fs::read_to_string(dir.join("package")).unwrap_or_default();
        eprintln!("kernel: {} ready in {:.1}s ({})", package.trim(), started.elapsed().as_secs_f64(), dir.display());
        dir
    })
}

/// `swapcheck`, compiled static for the guest (once per test run).
fn swapcheck() -> &'static Path {
    static SWAPCHECK: OnceLock<PathBuf> = OnceLock::new();
    SWAPCHECK.get_or_init(|| {
        let out = work_dir().join("swapcheck");
        run(Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(repo().join("tests/guest/swapcheck.c")));
        out
    })
}

/// An executable from PATH or the sbin dirs (where Debian puts `nbd-client`).
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').chain(["/usr/sbin", "/sbin"]);
    dirs.map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/install-deps.sh --test"))
}

/// QEMU, killed when dropped (a panicking test leaves no emulator behind).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `scenario` and returns what its serial console printed. Panics if the guest does not
/// power off within the scenario's timeout (QEMU is killed) or a helper fails.
fn boot_guest(scenario: &Scenario) -> GuestRun {
    // One QEMU at a time: software emulation takes a core per guest CPU.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let kernel = kernel();
    let release = std::fs::read_to_string(kernel.join("release")).unwrap();
    let dir = work_dir();
    let initrd = dir.join(format!("{}.initrd.gz", scenario.name));
    let mut build = Command::new("bash");
    build
        .arg(repo().join("scripts/guest/build-initramfs.sh"))
        .arg("--out")
        .arg(&initrd)
        .arg("--init")
        .arg(repo().join("tests/guest").join(scenario.init))
        .arg("--modules")
        .arg(kernel.join("lib/modules").join(release.trim()))
        .arg("--file")
        .arg(format!("{}=/lib/guest.sh", repo().join("tests/guest/guest.sh").display()))
        .arg("--bin")
        .arg(format!("{}=/bin/swapcheck", swapcheck().display()));
    for (host, guest) in &scenario.bins {
        build.arg("--bin").arg(format!("{}={guest}", host.display()));
    }
    let started = Instant::now();
    run(&mut build);
    eprintln!("{}: initramfs built in {:.1}s", scenario.name, started.elapsed().as_secs_f64());

    let qemu = std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let mut append =
        format!("console=ttyS0 panic=-1 quiet tmem.mib={} tmem.passes={}", scenario.workload_mib, scenario.passes);
    if let Some(limit) = scenario.workload_limit_mib {
        append.push_str(&format!(" tmem.workload_max={limit}M"));
    }
    for (name, value) in scenario.params {
        append.push_str(&format!(" tmem.{name}={value}"));
    }
    let started = Instant::now();
    let child = Command::new(&qemu)
        .args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-smp", &scenario.cpus.to_string(), "-m", &scenario.memory_mib.to_string()])
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {qemu} ({e}): run scripts/install-deps.sh --test"));
    let mut qemu_child = Qemu(child);

    // The serial console, line by line, stamped with the host's time since QEMU started.
    let log = dir.join(format!("{}.serial.log", scenario.name));
    let stdout = qemu_child.0.stdout.take().unwrap();
    let log_path = log.clone();
    let last_line_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last_line = last_line_ms.clone();
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&log_path).unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
            let at = started.elapsed();
            let _ = writeln!(file, "[{:8.3}] {line}", at.as_secs_f64());
            last_line.store(at.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
            lines.push((at, line));
        }
        lines
    });

    let killed = loop {
        if qemu_child.0.try_wait().unwrap().is_some() {
            break None;
        }
        let silent = started
            .elapsed()
            .saturating_sub(Duration::from_millis(last_line_ms.load(std::sync::atomic::Ordering::Relaxed)));
        let why = if started.elapsed() > scenario.timeout {
            Some(format!("the guest did not power off within {:?}", scenario.timeout))
        } else if silent > scenario.silence {
            Some(format!("the guest printed nothing for {:?} (a livelock?)", scenario.silence))
        } else {
            None
        };
        if let Some(why) = why {
            let _ = qemu_child.0.kill();
            let _ = qemu_child.0.wait();
            break Some(why);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = started.elapsed();
    let lines = reader.join().unwrap();
    let first = |marker: &str| lines.iter().find(|(_, line)| line.contains(marker)).map(|(at, _)| *at);
    let run = GuestRun {
        serial: lines.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n"),
        log,
        boot: first("GUEST INIT").unwrap_or(total),
        workload: first("SWAPCHECK START").zip(first("SWAPCHECK OK").or_else(|| first("SWAPCHECK FAIL"))),
        total,
    };
    if let Some(why) = killed {
        run.fail(&format!("{}: {why}; QEMU was killed", scenario.name));
    }
    if first("GUEST INIT").is_none() {
        run.fail(&format!("{}: the guest's init never ran", scenario.name));
    }
    eprintln!("{}: {} (serial log: {})", scenario.name, run.timings(), run.log.display());
    run
}

/// The harness's self-test, with no tmem: zram is the guest's only swap, and `swapcheck`
/// writes and verifies more than the guest's RAM. Proves the workload really exceeds RAM, that
/// the kernel swapped, and that the markers are read — so a tmem scenario failing is tmem.
#[test]
fn zram_swap_verifies_more_than_the_guests_ram() {
    let scenario = Scenario {
        name: "zram",
        init: "zram.init",
        bins: vec![],
        memory_mib: 256,
        cpus: 1,
        workload_mib: 320,
        passes: 2,
        params: &[],
        workload_limit_mib: None,
        timeout: Duration::from_secs(300),
        silence: Duration::from_secs(120),
    };
    let run = boot_guest(&scenario);
    let pswpout = run.assert_swapped_and_verified(&scenario);
    // The device's own block-layer counters (`/sys/block/zram0/stat`): sectors written and read.
    let stat = run.between("GUEST ZRAM stat-BEGIN", "GUEST ZRAM stat-END");
    let fields: Vec<u64> = stat.split_whitespace().filter_map(|field| field.parse().ok()).collect();
    if fields.len() < 7 {
        run.fail("no /sys/block/zram0/stat line");
    }
    let (read_sectors, write_sectors) = (fields[2], fields[6]);
    assert!(
        write_sectors >= pswpout * 8,
        "zram took every page swapped out ({write_sectors} sectors, pswpout={pswpout})"
    );
    assert!(read_sectors > 0, "zram was read");
    eprintln!(
        "zram: pswpout={pswpout} pswpin={} zram write_sectors={write_sectors} read_sectors={read_sectors}",
        run.number("SWAPCHECK OK", "pswpin")
    );
}

/// The proof of issue 8 over NBD: `tmem serve --mlock` runs in the guest with a `[zstd, ram]`
/// pool, an NBD frontend of that pool is `/dev/nbd0` through Debian's `nbd-client`, and it is
/// the guest's only swap.
#[test]
#[ignore = "slow (about 5 minutes under TCG): scripts/test.sh runs it on its own after the suite"]
fn tmem_nbd_swap_verifies_more_than_the_guests_ram() {
    swap_to_tmem("tmem-nbd", &[("transport", "nbd")], vec![(find_program("nbd-client"), "/bin/nbd-client")]);
}

/// The same proof over ublk: the pool's ublk device `/dev/ublkb0`, served by `tmem serve`
/// itself through the guest kernel's ublk driver, is the guest's only swap.
#[test]
#[ignore = "slow (about 5 minutes under TCG): scripts/test.sh runs it on its own after the suite"]
fn tmem_ublk_swap_verifies_more_than_the_guests_ram() {
    swap_to_tmem("tmem-ublk", &[("transport", "ublk")], vec![]);
}

/// ublk user recovery: a ublk device over a persistent pool keeps its data across a SIGKILL of
/// its host — the kernel keeps `/dev/ublkb0`, the next `tmem serve` takes it over from its
/// catalog, and the 16 MiB written before the kill read back identical through the device.
#[test]
fn tmem_ublk_device_survives_a_host_restart() {
    let scenario = Scenario {
        name: "tmem-ublk-recover",
        init: "recover.init",
        bins: vec![(PathBuf::from(env!("CARGO_BIN_EXE_tmem")), "/bin/tmem")],
        memory_mib: 512,
        cpus: 2,
        workload_mib: 0,
        passes: 0,
        params: &[],
        workload_limit_mib: None,
        timeout: Duration::from_secs(600),
        silence: Duration::from_secs(150),
    };
    let run = boot_guest(&scenario);
    let fields = run.marker("GUEST RECOVER").unwrap_or_else(|| run.fail("no `GUEST RECOVER` line"));
    let (written, read) = (&fields["written"], &fields["read"]);
    assert_eq!(written.len(), 64, "a sha256 of the written data");
    assert_eq!(
        read, written,
        "the data read back through the recovered /dev/ublkb0 is what was written before the host was killed"
    );
    assert!(run.serial.contains("/dev/ublkb0 still there: yes"), "the kernel kept the device while its host was down");
    let (restored, loads) = (run.number("GUEST POOL-AFTER", "stored_pages"), run.number("GUEST POOL-AFTER", "loads"));
    assert!(restored >= 4096, "the restarted host restored the device's 4096 pages from the pool's disk: {restored}");
    assert!(loads >= 4096, "the read after the restart was served by the pool: {loads} loads");
    assert_eq!(run.number("GUEST POOL-AFTER", "load_failures"), 0);
    eprintln!("tmem-ublk-recover: {restored} pages restored, {loads} loads after the restart");
}

/// A guest swapping to a `[zstd, ram]` pool of `tmem serve` in it over the transport `params`
/// name (`tests/guest/tmem.init`); `swapcheck` runs in a memory cgroup smaller than the guest's RAM
/// (the init script says why). The data must verify, the kernel must have swapped, and the
/// pool's own counters must show the pages went through it (stored and loaded back).
fn swap_to_tmem(
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
    mut bins: Vec<(PathBuf, &'static str)>,
) {
    bins.push((PathBuf::from(env!("CARGO_BIN_EXE_tmem")), "/bin/tmem"));
    let scenario = Scenario {
        name,
        init: "tmem.init",
        bins,
        memory_mib: 512,
        cpus: 2,
        workload_mib: 640,
        passes: 2,
        params,
        workload_limit_mib: Some(160),
        timeout: Duration::from_secs(900),
        silence: Duration::from_secs(120),
    };
    let run = boot_guest(&scenario);
    let pswpout = run.assert_swapped_and_verified(&scenario);
    let pool = run.between("GUEST POOL-JSON-BEGIN", "GUEST POOL-JSON-END");
    let pool: serde_json::Value =
        serde_json::from_str(&pool).unwrap_or_else(|e| run.fail(&format!("the pool's JSON does not parse: {e}")));
    let counter =
        |name: &str| pool["counters"][name].as_u64().unwrap_or_else(|| run.fail(&format!("no counter {name}")));
    let (stores, loads) = (counter("succ_stores"), counter("loads"));
    assert!(stores > 0, "pages were stored in the pool (succ_stores={stores}, pswpout={pswpout})");
    assert!(loads > 0, "pages were loaded from the pool (loads={loads})");
    assert_eq!(counter("load_failures"), 0, "no load failed");
    // `swapon -d`: swap slots the kernel frees are discarded, and a discard is an invalidate.
    let invalidates = counter("invalidates");
    assert!(invalidates > 0, "the kernel's discards of freed swap slots reached the pool as invalidates");
    eprintln!("{name}: pswpout={pswpout} succ_stores={stores} loads={loads} invalidates={invalidates}");
}

/// The checks are honest: `swapcheck` (run natively here, a few MiB) reports a page it finds
/// corrupted and exits 1, and [`GuestRun::assert_swapped_and_verified`] refuses that run, and
/// also a clean run in which nothing was swapped and the workload fit in RAM.
#[test]
fn swap_checks_refuse_bad_data_and_runs_without_swapping() {
    let scenario = Scenario {
        name: "native",
        init: "zram.init",
        bins: vec![],
        memory_mib: 256,
        cpus: 1,
        workload_mib: 4,
        passes: 2,
        params: &[],
        workload_limit_mib: None,
        timeout: Duration::from_secs(60),
        silence: Duration::from_secs(60),
    };
    let native = |extra: &[&str]| {
        let output = Command::new(swapcheck()).args(["4", "2"]).args(extra).output().expect("swapcheck runs natively");
        let mut serial = String::from_utf8(output.stdout).unwrap();
        serial.push_str(&format!(
            "GUEST INIT\nGUEST SWAPCHECK EXIT {}\nGUEST DONE\n",
            output.status.code().unwrap_or(-1)
        ));
        GuestRun {
            serial,
            log: PathBuf::from("(native run)"),
            boot: Duration::ZERO,
            workload: None,
            total: Duration::ZERO,
        }
    };
    // The check's panic message (empty if it passed).
    let refusal = |run: &GuestRun| {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.assert_swapped_and_verified(&scenario)));
        result.err().map(|panic| panic.downcast::<String>().map(|text| *text).unwrap_or_default()).unwrap_or_default()
    };

    let corrupted = native(&["corrupt=77"]);
    assert!(corrupted.serial.contains("SWAPCHECK FAIL page=77 pass=0"), "{}", corrupted.serial);
    assert!(corrupted.serial.contains("GUEST SWAPCHECK EXIT 1"), "{}", corrupted.serial);
    let why = refusal(&corrupted);
    assert!(
        why.contains("the guest reported a failure: SWAPCHECK FAIL page=77"),
        "a corrupted page fails the check: {why}"
    );

    let clean = native(&[]);
    assert_eq!(clean.number("SWAPCHECK OK", "verified"), 2048, "{}", clean.serial);
    let why = refusal(&clean);
    assert!(why.contains("must exceed the guest's RAM"), "a run that fits in RAM fails the check: {why}");
    let fitting = GuestRun { serial: clean.serial.replace("memtotal_kib=", "memtotal_kib=1 was="), ..clean };
    let why = refusal(&fitting);
    assert!(why.contains("must have swapped out and in"), "a run that never swapped fails the check: {why}");
}
