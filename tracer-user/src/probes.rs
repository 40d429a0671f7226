//! Loads tracer's eBPF object and attaches its uprobes to a Go binary.
//!
//! Entry probes go on the function's first instruction and exit probes on each
//! of its RET instructions (found by decoding the function body); never a
//! uretprobe, which rewrites return addresses on goroutine stacks that the Go
//! runtime later copies, and crashes the program.

use std::{num::NonZeroU32, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use serde::Serialize;
use tracer_common::{
    Inflight, InflightKey, LockKey, WaitStats, WaiterKey,
    lock::{KIND_MUTEX, KIND_MUTEX_UNLOCK, KIND_RW_READ, KIND_RW_RUNLOCK, KIND_RW_WRITE},
};

use crate::{
    gobin::{Function, GoBinary},
    latency::Latency,
};

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Whether one feature's probes are live, and if not, why.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    /// Feature, e.g. `mutex`.
    pub feature: String,
    /// Function probed, when one was found.
    pub function: Option<String>,
    /// `attached`, `missing` or `failed`.
    pub status: &'static str,
    /// Number of RET sites probed for exits.
    pub ret_sites: usize,
    pub reason: Option<String>,
    /// Wait kind the probes record (`tracer_common::lock::KIND_*`).
    #[serde(skip)]
    pub kind: u32,
}

/// Kernel-measured cost of one probe program.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramStats {
    pub program: String,
    /// Times the program ran (probe hits that passed to BPF).
    pub run_count: u64,
    /// Total time spent in the program, ns (excludes the uprobe trap itself).
    pub run_time_ns: u64,
}

/// Turns on the kernel's BPF run-time statistics until the returned fd is dropped.
pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")
}

/// Deletes the entries of a (LRU) hash table whose key matches `dead`.
pub(crate) fn purge_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    dead: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?,
    )?;
    let keys: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| dead(k))
        .collect();
    for k in keys {
        // Already gone (evicted, or removed by the kernel side) is fine.
        let _ = m.remove(&k);
    }
    Ok(())
}

/// [`purge_hash`] for per-CPU hash tables.
pub(crate) fn purge_per_cpu<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    dead: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut m: PerCpuHashMap<&mut MapData, K, V> = PerCpuHashMap::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing"))?,
    )?;
    let keys: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| dead(k))
        .collect();
    for k in keys {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// Where probes on a binary fire: one process, or every process running it.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    Pid(u32),
    AllProcesses,
}

impl Scope {
    pub(crate) fn uprobe_scope(self) -> UProbeScope {
        match self {
            Scope::Pid(pid) => {
                NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess)
            }
            Scope::AllProcesses => UProbeScope::AllProcesses,
        }
    }
}

/// Loaded eBPF programs and maps.
pub struct Tracer {
    /// Crate-visible so feature modules (maps, later TCP) attach their own programs.
    pub(crate) ebpf: Ebpf,
    /// Links of the lock probes, so the rate guard can detach them.
    lock_links: Vec<(&'static str, UProbeLinkId)>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// One kind of lock wait and the functions whose entry-to-return time it is.
struct LockFeature {
    feature: &'static str,
    kind: u32,
    /// Candidates, newest Go first; the first present is probed.
    functions: &'static [&'static str],
    /// Why a program would lack them, for the "missing" message.
    unused: &'static str,
    /// Waits get an entry probe and exit probes on every RET; unlock slow
    /// paths only an entry probe (a count and a stack, no duration).
    timed: bool,
}

/// The Mutex slow path moved to `internal/sync` in Go 1.24; the RWMutex
/// semaphore waits are the runtime's linknamed entry points in every version
/// since 1.20. Only contended operations reach any of them.
const MUTEX_SLOW_PATHS: &[&str] = &["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).lockSlow"];
const LOCK_FEATURES: [LockFeature; 3] = [
    LockFeature {
        feature: "mutex",
        kind: KIND_MUTEX,
        functions: MUTEX_SLOW_PATHS,
        unused: "blocks on a sync.Mutex",
        timed: true,
    },
    LockFeature {
        feature: "rwmutex_read",
        kind: KIND_RW_READ,
        functions: &["sync.runtime_SemacquireRWMutexR"],
        unused: "makes RLock wait for a writer",
        timed: true,
    },
    LockFeature {
        feature: "rwmutex_write",
        kind: KIND_RW_WRITE,
        functions: &["sync.runtime_SemacquireRWMutex"],
        unused: "makes Lock wait for readers",
        timed: true,
    },
];

/// Unlock slow paths: reached only when waiters must be woken, so their callers
/// are the code that held a contended lock (`--holders`).
const HOLDER_FEATURES: [LockFeature; 2] = [
    LockFeature {
        feature: "mutex_unlock",
        kind: KIND_MUTEX_UNLOCK,
        functions: &[
            "internal/sync.(*Mutex).unlockSlow",
            "sync.(*Mutex).unlockSlow",
        ],
        unused: "unlocks a sync.Mutex with waiters",
        timed: false,
    },
    LockFeature {
        feature: "rwmutex_runlock",
        kind: KIND_RW_RUNLOCK,
        functions: &["sync.(*RWMutex).rUnlockSlow"],
        unused: "has RUnlock wake a waiting writer",
        timed: false,
    },
];

/// The mutex slow path of this binary, if linked.
pub fn mutex_slow_path(bin: &GoBinary) -> Option<Function> {
    MUTEX_SLOW_PATHS.iter().find_map(|n| bin.function(n))
}

impl Tracer {
    /// Loads the eBPF object into the kernel. Fails, rather than continuing with
    /// nothing traced, when the kernel refuses it.
    pub fn load() -> Result<Self> {
        Self::load_with(true)
    }

    /// Loads the object; without `tcp`, the TCP flow tables are created at a
    /// token size, so a session that does not trace TCP does not pin ~25 MB of
    /// kernel memory for them.
    pub fn load_with(tcp: bool) -> Result<Self> {
        Self::load_sized(tcp, &[])
    }

    /// Like [`Tracer::load_with`], with the named kernel tables created at the
    /// given sizes: the agent loads one object per traced process and one for
    /// discovery, and each must not pin tens of MB of kernel memory.
    pub fn load_sized(tcp: bool, sizes: &[(&str, u32)]) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this tracer was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild after `cargo xtask setup`"
            );
        }
        let mut loader = EbpfLoader::new();
        if !tcp {
            for map in ["TCP_FLOWS", "TCP_SOCKS"] {
                loader.map_max_entries(map, 64);
            }
            // A ring buffer's size is in bytes, a power-of-two number of pages.
            loader.map_max_entries("TCP_CLOSED_RB", 4096);
        }
        for (map, size) in sizes {
            loader.map_max_entries(map, *size);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading tracer's eBPF object into the kernel")?;
        // Debug logs from the probes; absent when no program logs.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        for name in ["lock_enter", "lock_exit", "unlock_slow"] {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF object lacks program {name}"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying eBPF program {name}"))?;
        }
        Ok(Self {
            ebpf,
            logger,
            lock_links: Vec::new(),
        })
    }

    /// Forwards debug logs written by the probes (aya-log) to `tracing`.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Adds `pid` to the processes whose probe hits are recorded.
    pub fn add_target(&mut self, pid: u32) -> Result<()> {
        let mut targets: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("TARGETS")
                .ok_or_else(|| anyhow!("TARGETS map missing"))?,
        )?;
        targets.insert(pid, 1, 0).context("adding target pid")?;
        Ok(())
    }

    /// Attaches every lock probe to `bin`, found at `path`: one status per
    /// feature. A binary without a function (it never blocks on that kind of
    /// lock, so the linker dropped it) is not an error: the status says so and
    /// the rest of tracing goes on.
    /// With `holders`, the unlock slow paths are probed too.
    pub fn attach_locks(
        &mut self,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        holders: bool,
    ) -> Vec<ProbeStatus> {
        let extra: &[LockFeature] = if holders { &HOLDER_FEATURES } else { &[] };
        LOCK_FEATURES
            .iter()
            .chain(extra)
            .map(|feat| self.attach_lock_feature(bin, path, scope, feat))
            .collect()
    }

    fn attach_lock_feature(
        &mut self,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        feat: &LockFeature,
    ) -> ProbeStatus {
        let status = |function: Option<String>, status, ret_sites, reason| ProbeStatus {
            feature: feat.feature.into(),
            function,
            status,
            ret_sites,
            reason,
            kind: feat.kind,
        };
        let Some(func) = feat.functions.iter().find_map(|n| bin.function(n)) else {
            return status(
                None,
                "missing",
                0,
                Some(format!(
                    "{} not in this Go {} binary (it never {}, so the function was not linked): {} waits are not traced",
                    feat.functions.join(" / "),
                    bin.go_version(),
                    feat.unused,
                    feat.feature
                )),
            );
        };
        let name = func.name.clone();
        let attached = if feat.timed {
            self.attach_entry_and_returns(bin, &func, path, scope, feat.kind)
        } else {
            self.attach_entry("unlock_slow", &func, path, scope, feat.kind)
                .map(|()| 0)
        };
        match attached {
            Ok(n) => status(Some(name), "attached", n, None),
            Err(e) => status(Some(name), "failed", 0, Some(format!("{e:#}"))),
        }
    }

    fn attach_entry(
        &mut self,
        prog: &'static str,
        func: &Function,
        path: &Path,
        scope: Scope,
        cookie: u32,
    ) -> Result<()> {
        let p: &mut UProbe = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("{prog} missing"))?
            .try_into()?;
        let link = p
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(func.file_offset),
                    cookie: Some(cookie as u64),
                },
                path,
                scope.uprobe_scope(),
            )
            .with_context(|| format!("attaching uprobe to {} in {}", func.name, path.display()))?;
        self.lock_links.push((prog, link));
        Ok(())
    }

    fn attach_entry_and_returns(
        &mut self,
        bin: &GoBinary,
        func: &Function,
        path: &Path,
        scope: Scope,
        cookie: u32,
    ) -> Result<usize> {
        let rets = bin
            .return_offsets(func)
            .with_context(|| format!("finding RET sites of {}", func.name))?;
        if rets.is_empty() {
            bail!(
                "no RET instruction found in {}; refusing to attach an entry probe without exits",
                func.name
            );
        }
        let point = |off: u64| UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(off),
            cookie: Some(cookie as u64),
        };
        // Exits first: an entry probe live before its exits would record waits
        // whose end is never seen, and report them as stuck.
        let exit: &mut UProbe = self
            .ebpf
            .program_mut("lock_exit")
            .ok_or_else(|| anyhow!("lock_exit missing"))?
            .try_into()?;
        for off in &rets {
            let link = exit
                .attach(point(func.file_offset + off), path, scope.uprobe_scope())
                .with_context(|| format!("attaching uprobe to RET at {}+{off:#x}", func.name))?;
            self.lock_links.push(("lock_exit", link));
        }
        let enter: &mut UProbe = self
            .ebpf
            .program_mut("lock_enter")
            .ok_or_else(|| anyhow!("lock_enter missing"))?
            .try_into()?;
        let link = enter
            .attach(point(func.file_offset), path, scope.uprobe_scope())
            .with_context(|| format!("attaching uprobe to {} in {}", func.name, path.display()))?;
        self.lock_links.push(("lock_enter", link));
        Ok(rets.len())
    }

    /// Detaches every lock probe (entries first) and forgets the waits in
    /// flight, whose exits will now never be seen.
    pub fn detach_locks(&mut self) -> Result<()> {
        let mut links = std::mem::take(&mut self.lock_links);
        links.sort_by_key(|(prog, _)| *prog != "lock_enter");
        for (prog, link) in links {
            let p: &mut UProbe = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("{prog} missing"))?
                .try_into()?;
            p.detach(link)
                .with_context(|| format!("detaching {prog}"))?;
        }
        let mut inflight: HashMap<&mut MapData, InflightKey, Inflight> = HashMap::try_from(
            self.ebpf
                .map_mut("LOCK_INFLIGHT")
                .ok_or_else(|| anyhow!("LOCK_INFLIGHT map missing"))?,
        )?;
        let keys: Vec<InflightKey> = inflight.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = inflight.remove(&k);
        }
        Ok(())
    }

    /// Stops recording `pid` and deletes its entries from the lock tables,
    /// so a binary's long-lived object does not fill with the dead.
    pub fn forget_pid(&mut self, pid: u32) -> Result<()> {
        let e = &mut self.ebpf;
        purge_hash::<u32, u8>(e, "TARGETS", |k| *k == pid)?;
        purge_per_cpu::<LockKey, WaitStats>(e, "LOCK_WAITS", |k| k.tgid == pid)?;
        purge_per_cpu::<LockKey, u64>(e, "UNLOCK_WAKES", |k| k.tgid == pid)?;
        purge_hash::<WaiterKey, u8>(e, "LOCK_WAITERS", |k| k.tgid == pid)?;
        purge_hash::<InflightKey, Inflight>(e, "LOCK_INFLIGHT", |k| k.tgid == pid)?;
        Ok(())
    }

    /// Waits completed so far, all locks and sites together (one per-CPU
    /// counter: cheap enough for the rate guard's 250 ms scans).
    pub fn lock_wait_count(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("LOCK_WAIT_TOTAL")
                .ok_or_else(|| anyhow!("LOCK_WAIT_TOTAL map missing"))?,
        )?;
        Ok(map
            .get(&0, 0)
            .context("reading LOCK_WAIT_TOTAL")?
            .iter()
            .sum())
    }

    /// Current per-(process, lock, site, stack) waits, summed over CPUs.
    pub fn lock_waits(&self) -> Result<Vec<(LockKey, Latency)>> {
        let map: PerCpuHashMap<&MapData, LockKey, WaitStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map("LOCK_WAITS")
                .ok_or_else(|| anyhow!("LOCK_WAITS map missing"))?,
        )?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (k, per_cpu) = item.context("reading LOCK_WAITS")?;
            let mut l = Latency::default();
            for v in per_cpu.iter() {
                l.add(v);
            }
            out.push((k, l));
        }
        Ok(out)
    }

    /// Run counts and run time of each probe program; non-zero only while the
    /// kernel's BPF statistics are enabled (see [`enable_bpf_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// Unlocks that woke waiters, per (process, lock, unlocker site, stack).
    pub fn unlock_wakes(&self) -> Result<Vec<(LockKey, u64)>> {
        let map: PerCpuHashMap<&MapData, LockKey, u64> = PerCpuHashMap::try_from(
            self.ebpf
                .map("UNLOCK_WAKES")
                .ok_or_else(|| anyhow!("UNLOCK_WAKES map missing"))?,
        )?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (k, per_cpu) = item.context("reading UNLOCK_WAKES")?;
            out.push((k, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// (process, lock, call site, goroutine) of finished waits.
    pub fn lock_waiters(&self) -> Result<Vec<WaiterKey>> {
        let map: HashMap<&MapData, WaiterKey, u8> = HashMap::try_from(
            self.ebpf
                .map("LOCK_WAITERS")
                .ok_or_else(|| anyhow!("LOCK_WAITERS map missing"))?,
        )?;
        Ok(map.keys().filter_map(|r| r.ok()).collect())
    }

    /// Waits in progress (entered, not yet returned).
    pub fn lock_inflight(&self) -> Result<Vec<(InflightKey, Inflight)>> {
        let map: HashMap<&MapData, InflightKey, Inflight> = HashMap::try_from(
            self.ebpf
                .map("LOCK_INFLIGHT")
                .ok_or_else(|| anyhow!("LOCK_INFLIGHT map missing"))?,
        )?;
        // Entries can vanish while we iterate (a wait ends); skip those errors.
        Ok(map.iter().filter_map(|r| r.ok()).collect())
    }

    /// Return addresses of a user stack recorded by the lock probes, innermost first.
    pub fn lock_stack(&self, stack_id: i64) -> Option<Vec<u64>> {
        let id = u32::try_from(stack_id).ok()?;
        let map: StackTraceMap<&MapData> =
            StackTraceMap::try_from(self.ebpf.map("LOCK_STACKS")?).ok()?;
        let st = map.get(&id, 0).ok()?;
        Some(st.frames().iter().map(|f| f.ip).collect())
    }
}
