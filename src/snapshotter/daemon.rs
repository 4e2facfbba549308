//! The daemon: opens the cache and the snapshots, serves the gRPC API on a
//! unix socket (mode 0600) and the metrics over HTTP, until SIGTERM/SIGINT.

use super::admission::{Admission, Trust};
use super::cri_proxy::{CriImageProxy, ImageServiceServer};
use super::fdstore::FdStore;
use super::lazy::LazyLayers;
use super::metrics::Metrics;
use super::service::{Service, SnapshotsServer};
use super::snapshots::{SnapshotError, Snapshots};
use crate::cache::{CacheError, ChunkCache};
use crate::config::Config;
use crate::format::TrustedKeys;
use crate::registry::RegistryOptions;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// The `[snapshotter]` section of the node configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// Where Prometheus metrics are served (`/metrics`); none if unset.
    pub metrics_address: Option<SocketAddr>,
    /// Registry hosts (`host:port`) reached over plain HTTP.
    pub plain_http_registries: Vec<String>,
    /// FUSE threads per lazily mounted layer.
    pub fuse_threads: usize,
    /// Which converted layers are served lazily: `signed` (the default),
    /// only layers signed by one of `trusted_keys`; `any`, every converted
    /// layer, trusting each image's claim that its layer is the diff_id it
    /// names (an explicit opt-out, for nodes that run only their own
    /// images). The others are unpacked by containerd, which checks the
    /// diff_id itself.
    pub trust: Trust,
    /// Public key files (`loci key generate`) whose signatures make a
    /// layer servable lazily.
    pub trusted_keys: Vec<PathBuf>,
    /// How long the fd holder keeps lazy layers' connections with no
    /// daemon to serve them; then it closes them, and their readers get
    /// an error instead of waiting forever.
    pub held_connection_timeout_secs: u64,
    /// Where to serve the CRI image service for kubelet
    /// (`--image-service-endpoint unix://…`): every call is forwarded to
    /// containerd, and each pull's credentials are kept (in memory) for
    /// the lazy reads of its image. Not served if unset.
    pub cri_image_proxy_address: Option<PathBuf>,
    /// containerd's socket, where the CRI image proxy forwards to.
    pub containerd_address: PathBuf,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            metrics_address: None,
            plain_http_registries: Vec::new(),
            fuse_threads: 4,
            trust: Trust::Signed,
            trusted_keys: Vec::new(),
            held_connection_timeout_secs: 300,
            cri_image_proxy_address: None,
            containerd_address: PathBuf::from("/run/containerd/containerd.sock"),
        }
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The chunk cache could not be opened.
    #[error("opening the chunk cache")]
    Cache(#[from] CacheError),
    /// The snapshots could not be opened.
    #[error("opening the snapshots under {root}")]
    Snapshots {
        root: PathBuf,
        #[source]
        source: SnapshotError,
    },
    /// A socket could not be bound or served.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A trusted key could not be read.
    #[error("loading [snapshotter] trusted_keys")]
    Keys(#[from] crate::format::SignatureError),
    /// The gRPC server failed.
    #[error("serving the snapshots API")]
    Serve(#[from] tonic::transport::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Runs the snapshotter on `address` with state under `root`, until a
/// signal. Without a config file the chunk cache lives under the root.
pub async fn run(address: &Path, root: &Path, config: Option<Config>) -> Result<(), DaemonError> {
    let config = config.unwrap_or_else(|| {
        let mut c = Config::default();
        c.cache.dir = root.join("cache");
        c
    });
    std::fs::create_dir_all(root).map_err(io_err(format!("creating {}", root.display())))?;
    let cache = ChunkCache::open(&config.cache)?;
    let kept_cache = cache.clone();
    let metrics = Arc::new(Metrics::new(cache.clone()));
    let admission = Admission {
        trust: config.snapshotter.trust,
        keys: TrustedKeys::load(&config.snapshotter.trusted_keys)?,
    };
    if admission.trust == Trust::Signed && config.snapshotter.trusted_keys.is_empty() {
        tracing::warn!("no [snapshotter] trusted_keys: every layer is unpacked by containerd, none is served lazily");
    }
    let registry = config.registry.apply(RegistryOptions::default());
    let credentials = registry.credentials.clone();
    let lazy = LazyLayers::new(
        cache,
        config.fetch.clone(),
        registry,
        config.snapshotter.plain_http_registries.clone(),
        admission,
        tokio::runtime::Handle::current(),
        config.snapshotter.fuse_threads,
        metrics.clone(),
        config.prefetch.clone(),
        config.completion.clone(),
        FdStore::new(
            root.join("fuse-fds.sock"),
            root.join("fd-holder.log"),
            std::time::Duration::from_secs(config.snapshotter.held_connection_timeout_secs),
        ),
    );
    let root_owned = root.to_path_buf();
    let snapshots = tokio::task::spawn_blocking(move || Snapshots::open(&root_owned, lazy))
        .await
        .expect("opening snapshots does not panic")
        .map_err(|source| DaemonError::Snapshots {
            root: root.to_path_buf(),
            source,
        })?;
    let snapshots = Arc::new(snapshots);
    snapshots.share_layer_users();
    {
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                every.tick().await;
                let snapshots = snapshots.clone();
                let _ = tokio::task::spawn_blocking(move || snapshots.check_holder()).await;
            }
        });
    }

    if let Some(addr) = config.snapshotter.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("binding metrics address {addr}")))?;
        // The address bound, so that port 0 (any free port) can be found.
        let addr = listener.local_addr().unwrap_or(addr);
        let metrics = metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
        tracing::info!(%addr, "serving metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }

    if let Some(proxy_address) = &config.snapshotter.cri_image_proxy_address {
        let listener = bind_socket(proxy_address)?;
        let proxy = CriImageProxy::new(config.snapshotter.containerd_address.clone(), credentials)?;
        tracing::info!(
            address = %proxy_address.display(),
            containerd = %config.snapshotter.containerd_address.display(),
            "serving the CRI image service (kubelet's --image-service-endpoint)"
        );
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(ImageServiceServer::new(proxy))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %crate::error_chain::chain(&e), "the CRI image proxy stopped");
            }
        });
    }

    let listener = bind_socket(address)?;
    tracing::info!(address = %address.display(), root = %root.display(), "loci snapshotter serving");
    // Behind the socket: containerd's calls that need no lazy layer are
    // answered meanwhile, the others wait for this.
    {
        let snapshots = snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.recover());
    }

    let shutdown = async {
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut int = signal(SignalKind::interrupt()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    };
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Service::new(
            snapshots.clone(),
            metrics,
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await?;
    let _ = std::fs::remove_file(address);
    if let Some(proxy_address) = &config.snapshotter.cri_image_proxy_address {
        let _ = std::fs::remove_file(proxy_address);
    }
    tokio::task::spawn_blocking(move || {
        snapshots.shutdown();
        kept_cache.persist();
    })
    .await
    .expect("unmounting does not panic");
    Ok(())
}

/// Binds a unix socket only root can reach, replacing a stale one. The
/// socket is bound and listening under a temporary name first and then
/// renamed into place: a client that dials as soon as the path exists
/// (containerd, a test harness) never meets the moment between bind and
/// listen, when a connection is refused.
fn bind_socket(address: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let name = address.file_name().unwrap_or_default().to_string_lossy();
    let binding = address.with_file_name(format!(".{name}.{}.binding", std::process::id()));
    match std::fs::remove_file(&binding) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing stale {}", binding.display()))(e)),
    }
    let listener = super::fdstore::bind_private(|| tokio::net::UnixListener::bind(&binding))
        .map_err(io_err(format!("binding {}", binding.display())))?;
    // Replaces a stale socket at `address` in the same step.
    std::fs::rename(&binding, address).map_err(io_err(format!(
        "moving {} to {}",
        binding.display(),
        address.display()
    )))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_appears_listening_in_place_of_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("run/loci.sock");
        std::fs::create_dir_all(address.parent().unwrap()).unwrap();
        std::fs::write(&address, b"stale").unwrap();
        let listener = bind_socket(&address).unwrap();
        std::os::unix::net::UnixStream::connect(&address).expect("listening at its path");
        listener.accept().await.unwrap();
        let left: Vec<_> = std::fs::read_dir(address.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("loci.sock")]);
        let mode = std::fs::metadata(&address).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "only root reaches it"
        );
    }
}
