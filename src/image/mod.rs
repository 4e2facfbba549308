//! Where images live: a registry repository or an OCI image layout
//! directory, behind one [`ImageStore`] so conversion and inspection do not
//! care which.

mod layout;
mod platform;
mod process;
mod store;

pub use layout::OciLayout;
pub use platform::{
    chain_id, config_of, host_arch, layers_of, platform_image, platform_manifest,
    platform_manifest_layers, ImageConfig, ImageLayer, ManifestLayer, PlatformImage,
};
pub use process::{resolve_user, Process, ResolvedUser, RunConfig, DEFAULT_PATH};
pub use store::{remove_scratch_file, ImageError, ImageStore};

use crate::registry::Reference;
use std::path::PathBuf;
use std::str::FromStr;

/// Manifest media types loci reads and writes.
pub mod media_types {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker manifest list (read only).
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 2 manifest (read only).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
}

/// An image location as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `docker://host/repo:tag` or bare `host/repo:tag`.
    Registry(Reference),
    /// `oci:DIR:TAG` — an OCI image layout directory and a tag in it.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` of the manifest.
        tag: String,
    },
}

impl FromStr for ImageRef {
    type Err = crate::registry::ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => (dir, tag),
                _ => (rest, "latest"),
            };
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag: tag.to_string(),
            });
        }
        let text = text.strip_prefix("docker://").unwrap_or(text);
        Ok(ImageRef::Registry(text.parse()?))
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
            ImageRef::Layout { dir, tag } => write!(f, "oci:{}:{tag}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "oci:/tmp/img:v1".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "/tmp/img".into(),
                tag: "v1".into()
            }
        );
        let a = "docker://127.0.0.1:5000/x:y".parse::<ImageRef>().unwrap();
        let b = "127.0.0.1:5000/x:y".parse::<ImageRef>().unwrap();
        assert_eq!(a, b);
        assert!(matches!(a, ImageRef::Registry(_)));
    }
}
