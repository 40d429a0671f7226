//! Privileged tests of TCP flow tracing against a Go fixture's own ground
//! truth (`tests/fixtures/tcpflows`: byte counts, accept waits, resets,
//! retransmits, splice/sendfile), over each hook mechanism this host has,
//! and which accept hooks are opt-in. `cargo xtask vm-test` runs this test
//! binary's `go_fixture_flows_match_ground_truth` by exact name inside a
//! Debian 6.1 kernel with the kprobe path, then the fentry path, forced
//! (`TRACER_TCP_HOOKS`): keep that name. The loopback tests of the test
//! process itself are in `tcp_loopback.rs`.
//!
//! Longer than ~600 lines: one ground-truth check (`go_fixture_check` and its
//! per-kind checks) that every mechanism variant runs; splitting it would
//! split one assertion chain across files.

mod tcp_common;

use std::{
    io::{BufReader, Read, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use tcp_common::{find, settled_report};
use tracer_tests::{build_newest, privileged_test, procfs::retrans_segs};
use tracer_user::{
    ebpf::Tracer,
    tcp::{
        AcceptWait, FlowReport, Mechanism, RttMode, TcpOptions, TcpReport, TcpTracing, attach_tcp,
    },
};

/// `tracer inspect --kernel --json [ARGS]`: the accept role's statuses.
fn accept_statuses(args: &[&str]) -> Result<Vec<(String, String, String)>> {
    let out = Command::new(tracer_tests::tracer_bin()?)
        .args(["inspect", "--kernel", "--json"])
        .args(args)
        .output()
        .context("running tracer inspect --kernel")?;
    ensure!(out.status.success(), "inspect failed: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["tcp_hooks"]
        .as_array()
        .context("no tcp_hooks")?
        .iter()
        .filter(|h| h["role"] == "accept")
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or("").to_owned();
            (s("method"), s("status"), s("reason"))
        })
        .collect())
}

/// Syscall tracepoints slow every syscall on the node, so they measure
/// accept waits only when asked (`--tcp-accept-wait syscalls`); `off` turns
/// every accept hook off.
#[test]
fn accept_syscall_tracepoints_are_opt_in() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let tp = |v: &[(String, String, String)]| {
        v.iter()
            .find(|(m, _, _)| m == "tracepoint")
            .cloned()
            .unwrap_or_default()
    };
    let auto = accept_statuses(&[])?;
    let (_, status, reason) = tp(&auto);
    ensure!(
        status == "not_tried" && reason.contains("--tcp-accept-wait syscalls"),
        "default: {auto:?}"
    );
    let on = accept_statuses(&["--tcp-accept-wait", "syscalls"])?;
    ensure!(tp(&on).1 == "attached", "syscalls: {on:?}");
    let off = accept_statuses(&["--tcp-accept-wait", "off"])?;
    ensure!(
        off.iter().all(|(_, st, _)| st == "not_tried"),
        "off: {off:?}"
    );
    Ok(())
}

/// The Go ground-truth fixture: `$TRACER_TCP_FIXTURE` (prebuilt, in the VM),
/// else built with the newest installed Go.
fn tcpflows_fixture() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_TCP_FIXTURE") {
        return Ok(PathBuf::from(p));
    }
    build_newest("tcpflows")
}

/// One slow-accept connection as the fixture saw it.
struct SlowAccept {
    client: SocketAddr,
    server: SocketAddr,
    /// The accept-queue wait the application measured (accept return − the
    /// client's dial return); scheduling delays on either side skew it.
    wait_ns: u64,
    /// Bounds the kernel's wait lies in whatever the scheduler did: at least
    /// accept call − dial return, at most accept return − dial call.
    lo_ns: u64,
    hi_ns: u64,
}

/// Ground truth the fixture printed.
struct GoTruth {
    pid: u32,
    /// (family, client, server) per connection.
    flows: Vec<(String, SocketAddr, SocketAddr)>,
    /// Slow-accept connections.
    slow: Vec<SlowAccept>,
    refused_port: u16,
    unreachable: Option<SocketAddr>,
    /// (client, server, bytes) of the connection that had to retransmit.
    lossy: Option<(SocketAddr, SocketAddr, u64)>,
    /// (client, server, bytes) of the sendfile/splice connection.
    spliced: Option<(SocketAddr, SocketAddr, u64)>,
}

fn parse_truth(out: &str) -> Result<GoTruth> {
    let mut t = GoTruth {
        pid: 0,
        flows: Vec::new(),
        slow: Vec::new(),
        refused_port: 0,
        unreachable: None,
        lossy: None,
        spliced: None,
    };
    let mut done = false;
    for line in out.lines() {
        let kv = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|w| w.strip_prefix('=')))
                .with_context(|| format!("{k}= missing in {line:?}"))
        };
        if line.starts_with("pid=") {
            t.pid = kv("pid")?.parse()?;
        } else if line.starts_with("flow ") {
            t.flows.push((
                kv("family")?.to_owned(),
                kv("client")?.parse()?,
                kv("server")?.parse()?,
            ));
        } else if line.starts_with("lossy ") {
            t.lossy = Some((
                kv("client")?.parse()?,
                kv("server")?.parse()?,
                kv("bytes")?.parse()?,
            ));
        } else if line.starts_with("spliced ") {
            t.spliced = Some((
                kv("client")?.parse()?,
                kv("server")?.parse()?,
                kv("bytes")?.parse()?,
            ));
        } else if line.starts_with("slow ") {
            t.slow.push(SlowAccept {
                client: kv("client")?.parse()?,
                server: kv("server")?.parse()?,
                wait_ns: kv("wait_ns")?.parse()?,
                lo_ns: kv("lo_ns")?.parse::<i64>()?.max(0).unsigned_abs(),
                hi_ns: kv("hi_ns")?.parse()?,
            });
        } else if line.starts_with("refused ") {
            t.refused_port = kv("port")?.parse()?;
        } else if line.starts_with("unreachable ") {
            t.unreachable = Some(kv("addr")?.parse()?);
        } else if line == "done" {
            done = true;
        }
    }
    ensure!(
        done && t.pid != 0
            && t.refused_port != 0
            && t.lossy.is_some()
            && t.unreachable.is_some()
            && t.spliced.is_some(),
        "fixture output: {out}"
    );
    Ok(t)
}

/// A Go client and server in one process move known byte counts over IPv4
/// and IPv6 loopback, then a server accepts clients that connected at once
/// slowly, then the fixture dials a closed port, then sends through a socket
/// filter that drops segments for 0.5 s (retransmits > 0, at most the
/// kernel's own `RetransSegs` increase). Every flow must match exactly, with
/// the fixture's pid and comm, and every accepted server flow must carry an
/// accept-queue wait (the slow ones agreeing with the wait the application
/// measured), through whichever hooks were chosen
/// (`$TRACER_TCP_HOOKS`; `$TRACER_TCP_EXPECT` names the mechanism that must
/// have served state changes, bytes, RTT, received resets and accepts).
#[test]
fn go_fixture_flows_match_ground_truth() -> Result<()> {
    privileged_test!();
    let want = std::env::var("TRACER_TCP_EXPECT").ok();
    go_fixture_check(None, want.as_deref(), TcpOptions::default().rtt(), &[])
}

/// The same ground truth with no hook on sockets being freed, as on a
/// kernel without `tcp_v4_destroy_sock`/`tcp:tcp_destroy_sock`: closed flows
/// stay in the kernel table and user space must collect each one once, after
/// its hold, byte-exact, none marked `destroyed`.
#[test]
fn go_fixture_flows_are_collected_without_a_destroy_hook() -> Result<()> {
    privileged_test!();
    if std::env::var_os("TRACER_TCP_EXPECT").is_some() {
        return Ok(());
    }
    let order = [Mechanism::RawTracepoint, Mechanism::Tracepoint];
    go_fixture_check(
        Some(&order),
        Some(order[0].name()),
        RttMode::Calls,
        &["destroy"],
    )
}

/// The same ground truth over tracepoints with tracefs record offsets (the
/// last-resort mechanism: on this host raw tracepoints are preferred; the
/// accept role is the only one to use the syscall tracepoints either way).
#[test]
fn go_fixture_flows_match_ground_truth_over_format_tracepoints() -> Result<()> {
    privileged_test!();
    go_fixture_on_host(&[Mechanism::Tracepoint])
}

/// The same over raw tracepoints (what this host uses by default), accept
/// waits excepted (raw syscall tracepoints are not used; see
/// `--tcp-accept-wait`).
#[test]
fn go_fixture_flows_match_ground_truth_over_raw_tracepoints() -> Result<()> {
    privileged_test!();
    go_fixture_on_host(&[Mechanism::RawTracepoint, Mechanism::Tracepoint])
}

/// [`go_fixture_check`] forced to `order`, whose first mechanism must serve
/// every role, with RTT sampled at calls and then per segment. Not in
/// vm-test (`$TRACER_TCP_EXPECT` set), which runs the kprobe/fentry
/// variants: 6.1 lacks the send/recv events.
fn go_fixture_on_host(order: &[Mechanism]) -> Result<()> {
    if std::env::var_os("TRACER_TCP_EXPECT").is_some() {
        return Ok(());
    }
    for rtt in [RttMode::Calls, RttMode::Segments] {
        go_fixture_check(Some(order), Some(order[0].name()), rtt, &[])
            .with_context(|| format!("RTT mode {rtt:?}"))?;
    }
    Ok(())
}

/// Runs the Go fixture traced with `order` (None: the configured order) and
/// checks every flow; `want` names the mechanism every role must use (the
/// `rtt` role only with [`RttMode::Segments`]: sampled at calls, it has no
/// hook); the roles in `unhooked` are left without one.
fn go_fixture_check(
    order: Option<&[Mechanism]>,
    want: Option<&str>,
    rtt: RttMode,
    unhooked: &[&str],
) -> Result<()> {
    let _serial = tracer_tests::serial();
    let want_mechanism = want;
    const GO_CONNS: usize = 4;
    const GO_REQ: u64 = 123_457;
    const GO_RESP: u64 = 65_537;
    const SLOW_CLIENTS: usize = 6;
    const SLOW_SLEEP_MS: u64 = 30;
    let fixture = tcpflows_fixture()?;
    let mut child = Command::new(&fixture)
        .args(["-conns", &GO_CONNS.to_string()])
        .args(["-slow", &SLOW_CLIENTS.to_string()])
        .args(["-slowsleep", &format!("{SLOW_SLEEP_MS}ms")])
        .args(["-req", &GO_REQ.to_string(), "-resp", &GO_RESP.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", fixture.display()))?;
    let pid = child.id();
    let mut tracer = Tracer::load()?;
    let opts = TcpOptions {
        hook_order: order.map(<[Mechanism]>::to_vec),
        accept_wait: Some(AcceptWait::Syscalls),
        rtt: Some(rtt),
        unhooked: unhooked.iter().map(|r| r.to_string()).collect(),
    };
    let attached = attach_tcp(&mut tracer, &[pid], &opts);
    let mut stdin = child.stdin.take().context("fixture stdin")?;
    let mut tcp = match attached {
        Ok(t) => t,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    for h in tcp.hooks() {
        eprintln!(
            "hook {:<10} {:<15} {:<34} {}: {:?}",
            h.method, h.role, h.hook, h.status, h.reason
        );
    }
    if let Some(want) = want {
        for role in [
            "state",
            "send",
            "recv",
            "rtt",
            "retransmit",
            "reset_received",
            "accept",
            "connect",
            "destroy",
        ]
        .into_iter()
        .filter(|r| !unhooked.contains(r))
        .filter(|r| *r != "accept" || want != "raw_tracepoint")
        // No tracepoint reports a connect() refused before SYN_SENT.
        .filter(|r| *r != "connect" || matches!(want, "kprobe" | "fentry"))
        .filter(|r| *r != "rtt" || rtt == RttMode::Segments)
        {
            ensure!(
                tcp.mechanism_of(role) == Some(want),
                "{role} should be hooked by {want}: {:#?}",
                tcp.hooks()
            );
        }
    }
    for role in unhooked {
        ensure!(
            tcp.mechanism_of(role).is_none(),
            "{role} hooked though left out: {:#?}",
            tcp.hooks()
        );
    }
    // Whether flows are marked freed (else collected after a hold).
    let destroyed = tcp.mechanism_of("destroy").is_some();
    // Sampled at calls, no program runs per received segment.
    ensure!(
        rtt == RttMode::Segments || tcp.mechanism_of("rtt").is_none(),
        "rtt hooked in calls mode: {:#?}",
        tcp.hooks()
    );
    let segs_before = retrans_segs()?;
    stdin.write_all(b"go\n")?;
    let mut out = String::new();
    BufReader::new(child.stdout.take().context("fixture stdout")?).read_to_string(&mut out)?;
    let status = child.wait()?;
    let segs = retrans_segs()?.saturating_sub(segs_before);
    ensure!(status.success(), "fixture failed: {status}\n{out}");
    let truth = parse_truth(&out)?;
    ensure!(truth.pid == pid, "fixture pid {} != {pid}", truth.pid);
    ensure!(truth.flows.len() == 2 * GO_CONNS, "fixture output: {out}");
    ensure!(truth.slow.len() == SLOW_CLIENTS, "fixture output: {out}");

    let (lossy_client, lossy_server, lossy_bytes) = truth.lossy.context("no lossy line")?;
    let mut ports: Vec<u16> = truth.flows.iter().map(|(_, c, _)| c.port()).collect();
    ports.extend(truth.slow.iter().map(|s| s.client.port()));
    ports.push(truth.refused_port);
    ports.push(lossy_client.port());
    let spliced = truth.spliced.context("no spliced line")?;
    ports.push(spliced.0.port());
    let want = 2 * truth.flows.len() + 2 * truth.slow.len() + 1 + 2 + 2;
    let r = settled_report(&mut tcp, &mut tracer, pid, &ports, want)?;
    let comm: String = fixture
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    for (family, client, server) in &truth.flows {
        let fam = if family == "tcp4" { "ipv4" } else { "ipv6" };
        let c = find(&r, pid, "client", client.port(), server.port())?;
        ensure!(
            c.bytes_sent == GO_REQ
                && c.bytes_received == GO_RESP
                && c.comm == comm
                && c.family == fam
                && c.remote_addr == Some(server.ip())
                && c.local_addr == Some(client.ip())
                && c.connect_latency_ns.is_some_and(|v| v > 0)
                && c.srtt_us.is_some_and(|v| v > 0)
                && c.resets_received == 0
                && c.accept_wait_ns.is_none()
                && !c.open
                && c.destroyed == destroyed
                && c.close_reason == Some("local_close"),
            "client flow (comm {comm}): {c:#?}"
        );
        let s = find(&r, pid, "server", server.port(), client.port())?;
        ensure!(
            s.bytes_received == GO_REQ
                && s.bytes_sent == GO_RESP
                && s.comm == comm
                && s.family == fam
                && s.remote_addr == Some(client.ip())
                && s.accept_wait_ns.is_some()
                && !s.midstream
                && !s.open
                && s.destroyed == destroyed
                && s.close_reason == Some("peer_close"),
            "server flow: {s:#?}"
        );
        eprintln!(
            "{fam} {}->{}: client sent {} recv {} ({} sends, {} recvs) connect {} ns srtt {:?} us | server sent {} recv {}",
            client.port(),
            server.port(),
            c.bytes_sent,
            c.bytes_received,
            c.sends,
            c.receives,
            c.connect_latency_ns.unwrap_or(0),
            c.srtt_us,
            s.bytes_sent,
            s.bytes_received
        );
    }
    for server in [truth.flows[0].2, truth.flows[GO_CONNS].2] {
        let roll = r
            .by_remote
            .iter()
            .find(|x| {
                x.pid == pid && x.remote_addr == Some(server.ip()) && x.remote_port == server.port()
            })
            .with_context(|| format!("no roll-up for {server}: {:#?}", r.by_remote))?;
        let n = GO_CONNS as u64;
        let t = &roll.totals;
        ensure!(
            t.flows == n
                && t.connects == n
                && t.connect_failures == 0
                && t.bytes_sent == n * GO_REQ
                && t.bytes_received == n * GO_RESP,
            "roll-up for {server}: {roll:#?}"
        );
        let listen = r
            .by_listen_port
            .iter()
            .find(|x| x.pid == pid && x.local_port == server.port())
            .with_context(|| format!("no listen roll-up for {server}"))?;
        ensure!(
            listen.totals.flows == n
                && listen.totals.bytes_received == n * GO_REQ
                && listen.totals.bytes_sent == n * GO_RESP,
            "listen roll-up: {listen:#?}"
        );
    }
    check_slow_accepts(&r, pid, &truth.slow, SLOW_SLEEP_MS * 1_000_000)?;
    // The closed port came from the kernel's ephemeral range, so an earlier
    // exchange may have used the same number (seen in vm-test): the refused
    // connect is the flow to it that is none of the known exchanges.
    let exchanges: Vec<(u16, u16)> = truth
        .flows
        .iter()
        .map(|(_, c, s)| (c.port(), s.port()))
        .chain(
            truth
                .slow
                .iter()
                .map(|s| (s.client.port(), s.server.port())),
        )
        .chain([
            (lossy_client.port(), lossy_server.port()),
            (spliced.0.port(), spliced.1.port()),
        ])
        .collect();
    let is_exchange = |f: &FlowReport| {
        exchanges.iter().any(|&(c, s)| {
            (f.local_port, f.remote_port) == (c, s) || (f.local_port, f.remote_port) == (s, c)
        })
    };
    let refused = r
        .flows
        .iter()
        .find(|f| f.pid == pid && f.remote_port == truth.refused_port && !is_exchange(f))
        .with_context(|| format!("no flow to the closed port: {:#?}", r.flows))?;
    ensure!(
        refused.side == "client"
            && refused.closed_from == Some("SYN_SENT")
            && refused.resets_received == 1
            && refused.bytes_sent == 0
            && refused.connect_latency_ns.is_none()
            && refused.close_reason == Some("refused")
            && refused.accept_wait_ns.is_none(),
        "refused connect: {refused:#?}"
    );
    let roll = r
        .by_remote
        .iter()
        .find(|x| x.pid == pid && x.remote_port == truth.refused_port)
        .context("no roll-up for the closed port")?;
    ensure!(roll.totals.connect_failures == 1, "{roll:#?}");
    check_unreachable(
        &r,
        &tcp,
        pid,
        truth.unreachable.context("no unreachable line")?,
    )?;
    check_spliced(&r, &tcp, pid, spliced, want_mechanism)?;
    let lc = find(&r, pid, "client", lossy_client.port(), lossy_server.port())?;
    let ls = find(&r, pid, "server", lossy_server.port(), lossy_client.port())?;
    ensure!(
        lc.bytes_sent == lossy_bytes
            && ls.bytes_received == lossy_bytes
            && lc.retransmits > 0
            && lc.retransmits <= segs,
        "lossy flow: tracer counted {} retransmits, the kernel's RetransSegs rose by {segs}: {lc:#?} {ls:#?}",
        lc.retransmits
    );
    // In the VM nothing else sends, and each retransmitted skb here is one
    // segment, so the counts must be equal there (TRACER_TCP_EXPECT is set
    // only by vm-test); on a host other sockets may retransmit too.
    let all_retrans: u64 = r
        .flows
        .iter()
        .filter(|f| f.pid == pid)
        .map(|f| f.retransmits)
        .sum();
    if std::env::var_os("TRACER_TCP_EXPECT").is_some() {
        ensure!(
            all_retrans == segs,
            "retransmits: tracer {all_retrans} over all flows, kernel RetransSegs +{segs}: {:#?}",
            r.flows
                .iter()
                .filter(|f| f.retransmits > 0)
                .collect::<Vec<_>>()
        );
    }
    eprintln!(
        "lossy {}->{}: {} bytes, retransmits: tracer {} ({all_retrans} on all flows, via {}), kernel RetransSegs +{segs}",
        lossy_client.port(),
        lossy_server.port(),
        lc.bytes_sent,
        lc.retransmits,
        tcp.mechanism_of("retransmit").unwrap_or("none")
    );
    let ours = r.flows.iter().filter(|f| f.pid == pid).count();
    // Plus the refused-at-once connect where `tcp_v4_connect` is hooked.
    let want = want + usize::from(tcp.mechanism_of("connect").is_some());
    ensure!(
        ours == want,
        "{ours} flows for pid {pid}, want {want}: {:#?}",
        r.flows
    );
    let st = tcp.stats(&tracer)?;
    ensure!(
        st.insert_failed == 0 && st.read_failed == 0 && st.evicted == 0,
        "{st:?}"
    );
    eprintln!(
        "go fixture: {} flows byte-exact via state={} send={} recv={} rtt={} accept={} connect={}; refused port {} reset+failed connect",
        ours,
        tcp.mechanism_of("state").unwrap_or("none"),
        tcp.mechanism_of("send").unwrap_or("none"),
        tcp.mechanism_of("recv").unwrap_or("none"),
        tcp.mechanism_of("rtt").unwrap_or("none"),
        tcp.mechanism_of("accept").unwrap_or("none"),
        tcp.mechanism_of("connect").unwrap_or("none"),
        truth.refused_port
    );
    Ok(())
}

/// The slow-accept flows: byte-exact both ways (16-byte dial times, 1-byte
/// answer), and each server flow's accept-queue wait within the bounds the
/// application measured around the kernel's queueing and accept (dial call
/// and return, accept call and return; 1 ms slack for clock reads), so a
/// goroutine scheduled late (one vCPU under QEMU) cannot fail a right
/// answer; on an idle host these bounds are a few hundred µs apart. The
/// waits must really spread (the
/// largest at least 3 sleeps), so a constant or zero wait cannot pass; the
/// listen roll-up must count them all with the same maximum.
/// The sendfile/splice connection: the server's sendfile() is counted on
/// every path (since 6.5 it goes through `tcp_sendmsg` and `sock_send_length`;
/// before, kprobe/fentry hook `tcp_sendpage`). The client's splice() reads
/// are seen only where `tcp_splice_read` is hooked (kprobe/fentry, required
/// there): no tracepoint reports them, so elsewhere they must be absent, not
/// guessed.
fn check_spliced(
    r: &TcpReport,
    tcp: &TcpTracing,
    pid: u32,
    (client, server, bytes): (SocketAddr, SocketAddr, u64),
    want: Option<&str>,
) -> Result<()> {
    let s = find(r, pid, "server", server.port(), client.port())?;
    ensure!(
        s.bytes_sent == bytes && s.sends >= 1 && s.bytes_received == 0 && !s.open,
        "sendfile server flow ({bytes} bytes sent): {s:#?}"
    );
    let c = find(r, pid, "client", client.port(), server.port())?;
    let recv = tcp
        .hooks()
        .iter()
        .find(|h| h.role == "recv" && h.status == "attached")
        .context("recv not hooked")?;
    let splice_hooked = matches!(recv.method, "kprobe" | "fentry")
        && !recv
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("tcp_splice_read"));
    if matches!(want, Some("kprobe" | "fentry")) {
        ensure!(splice_hooked, "tcp_splice_read not hooked: {recv:#?}");
    }
    let seen = if splice_hooked { bytes } else { 0 };
    ensure!(
        c.bytes_received == seen
            && (c.receives >= 1) == splice_hooked
            && c.bytes_sent == 0
            && !c.open,
        "splice client flow ({bytes} bytes spliced, counted where tcp_splice_read is hooked: {splice_hooked}): {c:#?}"
    );
    eprintln!(
        "spliced {}->{}: server sent {} (sendfile, {} calls), client received {} ({} splice calls seen)",
        client.port(),
        server.port(),
        s.bytes_sent,
        s.sends,
        c.bytes_received,
        c.receives
    );
    Ok(())
}

/// A `connect()` the kernel refused before any SYN (ENETUNREACH): one
/// closed client flow with that errno where `tcp_v4_connect` is hooked
/// (kprobe/fentry), none elsewhere (nothing else sees it: not faked).
fn check_unreachable(r: &TcpReport, tcp: &TcpTracing, pid: u32, to: SocketAddr) -> Result<()> {
    let flows: Vec<&FlowReport> = r
        .flows
        .iter()
        .filter(|f| f.pid == pid && f.remote_addr == Some(to.ip()) && f.remote_port == to.port())
        .collect();
    if tcp.mechanism_of("connect").is_none() {
        ensure!(flows.is_empty(), "connect not hooked, yet: {flows:#?}");
        return Ok(());
    }
    ensure!(flows.len() == 1, "one flow to {to} expected: {flows:#?}");
    let f = flows[0];
    ensure!(
        f.side == "client"
            && !f.open
            && f.close_reason == Some("connect_failed")
            && f.connect_error == Some("ENETUNREACH")
            && f.connect_errno == Some(101)
            && f.bytes_sent == 0
            && f.family == "ipv4",
        "unreachable connect: {f:#?}"
    );
    let roll = r
        .by_remote
        .iter()
        .find(|x| x.pid == pid && x.remote_port == to.port() && x.remote_addr == Some(to.ip()))
        .context("no roll-up for the unreachable address")?;
    ensure!(roll.totals.connect_failures == 1, "{roll:#?}");
    Ok(())
}

fn check_slow_accepts(r: &TcpReport, pid: u32, slow: &[SlowAccept], sleep_ns: u64) -> Result<()> {
    const SLACK_NS: u64 = 1_000_000;
    let mut max_truth = 0u64;
    let mut max_seen = 0u64;
    for a in slow {
        let (client, server) = (a.client, a.server);
        let c = find(r, pid, "client", client.port(), server.port())?;
        ensure!(
            c.bytes_sent == 16 && c.bytes_received == 1 && c.accept_wait_ns.is_none() && !c.open,
            "slow-accept client flow: {c:#?}"
        );
        let s = find(r, pid, "server", server.port(), client.port())?;
        ensure!(
            s.bytes_received == 16 && s.bytes_sent == 1 && !s.midstream && !s.open,
            "slow-accept server flow: {s:#?}"
        );
        let seen = s
            .accept_wait_ns
            .with_context(|| format!("slow-accept server flow without accept wait: {s:#?}"))?;
        eprintln!(
            "slow accept {}: tracer {:.3} ms, application {:.3} ms (bounds {:.3}..{:.3} ms)",
            client.port(),
            seen as f64 / 1e6,
            a.wait_ns as f64 / 1e6,
            a.lo_ns as f64 / 1e6,
            a.hi_ns as f64 / 1e6
        );
        ensure!(
            seen + SLACK_NS >= a.lo_ns && seen <= a.hi_ns + SLACK_NS,
            "accept wait of {client}: tracer {seen} ns, outside the application's bounds {}..{} ns (±{SLACK_NS} ns)",
            a.lo_ns,
            a.hi_ns
        );
        let truth = &a.wait_ns;
        max_truth = max_truth.max(*truth);
        max_seen = max_seen.max(seen);
    }
    ensure!(
        max_truth >= 3 * sleep_ns && max_seen >= 3 * sleep_ns,
        "accept waits did not spread: largest application {max_truth} ns, tracer {max_seen} ns, sleep {sleep_ns} ns"
    );
    let server = slow.first().map(|s| s.server).context("no slow accepts")?;
    let listen = r
        .by_listen_port
        .iter()
        .find(|x| x.pid == pid && x.local_port == server.port())
        .with_context(|| format!("no listen roll-up for {server}"))?;
    let a = &listen.accept;
    ensure!(
        a.accepts == slow.len() as u64
            && a.accept_wait_max_ns == Some(max_seen)
            && a.accept_wait_hist.iter().map(|b| b.count).sum::<u64>() == a.accepts,
        "listen roll-up accept waits: {listen:#?}"
    );
    eprintln!(
        "slow accept: {} accepts, mean {:.3} ms, max {:.3} ms",
        a.accepts,
        a.accept_wait_mean_ns.unwrap_or(0) as f64 / 1e6,
        max_seen as f64 / 1e6
    );
    Ok(())
}
