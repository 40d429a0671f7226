//! Reading the lock tables the kernel fills, and freeing a dead process's
//! entries in them.

use anyhow::{Context, Result, anyhow};
use aya::maps::{MapData, PerCpuArray, StackTraceMap};
use tracer_common::names;
use tracer_common::{
    Inflight, InflightKey, LockKey, WaitStats, WaiterKey,
    lock::{Handoff, HandoffKey},
};

use crate::{
    ebpf::{Tracer, purge_hash, purge_per_cpu},
    latency::Latency,
};

/// Deletes `pid`'s entries from the lock tables, so a binary's long-lived
/// object does not fill with the dead.
pub fn forget_pid(tracer: &mut Tracer, pid: u32) -> Result<()> {
    let e = &mut tracer.ebpf;
    purge_per_cpu::<LockKey, WaitStats>(e, names::map::LOCK_WAITS, |k| k.tgid == pid)?;
    purge_per_cpu::<LockKey, u64>(e, names::map::UNLOCK_WAKES, |k| k.tgid == pid)?;
    purge_hash::<WaiterKey, u8>(e, names::map::LOCK_WAITERS, |k| k.tgid == pid)?;
    purge_hash::<InflightKey, Inflight>(e, names::map::LOCK_INFLIGHT, |k| k.tgid == pid)?;
    purge_hash::<HandoffKey, Handoff>(e, names::map::LOCK_HANDOFFS, |k| k.tgid == pid)?;
    Ok(())
}

/// Forgets every wait in flight of this object's processes (their exits
/// will never be seen).
pub(super) fn clear_inflight(tracer: &mut Tracer) -> Result<()> {
    tracer.purge_own::<InflightKey, Inflight>(names::map::LOCK_INFLIGHT, |k| k.tgid)
}

/// Waits completed so far, all locks and sites together (one per-CPU
/// counter: cheap enough for the rate guard's 250 ms scans).
pub fn wait_count(tracer: &Tracer) -> Result<u64> {
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        tracer
            .ebpf
            .map(names::map::LOCK_WAIT_TOTAL)
            .ok_or_else(|| anyhow!("LOCK_WAIT_TOTAL map missing"))?,
    )?;
    Ok(map
        .get(&0, 0)
        .context("reading LOCK_WAIT_TOTAL")?
        .iter()
        .sum())
}

/// This object's rows of the per-CPU hash table `name`, values per CPU folded.
fn per_cpu_entries<V: aya::Pod, T>(
    tracer: &Tracer,
    name: &str,
    fold: impl Fn(&[V]) -> T,
) -> Result<Vec<(LockKey, T)>> {
    Ok(tracer
        .per_cpu_rows::<LockKey, V>(name, |k| k.tgid)?
        .into_iter()
        .map(|(k, per_cpu)| (k, fold(&per_cpu)))
        .collect())
}

/// Current per-(process, lock, site, stack) waits, summed over CPUs.
pub fn waits(tracer: &Tracer) -> Result<Vec<(LockKey, Latency)>> {
    per_cpu_entries(tracer, names::map::LOCK_WAITS, |per_cpu: &[WaitStats]| {
        let mut l = Latency::default();
        for v in per_cpu {
            l.add(v);
        }
        l
    })
}

/// Unlocks that woke waiters, per (process, lock, unlocker site, stack).
pub fn unlock_wakes(tracer: &Tracer) -> Result<Vec<(LockKey, u64)>> {
    per_cpu_entries(tracer, names::map::UNLOCK_WAKES, |per_cpu: &[u64]| {
        per_cpu.iter().sum()
    })
}

/// (process, lock, call site, goroutine) of finished waits.
pub fn waiters(tracer: &Tracer) -> Result<Vec<WaiterKey>> {
    tracer.hash_keys::<WaiterKey, u8>(names::map::LOCK_WAITERS, |k| k.tgid)
}

/// Waits in progress (entered, not yet returned).
pub fn inflight(tracer: &Tracer) -> Result<Vec<(InflightKey, Inflight)>> {
    tracer.hash_rows(names::map::LOCK_INFLIGHT, |k: &InflightKey| k.tgid)
}

/// Return addresses of a user stack recorded by the lock probes, innermost first.
pub fn stack(tracer: &Tracer, stack_id: i64) -> Option<Vec<u64>> {
    let id = u32::try_from(stack_id).ok()?;
    let map: StackTraceMap<&MapData> =
        StackTraceMap::try_from(tracer.ebpf.map(names::map::LOCK_STACKS)?).ok()?;
    let st = map.get(&id, 0).ok()?;
    Some(st.frames().iter().map(|f| f.ip).collect())
}

/// One read of the lock tables a report is built from.
pub struct LockTables {
    pub waits: Vec<(LockKey, Latency)>,
    pub waiters: Vec<WaiterKey>,
    pub wakes: Vec<(LockKey, u64)>,
}

impl LockTables {
    pub fn read(tracer: &Tracer) -> Result<Self> {
        Ok(Self {
            waits: waits(tracer)?,
            waiters: waiters(tracer)?,
            wakes: unlock_wakes(tracer)?,
        })
    }
}
