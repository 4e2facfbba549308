//! Logging setup: tracing to stderr, text or JSON, with fuser's benign
//! complaints kept out of an operator's error stream.

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// fuser warns "Unmount failed" when a session ends on a mount someone
/// already unmounted (`umount DIR`; its own comment calls that not
/// necessarily an error). loci notices that and ends cleanly, so the
/// warning only misleads; a filter that names fuser still gets it.
const QUIET_FUSER_UNMOUNT: &str = "fuser::mnt=error";

/// Installs the process's logger: `filter` in tracing's EnvFilter syntax
/// (an invalid one falls back to `info`), JSON lines if `json`.
pub fn init(filter: &str, json: bool) {
    // (An empty filter shows errors only: nothing to add.)
    let filter = if filter.contains("fuser") || filter.trim().is_empty() {
        filter.to_string()
    } else {
        format!("{filter},{QUIET_FUSER_UNMOUNT}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,{QUIET_FUSER_UNMOUNT}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .finish()
            .with(AbandonedRepliesUnlogged)
            .init();
    } else {
        builder.finish().with(AbandonedRepliesUnlogged).init();
    }
}

/// fuser logs at ERROR every reply the kernel refuses, and the kernel
/// refuses with ENOENT a reply to a request it has already dropped: its
/// caller was interrupted or exited (a JVM thread ending with readahead in
/// flight). Nothing went wrong in loci and nothing can be done, so those
/// lines are dropped; any other refused reply (EINVAL: a malformed reply,
/// a bug) is still logged.
struct AbandonedRepliesUnlogged;

/// fuser's reply module: the `log` target its lines carry through the
/// log-to-tracing bridge (as a `log.target` field: the event's own target
/// is "log").
const FUSER_REPLY_TARGET: &str = "fuser::reply";
/// The target of every line the log-to-tracing bridge passes on.
const LOG_BRIDGE_TARGET: &str = "log";

impl<S: Subscriber> Layer<S> for AbandonedRepliesUnlogged {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        // Only lines from `log` (whose target is a field) or from fuser's
        // reply module are read: every other line passes untouched.
        let own_target = event.metadata().target();
        if own_target != LOG_BRIDGE_TARGET && own_target != FUSER_REPLY_TARGET {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = fields.log_target.as_deref().unwrap_or(own_target);
        !(target == FUSER_REPLY_TARGET && is_abandoned_reply(&fields.message))
    }
}

/// Whether fuser's message is a reply refused because its request is gone.
fn is_abandoned_reply(message: &str) -> bool {
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    message.starts_with("Failed to send FUSE reply") && message.ends_with(&enoent)
}

/// The fields of an event this filter reads.
#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "log.target" => self.log_target = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps the message of every event that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.message);
        }
    }

    fn refused(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn only_replies_to_requests_the_kernel_dropped_go_unlogged() {
        // As `init` does: fuser's `log` lines reach tracing through it.
        let _ = tracing_log::LogTracer::init();
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(AbandonedRepliesUnlogged)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            // What fuser's reply module logs, through `log` as fuser does.
            log::error!(target: "fuser::reply", "Failed to send FUSE reply: {}", refused(libc::ENOENT));
            log::error!(target: "fuser::reply", "Failed to send FUSE reply: {}", refused(libc::EINVAL));
            log::warn!(target: "fuser::reply", "something else");
            // The same words from anywhere else still count.
            log::error!(target: "fuser::mnt", "Failed to send FUSE reply: {}", refused(libc::ENOENT));
            tracing::error!(target: "loci::fs", "reading: {}", refused(libc::ENOENT));
        });
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                format!("Failed to send FUSE reply: {}", refused(libc::EINVAL)),
                "something else".to_string(),
                format!("Failed to send FUSE reply: {}", refused(libc::ENOENT)),
                format!("reading: {}", refused(libc::ENOENT)),
            ]
        );
    }
}
