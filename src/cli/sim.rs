//! `loci sim`: compares reservation policies and placement on a trace.

use crate::sim::azure::{read_days, AzureDay};
use crate::sim::costs::{ColdMode, StartCosts};
use crate::sim::engine::ClusterParams;
use crate::sim::generate::{generate, GeneratorParams};
use crate::sim::sizing::PolicyKind;
use crate::sim::sweep::{sweep, SweepPlan, SweepRow, DEFAULT_KEEP_ALIVE_SWEEP_MIN};
use crate::sim::trace::Trace;
use anyhow::Context;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

/// Replay (or generate) an invocation trace over a simulated cluster and
/// report, per reservation policy, with and without cache-aware placement:
/// cold starts, start latency percentiles, instance-seconds, throughput.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace CSV to replay (timestamp_ms,function,duration_ms[,image]).
    #[arg(
        long,
        required_unless_present_any = ["generate", "azure"],
        conflicts_with_all = ["generate", "azure"]
    )]
    trace: Option<PathBuf>,
    /// Replay the public Azure Functions 2019 trace from this directory
    /// (`invocations_per_function_md.anon.dNN.csv`, and
    /// `function_durations_percentiles.anon.dNN.csv` where present).
    #[arg(long, conflicts_with = "generate")]
    azure: Option<PathBuf>,
    /// Days of the Azure trace to replay, from d01.
    #[arg(long, default_value_t = 2, requires = "azure")]
    azure_days: u32,
    /// Most invocations the Azure trace may expand to.
    #[arg(long, default_value_t = 50_000_000, requires = "azure")]
    azure_max_invocations: u64,
    /// Generate a synthetic Azure-Functions-shaped trace instead.
    #[arg(long)]
    generate: bool,
    /// Generator seed (with `--azure`: the seed of execution-time draws).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Invocations to generate.
    #[arg(long, default_value_t = 1_000_000, requires = "generate")]
    invocations: u64,
    /// Functions to generate (one image each).
    #[arg(long, default_value_t = 500, requires = "generate")]
    functions: u32,
    /// Hours the generated trace spans.
    #[arg(long, default_value_t = 48, requires = "generate")]
    hours: u32,
    /// Hours at the start of the trace that policies are sized from
    /// (fixed, scheduled and hybrid from its load) and that are replayed
    /// as warm-up (the histogram policy learns from them online); only the
    /// rest is measured. 0 sizes them on the measured trace itself: an
    /// oracle no platform has.
    #[arg(long, default_value_t = 24)]
    train_hours: u32,
    /// Also write the generated trace to this CSV file.
    #[arg(long, requires = "generate")]
    write_trace: Option<PathBuf>,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 200)]
    nodes: u32,
    /// Images each node's cache holds.
    #[arg(long, default_value_t = 24)]
    cache_images: usize,
    /// Idle seconds before an on-demand instance is retired.
    #[arg(long, default_value_t = 600)]
    keep_alive_s: u64,
    /// `loci bench` JSON with per-image start times (else built-in defaults).
    #[arg(long)]
    costs: Option<PathBuf>,
    /// What a start with nothing cached costs: a full pull or loci's lazy start.
    #[arg(long, value_enum, default_value_t = ColdMode::Lazy)]
    cold: ColdMode,
    /// Policies to compare (`keep-alive` is the baseline: no reservation).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [PolicyKind::KeepAlive, PolicyKind::Fixed, PolicyKind::Scheduled, PolicyKind::Utilisation, PolicyKind::Hybrid, PolicyKind::Histogram])]
    policies: Vec<PolicyKind>,
    /// Run the keep-alive baseline once per keep-alive in this list
    /// (minutes, e.g. 5,10,20,30,60,120,240) instead of `--keep-alive-s`.
    #[arg(long, value_delimiter = ',')]
    keep_alive_sweep_min: Vec<u64>,
    /// Sweep the keep-alive baseline over 5, 10, 20, 30, 60, 120 and 240
    /// minutes (unless `--keep-alive-sweep-min` says otherwise).
    #[arg(long)]
    sweep: bool,
    /// Draw the Pareto plot to this PNG: 75th-percentile function
    /// cold-start % against wasted memory (idle GB-s) normalised to the
    /// 10-minute keep-alive, per policy, with and without cache-aware
    /// placement.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON row per policy and placement instead of a table.
    #[arg(long)]
    json: bool,
}

/// Loads or generates the trace, runs every policy with and without
/// cache-aware placement, prints the results.
pub fn run(args: Args) -> anyhow::Result<()> {
    let trace = load_trace(&args)?;
    let costs = match &args.costs {
        Some(path) => {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            StartCosts::from_bench_json(&json, args.cold)
                .with_context(|| format!("costs file {}", path.display()))?
        }
        None => StartCosts::defaults(args.cold),
    };
    let params = ClusterParams {
        nodes: args.nodes,
        cache_images: args.cache_images,
        keep_alive_s: args.keep_alive_s,
        ..ClusterParams::default()
    };
    tracing::info!(
        invocations = trace.invocations.len(),
        functions = trace.functions.len(),
        nodes = params.nodes,
        measured_images = costs.measured_images(),
        "simulating"
    );
    let measure_from_ms = measure_from(&trace, args.train_hours)?;
    let sweep_min = match (&args.keep_alive_sweep_min[..], args.sweep) {
        ([], true) => DEFAULT_KEEP_ALIVE_SWEEP_MIN.to_vec(),
        (list, _) => list.to_vec(),
    };
    let mut policies = Vec::new();
    for &p in &args.policies {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let plan = SweepPlan {
        policies,
        keep_alives_s: sweep_min.iter().map(|m| m * 60).collect(),
    };
    let rows = sweep(&trace, measure_from_ms, &costs, &params, &plan).context("simulating")?;
    if let Some(path) = &args.plot {
        crate::sim::plot::pareto(&rows, path)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &rows)?;
    }
    Ok(())
}

/// Where the measured part of the trace starts, ms (0: everywhere).
fn measure_from(trace: &Trace, train_hours: u32) -> anyhow::Result<u64> {
    if train_hours == 0 {
        tracing::warn!("--train-hours 0: policies are sized on the trace they are judged on");
        return Ok(0);
    }
    let cut = u64::from(train_hours) * 3_600_000;
    anyhow::ensure!(
        trace.span_ms() > cut,
        "the trace spans {:.1} h, not more than the {train_hours} h of history (--train-hours)",
        trace.span_ms() as f64 / 3_600_000.0
    );
    Ok(cut)
}

fn load_trace(args: &Args) -> anyhow::Result<Trace> {
    if let Some(dir) = &args.azure {
        let mut days = Vec::new();
        for d in 1..=args.azure_days {
            let open = |name: String| -> anyhow::Result<Option<BufReader<std::fs::File>>> {
                let path = dir.join(&name);
                match std::fs::File::open(&path) {
                    Ok(f) => Ok(Some(BufReader::new(f))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
                }
            };
            let name = format!("invocations_per_function_md.anon.d{d:02}.csv");
            let invocations =
                open(name.clone())?.with_context(|| format!("{} has no {name}", dir.display()))?;
            let durations = open(format!("function_durations_percentiles.anon.d{d:02}.csv"))?;
            days.push(AzureDay {
                name,
                invocations,
                durations,
            });
        }
        return read_days(days, args.seed, args.azure_max_invocations)
            .with_context(|| format!("Azure trace in {}", dir.display()));
    }
    if let Some(path) = &args.trace {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        return Trace::read_csv(BufReader::new(file))
            .with_context(|| format!("trace {}", path.display()));
    }
    let params = GeneratorParams {
        seed: args.seed,
        invocations: args.invocations,
        functions: args.functions,
        hours: args.hours,
    };
    let trace = generate(params).context("generating a trace")?;
    if let Some(path) = &args.write_trace {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        trace
            .write_csv(BufWriter::new(file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(trace)
}

fn print_table(out: &mut impl Write, rows: &[SweepRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "| policy | keep-alive s | cache-aware | wasted vs 10-min keep-alive | cold starts | cold % p75 fn | cold % p99 fn | mean cold start ms | p50 ms | p99 ms | p99.9 ms | instance-s | idle instance-s | GB-s | idle GB-s | placements | placements/s (scheduler CPU) |"
    )?;
    writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for SweepRow {
        row: r,
        wasted_vs_keep_alive_10min,
    } in rows
    {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            r.policy.name(),
            r.keep_alive_s,
            if r.cache_aware { "yes" } else { "no" },
            wasted_vs_keep_alive_10min.map_or("-".to_string(), |w| format!("{w:.2}")),
            r.cold_starts,
            r.cold_start_pct_p75,
            r.cold_start_pct_p99,
            r.mean_cold_start_ms,
            r.p50_start_ms,
            r.p99_start_ms,
            r.p999_start_ms,
            r.instance_seconds,
            r.idle_instance_seconds,
            r.gb_seconds,
            r.idle_gb_seconds,
            r.placements,
            r.placements_per_s,
        )?;
    }
    Ok(())
}
