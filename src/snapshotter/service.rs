//! containerd's snapshots gRPC API over [`Snapshots`]: translating
//! messages, running each call off the async threads, counting it.

use super::meta::{Kind, Time};
use super::metrics::Metrics;
use super::snapshots::{Info, Mount, Prepared, SnapshotError, Snapshots};
use containerd_client::services::v1::snapshots as api;
use containerd_client::types;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The server generated from containerd's `snapshots.proto` (build.rs).
#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("containerd.services.snapshots.v1");
}

pub use generated::snapshots_server::SnapshotsServer;

/// The gRPC face of the snapshots.
pub struct Service {
    snapshots: Arc<Snapshots>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// Serves `snapshots`, counting calls in `metrics`.
    pub fn new(snapshots: Arc<Snapshots>, metrics: Arc<Metrics>) -> Service {
        Service { snapshots, metrics }
    }

    /// Runs `f` on a blocking thread (directory walks, mounts, RocksDB
    /// syncs), counts the call and turns its error into a status.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshots) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, Status> {
        let snapshots = self.snapshots.clone();
        let result = tokio::task::spawn_blocking(move || f(&snapshots))
            .await
            .map_err(|e| Status::internal(format!("{op}: {e}")))?;
        match result {
            Ok(v) => {
                self.metrics.operation(op, None);
                Ok(v)
            }
            Err(e) => {
                let code = e.code();
                self.metrics.operation(op, Some(code));
                if code == tonic::Code::Internal {
                    tracing::error!(op, error = %crate::error_chain::chain(&e), "snapshot operation failed");
                } else {
                    tracing::debug!(op, error = %e, "snapshot operation refused");
                }
                Err(Status::new(code, crate::error_chain::chain(&e)))
            }
        }
    }
}

fn labels(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn mounts(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts
        .into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.secs,
        nanos: t.nanos as i32,
    }
}

fn to_api(info: Info) -> api::Info {
    let kind = match info.kind {
        Kind::View => api::Kind::View,
        Kind::Active => api::Kind::Active,
        Kind::Committed => api::Kind::Committed,
    };
    api::Info {
        name: info.name,
        parent: info.parent,
        kind: kind as i32,
        created_at: Some(timestamp(info.created)),
        updated_at: Some(timestamp(info.updated)),
        labels: info.labels.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl generated::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let prepared = self
            .call("prepare", move |s| {
                s.prepare(&r.key, &r.parent, labels(r.labels))
            })
            .await?;
        match prepared {
            Prepared::Mounts(m) => Ok(Response::new(api::PrepareSnapshotResponse {
                mounts: mounts(m),
            })),
            // containerd's unpacker takes this as "the layer is there".
            Prepared::Lazy(target) => Err(Status::already_exists(format!(
                "snapshot {target}: already exists (served lazily by loci)"
            ))),
        }
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let m = self
            .call("view", move |s| s.view(&r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = request.into_inner();
        let m = self.call("mounts", move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(api::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        request: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call("commit", move |s| {
            s.commit(&r.name, &r.key, labels(r.labels))
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call("remove", move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.call("stat", move |s| s.stat(&r.key)).await?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(to_api(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let update = Info {
            name: info.name,
            parent: info.parent,
            kind: Kind::Active,
            labels: labels(info.labels),
            created: Time { secs: 0, nanos: 0 },
            updated: Time { secs: 0, nanos: 0 },
        };
        let info = self
            .call("update", move |s| s.update(&update, &paths))
            .await?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(to_api(info)),
        }))
    }

    type ListStream =
        futures::stream::Iter<std::vec::IntoIter<Result<api::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let infos = self.call("list", move |s| s.walk(&r.filters)).await?;
        // Batches keep each message small, as containerd's server does.
        let batches: Vec<Result<api::ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|batch| {
                Ok(api::ListSnapshotsResponse {
                    info: batch.iter().cloned().map(to_api).collect(),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(batches)))
    }

    async fn usage(
        &self,
        request: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let r = request.into_inner();
        let usage = self.call("usage", move |s| s.usage(&r.key)).await?;
        Ok(Response::new(api::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(
        &self,
        _request: Request<api::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        self.call("cleanup", |s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
