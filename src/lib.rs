//! loci — lazy OCI.

pub mod cli;
pub mod scheduler;
pub mod sim;
