//! The scheduler loci feeds: a cluster view built from node reports,
//! cache-aware placement, load-aware routing, instance reservation policies,
//! timeout and node-loss detection, the HTTP service and the Kubernetes
//! extender. See `docs/scheduler.md`.

pub mod access;
pub mod cluster;
pub mod config;
pub mod error;
pub mod extender;
pub mod function;
mod lifecycle;
mod node_index;
pub mod policy;
pub mod report;
mod reserve;
pub mod scoring;
pub mod server;

pub use reserve::ReservationChanges;
