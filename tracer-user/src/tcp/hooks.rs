//! Which kernel hooks TCP tracing uses, and the field offsets they need.
//!
//! Each measurement (a [`Role`]: state changes, bytes sent, ...) can be hooked
//! by a kprobe, an fentry/fexit program or a tracepoint. Tracepoint offsets
//! come from the format files, `struct sock` offsets from BTF; both go into
//! one [`TcpConfig`]. `attach_tcp` tries each role's mechanisms in the chosen
//! order and reports, per role, which one won and why the others did not.
//!
//! About 700 lines of code: the role table and each role's offsets are one
//! piece of data, read as a whole when a hook is added; split, every role
//! would be spread over files.

use std::path::Path;

use serde::Serialize;
use tracer_common::{
    names::program,
    tcp::{OFF_NONE, TcpConfig},
};

use super::{
    btf::Btf,
    format::{Format, read_event_format},
};

/// One hook and what became of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    /// `group:name` for tracepoints (`group:a+b` when one program serves
    /// several events of a group), function name(s) for kprobe/fentry.
    pub hook: String,
    /// What it is for: `state`, `send`, `recv`, `rtt`, `retransmit`,
    /// `reset_sent`, `reset_received`, `destroy`, `accept`.
    pub role: &'static str,
    /// `tracepoint`, `kprobe` or `fentry`.
    pub method: &'static str,
    /// What it measures.
    pub measures: &'static str,
    /// `attached`, `missing` (absent on this kernel), `failed`, `unavailable`
    /// (mechanism unusable here), or `not_tried` (a preferred one attached,
    /// or the mechanism is not in the chosen order).
    pub status: &'static str,
    pub reason: Option<String>,
    /// BPF program name.
    #[serde(skip)]
    pub program: &'static str,
}

/// A tracepoint and how to fill its offsets into the config.
pub(crate) struct TracepointHook {
    pub group: &'static str,
    pub name: &'static str,
    /// Further events of the same group with the same fields, served by the
    /// same program; each is attached when its format fills the same offsets.
    pub also: &'static [&'static str],
    pub program: &'static str,
    pub measures: &'static str,
    /// Fills the config from the format; the error names the missing field.
    pub fill: fn(&Format, &mut TcpConfig) -> Result<(), String>,
}

const PTR: &[u16] = &[8];
const U16: &[u16] = &[2];
const I32: &[u16] = &[4];

fn fill_set_state(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.ss_skaddr = f.offset_of("skaddr", PTR)?;
    c.ss_oldstate = f.offset_of("oldstate", I32)?;
    c.ss_newstate = f.offset_of("newstate", I32)?;
    c.ss_sport = f.offset_of("sport", U16)?;
    c.ss_dport = f.offset_of("dport", U16)?;
    c.ss_family = f.offset_of("family", U16)?;
    c.ss_protocol = f.offset_of("protocol", U16)?;
    c.ss_saddr = f.offset_of("saddr", &[4])?;
    c.ss_daddr = f.offset_of("daddr", &[4])?;
    c.ss_saddr_v6 = f.offset_of("saddr_v6", &[16])?;
    c.ss_daddr_v6 = f.offset_of("daddr_v6", &[16])?;
    Ok(())
}

fn fill_send(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.send_sk = f.offset_of("sk", PTR)?;
    c.send_protocol = f.offset_of("protocol", U16)?;
    c.send_ret = f.offset_of("ret", I32)?;
    Ok(())
}

fn fill_recv(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.recv_sk = f.offset_of("sk", PTR)?;
    c.recv_protocol = f.offset_of("protocol", U16)?;
    c.recv_ret = f.offset_of("ret", I32)?;
    // Optional: without it, MSG_PEEK reads would be counted as received bytes.
    if let Ok(off) = f.offset_of("flags", I32) {
        c.recv_flags = off;
    }
    Ok(())
}

fn fill_probe(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    // Kernels before 5.x have no skaddr here; matching by 5-tuple is not done.
    c.probe_skaddr = f.offset_of("skaddr", PTR)?;
    c.probe_srtt = f.offset_of("srtt", I32)?;
    Ok(())
}

fn fill_retrans(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.retrans_skaddr = f.offset_of("skaddr", PTR)?;
    // Since Linux 6.13 the tracepoint also fires for failed retransmits,
    // with their error here; only successful ones (err 0) are counted.
    if f.field("err").is_some() {
        c.retrans_err = f.offset_of("err", I32)?;
    }
    Ok(())
}

fn fill_send_reset(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.send_reset_skaddr = f.offset_of("skaddr", PTR)?;
    Ok(())
}

fn fill_recv_reset(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.recv_reset_skaddr = f.offset_of("skaddr", PTR)?;
    Ok(())
}

fn fill_destroy(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.destroy_skaddr = f.offset_of("skaddr", PTR)?;
    Ok(())
}

fn fill_accept(f: &Format, c: &mut TcpConfig) -> Result<(), String> {
    c.accept_ret = f.offset_of("ret", &[8])?;
    Ok(())
}

/// Index of the accept tracepoint in [`TRACEPOINTS`]: its program also needs
/// the fd-table offsets from BTF.
const ACCEPT_TP: usize = 8;

pub(crate) const TRACEPOINTS: [TracepointHook; 9] = [
    TracepointHook {
        group: "sock",
        name: "inet_sock_set_state",
        also: &[],
        program: program::TCP_STATE,
        measures: "5-tuple, side, connect latency, start/end, final state",
        fill: fill_set_state,
    },
    TracepointHook {
        group: "sock",
        name: "sock_send_length",
        also: &[],
        program: program::TCP_SEND_LEN,
        measures: "bytes sent, send calls, pid attribution (Linux 6.3+)",
        fill: fill_send,
    },
    TracepointHook {
        group: "sock",
        name: "sock_recv_length",
        also: &[],
        program: program::TCP_RECV_LEN,
        measures: "bytes received, receive calls, pid attribution (Linux 6.3+)",
        fill: fill_recv,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_probe",
        also: &[],
        program: program::TCP_RTT,
        measures: "smoothed RTT (µs)",
        fill: fill_probe,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_retransmit_skb",
        also: &[],
        program: program::TCP_RETRANS,
        measures: "retransmits",
        fill: fill_retrans,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_send_reset",
        also: &[],
        program: program::TCP_RST_SENT,
        measures: "resets sent",
        fill: fill_send_reset,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_receive_reset",
        also: &[],
        program: program::TCP_RST_RECV,
        measures: "resets received",
        fill: fill_recv_reset,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_destroy_sock",
        also: &[],
        program: program::TCP_DESTROY,
        measures: "socket freed (close fallback)",
        fill: fill_destroy,
    },
    TracepointHook {
        group: "syscalls",
        name: "sys_exit_accept4",
        also: &["sys_exit_accept"],
        program: program::TCP_ACCEPT_TP,
        measures: "accept-queue wait of server flows",
        fill: fill_accept,
    },
];

/// How a hook reaches the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    Kprobe,
    Fentry,
    RawTracepoint,
    Tracepoint,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Kprobe => "kprobe",
            Mechanism::Fentry => "fentry",
            Mechanism::RawTracepoint => "raw_tracepoint",
            Mechanism::Tracepoint => "tracepoint",
        }
    }
}

/// The default preference: kprobes and fentry read the socket directly and
/// work before Linux 6.3; raw tracepoints are the same stable events as
/// tracepoints without the record the kernel assembles for each (several
/// times cheaper on hot paths such as every `recv()`), and need BTF for
/// socket fields; tracepoints with tracefs offsets are the last resort.
pub const DEFAULT_ORDER: [Mechanism; 4] = [
    Mechanism::Kprobe,
    Mechanism::Fentry,
    Mechanism::RawTracepoint,
    Mechanism::Tracepoint,
];

/// Parses `kprobe,fentry,raw_tracepoint,tracepoint` (any subset, any order, no repeats).
pub fn parse_order(s: &str) -> Result<Vec<Mechanism>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m = match part {
            "kprobe" => Mechanism::Kprobe,
            "fentry" | "fexit" => Mechanism::Fentry,
            "raw_tracepoint" | "raw" => Mechanism::RawTracepoint,
            "tracepoint" => Mechanism::Tracepoint,
            _ => {
                return Err(format!(
                    "unknown TCP hook mechanism {part:?} (kprobe, fentry, raw_tracepoint, tracepoint)"
                ));
            }
        };
        if out.contains(&m) {
            return Err(format!("{part} given twice"));
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err("no TCP hook mechanism given".into());
    }
    Ok(out)
}

/// One kernel function a kprobe/fentry variant attaches to.
pub(crate) struct FnHook {
    pub function: &'static str,
    /// BPF program; kretprobe programs for `ret` kprobes.
    pub program: &'static str,
    /// A kretprobe (kprobe path) or fexit (fentry path).
    pub ret: bool,
    /// Failing to attach it does not reject the mechanism.
    pub optional: bool,
}

const fn f(function: &'static str, program: &'static str, ret: bool) -> FnHook {
    FnHook {
        function,
        program,
        ret,
        optional: false,
    }
}

/// `h`, but failing to attach it does not reject its mechanism.
const fn optional(h: FnHook) -> FnHook {
    FnHook {
        optional: true,
        ..h
    }
}

/// What one kind of measurement can be hooked with.
pub(crate) struct Role {
    pub name: &'static str,
    /// Index into [`TRACEPOINTS`].
    pub tracepoint: usize,
    pub kprobe: &'static [FnHook],
    pub fentry: &'static [FnHook],
    /// Raw tracepoints (the same events as `tracepoint`, arguments instead
    /// of a record); empty where the event has no raw form we use.
    pub raw: &'static [RawHook],
    /// TCP tracing is refused when this role has no working hook.
    pub essential: bool,
    /// What it gives, for roles with no tracepoint ([`NO_TRACEPOINT`]);
    /// the others show their tracepoint's.
    pub measures: &'static str,
}

/// Whether the role named `name` is essential; None for no such role.
pub(crate) fn role_is_essential(name: &str) -> Option<bool> {
    ROLES.iter().find(|r| r.name == name).map(|r| r.essential)
}

/// [`Role::tracepoint`] of a role no tracepoint can serve.
pub(crate) const NO_TRACEPOINT: usize = usize::MAX;

/// One raw tracepoint: `programs` are alternatives for different argument
/// lists of the event, tried in order (attaching a program that reads an
/// argument the event lacks fails, so nothing is guessed from versions).
pub(crate) struct RawHook {
    /// Event name, without its group.
    pub event: &'static str,
    pub programs: &'static [&'static str],
}

const fn raw(event: &'static str, program: &'static [&'static str]) -> RawHook {
    RawHook {
        event,
        programs: program,
    }
}

/// `inet_sk_set_state` only adds a listener's child entering SYN_RECV, which
/// `tcp_set_state` never sees; without it server flows start at first data.
const INET_STATE_KP: FnHook = FnHook {
    function: "inet_sk_set_state",
    program: program::TCP_KP_INET_STATE,
    ret: false,
    optional: true,
};
const INET_STATE_FE: FnHook = FnHook {
    function: "inet_sk_set_state",
    program: program::TCP_FE_INET_STATE,
    ret: false,
    optional: true,
};

pub(crate) const ROLES: [Role; 10] = [
    Role {
        name: "state",
        tracepoint: 0,
        kprobe: &[
            f("tcp_set_state", program::TCP_KP_STATE, false),
            INET_STATE_KP,
        ],
        fentry: &[
            f("tcp_set_state", program::TCP_FE_STATE, false),
            INET_STATE_FE,
        ],
        raw: &[raw("inet_sock_set_state", &[program::TCP_RAW_STATE])],
        essential: true,
        measures: "",
    },
    Role {
        name: "send",
        tracepoint: 1,
        // `tcp_sendpage` (before 6.5): sendfile() and splice() to a socket
        // (since 6.5 they go through `tcp_sendmsg`).
        kprobe: &[
            f("tcp_sendmsg", program::TCP_KP_SENDMSG, false),
            f("tcp_sendmsg", program::TCP_KRP_SENDMSG, true),
            optional(f("tcp_sendpage", program::TCP_KP_SENDPAGE, false)),
            optional(f("tcp_sendpage", program::TCP_KRP_SENDPAGE, true)),
        ],
        fentry: &[
            f("tcp_sendmsg", program::TCP_FX_SENDMSG, true),
            optional(f("tcp_sendpage", program::TCP_FX_SENDPAGE, true)),
        ],
        raw: &[raw("sock_send_length", &[program::TCP_RAW_SEND])],
        essential: true,
        measures: "",
    },
    Role {
        name: "recv",
        tracepoint: 2,
        // `tcp_splice_read`: splice() from a socket reads without
        // `tcp_recvmsg`; no tracepoint sees it.
        kprobe: &[
            f("tcp_recvmsg", program::TCP_KP_RECVMSG, false),
            f("tcp_recvmsg", program::TCP_KRP_RECVMSG, true),
            optional(f("tcp_splice_read", program::TCP_KP_SPLICE_READ, false)),
            optional(f("tcp_splice_read", program::TCP_KRP_SPLICE_READ, true)),
        ],
        fentry: &[
            f("tcp_recvmsg", program::TCP_FX_RECVMSG, true),
            optional(f("tcp_splice_read", program::TCP_FX_SPLICE_READ, true)),
        ],
        raw: &[raw("sock_recv_length", &[program::TCP_RAW_RECV])],
        essential: true,
        measures: "",
    },
    Role {
        name: "rtt",
        tracepoint: 3,
        kprobe: &[f("tcp_rcv_established", program::TCP_KP_RTT, false)],
        fentry: &[f("tcp_rcv_established", program::TCP_FE_RTT, false)],
        raw: &[raw("tcp_probe", &[program::TCP_RAW_RTT])],
        essential: false,
        measures: "",
    },
    Role {
        name: "retransmit",
        tracepoint: 4,
        // The tracepoint fires in `__tcp_retransmit_skb`; it is inlined into
        // `tcp_retransmit_skb` on some kernels and called directly by tail
        // loss probes, so both are hooked (nested calls count once).
        kprobe: &[
            f("tcp_retransmit_skb", program::TCP_KP_RETRANS, false),
            f("tcp_retransmit_skb", program::TCP_KRP_RETRANS, true),
            optional(f(
                "__tcp_retransmit_skb",
                program::TCP_KP_RETRANS_INNER,
                false,
            )),
            optional(f(
                "__tcp_retransmit_skb",
                program::TCP_KRP_RETRANS_INNER,
                true,
            )),
        ],
        fentry: &[
            f("tcp_retransmit_skb", program::TCP_FE_RETRANS, false),
            f("tcp_retransmit_skb", program::TCP_FX_RETRANS, true),
            optional(f(
                "__tcp_retransmit_skb",
                program::TCP_FX_RETRANS_INNER,
                true,
            )),
        ],
        raw: &[raw(
            "tcp_retransmit_skb",
            &[program::TCP_RAW_RETRANS_ERR, program::TCP_RAW_RETRANS],
        )],
        essential: false,
        measures: "",
    },
    Role {
        name: "reset_sent",
        tracepoint: 5,
        // tcp_v4_send_reset/tcp_v6_send_reset are static and often inlined.
        kprobe: &[],
        fentry: &[],
        raw: &[raw("tcp_send_reset", &[program::TCP_RAW_RST_SENT])],
        essential: false,
        measures: "",
    },
    Role {
        name: "reset_received",
        tracepoint: 6,
        kprobe: &[f("tcp_reset", program::TCP_KP_RESET, false)],
        fentry: &[f("tcp_reset", program::TCP_FE_RESET, false)],
        raw: &[raw("tcp_receive_reset", &[program::TCP_RAW_RST_RECV])],
        essential: false,
        measures: "",
    },
    Role {
        name: "destroy",
        tracepoint: 7,
        // Also the IPv6 destructor (it calls this one; it is this one since 6.3).
        kprobe: &[f("tcp_v4_destroy_sock", program::TCP_KP_DESTROY, false)],
        fentry: &[f("tcp_v4_destroy_sock", program::TCP_FE_DESTROY, false)],
        raw: &[raw("tcp_destroy_sock", &[program::TCP_RAW_DESTROY])],
        essential: false,
        measures: "",
    },
    Role {
        name: "accept",
        tracepoint: ACCEPT_TP,
        // Only the return value (the child socket) is read: the arguments
        // changed in Linux 6.10.
        kprobe: &[f("inet_csk_accept", program::TCP_KRP_ACCEPT, true)],
        fentry: &[f("inet_csk_accept", program::TCP_FX_ACCEPT, true)],
        raw: &[],
        essential: false,
        measures: "",
    },
    Role {
        name: "connect",
        tracepoint: NO_TRACEPOINT,
        kprobe: &[
            f("tcp_v4_connect", program::TCP_KP_CONNECT4, false),
            f("tcp_v4_connect", program::TCP_KRP_CONNECT4, true),
            optional(f("tcp_v6_connect", program::TCP_KP_CONNECT6, false)),
            optional(f("tcp_v6_connect", program::TCP_KRP_CONNECT6, true)),
        ],
        fentry: &[
            f("tcp_v4_connect", program::TCP_FX_CONNECT4, true),
            optional(f("tcp_v6_connect", program::TCP_FX_CONNECT6, true)),
        ],
        raw: &[],
        essential: false,
        measures: "connect() refused before SYN_SENT (no route, bad address): errno, destination",
    },
];

/// The plan for one kernel: offsets for every usable tracepoint and, when
/// BTF is readable, for the kprobe/fentry programs; a status per tracepoint
/// (`pending` when its offsets are known). The kprobe/fentry statuses are
/// decided when attaching, by trying.
pub struct Plan {
    pub config: TcpConfig,
    pub hooks: Vec<HookStatus>,
    /// Why kprobe/fentry cannot be used at all (no BTF, or a field missing).
    pub btf_error: Option<String>,
}

/// Builds the tracepoint part of the plan from a format source (tracefs in
/// production, text in tests). `formats(group, name)` gives `Ok(None)` for an
/// absent event.
pub fn plan_with(mut formats: impl FnMut(&str, &str) -> anyhow::Result<Option<Format>>) -> Plan {
    let mut config = TcpConfig::default();
    let mut hooks = Vec::new();
    for (i, tp) in TRACEPOINTS.iter().enumerate() {
        let mut status = HookStatus {
            hook: format!("{}:{}", tp.group, tp.name),
            role: ROLES
                .iter()
                .find(|r| r.tracepoint == i)
                .map_or("", |r| r.name),
            method: "tracepoint",
            measures: tp.measures,
            status: "pending",
            reason: None,
            program: tp.program,
        };
        match formats(tp.group, tp.name) {
            Ok(None) => {
                status.status = "missing";
                status.reason = Some(format!(
                    "this kernel has no {}:{} tracepoint: {} not measured",
                    tp.group, tp.name, tp.measures
                ));
            }
            Err(e) => {
                status.status = "failed";
                status.reason = Some(format!("{e:#}"));
            }
            Ok(Some(f)) => {
                // Fill a copy so a half-filled hook leaves no offsets behind.
                let mut c = config;
                match (tp.fill)(&f, &mut c) {
                    Ok(()) => {
                        config = c;
                        let (names, notes) = also_events(&mut formats, tp, &c);
                        for n in names {
                            status.hook.push('+');
                            status.hook.push_str(n);
                        }
                        if !notes.is_empty() {
                            status.reason = Some(notes.join("; "));
                        }
                    }
                    Err(e) => {
                        status.status = "failed";
                        status.reason = Some(e);
                    }
                }
            }
        }
        hooks.push(status);
    }
    Plan {
        config,
        hooks,
        btf_error: None,
    }
}

/// The `also` events of `tp` whose formats fill exactly the offsets in `c`
/// (so one program reads them all), and why the others are left out.
fn also_events(
    formats: &mut impl FnMut(&str, &str) -> anyhow::Result<Option<Format>>,
    tp: &TracepointHook,
    c: &TcpConfig,
) -> (Vec<&'static str>, Vec<String>) {
    let mut names = Vec::new();
    let mut notes = Vec::new();
    for &name in tp.also {
        let mut other = *c;
        match formats(tp.group, name) {
            Ok(None) => notes.push(format!("no {}:{name} on this kernel", tp.group)),
            Err(e) => notes.push(format!("{}:{name}: {e:#}", tp.group)),
            Ok(Some(f)) => match (tp.fill)(&f, &mut other) {
                Ok(()) if other == *c => names.push(name),
                Ok(()) => notes.push(format!(
                    "{}:{name} lays its fields out differently from {}: not hooked",
                    tp.group, tp.name
                )),
                Err(e) => notes.push(format!("{}:{name}: {e}", tp.group)),
            },
        }
    }
    (names, notes)
}

/// Fills the offsets of the accept tracepoint's walk from a new fd to its
/// `struct sock`, from the kernel's BTF, checking each field's size.
pub fn fill_fd_walk_from_btf(btf: &Btf, c: &mut TcpConfig) -> anyhow::Result<()> {
    let mut n = *c;
    n.task_files = btf_field(btf, "task_struct", "files", &[8])?;
    n.files_fdt = btf_field(btf, "files_struct", "fdt", &[8])?;
    n.fdt_max_fds = btf_field(btf, "fdtable", "max_fds", &[4])?;
    n.fdt_fd = btf_field(btf, "fdtable", "fd", &[8])?;
    n.file_private_data = btf_field(btf, "file", "private_data", &[8])?;
    n.socket_sk = btf_field(btf, "socket", "sk", &[8])?;
    *c = n;
    Ok(())
}

/// Byte offset of `strukt.path` if its size is one of `sizes` and the
/// offset fits the config's `u16`.
fn btf_field(btf: &Btf, strukt: &str, path: &str, sizes: &[u32]) -> anyhow::Result<u16> {
    let m = btf.member(strukt, path)?;
    anyhow::ensure!(
        sizes.contains(&m.size),
        "{strukt}.{path} is {} bytes, expected {sizes:?}",
        m.size
    );
    u16::try_from(m.offset)
        .ok()
        .filter(|&o| o != OFF_NONE)
        .ok_or_else(|| anyhow::anyhow!("{strukt}.{path} offset {} too large", m.offset))
}

/// Fills the `struct sock` offsets the kprobe/fentry programs read, checking
/// each field's size, from the kernel's BTF.
pub fn fill_from_btf(btf: &Btf, c: &mut TcpConfig) -> anyhow::Result<()> {
    let field = |strukt: &str, path: &str, sizes: &[u32]| btf_field(btf, strukt, path, sizes);
    let mut n = *c;
    n.sk_family = field("sock", "__sk_common.skc_family", &[2])?;
    n.sk_state = field("sock", "__sk_common.skc_state", &[1])?;
    n.sk_num = field("sock", "__sk_common.skc_num", &[2])?;
    n.sk_dport = field("sock", "__sk_common.skc_dport", &[2])?;
    n.sk_daddr = field("sock", "__sk_common.skc_daddr", &[4])?;
    n.sk_rcv_saddr = field("sock", "__sk_common.skc_rcv_saddr", &[4])?;
    n.sk_v6_daddr = field("sock", "__sk_common.skc_v6_daddr", &[16])?;
    n.sk_v6_rcv_saddr = field("sock", "__sk_common.skc_v6_rcv_saddr", &[16])?;
    n.sk_protocol = field("sock", "sk_protocol", &[2])?;
    n.tp_srtt_us = field("tcp_sock", "srtt_us", &[4])?;
    let flags = btf.param_index("tcp_recvmsg", "flags")?;
    n.recvmsg_flags_arg = u16::try_from(flags)
        .ok()
        .filter(|&i| i <= 5)
        .ok_or_else(|| anyhow::anyhow!("tcp_recvmsg flags is parameter {flags}"))?;
    *c = n;
    Ok(())
}

/// The plan for the running kernel: tracepoint offsets from
/// `<tracefs>/events/*/*/format`, socket offsets from `/sys/kernel/btf/vmlinux`.
pub fn plan(tracefs: &Path) -> Plan {
    let mut p = plan_with(|g, n| read_event_format(tracefs, g, n));
    let walk = match Btf::from_sys_fs() {
        Ok(b) => {
            if let Err(e) = fill_from_btf(&b, &mut p.config) {
                p.btf_error = Some(format!("{e:#}"));
            }
            fill_fd_walk_from_btf(&b, &mut p.config)
        }
        Err(e) => {
            p.btf_error = Some(format!("{e:#}"));
            Err(e)
        }
    };
    if let Err(e) = walk {
        refuse_accept_tracepoint(&mut p, &format!("{e:#}"));
    }
    p
}

/// The accept tracepoint only gives the new fd; without the fd-table
/// offsets its socket cannot be found, so the hook is not attached.
fn refuse_accept_tracepoint(p: &mut Plan, why: &str) {
    p.config.accept_ret = OFF_NONE;
    if let Some(h) = p.hooks.get_mut(ACCEPT_TP)
        && h.status == "pending"
    {
        h.status = "failed";
        h.reason = Some(format!(
            "fd → socket walk offsets unknown (kernel BTF): {why}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::format::{parse, tests as samples};
    use tracer_common::tcp::OFF_NONE;

    #[test]
    fn only_optional_roles_may_be_left_unhooked() {
        for r in ["state", "send", "recv"] {
            assert_eq!(role_is_essential(r), Some(true), "{r}");
        }
        for r in ["destroy", "rtt", "accept", "connect", "reset_sent"] {
            assert_eq!(role_is_essential(r), Some(false), "{r}");
        }
        assert_eq!(role_is_essential("bogus"), None);
    }

    #[test]
    fn plan_from_samples_marks_missing_and_broken_hooks() {
        let p = plan_with(|g, n| match (g, n) {
            ("sock", "inet_sock_set_state") => Ok(Some(parse(samples::SET_STATE)?)),
            ("tcp", "tcp_probe") => Ok(Some(parse(samples::TCP_PROBE)?)),
            // A retransmit format without skaddr: the hook must fail, not guess.
            ("tcp", "tcp_retransmit_skb") => Ok(Some(parse(
                "name: tcp_retransmit_skb\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n",
            )?)),
            ("tcp", "tcp_send_reset") => anyhow::bail!("permission denied"),
            _ => Ok(None),
        });
        assert_eq!(p.config.ss_skaddr, 8);
        assert_eq!(p.config.ss_daddr_v6, 56);
        assert_eq!(p.config.probe_srtt, 100);
        assert_eq!(p.config.probe_skaddr, 128);
        assert_eq!(p.config.send_sk, OFF_NONE);
        assert_eq!(p.config.retrans_skaddr, OFF_NONE);
        let st = |h: &str| {
            p.hooks
                .iter()
                .find(|s| s.hook == h)
                .map(|s| s.status)
                .unwrap_or("absent")
        };
        assert_eq!(st("sock:inet_sock_set_state"), "pending");
        assert_eq!(st("sock:sock_send_length"), "missing");
        assert_eq!(st("tcp:tcp_retransmit_skb"), "failed");
        assert_eq!(st("tcp:tcp_send_reset"), "failed");
        assert!(p.hooks.iter().all(|h| h.method == "tracepoint"));
        assert_eq!(p.hooks[0].role, "state");
        let retrans = p
            .hooks
            .iter()
            .find(|s| s.hook == "tcp:tcp_retransmit_skb")
            .and_then(|s| s.reason.clone())
            .unwrap_or_default();
        assert!(retrans.contains("skaddr"), "{retrans}");
    }

    #[test]
    fn retransmit_errors_are_read_only_where_the_event_has_them() {
        const OLD: &str = "name: tcp_retransmit_skb\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n";
        let mut c = TcpConfig::default();
        fill_retrans(&parse(OLD).unwrap(), &mut c).unwrap();
        assert_eq!((c.retrans_skaddr, c.retrans_err), (16, OFF_NONE));
        let new = format!("{OLD}\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n");
        fill_retrans(&parse(&new).unwrap(), &mut c).unwrap();
        assert_eq!(c.retrans_err, 76);
        // An `err` of another size is refused rather than misread.
        let odd = format!("{OLD}\tfield:long err;\toffset:80;\tsize:8;\tsigned:1;\n");
        assert!(fill_retrans(&parse(&odd).unwrap(), &mut TcpConfig::default()).is_err());
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;
    use crate::tcp::format::parse;

    const EXIT_ACCEPT4: &str = "name: sys_exit_accept4\nID: 2233\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";

    fn accept_hook(accept: Option<&str>) -> (HookStatus, TcpConfig) {
        let p = plan_with(|g, n| match (g, n) {
            ("syscalls", "sys_exit_accept4") => Ok(Some(parse(EXIT_ACCEPT4)?)),
            ("syscalls", "sys_exit_accept") => match accept {
                Some(text) => Ok(Some(parse(text)?)),
                None => Ok(None),
            },
            _ => Ok(None),
        });
        (p.hooks[ACCEPT_TP].clone(), p.config)
    }

    #[test]
    fn both_accept_events_share_one_program_when_their_layouts_agree() {
        let same = EXIT_ACCEPT4.replace("accept4", "accept");
        let (h, c) = accept_hook(Some(&same));
        assert_eq!(h.hook, "syscalls:sys_exit_accept4+sys_exit_accept");
        assert_eq!((h.role, h.status, h.reason), ("accept", "pending", None));
        assert_eq!(c.accept_ret, 16);

        // A different layout for the second event: only accept4 is hooked.
        let moved = "name: sys_exit_accept\n\tfield:long ret;\toffset:24;\tsize:8;\tsigned:1;\n";
        let (h, c) = accept_hook(Some(moved));
        assert_eq!(h.hook, "syscalls:sys_exit_accept4");
        assert!(h.reason.unwrap_or_default().contains("differently"));
        assert_eq!(c.accept_ret, 16);

        let (h, _) = accept_hook(None);
        assert_eq!(h.hook, "syscalls:sys_exit_accept4");
        assert!(
            h.reason
                .unwrap_or_default()
                .contains("no syscalls:sys_exit_accept")
        );
    }

    #[test]
    fn accept_tracepoint_is_refused_without_the_fd_walk_offsets() {
        let mut p = plan_with(|g, n| match (g, n) {
            ("syscalls", "sys_exit_accept4") => Ok(Some(parse(EXIT_ACCEPT4)?)),
            _ => Ok(None),
        });
        refuse_accept_tracepoint(&mut p, "no BTF");
        let h = &p.hooks[ACCEPT_TP];
        assert_eq!(h.status, "failed");
        assert!(h.reason.as_deref().unwrap_or("").contains("no BTF"));
        assert_eq!(p.config.accept_ret, OFF_NONE);
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    #[test]
    fn parses_orders() {
        assert_eq!(
            parse_order("fentry, tracepoint").unwrap(),
            vec![Mechanism::Fentry, Mechanism::Tracepoint]
        );
        assert!(parse_order("kprobe,kprobe").is_err());
        assert!(parse_order("uprobe").is_err());
        assert!(parse_order("").is_err());
    }

    #[test]
    fn every_role_has_its_tracepoint_and_programs_exist_once() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in ROLES.iter().enumerate() {
            assert!(
                r.tracepoint == i || r.tracepoint == NO_TRACEPOINT,
                "{}",
                r.name
            );
            for h in r.kprobe.iter().chain(r.fentry) {
                assert!(seen.insert(h.program), "{} used twice", h.program);
            }
            for p in r.raw.iter().flat_map(|h| h.programs) {
                assert!(seen.insert(p), "{p} used twice");
            }
        }
        // The kernel's skipped runs are summed over this prefix.
        for p in seen
            .into_iter()
            .chain(TRACEPOINTS.iter().map(|t| t.program))
        {
            assert!(p.starts_with(program::TCP_PREFIX), "{p}");
        }
    }

    #[test]
    fn btf_of_this_kernel_fills_every_socket_offset() {
        let b = Btf::from_sys_fs().expect("kernel BTF");
        let mut c = TcpConfig::default();
        fill_from_btf(&b, &mut c).unwrap();
        assert_eq!(
            (c.sk_daddr, c.sk_rcv_saddr, c.sk_dport, c.sk_num),
            (0, 4, 12, 14)
        );
        assert!(c.tp_srtt_us != OFF_NONE && c.sk_protocol != OFF_NONE);
        fill_fd_walk_from_btf(&b, &mut c).unwrap();
        // `struct socket` and `struct fdtable` have been stable for years.
        assert_eq!((c.fdt_max_fds, c.fdt_fd), (0, 8));
        assert!(c.task_files != OFF_NONE && c.socket_sk != OFF_NONE);
    }
}
