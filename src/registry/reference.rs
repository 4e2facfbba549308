//! Image references: `host[:port]/repository[:tag][@digest]`.

use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// Docker Hub's registry host, for references without one.
const DEFAULT_REGISTRY: &str = "registry-1.docker.io";

/// A parsed image reference in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host with optional port, e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given (wins over the tag when resolving).
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    text: String,
    reason: String,
}

impl Reference {
    /// What to ask the registry for: the digest if known, else the tag
    /// (`latest` if neither).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The same repository at another tag.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository at a digest.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match text.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (text, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ if name.contains('/') => (DEFAULT_REGISTRY.to_string(), name.to_string()),
            _ => (DEFAULT_REGISTRY.to_string(), format!("library/{name}")),
        };
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid_repo {
            return Err(err("repository must be lowercase letters, digits and ._-/"));
        }
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid {
                return Err(err("tag must be 1-128 of letters, digits and ._-"));
            }
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_registry_with_port_and_tag() {
        let r: Reference = "127.0.0.1:5000/fixture/base:v1".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "fixture/base");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/fixture/base:v1");
    }

    #[test]
    fn defaults_to_docker_hub_library() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.registry, DEFAULT_REGISTRY);
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn digest_wins_over_tag() {
        let d = Digest::of(b"x");
        let r: Reference = format!("localhost/a:t@{d}").parse().unwrap();
        assert_eq!(r.manifest_reference(), d.to_string());
    }

    #[test]
    fn refuses_bad_names() {
        assert!("localhost/Upper:tag".parse::<Reference>().is_err());
        assert!("localhost/a:".parse::<Reference>().is_err());
        assert!("localhost/a@sha256:zz".parse::<Reference>().is_err());
    }
}
