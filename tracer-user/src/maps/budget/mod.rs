//! The budgeted tier (`--maps budget`): map races looked for in production,
//! at a cost the traced process does not notice.
//!
//! Probes go on the call sites of map operations in user code (the CALL and
//! the instruction after it, as `--maps-sites` does), never on the runtime's
//! shared map functions. Which sites are probed, and for how long, is
//! decided by [`policy`] from per-site hit counters (`MAP_SITE_HITS`), the
//! process's CPU time and the trap cost measured at start-up
//! ([`calibrate`]), so the probes cost at most `--race-budget` of the
//! process's CPU. Findings come from the deep tier's overlap detector: two
//! probed operations on one map, one a write, in flight at once. Two such
//! operations are unordered (no synchronisation happens between a CALL and
//! its return), so a finding is never a guess; what sampling misses is a
//! race whose sides are not both probed at the time (docs/maps.md).

pub mod calibrate;
pub mod policy;

use std::{collections::HashMap, path::Path, time::Instant};

use anyhow::{Context, Result, anyhow};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::uprobe::UProbeLinkId,
};
use serde::Serialize;
use tracer_common::{
    maps::{CALL_INSN_LEN, OP_AT_CALL_SITE, SITE_SLOTS},
    names::{self, program},
};

use self::policy::{Action, Phase, Policy, Site};
use super::{
    probes::{MapProbes, op_functions},
    sites::{CallSite, find_in},
};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::{Function, GoBinary},
    maps::hb::sites::is_user_code,
};

/// Default `--race-budget`: 1% of the traced process's CPU.
pub const DEFAULT_BUDGET: f64 = 0.01;
/// Detaches handed to the closer thread per step at most: each takes
/// ~100 ms in the kernel, and a probe keeps firing until its turn.
const DETACHES_PER_TICK: usize = 4;
/// Period of the control step.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// How soon after attaching the counters are looked at again.
const PEEK: std::time::Duration = std::time::Duration::from_millis(15);
/// Sites listed in the report, the most probed first.
const REPORT_SITES: usize = 50;
/// The `caller` of a growth probe in the report: it sits on the runtime's
/// growth function, not on a call site.
pub const GROWTH_CALLER: &str = "(map growth, always-on tier)";

/// A probed site's two links. The exit goes one tick after the entry, so an
/// operation in flight when the entry went still has its end recorded.
#[derive(Default)]
struct Links {
    enter: Option<UProbeLinkId>,
    exit: Option<UProbeLinkId>,
}

/// The call sites, their probes and the budget.
pub struct BudgetedSites {
    sites: Vec<CallSite>,
    /// Which sites are growth probes (on a runtime growth function, one
    /// trap and a stack walk a hit) rather than call sites.
    is_growth: Vec<bool>,
    /// Probe index (cookie upper bits) of each site.
    slots: Vec<u32>,
    file_offsets: Vec<u64>,
    links: Vec<Links>,
    /// Sites whose entry is detached and whose exit goes on the next tick.
    exits_pending: Vec<usize>,
    /// Sites whose detach is due but waits for the per-tick limit.
    detach_queue: Vec<usize>,
    policy: Policy,
    /// Traced pids and the CPU time last read for each: a process that
    /// exited keeps its last value, so the total never goes back.
    pids: Vec<(u32, u64)>,
    /// CPU time of the pids forgotten.
    retired_cpu: u64,
    path: std::path::PathBuf,
    scope: Scope,
    started: Instant,
    /// Sites not considered: more than the hit table holds.
    over_table: usize,
    last_error: Option<String>,
    next_tick: Instant,
    /// A look at the counters soon after an attach.
    peek_at: Option<Instant>,
}

/// Group of a call site: its caller's package and receiver
/// (`main.(*server).get` → `main.(*server)`; `main.handle` → `main`).
fn group_key(caller: &str) -> &str {
    let name = caller.split('[').next().unwrap_or(caller);
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let tail = &name[slash..];
    match tail.find(".(") {
        Some(p) => {
            let close = tail[p..].find(')').map_or(tail.len(), |c| p + c + 1);
            &caller[..slash + close]
        }
        None => &caller[..slash + tail.find('.').unwrap_or(tail.len())],
    }
}

impl BudgetedSites {
    /// Finds the map call sites of `bin`'s user code and registers them in
    /// `probes`; nothing is attached until [`BudgetedSites::tick`].
    pub fn start(
        tracer: &mut Tracer,
        probes: &mut MapProbes,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        pid: u32,
        budget: f64,
    ) -> Result<(Self, ProbeStatus)> {
        // The trap cost is measured on a thread of its own from now on, so a
        // short-lived program is not over before the first step can probe.
        let _ = calibrate::costs_in_background();
        let table = site_table(tracer)?.len().min(SITE_SLOTS) as usize;
        let targets = op_functions(bin);
        let funcs: Vec<Function> = bin
            .functions_with_prefix("")
            .into_iter()
            .filter(|f| is_user_code(&f.name))
            .collect();
        let mut found = find_in(bin, &funcs, &targets);
        let mut groups: HashMap<String, u32> = HashMap::new();
        let mut sites = Vec::new();
        let mut slots = Vec::new();
        let mut offsets = Vec::new();
        let mut policy_sites = Vec::new();
        let mut over_table = 0;
        // The growth probes first (a few functions; a big program's call
        // sites would fill the table): on the runtime's shared growth
        // functions, so every growth in the process costs a trap and a
        // stack walk while they are on (257,211 hits in a Hugo build); the
        // budget decides when, in group 0, their own.
        for (f, arg) in super::probes::growth_functions(bin) {
            if probes.functions.len() >= table {
                over_table += 1;
                continue;
            }
            slots.push(probes.cookie(&f, arg));
            offsets.push(f.file_offset);
            policy_sites.push(Site::costing(0, f64::NAN));
            sites.push(CallSite {
                caller: GROWTH_CALLER.into(),
                call_vaddr: f.entry,
                kind: 0,
                callee: f.name.clone(),
            });
        }
        let growth_sites = sites.len();
        for s in found.drain(..) {
            let Some(off) = bin.vaddr_to_file_offset(s.call_vaddr) else {
                continue;
            };
            let site_fn = Function {
                name: s.caller.clone(),
                entry: s.call_vaddr,
                size: CALL_INSN_LEN,
                file_offset: off,
            };
            if probes.functions.len() >= table {
                over_table += 1;
                continue;
            }
            let cookie = probes.cookie(&site_fn, s.kind | OP_AT_CALL_SITE);
            let n = groups.len() as u32 + 1;
            let g = *groups.entry(group_key(&s.caller).to_owned()).or_insert(n);
            slots.push(cookie);
            offsets.push(off);
            policy_sites.push(Site::new(g));
            sites.push(s);
        }
        let call_sites = sites.len() - growth_sites;
        let status = ProbeStatus {
            feature: "map_race_budget".into(),
            function: None,
            status: if call_sites == 0 {
                "missing"
            } else {
                "attached"
            },
            ret_sites: call_sites,
            reason: if call_sites == 0 {
                Some(
                    "no call to a map operation in this binary's own code: no race to look for"
                        .into(),
                )
            } else {
                Some(format!(
                    "{} map call sites in user code, probed within {:.2}% of the process's CPU{}",
                    call_sites,
                    budget * 100.0,
                    if over_table > 0 {
                        format!("; {over_table} more sites left out (hit table full)")
                    } else {
                        String::new()
                    }
                ))
            },
            kind: 0,
        };
        let n = sites.len();
        Ok((
            Self {
                is_growth: (0..n).map(|i| i < growth_sites).collect(),
                sites,
                slots,
                file_offsets: offsets,
                links: (0..n).map(|_| Links::default()).collect(),
                exits_pending: Vec::new(),
                detach_queue: Vec::new(),
                // The trap cost is measured at the first tick, off the
                // start-up path (a short process must not wait for it).
                policy: Policy::new(budget, f64::NAN, policy_sites),
                pids: vec![(pid, 0)],
                retired_cpu: 0,
                path: path.to_owned(),
                scope,
                started: Instant::now(),
                over_table,
                last_error: None,
                next_tick: Instant::now(),
                peek_at: None,
            },
            status,
        ))
    }

    pub fn add_pid(&mut self, pid: u32) {
        if !self.pids.iter().any(|(p, _)| *p == pid) {
            self.pids.push((pid, 0));
        }
    }

    pub fn forget_pid(&mut self, pid: u32) {
        // Its CPU stays in the total: the allowance it earned may be spent.
        if let Some(i) = self.pids.iter().position(|(p, _)| *p == pid) {
            self.retired_cpu += self.pids.swap_remove(i).1;
        }
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// When [`BudgetedSites::poll`] has something to do next.
    pub fn due(&self) -> Instant {
        self.peek_at
            .map_or(self.next_tick, |p| p.min(self.next_tick))
    }

    /// Runs what is due: a control step every [`TICK`] (reads the counters
    /// of the sites attached and the processes' CPU time, attaches or
    /// detaches what the policy says), and a look [`PEEK`] after an attach.
    /// Never waits for the kernel to detach: links close on the closer
    /// thread ([`crate::link_closer`]).
    pub fn poll(&mut self, tracer: &mut Tracer) {
        let now = Instant::now();
        let r = if self.peek_at.is_some_and(|p| now >= p) {
            self.peek_at = None;
            self.step(tracer).and_then(|_| self.send_detaches(tracer))
        } else if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.try_tick(tracer)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            let msg = format!("{e:#}");
            if self.last_error.as_deref() != Some(msg.as_str()) {
                tracing::warn!("map race budget: {msg}");
            }
            self.last_error = Some(msg);
        }
    }

    fn try_tick(&mut self, tracer: &mut Tracer) -> Result<()> {
        if self.policy.trap_ns.is_nan() {
            if self.last_error.is_some() {
                // The calibration failed: nothing is probed, the report says why.
                return Ok(());
            }
            let c = match calibrate::costs_in_background() {
                // Being measured: the next step looks again.
                None => return Ok(()),
                Some(c) => c.context("measuring the trap cost; no map call site is probed")?,
            };
            self.policy.trap_ns = c.trap_ns;
            for (s, g) in self.policy.sites.iter_mut().zip(&self.is_growth) {
                if *g {
                    s.traps = c.growth_ns / c.trap_ns;
                }
            }
            self.start_growth(tracer);
        }
        // Exits whose entry went last tick: operations in flight are done.
        for i in std::mem::take(&mut self.exits_pending) {
            if let Some(l) = self.links[i].exit.take() {
                tracer
                    .detach_uprobe_later(program::MAP_OP_EXIT, l)
                    .context("detaching a call site's exit probe")?;
            }
        }
        if self.step(tracer)? {
            // A look soon after attaching: a hot site is taken off after
            // ~15 ms of traps rather than a whole tick.
            self.peek_at = Some(Instant::now() + PEEK);
        }
        self.send_detaches(tracer)
    }

    /// Attaches the growth probes, once the costs are known. Growth is the
    /// always-on tier: on from the first step, so a short or quiet program
    /// keeps it, and taken off at the look 15 ms later if it costs more than
    /// the continuous share.
    fn start_growth(&mut self, tracer: &mut Tracer) {
        let now = self.now_ns();
        let growth: Vec<usize> = (0..self.sites.len())
            .filter(|&i| self.is_growth[i])
            .collect();
        for i in growth {
            match self.attach(tracer, i) {
                Ok(()) => {
                    self.policy.attached_without_probation_slot(i, now);
                    self.peek_at = Some(Instant::now() + PEEK);
                }
                Err(e) => {
                    tracing::debug!("growth probe {}: {e:#}", self.sites[i].callee);
                    self.policy.failed(i);
                }
            }
        }
    }

    /// Detaches the entries of up to [`DETACHES_PER_TICK`] sites the policy
    /// took off; their exits go at the next tick.
    fn send_detaches(&mut self, tracer: &mut Tracer) -> Result<()> {
        let n = self.detach_queue.len().min(DETACHES_PER_TICK);
        for i in self.detach_queue.drain(..n).collect::<Vec<_>>() {
            // Re-attached since it was queued: keep it.
            if self.policy.sites[i].phase.attached() {
                continue;
            }
            let prog = if self.is_growth[i] {
                program::MAP_GROW
            } else {
                program::MAP_OP_ENTER
            };
            if let Some(l) = self.links[i].enter.take() {
                tracer
                    .detach_uprobe_later(prog, l)
                    .context("detaching a map probe")?;
            }
            if !self.is_growth[i] && !self.exits_pending.contains(&i) {
                self.exits_pending.push(i);
            }
        }
        Ok(())
    }

    /// Reads the counters, runs the policy and attaches what it says (the
    /// detaches are queued); true when something was attached.
    fn step(&mut self, tracer: &mut Tracer) -> Result<bool> {
        let mut hits: Vec<u64> = self.policy.sites.iter().map(|s| s.hits).collect();
        {
            let table = site_table(tracer)?;
            for (i, s) in self.policy.sites.iter().enumerate() {
                if s.phase.attached() || self.links[i].enter.is_some() {
                    let v = table
                        .get(&self.slots[i].wrapping_shr(8), 0)
                        .context("reading MAP_SITE_HITS")?;
                    hits[i] = v.iter().sum();
                }
            }
        }
        for (pid, cpu) in self.pids.iter_mut() {
            if let Some(c) = crate::process::procfs::cpu_time_ns(*pid) {
                *cpu = (*cpu).max(c);
            }
        }
        let cpu: u64 = self.retired_cpu + self.pids.iter().map(|(_, c)| c).sum::<u64>();
        let now = self.now_ns();
        let mut attached = false;
        for a in self.policy.tick(now, cpu, &hits) {
            match a {
                Action::Attach(i) => {
                    attached = true;
                    if let Err(e) = self.attach(tracer, i) {
                        tracing::debug!("call site {:#x}: {e:#}", self.sites[i].call_vaddr);
                        self.policy.failed(i);
                    }
                }
                Action::Detach(i) => self.detach_queue.push(i),
            }
        }
        Ok(attached)
    }

    fn attach(&mut self, tracer: &mut Tracer, i: usize) -> Result<()> {
        let off = self.file_offsets[i];
        let cookie = u64::from(self.slots[i]);
        let growth = self.is_growth[i];
        // A call site detached moments ago may still have its exit; a growth
        // probe has none.
        if !growth && self.links[i].exit.is_none() {
            self.links[i].exit = Some(tracer.attach_uprobe(
                program::MAP_OP_EXIT,
                off + CALL_INSN_LEN,
                cookie,
                &self.path,
                self.scope,
            )?);
        }
        self.exits_pending.retain(|p| *p != i);
        if self.links[i].enter.is_none() {
            let prog = if growth {
                program::MAP_GROW
            } else {
                program::MAP_OP_ENTER
            };
            self.links[i].enter =
                Some(tracer.attach_uprobe(prog, off, cookie, &self.path, self.scope)?);
        }
        Ok(())
    }

    /// What was probed, for how long, and what the budget allowed.
    pub fn report(&self, bin: &GoBinary) -> BudgetReport {
        let now = self.now_ns();
        let p = &self.policy;
        let calls = || (0..p.sites.len()).filter(|&i| !self.is_growth[i]);
        let count = |f: &dyn Fn(Phase) -> bool| calls().filter(|&i| f(p.sites[i].phase)).count();
        let row = |i: usize| {
            let s = &p.sites[i];
            let cs = &self.sites[i];
            let frame = bin.symbolize(cs.call_vaddr).into_iter().next();
            BudgetSite {
                caller: cs.caller.clone(),
                callee: cs.callee.clone(),
                file: frame.as_ref().map(|f| f.file.clone()),
                line: frame.map(|f| f.line),
                state: s.phase.name(),
                probed_ns: s.probed_until(now),
                hits: s.hits,
                rate_per_s: s.rate,
                windows: s.windows,
            }
        };
        let mut order: Vec<usize> = calls().collect();
        order.sort_by_key(|&i| std::cmp::Reverse(p.sites[i].probed_until(now)));
        BudgetReport {
            budget: p.budget,
            trap_ns: (!p.trap_ns.is_nan()).then_some(p.trap_ns),
            elapsed_ns: now,
            allowed_ns: (p.allowed_ns - p.capped_ns).max(0.0) as u64,
            spent_ns: p.spent_ns as u64,
            call_sites: calls().count() + self.over_table,
            left_out_table_full: self.over_table,
            never_probed: count(&|ph| ph == Phase::Waiting),
            continuous: count(&|ph| ph == Phase::Continuous),
            hot: count(&|ph| matches!(ph, Phase::Hot | Phase::Window { .. })),
            failed: count(&|ph| ph == Phase::Failed),
            windows: calls().map(|i| u64::from(p.sites[i].windows)).sum(),
            error: self.last_error.clone(),
            sites: order.into_iter().take(REPORT_SITES).map(row).collect(),
            growth: (0..p.sites.len())
                .filter(|&i| self.is_growth[i])
                .map(row)
                .collect(),
        }
    }
}

/// The per-site hit table.
fn site_table(tracer: &Tracer) -> Result<PerCpuArray<&MapData, u64>> {
    Ok(PerCpuArray::try_from(
        tracer
            .ebpf
            .map(names::map::MAP_SITE_HITS)
            .ok_or_else(|| anyhow!("MAP_SITE_HITS map missing"))?,
    )?)
}

/// The budgeted tier in the report (`race_budget`, docs/json-report.md).
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    /// `--race-budget`, as a fraction of the process's CPU.
    pub budget: f64,
    /// One trap's cost, measured at start-up, ns; `None` until measured
    /// (a process that ends within the measurement is never probed).
    pub trap_ns: Option<f64>,
    pub elapsed_ns: u64,
    /// What the budget allowed so far (the bank's cap applied), ns of CPU.
    pub allowed_ns: u64,
    /// What the probes cost (hits × 2 traps), ns of CPU.
    pub spent_ns: u64,
    pub call_sites: usize,
    pub left_out_table_full: usize,
    pub never_probed: usize,
    pub continuous: usize,
    /// Too hot to stay probed: probed in windows only, or not at all.
    pub hot: usize,
    pub failed: usize,
    pub windows: u64,
    /// Why the controller is stuck or failed last, if it did.
    pub error: Option<String>,
    /// The most probed sites.
    pub sites: Vec<BudgetSite>,
    /// The growth probes (always-on tier, attached only while the budget
    /// pays for them): growth counts cover only their `probed_ns`.
    pub growth: Vec<BudgetSite>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BudgetSite {
    pub caller: String,
    pub callee: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// waiting, probation, continuous, hot, window or failed.
    pub state: &'static str,
    pub probed_ns: u64,
    pub hits: u64,
    pub rate_per_s: Option<f64>,
    pub windows: u32,
}

impl BudgetReport {
    /// The growth probes' state and time on, for the human report.
    pub fn growth_summary(&self) -> Option<String> {
        let g = self.growth.first()?;
        let on = self.growth.iter().map(|g| g.probed_ns).max().unwrap_or(0);
        Some(format!(
            "map growth probe {} ({} windows), on {:.1} s of {:.1} s: growth counts cover only that time",
            g.state,
            g.windows,
            on as f64 / 1e9,
            self.elapsed_ns as f64 / 1e9
        ))
    }

    /// One line for the human report.
    pub fn summary(&self) -> String {
        let trap = match self.trap_ns {
            Some(t) => format!("one trap {:.1} µs, measured", t / 1000.0),
            None => "trap cost not measured yet, so nothing was probed".to_owned(),
        };
        format!(
            "race budget {:.2}%: {} map call sites, {} probed continuously, {} hot ({} windows), \
             {} not probed yet; probes cost {:.1} ms of {:.1} ms allowed ({trap})",
            self.budget * 100.0,
            self.call_sites,
            self.continuous,
            self.hot,
            self.windows,
            self.never_probed + self.left_out_table_full,
            self.spent_ns as f64 / 1e6,
            self.allowed_ns as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::group_key;

    #[test]
    fn groups_by_package_and_receiver() {
        assert_eq!(group_key("main.(*server).get"), "main.(*server)");
        assert_eq!(group_key("main.handle"), "main");
        assert_eq!(
            group_key("github.com/a/b.(*T[go.shape.int]).m"),
            "github.com/a/b.(*T"
        );
        assert_eq!(group_key("example.com/x/y.f.func1"), "example.com/x/y");
        assert_eq!(group_key("weird"), "weird");
    }
}
