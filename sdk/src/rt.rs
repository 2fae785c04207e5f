//! The guest side of the plugin ABI ([`tmem_api::abi`]): what the export macros call.
//!
//! A Wasm instance runs one thread, and one plugin type is exported per module (the macros
//! define fixed symbol names, so a second export fails to link). The state below is therefore
//! a single slot, reached only from the exported functions.

use std::alloc::{Layout, alloc as raw_alloc, dealloc};
use std::borrow::Cow;
use std::cell::UnsafeCell;

use tmem_api::abi::{self, status};
use tmem_api::manifest::{Capability, ConfigKey, Manifest, PluginKind};

use crate::{DecodeError, Encoded, Filter, GetError, Reject, Store};

/// What the export macros know about a plugin, whichever its kind.
pub trait Plugin: Sized + 'static {
    /// Filter or store.
    const KIND: PluginKind;
    /// See [`Filter::NAME`].
    const NAME: &'static str;
    /// The plugin crate's version.
    const VERSION: &'static str;
    /// See [`Filter::DESCRIPTION`].
    const DESCRIPTION: &'static str;
    /// See [`Filter::CONFIG`].
    const CONFIG: &'static [ConfigKey];
    /// See [`Store::CAPABILITIES`].
    const CAPABILITIES: &'static [Capability] = &[];
    /// See [`Filter::Config`].
    type Config: serde::de::DeserializeOwned;
    /// See [`Filter::new`].
    fn new(config: Self::Config, page_size: usize) -> Result<Self, String>;
}

struct Slot<T>(UnsafeCell<T>);

// SAFETY: a Wasm instance is single-threaded; native builds never call these exports
// concurrently (they exist there only so that doc tests and unit tests compile).
unsafe impl<T> Sync for Slot<T> {}

impl<T> Slot<T> {
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut T {
        // SAFETY: single-threaded, and no export holds a reference across another export call.
        unsafe { &mut *self.0.get() }
    }
}

struct State {
    plugin: *mut (),
    io_in: Box<[u8]>,
    io_out: Box<[u8]>,
}

static STATE: Slot<Option<State>> = Slot(UnsafeCell::new(None));
static MANIFEST: Slot<Option<String>> = Slot(UnsafeCell::new(None));

fn state() -> &'static mut State {
    STATE.get().as_mut().expect("tmem_init was not called")
}

fn plugin<P>() -> &'static mut P {
    // SAFETY: `plugin` was created from a `Box<P>` in `init::<P>` for the one `P` this module
    // exports.
    unsafe { &mut *(state().plugin as *mut P) }
}

fn ptr(bytes: &[u8]) -> i32 {
    bytes.as_ptr() as usize as i32
}

/// `tmem_manifest`.
pub fn manifest<P: Plugin>() -> i64 {
    let text = MANIFEST.get().get_or_insert_with(|| {
        let manifest = Manifest {
            abi: abi::ABI_VERSION,
            name: Cow::Borrowed(P::NAME),
            version: Cow::Borrowed(P::VERSION),
            kind: P::KIND,
            description: Cow::Borrowed(P::DESCRIPTION),
            config: Cow::Borrowed(P::CONFIG),
            capabilities: Cow::Borrowed(P::CAPABILITIES),
        };
        serde_json::to_string(&manifest).expect("a manifest always serializes")
    });
    abi::pack(ptr(text.as_bytes()) as u32, text.len() as u32)
}

/// `tmem_alloc`: room for the config passed to `tmem_init`, freed by it.
pub fn alloc(len: i32) -> i32 {
    let Ok(layout) = Layout::from_size_align(len.max(1) as usize, 1) else { return 0 };
    // SAFETY: the layout has a non-zero size.
    unsafe { raw_alloc(layout) as usize as i32 }
}

/// `tmem_init`.
pub fn init<P: Plugin>(cfg_ptr: i32, cfg_len: i32, page_size: i32) -> i64 {
    let cap = abi::io_capacity(page_size as u32) as usize;
    let io_out = vec![0u8; cap].into_boxed_slice();
    let io_in = vec![0u8; cap].into_boxed_slice();
    *STATE.get() = Some(State { plugin: std::ptr::null_mut(), io_in, io_out });

    let config_text = {
        // SAFETY: the host wrote `cfg_len` bytes into the block `alloc` returned.
        let bytes = unsafe { std::slice::from_raw_parts(cfg_ptr as usize as *const u8, cfg_len as usize) };
        let text = bytes.to_vec();
        // SAFETY: the block came from `alloc(cfg_len)` with this layout.
        unsafe { dealloc(cfg_ptr as usize as *mut u8, Layout::from_size_align_unchecked(cfg_len.max(1) as usize, 1)) };
        text
    };
    let built = serde_json::from_slice::<P::Config>(&config_text)
        .map_err(|e| format!("config does not match the plugin's Config type: {e}"))
        .and_then(|config| P::new(config, page_size as usize));
    match built {
        Ok(plugin) => {
            state().plugin = Box::into_raw(Box::new(plugin)) as *mut ();
            abi::pack(status::OK, 0)
        }
        Err(message) => {
            let out = &mut state().io_out;
            let n = message.len().min(out.len());
            out[..n].copy_from_slice(&message.as_bytes()[..n]);
            abi::pack(status::INIT_FAILED, n as u32)
        }
    }
}

/// `tmem_io_in`.
pub fn io_in() -> i32 {
    ptr(&state().io_in)
}

/// `tmem_io_out`.
pub fn io_out() -> i32 {
    ptr(&state().io_out)
}

fn reject_status(reject: Reject) -> u32 {
    match reject {
        Reject::CompressPoor => status::REJECT_COMPRESS_POOR,
        Reject::CompressFail => status::REJECT_COMPRESS_FAIL,
        Reject::AllocFail => status::REJECT_ALLOC_FAIL,
        Reject::Unavailable => status::REJECT_UNAVAILABLE,
    }
}

/// Checks a length a plugin wrote against the buffer, so a buggy plugin faults here with a
/// clear panic rather than handing the host a length past its buffer.
fn written(len: usize, cap: usize) -> u32 {
    assert!(len <= cap, "plugin wrote {len} bytes into a {cap}-byte buffer");
    len as u32
}

/// `tmem_filter_encode`.
pub fn filter_encode<P: Plugin + Filter>(len: i32) -> i64 {
    let State { io_in, io_out, .. } = state();
    let cap = io_out.len();
    match plugin::<P>().encode(&io_in[..len as usize], io_out) {
        Ok(Encoded::Transformed(n)) => abi::pack(status::OK, written(n, cap)),
        Ok(Encoded::SameFilled(n)) => abi::pack(status::OK_SAME_FILLED, written(n, cap)),
        Ok(Encoded::Incompressible(n)) => abi::pack(status::OK_INCOMPRESSIBLE, written(n, cap)),
        Err(reject) => abi::pack(reject_status(reject), 0),
    }
}

/// `tmem_filter_decode`.
pub fn filter_decode<P: Plugin + Filter>(len: i32) -> i64 {
    let State { io_in, io_out, .. } = state();
    let cap = io_out.len();
    match plugin::<P>().decode(&io_in[..len as usize], io_out) {
        Ok(n) => abi::pack(status::OK, written(n, cap)),
        Err(DecodeError) => abi::pack(status::DECODE_FAILED, 0),
    }
}

/// `tmem_store_put`.
pub fn store_put<P: Plugin + Store>(offset: i64, len: i32) -> i64 {
    let data = &state().io_in[..len as usize];
    match plugin::<P>().put(offset as u64, data) {
        Ok(()) => abi::pack(status::OK, 0),
        Err(reject) => abi::pack(reject_status(reject), 0),
    }
}

/// `tmem_store_get`.
pub fn store_get<P: Plugin + Store>(offset: i64) -> i64 {
    let out = &mut state().io_out;
    let cap = out.len();
    match plugin::<P>().get(offset as u64, out) {
        Ok(n) => abi::pack(status::OK, written(n, cap)),
        Err(GetError::NotFound) => abi::pack(status::NOT_FOUND, 0),
        Err(GetError::Unavailable) => abi::pack(status::UNAVAILABLE, 0),
        Err(GetError::Corrupt) => abi::pack(status::DECODE_FAILED, 0),
    }
}

/// `tmem_store_delete`.
pub fn store_delete<P: Plugin + Store>(offset: i64) -> i64 {
    plugin::<P>().delete(offset as u64);
    abi::pack(status::OK, 0)
}

/// `tmem_store_clear`.
pub fn store_clear<P: Plugin + Store>() -> i64 {
    plugin::<P>().clear();
    abi::pack(status::OK, 0)
}
