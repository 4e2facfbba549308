//! The distribution API over HTTP: manifests, blobs, uploads, ranges.

use super::auth::{Challenge, Credentials, NodeCredentials, TokenCache};
use super::hosts::{hosts_for, HostConfig};
use super::{RegistryError, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, MAX_TOKEN_BYTES};
use crate::digest::{Digest, Hasher};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH
/// chunks of this size, so memory stays bounded and a failure costs a chunk.
const UPLOAD_CHUNK: u64 = 32 << 20;

/// How long a mirror that could not be reached is skipped before it is
/// tried again; the hosts after it serve meanwhile.
const UNREACHABLE_HOST_PAUSE: Duration = Duration::from_secs(10);

/// How the client talks to a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Reach the registry itself over http:// instead of https:// (local
    /// test registries), unless its hosts.toml names its URL.
    pub plain_http: bool,
    /// containerd's per-host configuration directory (`certs.d`): mirrors,
    /// private CAs, client certificates, `skip_verify`.
    pub hosts_dir: Option<PathBuf>,
    /// Credentials configured on the node, per host; tried before the
    /// docker config.
    pub credentials: NodeCredentials,
    /// Connect timeout, and the longest a response may stall between reads.
    pub timeout: Duration,
    /// Retries of idempotent requests after network errors, 429 and 5xx.
    pub retries: u32,
    /// First backoff delay; doubles on every retry.
    pub backoff: Duration,
    /// How long a blob's redirect target is reused for range reads before
    /// asking the registry again (presigned URLs expire).
    pub redirect_ttl: Duration,
    /// Offer HTTP/2 in TLS handshakes (see [`RegistryConfig::http2`]).
    ///
    /// [`RegistryConfig::http2`]: super::RegistryConfig::http2
    pub http2: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http: false,
            hosts_dir: None,
            credentials: NodeCredentials::default(),
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(200),
            redirect_ttl: Duration::from_secs(300),
            http2: true,
        }
    }
}

/// A manifest or index as fetched: raw bytes (their digest is the
/// manifest's identity), media type and digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// Media type from the response's Content-Type (or the document).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// A client for one registry host, shared by every repository on it.
/// Cheap to clone: connections and tokens are shared.
#[derive(Clone)]
pub struct RegistryClient {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    /// Where requests go, in the order tried: mirrors, then the registry.
    endpoints: Vec<Endpoint>,
    /// Redirect targets of blobs with the client that reaches them, reused
    /// for later ranges until they expire.
    redirects: Mutex<HashMap<(String, Digest), Redirect>>,
    registry: String,
    opts: RegistryOptions,
    tokens: TokenCache,
}

/// Where a blob's ranges were redirected to, the client that reaches
/// it, and when that was learned.
type Redirect = (String, reqwest::Client, Instant);

/// One host requests may go to, with clients built for its TLS settings.
struct Endpoint {
    config: HostConfig,
    /// `scheme://host/path` of the API root.
    root: String,
    http: reqwest::Client,
    /// Like `http` but never follows redirects, so range reads can learn
    /// a blob's redirect target and reuse it.
    blob_http: reqwest::Client,
    /// Skipped until then: it could not be reached (mirrors only).
    paused_until: Mutex<Option<Instant>>,
    /// The registry itself (hosts.toml's `server`), not a mirror: only
    /// it is sent the credentials a pull of an image brought.
    is_registry: bool,
}

impl Endpoint {
    fn url(&self, repo: &str, tail: &str) -> String {
        format!("{}/{repo}/{tail}", self.root)
    }

    fn can(&self, need: Need) -> bool {
        let caps = self.config.capabilities;
        match need {
            Need::Resolve => caps.resolve,
            Need::Pull => caps.pull,
            Need::Push => caps.push,
        }
    }

    fn paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    fn pause(&self) {
        *self.paused_until.lock().unwrap() = Some(Instant::now() + UNREACHABLE_HOST_PAUSE);
    }
}

/// What a request asks of a host, as hosts.toml's capabilities name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// A manifest by tag.
    Resolve,
    /// Content by digest.
    Pull,
    /// Uploads, and whether the target has a blob already.
    Push,
}

/// The registry's answer to a blob range request, or where it sent it
/// (see `registry_range`).
enum RangeAnswer {
    Answer(Response),
    Redirected {
        target: String,
        http: reqwest::Client,
    },
}

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Idempotent,
    Once,
}

impl RegistryClient {
    /// A client for `registry` (host[:port]), sending its requests to the
    /// hosts its hosts.toml lists (if `opts.hosts_dir` has one), then to
    /// the registry. Credentials come from the node's configuration or the
    /// docker config (and its helpers) each time a host asks for them, so
    /// rotated credentials are picked up.
    pub fn new(registry: &str, opts: RegistryOptions) -> Result<RegistryClient, RegistryError> {
        let hosts =
            hosts_for(opts.hosts_dir.as_deref(), registry, opts.plain_http).map_err(|source| {
                RegistryError::Hosts {
                    registry: registry.to_string(),
                    source,
                }
            })?;
        let last = hosts.len() - 1;
        let endpoints = hosts
            .into_iter()
            .enumerate()
            .map(|(i, config)| endpoint(config, i == last, &opts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RegistryClient {
            inner: std::sync::Arc::new(Inner {
                endpoints,
                redirects: Mutex::new(HashMap::new()),
                registry: registry.to_string(),
                tokens: TokenCache::default(),
                opts,
            }),
        })
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        &self.inner.registry
    }

    /// Fetches a manifest or index by tag or digest; when asked by digest,
    /// checks the bytes against it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {repo}:{reference}");
        let tail = format!("manifests/{reference}");
        let accept = MANIFEST_ACCEPT.join(", ");
        let need = if reference.parse::<Digest>().is_ok() {
            Need::Pull
        } else {
            Need::Resolve
        };
        let resp = self
            .send(&what, repo, need, Retry::Idempotent, |ep| {
                ep.http.get(ep.url(repo, &tail)).header(ACCEPT, &accept)
            })
            .await?;
        let resp = expect_status(resp, &what, &[StatusCode::OK]).await?;
        let header_type = content_type(resp.headers());
        let bytes = read_limited(resp, &what, MAX_MANIFEST_BYTES).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = match header_type {
            Some(t) if MANIFEST_ACCEPT.contains(&t.as_str()) => t,
            _ => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .ok_or_else(|| RegistryError::BadResponse {
                    what: what.clone(),
                    reason: "manifest has no known media type".into(),
                })?,
        };
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// The OCI 1.1 referrers index of a manifest, filtered by artifact
    /// type; None when the registry does not offer the referrers API
    /// (docker-registry 2.8 answers 404), so callers use the tag-schema
    /// fallback.
    pub async fn get_referrers(
        &self,
        repo: &str,
        digest: &Digest,
        artifact_type: &str,
    ) -> Result<Option<Bytes>, RegistryError> {
        let what = format!("referrers of {repo}@{digest}");
        let tail = format!("referrers/{digest}");
        let resp = self
            .send(&what, repo, Need::Pull, Retry::Idempotent, |ep| {
                ep.http
                    .get(ep.url(repo, &tail))
                    .query(&[("artifactType", artifact_type)])
                    .header(ACCEPT, "application/vnd.oci.image.index.v1+json")
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = expect_status(resp, &what, &[StatusCode::OK]).await?;
        Ok(Some(read_limited(resp, &what, MAX_MANIFEST_BYTES).await?))
    }

    /// Pushes a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("manifest {repo}:{reference}");
        let tail = format!("manifests/{reference}");
        let resp = self
            .send(&what, repo, Need::Push, Retry::Idempotent, |ep| {
                ep.http
                    .put(ep.url(repo, &tail))
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        expect_status(resp, &what, &[StatusCode::CREATED, StatusCode::OK]).await?;
        Ok(())
    }

    /// Whether the repository has the blob.
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let tail = format!("blobs/{digest}");
        let resp = self
            .send(&what, repo, Need::Push, Retry::Idempotent, |ep| {
                ep.http.head(ep.url(repo, &tail))
            })
            .await;
        match resp {
            Ok(resp) if resp.status() == StatusCode::OK => Ok(true),
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => Ok(false),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Ok(resp) => Err(unexpected(resp, &what).await),
            Err(e) => Err(e),
        }
    }

    /// Sends a GET or HEAD for a whole blob and insists on 200.
    async fn blob_request(
        &self,
        method: Method,
        repo: &str,
        digest: &Digest,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let tail = format!("blobs/{digest}");
        let resp = self
            .send(what, repo, Need::Pull, Retry::Idempotent, |ep| {
                ep.http.request(method.clone(), ep.url(repo, &tail))
            })
            .await?;
        expect_status(resp, what, &[StatusCode::OK]).await
    }

    /// Fetches a small blob (a config, a trace) whole, verified against its
    /// digest; refused once it passes `max` bytes.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        max: u64,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let resp = self.blob_request(Method::GET, repo, digest, &what).await?;
        let bytes = read_limited(resp, &what, max).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Streams a blob into `path`, verifying its digest and refusing it
    /// once it passes `max` bytes; `on_bytes` is told of every piece
    /// received. Returns the size.
    pub async fn get_blob_to_file(
        &self,
        repo: &str,
        digest: &Digest,
        max: u64,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let resp = self.blob_request(Method::GET, repo, digest, &what).await?;
        let io = |source| RegistryError::Io {
            what: format!("{what} -> {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = Hasher::default();
        let mut size = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| network(&what, 1, e))?;
            hasher.update(&piece);
            size += piece.len() as u64;
            if size > max {
                return Err(RegistryError::BadResponse {
                    what,
                    reason: format!("more than the {max} bytes its descriptor declares"),
                });
            }
            file.write_all(&piece).await.map_err(io)?;
            on_bytes(piece.len() as u64);
        }
        file.flush().await.map_err(io)?;
        let actual = hasher.finish();
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: *digest,
                actual,
            });
        }
        Ok(size)
    }

    /// Reads `range` of a blob with an HTTP range request. A redirect is
    /// followed by hand and its target reused for later ranges of the same
    /// blob until `redirect_ttl` passes or it stops working; connections are
    /// pooled; network errors, 429 and 5xx are retried with backoff.
    pub async fn get_blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        self.get_blob_range_observed(repo, digest, range, &mut |_| {})
            .await
    }

    /// [`get_blob_range`](Self::get_blob_range), showing `observe` the
    /// body received so far each time more of it arrives (from the start
    /// again if a retry begins it again), so a caller can use the first
    /// bytes of a large range before the last arrive.
    pub async fn get_blob_range_observed(
        &self,
        repo: &str,
        digest: &Digest,
        range: Range<u64>,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Bytes, RegistryError> {
        let what = format!("blob {repo}@{digest} bytes {}-{}", range.start, range.end);
        let header = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let want = range.end - range.start;
        let key = (repo.to_string(), *digest);
        if let Some((url, http)) = self.cached_redirect(&key) {
            match self
                .range_from_redirect(&http, &url, &header, &what, want, observe)
                .await
            {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    tracing::debug!(what, error = %e, "redirect target failed; asking the registry again");
                    self.inner.redirects.lock().unwrap().remove(&key);
                }
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = match self.registry_range(repo, digest, &header, &what).await? {
                RangeAnswer::Answer(resp) => resp,
                RangeAnswer::Redirected { target, http } => {
                    return self
                        .range_from_redirect(&http, &target, &header, &what, want, observe)
                        .await;
                }
            };
            let resp = expect_status(resp, &what, &[StatusCode::PARTIAL_CONTENT]).await?;
            match read_range_body(resp, &what, want, observe).await {
                Err(RegistryError::Network { source, .. })
                    if attempt <= self.inner.opts.retries =>
                {
                    tracing::debug!(what, attempt, error = %source, "range body failed; retrying");
                }
                other => return other,
            }
        }
    }

    /// Asks the registry for the blob's bytes `header` (a Range value)
    /// names. A redirect is remembered for the blob's later range reads
    /// (see [`cached_redirect`](Self::cached_redirect)) and returned, for
    /// the caller to follow, instead of the answer.
    async fn registry_range(
        &self,
        repo: &str,
        digest: &Digest,
        header: &str,
        what: &str,
    ) -> Result<RangeAnswer, RegistryError> {
        let tail = format!("blobs/{digest}");
        let (resp, ep) = self
            .send_via(what, repo, Need::Pull, Retry::Idempotent, |ep| {
                ep.blob_http.get(ep.url(repo, &tail)).header(RANGE, header)
            })
            .await?;
        if !resp.status().is_redirection() {
            return Ok(RangeAnswer::Answer(resp));
        }
        let target = location_of(&resp, what)?;
        let http = ep.blob_http.clone();
        self.remember_redirect((repo.to_string(), *digest), &target, &http);
        Ok(RangeAnswer::Redirected { target, http })
    }

    /// Where a blob's range reads were redirected lately, if that is
    /// recent enough to use again.
    fn cached_redirect(&self, key: &(String, Digest)) -> Option<(String, reqwest::Client)> {
        let redirects = self.inner.redirects.lock().unwrap();
        redirects
            .get(key)
            .filter(|(_, _, at)| at.elapsed() < self.inner.opts.redirect_ttl)
            .map(|(url, http, _)| (url.clone(), http.clone()))
    }

    /// Keeps a blob's redirect target for its later range reads.
    fn remember_redirect(&self, key: (String, Digest), target: &str, http: &reqwest::Client) {
        self.inner
            .redirects
            .lock()
            .unwrap()
            .insert(key, (target.to_string(), http.clone(), Instant::now()));
    }

    /// A range from a redirect target (typically a presigned storage URL:
    /// no registry credentials are sent there).
    async fn range_from_redirect(
        &self,
        http: &reqwest::Client,
        url: &str,
        header: &str,
        what: &str,
        want: u64,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Bytes, RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match http.get(url).header(RANGE, header).send().await {
                Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                    read_range_body(resp, what, want, observe).await
                }
                Ok(resp) => Err(unexpected(resp, what).await),
                Err(e) => Err(network(what, attempt, e)),
            };
            let transient = matches!(&result, Err(RegistryError::Network { .. }))
                || matches!(&result, Err(RegistryError::UnexpectedStatus { status, .. }) if *status == 429 || *status >= 500);
            if !transient || attempt > self.inner.opts.retries {
                return result;
            }
            tokio::time::sleep(self.inner.opts.backoff * 2u32.pow(attempt - 1)).await;
        }
    }

    /// The end of a blob from `start` on, with the blob's size (from the
    /// answer's Content-Range), in one request (`Range: bytes=START-`):
    /// what a layer's open needs when its TOC offset is known, without
    /// asking the size first. Refused past `max` bytes, and unless the
    /// answer is exactly that range.
    pub async fn get_blob_tail(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        max: u64,
    ) -> Result<(Bytes, u64), RegistryError> {
        let what = format!("blob {repo}@{digest} bytes {start}-");
        let header = format!("bytes={start}-");
        let key = (repo.to_string(), *digest);
        // A redirect target is shared with the blob's range reads, as in
        // get_blob_range: learnt here, the replay that follows reuses it.
        let redirected = match self.cached_redirect(&key) {
            Some((url, http)) => match http.get(&url).header(RANGE, &header).send().await {
                Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => Some(resp),
                _ => {
                    self.inner.redirects.lock().unwrap().remove(&key);
                    None
                }
            },
            None => None,
        };
        let resp = match redirected {
            Some(resp) => resp,
            None => match self.registry_range(repo, digest, &header, &what).await? {
                RangeAnswer::Answer(resp) => resp,
                RangeAnswer::Redirected { target, http } => http
                    .get(&target)
                    .header(RANGE, &header)
                    .send()
                    .await
                    .map_err(|e| network(&what, 1, e))?,
            },
        };
        let resp = expect_status(resp, &what, &[StatusCode::PARTIAL_CONTENT]).await?;
        let bad = |reason: String| RegistryError::BadResponse {
            what: what.clone(),
            reason,
        };
        let size = tail_size(resp.headers(), start).ok_or_else(|| {
            bad(format!(
                "Content-Range {:?} is not the blob's end from byte {start}",
                resp.headers().get(CONTENT_RANGE)
            ))
        })?;
        if size - start > max {
            return Err(bad(format!(
                "the blob's end is {} bytes, over the {max} expected at most",
                size - start
            )));
        }
        let bytes = read_range_body(resp, &what, size - start, &mut |_| {}).await?;
        Ok((bytes, size))
    }

    /// The size of a blob, from a HEAD request.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<u64, RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let resp = self.blob_request(Method::HEAD, repo, digest, &what).await?;
        resp.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| RegistryError::BadResponse {
                what,
                reason: "HEAD without Content-Length".into(),
            })
    }

    /// Uploads the blob in `path` unless the repository has it; first tries
    /// a cross-repository mount from `mount_from` (a repository on this
    /// registry that has the blob), which moves no bytes.
    pub async fn push_blob_file(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        mount_from: Option<&str>,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let what = format!("blob {repo}@{digest}");
        let io = |source| RegistryError::Io {
            what: format!("{what} <- {}", path.display()),
            source,
        };
        let Some(mut location) = self.start_upload(repo, digest, mount_from).await? else {
            return Ok(()); // mounted
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let mut sent = 0u64;
        let mut last = Bytes::new();
        while sent < size || size == 0 {
            let len = UPLOAD_CHUNK.min(size - sent) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact(&mut buf).await.map_err(io)?;
            let piece = Bytes::from(buf);
            if sent + len as u64 == size {
                last = piece; // the final piece goes with the closing PUT
                break;
            }
            let range = format!("{}-{}", sent, sent + len as u64 - 1);
            let resp = self
                .send(&what, repo, Need::Push, Retry::Once, |ep| {
                    ep.http
                        .patch(&location)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("Content-Range", &range)
                        .body(piece.clone())
                })
                .await?;
            let resp = expect_status(resp, &what, &[StatusCode::ACCEPTED]).await?;
            location = location_of(&resp, &what)?;
            sent += len as u64;
        }
        self.finish_upload(repo, digest, &location, last).await
    }

    /// Uploads a blob held in memory unless the repository has it.
    pub async fn push_blob_bytes(
        &self,
        repo: &str,
        digest: &Digest,
        data: Bytes,
        mount_from: Option<&str>,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        match self.start_upload(repo, digest, mount_from).await? {
            Some(location) => self.finish_upload(repo, digest, &location, data).await,
            None => Ok(()),
        }
    }

    /// POSTs an upload; Some(location) to upload to, None when the blob
    /// was mounted from another repository.
    async fn start_upload(
        &self,
        repo: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let mut tail = "blobs/uploads/".to_string();
        if let Some(from) = mount_from.filter(|from| *from != repo) {
            tail.push_str(&format!("?mount={digest}&from={from}"));
        }
        let resp = self
            .send(&what, repo, Need::Push, Retry::Idempotent, |ep| {
                ep.http.post(ep.url(repo, &tail))
            })
            .await?;
        let resp = expect_status(resp, &what, &[StatusCode::CREATED, StatusCode::ACCEPTED]).await?;
        if resp.status() == StatusCode::CREATED {
            tracing::debug!(%digest, repo, from = mount_from, "blob mounted across repositories");
            return Ok(None);
        }
        location_of(&resp, &what).map(Some)
    }

    async fn finish_upload(
        &self,
        repo: &str,
        digest: &Digest,
        location: &str,
        last: Bytes,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {repo}@{digest}");
        let mut url = reqwest::Url::parse(location).map_err(|e| RegistryError::BadResponse {
            what: what.clone(),
            reason: format!("upload location {location:?}: {e}"),
        })?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .send(&what, repo, Need::Push, Retry::Once, |ep| {
                ep.http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(last.clone())
            })
            .await?;
        expect_status(resp, &what, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Sends a request to the first host that can serve it: each mirror
    /// able to (`need`) in hosts.toml's order, then the registry. A mirror
    /// that fails or lacks the content (404) passes the request on; one
    /// that cannot be reached is skipped for a while. The registry's answer
    /// is final. Uploads go to the first host that takes them only.
    async fn send(
        &self,
        what: &str,
        repo: &str,
        need: Need,
        retry: Retry,
        make: impl Fn(&Endpoint) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        Ok(self.send_via(what, repo, need, retry, make).await?.0)
    }

    /// [`send`](Self::send), also naming the host that answered.
    async fn send_via(
        &self,
        what: &str,
        repo: &str,
        need: Need,
        retry: Retry,
        make: impl Fn(&Endpoint) -> RequestBuilder,
    ) -> Result<(Response, &Endpoint), RegistryError> {
        let mut candidates: Vec<&Endpoint> = self
            .inner
            .endpoints
            .iter()
            .filter(|ep| ep.can(need))
            .collect();
        if need == Need::Push {
            // As containerd: an upload goes to the first host that takes
            // them, and only there (its parts must meet in one place).
            candidates.truncate(1);
        }
        let Some((last, mirrors)) = candidates.split_last() else {
            return Err(RegistryError::NoHost {
                what: what.to_string(),
                need: format!("{need:?}").to_lowercase(),
            });
        };
        for ep in mirrors.iter().filter(|ep| !ep.paused()) {
            match self.send_to(ep, what, repo, need, Retry::Once, &make).await {
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                    tracing::debug!(
                        what,
                        host = ep.config.host,
                        "not on this host; trying the next"
                    );
                }
                Ok(resp) => return Ok((resp, ep)),
                Err(e) => {
                    if matches!(e, RegistryError::Network { .. }) {
                        ep.pause();
                    }
                    tracing::warn!(what, host = ep.config.host, error = %crate::error_chain::chain(&e), "host failed; trying the next");
                }
            }
        }
        let resp = self.send_to(last, what, repo, need, retry, &make).await?;
        Ok((resp, last))
    }

    /// Sends a request built by `make` to one host, authenticating on a 401
    /// challenge and retrying transient failures with exponential backoff.
    /// Returns the response for any other status; 401/403, 429 and 5xx
    /// that outlast the retries become their own errors.
    async fn send_to(
        &self,
        ep: &Endpoint,
        what: &str,
        repo: &str,
        need: Need,
        retry: Retry,
        make: &impl Fn(&Endpoint) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let scope = format!(
            "repository:{repo}:{}",
            if need == Need::Push {
                "pull,push"
            } else {
                "pull"
            }
        );
        let token_key = format!("{} {scope}", ep.config.host);
        let max_attempts = match retry {
            Retry::Idempotent => self.inner.opts.retries + 1,
            Retry::Once => 1,
        };
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            attempt += 1;
            let mut request = make(ep);
            for (name, value) in &ep.config.headers {
                request = request.header(name, value);
            }
            if let Some(auth) = self.inner.tokens.get(&token_key) {
                request = request.header(AUTHORIZATION, auth);
            }
            let failure = match request.send().await {
                Err(e)
                    if attempt < max_attempts
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tracing::debug!(what, attempt, error = %e, "retrying after network error");
                    None
                }
                Err(e) => return Err(network(what, attempt, e)),
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !authenticated {
                        authenticated = true;
                        attempt -= 1;
                        let header = self.authenticate(ep, &resp, repo, &scope, what).await?;
                        self.inner.tokens.put(&token_key, header);
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        let host = &ep.config.host;
                        return Err(RegistryError::Unauthorized {
                            what: what.to_string(),
                            status: status.as_u16(),
                            hint: if self.credentials(ep, repo).is_none() {
                                format!(
                                    " (no credentials for {host} in the node config or the docker config)"
                                )
                            } else {
                                format!(" (the credentials for {host} were refused)")
                            },
                        });
                    }
                    let transient =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !transient {
                        return Ok(resp);
                    }
                    if attempt >= max_attempts {
                        return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                            RegistryError::RateLimited {
                                what: what.to_string(),
                                attempts: attempt,
                            }
                        } else {
                            RegistryError::Server {
                                what: what.to_string(),
                                status: status.as_u16(),
                                attempts: attempt,
                            }
                        });
                    }
                    Some(status)
                }
            };
            let delay = self.inner.opts.backoff * 2u32.pow(attempt - 1);
            tracing::debug!(what, attempt, status = ?failure, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Answers a host's 401 challenge: the `Authorization` value to send,
    /// a Bearer token fetched for `scope` or Basic credentials.
    async fn authenticate(
        &self,
        ep: &Endpoint,
        resp: &Response,
        repo: &str,
        scope: &str,
        what: &str,
    ) -> Result<String, RegistryError> {
        let unauthorized = |hint: &str| RegistryError::Unauthorized {
            what: what.to_string(),
            status: 401,
            hint: format!(" ({hint})"),
        };
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or_else(|| unauthorized("no usable WWW-Authenticate challenge"))?;
        // Looked up again on every challenge: a credential helper may have
        // rotated them since the last one.
        let credentials = self.credentials(ep, repo);
        Ok(match challenge {
            Challenge::Basic => credentials
                .as_ref()
                .and_then(Credentials::basic_header)
                .ok_or_else(|| {
                    unauthorized(&format!(
                        "Basic auth asked, no credentials for {} in the node config or the docker config",
                        ep.config.host
                    ))
                })?,
            Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            } => {
                let scope = challenge_scope.unwrap_or_else(|| scope.to_string());
                format!(
                    "Bearer {}",
                    self.fetch_token(ep, credentials.as_ref(), &realm, service.as_deref(), &scope, what)
                        .await?
                )
            }
        })
    }

    /// Credentials for a request about `repo` to `ep`.
    fn credentials(&self, ep: &Endpoint, repo: &str) -> Option<Credentials> {
        let image = ep
            .is_registry
            .then_some((self.inner.registry.as_str(), repo));
        Credentials::lookup(&self.inner.opts.credentials, &ep.config.host, image)
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        credentials: Option<&Credentials>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        what: &str,
    ) -> Result<String, RegistryError> {
        check_realm(realm, &ep.config.host, ep.config.plain_http).map_err(|reason| {
            RegistryError::Unauthorized {
                what: what.to_string(),
                status: 401,
                hint: format!(" (token realm {realm:?} refused: {reason})"),
            }
        })?;
        let mut params = vec![("scope", scope.to_string())];
        if let Some(service) = service {
            params.push(("service", service.to_string()));
        }
        let request = match credentials {
            Some(Credentials::IdentityToken(token)) => {
                params.push(("grant_type", "refresh_token".into()));
                params.push(("refresh_token", token.clone()));
                params.push(("client_id", "loci".into()));
                ep.http.request(Method::POST, realm).form(&params)
            }
            Some(creds) => {
                let mut r = ep.http.get(realm).query(&params);
                if let Some(basic) = creds.basic_header() {
                    r = r.header(AUTHORIZATION, basic);
                }
                r
            }
            None => ep.http.get(realm).query(&params),
        };
        let token_what = format!("{what}: token from {realm}");
        let resp = request
            .send()
            .await
            .map_err(|e| network(&token_what, 1, e))?;
        let resp = expect_status(resp, &token_what, &[StatusCode::OK]).await?;
        let body = read_limited(resp, &token_what, MAX_TOKEN_BYTES).await?;
        let body: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
                what: token_what.clone(),
                reason: e.to_string(),
            })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::BadResponse {
                what: token_what,
                reason: "token response has no token".into(),
            })
    }
}

/// The absolute URL of a response's Location header (which may be
/// relative to the URL that answered).
fn location_of(resp: &Response, what: &str) -> Result<String, RegistryError> {
    let value = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::BadResponse {
            what: what.to_string(),
            reason: "response without Location".into(),
        })?;
    resp.url()
        .join(value)
        .map(|u| u.to_string())
        .map_err(|e| RegistryError::BadResponse {
            what: what.to_string(),
            reason: format!("Location {value:?}: {e}"),
        })
}

/// A host's clients, built for its TLS settings: its CAs trusted besides
/// the system's, its client certificate presented, and verification
/// skipped only where its hosts.toml says `skip_verify`.
fn endpoint(
    config: HostConfig,
    is_registry: bool,
    opts: &RegistryOptions,
) -> Result<Endpoint, RegistryError> {
    let invalid = |reason: String| RegistryError::HostTls {
        host: config.host.clone(),
        reason,
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| invalid(format!("reading {}: {e}", path.display())))
    };
    let mut roots = Vec::new();
    for ca in &config.ca {
        let pem = read(ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid(format!("CA {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("CA {} holds no certificate", ca.display())));
        }
        roots.extend(certs);
    }
    let identity = match config.client.as_slice() {
        [] => None,
        [(cert, key), rest @ ..] => {
            if !rest.is_empty() {
                tracing::warn!(
                    host = config.host,
                    "only the first client certificate is used"
                );
            }
            let mut pem = read(cert)?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(read(key)?);
            }
            Some(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| invalid(format!("client certificate {}: {e}", cert.display())))?,
            )
        }
    };
    let builder = || {
        let mut b = reqwest::Client::builder()
            .connect_timeout(opts.timeout)
            .read_timeout(opts.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .user_agent(concat!("loci/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(config.skip_verify)
            // HTTP/2 flow-control windows bound the bytes in flight: 16 MiB
            // on the connection (every request to a host shares it) covers
            // 1 Gbit/s at a 130 ms round trip, where hyper's default 5 MiB
            // would cap a long link; 4 MiB on one request's stream.
            .http2_initial_connection_window_size(16 << 20)
            .http2_initial_stream_window_size(4 << 20)
            // One connection carries every request to a host: one that died
            // quietly while idle is found by a ping, not by the next
            // requests all waiting out the read timeout together.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .http2_keep_alive_while_idle(true);
        if !opts.http2 {
            b = b.http1_only();
        }
        for root in &roots {
            b = b.add_root_certificate(root.clone());
        }
        if let Some(identity) = &identity {
            b = b.identity(identity.clone());
        }
        b
    };
    let built = |b: reqwest::ClientBuilder| b.build().map_err(|e| invalid(e.to_string()));
    let http = built(builder())?;
    let blob_http = built(builder().redirect(reqwest::redirect::Policy::none()))?;
    Ok(Endpoint {
        root: config.api_root(),
        config,
        http,
        blob_http,
        paused_until: Mutex::new(None),
        is_registry,
    })
}

/// Whether a token realm the registry named may be asked for a token
/// (with the node's credentials): over HTTPS, or over plain HTTP only on
/// the registry's own host when the node reaches that registry over plain
/// HTTP by configuration. A challenge, like any response, cannot lower the
/// transport the node chose.
fn check_realm(realm: &str, registry: &str, plain_http: bool) -> Result<(), String> {
    let url = reqwest::Url::parse(realm).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let registry_host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
            if !plain_http {
                Err("plain HTTP, for a registry reached over HTTPS".into())
            } else if url.host_str() != Some(registry_host) {
                Err(format!("plain HTTP on another host than {registry_host}"))
            } else {
                Ok(())
            }
        }
        other => Err(format!("scheme {other:?}")),
    }
}

/// Reads a response body of at most `max` bytes: refused as soon as its
/// Content-Length or what arrives passes that, never buffered whole first.
async fn read_limited(resp: Response, what: &str, max: u64) -> Result<Bytes, RegistryError> {
    read_limited_observed(resp, what, max, &mut |_| {}).await
}

/// [`read_limited`], showing `observe` the body so far as it grows.
async fn read_limited_observed(
    resp: Response,
    what: &str,
    max: u64,
    observe: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<Bytes, RegistryError> {
    let too_large = |size: u64| RegistryError::BadResponse {
        what: what.to_string(),
        reason: format!("body of {size} bytes or more, over the {max} expected at most"),
    };
    if let Some(declared) = resp.content_length().filter(|&n| n > max) {
        return Err(too_large(declared));
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| network(what, 1, e))?;
        if (body.len() + piece.len()) as u64 > max {
            return Err(too_large((body.len() + piece.len()) as u64));
        }
        body.extend_from_slice(&piece);
        observe(&body);
    }
    Ok(Bytes::from(body))
}

/// Reads a 206 body (showing `observe` each prefix as it arrives) and
/// checks it is as long as the range asked for.
async fn read_range_body(
    resp: Response,
    what: &str,
    want: u64,
    observe: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<Bytes, RegistryError> {
    let bytes = read_limited_observed(resp, what, want, observe).await?;
    if bytes.len() as u64 != want {
        return Err(RegistryError::BadResponse {
            what: what.to_string(),
            reason: format!("range returned {} bytes, asked for {want}", bytes.len()),
        });
    }
    Ok(bytes)
}

/// The blob's size from a `Content-Range: bytes FIRST-LAST/SIZE` answering
/// a range from `start` to the end: None unless it is exactly that range.
fn tail_size(headers: &HeaderMap, start: u64) -> Option<u64> {
    content_range_tail(headers.get(CONTENT_RANGE)?.to_str().ok()?, start)
}

/// The blob's size from a `Content-Range` value (`bytes FIRST-LAST/SIZE`)
/// answering a range from `start` to the blob's end: None unless it is
/// exactly that range. Public so that it can be fuzzed: a registry sends
/// it.
pub fn content_range_tail(value: &str, start: u64) -> Option<u64> {
    let (range, size) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, size) = (
        first.parse::<u64>().ok()?,
        last.parse::<u64>().ok()?,
        size.parse::<u64>().ok()?,
    );
    (first == start && first <= last && last.checked_add(1)? == size).then_some(size)
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_string())
}

fn network(what: &str, attempts: u32, source: reqwest::Error) -> RegistryError {
    RegistryError::Network {
        what: what.to_string(),
        attempts,
        source,
    }
}

/// Passes the response on if its status is one of `ok`, else turns it into
/// the matching error.
async fn expect_status(
    resp: Response,
    what: &str,
    ok: &[StatusCode],
) -> Result<Response, RegistryError> {
    if ok.contains(&resp.status()) {
        Ok(resp)
    } else {
        Err(unexpected(resp, what).await)
    }
}

async fn unexpected(resp: Response, what: &str) -> RegistryError {
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return RegistryError::NotFound {
            what: what.to_string(),
        };
    }
    let body = read_limited(resp, what, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    RegistryError::UnexpectedStatus {
        what: what.to_string(),
        status: status.as_u16(),
        body: body.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_realm, tail_size};
    use crate::digest::Digest;
    use std::io::{BufRead, Write};
    use std::sync::{Arc, Mutex};

    /// A registry that redirects every blob GET to `/storage/blob` on
    /// itself (as registries backed by object storage do), which serves
    /// `blob`'s ranges. Returns its address and the paths asked.
    fn redirecting_registry(blob: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (log, blob) = (asked.clone(), Arc::new(blob));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (log, blob) = (log.clone(), blob.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let (mut request, mut range) = (String::new(), None);
                        if reader.read_line(&mut request).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                                break;
                            }
                            if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=")
                            {
                                let (a, b) = r.trim().split_once('-').unwrap();
                                let end = b.parse::<usize>().map_or(blob.len(), |b| b + 1);
                                range = Some((a.parse::<usize>().unwrap(), end));
                            }
                        }
                        let path = request.split(' ').nth(1).unwrap_or("").to_string();
                        log.lock().unwrap().push(path.clone());
                        let answer = if path.contains("/blobs/") {
                            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /storage/blob\r\nContent-Length: 0\r\n\r\n".to_vec()
                        } else {
                            let (a, b) = range.expect("a range read");
                            let mut out = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                                b - 1,
                                blob.len(),
                                b - a
                            )
                            .into_bytes();
                            out.extend_from_slice(&blob[a..b]);
                            out
                        };
                        if conn.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, asked)
    }

    #[test]
    fn a_blob_tail_learns_the_redirect_its_range_reads_reuse() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let digest = Digest::of(&blob);
        let (addr, asked) = redirecting_registry(blob.clone());
        let client = super::RegistryClient::new(
            &addr,
            super::RegistryOptions {
                plain_http: true,
                ..Default::default()
            },
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tail, size) = runtime
            .block_on(client.get_blob_tail("repo", &digest, 9_000, 2_000))
            .unwrap();
        assert_eq!((&tail[..], size), (&blob[9_000..], 10_000));
        let range = runtime
            .block_on(client.get_blob_range("repo", &digest, 100..200))
            .unwrap();
        assert_eq!(&range[..], &blob[100..200]);
        let registry_asked =
            |asked: &[String]| asked.iter().filter(|p| p.contains("/blobs/")).count();
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            registry_asked(&asked),
            1,
            "the range read went to the redirect target the tail learnt: {asked:?}"
        );
        assert_eq!(asked.len(), 3, "{asked:?}");
    }

    #[test]
    fn only_a_content_range_of_the_blobs_end_from_the_start_asked_gives_its_size() {
        // (Content-Range, start asked, size)
        let cases: &[(Option<&str>, u64, Option<u64>)] = &[
            (Some("bytes 100-199/200"), 100, Some(200)),
            (Some("bytes 0-0/1"), 0, Some(1)),
            (None, 100, None),
            (Some("bytes 100-199/*"), 100, None),
            (Some("bytes 100-198/200"), 100, None),
            (Some("bytes 99-199/200"), 100, None),
            (Some("bytes 100-199/300"), 100, None),
            (Some("bytes 150-100/101"), 150, None),
            (Some("bytes */200"), 100, None),
            (Some("items 100-199/200"), 100, None),
            (Some("bytes 100-18446744073709551615/0"), 100, None),
            (Some("bytes -100-199/200"), 100, None),
            (Some("bytes 100-199/200/1"), 100, None),
        ];
        for (header, start, size) in cases {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(h) = header {
                headers.insert(reqwest::header::CONTENT_RANGE, h.parse().unwrap());
            }
            assert_eq!(
                tail_size(&headers, *start),
                *size,
                "{header:?} from {start}"
            );
        }
    }

    #[test]
    fn a_bearer_realm_on_plain_http_is_refused_unless_the_node_chose_it() {
        let cases = [
            ("https://auth.example/token", "reg.example", false, true),
            ("https://auth.example/token", "127.0.0.1:5000", true, true),
            ("http://auth.example/token", "reg.example", false, false),
            (
                "http://127.0.0.1:5001/token",
                "127.0.0.1:5000",
                false,
                false,
            ),
            ("http://127.0.0.1:5001/token", "127.0.0.1:5000", true, true),
            ("http://evil.example/token", "127.0.0.1:5000", true, false),
            ("file:///etc/passwd", "reg.example", true, false),
            ("not a url", "reg.example", true, false),
        ];
        for (realm, registry, plain_http, allowed) in cases {
            assert_eq!(
                check_realm(realm, registry, plain_http).is_ok(),
                allowed,
                "realm {realm} for {registry} (plain HTTP configured: {plain_http})"
            );
        }
    }
}
