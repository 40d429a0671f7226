//! Lock contention in unmodified Go binaries: how long goroutines wait on
//! `sync.Mutex` and `sync.RWMutex`, where, and (with `--holders`) which code
//! held the lock; waits that never end are stuck-wait findings.
//!
//! - [`kinds`]: the one table of lock kinds, their Go functions and address fix-up;
//! - [`probes`]: attaching (and, under the rate guard, detaching) the probes;
//! - [`read`]: the kernel tables; [`rows`], [`holders`]: rows per lock and site;
//! - [`stuck`]: waits in progress past a threshold; [`rate_guard`]: pausing probes
//!   that cost the program too much;
//! - [`report`], [`table`]: the JSON and text forms.

pub mod holders;
pub mod kinds;
pub mod probes;
pub mod rate_guard;
pub mod read;
pub mod report;
pub mod rows;
pub mod runtime_totals;
pub mod stuck;
pub mod table;

use std::{
    cell::{Cell, OnceCell, RefCell},
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::lock::WAIT_AWAKE;

pub use self::probes::MutexExits;

use self::{
    holders::build_holders,
    probes::LockProbes,
    rate_guard::{Action, RateGuard},
    read::LockTables,
    report::{Finding, HolderReport, LockPauses, LockRef, LockReport, RuntimeLockWait},
    rows::{Located, build_rows, locate, waiters_by_site},
    runtime_totals::RuntimeTotals,
    stuck::{ParkCheck, StuckWaits, read_goid},
};
use crate::{
    clock::monotonic_ns,
    datasyms::DataSymbols,
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::GoBinary,
    symbols::{Symbolizer, bias_from_entry_frame},
};

/// The runtime's lock-wait total last read from one process.
struct RuntimeWait {
    bias: Option<u64>,
    total: Result<u64, String>,
}

/// How a goroutine parked on a lock is recognised in `bin`, when its
/// offsets and wait reasons are known. A Mutex wait that ended with a
/// hand-off stays in the in-flight table until the waiter sleeps again;
/// this check keeps it from being reported as stuck.
fn park_check(bin: &GoBinary) -> Option<ParkCheck> {
    let o = bin.offsets();
    Some(ParkCheck {
        status_offset: o.g_atomicstatus?.value,
        reason_offset: o.g_waitreason?.value,
        lock_reasons: crate::gobin::lock_wait_reasons(bin.go_version())?,
    })
}

/// How often the runtime's lock-wait totals are read. From Go 1.22 a read
/// walks every thread of the process (one `process_vm_readv` each), so an
/// agent with hundreds of processes must not do it every stuck-wait scan.
pub const RUNTIME_TOTAL_EVERY: Duration = Duration::from_secs(1);

/// How long the lock probes stay detached once the rate guard trips.
pub const LOCK_PAUSE: Duration = Duration::from_secs(5);

/// The lock feature's state in one session.
pub struct LockTracing {
    probes: LockProbes,
    /// Link-time PC where each wait kind's stacks are taken: a recorded
    /// stack's frame 0 is that PC, which gives a PIE's load bias.
    entries: HashMap<u32, u64>,
    bias: Cell<Option<u64>>,
    data_syms: OnceCell<DataSymbols>,
    stuck: StuckWaits,
    /// Where the runtime keeps its own lock-wait total, or why it cannot be read.
    totals: OnceCell<Result<RuntimeTotals, String>>,
    /// The last total read per pid (and, for a PIE, its load bias). Kept
    /// after the process exits, which is when `tracer run` reports.
    runtime_wait: RefCell<HashMap<u32, RuntimeWait>>,
    totals_read_at: Cell<Option<Instant>>,
    /// Decides when the lock probes must pause; with what to re-attach them.
    guard: RateGuard,
    reattach: (PathBuf, Scope, bool, MutexExits),
    paused: bool,
}

/// The lock parts of one process's report.
pub struct LockParts {
    pub runtime_wait: RuntimeLockWait,
    pub locks: Vec<LockReport>,
    pub holders: Vec<HolderReport>,
    pub findings: Vec<Finding>,
}

impl LockTracing {
    /// Attaches the lock probes to `bin` at `path`; fails if any probe that
    /// was found could not be attached. Returns the probes' statuses too.
    pub fn start(
        tracer: &mut Tracer,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        holders: bool,
        exits: MutexExits,
        max_rate: u64,
    ) -> Result<(Self, Vec<ProbeStatus>)> {
        let mut probes = LockProbes::default();
        let statuses = probes.attach(tracer, bin, path, scope, holders, exits);
        if let Some(failed) = statuses.iter().find(|p| p.status == "failed") {
            anyhow::bail!(
                "could not attach {} probes: {}",
                failed.feature,
                failed.reason.as_deref().unwrap_or("unknown error")
            );
        }
        let entries = probes.stack_pcs().clone();
        let bias = if bin.is_pie() { None } else { Some(0) };
        let locks = Self {
            probes,
            entries,
            bias: Cell::new(bias),
            data_syms: OnceCell::new(),
            stuck: StuckWaits::default(),
            totals: OnceCell::new(),
            runtime_wait: RefCell::default(),
            totals_read_at: Cell::new(None),
            guard: RateGuard::new(max_rate, LOCK_PAUSE),
            reattach: (path.to_path_buf(), scope, holders, exits),
            paused: false,
        };
        Ok((locks, statuses))
    }

    /// The load bias, once known (always for non-PIE).
    pub fn known_bias(&self) -> Option<u64> {
        self.bias.get()
    }

    /// Load bias of the process: 0 unless PIE, where it is learnt from the first
    /// recorded stack (frame 0 is the probed PC).
    fn bias(&self, tracer: &Tracer, keys: impl Iterator<Item = (u32, i64)>) -> u64 {
        if let Some(b) = self.bias.get() {
            return b;
        }
        for (kind, stack_id) in keys {
            let Some(&entry) = self.entries.get(&kind) else {
                continue;
            };
            if let Some(f0) = read::stack(tracer, stack_id).and_then(|s| s.first().copied()) {
                let b = bias_from_entry_frame(f0, entry);
                self.bias.set(Some(b));
                return b;
            }
        }
        0
    }

    /// Name of the global variable at runtime address `addr`, if it is one.
    fn lock_name(&self, bin: &GoBinary, addr: u64, bias: u64) -> Option<String> {
        self.data_syms
            .get_or_init(|| DataSymbols::parse(bin.data()))
            .name_of(addr.wrapping_sub(bias))
    }

    /// Applies the rate guard: detaches the lock probes while contended waits
    /// come faster than the limit, and re-attaches them after a pause.
    fn guard(&mut self, tracer: &mut Tracer, bin: &GoBinary) {
        let Ok(count) = read::wait_count(tracer) else {
            return;
        };
        match self.guard.observe(Instant::now(), count) {
            Action::Keep => {}
            Action::Pause => {
                tracing::warn!(
                    "more than {} contended waits/s: pausing lock probes for {}s to protect the program",
                    self.guard.limit(),
                    LOCK_PAUSE.as_secs()
                );
                match self.probes.detach(tracer) {
                    Ok(()) => self.paused = true,
                    Err(e) => tracing::warn!("could not pause lock probes: {e:#}"),
                }
            }
            Action::Resume => {
                let (path, scope, holders, exits) = self.reattach.clone();
                let statuses = self
                    .probes
                    .attach(tracer, bin, &path, scope, holders, exits);
                if let Some(f) = statuses.iter().find(|p| p.status == "failed") {
                    tracing::warn!(
                        "re-attaching lock probes failed: {}",
                        f.reason.as_deref().unwrap_or("")
                    );
                }
                self.paused = false;
            }
        }
    }

    /// Reads the runtime's own lock-wait total of every traced process, at
    /// most once per [`RUNTIME_TOTAL_EVERY`].
    pub fn read_runtime_totals(&self, tracer: &Tracer, bin: &GoBinary) {
        let now = Instant::now();
        if self
            .totals_read_at
            .get()
            .is_some_and(|t| now.duration_since(t) < RUNTIME_TOTAL_EVERY)
        {
            return;
        }
        self.totals_read_at.set(Some(now));
        let totals = self.totals.get_or_init(|| {
            RuntimeTotals::new(
                bin,
                self.data_syms
                    .get_or_init(|| DataSymbols::parse(bin.data())),
            )
        });
        let Ok(totals) = totals else {
            return;
        };
        let mut seen = self.runtime_wait.borrow_mut();
        for pid in tracer.targets() {
            let bias = match seen.get(&pid) {
                Some(w) => w.bias,
                None if !bin.is_pie() => Some(0),
                None => crate::process::procfs::exe_mapping_start(pid)
                    .map(|start| start.wrapping_sub(bin.image_base())),
            };
            let Some(bias) = bias else { continue };
            let entry = seen.entry(pid).or_insert(RuntimeWait {
                bias: Some(bias),
                total: Err("not read yet".into()),
            });
            match totals.read(pid, bias) {
                Ok(t) => entry.total = Ok(t),
                // Keep the last good value: the process may just have exited.
                Err(e) if entry.total.is_err() => entry.total = Err(e),
                Err(_) => {}
            }
        }
    }

    /// The runtime's lock-wait total of `pid`, beside the probed total.
    fn runtime_wait_of(&self, pid: u32, probed_ns: u64) -> RuntimeLockWait {
        let source = || match self.totals.get() {
            Some(Err(e)) => Err(e.clone()),
            None => Err("not read yet".to_string()),
            Some(Ok(_)) => match self.runtime_wait.borrow().get(&pid) {
                Some(w) => w.total.clone(),
                None => Err("not read yet".to_string()),
            },
        };
        match source() {
            Ok(total) => RuntimeLockWait {
                total_ns: Some(total),
                probed_ns,
                reason: None,
            },
            Err(why) => RuntimeLockWait {
                total_ns: None,
                probed_ns,
                reason: Some(why),
            },
        }
    }

    /// Applies the rate guard, then scans the waits in progress for stuck
    /// waiters (unless the probes are paused).
    pub fn scan_stuck(&mut self, tracer: &mut Tracer, bin: &GoBinary, threshold: Duration) {
        self.read_runtime_totals(tracer, bin);
        self.guard(tracer, bin);
        if self.paused {
            return;
        }
        let Ok(mut inflight) = read::inflight(tracer) else {
            return;
        };
        let now = monotonic_ns();
        let threshold = threshold.as_nanos() as u64;
        let park = park_check(bin);
        // Only old waits are worth the two reads of the goroutine.
        inflight.retain(|(k, r)| {
            r.state != WAIT_AWAKE
                && (now.saturating_sub(r.start_ns) < threshold
                    || park
                        .as_ref()
                        .and_then(|p| p.parked_on_lock(k.tgid, k.g))
                        .unwrap_or(true))
        });
        let goid_off = bin.offsets().g_goid.map(|o| o.value);
        self.stuck.update(&inflight, now, threshold, |k| {
            read_goid(k.tgid, k.g, goid_off?)
        });
    }

    /// Marks which stuck waits had ended when the process exited.
    pub fn settle_stuck(&mut self, tracer: &Tracer) {
        if let Ok(mut inflight) = read::inflight(tracer) {
            inflight.retain(|(_, r)| r.state != WAIT_AWAKE);
            self.stuck.settle(&inflight);
        }
    }

    /// Forgets the stuck waits of a process that is gone.
    pub fn forget_pid(&mut self, pid: u32) {
        self.stuck.forget(pid);
        self.runtime_wait.borrow_mut().remove(&pid);
    }

    /// Stuck waits of `pid` left out of the findings.
    pub fn stuck_dropped(&self, pid: u32) -> u64 {
        self.stuck.dropped(pid)
    }

    /// Times the rate guard paused the probes, if it did.
    pub fn pauses(&self) -> Option<LockPauses> {
        let (pauses, paused) = self.guard.paused(Instant::now());
        (pauses > 0).then(|| LockPauses {
            pauses,
            paused_ns: paused.as_nanos() as u64,
            limit_per_sec: self.guard.limit(),
        })
    }

    /// The rows, holders and stuck-wait findings of `pid`, from `tables`.
    pub fn report_for(
        &self,
        tracer: &Tracer,
        bin: &GoBinary,
        tables: &LockTables,
        pid: u32,
    ) -> LockParts {
        let waits: Vec<_> = tables
            .waits
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .cloned()
            .collect();
        let stuck: Vec<_> = self
            .stuck
            .iter()
            .filter(|w| w.key.tgid == pid)
            .cloned()
            .collect();
        let bias = self.bias(
            tracer,
            waits
                .iter()
                .map(|(k, _)| (k.kind, k.stack_id))
                .chain(stuck.iter().map(|w| (w.rec.kind, w.rec.stack_id))),
        );
        let sym = Symbolizer { bin, bias };
        let stack_of = |id| read::stack(tracer, id);
        let waiters: Vec<_> = tables
            .waiters
            .iter()
            .filter(|w| w.tgid == pid)
            .copied()
            .collect();
        let waiters = waiters_by_site(&waiters);
        let mut rows = build_rows(&waits, &waiters, &sym, stack_of);
        for r in &mut rows {
            r.name = self.lock_name(bin, r.address, bias);
        }
        let wakes: Vec<_> = tables
            .wakes
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .copied()
            .collect();
        let holders = build_holders(&wakes, &sym, stack_of)
            .into_iter()
            .map(|mut h| {
                h.name = self.lock_name(bin, h.address, bias);
                HolderReport::from(&h)
            })
            .collect();
        let findings = stuck
            .iter()
            .map(|w| {
                let stack = read::stack(tracer, w.rec.stack_id);
                let Located {
                    kind,
                    address,
                    stack: frames,
                    ..
                } = locate(
                    &sym,
                    w.rec.kind,
                    w.rec.lock_addr,
                    w.rec.caller_pc,
                    stack.as_deref(),
                );
                Finding {
                    kind: "stuck_lock_wait",
                    pid: w.key.tgid,
                    goroutine: w.goid,
                    lock: LockRef {
                        address: format!("{address:#x}"),
                        kind,
                        name: self.lock_name(bin, address, bias),
                    },
                    age_ns: w.age_ns,
                    ongoing: w.ongoing,
                    site: frames.first().cloned(),
                    stack: frames,
                }
            })
            .collect();
        let probed_ns = rows.iter().map(|r| r.latency.total_ns).sum();
        LockParts {
            runtime_wait: self.runtime_wait_of(pid, probed_ns),
            locks: rows.iter().map(LockReport::from).collect(),
            holders,
            findings,
        }
    }
}
