//! sync.Map call counts and advice (deep tier only: every call is a probe
//! hit, ~20 µs here).
//!
//! An entry probe on each sync.Map method counts calls per (process, map,
//! method); the receiver is the map. Go ≤ 1.23 has the methods as
//! `sync.(*Map).*`; in Go ≥ 1.24 those are inlined wrappers over
//! `internal/sync.(*HashTrieMap[any, any]).*`, which are probed instead.
//! `Store` and `Delete` compile to calls of `Swap` and `LoadAndDelete` in
//! both, so each is counted with that method.
//!
//! On amd64 the probe sits right after the prologue's stack check, not on the
//! first instruction: a call that has to grow its stack runs the prologue
//! twice (`morestack` restarts the function), and an entry probe would count
//! it twice.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;
use tracer_common::maps::{
    SM_CLEAR, SM_COMPARE_AND_DELETE, SM_COMPARE_AND_SWAP, SM_DELETE_LOAD_AND_DELETE,
    SM_DIRTY_LOCKED, SM_LOAD, SM_LOAD_OR_STORE, SM_MISS_LOCKED, SM_RANGE, SM_STORE_SWAP,
    SyncMapKey,
};

use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::{Function, GoBinary},
};

pub const PROGRAM: &str = tracer_common::names::program::SYNC_MAP_CALL;

/// Methods, by their name after the receiver, and the `SM_*` counted.
const METHODS: [(&str, u32); 10] = [
    ("Load", SM_LOAD),
    ("Swap", SM_STORE_SWAP),
    ("LoadOrStore", SM_LOAD_OR_STORE),
    ("LoadAndDelete", SM_DELETE_LOAD_AND_DELETE),
    ("CompareAndSwap", SM_COMPARE_AND_SWAP),
    ("CompareAndDelete", SM_COMPARE_AND_DELETE),
    ("Range", SM_RANGE),
    ("Clear", SM_CLEAR),
    ("missLocked", SM_MISS_LOCKED),
    ("dirtyLocked", SM_DIRTY_LOCKED),
];

/// Receivers: classic `sync.Map`, and the HashTrieMap instance sync.Map
/// wraps in Go ≥ 1.24 (other instances belong to other packages).
const CLASSIC: &str = "sync.(*Map).";
const TRIE: &str = "internal/sync.(*HashTrieMap[go.shape.interface {},go.shape.interface {}]).";

/// Calls fewer than this give no advice.
pub const MIN_CALLS: u64 = 100;
/// Read share from which sync.Map fits.
pub const READ_MOSTLY: f64 = 0.9;
/// Read share under which the map is write-heavy.
pub const WRITE_HEAVY: f64 = 0.25;
/// Share of all calls from which Range dominates the advice.
pub const RANGE_HEAVY: f64 = 0.10;

/// Name reported for an `SM_*`.
pub fn method_name(m: u32) -> &'static str {
    match m {
        SM_LOAD => "Load",
        SM_STORE_SWAP => "Store/Swap",
        SM_LOAD_OR_STORE => "LoadOrStore",
        SM_DELETE_LOAD_AND_DELETE => "Delete/LoadAndDelete",
        SM_COMPARE_AND_SWAP => "CompareAndSwap",
        SM_COMPARE_AND_DELETE => "CompareAndDelete",
        SM_RANGE => "Range",
        SM_CLEAR => "Clear",
        SM_MISS_LOCKED => "missLocked",
        SM_DIRTY_LOCKED => "dirtyLocked",
        _ => "unknown",
    }
}

/// The sync.Map functions of `bin`, with their `SM_*`.
pub fn functions(bin: &GoBinary) -> Vec<(Function, u32)> {
    let prefix = if bin.function(&format!("{CLASSIC}Load")).is_some() {
        CLASSIC
    } else {
        TRIE
    };
    METHODS
        .iter()
        .filter_map(|(name, m)| Some((bin.function(&format!("{prefix}{name}"))?, *m)))
        .collect()
}

/// Loads the program and attaches an entry probe to each sync.Map method.
pub fn attach(tracer: &mut Tracer, bin: &GoBinary, path: &Path, scope: Scope) -> ProbeStatus {
    let funcs = functions(bin);
    let names: Vec<String> = funcs.iter().map(|(f, _)| f.name.clone()).collect();
    let result = (|| -> Result<()> {
        if funcs.is_empty() {
            return Ok(());
        }
        tracer.load_uprobes(&[PROGRAM])?;
        let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for (f, m) in &funcs {
            let skip = if bin.arch() != crate::gobin::Arch::Amd64 {
                0
            } else {
                usize::try_from(f.file_offset)
                    .ok()
                    .and_then(|o| file.get(o..o.checked_add(PROLOGUE_BYTES)?))
                    .map_or(0, |code| past_stack_check_amd64(code, f.entry))
            };
            tracer
                .attach_uprobe(PROGRAM, f.file_offset + skip, (*m).into(), path, scope)
                .with_context(|| format!("attaching {PROGRAM} to {}", f.name))?;
        }
        Ok(())
    })();
    let (status, reason) = match (&result, names.is_empty()) {
        (Err(e), _) => ("failed", Some(format!("{e:#}"))),
        (Ok(()), true) => (
            "missing",
            Some("no sync.Map method in this binary: sync.Map is not traced".to_string()),
        ),
        (Ok(()), false) => ("attached", None),
    };
    ProbeStatus {
        feature: "sync_map".into(),
        function: (!names.is_empty()).then(|| names.join(", ")),
        status,
        ret_sites: 0,
        reason,
        kind: 0,
    }
}

/// Bytes decoded to find the stack check.
const PROLOGUE_BYTES: usize = 48;

/// Offset of the instruction after the prologue's stack check
/// (`CMPQ SP, 16(R14); JLS morestack`, or its `LEAQ -n(SP), R12` form): the
/// first forward conditional jump within the first instructions. 0 when
/// there is none (a NOSPLIT function never restarts). The receiver is still
/// in RAX there: the check uses only SP, R12 and R14.
pub fn past_stack_check_amd64(code: &[u8], entry: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut dec = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    for _ in 0..4 {
        if !dec.can_decode() {
            break;
        }
        let insn = dec.decode();
        if insn.is_invalid() {
            break;
        }
        if matches!(
            insn.mnemonic(),
            Mnemonic::Jbe
                | Mnemonic::Jb
                | Mnemonic::Jae
                | Mnemonic::Ja
                | Mnemonic::Je
                | Mnemonic::Jne
                | Mnemonic::Jl
                | Mnemonic::Jle
                | Mnemonic::Jg
                | Mnemonic::Jge
        ) {
            return if insn.near_branch_target() > insn.ip() {
                insn.next_ip() - entry
            } else {
                0
            };
        }
        if matches!(
            insn.mnemonic(),
            Mnemonic::Jmp | Mnemonic::Ret | Mnemonic::Call | Mnemonic::Int3
        ) {
            break;
        }
    }
    0
}

/// Call counts per (process, method, map), summed over CPUs.
pub fn read_calls(tracer: &Tracer) -> Result<Vec<(SyncMapKey, u64)>> {
    if tracer
        .ebpf
        .map(tracer_common::names::map::SYNC_MAP_CALLS)
        .is_none()
    {
        return Ok(vec![]);
    }
    let rows = tracer
        .per_cpu_rows::<SyncMapKey, u64>(tracer_common::names::map::SYNC_MAP_CALLS, |k| k.tgid)?;
    Ok(rows
        .into_iter()
        .map(|(k, per_cpu)| (k, per_cpu.iter().sum::<u64>()))
        .filter(|(_, n)| *n > 0)
        .collect())
}

/// One sync.Map instance of the traced process.
#[derive(Clone, Debug, Serialize)]
pub struct SyncMapReport {
    pub pid: u32,
    /// The sync.Map's address, hex.
    pub address: String,
    /// Calls by method (`Store/Swap`, `Delete/LoadAndDelete`: see docs/maps.md),
    /// plus the classic slow paths `missLocked` / `dirtyLocked` when present.
    pub calls: BTreeMap<&'static str, u64>,
    /// Method calls (slow-path counts excluded).
    pub total: u64,
    /// `Load` calls.
    pub reads: u64,
    /// Store/Swap, LoadOrStore, Delete/LoadAndDelete, CompareAndSwap,
    /// CompareAndDelete and Clear calls.
    pub writes: u64,
    pub ranges: u64,
    /// reads / (reads + writes); null without either.
    pub read_share: Option<f64>,
    /// `read_mostly`, `balanced`, `write_heavy`, `range_heavy` or `too_few_calls`.
    pub advice_kind: &'static str,
    pub advice: String,
}

/// The advice for a map's counts: (kind, text).
pub fn advise(reads: u64, writes: u64, ranges: u64, misses: Option<u64>) -> (&'static str, String) {
    let total = reads + writes + ranges;
    if total < MIN_CALLS {
        return (
            "too_few_calls",
            format!("{total} calls: too few to judge (at least {MIN_CALLS} needed)"),
        );
    }
    if ranges as f64 >= RANGE_HEAVY * total as f64 {
        return (
            "range_heavy",
            format!(
                "Range-heavy ({:.0}% of calls): sync.Map gives no consistent snapshot, and each Range walks every entry; a lock-guarded map can be copied or iterated under the lock",
                100.0 * ranges as f64 / total as f64
            ),
        );
    }
    let share = reads as f64 / (reads + writes).max(1) as f64;
    if share >= READ_MOSTLY {
        let mut s = format!(
            "read-mostly ({:.1}% reads): sync.Map fits if the key set is stable",
            100.0 * share
        );
        match misses {
            Some(m) if reads > 0 && m * 10 > reads => s.push_str(&format!(
                "; but {m} lookups ({:.0}% of reads) missed the read-only part: keys keep changing, so sync.Map's lock-free path is often not taken",
                100.0 * m as f64 / reads as f64
            )),
            Some(m) => s.push_str(&format!(
                "; {m} lookups missed the read-only part ({:.1}% of reads): the key set looks stable",
                100.0 * m as f64 / reads.max(1) as f64
            )),
            None => s.push_str(" (not checkable on Go ≥ 1.24's HashTrieMap)"),
        }
        return ("read_mostly", s);
    }
    if share < WRITE_HEAVY {
        return (
            "write_heavy",
            format!(
                "write-heavy ({:.1}% reads): a Mutex-guarded map is usually faster",
                100.0 * share
            ),
        );
    }
    (
        "balanced",
        format!(
            "balanced read/write ({:.1}% reads): an RWMutex-guarded map is usually faster",
            100.0 * share
        ),
    )
}

/// Rows per sync.Map, most calls first.
pub fn build(calls: &[(SyncMapKey, u64)]) -> Vec<SyncMapReport> {
    let mut by: BTreeMap<(u32, u64), BTreeMap<u32, u64>> = BTreeMap::new();
    for (k, n) in calls {
        *by.entry((k.tgid, k.map))
            .or_default()
            .entry(k.method)
            .or_default() += n;
    }
    let mut rows: Vec<SyncMapReport> = by
        .into_iter()
        .map(|((pid, addr), m)| {
            let get = |x: u32| m.get(&x).copied().unwrap_or(0);
            let reads = get(SM_LOAD);
            let writes = [
                SM_STORE_SWAP,
                SM_LOAD_OR_STORE,
                SM_DELETE_LOAD_AND_DELETE,
                SM_COMPARE_AND_SWAP,
                SM_COMPARE_AND_DELETE,
                SM_CLEAR,
            ]
            .into_iter()
            .map(get)
            .sum();
            let ranges = get(SM_RANGE);
            let misses = m.get(&SM_MISS_LOCKED).copied();
            let (advice_kind, advice) = advise(reads, writes, ranges, misses);
            SyncMapReport {
                pid,
                address: format!("{addr:#x}"),
                calls: m.iter().map(|(k, v)| (method_name(*k), *v)).collect(),
                total: reads + writes + ranges,
                reads,
                writes,
                ranges,
                read_share: (reads + writes > 0).then(|| reads as f64 / (reads + writes) as f64),
                advice_kind,
                advice,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.address.cmp(&b.address)));
    rows
}

/// Table section: one line per sync.Map.
pub fn table(rows: &[SyncMapReport], limit: usize, out: &mut String) {
    use std::fmt::Write as _;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>9}  ADVICE",
        "SYNC.MAP", "CALLS", "LOADS", "WRITES", "RANGES"
    );
    for r in rows.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>9}  {}",
            r.address, r.total, r.reads, r.writes, r.ranges, r.advice
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_goes_after_the_stack_check() {
        // CMPQ SP, 0x10(R14); JBE +0x6c; PUSHQ BP
        let code = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x6c, 0x55];
        assert_eq!(past_stack_check_amd64(&code, 0x1000), 6);
        // LEAQ -0x58(SP), R12; CMPQ R12, 0x10(R14); JBE rel32; PUSHQ BP
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0xa8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x00, 0x01, 0x00,
            0x00, 0x55,
        ];
        assert_eq!(past_stack_check_amd64(&code, 0x1000), 15);
        // NOSPLIT: MOVQ AX, BX; RET
        assert_eq!(past_stack_check_amd64(&[0x48, 0x89, 0xc3, 0xc3], 0x1000), 0);
    }

    #[test]
    fn advice_follows_the_mix() {
        assert_eq!(advise(1000, 1000, 0, None).0, "balanced");
        assert_eq!(advise(990, 10, 0, Some(5)).0, "read_mostly");
        assert_eq!(advise(100, 900, 0, None).0, "write_heavy");
        assert_eq!(advise(500, 300, 200, None).0, "range_heavy");
        assert_eq!(advise(5, 5, 0, None).0, "too_few_calls");
        assert!(
            advise(990, 10, 0, Some(500))
                .1
                .contains("keys keep changing")
        );
    }

    #[test]
    fn rows_sum_methods_per_map() {
        let k = |method, map| SyncMapKey {
            tgid: 1,
            method,
            map,
        };
        let rows = build(&[
            (k(SM_LOAD, 0x10), 60),
            (k(SM_STORE_SWAP, 0x10), 30),
            (k(SM_LOAD_OR_STORE, 0x10), 10),
            (k(SM_MISS_LOCKED, 0x10), 3),
            (k(SM_LOAD, 0x20), 1),
        ]);
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!((r.reads, r.writes, r.total), (60, 40, 100));
        assert_eq!(r.calls.get("missLocked"), Some(&3));
        assert_eq!(r.advice_kind, "balanced");
    }
}
