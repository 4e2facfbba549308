//! Native reads of complete layers: once a layer's blob is complete and
//! verified on local disk, each file opened is written out once as an
//! ordinary file and handed to the kernel with FUSE passthrough, so its
//! reads go to that file directly and never reach this daemon. Kernels
//! without passthrough (before Linux 6.9) keep the daemon's read path.

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
    /// Files written out under `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> NativeFiles {
        NativeFiles {
            dir,
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
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "removing an evicted layer's files");
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
        if !fetcher.is_complete() {
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
        let file = std::fs::File::open(self.dir.join(ino.to_string())).ok()?;
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
