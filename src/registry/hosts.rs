//! Where a registry's requests go, read from containerd's per-host
//! configuration (`<dir>/<host>/hosts.toml`, the `config_path` of
//! containerd's CRI registry and `ctr --hosts-dir`), so a node configured
//! once for containerd is configured for loci: mirrors tried in order
//! before the registry itself, each with its capabilities, private CAs,
//! client certificates, `skip_verify`, extra headers and `override_path`.
//!
//! This is node configuration, the one place trust decisions come from
//! (plain HTTP where a host's URL says `http://`, CAs, skipping
//! verification); nothing an image carries can change it. It is still
//! bounded: a file over [`MAX_HOSTS_FILE_BYTES`] or with more than
//! [`MAX_HOSTS`] hosts is refused.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Largest `hosts.toml` read.
pub const MAX_HOSTS_FILE_BYTES: u64 = 1 << 20;
/// Most hosts (mirrors and the registry) one file may list.
pub const MAX_HOSTS: usize = 64;

/// What a host may be asked, as containerd's `capabilities` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetching content by digest (blobs, manifests by digest).
    pub pull: bool,
    /// Resolving a tag to a digest.
    pub resolve: bool,
    /// Uploading.
    pub push: bool,
}

impl Capabilities {
    /// Everything: the registry itself, or a host that names none.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One place a registry's requests may go: a mirror, or the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Reached over plain HTTP (its URL says `http://`).
    pub plain_http: bool,
    /// `host[:port]`.
    pub host: String,
    /// The API root's path, `/v2` unless `override_path` set another.
    pub path: String,
    /// What it may be asked.
    pub capabilities: Capabilities,
    /// PEM files of CAs trusted for this host, besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificates: a PEM file, and its key's file when the key
    /// is not in the same file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Accept any server certificate (containerd's `skip_verify`).
    pub skip_verify: bool,
    /// Headers sent with every request to this host.
    pub headers: Vec<(String, String)>,
}

impl HostConfig {
    /// The registry itself with nothing configured: `https://host/v2`
    /// (`http://` when the node reaches it over plain HTTP), and for
    /// `docker.io` its real endpoint.
    pub fn default_for(registry: &str, plain_http: bool) -> HostConfig {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        HostConfig {
            plain_http: plain_http && registry != "docker.io",
            host: host.to_string(),
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: false,
            headers: Vec::new(),
        }
    }

    /// `scheme://host/path`: the API root that repositories follow.
    pub fn api_root(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}{}", self.host, self.path)
    }
}

/// Why a host directory could not be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading the file or the directory failed.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a hosts.toml loci can follow.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The hosts to try for `registry`, in order, the registry itself last,
/// from `dir` (a containerd `certs.d` directory) when given. `plain_http`
/// is the node's choice for the registry itself when no file names its
/// URL.
pub fn hosts_for(
    dir: Option<&Path>,
    registry: &str,
    plain_http: bool,
) -> Result<Vec<HostConfig>, HostsError> {
    let Some(host_dir) = dir.and_then(|dir| host_directory(dir, registry)) else {
        return Ok(vec![HostConfig::default_for(registry, plain_http)]);
    };
    let file = host_dir.join("hosts.toml");
    let entries = match std::fs::metadata(&file) {
        Ok(meta) if meta.len() > MAX_HOSTS_FILE_BYTES => {
            return Err(HostsError::Invalid {
                path: file,
                reason: format!("larger than {MAX_HOSTS_FILE_BYTES} bytes"),
            })
        }
        Ok(_) => {
            let text = std::fs::read_to_string(&file).map_err(|source| HostsError::Read {
                path: file.clone(),
                source,
            })?;
            parse_hosts_file(&host_dir, &text).map_err(|reason| HostsError::Invalid {
                path: file.clone(),
                reason,
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            vec![docker_cert_files(&host_dir)?]
        }
        Err(source) => return Err(HostsError::Read { path: file, source }),
    };
    Ok(with_default_server(entries, registry, plain_http))
}

/// containerd's lookup: `host_port_`, then `host:port`, then `_default`.
fn host_directory(dir: &Path, registry: &str) -> Option<PathBuf> {
    let mut names = Vec::new();
    if let Some((host, port)) = registry.rsplit_once(':') {
        names.push(format!("{host}_{port}_"));
    }
    names.push(registry.to_string());
    names.push("_default".to_string());
    names
        .into_iter()
        // A registry name with a path separator or dot-dot never leaves
        // the directory (references are checked already; this is cheap).
        .filter(|name| !name.contains('/') && name != ".." && name != ".")
        .map(|name| dir.join(name))
        .find(|path| path.is_dir())
}

/// The last entry is the registry itself: a file without `server` leaves
/// its host empty, filled here as containerd does.
fn with_default_server(
    mut entries: Vec<HostConfig>,
    registry: &str,
    plain_http: bool,
) -> Vec<HostConfig> {
    if let Some(last) = entries.last_mut() {
        if last.host.is_empty() {
            let default = HostConfig::default_for(registry, plain_http);
            last.plain_http = default.plain_http;
            last.host = default.host;
            last.path = default.path;
            last.capabilities = Capabilities::ALL;
        }
    }
    entries
}

/// A directory without hosts.toml, in Docker's layout: `*.crt` are CAs,
/// `*.cert` client certificates with their `*.key` beside them.
fn docker_cert_files(dir: &Path) -> Result<HostConfig, HostsError> {
    let read = |source| HostsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut config = HostConfig::default_for("", false);
    for name in &names {
        if name.ends_with(".crt") {
            config.ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            config
                .client
                .push((dir.join(name), key.is_file().then_some(key)));
        }
    }
    Ok(config)
}

/// A string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `client`: a file, or a list of files or `[cert, key]` pairs.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientField {
    One(String),
    Many(Vec<ClientEntry>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientEntry {
    Combined(String),
    Pair(Vec<String>),
}

/// The fields of one host (and of the file's top level, for `server`).
#[derive(Deserialize, Default)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientField>,
    skip_verify: Option<bool>,
    header: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default)]
    override_path: bool,
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: HashMap<String, toml::Spanned<HostFields>>,
    #[serde(flatten)]
    top: HostFields,
}

/// Parses a hosts.toml whose relative paths are relative to `base`: the
/// `[host."…"]` entries in the order they are written, then the registry
/// itself (`server`, with an empty host when the file names none).
pub fn parse_hosts_file(base: &Path, text: &str) -> Result<Vec<HostConfig>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.host.len() + 1 > MAX_HOSTS {
        return Err(format!("more than {MAX_HOSTS} hosts"));
    }
    let mut hosts: Vec<(String, toml::Spanned<HostFields>)> = file.host.into_iter().collect();
    hosts.sort_by_key(|(_, fields)| fields.span().start);
    let mut parsed = hosts
        .into_iter()
        .map(|(url, fields)| {
            host_config(Some(&url), base, fields.into_inner())
                .map_err(|reason| format!("host {url:?}: {reason}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.push(
        host_config(file.server.as_deref(), base, file.top)
            .map_err(|reason| format!("server: {reason}"))?,
    );
    Ok(parsed)
}

fn host_config(url: Option<&str>, base: &Path, fields: HostFields) -> Result<HostConfig, String> {
    let mut config = HostConfig::default_for("", false);
    if let Some(url) = url.filter(|u| !u.is_empty()) {
        let with_scheme = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("https://{url}")
        };
        let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| format!("URL: {e}"))?;
        let host = parsed.host_str().ok_or("URL without a host")?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("credentials in a URL are not accepted; see [registry.auth]".into());
        }
        config.plain_http = parsed.scheme() == "http";
        config.host = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let path = parsed.path().trim_end_matches('/');
        config.path = if fields.override_path || path.ends_with("/v2") {
            path.to_string()
        } else {
            format!("{path}/v2")
        };
    }
    if let Some(capabilities) = fields.capabilities.filter(|c| !c.is_empty()) {
        config.capabilities = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for capability in capabilities {
            match capability.to_ascii_lowercase().as_str() {
                "pull" => config.capabilities.pull = true,
                "resolve" => config.capabilities.resolve = true,
                "push" => config.capabilities.push = true,
                other => return Err(format!("unknown capability {other:?}")),
            }
        }
    }
    let absolute = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    config.ca = fields
        .ca
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|p| absolute(p))
        .collect();
    config.client = match fields.client {
        None => Vec::new(),
        Some(ClientField::One(file)) => vec![(absolute(&file), None)],
        Some(ClientField::Many(entries)) => entries
            .into_iter()
            .map(|entry| match entry {
                ClientEntry::Combined(file) => Ok((absolute(&file), None)),
                ClientEntry::Pair(pair) if pair.len() == 2 => {
                    Ok((absolute(&pair[0]), Some(absolute(&pair[1]))))
                }
                ClientEntry::Pair(pair) => Err(format!(
                    "client pair of {} files, not [cert, key]",
                    pair.len()
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    config.skip_verify = fields.skip_verify.unwrap_or(false);
    for (name, values) in fields.header.unwrap_or_default() {
        for value in values.into_vec() {
            config.headers.push((name.clone(), value));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(url_plain: bool, host: &str, path: &str, caps: Capabilities) -> HostConfig {
        let mut c = HostConfig::default_for(host, url_plain);
        c.path = path.into();
        c.capabilities = caps;
        c
    }

    const PULL_RESOLVE: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: false,
    };

    #[test]
    fn hosts_are_tried_in_the_order_written_and_the_server_last() {
        let text = r#"
server = "https://registry.example:5000"

[host."http://zeta-mirror:5001"]
  capabilities = ["pull", "resolve"]

[host."https://alpha-mirror/some/prefix"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  client = [["client.pem", "/abs/client.key"]]
  header = { X-Mirror = ["a", "b"] }

[host."https://raw.example/api"]
  override_path = true
  skip_verify = true
"#;
        let hosts = parse_hosts_file(Path::new("/etc/certs.d/r"), text).unwrap();
        let roots: Vec<String> = hosts.iter().map(HostConfig::api_root).collect();
        assert_eq!(
            roots,
            [
                "http://zeta-mirror:5001/v2",
                "https://alpha-mirror/some/prefix/v2",
                "https://raw.example/api",
                "https://registry.example:5000/v2",
            ]
        );
        assert_eq!(hosts[0].capabilities, PULL_RESOLVE);
        assert_eq!(hosts[1].ca, [PathBuf::from("/etc/certs.d/r/ca.pem")]);
        assert_eq!(
            hosts[1].client,
            [(
                PathBuf::from("/etc/certs.d/r/client.pem"),
                Some(PathBuf::from("/abs/client.key"))
            )]
        );
        assert_eq!(
            hosts[1].headers,
            [
                ("X-Mirror".into(), "a".into()),
                ("X-Mirror".into(), "b".into())
            ]
        );
        assert!(hosts[2].skip_verify && !hosts[1].skip_verify);
        assert_eq!(hosts[3].capabilities, Capabilities::ALL);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("not toml [", "expected"),
            (
                "[host.\"https://m\"]\ncapabilities = [\"delete\"]",
                "unknown capability",
            ),
            (
                "[host.\"https://m\"]\nclient = [[\"a\", \"b\", \"c\"]]",
                "client pair of 3",
            ),
            (
                "server = \"https://user:pw@r.example\"",
                "credentials in a URL",
            ),
            ("server = \"https://\"", "URL"),
            ("ca = 5", ""),
        ];
        for (text, reason) in cases {
            let err = parse_hosts_file(Path::new("/"), text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        let many: String = (0..MAX_HOSTS)
            .map(|i| format!("[host.\"https://m{i}\"]\n"))
            .collect();
        assert!(parse_hosts_file(Path::new("/"), &many)
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn the_directory_is_found_as_containerd_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing configured: the registry itself, as the node chose.
        assert_eq!(
            hosts_for(Some(dir.path()), "r.example:5000", true).unwrap(),
            [host(true, "r.example:5000", "/v2", Capabilities::ALL)]
        );
        assert_eq!(
            hosts_for(None, "docker.io", true).unwrap()[0].api_root(),
            "https://registry-1.docker.io/v2"
        );
        // `_default` applies to every registry without its own directory.
        std::fs::create_dir(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://mirror:1\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        let hosts = hosts_for(Some(dir.path()), "r.example:5000", false).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].api_root(), "http://mirror:1/v2");
        assert_eq!(hosts[1].api_root(), "https://r.example:5000/v2");
        // `host_port_` wins over `host:port`, which wins over `_default`;
        // Docker's layout (no hosts.toml) gives CAs and client pairs.
        for name in ["r.example:5000", "r.example_5000_"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join(format!("{name}.crt")), "").unwrap();
        }
        std::fs::write(dir.path().join("r.example_5000_/c.cert"), "").unwrap();
        std::fs::write(dir.path().join("r.example_5000_/c.key"), "").unwrap();
        let hosts = hosts_for(Some(dir.path()), "r.example:5000", false).unwrap();
        assert_eq!(hosts.len(), 1);
        let chosen = dir.path().join("r.example_5000_");
        assert_eq!(hosts[0].ca, [chosen.join("r.example_5000_.crt")]);
        assert_eq!(
            hosts[0].client,
            [(chosen.join("c.cert"), Some(chosen.join("c.key")))]
        );
        assert_eq!(hosts[0].api_root(), "https://r.example:5000/v2");
        // An oversized file is refused, naming it.
        std::fs::write(
            chosen.join("hosts.toml"),
            vec![b'#'; MAX_HOSTS_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let err = hosts_for(Some(dir.path()), "r.example:5000", false).unwrap_err();
        assert!(err.to_string().contains("hosts.toml"), "{err}");
    }
}
