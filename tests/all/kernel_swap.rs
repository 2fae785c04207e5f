//! A real Linux kernel swapping (issue 8's proof; issue 14's under global pressure). Debian
//! trixie's kernel boots under QEMU (software emulation: no KVM here) with an initramfs and a
//! disk; the guest runs scenarios whose verified workload, `swapcheck`
//! (`tests/guest/swapcheck.c`), writes and re-reads more data than the guest has RAM, with one
//! swap device: zram (the harness's self-test) or a block device of a `tmem serve` running in
//! the guest (NBD or ublk), or checks that a ublk device survives a SIGKILL of its host.
//!
//! The harness is `scripts/guest/run.sh`, and the scenarios are the lines of
//! `tests/guest/scenarios` — their one definition: run.sh builds what a run needs (the release
//! `tmem`, `swapcheck`, the kernel, an initramfs, a disk image), boots, watches the serial
//! console (a hung task panics the guest with every stack; a silent guest gets a sysrq dump and
//! is killed), checks the scenario from its serial log and prints one `RESULT ok: …` or
//! `RESULT failed: why` line per scenario. Each test here runs it:
//!
//! - `scenario::NAME` runs one scenario (`#[ignore]`d: minutes each). The table's
//!   `ublk-global-pressure`, `nbd-global-pressure` and `ublk-budget` (no memory cgroup) hang on
//!   today's host (issue 14) and are not run by CI;
//! - [`ci_scenarios`] runs every scenario marked `ci=yes`, sharing boots as the table allows
//!   (`#[ignore]`d; `scripts/test.sh` runs it);
//! - the fast tests check that every line of the table has its test, and that run.sh's checks
//!   refuse what they must (a corrupted page, a workload that fits in RAM, a run that never
//!   swapped, a hung task, a silent guest, an OOM kill), on serial logs made here.
//!
//! By hand: `bash scripts/guest/run.sh SCENARIO` (see the README's "A real kernel in QEMU").

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The scenario table (`NAME KEY=VALUE...` lines; `#` comments).
const TABLE: &str = include_str!("../guest/scenarios");

/// The repository root (the root package owns this test binary).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The table's scenario names, in order.
fn table_names() -> Vec<&'static str> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// Runs `bash scripts/guest/run.sh ARGS` (its progress on stderr as it goes) and returns its
/// `RESULT` lines and whether it exited 0. One at a time: QEMU under TCG takes a core per CPU.
fn run_sh(args: &[&str]) -> (Vec<String>, bool) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut child = Command::new("bash")
        .arg(repo().join("scripts/guest/run.sh"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash runs scripts/guest/run.sh");
    let mut results = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.expect("run.sh's output");
        eprintln!("{line}");
        if line.starts_with("RESULT ") {
            results.push(line);
        }
    }
    let status = child.wait().expect("run.sh ends");
    (results, status.success())
}

/// Runs scenarios through run.sh; panics with their RESULT lines unless every one passed.
fn run_scenarios(args: &[&str]) {
    let (results, success) = run_sh(args);
    assert!(
        success && !results.is_empty() && results.iter().all(|line| line.starts_with("RESULT ok: ")),
        "scripts/guest/run.sh {}:\n{}",
        args.join(" "),
        results.join("\n")
    );
}

/// One `#[ignore]`d test per scenario of the table, which runs it through run.sh, and the list
/// [`the_table_and_the_tests_agree`] compares with the table.
macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        /// One test per line of `tests/guest/scenarios`: `cargo test --test all
        /// kernel_swap::scenario::NAME -- --ignored --nocapture` runs that scenario, as
        /// `bash scripts/guest/run.sh NAME` does.
        mod scenario {
            $(
                #[test]
                #[ignore = "boots a guest under QEMU (minutes): scripts/test.sh runs the table's ci=yes scenarios"]
                fn $test() {
                    super::run_scenarios(&[$name]);
                }
            )*
        }

        /// The scenarios [`scenario`] has a test for.
        const TESTED: &[&str] = &[$($name),*];
    };
}

scenario_tests! {
    zram => "zram",
    tmem_ublk_recover => "tmem-ublk-recover",
    tmem_ublk => "tmem-ublk",
    swap_restart => "swap-restart",
    tmem_nbd => "tmem-nbd",
    swap_nbd => "swap-nbd",
    power_loss => "power-loss",
    ublk_global_pressure => "ublk-global-pressure",
    ublk_budget => "ublk-budget",
    governor_pressure => "governor-pressure",
    swap_restart_global => "swap-restart-global",
    nbd_global_pressure => "nbd-global-pressure",
}

/// Every scenario marked `ci=yes`, as CI runs them (`scripts/test.sh`): neighbours marked
/// `share=yes` share a boot.
#[test]
#[ignore = "boots guests under QEMU (about 14 minutes): scripts/test.sh runs it on its own after the suite"]
fn ci_scenarios() {
    run_scenarios(&["--ci"]);
}

/// A scenario is added to the table and given its test in [`scenario_tests!`], in the same order.
#[test]
fn the_table_and_the_tests_agree() {
    assert_eq!(table_names(), TESTED, "tests/guest/scenarios and the scenario tests of kernel_swap.rs");
}

/// `swapcheck`, compiled for this machine (once per test run).
fn native_swapcheck() -> &'static Path {
    static SWAPCHECK: OnceLock<PathBuf> = OnceLock::new();
    SWAPCHECK.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("swapcheck.native");
        let output = Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(repo().join("tests/guest/swapcheck.c"))
            .output()
            .expect("gcc runs (scripts/install-deps.sh --test installs it)");
        assert!(output.status.success(), "gcc swapcheck.c: {}", String::from_utf8_lossy(&output.stderr));
        out
    })
}

/// The RESULT line `run.sh --check SCENARIO LOG KEY=VALUE...` gives for a serial log made of
/// `lines` (the scenario's markers around them), and whether run.sh accepted it.
fn check_log(scenario: &str, lines: &str, keys: &[&str]) -> (String, bool) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
    std::fs::create_dir_all(&dir).unwrap();
    static LOGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let log = dir.join(format!(
        "check-{}-{}.serial.log",
        std::process::id(),
        LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let text = format!(
        "GUEST INIT uptime=1.0\nGUEST SCENARIO BEGIN name={scenario} uptime=1.0\n{lines}\nGUEST SCENARIO END name={scenario} status=0 uptime=9.0\nGUEST DONE\n"
    );
    std::fs::write(&log, text).unwrap();
    let output = Command::new("bash")
        .arg(repo().join("scripts/guest/run.sh"))
        .args(["--check", scenario])
        .arg(&log)
        .args(keys)
        .output()
        .expect("bash runs scripts/guest/run.sh");
    let _ = std::fs::remove_file(&log);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let result = stdout.lines().last().unwrap_or_default().to_string();
    (result, output.status.success())
}

/// The checks are honest: `swapcheck` (run natively here, a few MiB) reports a page it finds
/// corrupted and exits 1, and run.sh's check refuses that run; it also refuses a clean run
/// whose workload fits in RAM, one in which nothing was swapped, a hung task, a silent guest
/// and an OOM kill — and accepts a run that has none of these.
#[test]
fn swap_checks_refuse_bad_data_and_runs_without_swapping() {
    let native = |extra: &[&str]| {
        let output =
            Command::new(native_swapcheck()).args(["4", "2"]).args(extra).output().expect("swapcheck runs natively");
        let mut serial = String::from_utf8(output.stdout).unwrap();
        serial.push_str(&format!("GUEST SWAPCHECK EXIT {}", output.status.code().unwrap_or(-1)));
        serial
    };
    // The zram scenario's checks at this size: 4 MiB, 2 passes, and zram's counters.
    let zram = |lines: &str| {
        let lines = format!("{lines}\nGUEST ZRAM stat-BEGIN\n1 0 4096 0 2 0 65536 0 0 0 0\nGUEST ZRAM stat-END");
        check_log("zram", &lines, &["mib=4", "passes=2"])
    };

    let corrupted = native(&["corrupt=77"]);
    assert!(corrupted.contains("SWAPCHECK FAIL page=77 pass=0"), "{corrupted}");
    assert!(corrupted.contains("GUEST SWAPCHECK EXIT 1"), "{corrupted}");
    let (why, accepted) = zram(&corrupted);
    assert!(!accepted && why.contains("corrupted data: SWAPCHECK FAIL page=77"), "a corrupted page fails: {why}");

    let clean = native(&[]);
    let (why, accepted) = zram(&clean);
    assert!(!accepted && why.contains("must exceed 1 x the guest's RAM"), "a run that fits in RAM fails: {why}");

    // The same run, as if the guest had 1 KiB of RAM (and so never needed to swap).
    let fitting = clean.replace("memtotal_kib=", "memtotal_kib=1 was=");
    let (why, accepted) = zram(&fitting);
    assert!(!accepted && why.contains("must have swapped out and in"), "a run that never swapped fails: {why}");

    // As if it had swapped: accepted, with the RESULT line's numbers.
    let swapped = fitting.replace("pswpin=0", "pswpin=7").replace("pswpout=0", "pswpout=9");
    let (result, accepted) = zram(&swapped);
    assert!(accepted, "a run that verified every page and swapped passes: {result}");
    assert!(result.starts_with("RESULT ok: 2048 pages verified, pswpout 9, pswpin 7, no cgroup, "), "{result}");
    assert!(result.ends_with("[zram]"), "{result}");

    let oom = format!("{swapped}\n[  99.1] Out of memory: Killed process 321 (swapcheck) total-vm:1234kB");
    let (why, accepted) = zram(&oom);
    assert!(!accepted && why.contains("OOM kill of swapcheck"), "an OOM kill fails: {why}");

    // A hung task (the guest panics with every stack), and a guest gone silent: a livelock.
    let start =
        "SWAPCHECK START mib=4 pages=1024 passes=2 memtotal_kib=1\nSWAPCHECK PASS n=0 seconds=1.0 pswpin=0 pswpout=5";
    let hung = format!("{start}\n[  201.5] INFO: task tmem:123 blocked for more than 61 seconds.");
    let (why, accepted) = check_log("ublk-global-pressure", &hung, &[]);
    assert!(
        !accepted
            && why.starts_with("RESULT failed: livelock/hung task: task tmem:123 blocked for more than 61 seconds."),
        "a hung task fails: {why}"
    );
    let silent = format!("{start}\nHARNESS the guest printed nothing for 120 s; QEMU killed");
    let (why, accepted) = check_log("nbd-global-pressure", &silent, &[]);
    assert!(
        !accepted && why.starts_with("RESULT failed: livelock/hung task: the guest printed nothing for 120 s"),
        "a silent guest fails: {why}"
    );
}

/// The swap-restart checks are honest: a run in which every page verified is still refused
/// when the second `tmem swap on` changed something, when the host was never killed, when the
/// next host never took the device over, when no page came in through it, or when `tmem swap
/// off` failed, or no discard reached the device — and accepted, with the restart's figures, when none of these happened.
#[test]
fn swap_restart_checks_need_the_kill_the_takeover_and_swap_ins_after_it() {
    let verified = "SWAPCHECK START mib=4 pages=1024 passes=1 memtotal_kib=1\n\
                    SWAPCHECK OK pages=1024 verified=1024 passes=1 seconds=5.0 pswpin=700 pswpout=900 memtotal_kib=1\n\
                    GUEST SWAPCHECK EXIT 0\n\
                    GUEST POOL-FINAL discards=4 succ_stores=10 loads=20 invalidates=0 load_failures=0 to_backing=5";
    let on_again = "GUEST SWAP-ON-AGAIN pool swap is already swap on /dev/ublkb2 (priority 10, 0 B of 1 GiB in use): nothing changed";
    let kill = "GUEST HOST-KILL uptime=20.0 pswpout=4100 pswpin=0 stored_pages=3000";
    let back = "GUEST HOST-BACK uptime=23.5 restart_s=3.5 pswpout=4200 pswpin=10";
    let end = "GUEST VMSTAT-END pswpout=9000 pswpin=710";
    let off = "GUEST SWAP-OFF ok pool swap is no swap any more:";
    let check = |lines: &[&str]| check_log("swap-restart", &lines.join("\n"), &["mib=4", "passes=1", "cgroup="]);

    let (result, accepted) = check(&[on_again, kill, back, verified, end, off]);
    assert!(accepted, "{result}");
    assert!(
        result.contains("host killed with 3000 pages in the pool (pswpout 4100), device served again 3.5 s later, pswpin since 700, tmem swap off ok"),
        "{result}"
    );
    let changed = on_again.replace("nothing changed", "created pool swap");
    let (why, accepted) = check(&[&changed, kill, back, verified, end, off]);
    assert!(!accepted && why.contains("a second tmem swap on did not say it changed nothing"), "{why}");
    let (why, accepted) = check(&[on_again, back, verified, end, off]);
    assert!(!accepted && why.contains("the host was never killed"), "{why}");
    let (why, accepted) = check(&[on_again, kill, verified, end, off]);
    assert!(!accepted && why.contains("the restarted host did not take the device over"), "{why}");
    let (why, accepted) = check(&[on_again, kill, back, verified, "GUEST VMSTAT-END pswpout=9000 pswpin=10", off]);
    assert!(!accepted && why.contains("no page was swapped in after the restart"), "{why}");
    let no_discard = verified.replace("discards=4", "discards=0");
    let (why, accepted) = check(&[on_again, kill, back, &no_discard, end, off]);
    assert!(!accepted && why.contains("no discard reached the device"), "{why}");
    let (why, accepted) = check(&[on_again, kill, back, verified, end, "GUEST SWAP-OFF failed swapoff: ENOMEM"]);
    assert!(!accepted && why.contains("tmem swap off: failed swapoff: ENOMEM"), "{why}");
}
