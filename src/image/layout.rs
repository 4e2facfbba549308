//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/`).

use crate::digest::Digest;
use std::io;
use std::path::{Path, PathBuf};

/// The annotation naming a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout on local disk.
#[derive(Clone, Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout, or creates an empty one if `create`.
    pub fn open(dir: &Path, create: bool) -> io::Result<OciLayout> {
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            if !create {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} is not an OCI image layout (no oci-layout file)",
                        dir.display()
                    ),
                ));
            }
            std::fs::create_dir_all(dir.join("blobs/sha256"))?;
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            std::fs::write(
                dir.join("index.json"),
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )?;
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Where a blob is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// The top-level index as JSON.
    pub fn index(&self) -> io::Result<serde_json::Value> {
        let bytes = std::fs::read(self.dir.join("index.json"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("index.json: {e}")))
    }

    /// Finds the descriptor tagged `tag` in index.json.
    pub fn find_tag(&self, tag: &str) -> io::Result<serde_json::Value> {
        let index = self.index()?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        manifests
            .into_iter()
            .find(|d| d["annotations"][REF_NAME].as_str() == Some(tag))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no manifest tagged {tag:?} in {}", self.dir.display()),
                )
            })
    }

    /// Stores a blob atomically (write to a temporary name, then rename).
    pub fn put_blob(&self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(tmp, path)
    }

    /// Stores a blob by copying a file.
    pub fn put_blob_file(&self, digest: &Digest, src: &Path) -> io::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        std::fs::copy(src, &tmp)?;
        std::fs::rename(tmp, path)
    }

    /// Stores a blob by moving a file of the caller's into place, or by
    /// copying it where a rename cannot (another filesystem).
    pub fn move_blob_file(&self, digest: &Digest, src: &Path) -> io::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        match std::fs::rename(src, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => self.put_blob_file(digest, src),
            Err(e) => Err(e),
        }
    }

    /// Points `tag` in index.json at `descriptor`, replacing an older one.
    pub fn set_tag(&self, tag: &str, mut descriptor: serde_json::Value) -> io::Result<()> {
        descriptor["annotations"][REF_NAME] = serde_json::Value::String(tag.to_string());
        let mut index = self.index()?;
        let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "index.json has no manifests")
        })?;
        manifests.retain(|d| d["annotations"][REF_NAME].as_str() != Some(tag));
        manifests.push(descriptor);
        let tmp = self.dir.join("index.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&index)?)?;
        std::fs::rename(tmp, self.dir.join("index.json"))
    }
}
