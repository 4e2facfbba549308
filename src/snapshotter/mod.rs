//! `loci snapshotter`: a containerd remote snapshotter (proxy plugin).
//!
//! containerd calls it over its snapshots gRPC API on a unix socket. It
//! behaves as containerd's overlayfs snapshotter, except that a Prepare
//! whose labels name a loci-converted layer is answered by mounting that
//! layer lazily over FUSE and committing it at once (ALREADY_EXISTS), so
//! containerd never downloads it. Metadata lives in RocksDB under the root.

pub mod admission;
mod cri_proxy;
mod daemon;
mod early_tocs;
pub mod fdstore;
mod filter;
pub mod lazy;
mod meta;
mod metrics;
mod release;
mod service;
mod snapshots;

pub use daemon::{run, DaemonError, SnapshotterConfig};
pub use filter::{FilterError, Filters};
pub use meta::{Kind, LazySource, Time, Usage};
pub use release::{release, ReleaseError, Released};
pub use snapshots::{Info, Mount, SnapshotError, Snapshots};
