//! Errors of the scheduler library. Every error that comes from bad input
//! names the thing that was wrong, so the HTTP layer can answer 400/404 with
//! a body that tells the caller which field to fix.

/// A value in some input (a report, a function spec, a policy, a trace) that
/// failed validation. `field` is a path such as `images[3].chunks_cached` or
/// `functions[0].policy.utilisation.max`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field inside the input document.
    pub field: String,
    /// What is wrong with it, in words a caller can act on.
    pub message: String,
}

impl FieldError {
    /// Builds a field error from anything printable.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path with the path of the enclosing document, so a
    /// validator of a nested part can report a full path.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Why a scheduler operation (place, route, complete, report) failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The input was malformed or out of range.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The request named a function nobody registered.
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    /// The request named an invocation that is not running (finished,
    /// timed out, or lost with its node).
    #[error("unknown invocation {0}")]
    UnknownInvocation(u64),
    /// The invocation failed: its instance was stopped under it (killed
    /// at a timeout, or lost with its node).
    #[error("invocation {invocation} failed: its instance was stopped ({reason:?})")]
    InvocationFailed {
        /// The invocation.
        invocation: u64,
        /// Why its instance was stopped.
        reason: super::report::StopReason,
        /// The invocation was itself past its deadline when its instance
        /// was killed for a timeout: it is the one that timed out (its
        /// caller is owed a timeout, not a failure caused by another).
        overdue: bool,
    },
    /// No live node has the free capacity the instance needs.
    #[error("no node has {cpu_millis} mCPU and {memory_mib} MiB free for image {image:?}")]
    NoCapacity {
        /// The image the instance would run.
        image: String,
        /// CPU the instance needs, in millicores.
        cpu_millis: u32,
        /// Memory the instance needs, in MiB.
        memory_mib: u32,
    },
}

impl SchedulerError {
    /// The request field the error is about, for the JSON error body.
    pub fn field(&self) -> Option<&str> {
        match self {
            SchedulerError::Invalid(err) => Some(&err.field),
            SchedulerError::UnknownFunction(_) => Some("function"),
            SchedulerError::UnknownInvocation(_) | SchedulerError::InvocationFailed { .. } => {
                Some("invocation_id")
            }
            SchedulerError::NoCapacity { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_builds_nested_paths() {
        let err = FieldError::new("max", "must be at least min").within("utilisation");
        assert_eq!(err.field, "utilisation.max");
        let err = FieldError::new("[2].cron", "bad").within("windows");
        assert_eq!(err.field, "windows[2].cron");
        assert_eq!(err.to_string(), "windows[2].cron: bad");
    }
}
