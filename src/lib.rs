//! loci — lazy OCI.

pub mod cli;
