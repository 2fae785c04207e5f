//! [`PageArena`]: the host's own memory for stored page bytes — size classes over spans of one
//! reserved address range (zsmalloc's idea, simplified), so a stored page costs its bytes
//! rounded up to a 16-byte class and nothing else: no `Box` per page, no malloc header, no
//! page fault on the I/O path.
//!
//! # Layout
//!
//! The arena reserves one range of address space up front (`MAP_NORESERVE`: nothing resident)
//! and cuts it into **spans** of [`SPAN_BYTES`]. A **size class** serves objects of one rounded
//! size from **runs** of one or more consecutive spans: classes are 16 bytes apart up to 4 KiB
//! (one span per run), then an eighth apart up to [`MAX_OBJECT`] (runs long enough that the
//! tail a run cannot use is under an eighth of it). An object is named by a [`Handle`]: the
//! first span of its run and its slot, so its address is arithmetic — no table to look up.
//!
//! # Memory is committed ahead, never on the I/O path
//!
//! A span is *committed* (its pages faulted in, and locked when the process locks its memory)
//! before any object is placed in it. [`PageArena::alloc`] only takes slots of committed runs or
//! committed free spans. When none is left — a burst faster than the grower — it commits a run
//! itself only while the machine has memory to spare (`MemAvailable` high: the fault cannot
//! wait on reclaim) and the host's memory is not locked; under memory pressure, or in a host
//! that locks its memory to serve a machine's swap, it refuses (the store is refused, frontswap's way:
//! the frontend keeps the page) and asks the grower to commit more. [`PageArena::grow`] — run by
//! a background thread, outside every I/O thread — keeps a **headroom** of committed free spans,
//! within the [`MemoryBudget`]: committed memory is what the arena charges to the budget, so
//! the arena can never hold more than the budget allows. Runs that become empty go back to the
//! free spans; free spans beyond the headroom are released (`MADV_DONTNEED`) and uncharged.
//!
//! # Concurrency
//!
//! One lock per size class (objects of different sizes never contend) and one for the free
//! spans. Span metadata is one atomic word per span, written only under its class's lock.
//! Reading or freeing an object is its owner's business: the arena never moves an object by
//! itself.
//!
//! # Compaction
//!
//! Freed objects leave holes in their runs (zsmalloc's fragmentation). [`PageArena::begin_compaction`]
//! marks, in each class, the least-used runs whose objects fit in the free slots of the others
//! as *draining*: no new object goes there. Each owner then moves its objects out of them
//! ([`PageArena::relocate`], under its own lock) and [`PageArena::end_compaction`] returns what
//! could not be emptied to use; the emptied runs' spans go back to the free spans.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use super::budget::MemoryBudget;

/// Bytes of one span: the unit the arena commits, charges and releases.
pub const SPAN_BYTES: usize = 64 << 10;

thread_local! {
    /// Whether this thread is storing a page into a lower tier ([`demoting`]).
    static DEMOTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a demotion's store into a lower tier) with the arena's reserve open to it: the
/// last quarter of the headroom, which other allocations leave alone. A demotion frees more
/// up than it takes down, so a target lowered below what is held still lets pages flow down.
pub fn demoting<R>(f: impl FnOnce() -> R) -> R {
    DEMOTING.set(true);
    let result = f();
    DEMOTING.set(false);
    result
}

/// The most address space an arena reserves (handles name 2^20 spans): 64 GiB.
pub const MAX_RESERVE: usize = SPAN_BYTES << (32 - SLOT_BITS);

/// The largest object: a whole page of the largest page size.
pub const MAX_OBJECT: usize = 2 << 20;

/// Classes are this many bytes apart up to [`SMALL_LIMIT`].
const SMALL_STEP: usize = 16;
const SMALL_LIMIT: usize = 4096;

/// Bits of a handle that name the slot within a run.
const SLOT_BITS: u32 = 12;
const MAX_SLOTS: usize = 1 << SLOT_BITS;

/// An object in the arena: the first span of its run and its slot there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(u32);

impl Handle {
    fn new(span: u32, slot: u32) -> Handle {
        Handle(span << SLOT_BITS | slot)
    }

    fn span(self) -> u32 {
        self.0 >> SLOT_BITS
    }

    fn slot(self) -> u32 {
        self.0 & (MAX_SLOTS as u32 - 1)
    }

    /// The handle as a number (for compact indexes).
    pub fn to_bits(self) -> u32 {
        self.0
    }

    /// A handle from [`Handle::to_bits`].
    pub fn from_bits(bits: u32) -> Handle {
        Handle(bits)
    }
}

/// One size class: its object size, how many spans a run takes, and how many objects a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSpec {
    /// Bytes per object.
    pub size: usize,
    /// Spans per run.
    pub spans: usize,
    /// Objects per run.
    pub slots: usize,
}

/// Every class, smallest first.
fn class_specs() -> Vec<ClassSpec> {
    let mut sizes: Vec<usize> = (1..=SMALL_LIMIT / SMALL_STEP).map(|i| i * SMALL_STEP).collect();
    let mut size = SMALL_LIMIT;
    while size < MAX_OBJECT {
        size = (size + size / 8).div_ceil(SMALL_STEP) * SMALL_STEP;
        sizes.push(size.min(MAX_OBJECT));
    }
    sizes
        .into_iter()
        .map(|size| {
            // The shortest run whose unusable tail is under an eighth of it (and that holds one).
            let mut spans = size.div_ceil(SPAN_BYTES);
            while (spans * SPAN_BYTES) % size > spans * SPAN_BYTES / 8 {
                spans += 1;
            }
            let slots = (spans * SPAN_BYTES / size).min(MAX_SLOTS);
            ClassSpec { size, spans, slots }
        })
        .collect()
}

/// Span metadata, one atomic word per span (meaningful for the first span of a run):
/// `class + 1` (0: not a run's first span), objects in use, the first free slot (a list
/// threaded through the free objects themselves), and the slots never used yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunMeta {
    class: u16,
    used: u16,
    /// `NO_SLOT` when the free list is empty.
    free_head: u16,
    /// Slots `fresh..slots` have never held an object.
    fresh: u16,
}

const NO_SLOT: u16 = u16::MAX;

impl RunMeta {
    fn pack(self) -> u64 {
        (self.class as u64) << 48 | (self.used as u64) << 32 | (self.free_head as u64) << 16 | self.fresh as u64
    }

    fn unpack(word: u64) -> RunMeta {
        RunMeta {
            class: (word >> 48) as u16,
            used: (word >> 32) as u16,
            free_head: (word >> 16) as u16,
            fresh: word as u16,
        }
    }
}

/// The runs of one class that have a free slot.
#[derive(Debug, Default)]
struct ClassState {
    partial: Vec<u32>,
    /// Runs of the class (full or partial): `partial` never holds more, so a capacity of
    /// `runs` plus the runs the free spans could still make is room enough for every push
    /// ([`PageArena::reserve_list_room`]).
    runs: usize,
    /// Runs being emptied by a compaction (sorted): no new object goes there.
    draining: Vec<u32>,
}

/// Spans committed but holding no run, and what the grower should do.
#[derive(Debug, Default)]
struct Spans {
    /// Committed, unused spans (charged to the budget).
    free: Vec<u32>,
    /// Spans never committed, or released: the next fresh span is `next`, released ones are
    /// in `released` (their address space stays reserved).
    next: u32,
    released: Vec<u32>,
    /// Set by an allocation that found no committed span: the grower commits more.
    starved: bool,
}

/// What [`PageArena::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes of committed spans: what the arena holds of the host's memory (charged to the
    /// budget).
    pub committed_bytes: u64,
    /// Bytes of committed spans holding no run: the headroom.
    pub headroom_bytes: u64,
    /// Records stored (page index chunks not included).
    pub objects: u64,
    /// Bytes the records asked for.
    pub object_bytes: u64,
    /// Bytes of the class slots the records occupy (`object_bytes` plus rounding).
    pub slot_bytes: u64,
    /// Bytes of the pools' page index chunks here.
    pub index_chunk_bytes: u64,
    /// Objects moved by compactions so far.
    pub relocated: u64,
    /// Bytes of the spans that hold runs (committed minus the headroom): with `slot_bytes`
    /// and `index_chunk_bytes`, what fragmentation costs.
    pub run_bytes: u64,
    /// Bytes of the pools' page index hash tables on the heap (charged to the budget all the
    /// same).
    pub index_heap_bytes: u64,
    /// Allocations refused for want of committed memory.
    pub refused: u64,
    /// Runs committed by an allocation itself (no headroom left, memory plentiful).
    pub inline_commits: u64,
}

/// How an arena is set up.
#[derive(Debug, Clone, Copy)]
pub struct ArenaConfig {
    /// Address space to reserve, in bytes (nothing of it is resident until committed): the
    /// most the arena can ever commit.
    pub reserve_bytes: usize,
    /// Committed free spans the grower keeps ready, in bytes.
    pub headroom_bytes: usize,
}

/// Whether the machine has memory to spare: `MemAvailable` above an eighth of `MemTotal` and
/// above 256 MiB (`false` when `/proc/meminfo` cannot be read).
fn memory_is_plentiful() -> bool {
    super::MemInfo::read().is_some_and(|m| m.available_bytes > m.total_bytes / 8 && m.available_bytes > 256 << 20)
}

/// Reserves `len` bytes of address space (read-write, zero-filled, nothing resident until
/// touched).
fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address the kernel picks; MAP_NORESERVE: no
    // memory is committed until a page is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap returned a non-null address"))
}

/// The host's page memory. See the module docs.
pub struct PageArena {
    base: NonNull<u8>,
    reserve_spans: u32,
    classes: Vec<ClassSpec>,
    class_states: Box<[Mutex<ClassState>]>,
    /// One word per span of the reservation (its own `MAP_NORESERVE` mapping: the words of
    /// spans never used are never resident).
    meta: NonNull<AtomicU64>,
    spans: Mutex<Spans>,
    grow_wanted: Condvar,
    headroom_spans: AtomicU64,
    /// Whether a quarter of the headroom is kept for demotions ([`demoting`]): set once the
    /// host has a tiered pool.
    demotion_reserve: std::sync::atomic::AtomicBool,
    /// Whether the machine has memory to spare (`MemAvailable` above an eighth of `MemTotal`
    /// and 256 MiB), refreshed by the grower: only then may an allocation that finds no
    /// headroom commit memory itself.
    plentiful: std::sync::atomic::AtomicBool,
    inline_commits: AtomicU64,
    budget: Arc<MemoryBudget>,
    objects: AtomicU64,
    object_bytes: AtomicU64,
    index_chunk_bytes: AtomicU64,
    index_heap_bytes: AtomicU64,
    relocated: AtomicU64,
    slot_bytes: AtomicU64,
    refused: AtomicU64,
}

// SAFETY: the arena's memory is reached only through `&self` methods that synchronize every
// mutation (class locks, the spans lock, atomics); the base pointer is never reassigned.
unsafe impl Send for PageArena {}
// SAFETY: as above.
unsafe impl Sync for PageArena {}

impl std::fmt::Debug for PageArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageArena").field("stats", &self.stats()).finish()
    }
}

impl Drop for PageArena {
    fn drop(&mut self) {
        let committed = self.stats().committed_bytes;
        self.budget.release(committed);
        // SAFETY: both ranges were mapped by `new` with these lengths and nothing refers to
        // them now.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.reserve_spans as usize * SPAN_BYTES);
            libc::munmap(self.meta.as_ptr().cast(), self.reserve_spans as usize * 8);
        }
    }
}

impl PageArena {
    /// An arena charging `budget`, with `config.reserve_bytes` of address space reserved and
    /// nothing committed yet (call [`PageArena::grow`], or run [`PageArena::spawn_grower`]).
    pub fn new(config: ArenaConfig, budget: Arc<MemoryBudget>) -> io::Result<PageArena> {
        let reserve_spans = (config.reserve_bytes / SPAN_BYTES).clamp(1, 1 << (32 - SLOT_BITS)) as u32;
        let base = reserve(reserve_spans as usize * SPAN_BYTES)?;
        let meta = match reserve(reserve_spans as usize * 8) {
            Ok(meta) => meta.cast::<AtomicU64>(),
            Err(e) => {
                // SAFETY: just mapped with this length.
                unsafe { libc::munmap(base.as_ptr().cast(), reserve_spans as usize * SPAN_BYTES) };
                return Err(e);
            }
        };
        let classes = class_specs();
        Ok(PageArena {
            base,
            reserve_spans,
            class_states: classes.iter().map(|_| Mutex::new(ClassState::default())).collect(),
            classes,
            meta,
            spans: Mutex::new(Spans::default()),
            grow_wanted: Condvar::new(),
            headroom_spans: AtomicU64::new(config.headroom_bytes.div_ceil(SPAN_BYTES).max(1) as u64),
            demotion_reserve: std::sync::atomic::AtomicBool::new(false),
            plentiful: std::sync::atomic::AtomicBool::new(memory_is_plentiful()),
            inline_commits: AtomicU64::new(0),
            budget,
            objects: AtomicU64::new(0),
            object_bytes: AtomicU64::new(0),
            index_chunk_bytes: AtomicU64::new(0),
            index_heap_bytes: AtomicU64::new(0),
            relocated: AtomicU64::new(0),
            slot_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The size classes.
    pub fn classes(&self) -> &[ClassSpec] {
        &self.classes
    }

    /// The class serving objects of `len` bytes (`1..=MAX_OBJECT`).
    fn class_of(&self, len: usize) -> usize {
        if len <= SMALL_LIMIT {
            len.max(1).div_ceil(SMALL_STEP) - 1
        } else {
            SMALL_LIMIT / SMALL_STEP + self.classes[SMALL_LIMIT / SMALL_STEP..].partition_point(|c| c.size < len)
        }
    }

    fn span_ptr(&self, span: u32) -> *mut u8 {
        debug_assert!(span < self.reserve_spans);
        // SAFETY: `span` is inside the reserved range.
        unsafe { self.base.as_ptr().add(span as usize * SPAN_BYTES) }
    }

    fn object_ptr(&self, handle: Handle, size: usize) -> *mut u8 {
        // SAFETY: a slot of a run lies inside the run's spans.
        unsafe { self.span_ptr(handle.span()).add(handle.slot() as usize * size) }
    }

    fn meta_word(&self, span: u32) -> &AtomicU64 {
        assert!(span < self.reserve_spans, "span {span} of {}", self.reserve_spans);
        // SAFETY: inside the metadata mapping (zero-filled: an all-zero word is "no run"),
        // which lives as long as `self`.
        unsafe { &*self.meta.as_ptr().add(span as usize) }
    }

    fn run_meta(&self, span: u32) -> RunMeta {
        RunMeta::unpack(self.meta_word(span).load(Ordering::Relaxed))
    }

    fn set_run_meta(&self, span: u32, meta: RunMeta) {
        self.meta_word(span).store(meta.pack(), Ordering::Relaxed)
    }

    /// Copies `bytes` (1 to [`MAX_OBJECT`] of them) into a new object. `None` when no committed
    /// memory is free for it: the caller refuses the store; the grower is woken to commit
    /// more within the budget. Never allocates, never faults.
    pub fn alloc(&self, bytes: &[u8]) -> Option<Handle> {
        assert!(!bytes.is_empty() && bytes.len() <= MAX_OBJECT, "object of {} bytes", bytes.len());
        let class = self.class_of(bytes.len());
        let spec = self.classes[class];
        let handle = {
            let mut state = self.class_states[class].lock();
            let run = match state.partial.last() {
                Some(&run) => run,
                None => {
                    let run = self.take_run(spec.spans)?;
                    self.set_run_meta(run, RunMeta { class: class as u16 + 1, used: 0, free_head: NO_SLOT, fresh: 0 });
                    state.runs += 1;
                    state.partial.push(run);
                    run
                }
            };
            let mut meta = self.run_meta(run);
            let slot = if meta.free_head != NO_SLOT {
                let slot = meta.free_head;
                // The free list is threaded through the free objects' first two bytes.
                let next = self.object_ptr(Handle::new(run, slot as u32), spec.size);
                // SAFETY: a free slot of a committed run; its first bytes hold the next link.
                meta.free_head = unsafe { next.cast::<u16>().read_unaligned() };
                slot
            } else {
                meta.fresh += 1;
                meta.fresh - 1
            };
            meta.used += 1;
            if meta.used as usize == spec.slots {
                state.partial.pop();
            }
            self.set_run_meta(run, meta);
            Handle::new(run, slot as u32)
        };
        // SAFETY: the slot is this caller's alone now, inside committed memory, `spec.size >=
        // bytes.len()`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.object_ptr(handle, spec.size), bytes.len()) };
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.object_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.slot_bytes.fetch_add(spec.size as u64, Ordering::Relaxed);
        Some(handle)
    }

    /// The `len` bytes of object `handle`, for `read`. The caller owns the object (it stored it
    /// and has not freed it) and passes the length it stored.
    pub fn with<R>(&self, handle: Handle, len: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        let meta = self.run_meta(handle.span());
        assert!(meta.class > 0, "handle {handle:?} names no run");
        let size = self.classes[meta.class as usize - 1].size;
        assert!(len <= size, "{len} bytes of a {size}-byte object");
        // SAFETY: an object the caller owns, inside committed memory; nothing writes it until
        // the owner frees it, which it cannot do while it borrows it here.
        read(unsafe { std::slice::from_raw_parts(self.object_ptr(handle, size), len) })
    }

    /// The `len` bytes of object `handle`, for `write`.
    ///
    /// # Safety
    ///
    /// The caller owns the object (it allocated it and has not freed it), passes the length
    /// it allocated, and no other borrow of the object is alive while `write` runs (the owner
    /// serializes its own accesses, e.g. under its lock).
    pub unsafe fn with_mut<R>(&self, handle: Handle, len: usize, write: impl FnOnce(&mut [u8]) -> R) -> R {
        let meta = self.run_meta(handle.span());
        assert!(meta.class > 0, "handle {handle:?} names no run");
        let size = self.classes[meta.class as usize - 1].size;
        assert!(len <= size, "{len} bytes of a {size}-byte object");
        // SAFETY: an object the caller owns exclusively (this function's contract), inside
        // committed memory.
        write(unsafe { std::slice::from_raw_parts_mut(self.object_ptr(handle, size), len) })
    }

    /// A page index chunk: [`PageArena::alloc`], counted as index, not as a record.
    pub fn alloc_index(&self, bytes: &[u8]) -> Option<Handle> {
        let handle = self.alloc(bytes)?;
        self.count_as_index(bytes.len(), true);
        Some(handle)
    }

    /// Frees a chunk of [`PageArena::alloc_index`].
    pub fn free_index(&self, handle: Handle, len: usize) {
        self.count_as_index(len, false);
        self.free(handle, len);
    }

    fn count_as_index(&self, len: usize, allocated: bool) {
        let size = self.classes[self.class_of(len)].size as u64;
        let relaxed = Ordering::Relaxed;
        if allocated {
            self.objects.fetch_sub(1, relaxed);
            self.object_bytes.fetch_sub(len as u64, relaxed);
            self.slot_bytes.fetch_sub(size, relaxed);
            self.index_chunk_bytes.fetch_add(size, relaxed);
        } else {
            self.objects.fetch_add(1, relaxed);
            self.object_bytes.fetch_add(len as u64, relaxed);
            self.slot_bytes.fetch_add(size, relaxed);
            self.index_chunk_bytes.fetch_sub(size, relaxed);
        }
    }

    /// Charges `bytes` of page index kept on the heap (a hash table's growth) to the budget;
    /// `false` if the budget refuses. With `force`, charged whatever the limit (memory already
    /// taken).
    pub fn charge_index_heap(&self, bytes: u64, force: bool) -> bool {
        if force {
            self.budget.force_charge(bytes);
        } else if !self.budget.try_charge(bytes) {
            return false;
        }
        self.index_heap_bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Releases heap index bytes charged by [`PageArena::charge_index_heap`].
    pub fn release_index_heap(&self, bytes: u64) {
        self.index_heap_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.release(bytes);
    }

    // ----- compaction -----

    /// Starts a compaction: in every class, the least-used runs whose objects fit in the free
    /// slots of the class's other partial runs are marked **draining** — no new object goes
    /// there — so that moving their objects ([`PageArena::relocate`]) empties them. Returns
    /// how many runs it marked (their spans go back to the free spans as they empty, and the
    /// grower releases what is beyond the headroom).
    pub fn begin_compaction(&self) -> usize {
        let mut marked = 0;
        for (class, spec) in self.classes.iter().enumerate() {
            let mut state = self.class_states[class].lock();
            if state.partial.len() < 2 {
                continue;
            }
            let mut runs: Vec<(u16, u32)> = state.partial.iter().map(|&r| (self.run_meta(r).used, r)).collect();
            runs.sort_unstable();
            // Victims from the emptiest: while what they hold fits in the free slots of the rest.
            let free_in = |used: u16| (spec.slots - used as usize) as u64;
            let mut room: u64 = runs.iter().map(|&(used, _)| free_in(used)).sum();
            let mut victims = Vec::new();
            for &(used, run) in &runs {
                // Taking this run removes its free slots from the room and needs room for its objects.
                if room < free_in(used) + used as u64 || victims.len() + 1 == runs.len() {
                    break;
                }
                room -= free_in(used) + used as u64;
                victims.push(run);
            }
            if victims.is_empty() {
                continue;
            }
            state.partial.retain(|r| !victims.contains(r));
            state.draining.extend(&victims);
            state.draining.sort_unstable();
            marked += victims.len();
        }
        marked
    }

    /// Whether object `handle` lies in a run being drained.
    pub fn is_draining(&self, handle: Handle) -> bool {
        let meta = self.run_meta(handle.span());
        meta.class > 0
            && self.class_states[meta.class as usize - 1].lock().draining.binary_search(&handle.span()).is_ok()
    }

    /// Moves object `handle` of `len` bytes out of a draining run: a new object with its bytes
    /// (in a run that is not draining), the old one freed. `None` (nothing changed) if there is
    /// no room. The caller owns the object and updates its own reference.
    pub fn relocate(&self, handle: Handle, len: usize) -> Option<Handle> {
        // `with` lends the old bytes; `alloc` copies them into another slot.
        let moved = self.with(handle, len, |bytes| self.alloc(bytes))?;
        self.free(handle, len);
        self.relocated.fetch_add(1, Ordering::Relaxed);
        Some(moved)
    }

    /// Ends a compaction: runs that could not be emptied take new objects again.
    pub fn end_compaction(&self) {
        for state in self.class_states.iter() {
            let mut state = state.lock();
            let left = std::mem::take(&mut state.draining);
            state.partial.extend(left);
        }
    }

    /// The budget the arena charges.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Frees object `handle` of `len` bytes (as stored).
    pub fn free(&self, handle: Handle, len: usize) {
        let run = handle.span();
        let class = self.run_meta(run).class as usize;
        assert!(class > 0, "handle {handle:?} names no run");
        let class = class - 1;
        let spec = self.classes[class];
        let mut state = self.class_states[class].lock();
        let mut meta = self.run_meta(run);
        let was_full = meta.used as usize == spec.slots;
        let draining = state.draining.binary_search(&run);
        // SAFETY: the slot is the caller's object, now free: its first bytes hold the link.
        unsafe { self.object_ptr(handle, spec.size).cast::<u16>().write_unaligned(meta.free_head) };
        meta.free_head = handle.slot() as u16;
        meta.used -= 1;
        if meta.used == 0 {
            // An empty run goes back to the free spans.
            state.runs -= 1;
            state.partial.retain(|&r| r != run);
            if let Ok(at) = draining {
                state.draining.remove(at);
            }
            self.set_run_meta(run, RunMeta { class: 0, used: 0, free_head: NO_SLOT, fresh: 0 });
            drop(state);
            self.return_run(run, spec.spans);
        } else {
            if was_full && draining.is_err() {
                state.partial.push(run);
            }
            self.set_run_meta(run, meta);
        }
        self.objects.fetch_sub(1, Ordering::Relaxed);
        self.object_bytes.fetch_sub(len as u64, Ordering::Relaxed);
        self.slot_bytes.fetch_sub(spec.size as u64, Ordering::Relaxed);
    }

    /// Takes `count` consecutive committed free spans for a new run; `None` (and the grower
    /// woken) if there are not that many in a row.
    fn take_run(&self, count: usize) -> Option<u32> {
        let mut spans = self.spans.lock();
        // With tiered pools, the last quarter of the headroom is the tiers' ([`demoting`]):
        // when a lowered target stops the grower, a demotion must still find room below for a
        // page whose room up it then gives back.
        let kept = if DEMOTING.get() || !self.demotion_reserve.load(Ordering::Relaxed) {
            0
        } else {
            self.headroom_spans.load(Ordering::Relaxed) as usize / 4
        };
        let found = if spans.free.len() < count + kept {
            None
        } else if count == 1 {
            spans.free.pop()
        } else {
            // Runs of several spans: the free list kept sorted, look for `count` in a row.
            spans.free.sort_unstable_by(|a, b| b.cmp(a));
            let free = &spans.free;
            let at = (0..=free.len().saturating_sub(count))
                .find(|&i| i + count <= free.len() && (1..count).all(|k| free[i + k] + k as u32 == free[i]));
            at.map(|i| {
                let first = spans.free[i + count - 1];
                spans.free.drain(i..i + count);
                first
            })
        };
        if let Some(run) = found {
            if (spans.free.len() as u64) < self.headroom_spans.load(Ordering::Relaxed) / 2 {
                self.grow_wanted.notify_one();
            }
            return Some(run);
        }
        self.grow_wanted.notify_one();
        // The headroom is gone (a burst faster than the grower). While the machine has memory
        // to spare, committing here cannot wait on reclaim, so the store is served; under
        // pressure it is refused, never satisfied by faulting memory in on the I/O path.
        // A host whose memory is locked serves the machine's swap: "plentiful" is the grower's
        // last look (up to 100 ms old), and a workload can eat that memory in less — a fault
        // here then waits on reclaim, which waits on this very host (a ublk queue thread hung
        // so in the global-pressure guest scenario). There the store is always refused.
        if !super::is_locked()
            && self.plentiful.load(Ordering::Relaxed)
            && spans.next as usize + count <= self.reserve_spans as usize
            && self.budget.try_charge((count * SPAN_BYTES) as u64)
        {
            let first = spans.next;
            spans.next += count as u32;
            drop(spans);
            for span in first..first + count as u32 {
                self.commit(span);
            }
            self.inline_commits.fetch_add(1, Ordering::Relaxed);
            return Some(first);
        }
        spans.starved = true;
        self.refused.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Gives the lists the I/O path pushes to room ahead, here, off the I/O path (a push past
    /// a list's capacity would allocate there): each class's partial runs room for every run
    /// it has and every run the free spans could make; the free spans room for every span
    /// committed and the headroom still to come. (4 bytes per 64 KiB span.)
    fn reserve_list_room(&self) {
        let room = |list: &mut Vec<u32>, want: usize| {
            if list.capacity() < want {
                list.reserve(want - list.len());
            }
        };
        let (free, committed) = {
            let spans = self.spans.lock();
            (spans.free.len(), spans.next as usize - spans.released.len())
        };
        for (state, spec) in self.class_states.iter().zip(self.classes.iter()) {
            let mut state = state.lock();
            let want = state.runs + free / spec.spans + 1;
            room(&mut state.partial, want);
        }
        let target = self.headroom_spans.load(Ordering::Relaxed) as usize;
        room(&mut self.spans.lock().free, committed + target + 1);
    }

    fn return_run(&self, first: u32, count: usize) {
        let mut spans = self.spans.lock();
        spans.free.extend(first..first + count as u32);
    }

    /// Commits free spans until the headroom is back (within the budget), and releases free
    /// spans beyond twice the headroom. Returns how many spans it committed. Faults pages in:
    /// call it from a background thread ([`PageArena::spawn_grower`]), never on the I/O path.
    pub fn grow(&self) -> usize {
        self.reserve_list_room();
        let target = self.headroom_spans.load(Ordering::Relaxed) as usize;
        let mut committed = 0;
        loop {
            let span = {
                let mut spans = self.spans.lock();
                spans.starved = false;
                if spans.free.len() >= target {
                    break;
                }
                if !self.budget.try_charge(SPAN_BYTES as u64) {
                    break;
                }
                match spans.released.pop() {
                    Some(span) => span,
                    None if spans.next < self.reserve_spans => {
                        spans.next += 1;
                        spans.next - 1
                    }
                    None => {
                        self.budget.release(SPAN_BYTES as u64);
                        break;
                    }
                }
            };
            self.commit(span);
            self.spans.lock().free.push(span);
            committed += 1;
        }
        self.release_excess(2 * target);
        committed
    }

    /// Faults `span` in (and so locks it, when the process locks its memory).
    fn commit(&self, span: u32) {
        let ptr = self.span_ptr(span);
        // SAFETY: `span` is in the reserved range and holds no object.
        let populated = unsafe { libc::madvise(ptr.cast(), SPAN_BYTES, libc::MADV_POPULATE_WRITE) } == 0;
        if !populated {
            for page in (0..SPAN_BYTES).step_by(4096) {
                // SAFETY: as above; a write of zero faults the page in.
                unsafe { ptr.add(page).write_volatile(0) };
            }
        }
    }

    /// Releases free spans beyond `keep` (their memory goes back to the kernel and the budget).
    fn release_excess(&self, keep: usize) {
        let excess = {
            let mut spans = self.spans.lock();
            if spans.free.len() <= keep {
                return;
            }
            // Release the highest spans: runs keep low addresses, dense.
            spans.free.sort_unstable();
            spans.free.split_off(keep)
        };
        for &span in &excess {
            // SAFETY: a free span holds no object, and these left the free list above.
            unsafe { libc::madvise(self.span_ptr(span).cast(), SPAN_BYTES, libc::MADV_DONTNEED) };
            self.budget.release(SPAN_BYTES as u64);
        }
        self.spans.lock().released.extend(excess);
    }

    /// Says whether the machine has memory to spare (the grower refreshes this from
    /// `/proc/meminfo`; tests and a memory governor may set it).
    pub fn set_memory_plentiful(&self, plentiful: bool) {
        self.plentiful.store(plentiful, Ordering::Relaxed)
    }

    /// Keeps the last quarter of the headroom for demotions into lower tiers ([`demoting`]):
    /// the host calls it once it has a tiered pool.
    pub fn reserve_for_demotions(&self) {
        self.demotion_reserve.store(true, Ordering::Relaxed);
    }

    /// Sets the headroom the grower keeps, in bytes.
    pub fn set_headroom(&self, bytes: usize) {
        self.headroom_spans.store(bytes.div_ceil(SPAN_BYTES).max(1) as u64, Ordering::Relaxed);
        self.grow_wanted.notify_one();
    }

    /// Waits until an allocation wants more memory or `timeout` passes.
    fn wait_for_demand(&self, timeout: std::time::Duration) {
        let mut spans = self.spans.lock();
        if !spans.starved {
            self.grow_wanted.wait_for(&mut spans, timeout);
        }
    }

    /// Starts the background thread that keeps the headroom (`tmem-arena-grower`), for as long
    /// as the arena lives.
    pub fn spawn_grower(self: &Arc<Self>) -> io::Result<()> {
        let arena = Arc::downgrade(self);
        std::thread::Builder::new().name("tmem-arena-grower".into()).spawn(move || {
            // Committing memory may enter reclaim, which may swap out to this very host: the
            // grower must never wait on that I/O (its mmap_lock would stall the I/O threads'
            // page-table walks behind it). As an I/O flusher its allocations do not wait on I/O;
            // when they fail, the headroom is not refilled and stores are refused.
            super::become_io_flusher();
            while let Some(arena) = arena.upgrade() {
                arena.plentiful.store(memory_is_plentiful(), Ordering::Relaxed);
                arena.grow();
                arena.wait_for_demand(std::time::Duration::from_millis(100));
            }
        })?;
        Ok(())
    }

    /// What the arena holds now.
    pub fn stats(&self) -> ArenaStats {
        let spans = self.spans.lock();
        let committed = spans.next as u64 - spans.released.len() as u64;
        ArenaStats {
            committed_bytes: committed * SPAN_BYTES as u64,
            headroom_bytes: spans.free.len() as u64 * SPAN_BYTES as u64,
            objects: self.objects.load(Ordering::Relaxed),
            object_bytes: self.object_bytes.load(Ordering::Relaxed),
            slot_bytes: self.slot_bytes.load(Ordering::Relaxed),
            index_chunk_bytes: self.index_chunk_bytes.load(Ordering::Relaxed),
            index_heap_bytes: self.index_heap_bytes.load(Ordering::Relaxed),
            relocated: self.relocated.load(Ordering::Relaxed),
            run_bytes: (committed - spans.free.len() as u64) * SPAN_BYTES as u64,
            refused: self.refused.load(Ordering::Relaxed),
            inline_commits: self.inline_commits.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small arena with its grower running, for tests of what stores into it.
    pub(crate) fn test_arena() -> Arc<PageArena> {
        let budget = Arc::new(MemoryBudget::new(256 << 20));
        let config = ArenaConfig { reserve_bytes: 256 << 20, headroom_bytes: 4 << 20 };
        let arena = Arc::new(PageArena::new(config, budget).unwrap());
        arena.grow();
        arena.spawn_grower().unwrap();
        arena
    }

    fn arena(reserve_mib: usize, headroom_mib: usize, budget_mib: u64) -> (Arc<MemoryBudget>, PageArena) {
        let budget = Arc::new(MemoryBudget::new(budget_mib << 20));
        let config = ArenaConfig { reserve_bytes: reserve_mib << 20, headroom_bytes: headroom_mib << 20 };
        let arena = PageArena::new(config, budget.clone()).unwrap();
        (budget, arena)
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i as u64 * 7919) >> 3) as u8).collect()
    }

    #[test]
    fn classes_cover_every_size_with_little_waste() {
        let (_, arena) = arena(64, 1, 64);
        let classes = arena.classes();
        assert_eq!(classes.last().unwrap().size, MAX_OBJECT);
        for len in (1..=MAX_OBJECT).step_by(97).chain([1, 16, 17, 4096, 4097, MAX_OBJECT]) {
            let class = classes[arena.class_of(len)];
            assert!(class.size >= len, "{len} in {class:?}");
            if len > SMALL_STEP {
                let prev = classes[arena.class_of(len) - 1];
                assert!(prev.size < len, "{len}: a smaller class {prev:?} would do");
            }
            // The run's tail no object can use is under an eighth of it.
            assert!(class.spans * SPAN_BYTES - class.slots * class.size <= class.spans * SPAN_BYTES / 8, "{class:?}");
        }
    }

    #[test]
    fn after_a_grower_round_frees_and_new_runs_never_grow_the_lists() {
        let (_, arena) = arena(64, 16, 64);
        arena.set_memory_plentiful(false);
        arena.grow();
        // Fill runs of one class (2 KiB objects: hundreds of runs) from the headroom.
        let mut handles = Vec::new();
        while handles.len() < 6000 {
            match arena.alloc(&[7u8; 2000]) {
                Some(h) => handles.push(h),
                None => break,
            }
        }
        arena.grow();
        let class = arena.class_of(2000);
        let runs = handles.len().div_ceil(arena.classes[class].slots);
        assert!(runs > 100, "{} objects fill {runs} runs", handles.len());
        let capacity = |arena: &PageArena| {
            (arena.class_states[class].lock().partial.capacity(), arena.spans.lock().free.capacity())
        };
        let before = capacity(&arena);
        // Every full run turns partial (one free in each), then every run empties back to the
        // free spans.
        let slots = arena.classes[class].slots;
        for h in handles.iter().step_by(slots) {
            arena.free(*h, 2000);
        }
        assert!(arena.class_states[class].lock().partial.len() >= runs - 1, "every run is partial");
        for (_, h) in handles.iter().enumerate().filter(|(i, _)| i % slots != 0) {
            arena.free(*h, 2000);
        }
        assert_eq!(capacity(&arena), before, "no list grew while the runs were freed");
        assert!(arena.spans.lock().free.len() > 8, "the runs went back to the free spans");
    }

    #[test]
    fn objects_round_trip_and_free_slots_are_reused() {
        let (budget, arena) = arena(64, 4, 64);
        arena.set_memory_plentiful(false);
        assert_eq!(arena.alloc(b"x"), None, "under pressure with nothing committed: refused, never faulted in");
        assert!(arena.grow() >= 4);
        let lens = [1usize, 15, 16, 17, 700, 4096, 4097, 20000, 70000];
        let handles: Vec<(Handle, Vec<u8>)> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let data = bytes(i as u64, len);
                (arena.alloc(&data).expect("room"), data)
            })
            .collect();
        for (handle, data) in &handles {
            arena.with(*handle, data.len(), |got| assert_eq!(got, &data[..]));
        }
        let stats = arena.stats();
        assert_eq!(stats.objects, lens.len() as u64);
        assert_eq!(stats.object_bytes, lens.iter().sum::<usize>() as u64);
        assert!(stats.committed_bytes <= budget.used(), "committed memory is charged");
        let (h, data) = &handles[4];
        arena.free(*h, data.len());
        let again = arena.alloc(&bytes(99, 690)).unwrap();
        assert_eq!(again, *h, "a freed slot of the class is reused first");
        for (handle, data) in &handles[..4] {
            arena.with(*handle, data.len(), |got| assert_eq!(got, &data[..]));
        }
    }

    #[test]
    fn the_budget_bounds_what_is_committed_and_refusals_are_counted() {
        let (budget, arena) = arena(256, 4, 2);
        arena.set_memory_plentiful(false);
        arena.grow();
        assert!(budget.used() <= 2 << 20 && arena.stats().committed_bytes == budget.used());
        let page = bytes(1, 4000);
        let mut stored = Vec::new();
        while let Some(h) = arena.alloc(&page) {
            stored.push(h);
            if stored.len() % 8 == 0 {
                arena.grow();
            }
        }
        let stats = arena.stats();
        assert!(stats.refused >= 1);
        assert!(stats.slot_bytes <= 2 << 20, "{stats:?}");
        assert!(stored.len() >= 400, "2 MiB holds about 500 4000-byte objects, got {}", stored.len());
        // Freeing everything gives the spans back; the grower releases what is beyond headroom.
        for h in stored {
            arena.free(h, page.len());
        }
        arena.set_headroom(SPAN_BYTES);
        arena.grow();
        assert!(arena.stats().committed_bytes <= 2 * SPAN_BYTES as u64, "{:?}", arena.stats());
        assert_eq!(budget.used(), arena.stats().committed_bytes);
    }

    #[test]
    fn with_tiers_a_quarter_of_the_headroom_is_kept_for_demotions() {
        // 2 MiB of budget, all committed as headroom (32 spans), nothing committed inline.
        let (_budget, arena) = arena(256, 2, 2);
        arena.set_memory_plentiful(false);
        arena.reserve_for_demotions();
        arena.grow();
        assert_eq!(arena.stats().headroom_bytes, 2 << 20);
        let page = bytes(3, 4000);
        let fill = |arena: &PageArena| std::iter::from_fn(|| arena.alloc(&page)).count();
        // A 4000-byte object takes a slot of a run of its class: the stores stop with 8 spans
        // (a quarter) still free, which only a demotion may take.
        let stored = fill(&arena);
        assert_eq!(arena.stats().headroom_bytes, 8 * SPAN_BYTES as u64, "{stored} stored");
        let demoted = demoting(|| fill(&arena));
        assert!(demoted >= 100, "the reserve holds about 128 such objects: {demoted}");
        assert_eq!(arena.stats().headroom_bytes, 0);
        assert!(arena.alloc(&page).is_none(), "and nothing is left for anyone");
    }

    #[test]
    fn with_memory_to_spare_a_burst_commits_inline_within_the_budget() {
        let (budget, arena) = arena(64, 1, 1);
        arena.set_memory_plentiful(true);
        let page = bytes(7, 4000);
        let mut stored = Vec::new();
        while let Some(h) = arena.alloc(&page) {
            stored.push(h);
        }
        let stats = arena.stats();
        assert!(stats.inline_commits >= 15 && stats.refused == 1, "{stats:?}");
        assert!(budget.used() <= 1 << 20 && stats.committed_bytes == budget.used(), "{stats:?}");
        assert!(stored.len() >= 200, "1 MiB of inline commits holds about 256 such objects: {}", stored.len());
        for h in stored {
            arena.with(h, page.len(), |got| assert_eq!(got, &page[..]));
        }
    }

    #[test]
    fn many_threads_store_and_free_their_own_objects() {
        let (_, arena) = arena(512, 64, 512);
        let arena = Arc::new(arena);
        arena.grow();
        arena.spawn_grower().unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let arena = arena.clone();
                std::thread::spawn(move || {
                    let mut mine: Vec<(Handle, Vec<u8>)> = Vec::new();
                    for i in 0..20_000u64 {
                        let len = 1 + ((i * 7 + t * 13) % 3000) as usize;
                        let data = bytes(t << 32 | i, len);
                        match arena.alloc(&data) {
                            Some(h) => mine.push((h, data)),
                            None => std::thread::sleep(std::time::Duration::from_millis(1)),
                        }
                        if i % 3 == 0 && !mine.is_empty() {
                            let (h, data) = mine.swap_remove((i as usize * 31) % mine.len());
                            arena.with(h, data.len(), |got| assert_eq!(got, &data[..]));
                            arena.free(h, data.len());
                        }
                    }
                    for (h, data) in mine {
                        arena.with(h, data.len(), |got| assert_eq!(got, &data[..]));
                        arena.free(h, data.len());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = arena.stats();
        assert_eq!((stats.objects, stats.object_bytes, stats.slot_bytes), (0, 0, 0));
    }
}
