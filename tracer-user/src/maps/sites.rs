//! `--maps-sites PKG`: deep-tier probes at the call sites inside chosen
//! packages instead of on the runtime's map functions that every caller
//! shares. A map operation elsewhere (the runtime, the standard library,
//! other packages) then costs nothing; only the chosen code pays two traps
//! per operation.
//!
//! The entry probe sits on the CALL instruction (the arguments are already in
//! their registers, the return address not yet pushed) and the exit probe on
//! the instruction after it, where the call returns.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

use crate::gobin::{Arch, Function, GoBinary};

/// Length of the direct near CALL the BPF side assumes (`E8 rel32`): the
/// return address it reports is the probed address plus this.
const CALL_LEN: usize = tracer_common::maps::CALL_INSN_LEN as usize;

/// One direct call from chosen code to a map operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// Function containing the call.
    pub caller: String,
    /// Link-time address of the CALL instruction.
    pub call_vaddr: u64,
    /// `OP_*` kind of the callee.
    pub kind: u32,
    pub callee: String,
}

/// Functions of the packages named in `pkgs` (`main`, `example.com/svc/cache`).
fn package_functions(bin: &GoBinary, pkgs: &[String]) -> Vec<Function> {
    let mut out: Vec<Function> = pkgs
        .iter()
        .flat_map(|p| bin.functions_with_prefix(&format!("{p}.")))
        .collect();
    out.sort_by_key(|f| f.entry);
    out.dedup_by_key(|f| f.entry);
    out
}

/// Direct calls to any of `targets` inside the functions of `pkgs` (amd64;
/// empty for other architectures).
pub fn find(bin: &GoBinary, pkgs: &[String], targets: &[(Function, u32)]) -> Vec<CallSite> {
    find_in(bin, &package_functions(bin, pkgs), targets)
}

/// Direct calls to any of `targets` inside `funcs` (amd64; empty for other
/// architectures).
pub fn find_in(bin: &GoBinary, funcs: &[Function], targets: &[(Function, u32)]) -> Vec<CallSite> {
    if bin.arch() != Arch::Amd64 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in funcs {
        let Ok(len) = usize::try_from(f.size) else {
            continue;
        };
        let Some(code) = bin.read_vaddr(f.entry, len) else {
            continue;
        };
        let mut dec = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        while dec.can_decode() {
            let insn = dec.decode();
            let direct = insn.mnemonic() == Mnemonic::Call
                && insn.op0_kind() == OpKind::NearBranch64
                && insn.len() == CALL_LEN;
            if !direct {
                continue;
            }
            let target = insn.near_branch_target();
            if let Some((callee, kind)) = targets.iter().find(|(t, _)| t.entry == target) {
                out.push(CallSite {
                    caller: f.name.clone(),
                    call_vaddr: insn.ip(),
                    kind: *kind,
                    callee: callee.name.clone(),
                });
            }
        }
    }
    out
}
