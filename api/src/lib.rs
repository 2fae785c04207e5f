//! What crosses tmem's process boundaries, as data: the types both sides of a boundary share.
//!
//! # Layout
//!
//! - [`abi`] — the plugin ABI, version 1: export and import names, signatures, status codes.
//!   The one contract between the host and a Wasm plugin.
//! - [`manifest`] — what a plugin says about itself (kind, config keys) and the checking of a
//!   pool's config against it.
//! - [`frontend`] — the frontend protocol between a frontend and the host's Unix socket.
//! - [`peer`] — the peer protocol between a `remote` store and a peer host.
//! - [`nbd`] — the NBD protocol's constants and the decoding of what an NBD client sends
//!   (the host's NBD server is its one user).
//! - [`wire`] — the framing both protocols share: frames, their checked lengths, payload
//!   reading and [`wire::WireError`], and a blocking `read_frame`.
//! - [`rest`] (feature `rest`) — the REST API's bodies and their OpenAPI schemas.
//! - [`client`] (feature `client`) — a blocking client of the REST API.
//!
//! This crate compiles for the host and for `wasm32-unknown-unknown` (plugins use it through
//! `tmem-sdk`), so without features it has no dependency that needs an operating system.

pub mod abi;
#[cfg(feature = "client")]
pub mod client;
pub mod frontend;
pub mod manifest;
pub mod nbd;
pub mod peer;
#[cfg(feature = "rest")]
pub mod rest;
pub mod wire;
