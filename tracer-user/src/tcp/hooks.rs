//! Which kernel hooks TCP tracing uses, and the field offsets they need.
//!
//! Only the tracepoint path exists so far. Each hook's format file is parsed
//! and its offsets go into a [`TcpConfig`]; a hook whose event or fields are
//! missing is reported with the reason and left out, and the rest still run.
//! kprobe and fentry variants are listed as "not tried yet" so a report shows
//! what the flows were measured with.

use std::path::Path;

use serde::Serialize;
use tracer_common::tcp::TcpConfig;

use super::format::{Format, read_event_format};

/// One hook and what became of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    /// `group:name` for tracepoints, function name for kprobe/fentry.
    pub hook: String,
    /// `tracepoint`, `kprobe` or `fentry`.
    pub method: &'static str,
    /// What it measures.
    pub measures: &'static str,
    /// `attached`, `missing` (event absent), `failed`, or `not_tried`.
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

pub(crate) const TRACEPOINTS: [TracepointHook; 8] = [
    TracepointHook {
        group: "sock",
        name: "inet_sock_set_state",
        program: "tcp_state",
        measures: "5-tuple, side, connect latency, start/end, final state",
        fill: fill_set_state,
    },
    TracepointHook {
        group: "sock",
        name: "sock_send_length",
        program: "tcp_send_len",
        measures: "bytes sent, send calls, pid attribution (Linux 6.3+)",
        fill: fill_send,
    },
    TracepointHook {
        group: "sock",
        name: "sock_recv_length",
        program: "tcp_recv_len",
        measures: "bytes received, receive calls, pid attribution (Linux 6.3+)",
        fill: fill_recv,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_probe",
        program: "tcp_rtt",
        measures: "smoothed RTT (µs)",
        fill: fill_probe,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retrans",
        measures: "retransmits",
        fill: fill_retrans,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_send_reset",
        program: "tcp_rst_sent",
        measures: "resets sent",
        fill: fill_send_reset,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_rst_recv",
        measures: "resets received",
        fill: fill_recv_reset,
    },
    TracepointHook {
        group: "tcp",
        name: "tcp_destroy_sock",
        program: "tcp_destroy",
        measures: "socket freed (close fallback)",
        fill: fill_destroy,
    },
];

/// kprobe/fentry alternatives used by other tools; not implemented yet.
const NOT_TRIED: [(&str, &str, &str); 4] = [
    (
        "tcp_sendmsg",
        "fentry",
        "bytes sent on kernels without sock_send_length",
    ),
    (
        "tcp_cleanup_rbuf",
        "fentry",
        "bytes received on kernels without sock_recv_length",
    ),
    (
        "tcp_sendmsg",
        "kprobe",
        "bytes sent on kernels without sock_send_length",
    ),
    (
        "tcp_cleanup_rbuf",
        "kprobe",
        "bytes received on kernels without sock_recv_length",
    ),
];

/// The plan for one kernel: offsets for every usable tracepoint, and a status
/// per hook (`pending` for those to attach; the caller sets the outcome).
pub struct Plan {
    pub config: TcpConfig,
    pub hooks: Vec<HookStatus>,
}

/// Builds the plan from a format source (tracefs in production, text in tests).
/// `formats(group, name)` gives `Ok(None)` for an absent event.
pub fn plan_with(mut formats: impl FnMut(&str, &str) -> anyhow::Result<Option<Format>>) -> Plan {
    let mut config = TcpConfig::default();
    let mut hooks = Vec::new();
    for tp in &TRACEPOINTS {
        let mut status = HookStatus {
            hook: format!("{}:{}", tp.group, tp.name),
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
                    Ok(()) => config = c,
                    Err(e) => {
                        status.status = "failed";
                        status.reason = Some(e);
                    }
                }
            }
        }
        hooks.push(status);
    }
    for (func, method, measures) in NOT_TRIED {
        hooks.push(HookStatus {
            hook: func.to_owned(),
            method,
            measures,
            status: "not_tried",
            reason: Some(
                "kprobe/fentry paths are not implemented yet; tracepoints are used".into(),
            ),
            program: "",
        });
    }
    Plan { config, hooks }
}

/// The plan for the running kernel, from `<tracefs>/events/*/*/format`.
pub fn plan(tracefs: &Path) -> Plan {
    plan_with(|g, n| read_event_format(tracefs, g, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::format::{parse, tests as samples};
    use tracer_common::tcp::OFF_NONE;

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
        assert!(
            p.hooks
                .iter()
                .any(|h| h.status == "not_tried" && h.method == "fentry")
        );
        let retrans = p
            .hooks
            .iter()
            .find(|s| s.hook == "tcp:tcp_retransmit_skb")
            .and_then(|s| s.reason.clone())
            .unwrap_or_default();
        assert!(retrans.contains("skaddr"), "{retrans}");
    }
}
