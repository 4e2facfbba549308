//! Reading the public Azure Functions 2019 trace (AzurePublicDataset,
//! "Serverless in the Wild") into a [`Trace`], so a user who has the data
//! can replay it.
//!
//! The dataset has, per day `dNN`, `invocations_per_function_md.anon.dNN.csv`
//! (`HashOwner,HashApp,HashFunction,Trigger,1..1440`: invocations of each
//! function in each minute) and `function_durations_percentiles.anon.dNN.csv`
//! (`HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,`
//! `percentile_Average_0,_1,_25,_50,_75,_99,_100`: execution time in ms).
//! A minute's invocations are spread evenly over the minute; each one's
//! execution time is drawn (seeded) from its function's percentiles of that
//! day, interpolated linearly, or the median of the day's functions'
//! medians where the function has none. A function is `owner/app/function`; its image is its
//! application (`owner/app`), the unit Azure deploys and keeps warm.
//! Memory is not read: instances get the simulator's drawn sizes.
//!
//! The files come from outside: every line is bounded and checked, and the
//! whole expansion is capped at `max_invocations` before it is allocated.

use super::trace::{Invocation, Trace, TraceFunction};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::{BufRead, Read};

/// Longest line read (1440 counts of a busy function fit well within).
const MAX_LINE_BYTES: usize = 64 << 10;
const MINUTES: usize = 1440;
const DAY_MS: u64 = 86_400_000;

/// Why the dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// Reading failed.
    #[error("reading {file}: {source}")]
    Io {
        /// Which file.
        file: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file} line {line}: {message}")]
    Line {
        /// Which file.
        file: String,
        /// Line number, from 1 (the header).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The days hold more invocations than allowed.
    #[error("more than {max} invocations: replay fewer days or raise the limit")]
    TooMany {
        /// The limit.
        max: u64,
    },
    /// No invocation at all.
    #[error("the dataset has no invocations")]
    Empty,
}

/// One day of the dataset, as readers of its two files.
pub struct AzureDay<I, D> {
    /// Name for messages (e.g. the file name).
    pub name: String,
    /// The invocations-per-minute file.
    pub invocations: I,
    /// The durations file, if present.
    pub durations: Option<D>,
}

/// Execution-time percentiles of one function on one day, ms:
/// (percentile, value) ascending.
type Percentiles = Vec<(f64, f64)>;

const DURATION_PERCENTILES: [f64; 7] = [0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 100.0];

/// Reads consecutive days (the first at time 0) into one trace. `seed`
/// drives the execution-time draws.
pub fn read_days<I: BufRead, D: BufRead>(
    days: Vec<AzureDay<I, D>>,
    seed: u64,
    max_invocations: u64,
) -> Result<Trace, AzureError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut trace = Trace::default();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut total = 0u64;
    for (day, input) in days.into_iter().enumerate() {
        let durations = match input.durations {
            Some(d) => read_durations(d, &format!("{} (durations)", input.name))?,
            None => HashMap::new(),
        };
        let mut medians: Vec<f64> = durations
            .values()
            .filter_map(|p| p.iter().find(|(q, _)| *q == 50.0).map(|(_, v)| *v))
            .collect();
        medians.sort_by(f64::total_cmp);
        let day_median = medians.get(medians.len() / 2).copied().unwrap_or(1000.0);
        let day_start = day as u64 * DAY_MS;
        let file = input.name.clone();
        for_each_row(input.invocations, &file, 4 + MINUTES, |line, cols| {
            let key = format!("{}/{}/{}", cols[0], cols[1], cols[2]);
            let counts = cols[4..]
                .iter()
                .map(|c| {
                    c.parse::<u64>().map_err(|_| AzureError::Line {
                        file: file.clone(),
                        line,
                        message: format!("count {c:?} is not a whole number"),
                    })
                })
                .collect::<Result<Vec<u64>, _>>()?;
            let sum = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c));
            total = sum
                .and_then(|s| total.checked_add(s))
                .filter(|&t| t <= max_invocations)
                .ok_or(AzureError::TooMany {
                    max: max_invocations,
                })?;
            if sum == Some(0) {
                return Ok(());
            }
            let function = *index.entry(key.clone()).or_insert_with(|| {
                trace.functions.push(TraceFunction {
                    name: key.clone(),
                    image: format!("{}/{}", cols[0], cols[1]),
                });
                trace.functions.len() as u32 - 1
            });
            let percentiles = durations.get(&key);
            for (minute, &n) in counts.iter().enumerate() {
                for k in 0..n {
                    // In u128: `n` is the file's word, bounded only by the cap.
                    let offset = ((u128::from(k) * 60_000 + 30_000) / u128::from(n)) as u64;
                    let u: f64 = rng.random_range(0.0..100.0);
                    let ms = percentiles.map_or(day_median, |p| interpolate(p, u));
                    trace.invocations.push(Invocation {
                        timestamp_ms: day_start + minute as u64 * 60_000 + offset,
                        function,
                        duration_ms: ms.clamp(0.0, f64::from(u32::MAX)) as u32,
                    });
                }
            }
            Ok(())
        })?;
    }
    if trace.invocations.is_empty() {
        return Err(AzureError::Empty);
    }
    trace
        .invocations
        .sort_by_key(|i| (i.timestamp_ms, i.function));
    Ok(trace)
}

/// The value at percentile `u` of ascending (percentile, value) points.
fn interpolate(points: &[(f64, f64)], u: f64) -> f64 {
    for w in points.windows(2) {
        let ((p0, v0), (p1, v1)) = (w[0], w[1]);
        if u <= p1 {
            let t = if p1 > p0 { (u - p0) / (p1 - p0) } else { 0.0 };
            return v0 + t * (v1 - v0);
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

fn read_durations(
    input: impl BufRead,
    file: &str,
) -> Result<HashMap<String, Percentiles>, AzureError> {
    let mut out = HashMap::new();
    for_each_row(input, file, 7 + DURATION_PERCENTILES.len(), |line, cols| {
        let mut points = Vec::with_capacity(DURATION_PERCENTILES.len());
        for (&p, c) in DURATION_PERCENTILES.iter().zip(&cols[7..]) {
            let v: f64 = c
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| AzureError::Line {
                    file: file.to_string(),
                    line,
                    message: format!("duration {c:?} is not a non-negative number"),
                })?;
            points.push((p, v));
        }
        if points.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(AzureError::Line {
                file: file.to_string(),
                line,
                message: "duration percentiles decrease".into(),
            });
        }
        out.insert(format!("{}/{}/{}", cols[0], cols[1], cols[2]), points);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `row(line_number, columns)` for each data line, after checking
/// the header has `columns` columns starting `HashOwner,HashApp,HashFunction`
/// and each line as many, every line bounded in length.
fn for_each_row(
    mut input: impl BufRead,
    file: &str,
    columns: usize,
    mut row: impl FnMut(usize, &[&str]) -> Result<(), AzureError>,
) -> Result<(), AzureError> {
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut header_seen = false;
    let line_err = |line, message: String| AzureError::Line {
        file: file.to_string(),
        line,
        message,
    };
    loop {
        buf.clear();
        let n = input
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| AzureError::Io {
                file: file.to_string(),
                source,
            })?;
        if n == 0 {
            return if header_seen {
                Ok(())
            } else {
                Err(line_err(line_no.max(1), "no header".into()))
            };
        }
        line_no += 1;
        if buf.len() > MAX_LINE_BYTES {
            return Err(line_err(
                line_no,
                format!("longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| line_err(line_no, "not UTF-8".into()))?
            .trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        let cols: Vec<&str> = text.split(',').collect();
        if cols.len() != columns {
            return Err(line_err(
                line_no,
                format!("{} columns, expected {columns}", cols.len()),
            ));
        }
        if !header_seen {
            if cols[..3] != ["HashOwner", "HashApp", "HashFunction"] {
                return Err(line_err(
                    line_no,
                    format!("unexpected header starting {:?}", &cols[..3]),
                ));
            }
            header_seen = true;
            continue;
        }
        if cols[..3].iter().any(|c| c.is_empty()) {
            return Err(line_err(line_no, "empty owner, app or function".into()));
        }
        row(line_no, &cols)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header() -> String {
        let minutes: Vec<String> = (1..=1440).map(|m| m.to_string()).collect();
        format!(
            "HashOwner,HashApp,HashFunction,Trigger,{}\n",
            minutes.join(",")
        )
    }

    fn row(owner: &str, app: &str, f: &str, counts: &[(usize, u64)]) -> String {
        let mut c = vec!["0".to_string(); 1440];
        for &(minute, n) in counts {
            c[minute] = n.to_string();
        }
        format!("{owner},{app},{f},http,{}\n", c.join(","))
    }

    const DURATIONS: &str = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\n\
o,a,f,100,3,10,300,10,10,50,100,150,290,300\n";

    fn day(
        invocations: String,
        durations: Option<&str>,
    ) -> AzureDay<Cursor<Vec<u8>>, Cursor<Vec<u8>>> {
        AzureDay {
            name: "d01".into(),
            invocations: Cursor::new(invocations.into_bytes()),
            durations: durations.map(|d| Cursor::new(d.as_bytes().to_vec())),
        }
    }

    #[test]
    fn minutes_become_invocations_with_durations_from_the_percentiles() {
        let first = format!(
            "{}{}{}",
            header(),
            row("o", "a", "f", &[(0, 2), (1439, 1)]),
            row("o", "a", "g", &[(10, 1)])
        );
        let second = format!("{}{}", header(), row("o", "a", "f", &[(0, 1)]));
        let trace =
            read_days(vec![day(first, Some(DURATIONS)), day(second, None)], 7, 100).unwrap();
        assert_eq!(trace.functions.len(), 2);
        assert_eq!(trace.functions[0].name, "o/a/f");
        assert_eq!(
            trace.functions[0].image, "o/a",
            "an app's functions share its image"
        );
        let times: Vec<u64> = trace.invocations.iter().map(|i| i.timestamp_ms).collect();
        assert_eq!(
            times,
            vec![
                15_000,
                45_000,
                630_000,
                1439 * 60_000 + 30_000,
                DAY_MS + 30_000
            ]
        );
        for i in trace
            .invocations
            .iter()
            .filter(|i| i.timestamp_ms < DAY_MS && i.function == 0)
        {
            assert!((10..=300).contains(&i.duration_ms), "{i:?}");
        }
        // g has no durations of its own: the day's median (f's, 100 ms).
        assert_eq!(trace.invocations[2].duration_ms, 100);
        // Day 2 has no durations file at all: 1 s.
        assert_eq!(trace.invocations[4].duration_ms, 1000);
    }

    #[test]
    fn bad_input_is_refused_with_its_place() {
        let too_many = format!("{}{}", header(), row("o", "a", "f", &[(0, 60)]));
        assert!(matches!(
            read_days(vec![day(too_many, None)], 1, 50),
            Err(AzureError::TooMany { max: 50 })
        ));
        let huge = format!(
            "{}{}",
            header(),
            row("o", "a", "f", &[(0, u64::MAX), (1, u64::MAX)])
        );
        assert!(matches!(
            read_days(vec![day(huge, None)], 1, u64::MAX),
            Err(AzureError::TooMany { .. })
        ));
        let short = format!("{}o,a,f,http,1,2\n", header());
        let err = read_days(vec![day(short, None)], 1, 50).unwrap_err();
        assert!(err.to_string().contains("line 2: 6 columns"), "{err}");
        let bad_count = header() + &row("o", "a", "f", &[]).replace(",0,", ",-1,");
        let err = read_days(vec![day(bad_count, None)], 1, 50).unwrap_err();
        assert!(err.to_string().contains("not a whole number"), "{err}");
        let wrong_header = format!("a,b,c,d,{}\n", vec!["x"; 1440].join(","));
        assert!(read_days(vec![day(wrong_header, None)], 1, 50).is_err());
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let err = read_days(vec![day(long, None)], 1, 50).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let bad_durations = DURATIONS.replace("290,300", "290,5");
        let ok_row = format!("{}{}", header(), row("o", "a", "f", &[(0, 1)]));
        let err = read_days(vec![day(ok_row, Some(&bad_durations))], 1, 50).unwrap_err();
        assert!(err.to_string().contains("decrease"), "{err}");
        let blank_first = format!("\n{}", header());
        let err = read_days(vec![day(blank_first, None)], 1, 50).unwrap_err();
        assert!(
            matches!(err, AzureError::Empty),
            "a header after a blank line is still the header: {err}"
        );
        let err = read_days(vec![day("\n\n".into(), None)], 1, 50).unwrap_err();
        assert!(err.to_string().contains("no header"), "{err}");
        let empty = format!("{}{}", header(), row("o", "a", "f", &[]));
        assert!(matches!(
            read_days(vec![day(empty, None)], 1, 50),
            Err(AzureError::Empty)
        ));
    }
}
