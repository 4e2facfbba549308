//! The FUSE filesystem: a read-only [`Tree`] whose file content comes from
//! the [`Fetcher`]. Content never changes, so the kernel may cache entries,
//! attributes and pages for long; reads are served by several threads.

use super::tree::{Ino, Node, NodeKind, Tree, ROOT};
use crate::fetch::{Fetcher, RemoteLayer};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// How long the kernel may trust entries and attributes: content is
/// immutable for the life of the mount.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// See [`LociFs::init`].
const MAX_BACKGROUND: u16 = 64;
/// Read-ahead for sequential readers starts here and doubles per
/// sequential read up to MAX_READAHEAD.
const MIN_READAHEAD: u64 = 512 << 10;
const MAX_READAHEAD: u64 = 4 << 20;
const BLOCK: u32 = 4096;
/// The kernel's own read-ahead on this filesystem, which is also how much
/// it reads around a page fault in a mapped file: the most the kernel
/// offers in FUSE_INIT (its default; asking for more is refused). Smaller
/// would record and fetch less around the sparse page faults of a start's
/// mapped libraries (32 KiB took the nginx image's trace-ordered
/// prefetch from 8.5 to 6.2 MB), but cost untraced starts more FUSE
/// round trips: 3.21 against 3.49 s for the python image and 0.74 against
/// 0.83 s for the JVM at the filesystem level on loopback.
pub(crate) const KERNEL_READAHEAD: u32 = 128 << 10;

/// A mounted set of layers.
pub struct LociFs {
    tree: Arc<Tree>,
    layers: Arc<Vec<RemoteLayer>>,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    recorder: Option<Arc<dyn super::ReadRecorder>>,
    /// Per inode: where the next sequential read would start, and the
    /// current read-ahead window.
    sequential: std::sync::Mutex<std::collections::HashMap<Ino, (u64, u64)>>,
    /// Complete layers' files as ordinary files, opened with passthrough.
    native: Option<Arc<super::NativeFiles>>,
    /// Opens of each inode answered without passthrough and not released.
    cached_opens: std::sync::Mutex<std::collections::HashMap<Ino, u32>>,
}

/// The file handle of opens answered with passthrough.
const PASSTHROUGH: FileHandle = FileHandle(1);

impl LociFs {
    /// A filesystem serving `tree`, whose file contents live in `layers`
    /// (indexed as the tree's `Content::layer`); async fetches run on
    /// `runtime`; reads are recorded into `recorder` when there is one.
    pub fn new(
        tree: Arc<Tree>,
        layers: Arc<Vec<RemoteLayer>>,
        fetcher: Arc<Fetcher>,
        runtime: tokio::runtime::Handle,
        recorder: Option<Arc<dyn super::ReadRecorder>>,
    ) -> LociFs {
        LociFs {
            tree,
            layers,
            fetcher,
            runtime,
            recorder,
            sequential: Default::default(),
            native: None,
            cached_opens: Default::default(),
        }
    }

    /// Opens of a complete layer's files are answered with passthrough to
    /// ordinary files `native` keeps, where the kernel has it.
    pub fn with_native(mut self, native: Option<Arc<super::NativeFiles>>) -> LociFs {
        if let Some(native) = &native {
            native.attach(self.tree.clone(), self.layers.clone());
        }
        self.native = native;
        self
    }

    /// The read-ahead for a read of `ino` at `offset..offset+len`: growing
    /// while reads follow each other (near the end of the previous ones:
    /// the kernel sends a sequential reader's requests from several
    /// threads, slightly out of order), none for random access.
    fn readahead(&self, ino: Ino, offset: u64, len: u64) -> u64 {
        let mut seq = self.sequential.lock().unwrap();
        if seq.len() > 4096 {
            seq.clear(); // bounded: an approximate history is enough
        }
        let (next, window) = seq.entry(ino).or_insert((u64::MAX, 0));
        let near = *next != u64::MAX && offset.abs_diff(*next) <= MAX_READAHEAD;
        *window = if near {
            (*window * 2).clamp(MIN_READAHEAD, MAX_READAHEAD)
        } else {
            0
        };
        *next = if near {
            (*next).max(offset + len)
        } else {
            offset + len
        };
        let window = *window;
        drop(seq);
        window
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.tree.get(ino.0).ok_or(Errno::ENOENT)
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn attr(ino: Ino, node: &Node) -> FileAttr {
    let mtime = if node.mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(node.mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(node.mtime.unsigned_abs())
    };
    FileAttr {
        ino: INodeNo(ino),
        size: node.size,
        blocks: node.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(node.kind),
        perm: node.mode as u16,
        nlink: node.nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: node.rdev,
        blksize: BLOCK,
        flags: 0,
    }
}

/// Replies to getxattr/listxattr's two-step size protocol.
fn reply_sized(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

/// Runs a request's handler so that a panic (a bug, never an input: every
/// input was validated when the layer was opened) fails that request with
/// EIO, as dropping its unsent reply does, and leaves the FUSE thread
/// serving the next one, with a log line naming the operation.
fn guarded(op: &'static str, handler: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).is_err() {
        tracing::error!(op, "FUSE handler panicked; the request fails with EIO");
    }
}

impl Filesystem for LociFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(KERNEL_READAHEAD);
        // Readahead requests the kernel keeps in flight at once: more than
        // the default lets a cold start's page faults across many files
        // wait on the registry together instead of in turn.
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS
                | fuser::InitFlags::FUSE_READDIRPLUS_AUTO
                | fuser::InitFlags::FUSE_PARALLEL_DIROPS
                | fuser::InitFlags::FUSE_CACHE_SYMLINKS
                | fuser::InitFlags::FUSE_ASYNC_READ,
        );
        if let Some(native) = &self.native {
            // Depth 1: this filesystem stays usable as an overlayfs lower
            // dir, its backing files on an ordinary filesystem.
            let passthrough = config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
                && config.set_max_stack_depth(1).is_ok();
            native.set_enabled(passthrough);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", move || {
            match self.tree.lookup(parent.0, name.as_bytes()) {
                Some(ino) => reply.entry(
                    &TTL,
                    &attr(ino, self.tree.get(ino).expect("child exists")),
                    Generation(0),
                ),
                None => reply.error(Errno::ENOENT),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", move || match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &attr(ino.0, node)),
            Err(e) => reply.error(e),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", move || {
            match self.node(ino).map(|n| n.link.as_deref()) {
                Ok(Some(target)) => reply.data(target),
                Ok(None) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", move || {
            if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
                return reply.error(Errno::EROFS);
            }
            match self.node(ino) {
                Ok(node) if node.kind == NodeKind::Dir => reply.error(Errno::EISDIR),
                Ok(node) => {
                    // The kernel refuses a passthrough open of an inode
                    // that has opens through the page cache (a binary a
                    // container started before its layer was complete):
                    // such an inode stays on the daemon's path until its
                    // last such open is released.
                    let mut cached = self.cached_opens.lock().unwrap_or_else(|e| e.into_inner());
                    let open_cached = cached.get(&ino.0).copied().unwrap_or(0);
                    let backing = match (&self.native, open_cached) {
                        (Some(native), 0) => node.content.as_ref().and_then(|content| {
                            let layer = &self.layers[content.layer];
                            native.backing_for(ino.0, layer, &self.fetcher, &reply)
                        }),
                        _ => None,
                    };
                    match backing {
                        Some(id) => {
                            drop(cached);
                            // The kernel takes no other open flag with passthrough
                            // (FOPEN_KEEP_CACHE included): the page cache is
                            // the backing file's.
                            reply.opened_passthrough(PASSTHROUGH, FopenFlags::empty(), &id)
                        }
                        None => {
                            *cached.entry(ino.0).or_insert(0) += 1;
                            drop(cached);
                            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
                        }
                    }
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", move || {
            let node = match self.node(ino) {
                Ok(node) => node,
                Err(e) => return reply.error(e),
            };
            let Some(content) = &node.content else {
                return reply.data(&[]);
            };
            if offset >= node.size {
                return reply.data(&[]);
            }
            let len = u64::from(size).min(node.size - offset);
            let layer = &self.layers[content.layer];
            if let Some(recorder) = &self.recorder {
                let chunks: Vec<_> = content
                    .chunks_in(offset, offset + len)
                    .into_iter()
                    .map(|c| (c, layer.chunks[c as usize].digest))
                    .collect();
                recorder.record(
                    content.layer,
                    ino.0,
                    offset..offset + len,
                    &chunks,
                    &mut || String::from_utf8_lossy(&self.tree.path_of(ino.0)).into_owned(),
                );
            }
            let readahead = self.readahead(ino.0, offset, len);
            match self.runtime.block_on(
                self.fetcher
                    .read_file(layer, content, offset, len, readahead),
            ) {
                Ok(data) => reply.data(&data),
                Err(_) => reply.error(Errno::EIO), // logged by the fetcher, naming the chunk
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok(); // nothing is ever written
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        guarded("release", move || {
            if fh != PASSTHROUGH {
                let mut cached = self.cached_opens.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(count) = cached.get_mut(&ino.0) {
                    *count -= 1;
                    if *count == 0 {
                        cached.remove(&ino.0);
                    }
                }
            }
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(node) if node.kind == NodeKind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", move || {
            let node = match self.node(ino) {
                Ok(node) => node,
                Err(e) => return reply.error(e),
            };
            for (i, (name, child, kind)) in dir_entries(&self.tree, ino.0, node)
                .enumerate()
                .skip(offset as usize)
            {
                if reply.add(
                    INodeNo(child),
                    i as u64 + 1,
                    file_type(kind),
                    OsStr::from_bytes(name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", move || {
            let node = match self.node(ino) {
                Ok(node) => node,
                Err(e) => return reply.error(e),
            };
            for (i, (name, child, _)) in dir_entries(&self.tree, ino.0, node)
                .enumerate()
                .skip(offset as usize)
            {
                let child_node = self.tree.get(child).expect("entry exists");
                let full = reply.add(
                    INodeNo(child),
                    i as u64 + 1,
                    OsStr::from_bytes(name),
                    &TTL,
                    &attr(child, child_node),
                    Generation(0),
                );
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.len() as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK, 255, BLOCK);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", move || {
            match self.node(ino).map(|n| n.xattrs.get(name.as_bytes())) {
                Ok(Some(value)) => reply_sized(reply, size, value),
                Ok(None) => reply.error(Errno::NO_XATTR),
                Err(e) => reply.error(e),
            }
        });
    }

    /// An image's files have no inode flags and answer no ioctls.
    /// overlayfs asks a lower file for its flags (`FS_IOC_GETFLAGS`) as it
    /// copies the file up, on every container start that writes to one;
    /// ENOTTY is the "none" it expects. fuser's default answers ENOSYS and
    /// logs a warning per call, which filled the snapshotter's log.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", move || match self.node(ino) {
            Ok(node) => {
                let mut names = Vec::new();
                for name in node.xattrs.keys() {
                    names.extend_from_slice(name);
                    names.push(0);
                }
                reply_sized(reply, size, &names);
            }
            Err(e) => reply.error(e),
        });
    }
}

/// A directory's entries with "." and "..", in a stable order (offsets
/// are positions in this list).
fn dir_entries<'a>(
    tree: &'a Tree,
    ino: Ino,
    node: &'a Node,
) -> impl Iterator<Item = (&'a [u8], Ino, NodeKind)> + 'a {
    let dots = [
        (&b"."[..], ino, NodeKind::Dir),
        (
            &b".."[..],
            if ino == ROOT { ROOT } else { node.parent },
            NodeKind::Dir,
        ),
    ];
    dots.into_iter()
        .chain(node.children.iter().map(move |(name, &child)| {
            (
                &name[..],
                child,
                tree.get(child).expect("entry exists").kind,
            )
        }))
}
