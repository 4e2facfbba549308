//! The CRI image-service proxy: kubelet talks to it (`--image-service-
//! endpoint`), it forwards every call to containerd's CRI plugin unchanged,
//! and keeps the credentials each `PullImage` carries (from imagePullSecrets
//! or a credential provider) for that image's registry and repository, so
//! the lazy reads of its layers that follow can authenticate. containerd
//! never passes those credentials to a snapshotter; this is how the peers
//! get them too.
//!
//! Credentials are held in memory only ([`NodeCredentials`]), never logged;
//! a later pull of the same repository replaces them.

use crate::registry::{HostAuth, NodeCredentials, Reference};
use base64::Engine as _;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::ImageService;
pub use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::{
    AuthConfig, ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use std::path::PathBuf;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Forwards the CRI image service to containerd, remembering pulls'
/// credentials.
pub struct CriImageProxy {
    upstream: ImageServiceClient<Channel>,
    credentials: NodeCredentials,
}

impl CriImageProxy {
    /// A proxy to containerd's socket at `containerd` (connected on first
    /// use, and again after containerd restarts), keeping credentials in
    /// `credentials` (shared with the snapshotter's lazy layers).
    pub fn new(
        containerd: PathBuf,
        credentials: NodeCredentials,
    ) -> Result<CriImageProxy, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = containerd.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(CriImageProxy {
            upstream: ImageServiceClient::new(channel),
            credentials,
        })
    }

    /// Keeps a pull's credentials for its image's repository, when they
    /// are for its registry.
    fn remember(&self, image: &str, auth: &AuthConfig) {
        let Ok(reference) = image.parse::<Reference>() else {
            tracing::warn!(
                image,
                "CRI pull of an image loci cannot parse; its credentials are not kept"
            );
            return;
        };
        let Some(host_auth) = host_auth(auth) else {
            return;
        };
        if !server_matches(&auth.server_address, &reference.registry) {
            tracing::warn!(
                image,
                server = auth.server_address,
                "CRI pull credentials are for another server; not kept"
            );
            return;
        }
        tracing::info!(
            registry = reference.registry,
            repository = reference.repository,
            "keeping a CRI pull's credentials in memory for lazy reads"
        );
        self.credentials
            .remember_pull(&reference.registry, &reference.repository, host_auth);
    }
}

/// The credentials an `AuthConfig` carries, as CRI reads them: a username
/// and password, else `auth` (base64 of `user:password`), else an
/// identity token. None when it carries none loci can use (a bare
/// `registry_token` is not used, as containerd does not).
fn host_auth(auth: &AuthConfig) -> Option<HostAuth> {
    if !auth.username.is_empty() {
        return Some(HostAuth {
            username: auth.username.clone(),
            password: auth.password.clone(),
            identity_token: String::new(),
        });
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()?;
        let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(HostAuth {
            username: username.to_string(),
            password: password.to_string(),
            identity_token: String::new(),
        });
    }
    (!auth.identity_token.is_empty()).then(|| HostAuth {
        identity_token: auth.identity_token.clone(),
        ..HostAuth::default()
    })
}

/// Whether an `AuthConfig`'s `server_address` (empty, a host, or a URL as
/// docker config keys are written) names `registry`.
fn server_matches(server_address: &str, registry: &str) -> bool {
    let host = server_address
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let docker_hub =
        |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host.is_empty() || host == registry || (docker_hub(host) && docker_hub(registry))
}

#[tonic::async_trait]
impl ImageService for CriImageProxy {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        self.upstream
            .clone()
            .list_images(request.into_inner())
            .await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        self.upstream
            .clone()
            .image_status(request.into_inner())
            .await
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let pull = request.into_inner();
        if let (Some(image), Some(auth)) = (&pull.image, &pull.auth) {
            self.remember(&image.image, auth);
        }
        self.upstream.clone().pull_image(pull).await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        self.upstream
            .clone()
            .remove_image(request.into_inner())
            .await
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        self.upstream
            .clone()
            .image_fs_info(request.into_inner())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_as_cri_passes_them() {
        let auth = |username: &str, password: &str, encoded: &str, identity: &str| AuthConfig {
            username: username.into(),
            password: password.into(),
            auth: encoded.into(),
            identity_token: identity.into(),
            ..AuthConfig::default()
        };
        let basic = |u: &str, p: &str| {
            Some(HostAuth {
                username: u.into(),
                password: p.into(),
                identity_token: String::new(),
            })
        };
        let cases = [
            (auth("u", "p", "", ""), basic("u", "p")),
            (auth("", "", "dTI6cDI6eA==", ""), basic("u2", "p2:x")),
            (auth("", "", "not base64!", ""), None),
            (auth("", "", "bm9jb2xvbg==", ""), None),
            (
                auth("", "", "", "refresh"),
                Some(HostAuth {
                    identity_token: "refresh".into(),
                    ..HostAuth::default()
                }),
            ),
            (
                AuthConfig {
                    registry_token: "t".into(),
                    ..AuthConfig::default()
                },
                None,
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(host_auth(&given), expected, "{:?}", given.auth);
        }
    }

    #[test]
    fn credentials_for_another_server_are_not_kept() {
        let cases = [
            ("", "r.example:5000", true),
            ("r.example:5000", "r.example:5000", true),
            ("https://r.example:5000/v1/", "r.example:5000", true),
            ("https://index.docker.io/v1/", "docker.io", true),
            ("other.example", "r.example:5000", false),
            ("r.example", "r.example:5000", false),
        ];
        for (server, registry, kept) in cases {
            assert_eq!(
                server_matches(server, registry),
                kept,
                "{server} for {registry}"
            );
        }
    }
}
