//! The lock probes: which Go functions each kind of lock wait is measured
//! on, attaching them, and reading the lock tables back.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap};
use tracer_common::{
    Inflight, InflightKey, LockKey, WaitStats, WaiterKey,
    lock::{KIND_MUTEX, KIND_MUTEX_UNLOCK, KIND_RW_READ, KIND_RW_RUNLOCK, KIND_RW_WRITE},
};

use crate::{
    ebpf::{ProbeStatus, Scope, Tracer, purge_hash, purge_per_cpu},
    gobin::{Function, GoBinary},
    latency::Latency,
};

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
        let link = self
            .attach_uprobe(prog, func.file_offset, cookie, path, scope)
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
        // Exits first: an entry probe live before its exits would record waits
        // whose end is never seen, and report them as stuck.
        for off in &rets {
            let link = self
                .attach_uprobe("lock_exit", func.file_offset + off, cookie, path, scope)
                .with_context(|| format!("attaching uprobe to RET at {}+{off:#x}", func.name))?;
            self.lock_links.push(("lock_exit", link));
        }
        self.attach_entry("lock_enter", func, path, scope, cookie)?;
        Ok(rets.len())
    }

    /// Detaches every lock probe (entries first) and forgets the waits in
    /// flight, whose exits will now never be seen.
    pub fn detach_locks(&mut self) -> Result<()> {
        let mut links = std::mem::take(&mut self.lock_links);
        links.sort_by_key(|(prog, _)| *prog != "lock_enter");
        for (prog, link) in links {
            self.uprobe(prog)?
                .detach(link)
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
