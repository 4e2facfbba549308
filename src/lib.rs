//! loci — lazy OCI.
//!
//! Data flows one way through the modules, and nothing imports from a
//! module further along: `registry` (distribution client, auth) → `image`
//! (stores, platforms, layers) → `format` (TOC, chunks; `convert` turns
//! ordinary layers into it) → `cache` (chunks on this node) and `fetch`
//! (opening layers, chunk reads through the cache) → `fs` (FUSE only) →
//! `serve` (one image at a directory) and `snapshotter` (containerd);
//! `prefetch` (start traces), `node` (reports), `scheduler` and `sim`
//! beside; `cli` parses and wires.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod digest;
pub mod error_chain;
pub mod fetch;
pub mod format;
pub mod fs;
pub mod image;
pub mod node;
pub mod prefetch;
pub mod progress;
pub mod pull;
pub mod registry;
pub mod scheduler;
pub mod serve;
pub mod sim;
pub mod snapshotter;
