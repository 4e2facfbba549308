//! The distribution API over HTTP: manifests, blobs, uploads, ranges.

use super::auth::{Challenge, Credentials, TokenCache};
use super::{RegistryError, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, MAX_TOKEN_BYTES};
use crate::digest::{Digest, Hasher};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH
/// chunks of this size, so memory stays bounded and a failure costs a chunk.
const UPLOAD_CHUNK: u64 = 32 << 20;

/// How the client talks to a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Use http:// instead of https:// (local test registries).
    pub plain_http: bool,
    /// Connect timeout, and the longest a response may stall between reads.
    pub timeout: Duration,
    /// Retries of idempotent requests after network errors, 429 and 5xx.
    pub retries: u32,
    /// First backoff delay; doubles on every retry.
    pub backoff: Duration,
    /// How long a blob's redirect target is reused for range reads before
    /// asking the registry again (presigned URLs expire).
    pub redirect_ttl: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http: false,
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(200),
            redirect_ttl: Duration::from_secs(300),
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
    http: reqwest::Client,
    /// Like `http` but never follows redirects, so range reads can learn
    /// a blob's redirect target and reuse it.
    blob_http: reqwest::Client,
    /// Redirect targets of blobs, reused for later ranges until they expire.
    redirects: Mutex<HashMap<(String, Digest), (String, Instant)>>,
    base: String,
    registry: String,
    opts: RegistryOptions,
    tokens: TokenCache,
}

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Idempotent,
    Once,
}

impl RegistryClient {
    /// A client for `registry` (host[:port]). Credentials come from the
    /// docker config (and its helpers) each time the registry asks for
    /// them, so rotated credentials are picked up.
    pub fn new(registry: &str, opts: RegistryOptions) -> Result<RegistryClient, RegistryError> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(opts.timeout)
                .read_timeout(opts.timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(32)
                .tcp_nodelay(true)
                .user_agent(concat!("loci/", env!("CARGO_PKG_VERSION")))
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build().map_err(|e| RegistryError::Network {
                what: registry.to_string(),
                attempts: 0,
                source: e,
            })
        };
        let http = built(builder())?;
        let blob_http = built(builder().redirect(reqwest::redirect::Policy::none()))?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        Ok(RegistryClient {
            inner: std::sync::Arc::new(Inner {
                http,
                blob_http,
                redirects: Mutex::new(HashMap::new()),
                base: format!("{scheme}://{registry}"),
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

    fn url(&self, repo: &str, tail: &str) -> String {
        format!("{}/v2/{repo}/{tail}", self.inner.base)
    }

    /// Fetches a manifest or index by tag or digest; when asked by digest,
    /// checks the bytes against it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {repo}:{reference}");
        let url = self.url(repo, &format!("manifests/{reference}"));
        let accept = MANIFEST_ACCEPT.join(", ");
        let resp = self
            .send(&what, repo, false, Retry::Idempotent, || {
                self.inner.http.get(&url).header(ACCEPT, &accept)
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
        let url = self.url(repo, &format!("referrers/{digest}"));
        let resp = self
            .send(&what, repo, false, Retry::Idempotent, || {
                self.inner
                    .http
                    .get(&url)
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
        let url = self.url(repo, &format!("manifests/{reference}"));
        let resp = self
            .send(&what, repo, true, Retry::Idempotent, || {
                self.inner
                    .http
                    .put(&url)
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
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(&what, repo, false, Retry::Idempotent, || {
                self.inner.http.head(&url)
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
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(what, repo, false, Retry::Idempotent, || {
                self.inner.http.request(method.clone(), &url)
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
        let what = format!("blob {repo}@{digest} bytes {}-{}", range.start, range.end);
        let header = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let want = range.end - range.start;
        let key = (repo.to_string(), *digest);
        let cached = {
            let redirects = self.inner.redirects.lock().unwrap();
            redirects
                .get(&key)
                .filter(|(_, at)| at.elapsed() < self.inner.opts.redirect_ttl)
                .map(|(url, _)| url.clone())
        };
        if let Some(url) = cached {
            match self.range_from_redirect(&url, &header, &what, want).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    tracing::debug!(what, error = %e, "redirect target failed; asking the registry again");
                    self.inner.redirects.lock().unwrap().remove(&key);
                }
            }
        }
        let url = self.url(repo, &format!("blobs/{digest}"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .send(&what, repo, false, Retry::Idempotent, || {
                    self.inner.blob_http.get(&url).header(RANGE, &header)
                })
                .await?;
            if resp.status().is_redirection() {
                let target = self.location(&resp, &what)?;
                self.inner
                    .redirects
                    .lock()
                    .unwrap()
                    .insert(key, (target.clone(), Instant::now()));
                return self
                    .range_from_redirect(&target, &header, &what, want)
                    .await;
            }
            let resp = expect_status(resp, &what, &[StatusCode::PARTIAL_CONTENT]).await?;
            match read_range_body(resp, &what, want).await {
                Err(RegistryError::Network { source, .. })
                    if attempt <= self.inner.opts.retries =>
                {
                    tracing::debug!(what, attempt, error = %source, "range body failed; retrying");
                }
                other => return other,
            }
        }
    }

    /// A range from a redirect target (typically a presigned storage URL:
    /// no registry credentials are sent there).
    async fn range_from_redirect(
        &self,
        url: &str,
        header: &str,
        what: &str,
        want: u64,
    ) -> Result<Bytes, RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self
                .inner
                .blob_http
                .get(url)
                .header(RANGE, header)
                .send()
                .await
            {
                Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                    read_range_body(resp, what, want).await
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
                .send(&what, repo, true, Retry::Once, || {
                    self.inner
                        .http
                        .patch(&location)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("Content-Range", &range)
                        .body(piece.clone())
                })
                .await?;
            let resp = expect_status(resp, &what, &[StatusCode::ACCEPTED]).await?;
            location = self.location(&resp, &what)?;
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
        let mut url = self.url(repo, "blobs/uploads/");
        if let Some(from) = mount_from.filter(|from| *from != repo) {
            url.push_str(&format!("?mount={digest}&from={from}"));
        }
        let resp = self
            .send(&what, repo, true, Retry::Idempotent, || {
                self.inner.http.post(&url)
            })
            .await?;
        let resp = expect_status(resp, &what, &[StatusCode::CREATED, StatusCode::ACCEPTED]).await?;
        if resp.status() == StatusCode::CREATED {
            tracing::debug!(%digest, repo, from = mount_from, "blob mounted across repositories");
            return Ok(None);
        }
        self.location(&resp, &what).map(Some)
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
            .send(&what, repo, true, Retry::Once, || {
                self.inner
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(last.clone())
            })
            .await?;
        expect_status(resp, &what, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// The absolute upload URL from a Location header (which may be relative).
    fn location(&self, resp: &Response, what: &str) -> Result<String, RegistryError> {
        let value = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::BadResponse {
                what: what.to_string(),
                reason: "upload response without Location".into(),
            })?;
        let base = reqwest::Url::parse(&self.inner.base).expect("base URL is valid");
        base.join(value)
            .map(|u| u.to_string())
            .map_err(|e| RegistryError::BadResponse {
                what: what.to_string(),
                reason: format!("Location {value:?}: {e}"),
            })
    }

    /// Sends a request built by `make`, authenticating on a 401 challenge
    /// and retrying transient failures with exponential backoff. Returns
    /// the response for any other status; 401/403, 429 and 5xx that
    /// outlast the retries become their own errors.
    async fn send(
        &self,
        what: &str,
        repo: &str,
        push: bool,
        retry: Retry,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let scope = format!(
            "repository:{repo}:{}",
            if push { "pull,push" } else { "pull" }
        );
        let max_attempts = match retry {
            Retry::Idempotent => self.inner.opts.retries + 1,
            Retry::Once => 1,
        };
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            attempt += 1;
            let mut request = make();
            if let Some(auth) = self.inner.tokens.get(&scope) {
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
                        self.authenticate(&resp, &scope, what).await?;
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(RegistryError::Unauthorized {
                            what: what.to_string(),
                            status: status.as_u16(),
                            hint: if Credentials::from_docker_config(&self.inner.registry).is_none()
                            {
                                format!(
                                    " (no credentials for {} in the docker config)",
                                    self.inner.registry
                                )
                            } else {
                                String::new()
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

    /// Answers a 401 challenge: fetches a Bearer token, or sets up Basic.
    async fn authenticate(
        &self,
        resp: &Response,
        scope: &str,
        what: &str,
    ) -> Result<(), RegistryError> {
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
        let credentials = Credentials::from_docker_config(&self.inner.registry);
        let header = match challenge {
            Challenge::Basic => credentials
                .as_ref()
                .and_then(Credentials::basic_header)
                .ok_or_else(|| {
                    unauthorized("Basic auth asked, no credentials in the docker config")
                })?,
            Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            } => {
                let scope = challenge_scope.unwrap_or_else(|| scope.to_string());
                format!(
                    "Bearer {}",
                    self.fetch_token(
                        credentials.as_ref(),
                        &realm,
                        service.as_deref(),
                        &scope,
                        what
                    )
                    .await?
                )
            }
        };
        self.inner.tokens.put(scope, header);
        Ok(())
    }

    async fn fetch_token(
        &self,
        credentials: Option<&Credentials>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        what: &str,
    ) -> Result<String, RegistryError> {
        check_realm(realm, &self.inner.registry, self.inner.opts.plain_http).map_err(|reason| {
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
                self.inner.http.request(Method::POST, realm).form(&params)
            }
            Some(creds) => {
                let mut r = self.inner.http.get(realm).query(&params);
                if let Some(basic) = creds.basic_header() {
                    r = r.header(AUTHORIZATION, basic);
                }
                r
            }
            None => self.inner.http.get(realm).query(&params),
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
    }
    Ok(Bytes::from(body))
}

/// Reads a 206 body and checks it is as long as the range asked for.
async fn read_range_body(resp: Response, what: &str, want: u64) -> Result<Bytes, RegistryError> {
    let bytes = read_limited(resp, what, want).await?;
    if bytes.len() as u64 != want {
        return Err(RegistryError::BadResponse {
            what: what.to_string(),
            reason: format!("range returned {} bytes, asked for {want}", bytes.len()),
        });
    }
    Ok(bytes)
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
    use super::check_realm;

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
