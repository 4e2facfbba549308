//! Trace-based prefetch: the chunks a real start read, recorded in order,
//! kept with the image in the registry, and fetched in the background on
//! the next cold start ahead of the reads that need them.

mod container;
mod image_traces;
mod lookup;
mod node_recordings;
mod pack;
mod publish;
mod recorder;
mod replay;
#[cfg(test)]
mod test_registry;
mod trace;
mod trace_layout;

pub use container::{ContainerError, ContainerRun, RunOutcome};
pub use image_traces::ImageTraces;
pub use lookup::find_trace;
pub use node_recordings::NodeRecordings;
pub use pack::with_pack;
pub use publish::{fetch_trace, push_raw_trace, push_trace, PublishError, TRACE_ARTIFACT_TYPE};
pub use recorder::TraceRecorder;
pub use replay::{prefetch, PrefetchConfig, PrefetchReport};
pub use trace::{Access, PackFrame, Trace, TraceError, TracePack, TRACE_VERSION};
pub use trace_layout::{
    opened_size, read_orders, read_orders_of, trace_for, trace_for_image, OpenedSize, ReadOrders,
    TraceLayoutError, TracedFile,
};
