//! The OCI distribution client: resolving references, pulling and pushing
//! manifests and blobs, reading byte ranges of blobs.
//!
//! Written over reqwest (rustls) rather than taken whole from a distribution
//! crate because the lazy reader needs control of the hot path: connection
//! reuse, range reads, redirects and bounded retries.

mod auth;
mod client;
mod config;
mod error;
pub mod hosts;
mod reference;

pub use auth::{Challenge, HostAuth, NodeCredentials};
pub use client::{content_range_tail, Manifest, RegistryClient, RegistryOptions};
pub use config::RegistryConfig;
pub use error::RegistryError;
pub use reference::{Reference, ReferenceError};

/// Largest manifest or index read (containerd's limit too): a registry or
/// an image cannot make a node buffer more for one.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest token response read.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Media types a manifest GET accepts, most specific first.
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
