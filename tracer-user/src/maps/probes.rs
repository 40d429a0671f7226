//! Which runtime functions the map probes go on, and attaching them.
//!
//! Every function found is given an index (its position in
//! [`MapProbes::functions`]); the index goes into the attach cookie's upper
//! bits so user space can tell which function a record came from (needed to
//! learn a PIE's load bias from a stack's frame 0).

use std::path::Path;

use anyhow::{Context, Result, bail};
use tracer_common::maps::{
    CALL_INSN_LEN, GROW_ARG0, GROW_ARG1, GROW_ARG2, OP_AT_CALL_SITE, OP_CLEAR, OP_DELETE,
    OP_ITERATE, OP_ITERATE_NEXT, OP_READ, OP_WRITE,
};
use tracer_common::names::program;

use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::{Function, GoBinary},
};

/// The BPF programs of the map feature.
pub const PROGRAMS: [&str; 4] = [
    program::MAP_FATAL,
    program::MAP_GROW,
    program::MAP_OP_ENTER,
    program::MAP_OP_EXIT,
];

/// Fatal-error entry points. Go ≥ 1.19 reports map misuse through `fatal`
/// (Swiss maps through `internal/runtime/maps.fatal`, which calls it);
/// `throw` catches the runtime's other fatal errors. A crash through
/// `maps.fatal` hits two probes; user space keeps one event per goroutine
/// and message.
const FATAL_FUNCTIONS: [&str; 3] = [
    "internal/runtime/maps.fatal",
    "runtime.fatal",
    "runtime.throw",
];

/// Growth functions and the argument holding the map. Swiss
/// `(*table).rehash` only dispatches to `grow` or `split`, so it is probed
/// only when neither of those is in the binary (it would count twice).
const GROWTH_FUNCTIONS: [(&str, u32); 5] = [
    ("runtime.hashGrow", GROW_ARG1),
    ("internal/runtime/maps.(*Map).growToSmall", GROW_ARG0),
    ("internal/runtime/maps.(*Map).growToTable", GROW_ARG0),
    ("internal/runtime/maps.(*table).grow", GROW_ARG2),
    ("internal/runtime/maps.(*table).split", GROW_ARG2),
];
const REHASH: &str = "internal/runtime/maps.(*table).rehash";

/// Map operations probed in the deep tier, by name prefix (the `_fast*`
/// variants included). `mapaccessK` is used only by the runtime itself.
const OP_PREFIXES: [(&str, u32); 8] = [
    ("runtime.mapaccess1", OP_READ),
    ("runtime.mapaccess2", OP_READ),
    ("runtime.mapassign", OP_WRITE),
    ("runtime.mapdelete", OP_DELETE),
    ("runtime.mapiterinit", OP_ITERATE),
    ("runtime.mapIterStart", OP_ITERATE),
    ("runtime.mapiternext", OP_ITERATE_NEXT),
    ("runtime.mapIterNext", OP_ITERATE_NEXT),
];
const OP_EXACT: [(&str, u32); 1] = [("runtime.mapclear", OP_CLEAR)];

/// Probed functions, indexed by the cookie's upper bits.
#[derive(Default)]
pub struct MapProbes {
    pub functions: Vec<Function>,
}

impl MapProbes {
    /// Link-time entry of the function a cookie names.
    pub fn entry_of(&self, cookie: u32) -> Option<u64> {
        self.functions.get((cookie >> 8) as usize).map(|f| f.entry)
    }

    /// Name of the function a cookie names.
    pub fn name_of(&self, cookie: u32) -> Option<&str> {
        self.functions
            .get((cookie >> 8) as usize)
            .map(|f| f.name.as_str())
    }

    pub(crate) fn cookie(&mut self, f: &Function, low: u32) -> u32 {
        let idx = self.functions.len() as u32;
        self.functions.push(f.clone());
        (idx << 8) | low
    }
}

/// Loads the map programs into the kernel.
pub fn load(tracer: &mut Tracer) -> Result<()> {
    tracer.load_uprobes(&PROGRAMS)
}

/// One map probe, through the shared attach path.
fn attach_at(
    tracer: &mut Tracer,
    prog: &str,
    offset: u64,
    path: &Path,
    scope: Scope,
    cookie: u32,
) -> Result<()> {
    tracer
        .attach_uprobe(prog, offset, cookie.into(), path, scope)
        .with_context(|| {
            format!(
                "attaching {prog} at file offset {offset:#x} of {}",
                path.display()
            )
        })?;
    Ok(())
}

fn status(
    feature: &str,
    functions: &[String],
    ret_sites: usize,
    err: Option<String>,
) -> ProbeStatus {
    let (status, reason) = match (&err, functions.is_empty()) {
        (Some(e), _) => ("failed", Some(e.clone())),
        (None, true) => (
            "missing",
            Some(format!(
                "no {feature} function in this binary: {feature} is not traced"
            )),
        ),
        (None, false) => ("attached", None),
    };
    ProbeStatus {
        feature: feature.into(),
        function: (!functions.is_empty()).then(|| functions.join(", ")),
        status,
        ret_sites,
        reason,
        kind: 0,
    }
}

/// The growth functions of `bin` to probe, with the argument holding the map.
pub fn growth_functions(bin: &GoBinary) -> Vec<(Function, u32)> {
    let mut growth: Vec<(Function, u32)> = GROWTH_FUNCTIONS
        .iter()
        .filter_map(|(n, a)| Some((bin.function(n)?, *a)))
        .collect();
    let swiss_split = growth.iter().any(|(f, _)| f.name.contains("(*table)."));
    if !swiss_split && let Some(f) = bin.function(REHASH) {
        growth.push((f, GROW_ARG2));
    }
    growth
}

/// Attaches the always-on probes: fatal errors, and growth unless
/// `budgeted_growth` (the budget controller attaches it then).
pub fn attach_always(
    tracer: &mut Tracer,
    probes: &mut MapProbes,
    bin: &GoBinary,
    path: &Path,
    scope: Scope,
    budgeted_growth: bool,
) -> Vec<ProbeStatus> {
    let mut out = Vec::new();
    let fatal: Vec<Function> = FATAL_FUNCTIONS
        .iter()
        .filter_map(|n| bin.function(n))
        .collect();
    let mut err = None;
    for f in &fatal {
        let c = probes.cookie(f, 0);
        if let Err(e) = attach_at(tracer, program::MAP_FATAL, f.file_offset, path, scope, c) {
            err = Some(format!("{e:#}"));
            break;
        }
    }
    let names: Vec<String> = fatal.iter().map(|f| f.name.clone()).collect();
    out.push(status("map_fatal", &names, 0, err));

    let growth = growth_functions(bin);
    let names: Vec<String> = growth.iter().map(|(f, _)| f.name.clone()).collect();
    if budgeted_growth {
        let mut st = status("map_growth", &names, 0, None);
        if st.status == "attached" {
            st.reason = Some(
                "within --race-budget: on from the start, off while it costs more than the \
                 budget allows (race_budget.growth)"
                    .into(),
            );
        }
        out.push(st);
        return out;
    }
    let mut err = None;
    for (f, arg) in &growth {
        let c = probes.cookie(f, *arg);
        if let Err(e) = attach_at(tracer, program::MAP_GROW, f.file_offset, path, scope, c) {
            err = Some(format!("{e:#}"));
            break;
        }
    }
    out.push(status("map_growth", &names, 0, err));
    out
}

/// The deep tier's operation functions in `bin`, with their `OP_*` kinds.
pub fn op_functions(bin: &GoBinary) -> Vec<(Function, u32)> {
    let mut out: Vec<(Function, u32)> = Vec::new();
    for (prefix, kind) in OP_PREFIXES {
        for f in bin.functions_with_prefix(prefix) {
            // Closures and other helpers share the prefix (`mapaccess1.func1`).
            if f.name.contains(".func") || out.iter().any(|(o, _)| o.entry == f.entry) {
                continue;
            }
            out.push((f, kind));
        }
    }
    for (name, kind) in OP_EXACT {
        if let Some(f) = bin.function(name) {
            out.push((f, kind));
        }
    }
    out
}

/// Attaches the deep tier: an entry probe and a probe on every RET of each
/// map operation.
pub fn attach_deep(
    tracer: &mut Tracer,
    probes: &mut MapProbes,
    bin: &GoBinary,
    path: &Path,
    scope: Scope,
) -> ProbeStatus {
    let funcs = op_functions(bin);
    let names: Vec<String> = funcs.iter().map(|(f, _)| f.name.clone()).collect();
    let mut rets_total = 0;
    let result = (|| -> Result<()> {
        for (f, kind) in &funcs {
            let rets = bin
                .return_offsets(f)
                .with_context(|| format!("finding RET sites of {}", f.name))?;
            if rets.is_empty() {
                bail!("no RET instruction found in {}", f.name);
            }
            let c = probes.cookie(f, *kind);
            // Exits first: in a running process an entry without its exits
            // would leave operations that never end.
            for off in &rets {
                attach_at(
                    tracer,
                    program::MAP_OP_EXIT,
                    f.file_offset + off,
                    path,
                    scope,
                    c,
                )?;
            }
            attach_at(tracer, program::MAP_OP_ENTER, f.file_offset, path, scope, c)?;
            rets_total += rets.len();
        }
        Ok(())
    })();
    status(
        "map_ops",
        &names,
        rets_total,
        result.err().map(|e| format!("{e:#}")),
    )
}

/// Attaches the deep tier at the call sites of map operations inside the
/// packages `pkgs` only (`--maps-sites`): the CALL gets the entry probe, the
/// instruction after it the exit probe.
pub fn attach_sites(
    tracer: &mut Tracer,
    probes: &mut MapProbes,
    bin: &GoBinary,
    path: &Path,
    scope: Scope,
    pkgs: &[String],
) -> ProbeStatus {
    let targets = op_functions(bin);
    let sites = super::sites::find(bin, pkgs, &targets);
    let names: Vec<String> = sites
        .iter()
        .map(|s| format!("{}@{:#x}->{}", s.caller, s.call_vaddr, s.callee))
        .collect();
    let result = (|| -> Result<()> {
        for s in &sites {
            let call_off = bin
                .vaddr_to_file_offset(s.call_vaddr)
                .with_context(|| format!("call site {:#x} is in no segment", s.call_vaddr))?;
            // The "function" of a site is the CALL itself: a stack's frame 0
            // is then this address, which gives a PIE's load bias.
            let site_fn = Function {
                name: s.caller.clone(),
                entry: s.call_vaddr,
                size: CALL_INSN_LEN,
                file_offset: call_off,
            };
            let c = probes.cookie(&site_fn, s.kind | OP_AT_CALL_SITE);
            attach_at(
                tracer,
                program::MAP_OP_EXIT,
                call_off + CALL_INSN_LEN,
                path,
                scope,
                c,
            )?;
            attach_at(tracer, program::MAP_OP_ENTER, call_off, path, scope, c)?;
        }
        Ok(())
    })();
    let mut st = status(
        "map_ops",
        &names,
        sites.len(),
        result.err().map(|e| format!("{e:#}")),
    );
    if st.status == "missing" {
        st.reason = Some(format!(
            "no call to a map operation found in package(s) {}: map operations are not traced",
            pkgs.join(", ")
        ));
    }
    st
}
