//! Serving converted layers as a read-only filesystem over FUSE.

pub mod tree;
