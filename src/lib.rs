//! loci — lazy OCI.
//!
//! Data flows one way through the modules:
//! `registry`/`image` (where blobs come from) → `format` (TOC, chunks) →
//! `convert` (turning ordinary layers into the format) → `cli`. `cache`
//! holds the chunks a lazy read fetches, in memory and on local disk.

pub mod cache;
pub mod cli;
pub mod convert;
pub mod digest;
pub mod format;
pub mod image;
pub mod layer;
pub mod progress;
pub mod registry;
