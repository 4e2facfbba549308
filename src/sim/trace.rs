//! Invocation traces: the CSV the simulator replays and the generator
//! writes.
//!
//! Format: a header line `timestamp_ms,function,duration_ms` or
//! `timestamp_ms,function,duration_ms,image`, then one invocation per line.
//! `timestamp_ms` is milliseconds since the start of the trace (a
//! non-negative integer, non-decreasing from line to line); `duration_ms`
//! the execution time (a non-negative integer);
//! `image` the function's image (defaults to the function name; must be the
//! same on every line of a function). Fields are not quoted, so names must
//! not contain commas.

use std::collections::HashMap;
use std::io::{BufRead, Write};

/// One invocation of the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation {
    /// Milliseconds since the start of the trace.
    pub timestamp_ms: u64,
    /// Index into [`Trace::functions`].
    pub function: u32,
    /// Execution time in milliseconds.
    pub duration_ms: u32,
}

/// A function named by a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFunction {
    /// Function name.
    pub name: String,
    /// Image its instances run.
    pub image: String,
}

/// A whole trace, sorted by time, functions interned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Functions, indexed by [`Invocation::function`].
    pub functions: Vec<TraceFunction>,
    /// Invocations in time order.
    pub invocations: Vec<Invocation>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading failed.
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
    /// A line is malformed; `line` counts from 1 and includes the header.
    #[error("line {line}: {field}: {message}")]
    Line {
        /// Line number.
        line: usize,
        /// Column the problem is in.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The trace has no invocations.
    #[error("the trace has no invocations")]
    Empty,
}

const HEADER: &str = "timestamp_ms,function,duration_ms";
const HEADER_WITH_IMAGE: &str = "timestamp_ms,function,duration_ms,image";

impl Trace {
    /// Time of the last invocation's arrival, ms since the start.
    pub fn span_ms(&self) -> u64 {
        self.invocations.last().map_or(0, |i| i.timestamp_ms)
    }

    /// Reads and validates a CSV trace.
    pub fn read_csv(reader: impl BufRead) -> Result<Trace, TraceError> {
        let mut lines = reader.lines();
        let header = lines.next().transpose()?.unwrap_or_default();
        let with_image = match header.trim() {
            HEADER => false,
            HEADER_WITH_IMAGE => true,
            other => {
                return Err(TraceError::Line {
                    line: 1,
                    field: "header",
                    message: format!("expected {HEADER:?} or {HEADER_WITH_IMAGE:?}, got {other:?}"),
                })
            }
        };
        let mut trace = Trace::default();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut previous = 0u64;
        for (i, line) in lines.enumerate() {
            let line_no = i + 2;
            let line = line?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = |field, message: String| TraceError::Line {
                line: line_no,
                field,
                message,
            };
            let mut cols = line.split(',');
            let (Some(ts), Some(function), Some(duration)) =
                (cols.next(), cols.next(), cols.next())
            else {
                return Err(err(
                    "line",
                    format!("expected at least 3 comma-separated fields, got {line:?}"),
                ));
            };
            let image = if with_image { cols.next() } else { None };
            if with_image && image.is_none() {
                return Err(err("image", "missing".into()));
            }
            if cols.next().is_some() {
                return Err(err("line", format!("too many fields in {line:?}")));
            }
            let ts = parse_non_negative(ts).map_err(|m| err("timestamp_ms", m))?;
            if ts < previous {
                return Err(err(
                    "timestamp_ms",
                    format!("{ts} is earlier than the previous line's {previous}: the trace must be sorted by time"),
                ));
            }
            previous = ts;
            let duration = parse_non_negative(duration).map_err(|m| err("duration_ms", m))?;
            let duration = u32::try_from(duration)
                .map_err(|_| err("duration_ms", format!("{duration} is too large")))?;
            if function.is_empty() {
                return Err(err("function", "must not be empty".into()));
            }
            let image = image.unwrap_or(function);
            let f = match index.get(function) {
                Some(&f) => {
                    let known = &trace.functions[f as usize].image;
                    if known != image {
                        return Err(err(
                            "image",
                            format!(
                                "{image:?} differs from {known:?} given earlier for {function:?}"
                            ),
                        ));
                    }
                    f
                }
                None => {
                    let f = trace.functions.len() as u32;
                    trace.functions.push(TraceFunction {
                        name: function.to_string(),
                        image: image.to_string(),
                    });
                    index.insert(function.to_string(), f);
                    f
                }
            };
            trace.invocations.push(Invocation {
                timestamp_ms: ts,
                function: f,
                duration_ms: duration,
            });
        }
        if trace.invocations.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(trace)
    }

    /// Writes the trace as CSV with the image column.
    pub fn write_csv(&self, mut out: impl Write) -> std::io::Result<()> {
        writeln!(out, "{HEADER_WITH_IMAGE}")?;
        for inv in &self.invocations {
            let f = &self.functions[inv.function as usize];
            writeln!(
                out,
                "{},{},{},{}",
                inv.timestamp_ms, f.name, inv.duration_ms, f.image
            )?;
        }
        out.flush()
    }
}

fn parse_non_negative(text: &str) -> Result<u64, String> {
    let value: i64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an integer"))?;
    u64::try_from(value).map_err(|_| format!("{value} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Trace, TraceError> {
        Trace::read_csv(text.as_bytes())
    }

    #[test]
    fn round_trips_through_csv() {
        let trace = read("timestamp_ms,function,duration_ms\n0,a,10\n5,b,20\n5,a,30\n").unwrap();
        assert_eq!(trace.functions.len(), 2);
        assert_eq!(
            trace.functions[0].image, "a",
            "image defaults to the function name"
        );
        let mut out = Vec::new();
        trace.write_csv(&mut out).unwrap();
        assert_eq!(read(std::str::from_utf8(&out).unwrap()).unwrap(), trace);
    }

    #[test]
    fn unsorted_timestamps_name_the_line() {
        let err = read("timestamp_ms,function,duration_ms\n10,a,1\n9,a,1\n").unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::Line {
                    line: 3,
                    field: "timestamp_ms",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("sorted"), "{err}");
    }

    #[test]
    fn negative_values_are_refused() {
        let err = read("timestamp_ms,function,duration_ms\n-1,a,1\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 2: timestamp_ms: -1 is negative"),
            "{err}"
        );
        let err = read("timestamp_ms,function,duration_ms\n1,a,-4\n").unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::Line {
                    field: "duration_ms",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_headers_and_inconsistent_images_are_refused() {
        assert!(matches!(
            read("time,fn\n"),
            Err(TraceError::Line {
                field: "header",
                ..
            })
        ));
        let err = read("timestamp_ms,function,duration_ms,image\n0,a,1,x\n1,a,1,y\n").unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::Line {
                    line: 3,
                    field: "image",
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            read("timestamp_ms,function,duration_ms\n"),
            Err(TraceError::Empty)
        ));
    }
}
