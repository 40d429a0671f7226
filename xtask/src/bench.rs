//! `cargo xtask bench`: traced against untraced, side by side in one run.
//!
//! Runs are interleaved (untraced, traced, untraced, ...) so machine noise hits
//! both alike; the workload times itself, so tracer's start-up is not counted.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    setup::GO_VERSIONS,
    shell::{build_tracer, cache_dir, repo_root, run, step, tracer_bin},
};

const ROUNDS: usize = 5;

fn elapsed_ns(stdout: &str) -> Result<f64> {
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("elapsed_ns="))
        .context("workload printed no elapsed_ns")?
        .parse()
        .context("elapsed_ns")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn bench() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
    let bin = cache_dir().join("bench").join(format!("bench-go{newest}"));
    step(&format!("building the bench workload with Go {newest}"));
    run(Command::new(&go)
        .current_dir(repo_root().join("tests/fixtures/bench"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_dir().join("gocache"))
        .args(["build", "-o"])
        .arg(&bin)
        .arg("."))?;
    println!(
        "| workload | ops | untraced ns/op (median of {ROUNDS}) | traced ns/op | traced / untraced |"
    );
    println!("|---|---|---|---|---|");
    for (mode, n) in [("uncontended", "5000000"), ("contended", "2000000")] {
        let (mut plain, mut traced) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            let out = Command::new(&bin).args(["-mode", mode, "-n", n]).output()?;
            if !out.status.success() {
                bail!("workload failed");
            }
            plain.push(elapsed_ns(&String::from_utf8_lossy(&out.stdout))?);
            let out = Command::new(tracer_bin())
                .args(["run", "--"])
                .arg(&bin)
                .args(["-mode", mode, "-n", n])
                .output()?;
            if !out.status.success() {
                bail!(
                    "traced workload failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            traced.push(elapsed_ns(&String::from_utf8_lossy(&out.stdout))?);
        }
        let ops: f64 = n.parse()?;
        let (p, t) = (median(plain), median(traced));
        println!(
            "| {mode} | {n} | {:.1} | {:.1} | {:.3} |",
            p / ops,
            t / ops,
            t / p
        );
    }
    crate::bench_analysis::bench_analysis()?;
    Ok(())
}
