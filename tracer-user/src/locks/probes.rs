//! Attaching the lock probes of [`KINDS`] to a binary, and detaching them
//! while the rate guard pauses them.

use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::uprobe::UProbeLinkId;

use super::kinds::{KINDS, LockKind, Probing};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::GoBinary,
};

/// The lock probes' programs, and the one that records unlock wakeups.
const ENTER: &str = "lock_enter";
const EXIT: &str = "lock_exit";
const UNLOCK: &str = "unlock_slow";

/// Links of the lock probes attached so far, so they can be detached.
#[derive(Default)]
pub struct LockProbes {
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl LockProbes {
    /// Attaches every lock probe to `bin`, found at `path`: one status per
    /// kind. A binary without a function (it never blocks on that kind of
    /// lock, so the linker dropped it) is not an error: the status says so and
    /// the rest of tracing goes on. With `holders`, the unlock slow paths are
    /// probed too.
    pub fn attach(
        &mut self,
        tracer: &mut Tracer,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        holders: bool,
    ) -> Vec<ProbeStatus> {
        KINDS
            .iter()
            .filter(|k| holders || k.probing == Probing::Timed)
            .map(|k| self.attach_kind(tracer, bin, path, scope, k))
            .collect()
    }

    fn attach_kind(
        &mut self,
        tracer: &mut Tracer,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        kind: &LockKind,
    ) -> ProbeStatus {
        let status = |function: Option<String>, status, ret_sites, reason| ProbeStatus {
            feature: kind.feature.into(),
            function,
            status,
            ret_sites,
            reason,
            kind: kind.code,
        };
        let Some(func) = kind.functions.iter().find_map(|n| bin.function(n)) else {
            return status(
                None,
                "missing",
                0,
                Some(format!(
                    "{} not in this Go {} binary (it never {}, so the function was not linked): {} waits are not traced",
                    kind.functions.join(" / "),
                    bin.go_version(),
                    kind.unused,
                    kind.feature
                )),
            );
        };
        let attached = match kind.probing {
            Probing::Timed => self.attach_timed(tracer, bin, &func, path, scope, kind.code),
            Probing::Holder => self
                .attach_entry(tracer, UNLOCK, &func, path, scope, kind.code)
                .map(|()| 0),
        };
        match attached {
            Ok(n) => status(Some(func.name), "attached", n, None),
            Err(e) => status(Some(func.name), "failed", 0, Some(format!("{e:#}"))),
        }
    }

    fn attach_entry(
        &mut self,
        tracer: &mut Tracer,
        prog: &'static str,
        func: &crate::gobin::Function,
        path: &Path,
        scope: Scope,
        cookie: u32,
    ) -> Result<()> {
        let link = tracer
            .attach_uprobe(prog, func.file_offset, cookie.into(), path, scope)
            .with_context(|| format!("attaching uprobe to {} in {}", func.name, path.display()))?;
        self.links.push((prog, link));
        Ok(())
    }

    /// Entry and exits of a wait; the number of RET sites probed.
    fn attach_timed(
        &mut self,
        tracer: &mut Tracer,
        bin: &GoBinary,
        func: &crate::gobin::Function,
        path: &Path,
        scope: Scope,
        cookie: u32,
    ) -> Result<usize> {
        let rets = bin
            .return_offsets(func)
            .with_context(|| format!("finding RET sites of {}", func.name))?;
        if rets.is_empty() {
            anyhow::bail!(
                "no RET instruction found in {}; refusing to attach an entry probe without exits",
                func.name
            );
        }
        // Exits first: an entry probe live before its exits would record waits
        // whose end is never seen, and report them as stuck.
        for off in &rets {
            let link = tracer
                .attach_uprobe(EXIT, func.file_offset + off, cookie.into(), path, scope)
                .with_context(|| format!("attaching uprobe to RET at {}+{off:#x}", func.name))?;
            self.links.push((EXIT, link));
        }
        self.attach_entry(tracer, ENTER, func, path, scope, cookie)?;
        Ok(rets.len())
    }

    /// Detaches every lock probe (entries first) and forgets the waits in
    /// flight, whose exits will now never be seen.
    pub fn detach(&mut self, tracer: &mut Tracer) -> Result<()> {
        let mut links = std::mem::take(&mut self.links);
        links.sort_by_key(|(prog, _)| *prog != ENTER);
        for (prog, link) in links {
            tracer
                .uprobe(prog)?
                .detach(link)
                .with_context(|| format!("detaching {prog}"))?;
        }
        super::read::clear_inflight(tracer)
    }
}
