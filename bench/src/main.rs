//! kiln's benchmarks, run side by side against a baseline, with the result
//! written to `bench/results/`.
//!
//! `kiln-bench sandbox [RUNS]`: a cold release build of
//! `examples/add-header` in the bubblewrap sandbox against the same build
//! with no sandbox, alternating, dependencies already vendored. Needs root
//! and `scripts/install-prereqs`.
//!
//! `kiln-bench coldstart [RUNS]`: cold starts of the example filters, the
//! naive path against kiln's precompiled, pooled path.
//!
//! `kiln-bench queue [DEPTH…]`: the API and two workers' claims while the
//! queue holds each depth of builds (default 10, 1 000, 10 000 and
//! 100 000), on SQLite and PostgreSQL, against depth 10. Needs the release
//! `kiln` and `KILN_BENCH_DATABASE_URL`; `scripts/bench queue` gives both.

mod coldstart;
mod queue;
mod sandbox;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("sandbox") => {
            let runs = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(7);
            runtime.block_on(sandbox::run(runs))
        }
        Some("coldstart") => {
            coldstart::run(args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(1000))
        }
        Some("queue") => {
            let depths: Vec<usize> = args[1..]
                .iter()
                .map(|n| n.parse())
                .collect::<Result<_, _>>()?;
            let depths = match depths.is_empty() {
                true => vec![10, 1_000, 10_000, 100_000],
                false => depths,
            };
            runtime.block_on(queue::run(depths))
        }
        _ => anyhow::bail!("usage: kiln-bench sandbox [RUNS] | coldstart [RUNS] | queue [DEPTH…]"),
    }
}
