//! Where chosen functions were inlined, from the pclntab inline tree, and
//! the atomic instruction each inlined copy performs.
//!
//! `sync.(*Mutex).Lock`'s fast path is a CAS the compiler inlines into every
//! caller, so no probe on `Lock` itself sees an uncontended lock. The
//! happens-before detector (issue #19) still needs every acquire and release:
//! it probes the inlined copies' own atomic instruction, whose memory operand
//! names the lock. This module finds those copies and decodes the operand.

use std::collections::{BTreeMap, HashMap};

use std::collections::HashSet;

use iced_x86::{
    Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

use super::pclntab::{FUNCDATA_INL_TREE, PCDATA_INL_TREE_INDEX, decode_inlined_call};
use super::{Arch, GoBinary};

/// Deepest inline nesting followed (guards against cyclic corrupt trees).
const MAX_DEPTH: usize = 64;
/// Largest caller decoded to find a site's atomic instruction.
const MAX_CALLER: u64 = 1 << 20;
/// Go 1.21 and 1.22 give an intrinsic atomic the caller's position, so the
/// CAS of an inlined Lock sits just before one of the copy's ranges (then a
/// SETE): accept a locked instruction ending this close before a range, with
/// no branch between.
const MAX_GAP: u64 = 16;

/// One inlined copy of a chosen function inside a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlinedSite {
    /// The (outermost, real) function the copy was inlined into.
    pub caller: String,
    /// Its code: link-time [entry, end).
    pub caller_code: (u64, u64),
    /// The chosen function inlined here.
    pub callee: String,
    /// Where the call appears in the source: file and line of the parent
    /// frame at the call (what `go build -gcflags=-m` prints).
    pub file: String,
    pub line: u32,
    /// The copy's code, as link-time [start, end) ranges; the compiler may
    /// split it (a slow-path call moved to the function's end).
    pub ranges: Vec<(u64, u64)>,
}

/// A locked read-modify-write (or exchange) and its memory operand, whose
/// address a probe on the instruction computes from the registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtomicInsn {
    /// Link-time address of the instruction.
    pub vaddr: u64,
    pub mnemonic: String,
    pub base: Option<Register>,
    pub index: Option<Register>,
    pub scale: u32,
    pub displacement: i64,
    /// Where a uprobe can observe the operand's registers before the
    /// instruction runs. Linux refuses uprobes on LOCK-prefixed
    /// instructions (it cannot single-step them), so for those this is the
    /// instruction just before, when it falls through to the atomic and
    /// writes none of the operand's registers; None when there is no such
    /// instruction.
    pub probe_before: Option<u64>,
    /// Set when the instruction just before loads the base register from
    /// memory (`MOV base, [reg + disp]`, a spilled pointer): `probe_before`
    /// is that load, and at it the base is the u64 at `reg + disp`.
    pub base_loaded_from: Option<(Register, i64)>,
    /// Set when the instruction just before computes the base from RIP
    /// (`LEAQ main.mu(SB), DX`: a global): `probe_before` is that LEA, and
    /// the base is this link-time address.
    pub base_static: Option<u64>,
    /// The instruction after: a uprobe there sees the operand's registers
    /// as they were, when `keeps_operand` (the atomic wrote none of them).
    pub next_vaddr: u64,
    pub keeps_operand: bool,
}

/// Every inlined copy of a function `want` accepts (called with the inlined
/// function's name), in every function of the binary.
pub fn inlined_sites(bin: &GoBinary, want: impl Fn(&str) -> bool) -> Vec<InlinedSite> {
    let Some(t) = bin.pcln.as_ref() else {
        return Vec::new();
    };
    let Some(gofunc) = t.gofunc else {
        return Vec::new();
    };
    let tab = t.bytes(&bin.data);
    let esize = t.layout.inlined_call_len();
    let mut wanted: HashMap<u32, Option<String>> = HashMap::new();
    let mut out = Vec::new();
    for i in 0..t.nfunc {
        let Some(f) = t.func(tab, i) else { continue };
        let (Some(fd), Some(pd)) = (
            t.funcdata(tab, &f, FUNCDATA_INL_TREE),
            t.pcdata(tab, &f, PCDATA_INL_TREE_INDEX),
        ) else {
            continue;
        };
        let Some(tree) = gofunc.checked_add(u64::from(fd)) else {
            continue;
        };
        let call_at = |ix: i32| {
            let ix = u64::try_from(ix).ok()?;
            let a = tree.checked_add(ix.checked_mul(esize as u64)?)?;
            decode_inlined_call(t.layout, bin.elf.read(&bin.data, a, esize)?)
        };
        // Tree index of the chosen call -> its ranges.
        let mut copies: BTreeMap<i32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut start = f.entry;
        t.walk(tab, pd, f.entry, |end, ix| {
            let mut cur = ix;
            for _ in 0..MAX_DEPTH {
                if cur < 0 {
                    break;
                }
                let Some(call) = call_at(cur) else { break };
                let name = wanted
                    .entry(call.name_off)
                    .or_insert_with(|| t.name_at(tab, call.name_off).filter(|n| want(n)));
                if name.is_some() {
                    copies.entry(cur).or_default().push((start, end));
                    break;
                }
                let Ok(parent) = u64::try_from(call.parent_pc) else {
                    break;
                };
                if parent >= f.span {
                    break;
                }
                cur = t.pcvalue(tab, pd, f.entry, f.entry + parent).unwrap_or(-1);
            }
            start = end;
            true
        });
        if copies.is_empty() {
            continue;
        }
        let Some(caller) = t.name(tab, &f) else {
            continue;
        };
        for (ix, ranges) in copies {
            let Some(call) = call_at(ix) else { continue };
            let Some(Some(callee)) = wanted.get(&call.name_off).cloned() else {
                continue;
            };
            let Ok(parent) = u64::try_from(call.parent_pc) else {
                continue;
            };
            let at = f.entry + parent;
            let file = t
                .pcvalue(tab, f.pcfile, f.entry, at)
                .and_then(|n| t.file_name(tab, &f, n))
                .unwrap_or_else(|| "?".into());
            let line = t
                .pcvalue(tab, f.pcln, f.entry, at)
                .and_then(|l| u32::try_from(l).ok())
                .unwrap_or(0);
            out.push(InlinedSite {
                caller: caller.clone(),
                caller_code: (f.entry, f.entry + t.func_size(tab, &f)),
                callee,
                file,
                line,
                ranges,
            });
        }
    }
    out
}

/// The locked read-modify-write or exchange with a memory operand that an
/// inlined copy performs: the first one inside its ranges or ending at most
/// [`MAX_GAP`] bytes before one of them with no branch in between
/// (amd64; None elsewhere or when there is none).
pub fn atomic_insn(bin: &GoBinary, site: &InlinedSite) -> Option<AtomicInsn> {
    find_insn(bin, site, is_atomic)
}

/// Every XCHG with a memory operand in `f` (an atomic store on amd64, such
/// as `Once`'s deferred `done` store, which older Go emits as an intrinsic
/// that no inline tree records).
pub fn xchg_insns(bin: &GoBinary, f: &super::Function) -> Vec<AtomicInsn> {
    if bin.arch() != Arch::Amd64 {
        return Vec::new();
    }
    let Some(code) = usize::try_from(f.size.min(MAX_CALLER))
        .ok()
        .and_then(|n| bin.read_vaddr(f.entry, n))
    else {
        return Vec::new();
    };
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let none = HashSet::new();
    (0..insns.len())
        .filter(|&i| insns[i].mnemonic() == Mnemonic::Xchg && is_atomic(&insns[i]))
        .map(|i| operand(&insns, i, &none))
        .collect()
}

/// The first instruction `pick` accepts inside the site's ranges, or the
/// last one ending at most [`MAX_GAP`] bytes before a range with no branch
/// between (amd64 only).
fn find_insn(
    bin: &GoBinary,
    site: &InlinedSite,
    pick: fn(&Instruction) -> bool,
) -> Option<AtomicInsn> {
    if bin.arch() != Arch::Amd64 {
        return None;
    }
    let (entry, end) = site.caller_code;
    let len = end.checked_sub(entry)?.min(MAX_CALLER);
    let code = bin.read_vaddr(entry, usize::try_from(len).ok()?)?;
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
        .into_iter()
        .collect();
    // Jump targets inside the function: an instruction one of them lands on
    // is not necessarily reached from the one before it.
    let targets: HashSet<u64> = insns
        .iter()
        .filter(|i| {
            matches!(
                i.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        })
        .map(|i| i.near_branch_target())
        .collect();
    let found = |i: usize| Some(operand(&insns, i, &targets));
    // The last picked instruction seen, cleared at each branch.
    let mut last: Option<usize> = None;
    for (i, insn) in insns.iter().enumerate() {
        let ip = insn.ip();
        if site.ranges.iter().any(|&(a, _)| a == ip)
            && let Some(b) = last.filter(|&b| ip.saturating_sub(insns[b].next_ip()) <= MAX_GAP)
        {
            return found(b);
        }
        if pick(insn) {
            if site.ranges.iter().any(|&(a, b)| (a..b).contains(&ip)) {
                return found(i);
            }
            last = Some(i);
        } else if is_branch(insn) {
            last = None;
        }
    }
    None
}

/// The first plain load through a register (not the stack or RIP) inside an
/// inlined copy's ranges, or ending at most [`MAX_GAP`] bytes before one
/// with no branch between: the atomic load of `Once.Do`'s fast path or a
/// typed atomic's `Load` (an ordinary MOV on amd64). None elsewhere.
pub fn load_insn(bin: &GoBinary, site: &InlinedSite) -> Option<AtomicInsn> {
    find_insn(bin, site, is_register_load)
}

/// MOV/MOVZX/CMP/TEST reading memory at a general register plus a
/// displacement (no index): how Go loads an atomic or a struct field.
fn is_register_load(insn: &Instruction) -> bool {
    let reads = match insn.mnemonic() {
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
            insn.op_count() == 2 && insn.op1_kind() == OpKind::Memory
        }
        Mnemonic::Cmp | Mnemonic::Test => {
            (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
        }
        _ => false,
    };
    let base = insn.memory_base();
    reads
        && insn.memory_index() == Register::None
        && !matches!(
            base,
            Register::None | Register::RSP | Register::RBP | Register::RIP
        )
}

fn is_branch(insn: &Instruction) -> bool {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    ) || matches!(
        insn.mnemonic(),
        Mnemonic::Jmp | Mnemonic::Call | Mnemonic::Ret | Mnemonic::Int3 | Mnemonic::Ud2
    )
}

fn is_atomic(insn: &Instruction) -> bool {
    let rmw = insn.has_lock_prefix() || insn.mnemonic() == Mnemonic::Xchg;
    rmw && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
}

fn operand(insns: &[Instruction], i: usize, targets: &HashSet<u64>) -> AtomicInsn {
    let insn = &insns[i];
    let reg = |r: Register| (r != Register::None).then_some(r);
    let base = insn.memory_base();
    let index = insn.memory_index();
    let mut base_loaded_from = None;
    let mut base_static = None;
    let probe_before = if insn.has_lock_prefix() {
        i.checked_sub(1)
            .map(|p| &insns[p])
            .filter(|p| {
                p.next_ip() == insn.ip()
                    && !is_branch(p)
                    && !p.has_lock_prefix()
                    && !targets.contains(&insn.ip())
                    && !writes(p, index)
            })
            .and_then(|p| {
                if !writes(p, base) {
                    return Some(p.ip());
                }
                // `MOVQ 0x48(SP), AX; LOCK XADDL BX, 0(AX)`: probe the load
                // and let the probe read the pointer it loads.
                let spill = p.mnemonic() == Mnemonic::Mov
                    && p.op_count() == 2
                    && p.op0_kind() == OpKind::Register
                    && p.op0_register() == base
                    && p.op1_kind() == OpKind::Memory
                    && p.memory_index() == Register::None
                    && p.memory_size().size() == 8
                    && !matches!(p.memory_base(), Register::None | Register::RIP)
                    && p.memory_base() != base;
                if spill {
                    base_loaded_from = Some((p.memory_base(), p.memory_displacement64() as i64));
                    return Some(p.ip());
                }
                // `LEAQ main.rw+16(SB), DX; LOCK XADDL BX, 0(DX)`: a global,
                // at an address known from the instruction itself.
                let global = p.mnemonic() == Mnemonic::Lea
                    && p.op0_kind() == OpKind::Register
                    && p.op0_register() == base
                    && p.memory_base() == Register::RIP
                    && p.memory_index() == Register::None;
                global.then(|| {
                    // iced resolves RIP-relative operands to the target.
                    base_static = Some(p.memory_displacement64());
                    p.ip()
                })
            })
    } else {
        Some(insn.ip())
    };
    AtomicInsn {
        vaddr: insn.ip(),
        mnemonic: format!("{:?}", insn.mnemonic()).to_lowercase(),
        base: reg(base),
        index: reg(index),
        scale: insn.memory_index_scale(),
        displacement: insn.memory_displacement64() as i64,
        probe_before,
        base_loaded_from,
        base_static,
        next_vaddr: insn.next_ip(),
        keeps_operand: !writes(insn, base) && !writes(insn, index),
    }
}

/// Whether `insn` may change `r` (or any part of it).
fn writes(insn: &Instruction, r: Register) -> bool {
    if r == Register::None {
        return false;
    }
    let mut f = InstructionInfoFactory::new();
    f.info(insn).used_registers().iter().any(|u| {
        u.register().full_register() == r.full_register()
            && matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
    })
}
