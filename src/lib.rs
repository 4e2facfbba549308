//! loci — lazy OCI.
//!
//! Data flows one way through the modules:
//! `registry`/`image` (where blobs come from) → `format` (TOC, chunks;
//! `convert` turns ordinary layers into it) → `cache` (chunks on this node)
//! → `fetch` (chunks of a layer, through the cache) → `fs` (FUSE) →
//! `node` (reports to the `scheduler`) → `cli`.

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
