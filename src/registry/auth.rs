//! Registry authentication: the `WWW-Authenticate` challenge, Bearer token
//! exchange and Basic auth, with credentials from the node's configuration
//! (`[registry.auth."host"]`), then `~/.docker/config.json` (and its
//! credential helpers, through the `docker_credential` crate).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// Credentials for one registry.
#[derive(Clone)]
pub(super) enum Credentials {
    /// Username and password (or token as password).
    Basic { username: String, password: String },
    /// An identity (refresh) token, exchanged at the token endpoint.
    IdentityToken(String),
}

impl Credentials {
    /// Credentials for a request to `host`: those a pull of `image`
    /// (registry, repository) brought when `host` is that registry itself,
    /// else the node's for `host`, else the docker config's.
    pub(super) fn lookup(
        node: &NodeCredentials,
        host: &str,
        image: Option<(&str, &str)>,
    ) -> Option<Credentials> {
        image
            .and_then(|(registry, repository)| node.pulled(registry, repository))
            .or_else(|| node.get(host))
            .or_else(|| Credentials::from_docker_config(host))
    }

    /// Looks up the docker config for `registry`; None when there is no
    /// entry (anonymous access).
    pub(super) fn from_docker_config(registry: &str) -> Option<Credentials> {
        let servers: Vec<&str> = if registry == "registry-1.docker.io" {
            vec![
                "https://index.docker.io/v1/",
                "index.docker.io",
                "docker.io",
            ]
        } else {
            vec![registry]
        };
        servers.into_iter().find_map(|server| {
            match docker_credential::get_credential(server).ok()? {
                docker_credential::DockerCredential::UsernamePassword(username, password) => {
                    Some(Credentials::Basic { username, password })
                }
                docker_credential::DockerCredential::IdentityToken(token) => {
                    Some(Credentials::IdentityToken(token))
                }
            }
        })
    }

    /// The `Authorization` value for Basic auth, when these are basic creds.
    pub(super) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

/// One registry host's credentials in the node configuration: a username
/// and password, or an identity (refresh) token.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostAuth {
    /// Username for Basic auth or the token endpoint.
    pub username: String,
    /// Password (or a registry's access token used as one).
    pub password: String,
    /// An OAuth2 refresh token, exchanged at the token endpoint instead.
    pub identity_token: String,
}

/// Never prints a secret: configuration is logged at startup.
impl std::fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAuth")
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "identity_token",
                &if self.identity_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl HostAuth {
    fn credentials(&self) -> Credentials {
        if !self.identity_token.is_empty() {
            Credentials::IdentityToken(self.identity_token.clone())
        } else {
            Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            }
        }
    }
}

/// The credentials a node holds: those configured per registry host, and
/// those pulls brought (kubelet's, through the CRI proxy) per registry and
/// repository, the latest pull's replacing the one before. A mirror is its
/// own host: a registry's credentials are never sent to a mirror unless
/// configured for it too. Held in memory only; clones share them.
#[derive(Clone, Default)]
pub struct NodeCredentials {
    configured: Arc<BTreeMap<String, HostAuth>>,
    pulled: Arc<RwLock<HashMap<(String, String), HostAuth>>>,
}

impl NodeCredentials {
    /// Credentials for the hosts named.
    pub fn new(hosts: BTreeMap<String, HostAuth>) -> NodeCredentials {
        NodeCredentials {
            configured: Arc::new(hosts),
            pulled: Arc::default(),
        }
    }

    /// Keeps the credentials a pull of `registry`/`repository` was given,
    /// for the lazy reads of that image that follow.
    pub fn remember_pull(&self, registry: &str, repository: &str, auth: HostAuth) {
        self.pulled
            .write()
            .unwrap()
            .insert((registry.to_string(), repository.to_string()), auth);
    }

    fn pulled(&self, registry: &str, repository: &str) -> Option<Credentials> {
        let pulled = self.pulled.read().unwrap();
        Some(
            pulled
                .get(&(registry.to_string(), repository.to_string()))?
                .credentials(),
        )
    }

    fn get(&self, host: &str) -> Option<Credentials> {
        Some(self.configured.get(host)?.credentials())
    }
}

/// Names the hosts and repositories, never the secrets.
impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pulled: Vec<(String, String)> = self.pulled.read().unwrap().keys().cloned().collect();
        f.debug_struct("NodeCredentials")
            .field("configured", &self.configured.keys().collect::<Vec<_>>())
            .field("pulled", &pulled)
            .finish()
    }
}

/// A parsed `WWW-Authenticate` challenge: what a registry asks before it
/// serves a request. Public so that it can be fuzzed: it is parsed from
/// whatever a registry sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Token auth: ask `realm` for a token for `service` and `scope`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// Send credentials with every request.
    Basic,
}

impl Challenge {
    /// Parses a header such as
    /// `Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut fields = HashMap::new();
        let mut rest = params;
        while let Some((key, after)) = rest.split_once('=') {
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            fields.insert(key, value.to_string());
            rest = remaining;
        }
        Some(Challenge::Bearer {
            realm: fields.remove("realm")?,
            service: fields.remove("service"),
            scope: fields.remove("scope"),
        })
    }
}

/// `Authorization` header values that worked, per scope, reused until the
/// registry refuses them.
#[derive(Default)]
pub(super) struct TokenCache(Mutex<HashMap<String, String>>);

impl TokenCache {
    pub(super) fn get(&self, scope: &str) -> Option<String> {
        self.0.lock().unwrap().get(scope).cloned()
    }

    pub(super) fn put(&self, scope: &str, header: String) {
        self.0.lock().unwrap().insert(scope.to_string(), header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
    }

    #[test]
    fn parses_basic_and_refuses_unknown() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }
}
