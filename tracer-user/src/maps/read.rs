//! Reads the map feature's BPF maps: per-CPU values summed, records decoded.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap};
use tracer_common::{
    LockKey, WaitStats, WaiterKey,
    maps::{
        ConflictKey, ConflictStats, EVENT_FATAL, FATAL_MSG_LEN, FatalEvent, GrowthKey, GrowthStats,
        LOST_SLOTS, MapsConfig,
    },
};

use crate::{ebpf::Tracer, latency::Latency};

/// Registers `pid` with its binary's offsets: from now on the map probes
/// record its hits.
pub fn add_target(tracer: &mut Tracer, pid: u32, cfg: MapsConfig) -> Result<()> {
    let mut m: BpfHashMap<_, u32, MapsConfig> = BpfHashMap::try_from(
        tracer
            .ebpf
            .map_mut(tracer_common::names::map::MAP_CONFIG)
            .ok_or_else(|| anyhow!("MAP_CONFIG map missing"))?,
    )?;
    m.insert(pid, cfg, 0)
        .context("adding target pid to MAP_CONFIG")?;
    Ok(())
}

/// Takes the fatal-event ring buffer out of the object so it can be polled.
pub fn take_ring(tracer: &mut Tracer) -> Result<RingBuf<aya::maps::MapData>> {
    take_named_ring(tracer, tracer_common::names::map::MAP_EVENTS)
}

/// Takes the ring buffer `name` out of the object, to drain it.
pub fn take_named_ring(tracer: &mut Tracer, name: &str) -> Result<RingBuf<aya::maps::MapData>> {
    let map = tracer
        .ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("{name} ring buffer missing"))?;
    RingBuf::try_from(map).with_context(|| format!("opening the {name} ring buffer"))
}

/// A fatal runtime error as decoded from the ring buffer.
#[derive(Clone, Debug)]
pub struct Fatal {
    pub tgid: u32,
    pub cookie: u32,
    pub g: u64,
    pub goid: Option<u64>,
    pub caller_pc: u64,
    pub stack_id: i64,
    pub ktime_ns: u64,
    pub message: String,
}

/// Decodes one ring-buffer record; None for records of another kind or size.
pub fn decode_fatal(bytes: &[u8]) -> Option<Fatal> {
    if bytes.len() < size_of::<FatalEvent>() {
        return None;
    }
    // SAFETY: the length was checked; FatalEvent is plain integers, any bit
    // pattern is valid; read_unaligned copes with the buffer's alignment.
    let ev: FatalEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if ev.kind != EVENT_FATAL {
        return None;
    }
    let n = (ev.msg_len.min(FATAL_MSG_LEN as u64)) as usize;
    let mut message = String::from_utf8_lossy(&ev.msg[..n]).into_owned();
    if ev.msg_len > FATAL_MSG_LEN as u64 {
        message.push('…');
    }
    Some(Fatal {
        tgid: ev.tgid,
        cookie: ev.func,
        g: ev.g,
        goid: (ev.goid != u64::MAX).then_some(ev.goid),
        caller_pc: ev.caller_pc,
        stack_id: ev.stack_id,
        ktime_ns: ev.ktime_ns,
        message,
    })
}

/// Lost-event counters, by `LOST_*` slot, summed over CPUs.
pub fn lost(tracer: &Tracer) -> Result<[u64; LOST_SLOTS as usize]> {
    let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        tracer
            .ebpf
            .map(tracer_common::names::map::MAP_LOST)
            .ok_or_else(|| anyhow!("MAP_LOST map missing"))?,
    )?;
    let mut out = [0u64; LOST_SLOTS as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let v = arr.get(&(i as u32), 0).context("reading MAP_LOST")?;
        *slot = v.iter().sum();
    }
    Ok(out)
}

/// Growth per (process, map, site, stack), summed over CPUs; the last count
/// is the one from the CPU that saw the latest growth.
pub fn growth(tracer: &Tracer) -> Result<Vec<(GrowthKey, GrowthStats)>> {
    let rows = tracer
        .per_cpu_rows::<GrowthKey, GrowthStats>(tracer_common::names::map::MAP_GROWTH, |k| {
            k.tgid
        })?;
    let mut out = Vec::new();
    for (k, per_cpu) in rows {
        let mut sum = GrowthStats::default();
        for v in per_cpu.iter().filter(|v| v.events > 0) {
            sum.events += v.events;
            sum.max_count = sum.max_count.max(v.max_count);
            if v.last_ns >= sum.last_ns {
                sum.last_ns = v.last_ns;
                sum.last_count = v.last_count;
            }
        }
        out.push((k, sum));
    }
    Ok(out)
}

/// Deep-tier latency per (process, kind, map, site, stack).
pub fn ops(tracer: &Tracer) -> Result<Vec<(LockKey, Latency)>> {
    let rows = tracer
        .per_cpu_rows::<LockKey, WaitStats>(tracer_common::names::map::MAP_OPS, |k| k.tgid)?;
    Ok(rows
        .into_iter()
        .map(|(k, per_cpu)| {
            let mut l = Latency::default();
            for v in per_cpu.iter() {
                l.add(v);
            }
            (k, l)
        })
        .collect())
}

/// Distinct goroutines per (process, kind, map).
pub fn goroutines(tracer: &Tracer) -> Result<Vec<WaiterKey>> {
    tracer.hash_keys::<WaiterKey, u8>(tracer_common::names::map::MAP_OP_GS, |k| k.tgid)
}

/// Overlapping operations, summed over CPUs (first/last over all CPUs; the
/// goroutine ids from the CPU that saw the first occurrence).
pub fn conflicts(tracer: &Tracer) -> Result<Vec<(ConflictKey, ConflictStats)>> {
    let rows = tracer.per_cpu_rows::<ConflictKey, ConflictStats>(
        tracer_common::names::map::MAP_CONFLICTS,
        |k| k.tgid,
    )?;
    let mut out = Vec::new();
    for (k, per_cpu) in rows {
        let mut sum = ConflictStats {
            first_ns: u64::MAX,
            ..Default::default()
        };
        for v in per_cpu.iter().filter(|v| v.count > 0) {
            sum.count += v.count;
            if v.first_ns < sum.first_ns {
                sum.first_ns = v.first_ns;
                sum.goid_a = v.goid_a;
                sum.goid_b = v.goid_b;
            }
            sum.last_ns = sum.last_ns.max(v.last_ns);
        }
        if sum.count > 0 {
            out.push((k, sum));
        }
    }
    Ok(out)
}

/// Looks stacks up in `MAP_STACKS`, caching them.
pub struct Stacks<'a> {
    map: Option<StackTraceMap<&'a MapData>>,
    cache: std::cell::RefCell<HashMap<i64, Option<Vec<u64>>>>,
}

impl<'a> Stacks<'a> {
    pub fn new(tracer: &'a Tracer) -> Self {
        let map = tracer
            .ebpf
            .map(tracer_common::names::map::MAP_STACKS)
            .and_then(|m| StackTraceMap::try_from(m).ok());
        Stacks {
            map,
            cache: Default::default(),
        }
    }

    /// Return addresses of a recorded user stack, innermost first.
    pub fn get(&self, stack_id: i64) -> Option<Vec<u64>> {
        if let Some(s) = self.cache.borrow().get(&stack_id) {
            return s.clone();
        }
        let s = (|| {
            let id = u32::try_from(stack_id).ok()?;
            let st = self.map.as_ref()?.get(&id, 0).ok()?;
            Some(st.frames().iter().map(|f| f.ip).collect::<Vec<u64>>())
        })();
        self.cache.borrow_mut().insert(stack_id, s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(msg: &[u8], msg_len: u64) -> Vec<u8> {
        let mut ev = FatalEvent {
            kind: EVENT_FATAL,
            tgid: 7,
            tid: 8,
            func: 0x100,
            g: 0xc000001000,
            goid: 42,
            caller_pc: 0x401000,
            stack_id: 3,
            ktime_ns: 99,
            msg_len,
            msg: [0; FATAL_MSG_LEN],
        };
        ev.msg[..msg.len()].copy_from_slice(msg);
        // SAFETY: FatalEvent is repr(C) plain integers without padding.
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<FatalEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_fatal_event() {
        let f = decode_fatal(&event(b"concurrent map writes", 21)).expect("decodes");
        assert_eq!(f.message, "concurrent map writes");
        assert_eq!(
            (f.tgid, f.goid, f.stack_id, f.cookie),
            (7, Some(42), 3, 0x100)
        );
    }

    #[test]
    fn long_messages_are_cut_and_marked() {
        let f = decode_fatal(&event(&[b'x'; FATAL_MSG_LEN], 500)).expect("decodes");
        assert_eq!(f.message.chars().count(), FATAL_MSG_LEN + 1);
        assert!(f.message.ends_with('…'));
    }

    #[test]
    fn short_or_foreign_records_are_ignored() {
        assert!(decode_fatal(&[0u8; 16]).is_none());
        let mut b = event(b"x", 1);
        b[0] = 9;
        assert!(decode_fatal(&b).is_none());
    }
}
