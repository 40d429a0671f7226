//! Per-measurement hook selection: for each [`Role`], try the mechanisms in
//! the preference order and keep the first that loads and attaches. Nothing
//! is guessed: a kprobe is attached, an fentry program is loaded (verified
//! against the kernel's BTF) and attached, and the error is what is reported.
//! Programs of mechanisms not chosen are never loaded, so a kernel that
//! refuses fentry (EPERM) or lacks kprobes costs nothing but a report line.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint};
use serde::Serialize;

use super::{
    hooks::{self, DEFAULT_ORDER, FnHook, HookStatus, Mechanism, Plan, ROLES, RawHook, Role},
    options::{AcceptWait, TcpOptions, plan_rtt},
};
use crate::{ebpf::Tracer, kernelfs};

/// Plans the hooks for this kernel (socket offsets, RTT mode) and writes the
/// plan's configuration into `TCP_CONFIG`, which every TCP program reads.
pub(super) fn plan_and_configure(tracer: &mut Tracer, opts: &TcpOptions) -> Result<Plan> {
    kernelfs::ensure_tracefs()?;
    let mut plan = hooks::plan(Path::new(kernelfs::TRACEFS));
    plan_rtt(&mut plan, opts.rtt());
    let mut cfg: aya::maps::Array<_, tracer_common::tcp::TcpConfig> = aya::maps::Array::try_from(
        tracer
            .ebpf
            .map_mut(tracer_common::names::map::TCP_CONFIG)
            .ok_or_else(|| anyhow!("TCP_CONFIG map missing from the eBPF object"))?,
    )?;
    cfg.set(0, plan.config, 0).context("writing TCP_CONFIG")?;
    Ok(plan)
}

/// Why kprobes cannot work here, if they cannot.
fn kprobes_unavailable() -> Option<String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type");
    let events = Path::new(kernelfs::TRACEFS).join("kprobe_events");
    if pmu.exists() || events.exists() {
        return None;
    }
    Some(format!(
        "kernel without kprobes: {} and {} absent (CONFIG_KPROBES off)",
        pmu.display(),
        events.display()
    ))
}

/// Detaches what one attempt attached before a later part of it failed.
enum Link {
    Kprobe(&'static str, aya::programs::kprobe::KProbeLinkId),
    Fentry(&'static str, aya::programs::fentry::FEntryLinkId),
    Fexit(&'static str, aya::programs::fexit::FExitLinkId),
    Raw(
        &'static str,
        aya::programs::raw_trace_point::RawTracePointLinkId,
    ),
}

fn undo(tracer: &mut Tracer, links: Vec<Link>) {
    for l in links {
        let _ = match l {
            Link::Kprobe(p, id) => tracer
                .ebpf
                .program_mut(p)
                .and_then(|p| <&mut KProbe>::try_from(p).ok())
                .map(|p| p.detach(id)),
            Link::Fentry(p, id) => tracer
                .ebpf
                .program_mut(p)
                .and_then(|p| <&mut FEntry>::try_from(p).ok())
                .map(|p| p.detach(id)),
            Link::Fexit(p, id) => tracer
                .ebpf
                .program_mut(p)
                .and_then(|p| <&mut FExit>::try_from(p).ok())
                .map(|p| p.detach(id)),
            Link::Raw(p, id) => tracer
                .ebpf
                .program_mut(p)
                .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
                .map(|p| p.detach(id)),
        };
    }
}

fn attach_kprobe(tracer: &mut Tracer, h: &FnHook) -> Result<Link> {
    let prog: &mut KProbe = tracer
        .ebpf
        .program_mut(h.program)
        .ok_or_else(|| anyhow!("eBPF object lacks program {}", h.program))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("verifying {}", h.program))?;
    }
    let kind = if h.ret { "kretprobe" } else { "kprobe" };
    let id = prog
        .attach(h.function, 0)
        .with_context(|| format!("{kind} attach on {}", h.function))?;
    Ok(Link::Kprobe(h.program, id))
}

fn attach_fentry(tracer: &mut Tracer, btf: &aya::Btf, h: &FnHook) -> Result<Link> {
    let prog = tracer
        .ebpf
        .program_mut(h.program)
        .ok_or_else(|| anyhow!("eBPF object lacks program {}", h.program))?;
    if h.ret {
        let prog: &mut FExit = prog.try_into()?;
        if prog.fd().is_err() {
            prog.load(h.function, btf)
                .with_context(|| format!("fexit load for {}", h.function))?;
        }
        let id = prog
            .attach()
            .with_context(|| format!("fexit attach on {}", h.function))?;
        Ok(Link::Fexit(h.program, id))
    } else {
        let prog: &mut FEntry = prog.try_into()?;
        if prog.fd().is_err() {
            prog.load(h.function, btf)
                .with_context(|| format!("fentry load for {}", h.function))?;
        }
        let id = prog
            .attach()
            .with_context(|| format!("fentry attach on {}", h.function))?;
        Ok(Link::Fentry(h.program, id))
    }
}

/// Attaches `h.program` to `group:name` and to each further `+name` of the
/// hook (those may fail: the note says which did).
/// Attaches the first of `h.programs` the kernel accepts for `h.event`.
fn attach_raw(tracer: &mut Tracer, h: &RawHook) -> Result<Link> {
    let mut errors = Vec::new();
    for &program in h.programs {
        let prog: &mut RawTracePoint = tracer
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("eBPF object lacks program {program}"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifying {program}"))?;
        }
        match prog.attach(h.event) {
            Ok(id) => return Ok(Link::Raw(program, id)),
            Err(e) => errors.push(format!("{program}: {e}")),
        }
    }
    Err(anyhow!(
        "raw tracepoint attach on {}: {}",
        h.event,
        errors.join("; ")
    ))
}

fn attach_tracepoint(tracer: &mut Tracer, h: &HookStatus) -> Result<Option<String>> {
    let (group, names) = h
        .hook
        .split_once(':')
        .ok_or_else(|| anyhow!("bad hook name {}", h.hook))?;
    let mut names = names.split('+');
    let name = names
        .next()
        .ok_or_else(|| anyhow!("bad hook name {}", h.hook))?;
    let prog: &mut TracePoint = tracer
        .ebpf
        .program_mut(h.program)
        .ok_or_else(|| anyhow!("eBPF object lacks program {}", h.program))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("verifying eBPF program {}", h.program))?;
    }
    prog.attach(group, name)
        .with_context(|| format!("attaching tracepoint {group}:{name}"))?;
    let mut notes: Vec<String> = h.reason.iter().cloned().collect();
    for other in names {
        if let Err(e) = prog.attach(group, other) {
            notes.push(format!("{group}:{other} not hooked: {e:#}"));
        }
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// What the kprobe/fentry attempts share: BTF, loaded once.
struct Env {
    btf_error: Option<String>,
    kprobes: Option<String>,
    aya_btf: Option<std::result::Result<aya::Btf, String>>,
}

impl Env {
    fn aya_btf(&mut self) -> std::result::Result<&aya::Btf, String> {
        self.aya_btf
            .get_or_insert_with(|| {
                aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF for fentry: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn fn_names(hooks: &[FnHook]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for h in hooks {
        if !names.contains(&h.function) {
            names.push(h.function);
        }
    }
    names.join("+")
}

/// Tries one function-hook mechanism for a role: `Ok(note)` when it serves
/// the role (the note lists optional parts that failed).
fn try_fn_hooks(
    tracer: &mut Tracer,
    env: &mut Env,
    m: Mechanism,
    hooks: &[FnHook],
) -> std::result::Result<Option<String>, (&'static str, String)> {
    if let Some(e) = &env.btf_error {
        return Err(("unavailable", format!("struct sock offsets unknown: {e}")));
    }
    if m == Mechanism::Kprobe
        && let Some(e) = &env.kprobes
    {
        return Err(("unavailable", e.clone()));
    }
    let btf = if m == Mechanism::Fentry {
        match env.aya_btf() {
            Ok(b) => Some(b),
            Err(e) => return Err(("unavailable", e)),
        }
    } else {
        None
    };
    let mut links = Vec::new();
    let mut notes = Vec::new();
    for h in hooks {
        let r = match btf {
            Some(b) => attach_fentry(tracer, b, h),
            None => attach_kprobe(tracer, h),
        };
        match r {
            Ok(l) => links.push(l),
            Err(e) if h.optional => notes.push(format!("{} not hooked: {e:#}", h.function)),
            Err(e) => {
                undo(tracer, links);
                return Err(("failed", format!("{e:#}")));
            }
        }
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Tries a role's raw tracepoints; like [`try_fn_hooks`].
fn try_raw_hooks(
    tracer: &mut Tracer,
    env: &Env,
    hooks: &[RawHook],
) -> std::result::Result<(), (&'static str, String)> {
    if let Some(e) = &env.btf_error {
        return Err(("unavailable", format!("struct sock offsets unknown: {e}")));
    }
    let mut links = Vec::new();
    for h in hooks {
        match attach_raw(tracer, h) {
            Ok(l) => links.push(l),
            Err(e) => {
                undo(tracer, links);
                return Err(("failed", format!("{e:#}")));
            }
        }
    }
    Ok(())
}

fn raw_names(hooks: &[RawHook]) -> String {
    let names: Vec<&str> = hooks.iter().map(|h| h.event).collect();
    names.join("+")
}

/// Attaches each role with the first mechanism of `order` that works and
/// returns one status per (role, mechanism), in role order. Roles named in
/// `opts.unhooked` are left out (reported `not_tried`).
pub fn try_attach_hooks(
    tracer: &mut Tracer,
    plan: &Plan,
    order: &[Mechanism],
    opts: &TcpOptions,
) -> Vec<HookStatus> {
    let mut env = Env {
        btf_error: plan.btf_error.clone(),
        kprobes: kprobes_unavailable(),
        aya_btf: None,
    };
    let mut out = Vec::new();
    for role in &ROLES {
        out.extend(attach_role(tracer, &mut env, plan, role, order, opts));
    }
    out
}

fn attach_role(
    tracer: &mut Tracer,
    env: &mut Env,
    plan: &Plan,
    role: &Role,
    order: &[Mechanism],
    opts: &TcpOptions,
) -> Vec<HookStatus> {
    let left_out = opts.unhooked.iter().any(|u| u == role.name);
    let tp = plan.hooks.get(role.tracepoint).cloned();
    let measures = tp.as_ref().map_or(role.measures, |t| t.measures);
    let mut chosen: Option<Mechanism> = None;
    let mut statuses = Vec::new();
    // Listed order first, then the mechanisms left out (reported as such).
    let rest = DEFAULT_ORDER.iter().filter(|m| !order.contains(m));
    for &m in order.iter().chain(rest) {
        let fn_hooks = match m {
            Mechanism::Kprobe => role.kprobe,
            Mechanism::Fentry => role.fentry,
            Mechanism::RawTracepoint | Mechanism::Tracepoint => &[],
        };
        let mut st = match (m, &tp) {
            (Mechanism::Tracepoint, Some(t)) => t.clone(),
            (Mechanism::RawTracepoint, _) => HookStatus {
                hook: raw_names(role.raw),
                role: role.name,
                method: m.name(),
                measures,
                status: "pending",
                reason: None,
                program: role
                    .raw
                    .first()
                    .and_then(|h| h.programs.first())
                    .copied()
                    .unwrap_or(""),
            },
            _ => HookStatus {
                hook: fn_names(fn_hooks),
                role: role.name,
                method: m.name(),
                measures,
                status: "pending",
                reason: None,
                program: fn_hooks.first().map_or("", |h| h.program),
            },
        };
        let accept = role.name == "accept";
        if left_out {
            st.status = "not_tried";
            st.reason = Some(format!("{} left unhooked by the caller", role.name));
        } else if role.name == "rtt" && plan.config.rtt_every != 0 {
            st.status = "not_tried";
            st.reason = Some(format!(
                "RTT read from the socket every {} send/recv calls and at close (--tcp-rtt calls); --tcp-rtt segments hooks every received segment",
                plan.config.rtt_every
            ));
        } else if accept && opts.accept_wait() == AcceptWait::Off {
            st.status = "not_tried";
            st.reason = Some("accept waits off (--tcp-accept-wait off)".into());
        } else if accept && m == Mechanism::Tracepoint && opts.accept_wait() == AcceptWait::Auto {
            st.status = "not_tried";
            st.reason = Some(
                "syscall tracepoints slow every syscall on the node; allow with --tcp-accept-wait syscalls"
                    .into(),
            );
        } else if !order.contains(&m) {
            st.status = "not_tried";
            st.reason = Some("not in the hook order (--tcp-hooks / $TRACER_TCP_HOOKS)".into());
        } else if let Some(c) = chosen {
            st.status = "not_tried";
            st.reason = Some(format!("{} preferred and attached", c.name()));
        } else if m == Mechanism::Tracepoint && tp.is_none() {
            st.status = "missing";
            st.reason = Some(format!("no tracepoint variant for {}", role.name));
        } else if m == Mechanism::Tracepoint {
            if st.status == "pending" {
                match attach_tracepoint(tracer, &st) {
                    Ok(note) => {
                        st.status = "attached";
                        st.reason = note;
                    }
                    Err(e) => {
                        st.status = "failed";
                        st.reason = Some(format!("{e:#}"));
                    }
                }
            }
        } else if m == Mechanism::RawTracepoint {
            if role.raw.is_empty() {
                st.status = "missing";
                st.reason = Some(format!("no raw tracepoint variant for {}", role.name));
            } else {
                match try_raw_hooks(tracer, env, role.raw) {
                    Ok(()) => st.status = "attached",
                    Err((status, why)) => {
                        st.status = status;
                        st.reason = Some(why);
                    }
                }
            }
        } else if fn_hooks.is_empty() {
            st.status = "missing";
            st.reason = Some(format!(
                "no {} variant for {} (the kernel functions are static or inlined)",
                m.name(),
                role.name
            ));
        } else {
            match try_fn_hooks(tracer, env, m, fn_hooks) {
                Ok(note) => {
                    st.status = "attached";
                    st.reason = note;
                }
                Err((status, why)) => {
                    st.status = status;
                    st.reason = Some(why);
                }
            }
        }
        if st.status == "attached" {
            chosen = Some(m);
        }
        statuses.push(st);
    }
    statuses
}

/// Essential roles (state, send, recv) with no attached hook, with every
/// mechanism's reason.
pub(crate) fn essential_failures(hooks: &[HookStatus]) -> Vec<(&'static str, String)> {
    ROLES
        .iter()
        .filter(|r| r.essential)
        .filter(|r| {
            !hooks
                .iter()
                .any(|h| h.role == r.name && h.status == "attached")
        })
        .map(|r| {
            let why: Vec<String> = hooks
                .iter()
                .filter(|h| h.role == r.name)
                .map(|h| {
                    format!(
                        "{} {} {}: {}",
                        h.method,
                        h.hook,
                        h.status,
                        h.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            (r.name, format!("{}: {}", r.name, why.join(" | ")))
        })
        .collect()
}

/// The mechanism serving one role (`None`: nothing attached).
#[derive(Clone, Debug, Serialize)]
pub struct RoleChoice {
    pub role: &'static str,
    pub mechanism: Option<&'static str>,
}

/// `tracer inspect --kernel`: what this kernel offers and what TCP tracing
/// would use on it, found by really loading and attaching.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub release: String,
    pub btf: bool,
    /// Why the kprobe/fentry programs cannot get socket offsets, if so.
    pub btf_error: Option<String>,
    pub kprobes: bool,
    pub kprobes_error: Option<String>,
    pub hook_order: Vec<Mechanism>,
    /// Per role: the mechanism that attached, if any.
    pub chosen: Vec<RoleChoice>,
    pub tcp_hooks: Vec<HookStatus>,
    /// Set when TCP tracing would be refused here.
    pub tcp_error: Option<String>,
}

/// Tries the TCP hooks as [`attach_tcp`](super::attach_tcp) would, for
/// `tracer inspect --kernel`.
pub fn inspect_kernel(tracer: &mut Tracer, opts: &TcpOptions) -> Result<KernelReport> {
    let order = opts.hook_order()?;
    let order = &order[..];
    let plan = plan_and_configure(tracer, opts)?;
    let hooks = try_attach_hooks(
        tracer,
        &plan,
        order,
        &TcpOptions {
            unhooked: Vec::new(),
            ..opts.clone()
        },
    );
    let broken = essential_failures(&hooks);
    let chosen = ROLES
        .iter()
        .map(|r| RoleChoice {
            role: r.name,
            mechanism: hooks
                .iter()
                .find(|h| h.role == r.name && h.status == "attached")
                .map(|h| h.method),
        })
        .collect();
    let kprobes_error = kprobes_unavailable();
    Ok(KernelReport {
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})")),
        btf: Path::new(super::btf::VMLINUX).exists(),
        btf_error: plan.btf_error.clone(),
        kprobes: kprobes_error.is_none(),
        kprobes_error,
        hook_order: order.to_vec(),
        chosen,
        tcp_hooks: hooks,
        tcp_error: (!broken.is_empty()).then(|| {
            broken
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }),
    })
}

impl std::fmt::Display for KernelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kernel {}", self.release)?;
        match &self.btf_error {
            None => writeln!(f, "BTF: {} (socket offsets read)", super::btf::VMLINUX)?,
            Some(e) if self.btf => writeln!(f, "BTF: present, unusable: {e}")?,
            Some(e) => writeln!(f, "BTF: absent ({e})")?,
        }
        match &self.kprobes_error {
            None => writeln!(f, "kprobes: available")?,
            Some(e) => writeln!(f, "kprobes: {e}")?,
        }
        let order: Vec<&str> = self.hook_order.iter().map(|m| m.name()).collect();
        writeln!(f, "TCP hook order: {}", order.join(","))?;
        for RoleChoice { role, mechanism } in &self.chosen {
            let sampled = *role == "rtt"
                && self
                    .tcp_hooks
                    .iter()
                    .filter(|h| h.role == *role)
                    .all(|h| h.status == "not_tried");
            let shown = match mechanism {
                Some(m) => m,
                // --tcp-rtt calls: no hook of its own, by choice.
                None if sampled => "the send/recv hooks (--tcp-rtt calls)",
                None => "NONE",
            };
            writeln!(f, "TCP {role:<15} -> {shown}")?;
            for h in self.tcp_hooks.iter().filter(|h| h.role == *role) {
                writeln!(
                    f,
                    "    {:<10} {:<34} {:<11} {}",
                    h.method,
                    h.hook,
                    h.status,
                    h.reason.as_deref().unwrap_or("")
                )?;
            }
        }
        if let Some(e) = &self.tcp_error {
            writeln!(f, "TCP tracing would be refused here:\n{e}")?;
        }
        Ok(())
    }
}
