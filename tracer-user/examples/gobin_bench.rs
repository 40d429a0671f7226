//! Benchmark of Go binary analysis (`tracer_user::gobin`) on one binary.
//!
//! ```text
//! cargo run --release -p tracer-user --example gobin_bench -- BINARY [--label NAME] [--pcs N] [--runs N] [--header]
//! ```
//!
//! Each run is a fresh child process (peak RSS is per process). A run times
//! `GoBinary::open` + `go_version()` + `probe_targets()` (symbols and RET
//! sites of every probe target), reads peak RSS from `getrusage`, then
//! measures `symbolize` throughput:
//! - distinct: `N` PCs (default 1,000,000) sampled uniformly over the
//!   functions' code (a function uniformly, then a byte in it), far more than
//!   the PC cache holds, so nearly every lookup decodes the pclntab. The first
//!   pass ("cold") and the best of three more passes are reported.
//! - hot: `N` lookups drawn from 10,000 such PCs (think: call sites seen in
//!   contention stacks), after one pass that fills the cache ("cache warm").
//!
//! Over `--runs` runs (default 3) it keeps the fastest time and throughput
//! and the largest RSS, and prints one markdown table row (`--header` prints
//! the header first).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracer_user::gobin::{GoBinary, probe_targets};

/// Timed passes over the PCs after the cold one; the fastest is reported.
const WARM_PASSES: usize = 3;
/// Distinct PCs in the hot set.
const HOT_PCS: usize = 10_000;

struct Args {
    path: PathBuf,
    label: Option<String>,
    pcs: usize,
    runs: usize,
    header: bool,
    child: bool,
}

fn parse_args() -> Result<Args> {
    let mut path = None;
    let mut label = None;
    let mut pcs = 1_000_000;
    let mut runs = 3;
    let mut header = false;
    let mut child = false;
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--label") => {
                label = Some(
                    it.next()
                        .context("--label needs a value")?
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            Some("--pcs") => {
                pcs = it
                    .next()
                    .context("--pcs needs a value")?
                    .to_str()
                    .context("--pcs: not UTF-8")?
                    .parse()
                    .context("--pcs: not a number")?;
            }
            Some("--runs") => {
                runs = it
                    .next()
                    .context("--runs needs a value")?
                    .to_str()
                    .context("--runs: not UTF-8")?
                    .parse()
                    .context("--runs: not a number")?;
            }
            Some("--header") => header = true,
            Some("--child") => child = true,
            Some(s) if s.starts_with("--") => bail!("unknown option {s}"),
            _ if path.is_none() => path = Some(PathBuf::from(a)),
            _ => bail!("more than one binary given"),
        }
    }
    Ok(Args {
        path: path
            .context("usage: gobin_bench BINARY [--label NAME] [--pcs N] [--runs N] [--header]")?,
        label,
        pcs: pcs.max(1),
        runs: runs.max(1),
        header,
        child,
    })
}

/// Peak resident set size of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}

/// Deterministic xorshift64*, so every run samples the same PCs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Symbolizes every PC once; returns the elapsed time, a checksum (frames
/// and line numbers, so the work cannot be optimised away) and how many PCs
/// resolved to at least one frame.
fn pass(bin: &GoBinary, pcs: &[u64]) -> (Duration, u64, usize) {
    let start = Instant::now();
    let mut sum = 0u64;
    let mut resolved = 0;
    for &pc in pcs {
        let frames = bin.symbolize(black_box(pc));
        sum = sum.wrapping_add(frames.len() as u64);
        if let Some(f) = frames.first() {
            sum = sum.wrapping_add(u64::from(f.line));
            resolved += 1;
        }
    }
    (start.elapsed(), black_box(sum), resolved)
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    file_len: u64,
    version: String,
    stripped: bool,
    functions: usize,
    open_ms: f64,
    total_ms: f64,
    found: usize,
    missing: usize,
    rets: usize,
    rss_analysis_kib: u64,
    rss_end_kib: u64,
    resolved_pct: f64,
    cold_per_s: f64,
    distinct_per_s: f64,
    hot_per_s: f64,
    cached_pcs: usize,
}

impl Run {
    fn to_line(&self) -> String {
        format!(
            "file_len={} version={} stripped={} functions={} open_ms={} total_ms={} found={} missing={} rets={} rss_analysis_kib={} rss_end_kib={} resolved_pct={} cold_per_s={} distinct_per_s={} hot_per_s={} cached_pcs={}",
            self.file_len,
            self.version,
            self.stripped,
            self.functions,
            self.open_ms,
            self.total_ms,
            self.found,
            self.missing,
            self.rets,
            self.rss_analysis_kib,
            self.rss_end_kib,
            self.resolved_pct,
            self.cold_per_s,
            self.distinct_per_s,
            self.hot_per_s,
            self.cached_pcs,
        )
    }

    fn from_line(line: &str) -> Result<Run> {
        let mut r = Run::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').context("malformed child output")?;
            let f = || v.parse::<f64>().with_context(|| format!("{k}={v}"));
            let n = || v.parse::<u64>().with_context(|| format!("{k}={v}"));
            let u = || v.parse::<usize>().with_context(|| format!("{k}={v}"));
            match k {
                "file_len" => r.file_len = n()?,
                "version" => r.version = v.to_string(),
                "stripped" => r.stripped = v == "true",
                "functions" => r.functions = u()?,
                "open_ms" => r.open_ms = f()?,
                "total_ms" => r.total_ms = f()?,
                "found" => r.found = u()?,
                "missing" => r.missing = u()?,
                "rets" => r.rets = u()?,
                "rss_analysis_kib" => r.rss_analysis_kib = n()?,
                "rss_end_kib" => r.rss_end_kib = n()?,
                "resolved_pct" => r.resolved_pct = f()?,
                "cold_per_s" => r.cold_per_s = f()?,
                "distinct_per_s" => r.distinct_per_s = f()?,
                "hot_per_s" => r.hot_per_s = f()?,
                "cached_pcs" => r.cached_pcs = u()?,
                _ => {}
            }
        }
        Ok(r)
    }

    /// Fastest time and throughput, largest RSS.
    fn best(mut self, o: &Run) -> Run {
        self.open_ms = self.open_ms.min(o.open_ms);
        self.total_ms = self.total_ms.min(o.total_ms);
        self.rss_analysis_kib = self.rss_analysis_kib.max(o.rss_analysis_kib);
        self.rss_end_kib = self.rss_end_kib.max(o.rss_end_kib);
        self.cold_per_s = self.cold_per_s.max(o.cold_per_s);
        self.distinct_per_s = self.distinct_per_s.max(o.distinct_per_s);
        self.hot_per_s = self.hot_per_s.max(o.hot_per_s);
        self
    }
}

/// One run, in this process.
fn measure(path: &Path, n_pcs: usize) -> Result<Run> {
    let file_len = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();

    // The part the time goal is about: what `tracer` does before attaching.
    let t0 = Instant::now();
    let bin = GoBinary::open(path).with_context(|| format!("analysing {}", path.display()))?;
    let t_open = t0.elapsed();
    let version = bin.go_version();
    let targets = probe_targets(&bin);
    let t_total = t0.elapsed();
    let rss_analysis_kib = peak_rss_kib();

    // PCs: a function uniformly, then a byte inside its code.
    let funcs: Vec<(u64, u64)> = bin
        .functions_with_prefix("")
        .into_iter()
        .filter(|f| f.size > 0)
        .map(|f| (f.entry, f.size))
        .collect();
    if funcs.is_empty() {
        bail!("{}: no functions with a size", path.display());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sample = || {
        let (entry, size) = funcs[rng.below(funcs.len() as u64) as usize];
        entry + rng.below(size)
    };
    let pcs: Vec<u64> = (0..n_pcs).map(|_| sample()).collect();
    let hot_set: Vec<u64> = (0..HOT_PCS).map(|_| sample()).collect();
    let hot: Vec<u64> = (0..n_pcs)
        .map(|_| hot_set[rng.below(HOT_PCS as u64) as usize])
        .collect();
    drop(funcs);

    let (cold, sum_cold, resolved) = pass(&bin, &pcs);
    let mut distinct = Duration::MAX;
    for _ in 0..WARM_PASSES {
        let (d, sum, _) = pass(&bin, &pcs);
        if sum != sum_cold {
            bail!("symbolization is not deterministic ({sum} != {sum_cold})");
        }
        distinct = distinct.min(d);
    }
    pass(&bin, &hot_set);
    let mut hot_time = Duration::MAX;
    for _ in 0..WARM_PASSES {
        hot_time = hot_time.min(pass(&bin, &hot).0);
    }

    Ok(Run {
        file_len,
        version: version.to_string(),
        stripped: bin.is_stripped(),
        functions: bin.function_count(),
        open_ms: t_open.as_secs_f64() * 1e3,
        total_ms: t_total.as_secs_f64() * 1e3,
        found: targets.iter().filter(|t| t.found).count(),
        missing: targets.iter().filter(|t| !t.found && !t.optional).count(),
        rets: targets.iter().filter_map(|t| t.ret_count).sum(),
        rss_analysis_kib,
        rss_end_kib: peak_rss_kib(),
        resolved_pct: 100.0 * resolved as f64 / pcs.len() as f64,
        cold_per_s: per_sec(pcs.len(), cold),
        distinct_per_s: per_sec(pcs.len(), distinct),
        hot_per_s: per_sec(hot.len(), hot_time),
        cached_pcs: bin.cached_pcs(),
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.child {
        println!("{}", measure(&args.path, args.pcs)?.to_line());
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let mut best: Option<Run> = None;
    for _ in 0..args.runs {
        let out = Command::new(&exe)
            .arg("--child")
            .arg(&args.path)
            .args(["--pcs", &args.pcs.to_string()])
            .output()
            .context("starting a child run")?;
        if !out.status.success() {
            bail!(
                "child run on {} failed: {}",
                args.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let run = Run::from_line(String::from_utf8_lossy(&out.stdout).trim())?;
        best = Some(match best {
            None => run,
            Some(b) => b.best(&run),
        });
    }
    let r = best.context("no runs")?;

    if args.header {
        println!(
            "| binary | size MiB | Go | stripped | functions | open ms | open + version + targets ms | targets found / RET sites | peak RSS after analysis MiB | peak RSS at end MiB | distinct PCs, 1st pass (PCs/s) | distinct PCs, later passes (PCs/s) | {} hot PCs, cache warm (PCs/s) |",
            thousands(HOT_PCS as f64)
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let label = args
        .label
        .unwrap_or_else(|| args.path.display().to_string());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let missing = if r.missing > 0 {
        format!(" ({} missing)", r.missing)
    } else {
        String::new()
    };
    let unresolved = if r.resolved_pct < 100.0 {
        format!(" ({:.1}% resolved)", r.resolved_pct)
    } else {
        String::new()
    };
    println!(
        "| {label} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {}{missing} / {} | {:.1} | {:.1} | {}{unresolved} | {} | {} |",
        r.file_len as f64 / (1024.0 * 1024.0),
        r.version,
        if r.stripped { "yes" } else { "no" },
        thousands(r.functions as f64),
        r.open_ms,
        r.total_ms,
        r.found,
        r.rets,
        mib(r.rss_analysis_kib),
        mib(r.rss_end_kib),
        thousands(r.cold_per_s),
        thousands(r.distinct_per_s),
        thousands(r.hot_per_s),
    );
    Ok(())
}
