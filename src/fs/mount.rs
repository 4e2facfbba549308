//! Mounting opened layers over FUSE: a new mount, or serving a connection
//! mounted earlier (see [`super::takeover`]).

use super::fuse::LociFs;
use super::takeover;
use super::tree::{Tree, TreeError, View};
use super::ReadRecorder;
use crate::fetch::{Fetcher, LayerError, OpenedImage};
use crate::format::Toc;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// Why an image could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Reading the image or a layer's TOC failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The layers do not form a consistent tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The kernel refused the mount.
    #[error("mounting at {dir}")]
    Mount {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A FUSE connection could not be served.
    #[error("serving a FUSE connection")]
    Serve(#[source] std::io::Error),
}

/// What a mount lets the image's files do on the host. An image's setuid
/// bits and device nodes are its author's: a plain mount ignores them and
/// is readable by root alone, unless asked otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// Honour setuid and setgid bits (`suid`; else `nosuid`).
    pub suid: bool,
    /// Honour device nodes (`dev`; else `nodev`).
    pub dev: bool,
    /// Let users other than the mounting one in (`allow_other`).
    pub allow_other: bool,
}

impl MountFlags {
    /// As a container's root needs them: setuid programs, device nodes
    /// and every user of the container (as the snapshotter mounts layers).
    pub const CONTAINER_ROOT: MountFlags = MountFlags {
        suid: true,
        dev: true,
        allow_other: true,
    };
}

/// Mounts `image` read-only at `dir` in `view`, served by `threads` FUSE
/// threads, recording a trace of the chunks read when `recorder` is given.
/// The mount lasts as long as the returned session.
#[allow(clippy::too_many_arguments)]
pub fn mount(
    image: &OpenedImage,
    view: View,
    dir: &Path,
    flags: MountFlags,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    threads: usize,
    recorder: Option<Arc<dyn ReadRecorder>>,
) -> Result<fuser::BackgroundSession, MountError> {
    let fs = filesystem(image, view, fetcher, runtime, recorder)?;
    tracing::info!(dir = %dir.display(), layers = image.tocs.len(), "mounting");
    let mut config = fuse_config(threads);
    config.mount_options = vec![
        fuser::MountOption::FSName("loci".into()),
        fuser::MountOption::Subtype("loci".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Exec,
        if flags.suid {
            fuser::MountOption::Suid
        } else {
            fuser::MountOption::NoSuid
        },
        if flags.dev {
            fuser::MountOption::Dev
        } else {
            fuser::MountOption::NoDev
        },
    ];
    // fuse_config lets everyone in (a container's users); a plain mount
    // is its owner's (root's) alone unless asked.
    config.acl = if flags.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fuser::spawn_mount(fs, dir, &config).map_err(|source| MountError::Mount {
        dir: dir.to_path_buf(),
        source,
    })
}

/// A FUSE connection to serve `image` on, made by
/// [`takeover::mount_fuse`](super::takeover::mount_fuse).
pub enum Connection {
    /// Just mounted: the kernel's INIT is waiting.
    New(OwnedFd),
    /// Taken over from an earlier process that served it.
    Resumed(OwnedFd),
}

/// How a served connection's requests are answered, besides the image.
pub struct Serving {
    /// FUSE threads.
    pub threads: usize,
    /// Where reads are recorded (a start being traced), if anywhere.
    pub recorder: Option<Arc<dyn ReadRecorder>>,
    /// Once the layer is complete, opens of its files go by passthrough to
    /// the ordinary files this writes out (new connections only).
    pub native: Option<Arc<super::NativeFiles>>,
}

/// Serves `image` in `view` on a connection the caller mounted (and so
/// unmounts), as `serving` says. Unlike [`mount`], the session never
/// unmounts by itself, so the mount outlives this process when another
/// holds the connection's fd.
pub fn serve(
    image: &OpenedImage,
    view: View,
    connection: Connection,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    serving: Serving,
) -> Result<fuser::BackgroundSession, MountError> {
    let Serving {
        threads,
        recorder,
        native,
    } = serving;
    // A resumed connection's inodes may have opens through the page cache
    // this process did not see, which would make the kernel refuse a
    // passthrough open of them: its reads stay with the daemon.
    let native = match connection {
        Connection::New(_) => native,
        Connection::Resumed(_) => None,
    };
    let fs = filesystem(image, view, fetcher, runtime, recorder)?.with_native(native);
    let mut config = fuse_config(threads);
    // Every thread reads the connection's own fd, never a clone: requests a
    // clone had read when the process died would be failed by the kernel
    // (ECONNABORTED) as the clone closed, instead of being kept for the
    // next process to have resent.
    config.clone_fd = false;
    let served = match connection {
        Connection::New(fd) => takeover::serve_new(fs, fd, config),
        Connection::Resumed(fd) => takeover::serve_resumed(fs, fd, config),
    };
    served.map_err(MountError::Serve)
}

fn filesystem(
    image: &OpenedImage,
    view: View,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    recorder: Option<Arc<dyn ReadRecorder>>,
) -> Result<LociFs, MountError> {
    let tocs: Vec<&Toc> = image.tocs.iter().collect();
    let tree = Tree::build(&tocs, view)?;
    tracing::debug!(layers = tocs.len(), inodes = tree.len(), "tree built");
    Ok(LociFs::new(
        Arc::new(tree),
        image.layers.clone(),
        fetcher,
        runtime,
        recorder,
    ))
}

fn fuse_config(threads: usize) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    config
}
