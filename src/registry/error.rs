//! Registry failures, one variant per thing a caller may handle differently.

use crate::digest::Digest;

/// Why a registry request failed. `what` names the manifest, blob or range.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404: the manifest or blob does not exist.
    #[error("{what}: not found (404)")]
    NotFound { what: String },
    /// 401/403 after authenticating, or no way to authenticate.
    #[error("{what}: unauthorized ({status}){hint}")]
    Unauthorized {
        what: String,
        status: u16,
        hint: String,
    },
    /// 429 after all retries.
    #[error("{what}: rate limited (429) after {attempts} attempts")]
    RateLimited { what: String, attempts: u32 },
    /// 5xx after all retries.
    #[error("{what}: registry error {status} after {attempts} attempts")]
    Server {
        what: String,
        status: u16,
        attempts: u32,
    },
    /// Any other status the protocol does not allow here.
    #[error("{what}: unexpected status {status}: {body}")]
    UnexpectedStatus {
        what: String,
        status: u16,
        body: String,
    },
    /// Connection refused, reset, or timed out, after all retries.
    #[error("{what}: network error after {attempts} attempts")]
    Network {
        what: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("{what}: content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A response that breaks the protocol (bad header, bad JSON, short body).
    #[error("{what}: bad response: {reason}")]
    BadResponse { what: String, reason: String },
    /// No configured host may be asked this (hosts.toml capabilities).
    #[error(
        "{what}: no host of this registry may be asked to {need} (see its hosts.toml capabilities)"
    )]
    NoHost { what: String, need: String },
    /// The registry's hosts.toml could not be used.
    #[error("host configuration of {registry}")]
    Hosts {
        registry: String,
        #[source]
        source: super::hosts::HostsError,
    },
    /// A host's CA, client certificate or TLS setup could not be used.
    #[error("TLS configuration of {host}: {reason}")]
    HostTls { host: String, reason: String },
    /// Local I/O while streaming a blob to or from disk.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
