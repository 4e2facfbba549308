//! Native reads of complete layers: once a layer's blob is complete and
//! verified on local disk, each file opened is written out once as an
//! ordinary file and handed to the kernel with FUSE passthrough, so its
//! reads go to that file directly and never reach this daemon. Kernels
//! without passthrough (before Linux 6.9) keep the daemon's read path.
//! Once every file is written, the layer is also laid out as a plain
//! directory (the files moved in, the tree's metadata applied) that new
//! snapshots use as their overlayfs lower dir, with no FUSE at all.

use super::tree::{Ino, Node, Tree};
use crate::fetch::{Fetcher, RemoteLayer};
use fuser::{BackingId, ReplyOpen};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of a file read from the local blob at once while writing it out.
const PIECE: u64 = 8 << 20;

/// The ordinary files of a complete layer's opened files, and their
/// kernel backing ids.
pub struct NativeFiles {
    dir: PathBuf,
    /// Where the layer is laid out as a plain directory; once it is, its
    /// files live there (moved from `dir`) and passthrough opens them there.
    lower: PathBuf,
    /// Each file inode's path under `lower`, once it is laid out.
    laid_out: std::sync::OnceLock<HashMap<Ino, PathBuf>>,
    /// Whether the kernel agreed to passthrough at INIT.
    enabled: AtomicBool,
    /// One backing id per inode, reused for every open (as the kernel
    /// requires), kept for the life of the mount.
    backing: Mutex<HashMap<Ino, Arc<BackingId>>>,
    /// The mount's tree and layers, once it is served: what
    /// [`write_all`](Self::write_all) writes out.
    served: std::sync::OnceLock<(Arc<Tree>, Arc<Vec<RemoteLayer>>)>,
    /// Makes temporary names unique between concurrent writers.
    writes: AtomicU64,
    /// Held while a file is written out, so [`retire`](Self::retire)
    /// never removes the directory under a write.
    writing: Mutex<()>,
    /// Set once the files are evicted: nothing more is written or opened.
    retired: AtomicBool,
}

impl NativeFiles {
    /// Files written out under `dir` (created when first needed), the
    /// layer laid out at `lower` once they all are.
    pub fn new(dir: PathBuf, lower: PathBuf) -> NativeFiles {
        NativeFiles {
            dir,
            lower,
            laid_out: std::sync::OnceLock::new(),
            enabled: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            served: std::sync::OnceLock::new(),
            writes: AtomicU64::new(0),
            writing: Mutex::new(()),
            retired: AtomicBool::new(false),
        }
    }

    /// Stops writing and opening files and removes those written (the
    /// layer is evicted from disk): opens go back to the daemon's read
    /// path; files already opened by passthrough stay readable until
    /// closed (the kernel holds them).
    pub fn retire(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.retired.store(true, Ordering::Relaxed);
        self.backing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Only layers no container uses are evicted. The laid-out directory
        // leaves its place in one rename first, so a mount made meanwhile
        // finds it whole or not at all (then FUSE), never half removed.
        let leaving = self.lower.with_extension("evicted");
        if std::fs::rename(&self.lower, &leaving).is_err() && self.lower.exists() {
            tracing::warn!(dir = %self.lower.display(), "could not move an evicted layer's directory away");
        }
        for dir in [&self.dir, &leaving, &self.lower] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing an evicted layer's files");
                }
            }
        }
    }

    /// The tree and layers of the mount these files are of.
    pub fn attach(&self, tree: Arc<Tree>, layers: Arc<Vec<RemoteLayer>>) {
        let _ = self.served.set((tree, layers));
    }

    /// Writes out every file of the complete layer not written yet, so
    /// opens after it need only hand the kernel the file (the layer
    /// unpacked; the next start reads it at local-disk speed). Blocking:
    /// call it off the runtime's workers. Returns the files written.
    pub fn write_all(
        &self,
        fetcher: &Arc<Fetcher>,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<usize> {
        let Some((tree, layers)) = self.served.get() else {
            return Ok(0);
        };
        if !fetcher.is_complete() || self.lower_paths().is_some() {
            return Ok(0);
        }
        let mut written = 0;
        for ino in 1..=tree.len() as Ino {
            let Some(node) = tree.get(ino) else { continue };
            let Some(content) = &node.content else {
                continue;
            };
            let path = self.dir.join(ino.to_string());
            let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            if self.retired.load(Ordering::Relaxed) {
                break;
            }
            if path.exists() {
                continue;
            }
            self.write_out(
                &path,
                node,
                content,
                &layers[content.layer],
                fetcher,
                runtime,
            )?;
            written += 1;
        }
        Ok(written)
    }

    /// Records whether the kernel negotiated passthrough.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// The backing id to answer an open of `ino` with, if its layer is
    /// complete, its file written out ([`write_all`](Self::write_all)) and
    /// passthrough on; None leaves the open to the daemon's read path. No
    /// file is written here: an open never waits on a file's copy.
    pub fn backing_for(
        &self,
        ino: Ino,
        layer: &RemoteLayer,
        fetcher: &Fetcher,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed)
            || !fetcher.is_complete()
            || self.retired.load(Ordering::Relaxed)
        {
            return None;
        }
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = backing.get(&ino) {
            return Some(id.clone());
        }
        let path = match self.lower_paths() {
            Some(paths) => paths.get(&ino)?.clone(),
            None => self.dir.join(ino.to_string()),
        };
        let file = std::fs::File::open(path).ok()?;
        match reply.open_backing(&file) {
            Ok(id) => {
                let id = Arc::new(id);
                if backing.is_empty() {
                    tracing::info!(layer = %layer.digest, "the complete layer's files are opened by passthrough: their reads bypass the daemon");
                }
                backing.insert(ino, id.clone());
                Some(id)
            }
            Err(e) => {
                tracing::warn!(ino, error = %e, "the kernel refused a passthrough backing file; reads stay with the daemon");
                self.enabled.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Writes the file's content (read from the layer's local blob) to
    /// `path`, through a temporary name so a crash leaves no short file.
    fn write_out(
        &self,
        path: &std::path::Path,
        node: &Node,
        content: &crate::fetch::Content,
        layer: &RemoteLayer,
        fetcher: &Arc<Fetcher>,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = path.with_extension(format!(
            "{}.tmp",
            self.writes.fetch_add(1, Ordering::Relaxed)
        ));
        let mut out = std::fs::File::create(&tmp)?;
        let mut offset = 0;
        while offset < node.size {
            let len = PIECE.min(node.size - offset);
            let data = runtime
                .block_on(fetcher.read_file(layer, content, offset, len, 0))
                .map_err(std::io::Error::other)?;
            if data.len() as u64 != len {
                return Err(std::io::Error::other("short read of a complete layer"));
            }
            out.write_all(&data)?;
            offset += len;
        }
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(path)
    }
}

impl NativeFiles {
    /// Lays the complete layer out as a plain directory (at `lower`), as
    /// its FUSE mount shows it (the overlay-lower view: whiteouts as 0/0
    /// character devices, opaque directories by xattr): directories,
    /// symlinks and device nodes made, the written-out files moved in (no
    /// copy; a file's other names hard-linked to it). Built beside `lower`
    /// and renamed into place, so a `lower` that exists is whole. Returns
    /// false, doing nothing, unless every file is written out. Blocking.
    pub fn build_lower(&self) -> std::io::Result<bool> {
        let Some((tree, _)) = self.served.get() else {
            return Ok(false);
        };
        if self.lower_paths().is_some() {
            return Ok(true);
        }
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if self.retired.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let written = (1..=tree.len() as Ino).all(|ino| {
            tree.get(ino)
                .is_none_or(|n| n.content.is_none() || self.dir.join(ino.to_string()).exists())
        });
        if !written {
            return Ok(false);
        }
        let building = self.lower.with_extension("building");
        match std::fs::remove_dir_all(&building) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&building)?;
        let mut placed = HashMap::new();
        self.lay_out(tree, super::tree::ROOT, &building, &mut placed)?;
        std::fs::rename(&building, &self.lower)?;
        let _ = std::fs::remove_dir_all(&self.dir);
        let paths = placed
            .into_iter()
            .filter_map(|(ino, path): (Ino, PathBuf)| {
                Some((ino, self.lower.join(path.strip_prefix(&building).ok()?)))
            })
            .collect();
        let _ = self.laid_out.set(paths);
        Ok(true)
    }

    /// Each file inode's path under the laid-out directory, if the layer
    /// is laid out (found on disk after a restart too).
    fn lower_paths(&self) -> Option<&HashMap<Ino, PathBuf>> {
        use std::os::unix::ffi::OsStrExt;
        if let Some(paths) = self.laid_out.get() {
            return Some(paths);
        }
        let (tree, _) = self.served.get()?;
        if !self.lower.is_dir() {
            return None;
        }
        let mut paths = HashMap::new();
        let mut stack = vec![(super::tree::ROOT, self.lower.clone())];
        while let Some((ino, dir)) = stack.pop() {
            for (name, &child) in &tree.get(ino)?.children {
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                match tree.get(child)?.kind {
                    NodeKind::Dir => stack.push((child, path)),
                    NodeKind::File => {
                        paths.entry(child).or_insert(path);
                    }
                    _ => {}
                }
            }
        }
        let _ = self.laid_out.set(paths);
        self.laid_out.get()
    }

    /// Makes the children of directory `ino` under `dir`, then gives `dir`
    /// the directory's own metadata (last: its mtime would move).
    fn lay_out(
        &self,
        tree: &Tree,
        ino: Ino,
        dir: &std::path::Path,
        placed: &mut HashMap<Ino, PathBuf>,
    ) -> std::io::Result<()> {
        use nix::sys::stat::{mknod, Mode, SFlag};
        use std::os::unix::ffi::OsStrExt;
        let node = tree
            .get(ino)
            .ok_or_else(|| std::io::Error::other("a directory the tree does not hold"))?;
        for (name, &child) in &node.children {
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let Some(entry) = tree.get(child) else {
                continue;
            };
            match entry.kind {
                NodeKind::Dir => {
                    std::fs::create_dir(&path)?;
                    self.lay_out(tree, child, &path, placed)?;
                }
                NodeKind::File => match placed.get(&child) {
                    // Another name of a file already placed.
                    Some(first) => std::fs::hard_link(first, &path)?,
                    None => {
                        let file = self.dir.join(child.to_string());
                        apply_metadata(&file, entry)?;
                        std::fs::rename(&file, &path)?;
                        placed.insert(child, path);
                    }
                },
                NodeKind::Symlink => {
                    let target = entry.link.as_deref().unwrap_or_default();
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)?;
                    apply_metadata(&path, entry)?;
                }
                NodeKind::CharDevice | NodeKind::BlockDevice | NodeKind::Fifo => {
                    let kind = match entry.kind {
                        NodeKind::CharDevice => SFlag::S_IFCHR,
                        NodeKind::BlockDevice => SFlag::S_IFBLK,
                        _ => SFlag::S_IFIFO,
                    };
                    mknod(
                        &path,
                        kind,
                        Mode::from_bits_truncate(entry.mode & 0o7777),
                        u64::from(entry.rdev),
                    )?;
                    apply_metadata(&path, entry)?;
                }
            }
        }
        apply_metadata(dir, node)
    }
}

use super::tree::NodeKind;

/// Gives `path` (not following a symlink) the node's owner, mode, xattrs
/// and mtime, in that order: a chown clears setuid bits and file
/// capabilities, which the mode and xattrs then restore.
fn apply_metadata(path: &std::path::Path, node: &Node) -> std::io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::unix::ffi::OsStrExt;
    std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    if node.kind != NodeKind::Symlink {
        std::fs::set_permissions(
            path,
            std::os::unix::fs::PermissionsExt::from_mode(node.mode & 0o7777),
        )?;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    for (name, value) in &node.xattrs {
        let c_name = std::ffi::CString::new(name.as_slice())?;
        // SAFETY: both strings are NUL-terminated and outlive the call;
        // the value pointer and length describe a live slice.
        let rc = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mtime = TimeSpec::new(node.mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}
