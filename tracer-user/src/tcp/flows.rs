//! Flow rows from the kernel's records, and the roll-ups per remote endpoint
//! (clients) and per local listening port (servers).
//!
//! Over 600 lines with its unit tests (the code is about 430).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use tracer_common::tcp::{
    AF_INET, AF_INET6, FLAG_CLOSED, FLAG_DESTROYED, FLAG_MIDSTREAM, FLAG_TUPLE, RTT_SLOTS,
    SIDE_CLIENT, SIDE_SERVER, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1,
    TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, TcpFlow,
};

/// One non-empty RTT histogram slot: samples in `[lo_us, hi_us)`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RttBucket {
    pub lo_us: u64,
    pub hi_us: u64,
    pub count: u64,
}

/// Accepted server flows with an accept-queue wait in `[lo_ns, hi_ns)`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WaitBucket {
    pub lo_ns: u64,
    pub hi_ns: u64,
    pub count: u64,
}

/// One TCP connection as one local socket saw it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowReport {
    pub pid: u32,
    pub comm: String,
    /// `client`, `server` or `unknown` (seen mid-stream).
    pub side: &'static str,
    /// `ipv4`, `ipv6` or `unknown`.
    pub family: &'static str,
    pub local_addr: Option<IpAddr>,
    pub local_port: u16,
    pub remote_addr: Option<IpAddr>,
    pub remote_port: u16,
    /// Latest TCP state, e.g. `ESTABLISHED`, `CLOSE`.
    pub state: &'static str,
    pub open: bool,
    /// State the socket was in when it went to CLOSE.
    pub closed_from: Option<&'static str>,
    /// Why a closed flow ended (see [`close_reason`]); `None` while open.
    pub close_reason: Option<&'static str>,
    /// errno of a `connect()` the kernel refused at once (kprobe/fentry on
    /// `tcp_v4_connect`/`tcp_v6_connect`), e.g. 101; with its name in
    /// `connect_error`, e.g. `ENETUNREACH`.
    pub connect_errno: Option<u32>,
    pub connect_error: Option<&'static str>,
    /// `tcp_destroy_sock` was seen (the kernel freed the socket).
    pub destroyed: bool,
    /// First seen at send/recv: opened before tracing started, so start time,
    /// side and connect latency are unknown.
    pub midstream: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sends: u64,
    pub receives: u64,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// End (or now, for open flows) minus start.
    pub lifetime_ns: u64,
    /// SYN_SENT → ESTABLISHED, client flows only.
    pub connect_latency_ns: Option<u64>,
    /// Accept-queue wait, server flows accepted while traced: from the
    /// child socket turning ESTABLISHED (it is then in the listener's accept
    /// queue) to the owning process's accept() returning it. `None` for
    /// clients, mid-stream flows and where no `accept` hook is attached.
    pub accept_wait_ns: Option<u64>,
    /// Latest smoothed RTT, µs.
    pub srtt_us: Option<u64>,
    pub rtt_samples: u64,
    pub rtt_mean_us: Option<u64>,
    /// Sum of the RTT samples, µs: the exact `_sum` of the Prometheus histogram.
    #[serde(skip)]
    pub rtt_sum_us: u64,
    pub rtt_hist: Vec<RttBucket>,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Kernel socket address: identifies the flow, never printed.
    #[serde(skip)]
    pub skaddr: u64,
}

/// Linux TCP state names, index = state number.
const STATES: [&str; 13] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

pub fn state_name(s: u8) -> &'static str {
    STATES.get(s as usize).copied().unwrap_or("UNKNOWN")
}

fn addr(family: u16, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// Names of the errnos `connect()` fails with at once (Linux x86-64 numbers).
fn errno_name(e: u8) -> Option<&'static str> {
    Some(match e {
        0 => return None,
        1 => "EPERM",
        13 => "EACCES",
        22 => "EINVAL",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => "other",
    })
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Why a closed flow ended, from the state it left and the resets seen:
/// `refused` (reset answered the SYN), `connect_failed` (SYN_SENT → CLOSE
/// without a reset: timeout or unreachable; or `connect()` refused by the
/// kernel before any SYN, with its errno), `handshake_failed` (a server
/// socket closed in SYN_RECV), `reset_by_peer`, `reset_sent` (we aborted,
/// e.g. closed with unread data), `local_close` (we sent the first FIN),
/// `peer_close` (the peer sent the first FIN), `aborted` (closed from
/// ESTABLISHED or CLOSE_WAIT with no FIN exchange and no reset seen:
/// retransmission or keepalive timeout, or an error), `destroyed` (freed
/// before a CLOSE was seen). `None` while the flow is open.
pub fn close_reason(f: &TcpFlow) -> Option<&'static str> {
    if f.flags & FLAG_CLOSED == 0 {
        return None;
    }
    Some(match f.close_from {
        TCP_SYN_SENT if f.resets_received > 0 => "refused",
        _ if f.connect_errno != 0 => "connect_failed",
        TCP_SYN_SENT => "connect_failed",
        TCP_SYN_RECV => "handshake_failed",
        _ if f.resets_received > 0 => "reset_by_peer",
        _ if f.resets_sent > 0 => "reset_sent",
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_TIME_WAIT | TCP_CLOSING => "local_close",
        TCP_LAST_ACK => "peer_close",
        TCP_ESTABLISHED | TCP_CLOSE_WAIT => "aborted",
        _ if f.flags & FLAG_DESTROYED != 0 => "destroyed",
        _ => "unknown",
    })
}

impl FlowReport {
    /// Converts a kernel record; `now_ns` (CLOCK_MONOTONIC) gives open flows a lifetime.
    pub fn from_kernel(f: &TcpFlow, now_ns: u64) -> Self {
        let closed = f.flags & FLAG_CLOSED != 0;
        let tuple = f.flags & FLAG_TUPLE != 0;
        let end_ns = (closed && f.end_ns != 0).then_some(f.end_ns);
        let rtt_hist = f
            .rtt_hist
            .iter()
            .enumerate()
            .take(RTT_SLOTS)
            .filter(|(_, c)| **c != 0)
            .map(|(i, c)| RttBucket {
                lo_us: if i == 0 { 0 } else { 1u64 << i },
                hi_us: if i + 1 >= RTT_SLOTS {
                    u64::MAX
                } else {
                    1u64 << (i + 1)
                },
                count: u64::from(*c),
            })
            .collect();
        Self {
            pid: f.tgid,
            comm: comm(&f.comm),
            side: match f.side {
                SIDE_CLIENT => "client",
                SIDE_SERVER => "server",
                _ => "unknown",
            },
            family: match (tuple, f.family) {
                (true, AF_INET) => "ipv4",
                (true, AF_INET6) => "ipv6",
                _ => "unknown",
            },
            local_addr: tuple.then(|| addr(f.family, &f.saddr)).flatten(),
            local_port: f.sport,
            remote_addr: tuple.then(|| addr(f.family, &f.daddr)).flatten(),
            remote_port: f.dport,
            state: state_name(f.state),
            open: !closed,
            closed_from: closed.then(|| state_name(f.close_from)),
            close_reason: close_reason(f),
            connect_errno: (f.connect_errno != 0).then_some(u32::from(f.connect_errno)),
            connect_error: errno_name(f.connect_errno),
            destroyed: f.flags & FLAG_DESTROYED != 0,
            midstream: f.flags & FLAG_MIDSTREAM != 0,
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            sends: f.sends,
            receives: f.receives,
            start_ns: f.start_ns,
            end_ns,
            lifetime_ns: end_ns.unwrap_or(now_ns).saturating_sub(f.start_ns),
            connect_latency_ns: (f.connect_latency_ns != 0).then_some(f.connect_latency_ns),
            // ESTABLISHED can be recorded just after accept() took the child
            // (it is queued a moment before the state change): a wait of 0.
            accept_wait_ns: (f.accepted_ns != 0 && f.established_ns != 0)
                .then(|| f.accepted_ns.saturating_sub(f.established_ns)),
            srtt_us: (f.rtt_samples != 0).then_some(f.srtt_us),
            rtt_samples: f.rtt_samples,
            rtt_mean_us: f.rtt_sum_us.checked_div(f.rtt_samples),
            rtt_sum_us: f.rtt_sum_us,
            rtt_hist,
            retransmits: f.retransmits,
            resets_sent: f.resets_sent,
            resets_received: f.resets_received,
            skaddr: f.skaddr,
        }
    }
}

/// Totals over a set of flows.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FlowTotals {
    pub flows: u64,
    pub open: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sends: u64,
    pub receives: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Client flows with a measured connect latency.
    pub connects: u64,
    pub connect_latency_total_ns: u64,
    pub connect_latency_max_ns: u64,
    /// Client flows that closed before ESTABLISHED (refused, timed out, reset).
    pub connect_failures: u64,
    /// Highest latest-sRTT among the flows, µs.
    pub srtt_max_us: Option<u64>,
}

impl FlowTotals {
    pub fn add(&mut self, f: &FlowReport) {
        self.flows += 1;
        self.open += u64::from(f.open);
        self.bytes_sent = self.bytes_sent.saturating_add(f.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(f.bytes_received);
        self.sends = self.sends.saturating_add(f.sends);
        self.receives = self.receives.saturating_add(f.receives);
        self.retransmits = self.retransmits.saturating_add(f.retransmits);
        self.resets_sent = self.resets_sent.saturating_add(f.resets_sent);
        self.resets_received = self.resets_received.saturating_add(f.resets_received);
        if let Some(l) = f.connect_latency_ns {
            self.connects += 1;
            self.connect_latency_total_ns = self.connect_latency_total_ns.saturating_add(l);
            self.connect_latency_max_ns = self.connect_latency_max_ns.max(l);
        }
        if f.side == "client" && (f.closed_from == Some("SYN_SENT") || f.connect_errno.is_some()) {
            self.connect_failures += 1;
        }
        if let Some(r) = f.srtt_us {
            self.srtt_max_us = Some(self.srtt_max_us.unwrap_or(0).max(r));
        }
    }
}

/// Client-side (and mid-stream) flows of one process to one remote endpoint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RemoteRollup {
    pub pid: u32,
    pub comm: String,
    pub remote_addr: Option<IpAddr>,
    pub remote_port: u16,
    #[serde(flatten)]
    pub totals: FlowTotals,
}

/// Server-side flows of one process accepted on one local port.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ListenRollup {
    pub pid: u32,
    pub comm: String,
    pub local_port: u16,
    /// Distinct remote addresses.
    pub peers: u64,
    #[serde(flatten)]
    pub totals: FlowTotals,
    #[serde(flatten)]
    pub accept: AcceptWaits,
}

/// Accept-queue waits of the flows of one listening port.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AcceptWaits {
    /// Flows with a measured accept wait.
    pub accepts: u64,
    pub accept_wait_total_ns: u64,
    pub accept_wait_mean_ns: Option<u64>,
    pub accept_wait_max_ns: Option<u64>,
    /// Log2 histogram of the waits; empty slots left out.
    pub accept_wait_hist: Vec<WaitBucket>,
}

/// Log2 slots of the accept-wait histogram: slot `i` holds `[2^i, 2^(i+1))`
/// ns (slot 0 also 0 and 1 ns); the last slot is open-ended.
const WAIT_SLOTS: usize = 40;

fn wait_slot(ns: u64) -> usize {
    if ns < 2 {
        0
    } else {
        (ns.ilog2() as usize).min(WAIT_SLOTS - 1)
    }
}

impl AcceptWaits {
    /// Builds the summary of `waits` (ns).
    pub fn of(waits: impl IntoIterator<Item = u64>) -> Self {
        let mut a = Self::default();
        let mut slots = [0u64; WAIT_SLOTS];
        for w in waits {
            a.accepts += 1;
            a.accept_wait_total_ns = a.accept_wait_total_ns.saturating_add(w);
            a.accept_wait_max_ns = Some(a.accept_wait_max_ns.unwrap_or(0).max(w));
            slots[wait_slot(w)] += 1;
        }
        a.accept_wait_mean_ns = a.accept_wait_total_ns.checked_div(a.accepts);
        a.accept_wait_hist = slots
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(i, c)| WaitBucket {
                lo_ns: if i == 0 { 0 } else { 1u64 << i },
                hi_ns: if i + 1 >= WAIT_SLOTS {
                    u64::MAX
                } else {
                    1u64 << (i + 1)
                },
                count: *c,
            })
            .collect();
        a
    }
}

/// Per (pid, remote address, remote port), over non-server flows; sorted by
/// bytes moved, largest first.
pub fn rollup_by_remote(flows: &[FlowReport]) -> Vec<RemoteRollup> {
    let mut m: BTreeMap<(u32, Option<IpAddr>, u16), RemoteRollup> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.side != "server") {
        m.entry((f.pid, f.remote_addr, f.remote_port))
            .or_insert_with(|| RemoteRollup {
                pid: f.pid,
                comm: f.comm.clone(),
                remote_addr: f.remote_addr,
                remote_port: f.remote_port,
                totals: FlowTotals::default(),
            })
            .totals
            .add(f);
    }
    let mut out: Vec<_> = m.into_values().collect();
    out.sort_by_key(|r| {
        std::cmp::Reverse(r.totals.bytes_sent.saturating_add(r.totals.bytes_received))
    });
    out
}

/// A listen roll-up being built, with the distinct peers and the accept
/// waits seen so far.
type ListenAcc = (ListenRollup, BTreeSet<Option<IpAddr>>, Vec<u64>);

/// Per (pid, local port), over server flows; sorted by bytes moved, largest first.
pub fn rollup_by_listen_port(flows: &[FlowReport]) -> Vec<ListenRollup> {
    let mut m: BTreeMap<(u32, u16), ListenAcc> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.side == "server") {
        let e = m.entry((f.pid, f.local_port)).or_insert_with(|| {
            (
                ListenRollup {
                    pid: f.pid,
                    comm: f.comm.clone(),
                    local_port: f.local_port,
                    peers: 0,
                    totals: FlowTotals::default(),
                    accept: AcceptWaits::default(),
                },
                BTreeSet::new(),
                Vec::new(),
            )
        });
        e.0.totals.add(f);
        e.1.insert(f.remote_addr);
        e.2.extend(f.accept_wait_ns);
    }
    let mut out: Vec<_> = m
        .into_values()
        .map(|(mut r, peers, waits)| {
            r.peers = peers.len() as u64;
            r.accept = AcceptWaits::of(waits);
            r
        })
        .collect();
    out.sort_by_key(|r| {
        std::cmp::Reverse(r.totals.bytes_sent.saturating_add(r.totals.bytes_received))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::tcp::{TCP_CLOSE, TCP_ESTABLISHED};

    fn flow(side: u8, sport: u16, dport: u16, sent: u64, recv: u64, closed: bool) -> TcpFlow {
        let mut f = TcpFlow {
            skaddr: 0xffff_8880_0000_0000 + u64::from(sport),
            tgid: 42,
            side,
            family: AF_INET,
            sport,
            dport,
            start_ns: 1_000,
            bytes_sent: sent,
            bytes_received: recv,
            sends: 1,
            receives: 1,
            flags: FLAG_TUPLE,
            state: TCP_ESTABLISHED,
            ..Default::default()
        };
        f.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        f.daddr[..4].copy_from_slice(&[10, 0, 0, u8::try_from(dport % 200).unwrap_or(0)]);
        f.comm[..4].copy_from_slice(b"test");
        if closed {
            f.flags |= FLAG_CLOSED;
            f.state = TCP_CLOSE;
            f.close_from = TCP_FIN_WAIT1;
            f.end_ns = 5_000;
        }
        f
    }

    #[test]
    fn converts_a_closed_client_flow() {
        let mut k = flow(SIDE_CLIENT, 40000, 80, 100, 50, true);
        k.connect_latency_ns = 700;
        k.rtt_samples = 2;
        k.rtt_sum_us = 30;
        k.srtt_us = 20;
        k.rtt_hist[3] = 1;
        k.rtt_hist[4] = 1;
        let r = FlowReport::from_kernel(&k, 10_000);
        assert_eq!(r.comm, "test");
        assert_eq!((r.side, r.family, r.state), ("client", "ipv4", "CLOSE"));
        assert_eq!(r.closed_from, Some("FIN_WAIT1"));
        assert_eq!(r.close_reason, Some("local_close"));
        assert!(!r.open);
        assert_eq!(r.lifetime_ns, 4_000);
        assert_eq!(
            r.local_addr,
            Some(
                "127.0.0.1"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert_eq!(r.connect_latency_ns, Some(700));
        assert_eq!((r.srtt_us, r.rtt_mean_us), (Some(20), Some(15)));
        assert_eq!(
            r.rtt_hist,
            vec![
                RttBucket {
                    lo_us: 8,
                    hi_us: 16,
                    count: 1
                },
                RttBucket {
                    lo_us: 16,
                    hi_us: 32,
                    count: 1
                }
            ]
        );
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(!json.contains("skaddr"), "kernel address leaked: {json}");
    }

    #[test]
    fn open_midstream_flow_has_no_tuple() {
        let mut k = flow(0, 0, 0, 7, 0, false);
        k.flags = FLAG_MIDSTREAM;
        let r = FlowReport::from_kernel(&k, 3_000);
        assert_eq!((r.side, r.family), ("unknown", "unknown"));
        assert!(r.open && r.midstream);
        assert_eq!(r.remote_addr, None);
        assert_eq!(r.lifetime_ns, 2_000);
        assert_eq!(
            (
                r.srtt_us,
                r.rtt_mean_us,
                r.connect_latency_ns,
                r.accept_wait_ns
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn accept_wait_only_for_accepted_server_flows() {
        let mut k = flow(SIDE_SERVER, 8080, 50001, 1, 1, true);
        k.established_ns = 2_000;
        assert_eq!(FlowReport::from_kernel(&k, 9_000).accept_wait_ns, None);
        k.accepted_ns = 2_500;
        assert_eq!(FlowReport::from_kernel(&k, 9_000).accept_wait_ns, Some(500));
        // ESTABLISHED recorded after accept() took the child: no negative wait.
        k.established_ns = 2_600;
        assert_eq!(FlowReport::from_kernel(&k, 9_000).accept_wait_ns, Some(0));
        // Accepted but ESTABLISHED never seen: unknown, not 0.
        k.established_ns = 0;
        assert_eq!(FlowReport::from_kernel(&k, 9_000).accept_wait_ns, None);
        let c = flow(SIDE_CLIENT, 40000, 80, 1, 1, true);
        assert_eq!(FlowReport::from_kernel(&c, 9_000).accept_wait_ns, None);
    }

    #[test]
    fn accept_waits_summarise_count_mean_max_and_log2_slots() {
        let a = AcceptWaits::of([0, 1_000, 1_500, 3_000_000]);
        assert_eq!(a.accepts, 4);
        assert_eq!(a.accept_wait_mean_ns, Some((1_000 + 1_500 + 3_000_000) / 4));
        assert_eq!(a.accept_wait_max_ns, Some(3_000_000));
        let b: Vec<_> = a
            .accept_wait_hist
            .iter()
            .map(|b| (b.lo_ns, b.hi_ns, b.count))
            .collect();
        assert_eq!(
            b,
            vec![
                (0, 2, 1),
                (512, 1024, 1),
                (1024, 2048, 1),
                (1 << 21, 1 << 22, 1)
            ]
        );
        let none = AcceptWaits::of([]);
        assert_eq!(
            (
                none.accepts,
                none.accept_wait_mean_ns,
                none.accept_wait_max_ns
            ),
            (0, None, None)
        );
        assert!(none.accept_wait_hist.is_empty());
    }

    #[test]
    fn rollups_sum_per_remote_and_per_listen_port() {
        let kernel = [
            flow(SIDE_CLIENT, 40001, 80, 100, 10, true),
            flow(SIDE_CLIENT, 40002, 80, 200, 20, false),
            flow(SIDE_CLIENT, 40003, 81, 5, 5, true),
            flow(SIDE_SERVER, 8080, 50001, 1, 1000, true),
            flow(SIDE_SERVER, 8080, 50002, 2, 2000, true),
            flow(SIDE_SERVER, 9090, 50003, 3, 3000, false),
        ];
        let flows: Vec<_> = kernel
            .iter()
            .map(|k| {
                let mut r = FlowReport::from_kernel(k, 10_000);
                if r.local_port == 40001 {
                    r.connect_latency_ns = Some(50);
                }
                if r.local_port == 8080 {
                    r.accept_wait_ns = Some(u64::from(r.remote_port));
                }
                r
            })
            .collect();
        let remote = rollup_by_remote(&flows);
        assert_eq!(remote.len(), 2);
        assert_eq!(remote[0].remote_port, 80);
        let t = &remote[0].totals;
        assert_eq!(
            (t.flows, t.open, t.bytes_sent, t.bytes_received),
            (2, 1, 300, 30)
        );
        assert_eq!((t.connects, t.connect_latency_max_ns), (1, 50));
        assert_eq!(remote[1].totals.bytes_sent, 5);
        let listen = rollup_by_listen_port(&flows);
        assert_eq!(listen.len(), 2);
        assert_eq!(
            (listen[0].local_port, listen[0].totals.bytes_received),
            (8080, 3000)
        );
        assert_eq!((listen[0].totals.flows, listen[0].peers), (2, 2));
        assert_eq!((listen[1].local_port, listen[1].totals.open), (9090, 1));
        let a = &listen[0].accept;
        assert_eq!(
            (a.accepts, a.accept_wait_mean_ns, a.accept_wait_max_ns),
            (2, Some(50_001), Some(50_002))
        );
        assert_eq!(listen[1].accept.accepts, 0, "no accept recorded on 9090");
    }

    #[test]
    fn state_names_are_bounded() {
        assert_eq!(state_name(1), "ESTABLISHED");
        assert_eq!(state_name(12), "NEW_SYN_RECV");
        assert_eq!(state_name(200), "UNKNOWN");
    }

    #[test]
    fn close_reasons_follow_the_state_left_and_the_resets() {
        let reason = |from: u8, rst_in: u64, rst_out: u64, flags: u8| {
            close_reason(&TcpFlow {
                close_from: from,
                resets_received: rst_in,
                resets_sent: rst_out,
                flags,
                ..Default::default()
            })
        };
        let c = FLAG_CLOSED;
        assert_eq!(reason(TCP_SYN_SENT, 1, 0, c), Some("refused"));
        assert_eq!(reason(TCP_SYN_SENT, 0, 0, c), Some("connect_failed"));
        let unreachable = TcpFlow {
            close_from: TCP_CLOSE,
            connect_errno: 101,
            flags: c,
            ..Default::default()
        };
        assert_eq!(close_reason(&unreachable), Some("connect_failed"));
        let r = FlowReport::from_kernel(&unreachable, 0);
        assert_eq!(
            (r.connect_errno, r.connect_error),
            (Some(101), Some("ENETUNREACH"))
        );
        assert_eq!(reason(TCP_SYN_RECV, 0, 0, c), Some("handshake_failed"));
        assert_eq!(reason(TCP_ESTABLISHED, 1, 0, c), Some("reset_by_peer"));
        assert_eq!(reason(TCP_ESTABLISHED, 0, 1, c), Some("reset_sent"));
        assert_eq!(reason(TCP_FIN_WAIT2, 0, 0, c), Some("local_close"));
        assert_eq!(reason(TCP_TIME_WAIT, 0, 0, c), Some("local_close"));
        assert_eq!(reason(TCP_LAST_ACK, 0, 0, c), Some("peer_close"));
        assert_eq!(reason(TCP_ESTABLISHED, 0, 0, c), Some("aborted"));
        assert_eq!(reason(0, 0, 0, c | FLAG_DESTROYED), Some("destroyed"));
        assert_eq!(reason(TCP_ESTABLISHED, 0, 0, 0), None);
    }
}
