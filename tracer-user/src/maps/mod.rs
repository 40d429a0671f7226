//! Unsafe concurrent use of Go maps, found in unmodified binaries.
//!
//! Two tiers (docs/maps.md):
//! - **always** (default): probes only on rare paths — the runtime's fatal
//!   error entry points (a crash such as `concurrent map writes` is captured
//!   with its goroutine and stack before the process dies) and map growth.
//! - **deep** (opt-in): every map operation gets an entry probe and probes on
//!   its RETs; the kernel tracks the operations in flight per map and records
//!   any operation that overlaps a write by another goroutine. Each operation
//!   then costs two uprobe traps (~40 µs here), so this is for one process,
//!   for a short while. Deep mode also streams every synchronisation and
//!   access to the happens-before detector ([`hb`]), which finds accesses
//!   that no synchronisation ordered even when they did not overlap.

pub mod budget;
pub mod hb;
pub mod probes;
pub mod read;
pub mod report;
pub mod sites;
pub mod syncmap;
pub mod table;

use std::path::Path;
use tracer_common::names;

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use tracer_common::maps::{FLAG_DEEP_ARMED, FLAG_HB_ARMED, LOST_OPS, MapsConfig};

use crate::{
    clock::monotonic_ns,
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::GoBinary,
};

pub use report::{MapFinding, MapReport, MapsLost, MapsReport};

/// How much of the map feature runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapsMode {
    Off,
    /// Fatal errors and growth only: rare events, cheap.
    #[default]
    Always,
    /// Always, plus map call sites in user code probed within a CPU budget
    /// ([`budget`]): finds overlapping accesses at a bounded cost.
    Budget,
    /// Also every map operation: finds overlapping accesses; expensive.
    Deep,
}

impl std::str::FromStr for MapsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(MapsMode::Off),
            "always" => Ok(MapsMode::Always),
            "budget" => Ok(MapsMode::Budget),
            "deep" => Ok(MapsMode::Deep),
            _ => Err(format!(
                "unknown --maps mode {s:?} (off, always, budget or deep)"
            )),
        }
    }
}

/// What to run of the map feature: the tier, and each tier's choices.
#[derive(Clone, Copy, Debug)]
pub struct MapsChoice<'a> {
    pub mode: MapsMode,
    /// `--maps-sites` (deep tier).
    pub sites: &'a [String],
    /// `--sync-funcs` (deep tier's happens-before detector).
    pub sync_funcs: &'a [String],
    /// `--race-budget` (budget tier), a fraction of the process's CPU.
    pub race_budget: f64,
}

/// The map feature's state in one session.
pub struct MapsState {
    pub mode: MapsMode,
    probes: probes::MapProbes,
    ring: RingBuf<MapData>,
    /// Fatal errors received so far (the ring buffer is drained into this).
    fatals: Vec<read::Fatal>,
    /// CLOCK_MONOTONIC at the start, to report kernel timestamps relative to it.
    start_mono: u64,
    pub statuses: Vec<ProbeStatus>,
    /// Offsets and flags every recorded pid is registered with.
    cfg: MapsConfig,
    /// The happens-before detector (deep mode).
    hb: Option<hb::HbStream>,
    /// The budgeted call-site probes (budget mode).
    budget: Option<budget::BudgetedSites>,
    /// When the operation table was first seen full, ns since the start
    /// (deep and budget modes; looked at every [`MapsState::poll`]).
    ops_full_after_ns: Option<u64>,
}

impl MapsState {
    /// Loads and attaches the map probes for `pid`; None when `mode` is off.
    pub fn start(
        tracer: &mut Tracer,
        bin: &GoBinary,
        path: &Path,
        pid: u32,
        scope: Scope,
        choice: MapsChoice<'_>,
    ) -> Result<Option<Self>> {
        let MapsChoice {
            mode,
            sites,
            sync_funcs,
            race_budget,
        } = choice;
        if !sites.is_empty() && mode != MapsMode::Deep {
            bail!("--maps-sites places deep-tier probes: it needs --maps deep");
        }
        if !sync_funcs.is_empty() && mode != MapsMode::Deep {
            bail!("--sync-funcs is for the happens-before detector: it needs --maps deep");
        }
        if mode == MapsMode::Off {
            return Ok(None);
        }
        probes::load(tracer)?;
        let offs = bin.offsets();
        let count_off = offs
            .hmap_count
            .or(offs.swiss_used)
            .map_or(u64::MAX, |o| o.value);
        let mut cfg = MapsConfig {
            goid_off: offs.g_goid.map_or(u64::MAX, |o| o.value),
            count_off,
            flags: 0,
        };
        read::add_target(tracer, pid, cfg)?;
        let ring = read::take_ring(tracer)?;
        let mut mp = probes::MapProbes::default();
        let budgeted = mode == MapsMode::Budget;
        let mut statuses = probes::attach_always(tracer, &mut mp, bin, path, scope, budgeted);
        let mut hb_stream = None;
        let mut budget_sites = None;
        if budgeted {
            let (b, st) =
                budget::BudgetedSites::start(tracer, &mut mp, bin, path, scope, pid, race_budget)?;
            statuses.push(st);
            budget_sites = Some(b);
        }
        if mode == MapsMode::Deep {
            statuses.push(if sites.is_empty() {
                probes::attach_deep(tracer, &mut mp, bin, path, scope)
            } else {
                probes::attach_sites(tracer, &mut mp, bin, path, scope, sites)
            });
            statuses.push(syncmap::attach(tracer, bin, path, scope));
            if cfg.goid_off == u64::MAX {
                statuses.push(ProbeStatus {
                    feature: "map_happens_before".into(),
                    function: None,
                    status: "missing",
                    ret_sites: 0,
                    reason: Some(
                        "goroutine ids are unreadable in this binary: happens-before detection is off"
                            .into(),
                    ),
                    kind: 0,
                });
            } else {
                let (probes, st) = hb::probes::attach(tracer, bin, path, scope, sync_funcs);
                if st.status == "attached" {
                    let ring = read::take_named_ring(tracer, names::map::HB_EVENTS)?;
                    hb_stream = Some(hb::HbStream::new(
                        ring,
                        probes,
                        hb::stream::UserCode::new(bin),
                    ));
                }
                statuses.push(st);
            }
        }
        if let Some(failed) = statuses.iter().find(|p| p.status == "failed") {
            bail!(
                "could not attach {} probes: {}",
                failed.feature,
                failed.reason.as_deref().unwrap_or("unknown error")
            );
        }
        if mode == MapsMode::Budget {
            // Each call site gets its exit before its entry.
            cfg.flags |= FLAG_DEEP_ARMED;
            read::add_target(tracer, pid, cfg)?;
        }
        if mode == MapsMode::Deep {
            // Every exit is in place: operations may now be recorded.
            cfg.flags |= FLAG_DEEP_ARMED;
            if hb_stream.is_some() {
                cfg.flags |= FLAG_HB_ARMED;
            }
            read::add_target(tracer, pid, cfg)?;
        }
        Ok(Some(MapsState {
            mode,
            probes: mp,
            ring,
            fatals: Vec::new(),
            start_mono: monotonic_ns(),
            statuses,
            cfg,
            hb: hb_stream,
            budget: budget_sites,
            ops_full_after_ns: None,
        }))
    }

    /// The offsets and flags a pid is registered with in `MAP_CONFIG`.
    pub fn cfg(&self) -> MapsConfig {
        self.cfg
    }

    /// Records `pid` too (another process of the same binary).
    pub fn add_pid(&mut self, tracer: &mut Tracer, pid: u32) -> Result<()> {
        if let Some(b) = self.budget.as_mut() {
            b.add_pid(pid);
        }
        read::add_target(tracer, pid, self.cfg)
    }

    /// Stops recording `pid` and frees its entries in the kernel tables.
    pub fn forget_pid(&mut self, tracer: &mut Tracer, pid: u32) -> Result<()> {
        use crate::ebpf::{purge_hash, purge_per_cpu};
        use tracer_common::{
            LockKey, WaitStats, WaiterKey,
            maps::{ConflictKey, ConflictStats, GrowthKey, GrowthStats, SyncMapKey},
        };
        let e = &mut tracer.ebpf;
        purge_hash::<u32, MapsConfig>(e, names::map::MAP_CONFIG, |k| *k == pid)?;
        purge_per_cpu::<GrowthKey, GrowthStats>(e, names::map::MAP_GROWTH, |k| k.tgid == pid)?;
        purge_per_cpu::<LockKey, WaitStats>(e, names::map::MAP_OPS, |k| k.tgid == pid)?;
        purge_hash::<WaiterKey, u8>(e, names::map::MAP_OP_GS, |k| k.tgid == pid)?;
        purge_per_cpu::<ConflictKey, ConflictStats>(e, names::map::MAP_CONFLICTS, |k| {
            k.tgid == pid
        })?;
        purge_per_cpu::<SyncMapKey, u64>(e, names::map::SYNC_MAP_CALLS, |k| k.tgid == pid)?;
        self.fatals.retain(|f| f.tgid != pid);
        if let Some(h) = self.hb.as_mut() {
            h.forget_pid(pid);
        }
        if let Some(b) = self.budget.as_mut() {
            b.forget_pid(pid);
        }
        Ok(())
    }

    /// Drains the fatal-event ring buffer. Call regularly and once more after
    /// the process has exited: its last event arrives as it dies.
    pub fn poll(&mut self, tracer: &Tracer) {
        if let Some(h) = self.hb.as_mut() {
            h.poll();
        }
        if matches!(self.mode, MapsMode::Deep | MapsMode::Budget)
            && self.ops_full_after_ns.is_none()
            && read::lost(tracer).is_ok_and(|l| l[LOST_OPS as usize] > 0)
        {
            self.ops_full_after_ns = Some(monotonic_ns().saturating_sub(self.start_mono));
        }
        while let Some(item) = self.ring.next() {
            match read::decode_fatal(&item) {
                Some(f) => {
                    // `maps.fatal` calls `runtime.fatal`: one crash, two probes.
                    let dup = self
                        .fatals
                        .iter()
                        .any(|o| o.tgid == f.tgid && o.g == f.g && o.message == f.message);
                    if !dup {
                        tracing::warn!(
                            "pid {} goroutine {:?}: fatal error: {}",
                            f.tgid,
                            f.goid,
                            f.message
                        );
                        self.fatals.push(f);
                    }
                }
                None => tracing::debug!("unknown map event of {} bytes", item.len()),
            }
        }
    }

    /// Runs the budgeted tier's controller if it is due (budget mode).
    pub fn poll_budget(&mut self, tracer: &mut Tracer) {
        if let Some(b) = self.budget.as_mut() {
            b.poll(tracer);
        }
    }

    /// When the budgeted tier's controller wants [`MapsState::poll_budget`]
    /// next; None outside budget mode.
    pub fn budget_due(&self) -> Option<std::time::Instant> {
        self.budget.as_ref().map(|b| b.due())
    }

    /// The map rows and findings as of now.
    pub fn report(&self, tracer: &Tracer, bin: &GoBinary) -> Result<MapsReport> {
        report::build(
            tracer,
            bin,
            &self.probes,
            &self.fatals,
            self.start_mono,
            self.mode,
            self.hb.as_ref(),
        )
        .map(|mut r| {
            r.race_budget = self.budget.as_ref().map(|b| b.report(bin));
            r.lost.ops_table_full_after_ns = self.ops_full_after_ns;
            r
        })
        .context("building the map report")
    }
}
