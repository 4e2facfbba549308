//! Progress of long operations: a bar on a terminal (indicatif), structured
//! log events (tracing) otherwise, from the same calls.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The set of bars of one command.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Bars when stderr is a terminal; log events only otherwise.
    pub fn new() -> Progress {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi }
    }

    /// A task measured in bytes, `total` when known (0 if not).
    pub fn bytes(&self, name: &str, total: u64) -> Task {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
                )
                .expect("template is valid"),
            );
            bar.set_message(name.to_string());
            bar
        });
        tracing::info!(task = name, total_bytes = total, "started");
        Task {
            bar,
            name: name.to_string(),
            started: Instant::now(),
            done: AtomicU64::new(0),
        }
    }
}

/// One operation's progress.
pub struct Task {
    bar: Option<ProgressBar>,
    name: String,
    started: Instant,
    done: AtomicU64,
}

impl Task {
    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Sets the bytes done so far.
    pub fn set(&self, n: u64) {
        self.done.store(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    /// Ends the task, logging how much was done and how fast.
    pub fn finish(&self, outcome: &str) {
        let bytes = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {outcome}", self.name));
            bar.finish();
        }
        tracing::info!(
            task = %self.name,
            outcome,
            bytes,
            secs = format!("{secs:.2}"),
            mb_per_s = format!("{:.1}", bytes as f64 / 1e6 / secs.max(1e-9)),
            "finished"
        );
    }
}
