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

mod coldstart;
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
        _ => anyhow::bail!("usage: kiln-bench sandbox [RUNS] | coldstart [RUNS]"),
    }
}
