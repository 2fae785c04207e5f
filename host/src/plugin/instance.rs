//! One live plugin instance: its wasmtime `Store`, its I/O buffers, its typed exports, and
//! the host functions it may call. Every call runs under the instance's deadline and memory
//! cap; anything that goes wrong comes back as a [`PluginFault`], after which the instance
//! must be dropped (a trapped instance is never re-entered).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_api::abi::{self, export, import, status};
use wasmtime::{Caller, Linker, Memory, Store, Trap, TypedFunc};

use super::limits::{MemoryCap, SandboxLimits};
use super::module::PluginModule;
use super::net::{NetAccess, NetPolicy};
use crate::page_store::PageShard;

/// The data of a plugin's wasmtime `Store`: what its host functions can reach.
pub struct PluginState {
    pub(crate) cap: MemoryCap,
    /// The host page store shard this instance keeps bytes in (stores only).
    pages: Option<Arc<PageShard>>,
    memory: Option<Memory>,
    /// Plugin name, for log lines.
    name: Arc<str>,
    log_budget: LogBudget,
    /// Connections, for a plugin granted `network`.
    net: Option<NetAccess>,
    /// The running call's time budget (its deadline, from its start).
    budget: Duration,
    /// The call's deadline passed: when (wall clock and this thread's CPU time). See
    /// [`on_deadline`].
    overrun: Option<Overrun>,
}

/// A call past its deadline, being watched ([`on_deadline`]).
#[derive(Debug, Clone, Copy)]
struct Overrun {
    wall: Instant,
    cpu: Duration,
}

/// Ticks between two looks at a call past its deadline.
const OVERRUN_PROBE_TICKS: u64 = 10;

/// Past its deadline, a call still running after this long is stopped whatever the reason.
const OVERRUN_LIMIT: Duration = Duration::from_secs(60);

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A call reached its deadline (wall clock, counted by the epoch ticker). A plugin that loops
/// keeps its thread busy and is stopped (`Trap::Interrupt`, the deadline fault). But a call
/// can also pass its deadline because its thread did not run — a machine under memory
/// pressure, where the host serving swap must not tear an instance down (rebuilding it
/// allocates, on the I/O path, under that pressure). So past its deadline a call is watched
/// every [`OVERRUN_PROBE_TICKS`] ticks, and stopped once its thread has used its budget again
/// in CPU time since (at least 10 ms) — a looping plugin soon, however busy the machine; a
/// starved call not until it really runs — or after [`OVERRUN_LIMIT`] whatever happened. A
/// normal call never gets here: this costs nothing on the I/O path.
fn on_deadline(mut cx: wasmtime::StoreContextMut<'_, PluginState>) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let state = cx.data_mut();
    let Some(since) = state.overrun else {
        state.overrun = Some(Overrun { wall, cpu });
        return Ok(wasmtime::UpdateDeadline::Continue(OVERRUN_PROBE_TICKS));
    };
    if cpu.saturating_sub(since.cpu) >= state.budget.max(Duration::from_millis(10))
        || wall - since.wall >= OVERRUN_LIMIT
    {
        return Err(Trap::Interrupt.into());
    }
    Ok(wasmtime::UpdateDeadline::Continue(OVERRUN_PROBE_TICKS))
}

/// Log lines a plugin may write: a burst, then one per 10 ms on average.
#[derive(Debug)]
struct LogBudget {
    tokens: f64,
    last: Instant,
}

impl LogBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * 100.0).min(100.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How a plugin call failed. The instance that failed must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    /// The call ran past its deadline and was interrupted.
    #[error("plugin call exceeded its deadline of {0:?}")]
    Deadline(Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin exceeded its memory cap of {0} bytes")]
    MemoryCap(usize),
    /// The plugin tried to grow its memory past what the host's memory budget has left (not
    /// the plugin's fault, but its call cannot go on: the instance is dropped and its memory
    /// given back).
    #[error("the host's memory budget could not hold the plugin's memory growth")]
    MemoryBudget,
    /// The plugin trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin answered outside the ABI (unknown status, length past the buffer).
    #[error("plugin broke the ABI: {0}")]
    Protocol(String),
    /// The plugin refused its config in `init`.
    #[error("plugin refused its config: {0}")]
    InitRefused(String),
    /// No instance could be created (the host's instance slots are exhausted, ...).
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl PluginFault {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::Deadline(_) => "deadline",
            PluginFault::MemoryCap(_) => "memory_cap",
            PluginFault::MemoryBudget => "memory_budget",
            PluginFault::Trap(_) => "trap",
            PluginFault::Protocol(_) => "protocol",
            PluginFault::InitRefused(_) => "init_refused",
            PluginFault::Instantiate(_) => "instantiate",
        }
    }
}

/// Defines the host imports (module `tmem`, see [`tmem_api::abi`]) on `linker`.
pub(crate) fn define_host_functions(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::HOST_MODULE,
        import::LOG,
        |mut caller: Caller<'_, PluginState>, level: i32, ptr: i32, len: i32| {
            let Some(memory) = caller.data().memory else { return wasmtime::Result::Ok(()) };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            if !state.log_budget.take() {
                return wasmtime::Result::Ok(());
            }
            let bytes = guest_slice(data, ptr, len.min(1024))?;
            let line = String::from_utf8_lossy(bytes);
            let plugin = &*state.name;
            match level {
                abi::log_level::ERROR => tracing::error!(plugin, "{line}"),
                abi::log_level::WARN => tracing::warn!(plugin, "{line}"),
                abi::log_level::INFO => tracing::info!(plugin, "{line}"),
                _ => tracing::debug!(plugin, "{line}"),
            }
            wasmtime::Result::Ok(())
        },
    )?;
    linker.func_wrap(
        abi::HOST_MODULE,
        import::PAGES_PUT,
        |mut caller: Caller<'_, PluginState>, offset: i64, ptr: i32, len: i32| {
            let (data, state) = memory_of(&mut caller)?;
            let bytes = guest_slice(data, ptr, len)?;
            let kept = pages_of(state)?.put(offset as u64, bytes);
            wasmtime::Result::Ok(if kept { 0i32 } else { abi::pages::ALLOC_FAILED })
        },
    )?;
    linker.func_wrap(
        abi::HOST_MODULE,
        import::PAGES_GET,
        |mut caller: Caller<'_, PluginState>, offset: i64, ptr: i32, cap: i32| {
            let (data, state) = memory_of(&mut caller)?;
            let out = guest_slice_mut(data, ptr, cap)?;
            let found = pages_of(state)?.with(offset as u64, |bytes| {
                if bytes.len() > out.len() {
                    abi::pages::TOO_SMALL
                } else {
                    out[..bytes.len()].copy_from_slice(bytes);
                    bytes.len() as i32
                }
            });
            wasmtime::Result::Ok(found.unwrap_or(abi::pages::ABSENT))
        },
    )?;
    linker.func_wrap(abi::HOST_MODULE, import::PAGES_DELETE, |caller: Caller<'_, PluginState>, offset: i64| {
        wasmtime::Result::Ok(pages_of(caller.data())?.delete(offset as u64) as i32)
    })?;
    linker.func_wrap(abi::HOST_MODULE, import::PAGES_CLEAR, |caller: Caller<'_, PluginState>| {
        pages_of(caller.data())?.clear();
        wasmtime::Result::Ok(())
    })?;
    linker.func_wrap(
        abi::HOST_MODULE,
        import::NET_CONNECT,
        |mut caller: Caller<'_, PluginState>, ptr: i32, len: i32| {
            let (data, state) = memory_of(&mut caller)?;
            let address = String::from_utf8_lossy(guest_slice(data, ptr, len.min(512))?).into_owned();
            wasmtime::Result::Ok(state.net.as_mut().map_or(abi::net::DENIED, |net| net.connect(&address)))
        },
    )?;
    linker.func_wrap(
        abi::HOST_MODULE,
        import::NET_SEND,
        |mut caller: Caller<'_, PluginState>, handle: i32, ptr: i32, len: i32| {
            let (data, state) = memory_of(&mut caller)?;
            let bytes = guest_slice(data, ptr, len)?;
            wasmtime::Result::Ok(state.net.as_mut().map_or(abi::net::BAD_HANDLE, |net| net.send(handle, bytes)))
        },
    )?;
    linker.func_wrap(
        abi::HOST_MODULE,
        import::NET_RECV,
        |mut caller: Caller<'_, PluginState>, handle: i32, ptr: i32, cap: i32| {
            let (data, state) = memory_of(&mut caller)?;
            let buf = guest_slice_mut(data, ptr, cap)?;
            wasmtime::Result::Ok(state.net.as_mut().map_or(abi::net::BAD_HANDLE, |net| net.recv(handle, buf)))
        },
    )?;
    linker.func_wrap(abi::HOST_MODULE, import::NET_CLOSE, |mut caller: Caller<'_, PluginState>, handle: i32| {
        if let Some(net) = caller.data_mut().net.as_mut() {
            net.close(handle);
        }
        wasmtime::Result::Ok(())
    })?;
    Ok(())
}

fn memory_of<'a>(caller: &'a mut Caller<'_, PluginState>) -> wasmtime::Result<(&'a mut [u8], &'a mut PluginState)> {
    let memory = caller.data().memory.ok_or_else(|| wasmtime::format_err!("host page store used before init"))?;
    Ok(memory.data_and_store_mut(caller))
}

fn pages_of(state: &PluginState) -> wasmtime::Result<&PageShard> {
    state.pages.as_deref().ok_or_else(|| wasmtime::format_err!("this plugin instance has no host page store"))
}

fn guest_range(len_of_memory: usize, ptr: i32, len: i32) -> wasmtime::Result<std::ops::Range<usize>> {
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    match start.checked_add(len) {
        Some(end) if end <= len_of_memory => Ok(start..end),
        _ => wasmtime::bail!("plugin passed a buffer outside its memory ({start}+{len})"),
    }
}

fn guest_slice(data: &[u8], ptr: i32, len: i32) -> wasmtime::Result<&[u8]> {
    Ok(&data[guest_range(data.len(), ptr, len)?])
}

fn guest_slice_mut(data: &mut [u8], ptr: i32, len: i32) -> wasmtime::Result<&mut [u8]> {
    let range = guest_range(data.len(), ptr, len)?;
    Ok(&mut data[range])
}

enum Exports {
    Filter {
        encode: TypedFunc<i32, i64>,
        decode: TypedFunc<i32, i64>,
    },
    Store {
        put: TypedFunc<(i64, i32), i64>,
        get: TypedFunc<i64, i64>,
        delete: TypedFunc<i64, i64>,
        clear: TypedFunc<(), i64>,
    },
}

/// One instance of a plugin, ready for calls.
pub struct PluginInstance {
    store: Store<PluginState>,
    memory: Memory,
    io_in: usize,
    io_out: usize,
    io_cap: usize,
    call_ticks: u64,
    call_timeout: Duration,
    exports: Exports,
}

/// What the host needs to create an instance.
pub(crate) struct InstanceSpec<'a> {
    pub(crate) module: &'a PluginModule,
    pub(crate) limits: SandboxLimits,
    pub(crate) tick: Duration,
    pub(crate) page_size: u32,
    /// The resolved config, as a JSON object.
    pub(crate) config: &'a str,
    pub(crate) pages: Option<Arc<PageShard>>,
    /// The network grant, if the pool gives one.
    pub(crate) net: Option<NetPolicy>,
    /// The host's memory budget, charged for the instance's linear memory.
    pub(crate) budget: Option<Arc<crate::memory::budget::MemoryBudget>>,
}

fn ticks(timeout: Duration, tick: Duration) -> u64 {
    (timeout.as_nanos() / tick.as_nanos().max(1)).clamp(1, u64::MAX as u128 - 1) as u64 + 1
}

impl PluginInstance {
    /// A probe instance of `module`, with no page store, only to read its manifest.
    pub(crate) fn probe_manifest(
        engine: &wasmtime::Engine,
        module: &wasmtime::Module,
        linker: &Linker<PluginState>,
        limits: SandboxLimits,
        tick: Duration,
    ) -> Result<Vec<u8>, PluginFault> {
        let mut store = new_store(engine, "probe".into(), limits, None, None, None);
        store.set_epoch_deadline(ticks(limits.init_timeout, tick));
        let instance = linker.instantiate(&mut store, module).map_err(|e| classify(&store, e, limits.init_timeout))?;
        let memory = instance
            .get_memory(&mut store, export::MEMORY)
            .ok_or_else(|| PluginFault::Protocol("no memory export".into()))?;
        let manifest = instance
            .get_typed_func::<(), i64>(&mut store, export::MANIFEST)
            .map_err(|e| PluginFault::Protocol(e.to_string()))?;
        let packed = manifest.call(&mut store, ()).map_err(|e| classify(&store, e, limits.init_timeout))?;
        let (ptr, len) = abi::packed(packed);
        let range = guest_range(memory.data_size(&store), ptr as i32, len as i32)
            .map_err(|e| PluginFault::Protocol(e.to_string()))?;
        Ok(memory.data(&store)[range].to_vec())
    }

    /// Instantiates a plugin and runs its `init` with the pool's config.
    pub(crate) fn new(engine: &wasmtime::Engine, spec: InstanceSpec<'_>) -> Result<Self, PluginFault> {
        let limits = spec.limits;
        let name: Arc<str> = spec.module.manifest().name.as_ref().into();
        let net = spec.net.map(|policy| NetAccess::new(policy, Instant::now() + limits.init_timeout));
        let mut store = new_store(engine, name, limits, spec.pages, net, spec.budget);
        store.set_epoch_deadline(ticks(limits.init_timeout, spec.tick));
        let fault = |store: &Store<PluginState>, e| classify(store, e, limits.init_timeout);
        let instance = spec.module.pre().instantiate(&mut store).map_err(|e| {
            // Running out of the host's instance slots is not the plugin's fault: say so.
            if e.downcast_ref::<Trap>().is_none() && !store.data().cap.hit {
                PluginFault::Instantiate(format!("{e:#}"))
            } else {
                fault(&store, e)
            }
        })?;
        let memory = instance
            .get_memory(&mut store, export::MEMORY)
            .ok_or_else(|| PluginFault::Protocol("no memory export".into()))?;
        store.data_mut().memory = Some(memory);
        let typed = |store: &mut Store<PluginState>, name: &str| -> Result<wasmtime::Func, PluginFault> {
            instance.get_func(&mut *store, name).ok_or_else(|| PluginFault::Protocol(format!("missing export {name}")))
        };
        macro_rules! func {
            ($name:expr, $p:ty, $r:ty) => {
                typed(&mut store, $name)?.typed::<$p, $r>(&store).map_err(|e| PluginFault::Protocol(e.to_string()))?
            };
        }
        let alloc = func!(export::ALLOC, i32, i32);
        let init = func!(export::INIT, (i32, i32, i32), i64);
        let io_in = func!(export::IO_IN, (), i32);
        let io_out = func!(export::IO_OUT, (), i32);

        let config = spec.config.as_bytes();
        let cfg_ptr = alloc.call(&mut store, config.len() as i32).map_err(|e| fault(&store, e))?;
        let range = guest_range(memory.data_size(&store), cfg_ptr, config.len() as i32)
            .map_err(|e| PluginFault::Protocol(e.to_string()))?;
        memory.data_mut(&mut store)[range].copy_from_slice(config);
        let result = init
            .call(&mut store, (cfg_ptr, config.len() as i32, spec.page_size as i32))
            .map_err(|e| fault(&store, e))?;
        let io_cap = abi::io_capacity(spec.page_size) as usize;
        let io_out = io_out.call(&mut store, ()).map_err(|e| fault(&store, e))? as u32 as usize;
        let (code, len) = abi::packed(result);
        if code != status::OK {
            let range = guest_range(memory.data_size(&store), io_out as i32, (len as usize).min(io_cap) as i32)
                .map_err(|e| PluginFault::Protocol(e.to_string()))?;
            let message = String::from_utf8_lossy(&memory.data(&store)[range]).into_owned();
            return Err(PluginFault::InitRefused(message));
        }
        let io_in = io_in.call(&mut store, ()).map_err(|e| fault(&store, e))? as u32 as usize;
        for (which, at) in [("input", io_in), ("output", io_out)] {
            guest_range(memory.data_size(&store), at as i32, io_cap as i32).map_err(|_| {
                PluginFault::Protocol(format!("{which} buffer at {at} does not fit {io_cap} bytes in memory"))
            })?;
        }
        let exports = match spec.module.kind() {
            tmem_api::manifest::PluginKind::Filter => Exports::Filter {
                encode: func!(export::FILTER_ENCODE, i32, i64),
                decode: func!(export::FILTER_DECODE, i32, i64),
            },
            tmem_api::manifest::PluginKind::Store => Exports::Store {
                put: func!(export::STORE_PUT, (i64, i32), i64),
                get: func!(export::STORE_GET, i64, i64),
                delete: func!(export::STORE_DELETE, i64, i64),
                clear: func!(export::STORE_CLEAR, (), i64),
            },
        };
        let mut instance = PluginInstance {
            store,
            memory,
            io_in,
            io_out,
            io_cap,
            call_ticks: ticks(limits.call_timeout, spec.tick),
            call_timeout: limits.call_timeout,
            exports,
        };
        if crate::memory::is_locked() {
            instance.make_resident(spec.page_size as usize)?;
        }
        // Started: from now on the instance grows only within the host's budget.
        instance.store.data_mut().cap.starting = false;
        Ok(instance)
    }

    /// When the host serves swap (its memory locked): runs a filter once over a sample page
    /// (encode, then decode), so that its codec state grows to its steady size now, and makes
    /// the whole linear memory resident. A store call later then takes no page fault in the
    /// instance — a fault is an allocation, and under global pressure an allocation waits on
    /// reclaim, that is, on swap I/O this very instance serves. A store's heap grows with what
    /// it keeps (`memory_bytes`); a plugin that grows after this faults as any would.
    fn make_resident(&mut self, page_size: usize) -> Result<(), PluginFault> {
        if matches!(self.exports, Exports::Filter { .. }) {
            let len = page_size.min(self.io_cap);
            for (i, b) in self.input(len).iter_mut().enumerate() {
                // Half a page of text-like bytes, half of noise: both codec paths run.
                *b = if i < len / 2 {
                    b"tmem sample page "[i % 17]
                } else {
                    (i.wrapping_mul(2_654_435_761) >> 13) as u8
                };
            }
            let (code, out) = self.encode(len)?;
            if code == status::OK && out <= self.io_cap {
                let encoded = self.output(out).to_vec();
                self.input(out).copy_from_slice(&encoded);
                self.decode(out)?;
            }
        }
        let size = self.memory.data_size(&self.store);
        crate::memory::populate_writable(self.memory.data_ptr(&self.store), size);
        Ok(())
    }

    /// The input buffer, `len` bytes long (`len` at most the I/O capacity).
    pub fn input(&mut self, len: usize) -> &mut [u8] {
        let start = self.io_in;
        &mut self.memory.data_mut(&mut self.store)[start..start + len.min(self.io_cap)]
    }

    /// The output buffer's first `len` bytes (checked against the capacity by the callers).
    pub fn output(&self, len: usize) -> &[u8] {
        let start = self.io_out;
        &self.memory.data(&self.store)[start..start + len.min(self.io_cap)]
    }

    /// Bytes of linear memory the instance has now, all memories together.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().cap.used
    }

    /// Bytes in each I/O buffer.
    pub fn io_capacity(&self) -> usize {
        self.io_cap
    }

    fn finish(&mut self, result: wasmtime::Result<i64>, allowed: &[u32]) -> Result<(u32, usize), PluginFault> {
        let packed = result.map_err(|e| classify(&self.store, e, self.call_timeout))?;
        let (code, len) = abi::packed(packed);
        if !allowed.contains(&code) {
            return Err(PluginFault::Protocol(format!("unexpected status {code}")));
        }
        if len as usize > self.io_cap {
            return Err(PluginFault::Protocol(format!("output length {len} exceeds the {}-byte buffer", self.io_cap)));
        }
        Ok((code, len as usize))
    }

    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.call_ticks);
        let state = self.store.data_mut();
        state.overrun = None;
        state.budget = self.call_timeout;
        if let Some(net) = &mut self.store.data_mut().net {
            net.deadline = Instant::now() + self.call_timeout;
        }
    }

    /// Filter: encodes the `len` input bytes. Returns the status and the output length.
    pub fn encode(&mut self, len: usize) -> Result<(u32, usize), PluginFault> {
        self.arm();
        let Exports::Filter { encode, .. } = &self.exports else { return Err(not_a("filter")) };
        let r = encode.call(&mut self.store, len as i32);
        self.finish(
            r,
            &[
                status::OK,
                status::OK_SAME_FILLED,
                status::OK_INCOMPRESSIBLE,
                status::REJECT_COMPRESS_POOR,
                status::REJECT_COMPRESS_FAIL,
                status::REJECT_ALLOC_FAIL,
                status::REJECT_UNAVAILABLE,
            ],
        )
    }

    /// Filter: decodes the `len` input bytes.
    pub fn decode(&mut self, len: usize) -> Result<(u32, usize), PluginFault> {
        self.arm();
        let Exports::Filter { decode, .. } = &self.exports else { return Err(not_a("filter")) };
        let r = decode.call(&mut self.store, len as i32);
        self.finish(r, &[status::OK, status::DECODE_FAILED])
    }

    /// Store: keeps the `len` input bytes under `offset`.
    pub fn put(&mut self, offset: u64, len: usize) -> Result<u32, PluginFault> {
        self.arm();
        let Exports::Store { put, .. } = &self.exports else { return Err(not_a("store")) };
        let r = put.call(&mut self.store, (offset as i64, len as i32));
        let allowed = [status::OK, status::REJECT_ALLOC_FAIL, status::REJECT_UNAVAILABLE];
        self.finish(r, &allowed).map(|(code, _)| code)
    }

    /// Store: writes the bytes under `offset` to the output buffer.
    pub fn get(&mut self, offset: u64) -> Result<(u32, usize), PluginFault> {
        self.arm();
        let Exports::Store { get, .. } = &self.exports else { return Err(not_a("store")) };
        let r = get.call(&mut self.store, offset as i64);
        self.finish(r, &[status::OK, status::NOT_FOUND, status::UNAVAILABLE, status::DECODE_FAILED])
    }

    /// Store: drops `offset`.
    pub fn delete(&mut self, offset: u64) -> Result<(), PluginFault> {
        self.arm();
        let Exports::Store { delete, .. } = &self.exports else { return Err(not_a("store")) };
        let r = delete.call(&mut self.store, offset as i64);
        self.finish(r, &[status::OK]).map(drop)
    }

    /// Store: drops everything.
    pub fn clear(&mut self) -> Result<(), PluginFault> {
        self.arm();
        let Exports::Store { clear, .. } = &self.exports else { return Err(not_a("store")) };
        let r = clear.call(&mut self.store, ());
        self.finish(r, &[status::OK]).map(drop)
    }
}

fn not_a(kind: &str) -> PluginFault {
    PluginFault::Protocol(format!("called as a {kind}, which this plugin is not"))
}

fn new_store(
    engine: &wasmtime::Engine,
    name: Arc<str>,
    limits: SandboxLimits,
    pages: Option<Arc<PageShard>>,
    net: Option<NetAccess>,
    budget: Option<Arc<crate::memory::budget::MemoryBudget>>,
) -> Store<PluginState> {
    let state = PluginState {
        cap: MemoryCap::new(limits.memory_bytes, budget),
        pages,
        memory: None,
        name,
        log_budget: LogBudget { tokens: 100.0, last: Instant::now() },
        net,
        budget: limits.init_timeout,
        overrun: None,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.cap);
    store.epoch_deadline_callback(on_deadline);
    store
}

fn classify(store: &Store<PluginState>, error: wasmtime::Error, timeout: Duration) -> PluginFault {
    if store.data().cap.hit {
        return PluginFault::MemoryCap(store.data().cap.limit);
    }
    if store.data().cap.budget_hit {
        return PluginFault::MemoryBudget;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFault::Deadline(timeout),
        Some(trap) => PluginFault::Trap(trap.to_string()),
        None => PluginFault::Trap(format!("{}", error.root_cause())),
    }
}
