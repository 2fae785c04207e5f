//! Write tmem backend plugins in Rust: one trait impl and one macro.
//!
//! A plugin is either a **filter** (transforms pages on their way to the store and back, like
//! compression) or a **store** (keeps the encoded bytes of each page). Implement [`Filter`] or
//! [`Store`] for your type, then call [`export_filter!`] or [`export_store!`] once. Build the
//! crate as a `cdylib` for `wasm32-unknown-unknown`; the resulting `.wasm` is the plugin.
//!
//! The ABI underneath is specified in [`tmem_api::abi`]; you never touch it directly.
//!
//! # A complete filter
//!
//! ```
//! use tmem_sdk::{ConfigKey, Encoded, Filter, Reject, DecodeError, config};
//!
//! /// Stores pages XOR-ed with a key byte (a toy transform: real filters compress).
//! pub struct Xor { key: u8 }
//!
//! #[derive(serde::Deserialize)]
//! pub struct XorConfig { key: i64 }
//!
//! impl Filter for Xor {
//!     const NAME: &'static str = "xor";
//!     const DESCRIPTION: &'static str = "XORs every byte with a key";
//!     const CONFIG: &'static [ConfigKey] = &[config::integer("key", "the key byte", 0, 255, 90)];
//!     type Config = XorConfig;
//!
//!     fn new(config: XorConfig, _page_size: usize) -> Result<Self, String> {
//!         Ok(Xor { key: config.key as u8 })
//!     }
//!
//!     fn encode(&mut self, page: &[u8], out: &mut [u8]) -> Result<Encoded, Reject> {
//!         for (o, b) in out.iter_mut().zip(page) { *o = b ^ self.key; }
//!         Ok(Encoded::Transformed(page.len()))
//!     }
//!
//!     fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
//!         for (o, b) in out.iter_mut().zip(data) { *o = b ^ self.key; }
//!         Ok(data.len())
//!     }
//! }
//!
//! tmem_sdk::export_filter!(Xor);
//! ```
//!
//! # A complete store
//!
//! Stores keep bytes through the host page store ([`host_pages`]), never in their own memory:
//! a plugin instance that traps is thrown away with its memory, and the host promises that no
//! acknowledged page is lost when that happens.
//!
//! ```
//! use tmem_sdk::{GetError, Reject, Store, host_pages};
//!
//! pub struct Ram;
//!
//! impl Store for Ram {
//!     const NAME: &'static str = "ram";
//!     const DESCRIPTION: &'static str = "pages in host memory";
//!     type Config = tmem_sdk::NoConfig;
//!
//!     fn new(_: tmem_sdk::NoConfig, _page_size: usize) -> Result<Self, String> { Ok(Ram) }
//!     fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
//!         host_pages::put(offset, data).map_err(|_| Reject::AllocFail)
//!     }
//!     fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
//!         host_pages::get(offset, out).ok_or(GetError::NotFound)
//!     }
//!     fn delete(&mut self, offset: u64) { host_pages::delete(offset); }
//!     fn clear(&mut self) { host_pages::clear(); }
//! }
//!
//! tmem_sdk::export_store!(Ram);
//! ```

pub mod codec;
pub mod config;
pub mod host_pages;
pub mod log;
pub mod net;
#[doc(hidden)]
pub mod rt;

pub use tmem_api::manifest::{Capability, ConfigKey, ConfigValueKind, PluginKind};

#[doc(hidden)]
pub use serde_json as __serde_json;

/// The `Config` type of a plugin that declares no config keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// How a filter encoded a page; the `usize` is the number of bytes written to `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// An ordinary transform (e.g. compressed bytes).
    Transformed(usize),
    /// The page is one repeated word, kept as a small marker (counted in `same_filled_pages`).
    SameFilled(usize),
    /// The page did not compress well and is passed on raw (`stored_incompressible_pages`).
    Incompressible(usize),
}

/// Why a filter or store refuses a page. A refusal is an expected outcome, not a fault: the
/// frontend writes the page to its own device instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The page compresses too poorly to be worth keeping.
    CompressPoor,
    /// The compressor failed.
    CompressFail,
    /// No room for the bytes.
    AllocFail,
    /// The backend cannot be reached.
    Unavailable,
}

/// A filter could not decode the bytes it was given (counted in `decompress_fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Why a store could not return a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetError {
    /// Nothing is kept under that offset.
    NotFound,
    /// The backend cannot be reached.
    Unavailable,
    /// The kept bytes fail the store's own integrity check (a torn or damaged record).
    Corrupt,
}

/// A filter: transforms pages on their way to the store (`encode`) and back (`decode`).
pub trait Filter: Sized + 'static {
    /// Short name, e.g. `zstd`.
    const NAME: &'static str;
    /// One line for operators.
    const DESCRIPTION: &'static str;
    /// The config keys the plugin accepts (see [`config`]). The host refuses any other key.
    const CONFIG: &'static [ConfigKey] = &[];
    /// The config, deserialized from a JSON object that has every key of [`Self::CONFIG`].
    type Config: serde::de::DeserializeOwned;

    /// Builds the filter for a pool of `page_size`; an `Err` refuses the pool config.
    fn new(config: Self::Config, page_size: usize) -> Result<Self, String>;

    /// Encodes `input` into `out` (which has room for a page plus 4 KiB). The first filter of
    /// a chain gets whole pages; a later one gets what the filter before it produced.
    fn encode(&mut self, input: &[u8], out: &mut [u8]) -> Result<Encoded, Reject>;

    /// Decodes `data` (produced by `encode`) into `out`, returning the decoded length. For the
    /// first filter of a chain that is a whole page (the host checks); a filter further down
    /// the chain decodes what the filter before it encoded.
    fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError>;
}

/// A store: keeps the encoded bytes of pages under their offsets, through a host capability.
pub trait Store: Sized + 'static {
    /// Short name, e.g. `ram`.
    const NAME: &'static str;
    /// One line for operators.
    const DESCRIPTION: &'static str;
    /// The config keys the plugin accepts (see [`config`]). The host refuses any other key.
    const CONFIG: &'static [ConfigKey] = &[];
    /// Capabilities the store needs beyond the sandbox, e.g. [`Capability::Storage`] to have
    /// [`host_pages`] kept on disk. A pool must grant each one, or it is refused.
    const CAPABILITIES: &'static [Capability] = &[];
    /// The config, deserialized from a JSON object that has every key of [`Self::CONFIG`].
    type Config: serde::de::DeserializeOwned;

    /// Builds the store for a pool of `page_size`; an `Err` refuses the pool config.
    fn new(config: Self::Config, page_size: usize) -> Result<Self, String>;

    /// Keeps `data` under `offset`. The host has already dropped any older copy.
    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject>;

    /// Copies the bytes kept under `offset` into `out`, returning their length.
    fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError>;

    /// Drops `offset`; dropping an absent offset is fine.
    fn delete(&mut self, offset: u64);

    /// Drops every page of the pool.
    fn clear(&mut self);
}

/// Exports a [`Filter`] implementation as a tmem plugin. Call once per plugin crate.
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        $crate::__export_common!($plugin, $crate::PluginKind::Filter, Filter, &[]);

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_filter_encode(len: i32) -> i64 {
            $crate::rt::filter_encode::<$plugin>(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_filter_decode(len: i32) -> i64 {
            $crate::rt::filter_decode::<$plugin>(len)
        }
    };
}

/// Exports a [`Store`] implementation as a tmem plugin. Call once per plugin crate.
#[macro_export]
macro_rules! export_store {
    ($plugin:ty) => {
        $crate::__export_common!($plugin, $crate::PluginKind::Store, Store, <$plugin as $crate::Store>::CAPABILITIES);

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_store_put(offset: i64, len: i32) -> i64 {
            $crate::rt::store_put::<$plugin>(offset, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_store_get(offset: i64) -> i64 {
            $crate::rt::store_get::<$plugin>(offset)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_store_delete(offset: i64) -> i64 {
            $crate::rt::store_delete::<$plugin>(offset)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_store_clear() -> i64 {
            $crate::rt::store_clear::<$plugin>()
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_common {
    ($plugin:ty, $kind:expr, $trait:ident, $capabilities:expr) => {
        impl $crate::rt::Plugin for $plugin {
            const KIND: $crate::PluginKind = $kind;
            const NAME: &'static str = <$plugin as $crate::$trait>::NAME;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            const DESCRIPTION: &'static str = <$plugin as $crate::$trait>::DESCRIPTION;
            const CONFIG: &'static [$crate::ConfigKey] = <$plugin as $crate::$trait>::CONFIG;
            const CAPABILITIES: &'static [$crate::Capability] = $capabilities;
            type Config = <$plugin as $crate::$trait>::Config;
            fn new(config: Self::Config, page_size: usize) -> Result<Self, String> {
                <$plugin as $crate::$trait>::new(config, page_size)
            }
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_abi_v1() {}

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_manifest() -> i64 {
            $crate::rt::manifest::<$plugin>()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_alloc(len: i32) -> i32 {
            $crate::rt::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_init(cfg_ptr: i32, cfg_len: i32, page_size: i32) -> i64 {
            $crate::rt::init::<$plugin>(cfg_ptr, cfg_len, page_size)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_io_in() -> i32 {
            $crate::rt::io_in()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tmem_io_out() -> i32 {
            $crate::rt::io_out()
        }
    };
}
