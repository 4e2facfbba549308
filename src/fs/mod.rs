//! Serving converted layers as a read-only filesystem over FUSE: the inode
//! tree built from TOCs, the FUSE request handlers, and mounting.

mod fuse;
mod mount;
pub mod takeover;
pub mod tree;

pub use fuse::LociFs;
pub use mount::{mount, serve, Connection, MountError, MountFlags};
