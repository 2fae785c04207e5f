//! The plugin runtime: sandboxed Wasm plugins on wasmtime.
//!
//! - [`engine`] — the one `Engine` (pooling allocator, epoch deadlines), the compiled-code
//!   cache and module loading.
//! - [`module`] — a loaded, validated plugin ([`PluginModule`]) and every load-time refusal.
//! - [`instance`] — one live instance: calls under a deadline and a memory cap, host functions.
//! - [`limits`] — the sandbox limits a pool gives its instances.
//! - [`net`] — the `network` capability: granted endpoints, bounded socket operations.
//!
//! The ABI itself is specified in [`tmem_api::abi`].

pub mod engine;
pub mod instance;
pub mod limits;
pub mod module;
pub mod net;

pub use engine::{EngineOptions, PluginEngine};
pub use instance::{PluginFault, PluginInstance};
pub use limits::SandboxLimits;
pub use module::{PluginLoadError, PluginModule};
