//! Attaching the lock probes of [`KINDS`] to a binary, and detaching them
//! while the rate guard pauses them.
//!
//! A `sync.Mutex` wait is timed at points decoded from the binary where the
//! waiter does not own the lock (`gobin::MutexPoints`), so no probe fires in
//! a critical section. Where they cannot be decoded (arm64, unknown code),
//! the wait is closed on the slow path's RETs, and the probe status says so.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use aya::programs::uprobe::UProbeLinkId;
use tracer_common::{lock::KIND_MUTEX, names};

use super::kinds::{KINDS, LockKind, Probing};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::{GoBinary, MutexPoints},
};

/// The lock probes' programs, and the one that records unlock wakeups.
const ENTER: &str = "lock_enter";
const EXIT: &str = "lock_exit";
const UNLOCK: &str = "unlock_slow";
const SLEEP: &str = names::program::MUTEX_SLEEP;
const WAKE: &str = names::program::MUTEX_WAKE;
const HANDOFF: &str = names::program::MUTEX_HANDOFF;

/// Where a `sync.Mutex` wait is closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MutexExits {
    /// At the wake-up and hand-off points decoded from the binary: no probe
    /// in the critical section. Falls back to `ret` where they cannot be
    /// decoded, and says so.
    #[default]
    Wakeup,
    /// On every RET of the slow path: the waiter already owns the lock, so
    /// each contended acquisition adds one trap to the critical section. For
    /// comparison, and for binaries whose decoded points are in doubt.
    Ret,
}

/// Links of the lock probes attached so far, so they can be detached.
#[derive(Default)]
pub struct LockProbes {
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Link-time PC of the probe that takes each wait kind's stacks.
    stack_pcs: HashMap<u32, u64>,
}

impl LockProbes {
    /// Link-time PC of the probe that takes each wait kind's stacks (a
    /// stack's frame 0), for a PIE's load bias.
    pub fn stack_pcs(&self) -> &HashMap<u32, u64> {
        &self.stack_pcs
    }

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
        exits: MutexExits,
    ) -> Vec<ProbeStatus> {
        KINDS
            .iter()
            .filter(|k| (holders || k.probing == Probing::Timed) && k.applies_to(bin.go_version()))
            .map(|k| self.attach_kind(tracer, bin, path, scope, k, exits))
            .collect()
    }

    fn attach_kind(
        &mut self,
        tracer: &mut Tracer,
        bin: &GoBinary,
        path: &Path,
        scope: Scope,
        kind: &LockKind,
        exits: MutexExits,
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
        let mut fallback = None;
        if kind.probing == Probing::Timed && kind.code == KIND_MUTEX {
            let points = match exits {
                MutexExits::Wakeup => bin.mutex_points(),
                MutexExits::Ret => Err("--mutex-exits ret".to_string()),
            };
            match points {
                Ok((lock, unlock, points)) => {
                    return match self.attach_off_lock(tracer, &lock, &unlock, points, path, scope) {
                        Ok(()) => status(Some(lock.name), "attached", 0, None),
                        Err(e) => status(Some(lock.name), "failed", 0, Some(format!("{e:#}"))),
                    };
                }
                Err(why) => {
                    fallback = Some(format!(
                        "waits are closed on the RETs of {}, inside the critical section (each adds one trap to the holder): {why}",
                        func.name
                    ))
                }
            }
        }
        let attached = match kind.probing {
            Probing::Timed => self.attach_timed(tracer, bin, &func, path, scope, kind.code),
            Probing::Holder => self
                .attach_entry(tracer, UNLOCK, &func, path, scope, kind.code)
                .map(|()| 0),
        };
        match attached {
            Ok(n) => status(Some(func.name), "attached", n, fallback),
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
        self.stack_pcs.insert(cookie, func.entry);
        Ok(())
    }

    /// A Mutex wait's sleep, wake-up and hand-off points. The closing
    /// probes go first: a sleep recorded before they are live would be
    /// reported as stuck.
    fn attach_off_lock(
        &mut self,
        tracer: &mut Tracer,
        lock: &crate::gobin::Function,
        unlock: &crate::gobin::Function,
        points: MutexPoints,
        path: &Path,
        scope: Scope,
    ) -> Result<()> {
        let cookie = u64::from(KIND_MUTEX);
        tracer.load_uprobes(&[WAKE, HANDOFF, SLEEP])?;
        for (prog, func, off) in [
            (WAKE, lock, points.wake),
            (HANDOFF, unlock, points.handoff),
            (SLEEP, lock, points.sleep),
        ] {
            let link = tracer
                .attach_uprobe(prog, func.file_offset + off, cookie, path, scope)
                .with_context(|| format!("attaching {prog} to {}+{off:#x}", func.name))?;
            self.links.push((prog, link));
        }
        self.stack_pcs.insert(KIND_MUTEX, lock.entry + points.sleep);
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
        links.sort_by_key(|(prog, _)| *prog != ENTER && *prog != SLEEP);
        for (prog, link) in links {
            tracer
                .uprobe(prog)?
                .detach(link)
                .with_context(|| format!("detaching {prog}"))?;
        }
        super::read::clear_inflight(tracer)
    }
}
