//! Releasing a node from loci for good: what a stopped snapshotter left
//! running on purpose (its lazy mounts, and the fd holder keeping their
//! connections for the next daemon) is closed, so the node can be drained
//! or loci uninstalled. Containers still reading those layers get errors:
//! stop them first.

use super::fdstore::quit_holder;
use super::meta::MetaStore;
use std::path::{Path, PathBuf};

/// What [`release`] closed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Connections the fd holder held.
    pub held: usize,
    /// FUSE mounts under the root, unmounted.
    pub unmounted: Vec<PathBuf>,
}

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A snapshotter still runs on this root.
    #[error("a loci snapshotter still uses {root}: stop it first")]
    Running {
        root: PathBuf,
        #[source]
        source: super::meta::MetaError,
    },
    /// Talking to the fd holder or reading the mount table failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Closes every connection the fd holder of the snapshotter at `root`
/// holds, ends the holder, and unmounts every FUSE mount under `root`.
/// Refused while a snapshotter runs there (it holds the metadata lock).
pub fn release(root: &Path) -> Result<Released, ReleaseError> {
    let metadata = root.join("metadata");
    if metadata.exists() {
        drop(
            MetaStore::open(&metadata).map_err(|source| ReleaseError::Running {
                root: root.to_path_buf(),
                source,
            })?,
        );
    }
    let socket = root.join("fuse-fds.sock");
    let held = quit_holder(&socket).map_err(|source| ReleaseError::Io {
        what: format!("asking the fd holder on {} to quit", socket.display()),
        source,
    })?;
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(|source| ReleaseError::Io {
            what: "reading /proc/self/mounts".into(),
            source,
        })?;
    let mut unmounted = Vec::new();
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype.starts_with("fuse")).then(|| PathBuf::from(unescape(target)))
        })
        .filter(|target| target.starts_with(root))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.as_os_str().len()));
    for target in targets {
        match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => unmounted.push(target),
            Err(e) => tracing::warn!(target = %target.display(), error = %e, "could not unmount"),
        }
    }
    tracing::info!(held, unmounted = unmounted.len(), root = %root.display(), "released");
    Ok(Released { held, unmounted })
}

/// /proc/self/mounts escapes spaces, tabs, newlines and backslashes as
/// octal.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |k: usize| u32::from(bytes[i + k] - b'0');
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(super::unescape(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(super::unescape(r"/plain"), "/plain");
        assert_eq!(super::unescape(r"/cut\04"), r"/cut\04");
    }
}
