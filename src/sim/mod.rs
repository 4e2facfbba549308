//! `loci sim`: replays an invocation trace over a simulated cluster to
//! compare reservation policies with and without cache-aware placement.
//! See `docs/scheduler.md` for the trace format and the results.

pub mod azure;
pub mod costs;
pub mod engine;
pub mod generate;
pub mod plot;
pub mod sizing;
pub mod sweep;
pub mod trace;
