//! Attaching the happens-before probes ([`super::sync_probes`]) through the
//! one uprobe path, each with a cookie that tells `hb_sync` what it means
//! and where its object is.

use std::path::Path;

use anyhow::{Context, Result, bail};
use iced_x86::Register;
use tracer_common::maps::{
    HB_ACT_ACQUIRE, HB_ACT_BOTH, HB_ACT_GO_ENTER, HB_ACT_GO_EXIT, HB_ACT_RELEASE, HB_ACT_SELECT,
    hb_cookie, hb_cookie_rip,
};
use tracer_common::names::program;

use super::{SyncAction, SyncKind, SyncProbe, USER_SYNC, sync_probes, user_sync_probes};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::{Arch, GoBinary},
};

/// The attached probes, indexed by the cookie's upper 16 bits.
#[derive(Default)]
pub struct HbProbes {
    pub probes: Vec<SyncProbe>,
    /// Inlined copies whose instruction could not be decoded: their
    /// synchronisation is invisible (listed in the probe status).
    pub unresolved: usize,
}

impl HbProbes {
    /// The kind of object the probe with cookie index `i` names.
    pub fn kind_of(&self, i: u16) -> SyncKind {
        self.probes
            .get(usize::from(i))
            .map_or(SyncKind::SyncMap, |p| p.kind)
    }
}

/// `tracer-ebpf/src/hb.rs`'s register numbering on amd64.
fn reg_number(r: Register) -> Option<u8> {
    use Register::{R8, R9, R10, R11, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP};
    Some(match r {
        RAX => 0,
        RBX => 1,
        RCX => 2,
        RDX => 3,
        RSI => 4,
        RDI => 5,
        RBP => 6,
        RSP => 7,
        R8 => 8,
        R9 => 9,
        R10 => 10,
        R11 => 11,
        R12 => 12,
        R13 => 13,
        R14 => 14,
        R15 => 15,
        _ => return None,
    })
}

fn action_bits(a: SyncAction) -> u64 {
    match a {
        SyncAction::Release => HB_ACT_RELEASE,
        SyncAction::AcquireOnResume => HB_ACT_ACQUIRE,
        SyncAction::Both => HB_ACT_BOTH,
        SyncAction::Select => HB_ACT_SELECT,
        SyncAction::GoEnter => HB_ACT_GO_ENTER,
        SyncAction::GoExit => HB_ACT_GO_EXIT,
    }
}

/// Loads `hb_sync` and attaches every probe, with those of the functions
/// the user declared as synchronisation (`sync_funcs`). The stream stays
/// disarmed (`FLAG_HB_ARMED`) until the caller has attached everything else.
pub fn attach(
    tracer: &mut Tracer,
    bin: &GoBinary,
    path: &Path,
    scope: Scope,
    sync_funcs: &[String],
) -> (HbProbes, ProbeStatus) {
    let mut out = HbProbes::default();
    let result = (|| -> Result<()> {
        if bin.arch() != Arch::Amd64 {
            bail!("the happens-before probes decode amd64 code only");
        }
        tracer.load_uprobes(&[program::HB_SYNC])?;
        let table = sync_probes(bin);
        out.unresolved = table.unresolved.len();
        for s in &table.unresolved {
            tracing::warn!(
                "happens-before: no instruction found for {} inlined in {} ({}:{}): that synchronisation is not seen",
                s.callee,
                s.caller,
                s.file,
                s.line
            );
        }
        let mut place = |p: SyncProbe, vaddr: u64| -> Result<()> {
            let index = u16::try_from(out.probes.len()).context("more than 65535 sync probes")?;
            let cookie = if p.reg == Register::RIP {
                let rel = i32::try_from(p.disp).with_context(|| format!("global at {}", p.disp))?;
                hb_cookie_rip(action_bits(p.action), rel, index)
            } else {
                let reg = reg_number(p.reg).with_context(|| format!("register {:?}", p.reg))?;
                let disp =
                    i16::try_from(p.disp).with_context(|| format!("displacement {}", p.disp))?;
                let load = p
                    .deref
                    .map(|d| i16::try_from(d).with_context(|| format!("spill slot {d}")))
                    .transpose()?;
                hb_cookie(action_bits(p.action), reg, disp, load, index)
            };
            let off = bin
                .vaddr_to_file_offset(vaddr)
                .with_context(|| format!("{vaddr:#x} is in no segment"))?;
            tracer
                .attach_uprobe(program::HB_SYNC, off, cookie, path, scope)
                .with_context(|| format!("attaching the {} probe in {}", p.method, p.caller))?;
            out.probes.push(p);
            Ok(())
        };
        // RETs first, as for map operations: an entry without its exits
        // would leave a parent that no child claims.
        for p in table.ret_probes {
            let f = bin
                .function(p.method)
                .with_context(|| format!("{} vanished", p.method))?;
            let rets = bin
                .return_offsets(&f)
                .with_context(|| format!("finding RET sites of {}", f.name))?;
            if rets.is_empty() {
                bail!("no RET instruction found in {}", f.name);
            }
            for r in rets {
                place(p.clone(), f.entry + r)?;
            }
        }
        for p in table.probes {
            let v = p.vaddr;
            place(p, v)?;
        }
        for p in user_sync_probes(bin, sync_funcs).map_err(anyhow::Error::msg)? {
            let v = p.vaddr;
            place(p, v)?;
        }
        Ok(())
    })();
    let user = out.probes.iter().filter(|p| p.method == USER_SYNC).count();
    let status = match result {
        Ok(()) => ProbeStatus {
            feature: "map_happens_before".into(),
            function: Some(format!(
                "{} sync probes ({} inlined copies unresolved{})",
                out.probes.len(),
                out.unresolved,
                if user > 0 {
                    format!("; {user} for --sync-funcs")
                } else {
                    String::new()
                }
            )),
            status: "attached",
            ret_sites: 0,
            reason: None,
            kind: 0,
        },
        Err(e) => ProbeStatus {
            feature: "map_happens_before".into(),
            function: None,
            status: "failed",
            ret_sites: 0,
            reason: Some(format!("{e:#}")),
            kind: 0,
        },
    };
    (out, status)
}
