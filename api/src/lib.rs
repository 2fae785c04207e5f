//! What crosses tmem's process boundaries, as data: the types both sides of a boundary share.
//!
//! # Layout
//!
//! - [`abi`] — the plugin ABI, version 1: export and import names, signatures, status codes.
//!   The one contract between the host and a Wasm plugin.
//! - [`manifest`] — what a plugin says about itself (kind, config keys) and the checking of a
//!   pool's config against it.
//!
//! This crate compiles for the host and for `wasm32-unknown-unknown` (plugins use it through
//! `tmem-sdk`), so it has no dependency that needs an operating system.

pub mod abi;
pub mod manifest;
