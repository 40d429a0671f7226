//! What one uprobe trap costs on this machine, measured rather than assumed:
//! about 20 µs in this project's VM, 0.3–3 µs on bare metal. The budgeted
//! tier turns hit counts into CPU time with it.
//!
//! A probe goes on a function of tracer's own binary, scoped to tracer's
//! own pid, with the map entry program (which returns at its pid filter:
//! tracer is not a traced process). The function is timed with and without
//! it; the difference per call is the trap plus the cheapest program run.
//! Then the growth program, with tracer's pid registered for a moment, so it
//! does all its work (a stack walk, a table update): the cost of one growth
//! probe hit.

use std::{
    hint::black_box,
    path::Path,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tracer_common::names::{self, program};

use crate::ebpf::{Scope, Tracer};

/// Calls timed on each side.
const CALLS: u32 = 2000;

/// Target of the calibration probe: never inlined, so it has an address.
#[inline(never)]
extern "C" fn calibration_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(3)
}

fn time_calls() -> Duration {
    let t = Instant::now();
    let mut acc = 0u64;
    for i in 0..CALLS {
        acc = acc.wrapping_add(black_box(calibration_target as extern "C" fn(u64) -> u64)(
            u64::from(i),
        ));
    }
    black_box(acc);
    t.elapsed()
}

/// File offset of `addr` in the executable mapping that holds it, from a
/// `/proc/self/maps` text.
fn file_offset(maps: &str, addr: u64) -> Option<u64> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (range, perms, off) = (f.next()?, f.next()?, f.next()?);
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        let off = u64::from_str_radix(off, 16).ok()?;
        (perms.contains('x') && (lo..hi).contains(&addr)).then(|| addr - lo + off)
    })
}

/// Per-call cost of `prog` on [`calibration_target`] with `cookie`, ns.
fn probed_cost(tracer: &mut Tracer, prog: &str, cookie: u64) -> Result<f64> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let addr = calibration_target as *const () as u64;
    let off = file_offset(&maps, addr)
        .with_context(|| format!("no executable mapping holds {addr:#x}"))?;
    let plain = (0..3).map(|_| time_calls()).min().unwrap_or_default();
    let link = tracer
        .attach_uprobe(
            prog,
            off,
            cookie,
            Path::new("/proc/self/exe"),
            // This thread: a perf event scoped to a task id follows that
            // task, and the calls are timed here.
            // SAFETY: gettid has no preconditions.
            Scope::Pid(unsafe { libc::gettid() } as u32),
        )
        .context("attaching the calibration probe to tracer itself")?;
    let probed = (0..3).map(|_| time_calls()).min().unwrap_or_default();
    tracer
        .detach_uprobe_later(prog, link)
        .context("detaching the calibration probe")?;
    let per_call = probed.saturating_sub(plain).as_nanos() as f64 / f64::from(CALLS);
    if per_call < 50.0 {
        bail!(
            "the calibration probe did not fire ({:.0} ns per call probed, {:.0} unprobed)",
            probed.as_nanos() as f64 / f64::from(CALLS),
            plain.as_nanos() as f64 / f64::from(CALLS)
        );
    }
    Ok(per_call)
}

/// The growth program's cost per hit: tracer's pid is registered in
/// `MAP_CONFIG` meanwhile (so the program runs to its end: the map
/// argument, a small integer, reads as unreadable) and purged after.
fn growth_cost(tracer: &mut Tracer) -> Result<f64> {
    use crate::ebpf::{purge_hash, purge_per_cpu};
    use tracer_common::maps::{GROW_ARG0, GrowthKey, GrowthStats, MapsConfig};
    let me = std::process::id();
    let cfg = MapsConfig {
        goid_off: u64::MAX,
        count_off: 0,
        flags: 0,
    };
    crate::maps::read::add_target(tracer, me, cfg)?;
    let cost = probed_cost(tracer, program::MAP_GROW, u64::from(GROW_ARG0));
    let e = &mut tracer.ebpf;
    purge_hash::<u32, MapsConfig>(e, names::map::MAP_CONFIG, |k| *k == me)?;
    purge_per_cpu::<GrowthKey, GrowthStats>(e, names::map::MAP_GROWTH, |k| k.tgid == me)?;
    cost
}

/// What the probes cost on this machine, ns.
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    /// One trap and the cheapest program run (a call site hit is two).
    pub trap_ns: f64,
    /// One growth probe hit: a trap and the growth program's work.
    pub growth_ns: f64,
}

static COSTS: OnceLock<Result<Costs, String>> = OnceLock::new();

/// The probes' costs; measured once per tracer process (the map programs
/// must be loaded in `tracer`). A failure is kept too: measuring again
/// would cost the same and most likely fail the same way.
pub fn costs(tracer: &mut Tracer) -> Result<Costs> {
    let c = COSTS.get_or_init(|| {
        let measured = probed_cost(tracer, program::MAP_OP_ENTER, 0).and_then(|trap_ns| {
            Ok(Costs {
                trap_ns,
                growth_ns: growth_cost(tracer)?.max(trap_ns),
            })
        });
        match measured {
            Ok(c) => {
                tracing::info!(
                    "one uprobe trap costs {:.1} µs here, a map growth probe hit {:.1} µs (measured)",
                    c.trap_ns / 1000.0,
                    c.growth_ns / 1000.0
                );
                Ok(c)
            }
            Err(e) => Err(format!("{e:#}")),
        }
    });
    c.clone().map_err(|e| anyhow!(e))
}

/// The costs if measured; otherwise starts measuring them on a thread of
/// its own, with an object of its own (token-sized tables), and returns
/// None: the measurement takes ~0.3 s of traps, which must not stall the
/// loop that drains the kernel's rings (`tracer run` on a connection flood
/// lost closed flows to it).
pub fn costs_in_background() -> Option<Result<Costs>> {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if let Some(c) = COSTS.get() {
        return Some(c.clone().map_err(|e| anyhow!(e)));
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("tracer-calibrate".into())
            .spawn(|| {
                let r = Tracer::load_sized(false, crate::ebpf::SHARED_TABLES)
                    .and_then(|mut t| {
                        crate::maps::probes::load(&mut t)?;
                        costs(&mut t)
                    })
                    .context("loading an object to measure the probe costs");
                if let Err(e) = r {
                    // Kept for every caller, as `costs` keeps its own failures.
                    let _ = COSTS.set(Err(format!("{e:#}")));
                }
            });
        if let Err(e) = spawned {
            let _ = COSTS.set(Err(format!("no calibration thread: {e}")));
        }
    });
    None
}

#[cfg(test)]
mod tests {
    use super::file_offset;

    #[test]
    fn offsets_from_maps_lines() {
        let maps = "55d0a0000000-55d0a0100000 r--p 00000000 08:01 12 /bin/t\n\
                    55d0a0100000-55d0a0400000 r-xp 00100000 08:01 12 /bin/t\n\
                    garbage line\n";
        assert_eq!(file_offset(maps, 0x55d0a0100010), Some(0x100010));
        assert_eq!(file_offset(maps, 0x55d0a0000010), None, "not executable");
        assert_eq!(file_offset(maps, 0x1), None);
        assert_eq!(file_offset("zz-yy r-xp 0", 0x1), None);
    }
}
