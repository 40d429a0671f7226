//! Benchmark of Go binary analysis (`tracer_user::gobin`) on one binary.
//!
//! ```text
//! cargo run --release -p tracer-user --example gobin_bench -- BINARY [--label NAME] [--pcs N] [--header]
//! ```
//!
//! Run it in a fresh process per binary (peak RSS is per process). It times
//! `GoBinary::open` + `go_version()` + `probe_targets()` (symbols and RET
//! sites of every probe target), reads peak RSS from `getrusage`, then
//! symbolizes `N` PCs (default 1,000,000) sampled uniformly over the
//! functions' code: once cold, then in warm passes. It prints one markdown
//! table row (`--header` prints the header first).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracer_user::gobin::{GoBinary, probe_targets};

/// Timed passes over the PCs after the cold one; the fastest is reported.
const WARM_PASSES: usize = 3;

struct Args {
    path: PathBuf,
    label: Option<String>,
    pcs: usize,
    header: bool,
}

fn parse_args() -> Result<Args> {
    let mut path = None;
    let mut label = None;
    let mut pcs = 1_000_000;
    let mut header = false;
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
            Some("--header") => header = true,
            Some(s) if s.starts_with("--") => bail!("unknown option {s}"),
            _ if path.is_none() => path = Some(PathBuf::from(a)),
            _ => bail!("more than one binary given"),
        }
    }
    Ok(Args {
        path: path.context("usage: gobin_bench BINARY [--label NAME] [--pcs N] [--header]")?,
        label,
        pcs,
        header,
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

fn main() -> Result<()> {
    let args = parse_args()?;
    let file_len = std::fs::metadata(&args.path)
        .with_context(|| format!("stat {}", args.path.display()))?
        .len();

    // The part the goal is about: what `tracer` does before attaching.
    let t0 = Instant::now();
    let bin =
        GoBinary::open(&args.path).with_context(|| format!("analysing {}", args.path.display()))?;
    let t_open = t0.elapsed();
    let version = bin.go_version();
    let targets = probe_targets(&bin);
    let t_total = t0.elapsed();
    let rss_analysis = peak_rss_kib();

    let found = targets.iter().filter(|t| t.found).count();
    let rets: usize = targets.iter().filter_map(|t| t.ret_count).sum();
    let missing_required = targets.iter().filter(|t| !t.found && !t.optional).count();

    // PCs: pick a function uniformly, then a byte inside its code.
    let funcs: Vec<(u64, u64)> = bin
        .functions_with_prefix("")
        .into_iter()
        .filter(|f| f.size > 0)
        .map(|f| (f.entry, f.size))
        .collect();
    if funcs.is_empty() {
        bail!("{}: no functions with a size", args.path.display());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pcs: Vec<u64> = (0..args.pcs)
        .map(|_| {
            let (entry, size) = funcs[rng.below(funcs.len() as u64) as usize];
            entry + rng.below(size)
        })
        .collect();
    drop(funcs);

    let (cold, sum_cold, resolved) = pass(&bin, &pcs);
    let mut warm = Duration::MAX;
    for _ in 0..WARM_PASSES {
        let (d, sum, _) = pass(&bin, &pcs);
        if sum != sum_cold {
            bail!("symbolization is not deterministic ({sum} != {sum_cold})");
        }
        warm = warm.min(d);
    }
    let rss_peak = peak_rss_kib();

    if args.header {
        println!(
            "| binary | size MB | Go | stripped | functions | open ms | open + targets ms | targets found / RET sites | peak RSS after analysis MB | peak RSS overall MB | PCs | resolved | cold PCs/s | warm PCs/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let label = args
        .label
        .unwrap_or_else(|| args.path.display().to_string());
    let mb = |kib: u64| kib as f64 / 1024.0;
    println!(
        "| {label} | {:.1} | {version} | {} | {} | {:.0} | {:.0} | {found}{} / {rets} | {:.1} | {:.1} | {} | {:.1}% | {} | {} |",
        file_len as f64 / (1024.0 * 1024.0),
        if bin.is_stripped() { "yes" } else { "no" },
        thousands(bin.function_count() as f64),
        t_open.as_secs_f64() * 1e3,
        t_total.as_secs_f64() * 1e3,
        if missing_required > 0 {
            format!(" ({missing_required} missing)")
        } else {
            String::new()
        },
        mb(rss_analysis),
        mb(rss_peak),
        thousands(pcs.len() as f64),
        100.0 * resolved as f64 / pcs.len() as f64,
        thousands(per_sec(pcs.len(), cold)),
        thousands(per_sec(pcs.len(), warm)),
    );
    Ok(())
}
