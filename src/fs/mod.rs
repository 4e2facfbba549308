//! Serving converted layers as a read-only filesystem over FUSE: the inode
//! tree built from TOCs, the FUSE request handlers, and mounting.

mod fuse;
mod mount;
mod native;
pub mod takeover;
pub mod tree;

pub use fuse::LociFs;
pub use native::NativeFiles;

/// Told of the chunks every read touches, in order, with the file read
/// (its inode, and its path, asked only when needed): what a start trace
/// is recorded from. Implemented by `prefetch::TraceRecorder`; `fs` knows
/// nothing of traces.
pub trait ReadRecorder: Send + Sync {
    /// `chunks` (index and digest) of layer `layer` were read for the
    /// bytes `range` of the file `file` (an inode number of this mount),
    /// which `path()` names.
    fn record(
        &self,
        layer: usize,
        file: u64,
        range: std::ops::Range<u64>,
        chunks: &[(u32, crate::digest::Digest)],
        path: &mut dyn FnMut() -> String,
    );
}
pub use mount::{mount, serve, Connection, MountError, MountFlags, Serving};
