//! Heap allocations and page faults of the I/O path, counted: the measurement behind "nothing
//! allocates or faults on the I/O path" (issue 14).
//!
//! # Counting allocations
//!
//! [`CountingAllocator`] wraps an allocator (the system's) and counts, per thread, the
//! allocations, reallocations and deallocations it serves and the bytes asked for. The
//! counters are `thread_local!` cells with `const` initialisation: counting takes no lock,
//! allocates nothing and initialises nothing lazily. The library does not install it — an
//! embedder chooses its own global allocator — the `tmem` binary and the integration-test
//! binary do:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tmem_host::memory::alloc_count::CountingAllocator =
//!     tmem_host::memory::alloc_count::CountingAllocator::system();
//! ```
//!
//! [`thread_counters`] reads the calling thread's counters; [`counting`] says whether the
//! running binary counts at all (without the allocator every counter stays 0).
//!
//! # I/O threads by role
//!
//! A thread that serves I/O says so: an NBD connection thread and a ublk queue thread hold an
//! [`IoThread`] for their lifetime; the frontend socket's connections are tokio tasks, which
//! move between worker threads, so each task's future is wrapped in [`scoped`] and counts
//! while it is polled. Allocations made in that role are added to the role's totals (relaxed
//! atomics, one cache line per role), and so are the threads' page faults: an [`IoThread`]'s
//! are read from `/proc/self/task/TID/stat` (fields 10 and 12) by whoever asks — nothing on
//! the I/O thread — and folded into the role's totals when the thread ends; a [`scoped`] task's
//! are `getrusage(RUSAGE_THREAD)` before and after each poll. The frontends count the requests
//! (NBD, ublk) or batch ops (socket) they serve with [`Role::count_ops`], so a reader divides:
//! allocations per op. [`Role::counters`] reads it all; `/metrics` shows it as
//! `tmem_io_thread_*{role="nbd"|"ublk"|"socket"}`.
//!
//! # Where the allocations come from
//!
//! With `TMEM_ALLOC_SAMPLE=N` in its environment, a host also writes the backtrace of about
//! one allocation in `N` made in an I/O role (a random countdown, so a periodic pattern of
//! allocations does not alias) to `tmem-alloc-samples-PID.txt` in `TMEM_ALLOC_SAMPLE_DIR` (by
//! default the temp dir): a `=== role=… kind=… size=… ops=…` line, then the backtrace. It is a
//! debugging aid, slow (each sample resolves symbols) and not counted. With
//! `TMEM_ALLOC_SAMPLE_DIR=-` each sample is instead one `ALLOC-SAMPLE … ips=…` line of raw
//! return addresses on standard error, written without allocating (for a host serving the
//! swap of the machine it runs on, e.g. in the guest scenarios); [`sample_path`] names
//! the file, [`parse_samples`] reads it back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use parking_lot::Mutex;

/// The environment variable that turns backtrace sampling on: sample about one allocation in
/// this many made in an I/O role.
pub const SAMPLE_ENV: &str = "TMEM_ALLOC_SAMPLE";

/// The environment variable naming the directory the samples are written to (default: the
/// temp dir).
pub const SAMPLE_DIR_ENV: &str = "TMEM_ALLOC_SAMPLE_DIR";

/// What an I/O thread serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An NBD connection thread.
    Nbd = 0,
    /// A ublk queue thread.
    Ublk = 1,
    /// A frontend-socket connection task (its reader and its writer).
    Socket = 2,
}

impl Role {
    /// Every role, in label order.
    pub const ALL: [Role; 3] = [Role::Nbd, Role::Ublk, Role::Socket];

    /// The `role` label.
    pub fn name(self) -> &'static str {
        match self {
            Role::Nbd => "nbd",
            Role::Ublk => "ublk",
            Role::Socket => "socket",
        }
    }

    fn shared(self) -> &'static Shared {
        &ROLES[self as usize]
    }

    /// Counts `n` operations served in this role (NBD and ublk requests, socket batch ops):
    /// the denominator of allocations per op. One relaxed atomic add.
    pub fn count_ops(self, n: u64) {
        self.shared().ops.fetch_add(n, Relaxed);
    }

    /// Everything counted in this role so far (faults of live threads read now).
    pub fn counters(self) -> IoCounters {
        let shared = self.shared();
        // Under the registry lock, a thread is either live here or already folded into the
        // role's totals, never both or neither.
        let registry = REGISTRY.lock();
        let mut faults = Faults { minor: shared.minor_faults.load(Relaxed), major: shared.major_faults.load(Relaxed) };
        for thread in registry.iter().filter(|t| t.role == self) {
            if let Some(now) = task_faults(thread.tid) {
                faults.minor += now.minor.saturating_sub(thread.start.minor);
                faults.major += now.major.saturating_sub(thread.start.major);
            }
        }
        drop(registry);
        IoCounters {
            alloc: AllocCounters {
                allocations: shared.allocations.load(Relaxed),
                reallocations: shared.reallocations.load(Relaxed),
                deallocations: shared.deallocations.load(Relaxed),
                alloc_bytes: shared.alloc_bytes.load(Relaxed),
            },
            ops: shared.ops.load(Relaxed),
            minor_faults: faults.minor,
            major_faults: faults.major,
            live: shared.live.load(Relaxed),
        }
    }

    fn from_index(index: u8) -> Option<Role> {
        Role::ALL.get(usize::from(index)).copied()
    }
}

/// Heap-allocator calls counted on one thread or in one role.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AllocCounters {
    /// `alloc` and `alloc_zeroed` calls.
    pub allocations: u64,
    /// `realloc` calls.
    pub reallocations: u64,
    /// `dealloc` calls.
    pub deallocations: u64,
    /// Bytes asked for by allocations and reallocations (a reallocation counts its new size).
    pub alloc_bytes: u64,
}

impl AllocCounters {
    /// What was counted since `earlier` (a snapshot of the same thread or role).
    pub fn since(&self, earlier: &AllocCounters) -> AllocCounters {
        AllocCounters {
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            reallocations: self.reallocations.wrapping_sub(earlier.reallocations),
            deallocations: self.deallocations.wrapping_sub(earlier.deallocations),
            alloc_bytes: self.alloc_bytes.wrapping_sub(earlier.alloc_bytes),
        }
    }
}

/// Everything counted in one [`Role`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// Heap-allocator calls made in the role.
    pub alloc: AllocCounters,
    /// Operations served ([`Role::count_ops`]).
    pub ops: u64,
    /// Minor page faults of the role's threads (while in the role).
    pub minor_faults: u64,
    /// Major page faults of the role's threads (while in the role).
    pub major_faults: u64,
    /// Threads ([`IoThread`]) or tasks ([`scoped`]) in the role now.
    pub live: u64,
}

/// Page faults of a thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Minor faults (no I/O: a page allocated, mapped or found in the page cache).
    pub minor: u64,
    /// Major faults (the page was read from a disk or from swap).
    pub major: u64,
}

/// A global allocator that counts what it does per thread (and per I/O role), then lets `A`
/// do it. See the module docs.
#[derive(Debug, Default)]
pub struct CountingAllocator<A = System> {
    inner: A,
}

impl CountingAllocator<System> {
    /// Counting over the system allocator.
    pub const fn system() -> Self {
        CountingAllocator { inner: System }
    }
}

impl<A> CountingAllocator<A> {
    /// Counting over `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAllocator { inner }
    }
}

// SAFETY: every call is passed to `inner` unchanged; counting touches only thread-local cells
// and atomics, and never allocates (sampling does, re-entrantly, with counting turned off
// for the thread while it runs).
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(Event::Alloc, layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(Event::Alloc, layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(Event::Dealloc, 0);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(Event::Realloc, new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Alloc,
    Realloc,
    Dealloc,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Alloc => "alloc",
            Event::Realloc => "realloc",
            Event::Dealloc => "dealloc",
        }
    }
}

const NO_ROLE: u8 = u8::MAX;

/// One thread's counters and role. `const`-initialised and without `Drop`: the thread-local
/// is plain TLS, valid from the thread's first instruction to its last.
struct ThreadState {
    allocations: Cell<u64>,
    reallocations: Cell<u64>,
    deallocations: Cell<u64>,
    alloc_bytes: Cell<u64>,
    role: Cell<u8>,
    /// Set while this thread takes a sample: its allocations then are the sampler's own.
    sampling: Cell<bool>,
    /// Role allocations until the next sample.
    countdown: Cell<u32>,
    /// The sampler's random state (xorshift).
    random: Cell<u64>,
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            allocations: Cell::new(0),
            reallocations: Cell::new(0),
            deallocations: Cell::new(0),
            alloc_bytes: Cell::new(0),
            role: Cell::new(NO_ROLE),
            sampling: Cell::new(false),
            countdown: Cell::new(0),
            random: Cell::new(0x9E37_79B9_7F4A_7C15),
        }
    };
}

/// One role's totals, on a cache line of its own.
#[repr(align(128))]
struct Shared {
    allocations: AtomicU64,
    reallocations: AtomicU64,
    deallocations: AtomicU64,
    alloc_bytes: AtomicU64,
    ops: AtomicU64,
    /// Faults of ended [`IoThread`]s and of [`scoped`] polls.
    minor_faults: AtomicU64,
    major_faults: AtomicU64,
    live: AtomicU64,
}

impl Shared {
    const fn new() -> Shared {
        Shared {
            allocations: AtomicU64::new(0),
            reallocations: AtomicU64::new(0),
            deallocations: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            minor_faults: AtomicU64::new(0),
            major_faults: AtomicU64::new(0),
            live: AtomicU64::new(0),
        }
    }
}

static ROLES: [Shared; Role::ALL.len()] = [const { Shared::new() }; Role::ALL.len()];

/// A live [`IoThread`]: its thread id and its fault counts when it entered the role.
struct Registered {
    tid: i32,
    role: Role,
    start: Faults,
}

/// The live [`IoThread`]s. Locked when a thread enters or leaves its role and when counters
/// are read, never by the allocator.
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

#[inline]
fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

#[inline]
fn record(event: Event, bytes: usize) {
    // `try_with`: a thread-local without `Drop` is never torn down, but an allocator must not
    // panic whatever happens.
    let _ = THREAD.try_with(|thread| {
        if thread.sampling.get() {
            return;
        }
        let bytes = bytes as u64;
        match event {
            Event::Alloc => bump(&thread.allocations, 1),
            Event::Realloc => bump(&thread.reallocations, 1),
            Event::Dealloc => bump(&thread.deallocations, 1),
        }
        bump(&thread.alloc_bytes, bytes);
        let role = thread.role.get();
        let Some(shared) = ROLES.get(usize::from(role)) else { return };
        match event {
            Event::Alloc => shared.allocations.fetch_add(1, Relaxed),
            Event::Realloc => shared.reallocations.fetch_add(1, Relaxed),
            Event::Dealloc => shared.deallocations.fetch_add(1, Relaxed),
        };
        if event != Event::Dealloc {
            shared.alloc_bytes.fetch_add(bytes, Relaxed);
            maybe_sample(thread, role, event, bytes);
        }
    });
}

/// The calling thread's counters (everything it allocated, in any role or none).
pub fn thread_counters() -> AllocCounters {
    THREAD
        .try_with(|thread| AllocCounters {
            allocations: thread.allocations.get(),
            reallocations: thread.reallocations.get(),
            deallocations: thread.deallocations.get(),
            alloc_bytes: thread.alloc_bytes.get(),
        })
        .unwrap_or_default()
}

/// Whether this process counts allocations: its global allocator is a [`CountingAllocator`].
/// Found out once, by allocating a box and looking at the counters.
pub fn counting() -> bool {
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.load(Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let before = thread_counters().allocations;
            drop(std::hint::black_box(Box::new(0u64)));
            let counting = thread_counters().allocations != before;
            KNOWN.store(if counting { 1 } else { 2 }, Relaxed);
            counting
        }
    }
}

/// Sets the calling thread's role; returns the one it had.
fn swap_role(role: Option<Role>) -> Option<Role> {
    let index = role.map_or(NO_ROLE, |r| r as u8);
    THREAD.try_with(|thread| Role::from_index(thread.role.replace(index))).ok().flatten()
}

/// The calling thread's page faults so far (`getrusage(RUSAGE_THREAD)`).
pub fn thread_faults() -> Faults {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` to the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } != 0 {
        return Faults::default();
    }
    // SAFETY: zeroed, then filled in by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    Faults { minor: usage.ru_minflt as u64, major: usage.ru_majflt as u64 }
}

/// The page faults of thread `tid` of this process, from `/proc/self/task/TID/stat` (fields
/// 10 and 12); `None` if the thread is gone.
pub fn task_faults(tid: i32) -> Option<Faults> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat_faults(&stat)
}

/// Minor and major faults (fields 10 and 12) of a `/proc/…/stat` line. The command name
/// (field 2) is in parentheses and may hold anything, so fields are counted after its last
/// `)`.
pub fn parse_stat_faults(stat: &str) -> Option<Faults> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    Some(Faults { minor: fields.get(10 - 3)?.parse().ok()?, major: fields.get(12 - 3)?.parse().ok()? })
}

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The calling thread serves I/O in a role until this is dropped: its allocations and page
/// faults count in the role. Held by NBD connection threads and ublk queue threads for their
/// lifetime. Registering allocates (outside the role); nothing else does.
#[derive(Debug)]
pub struct IoThread {
    role: Role,
    previous: Option<Role>,
    tid: i32,
    /// Bound to its thread (it restores the thread's role when dropped).
    _thread: PhantomData<*const ()>,
}

impl IoThread {
    /// The calling thread enters `role`.
    pub fn enter(role: Role) -> IoThread {
        init_sampling();
        let tid = gettid();
        REGISTRY.lock().push(Registered { tid, role, start: thread_faults() });
        role.shared().live.fetch_add(1, Relaxed);
        let previous = swap_role(Some(role));
        IoThread { role, previous, tid, _thread: PhantomData }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        swap_role(self.previous);
        let now = thread_faults();
        let shared = self.role.shared();
        let mut registry = REGISTRY.lock();
        if let Some(at) = registry.iter().position(|t| t.tid == self.tid && t.role == self.role) {
            let thread = registry.swap_remove(at);
            shared.minor_faults.fetch_add(now.minor.saturating_sub(thread.start.minor), Relaxed);
            shared.major_faults.fetch_add(now.major.saturating_sub(thread.start.major), Relaxed);
        }
        drop(registry);
        shared.live.fetch_sub(1, Relaxed);
    }
}

/// `future`, counted in `role` while it is polled, whichever thread polls it: its allocations,
/// and its page faults (`getrusage(RUSAGE_THREAD)` around each poll). For the frontend
/// socket's tasks. Wrapping allocates once (the future is boxed), outside the role.
pub fn scoped<F: Future>(role: Role, future: F) -> Scoped<F> {
    init_sampling();
    role.shared().live.fetch_add(1, Relaxed);
    Scoped { role, inner: Box::pin(future) }
}

/// A future counted in a role: see [`scoped`].
#[derive(Debug)]
pub struct Scoped<F> {
    role: Role,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let role = self.role;
        let before = thread_faults();
        let previous = swap_role(Some(role));
        let poll = self.inner.as_mut().poll(cx);
        swap_role(previous);
        let after = thread_faults();
        let shared = role.shared();
        shared.minor_faults.fetch_add(after.minor.saturating_sub(before.minor), Relaxed);
        shared.major_faults.fetch_add(after.major.saturating_sub(before.major), Relaxed);
        poll
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        self.role.shared().live.fetch_sub(1, Relaxed);
    }
}

// ----- backtrace sampling -----

/// About one role allocation in this many is sampled; 0: sampling is off.
static SAMPLE_EVERY: AtomicU32 = AtomicU32::new(0);
/// The samples file (opened once, never closed).
static SAMPLE_FD: AtomicI32 = AtomicI32::new(-1);

/// Where a host with process id `pid` writes its samples, in `dir`.
pub fn sample_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("tmem-alloc-samples-{pid}.txt"))
}

/// Reads [`SAMPLE_ENV`] and [`SAMPLE_DIR_ENV`] once, and opens the samples file if asked to.
fn init_sampling() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(every) = std::env::var(SAMPLE_ENV).ok().and_then(|v| v.parse::<u32>().ok()).filter(|n| *n > 0) else {
            return;
        };
        let dir = std::env::var_os(SAMPLE_DIR_ENV).map_or_else(std::env::temp_dir, PathBuf::from);
        if dir.as_os_str() == "-" {
            // Raw return addresses on standard error, nothing resolved in the process (see
            // `write_raw_sample`): for a host that must not allocate even to report.
            // SAFETY: backtrace(3) with a one-entry buffer of our own: glibc loads its unwinder
            // now, not at the first sample.
            unsafe { libc::backtrace([std::ptr::null_mut(); 1].as_mut_ptr(), 1) };
            SAMPLE_FD.store(RAW_STDERR, Relaxed);
            SAMPLE_EVERY.store(every, Relaxed);
            return;
        }
        let path = sample_path(&dir, std::process::id());
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => {
                use std::os::fd::IntoRawFd;
                SAMPLE_FD.store(file.into_raw_fd(), Relaxed);
                SAMPLE_EVERY.store(every, Relaxed);
                tracing::warn!(
                    path = %path.display(),
                    "sampling the backtraces of one I/O-path allocation in {every} (a slow debugging aid)"
                );
            }
            Err(e) => tracing::warn!("cannot write allocation samples to {}: {e}", path.display()),
        }
    });
}

fn maybe_sample(thread: &ThreadState, role: u8, event: Event, bytes: u64) {
    let every = SAMPLE_EVERY.load(Relaxed);
    if every == 0 {
        return;
    }
    let left = thread.countdown.get();
    if left > 1 {
        thread.countdown.set(left - 1);
        return;
    }
    // The next countdown: uniform in 1..2×every, so the mean is `every`.
    let mut x = thread.random.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    thread.random.set(x);
    thread.countdown.set(1 + (x % (2 * u64::from(every) - 1).max(1)) as u32);
    if left == 0 {
        // A thread's first role allocation only starts its countdown.
        return;
    }
    let Some(role) = Role::from_index(role) else { return };
    thread.sampling.set(true);
    write_sample(role, event, bytes);
    thread.sampling.set(false);
}

/// [`SAMPLE_FD`] when samples go to standard error, raw.
const RAW_STDERR: i32 = -2;

/// A sample as one line on standard error, built on the stack: `ALLOC-SAMPLE role=R kind=K
/// size=N ops=N ips=0x… 0x…` (return addresses, innermost first; resolve them against the
/// process's `/proc/PID/maps` and its binary, e.g. with `addr2line`).
fn write_raw_sample(role: Role, event: Event, bytes: u64) {
    use std::io::Write as _;
    let mut ips = [std::ptr::null_mut::<libc::c_void>(); 24];
    // SAFETY: backtrace(3) fills at most `ips.len()` entries of our own array.
    let n = unsafe { libc::backtrace(ips.as_mut_ptr(), ips.len() as libc::c_int) }.max(0) as usize;
    let mut line = [0u8; 640];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let ops = role.shared().ops.load(Relaxed);
    let _ = write!(cursor, "ALLOC-SAMPLE role={} kind={} size={bytes} ops={ops} ips=", role.name(), event.name());
    for ip in &ips[..n] {
        let _ = write!(cursor, "{:#x} ", *ip as usize);
    }
    let _ = writeln!(cursor);
    let len = cursor.position() as usize;
    // SAFETY: write(2) of our own stack buffer to standard error.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
}

fn write_sample(role: Role, event: Event, bytes: u64) {
    let fd = SAMPLE_FD.load(Relaxed);
    if fd == RAW_STDERR {
        return write_raw_sample(role, event, bytes);
    }
    if fd < 0 {
        return;
    }
    let ops = role.shared().ops.load(Relaxed);
    let backtrace = std::backtrace::Backtrace::force_capture();
    let text = format!("=== role={} kind={} size={bytes} ops={ops}\n{backtrace}\n", role.name(), event.name());
    // SAFETY: write(2) of our own buffer to the descriptor `init_sampling` opened (O_APPEND:
    // one record per write, whole).
    unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
}

/// One sampled allocation, read back from a samples file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The role's label.
    pub role: String,
    /// `alloc` or `realloc`.
    pub kind: String,
    /// Bytes asked for.
    pub size: u64,
    /// The role's op count when it was taken (to keep only the steady state).
    pub ops: u64,
    /// The frames, innermost first: (function, `file:line` when known).
    pub frames: Vec<(String, Option<String>)>,
}

/// Reads a samples file's text (see the module docs).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for record in text.split("=== ").filter(|r| !r.trim().is_empty()) {
        let mut lines = record.lines();
        let Some(header) = lines.next() else { continue };
        let field = |name: &str| {
            header.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).unwrap_or("").to_string()
        };
        let mut sample = Sample {
            role: field("role"),
            kind: field("kind"),
            size: field("size").parse().unwrap_or(0),
            ops: field("ops").parse().unwrap_or(0),
            frames: Vec::new(),
        };
        for line in lines {
            let line = line.trim();
            if let Some(at) = line.strip_prefix("at ") {
                if let Some(last) = sample.frames.last_mut() {
                    last.1 = Some(at.to_string());
                }
            } else if let Some((number, function)) = line.split_once(": ")
                && number.chars().all(|c| c.is_ascii_digit())
            {
                sample.frames.push((function.to_string(), None));
            }
        }
        samples.push(sample);
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    // The unit-test binary counts, as the `tmem` binary does.
    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator::system();

    #[test]
    fn the_calling_thread_counts_its_own_allocations_only() {
        assert!(counting());
        let before = thread_counters();
        let mut v: Vec<u8> = std::hint::black_box(Vec::with_capacity(100));
        v.reserve(1000);
        drop(v);
        let done = thread_counters().since(&before);
        assert_eq!((done.allocations, done.reallocations, done.deallocations), (1, 1, 1), "{done:?}");
        assert!(done.alloc_bytes >= 1100, "{done:?}");
        // Another thread's allocations are its own.
        let before = thread_counters();
        let theirs = std::thread::spawn(|| {
            let before = thread_counters();
            drop(std::hint::black_box(vec![0u8; 4096]));
            thread_counters().since(&before)
        })
        .join()
        .unwrap();
        assert_eq!(theirs.allocations, 1);
        assert_eq!(theirs.alloc_bytes, 4096);
        // Spawning allocates here (the thread's handle and name); the vector was not ours.
        assert!(thread_counters().since(&before).alloc_bytes < 4096);
    }

    #[test]
    fn an_io_thread_counts_in_its_role_with_its_page_faults() {
        // Ublk: no other unit test serves ublk, so the deltas are this test's own.
        let before = Role::Ublk.counters();
        let (allocated, touched) = std::thread::spawn(move || {
            let io = IoThread::enter(Role::Ublk);
            assert_eq!(Role::Ublk.counters().live, before.live + 1);
            drop(std::hint::black_box(vec![1u8; 64]));
            Role::Ublk.count_ops(3);
            // Fresh anonymous pages: one minor fault each when first written.
            let pages = 64;
            // SAFETY: a private anonymous mapping, written then unmapped here.
            let faults = unsafe {
                let len = pages * 4096;
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(map, libc::MAP_FAILED);
                for i in 0..pages {
                    map.cast::<u8>().add(i * 4096).write_volatile(1);
                }
                // Read from outside the thread's own view: the registry's /proc reading.
                let live = Role::Ublk.counters();
                libc::munmap(map, len);
                live.minor_faults - before.minor_faults
            };
            drop(io);
            // Out of the role: not counted.
            drop(std::hint::black_box(vec![1u8; 64]));
            (Role::Ublk.counters(), faults)
        })
        .join()
        .unwrap();
        let done = allocated.alloc.since(&before.alloc);
        assert!(done.allocations >= 1 && done.alloc_bytes >= 64, "{done:?}");
        assert_eq!(allocated.ops - before.ops, 3);
        assert!(touched >= 64, "64 pages first touched in the role: {touched} minor faults seen live");
        assert!(allocated.minor_faults - before.minor_faults >= touched, "kept when the thread ends");
        assert_eq!(allocated.live, before.live);
        // This thread is in no role: its allocations count only for itself.
        let before = Role::Ublk.counters().alloc;
        drop(std::hint::black_box(vec![1u8; 64]));
        assert_eq!(Role::Ublk.counters().alloc, before);
    }

    #[test]
    fn a_scoped_future_counts_while_polled() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let before = Role::Socket.counters();
        let inside = runtime.block_on(scoped(Role::Socket, async {
            assert_eq!(Role::Socket.counters().live, before.live + 1);
            let v = std::hint::black_box(vec![0u8; 1000]);
            tokio::task::yield_now().await;
            drop(v);
            Role::Socket.count_ops(1);
            thread_counters()
        }));
        let after = Role::Socket.counters();
        let done = after.alloc.since(&before.alloc);
        assert!(done.allocations >= 1 && done.alloc_bytes >= 1000 && done.deallocations >= 1, "{done:?}");
        assert!(after.ops > before.ops);
        assert_eq!(after.live, before.live);
        assert!(inside.allocations > 0);
    }

    #[test]
    fn proc_stat_fault_fields_are_found_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 1234 0 7 0 5 6 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_faults(stat), Some(Faults { minor: 1234, major: 7 }));
        assert_eq!(parse_stat_faults("42 (x) S 1"), None);
        let own = task_faults(gettid()).expect("this thread's stat");
        let direct = thread_faults();
        assert!(own.minor <= direct.minor && own.major <= direct.major);
    }

    #[test]
    fn samples_are_read_back() {
        let text = "=== role=nbd kind=alloc size=4096 ops=17\n   0: tmem_host::memory::alloc_count::record\n             at ./host/src/memory/alloc_count.rs:10:5\n   1: tmem_host::pool::Pool::store\n             at ./host/src/pool.rs:99:9\n\n=== role=socket kind=realloc size=8 ops=3\n   0: foo\n";
        let samples = parse_samples(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(
            (samples[0].role.as_str(), samples[0].kind.as_str(), samples[0].size, samples[0].ops),
            ("nbd", "alloc", 4096, 17)
        );
        assert_eq!(
            samples[0].frames[1],
            ("tmem_host::pool::Pool::store".into(), Some("./host/src/pool.rs:99:9".into()))
        );
        assert_eq!(samples[1].frames, vec![("foo".to_string(), None)]);
    }
}
