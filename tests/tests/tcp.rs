//! Privileged tests of TCP flow tracing: the test process (and a Go fixture)
//! move known byte counts over loopback connections and every flow, both
//! sides, is checked against them. On this host they run over tracepoints;
//! `cargo xtask vm-test` runs the Go-fixture test inside a Debian 6.1 kernel
//! with the kprobe path, then the fentry path, forced (`TRACER_TCP_HOOKS`).

use std::{
    io::{BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use tracer_tests::{Variant, build_fixture, go_toolchains, privileged_tests_enabled};
use tracer_user::{
    probes::Tracer,
    tcp::{
        AcceptWait, FlowReport, Mechanism, RttMode, TcpOptions, TcpReport, TcpTracing, attach_tcp,
    },
};

const CONNS: usize = 5;
const REQUEST: usize = 100_000;
const RESPONSE: usize = 50_000;

/// Serves `n` connections: read exactly REQUEST bytes, answer RESPONSE bytes,
/// then read to EOF so the client closes first.
fn serve(listener: TcpListener, n: usize) -> thread::JoinHandle<Result<()>> {
    thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = listener.accept().context("accept")?;
            let mut buf = vec![0u8; REQUEST];
            s.read_exact(&mut buf).context("server read")?;
            s.write_all(&vec![7u8; RESPONSE]).context("server write")?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).context("server read to EOF")?;
            ensure!(rest.is_empty(), "client sent {} extra bytes", rest.len());
        }
        Ok(())
    })
}

/// [`attach_tcp`] with accept waits over the syscall tracepoints allowed
/// (`--tcp-accept-wait syscalls`): this host has neither kprobes nor fentry,
/// and the tests check the accept waits.
fn attach(tracer: &mut Tracer, pids: &[u32]) -> Result<TcpTracing> {
    let opts = TcpOptions {
        accept_wait: Some(AcceptWait::Syscalls),
        ..TcpOptions::default()
    };
    attach_tcp(tracer, pids, &opts)
}

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
    if !privileged_tests_enabled("tcp_accept_opt_in") {
        return Ok(());
    }
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

/// Runs `n` client exchanges to `addr`; returns each client's local address.
fn clients(addr: SocketAddr, n: usize) -> Result<Vec<SocketAddr>> {
    let mut locals = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        locals.push(s.local_addr()?);
        s.write_all(&vec![1u8; REQUEST]).context("client write")?;
        let mut buf = vec![0u8; RESPONSE];
        s.read_exact(&mut buf).context("client read")?;
    }
    Ok(locals)
}

/// Reports until every flow of `pid` with one of `ports` (either side) is
/// closed, or 5 s pass.
fn settled_report(
    tcp: &mut TcpTracing,
    tracer: &mut Tracer,
    pid: u32,
    ports: &[u16],
    want: usize,
) -> Result<TcpReport> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = tcp.report(tracer)?;
        let ours: Vec<&FlowReport> = r
            .flows
            .iter()
            .filter(|f| {
                f.pid == pid && (ports.contains(&f.local_port) || ports.contains(&f.remote_port))
            })
            .collect();
        if (ours.len() >= want && ours.iter().all(|f| !f.open)) || Instant::now() > deadline {
            return Ok(r);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(
    r: &'a TcpReport,
    pid: u32,
    side: &str,
    local: u16,
    remote: u16,
) -> Result<&'a FlowReport> {
    r.flows
        .iter()
        .find(|f| {
            f.pid == pid && f.side == side && f.local_port == local && f.remote_port == remote
        })
        .with_context(|| {
            format!(
                "no {side} flow {local}->{remote} for pid {pid}; flows: {:#?}",
                r.flows
            )
        })
}

/// The kernel's own count of retransmitted segments in this network
/// namespace (`Tcp: RetransSegs` in /proc/net/snmp): the ground truth that
/// bounds the retransmits tracer may report (a loaded machine can retransmit
/// even on loopback, e.g. tail-loss probes).
fn retrans_segs() -> Result<u64> {
    tracer_tests::retrans_segs_of(&std::fs::read_to_string("/proc/net/snmp")?)
}

fn check_exchange(
    r: &TcpReport,
    pid: u32,
    server: SocketAddr,
    locals: &[SocketAddr],
    retrans_bound: u64,
) -> Result<()> {
    let mut retransmits = 0;
    let ip: IpAddr = server.ip();
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    for l in locals {
        let c = find(r, pid, "client", l.port(), server.port())?;
        let ctx = format!("client flow {c:#?}");
        ensure!(c.bytes_sent == REQUEST as u64, "bytes sent: {ctx}");
        ensure!(c.bytes_received == RESPONSE as u64, "bytes received: {ctx}");
        ensure!(c.sends >= 1 && c.receives >= 1, "calls: {ctx}");
        ensure!(
            c.connect_latency_ns.is_some_and(|l| l > 0),
            "connect latency: {ctx}"
        );
        ensure!(
            c.srtt_us.is_some_and(|v| v > 0) && c.rtt_samples > 0,
            "rtt: {ctx}"
        );
        ensure!(!c.open && c.state == "CLOSE", "state: {ctx}");
        ensure!(c.end_ns.is_some() && c.lifetime_ns > 0, "lifetime: {ctx}");
        ensure!(
            c.family == family && c.remote_addr == Some(ip),
            "tuple: {ctx}"
        );
        ensure!(c.local_addr == Some(l.ip()), "local address: {ctx}");
        ensure!(c.resets_sent == 0 && c.resets_received == 0, "{ctx}");
        ensure!(c.accept_wait_ns.is_none(), "a client has no accept: {ctx}");
        retransmits += c.retransmits;

        let s = find(r, pid, "server", server.port(), l.port())?;
        let ctx = format!("server flow {s:#?}");
        ensure!(s.bytes_received == REQUEST as u64, "bytes received: {ctx}");
        ensure!(s.bytes_sent == RESPONSE as u64, "bytes sent: {ctx}");
        ensure!(
            s.connect_latency_ns.is_none(),
            "server has no connect: {ctx}"
        );
        ensure!(!s.open && s.state == "CLOSE", "state: {ctx}");
        ensure!(
            s.family == family && s.remote_addr == Some(l.ip()),
            "tuple: {ctx}"
        );
        ensure!(s.srtt_us.is_some_and(|v| v > 0), "rtt: {ctx}");
        ensure!(!s.midstream, "server flow came from the handshake: {ctx}");
        // The server thread accepted it (accept4): the wait is measured.
        ensure!(s.accept_wait_ns.is_some(), "accept wait: {ctx}");
        retransmits += s.retransmits;
        eprintln!(
            "{family} client {}: sent {} recv {} connect {} ns srtt {} us ({} samples) | server: sent {} recv {} srtt {:?} us",
            l.port(),
            c.bytes_sent,
            c.bytes_received,
            c.connect_latency_ns.unwrap_or(0),
            c.srtt_us.unwrap_or(0),
            c.rtt_samples,
            s.bytes_sent,
            s.bytes_received,
            s.srtt_us
        );
    }
    // Each successful retransmit call sends at least one segment.
    ensure!(
        retransmits <= retrans_bound,
        "{retransmits} retransmits reported, the kernel counted {retrans_bound} segments"
    );
    let n = locals.len() as u64;
    let remote = r
        .by_remote
        .iter()
        .find(|x| x.pid == pid && x.remote_addr == Some(ip) && x.remote_port == server.port())
        .with_context(|| format!("no roll-up for {server}: {:#?}", r.by_remote))?;
    let t = &remote.totals;
    ensure!(
        t.flows == n
            && t.open == 0
            && t.bytes_sent == n * REQUEST as u64
            && t.bytes_received == n * RESPONSE as u64
            && t.connects == n,
        "remote roll-up: {remote:#?}"
    );
    let listen = r
        .by_listen_port
        .iter()
        .find(|x| x.pid == pid && x.local_port == server.port())
        .with_context(|| format!("no listen roll-up: {:#?}", r.by_listen_port))?;
    let t = &listen.totals;
    ensure!(
        t.flows == n
            && t.bytes_received == n * REQUEST as u64
            && t.bytes_sent == n * RESPONSE as u64
            && listen.peers == 1
            && listen.accept.accepts == n,
        "listen roll-up: {listen:#?}"
    );
    Ok(())
}

fn exchange(
    tcp: &mut TcpTracing,
    tracer: &mut Tracer,
    bind: &str,
) -> Result<(TcpReport, SocketAddr, Vec<SocketAddr>, u64)> {
    let before = retrans_segs()?;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    let server = listener.local_addr()?;
    let handle = serve(listener, CONNS);
    let locals = clients(server, CONNS)?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let mut ports: Vec<u16> = locals.iter().map(|l| l.port()).collect();
    ports.push(server.port());
    let report = settled_report(tcp, tracer, std::process::id(), &ports, 2 * CONNS)?;
    let retrans = retrans_segs()?.saturating_sub(before);
    Ok((report, server, locals, retrans))
}

#[test]
fn loopback_flows_match_known_byte_counts() -> Result<()> {
    if !privileged_tests_enabled("tcp_loopback") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let mut tracer = Tracer::load()?;
    tracer.add_target(pid)?;
    let mut tcp = attach(&mut tracer, &[pid])?;
    for h in tcp.hooks() {
        eprintln!("hook {} {} {}: {:?}", h.method, h.hook, h.status, h.reason);
    }
    let attached = tcp
        .hooks()
        .iter()
        .filter(|h| h.status == "attached")
        .count();
    // RTT is sampled by the send/recv programs (the default `--tcp-rtt calls`).
    ensure!(
        attached == 8 && tcp.mechanism_of("rtt").is_none(),
        "one hook per measurement (9, accept included, rtt sampled at calls) should attach: {:#?}",
        tcp.hooks()
    );

    let (r, server, locals, retrans) = exchange(&mut tcp, &mut tracer, "127.0.0.1:0")?;
    check_exchange(&r, pid, server, &locals, retrans)?;

    let (r6, server6, locals6, retrans6) = exchange(&mut tcp, &mut tracer, "[::1]:0")?;
    check_exchange(&r6, pid, server6, &locals6, retrans6)?;

    // An untraced process's client socket must not be recorded; our accepted
    // side of the same connection is ours and is.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let srv = thread::spawn(move || -> Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok(v.len() as u64)
    });
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'hello from bash' >&3; exec 3>&-"
        ))
        .spawn()
        .context("spawning bash")?;
    let child_pid = child.id();
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "bash client failed");
    let got = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let r = settled_report(&mut tcp, &mut tracer, pid, &[port], 1)?;
    ensure!(
        !r.flows.iter().any(|f| f.pid == child_pid),
        "untraced pid {child_pid} recorded: {:#?}",
        r.flows
    );
    let s = r
        .flows
        .iter()
        .find(|f| f.pid == pid && f.side == "server" && f.local_port == port)
        .with_context(|| format!("no server flow on {port}: {:#?}", r.flows))?;
    ensure!(s.bytes_received == got && got == 15, "{s:#?}");
    ensure!(
        r.flows.iter().all(|f| f.pid == pid),
        "foreign flows: {:#?}",
        r.flows
    );

    let st = tcp.stats(&tracer)?;
    eprintln!("stats: {st:?}");
    ensure!(
        st.evicted == 0 && st.insert_failed == 0 && st.read_failed == 0,
        "{st:?}"
    );
    ensure!(st.flows_created > 4 * CONNS as u64, "{st:?}");
    Ok(())
}

/// Closing a socket with unread data sends a reset: the client's reset comes
/// after its TCP_CLOSE (found through the closed-flow index), the server sees
/// it arrive, and the client's MSG_PEEK read is not counted as received bytes.
#[test]
fn resets_and_peeks() -> Result<()> {
    if !privileged_tests_enabled("tcp_resets") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let mut tracer = Tracer::load()?;
    let mut tcp = attach(&mut tracer, &[pid])?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let srv = thread::spawn(move || -> Result<std::io::ErrorKind> {
        let (mut s, _) = listener.accept()?;
        s.write_all(&[5u8; 1000])?;
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(n) => bail!("expected a reset, read {n} bytes"),
            Err(e) => Ok(e.kind()),
        }
    });
    let c = TcpStream::connect(server)?;
    let local = c.local_addr()?;
    let mut b = [0u8; 1000];
    let peeked = c.peek(&mut b)?;
    ensure!(peeked > 0, "peek saw nothing");
    drop(c); // unread data: the kernel answers close with a reset
    let kind = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(kind == std::io::ErrorKind::ConnectionReset, "{kind:?}");
    let r = settled_report(
        &mut tcp,
        &mut tracer,
        pid,
        &[local.port(), server.port()],
        2,
    )?;
    let c = find(&r, pid, "client", local.port(), server.port())?;
    ensure!(
        c.bytes_received == 0 && c.receives == 0 && c.resets_sent == 1 && !c.open,
        "client: {c:#?}"
    );
    ensure!(
        c.closed_from == Some("ESTABLISHED") && c.close_reason == Some("reset_sent"),
        "client: {c:#?}"
    );
    let s = find(&r, pid, "server", server.port(), local.port())?;
    ensure!(
        s.bytes_sent == 1000
            && s.resets_received == 1
            && !s.open
            && s.close_reason == Some("reset_by_peer"),
        "server: {s:#?}"
    );

    // A server that accepts and closes without moving a byte is attributed at
    // its close() (ESTABLISHED → FIN_WAIT1 runs in the closer's context).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let silent = listener.local_addr()?;
    let srv = thread::spawn(move || -> Result<()> {
        let (s, _) = listener.accept()?;
        drop(s);
        Ok(())
    });
    let mut sc = TcpStream::connect(silent)?;
    let silent_local = sc.local_addr()?;
    let mut rest = Vec::new();
    sc.read_to_end(&mut rest)?;
    drop(sc);
    srv.join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let r = settled_report(&mut tcp, &mut tracer, pid, &[silent.port()], 2)?;
    let ss = find(&r, pid, "server", silent.port(), silent_local.port())?;
    ensure!(
        ss.bytes_sent == 0
            && ss.bytes_received == 0
            && !ss.open
            && !ss.midstream
            && ss.close_reason == Some("local_close"),
        "silent server: {ss:#?}"
    );

    // A refused connect: SYN_SENT → CLOSE on the peer's reset.
    let closed_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let err = TcpStream::connect(("127.0.0.1", closed_port))
        .err()
        .context("connect to a closed port succeeded")?;
    ensure!(err.kind() == std::io::ErrorKind::ConnectionRefused, "{err}");
    let r = settled_report(&mut tcp, &mut tracer, pid, &[closed_port], 1)?;
    let refused = r
        .flows
        .iter()
        .find(|f| f.pid == pid && f.remote_port == closed_port)
        .with_context(|| format!("no refused flow: {:#?}", r.flows))?;
    ensure!(
        refused.side == "client"
            && refused.closed_from == Some("SYN_SENT")
            && refused.connect_latency_ns.is_none()
            && refused.resets_received == 1
            && refused.close_reason == Some("refused"),
        "refused: {refused:#?}"
    );
    let roll = r
        .by_remote
        .iter()
        .find(|x| x.remote_port == closed_port)
        .context("no roll-up for the refused port")?;
    ensure!(roll.totals.connect_failures == 1, "{roll:#?}");

    eprintln!(
        "reset: client peeked {peeked} (counted {}), resets_sent {}; server resets_received {}, closed_from {:?}",
        c.bytes_received, c.resets_sent, s.resets_received, s.closed_from
    );
    Ok(())
}

/// A client that half-closes (`shutdown(Write)`), gets the server's reply
/// and FIN, and reads them only after its socket reached CLOSE (FIN_WAIT2 →
/// CLOSE happens in softirq): the bytes read then still belong to the same,
/// closed flow, also when a report is taken between the close and the read
/// (the closed flow of a live socket is held in the kernel, not collected).
#[test]
fn half_closed_client_reads_the_reply_after_close() -> Result<()> {
    if !privileged_tests_enabled("tcp_half_close") {
        return Ok(());
    }
    const REPLY: usize = 70_000;
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let mut tracer = Tracer::load()?;
    let mut tcp = attach(&mut tracer, &[pid])?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let srv = thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut req = Vec::new();
        s.read_to_end(&mut req).context("server read")?;
        s.write_all(&[9u8; REPLY]).context("server write")?;
        Ok(req.len())
    });
    let mut c = TcpStream::connect(server)?;
    let local = c.local_addr()?;
    c.write_all(&[1u8; REQUEST])?;
    c.shutdown(std::net::Shutdown::Write)?;
    let got = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(got == REQUEST, "server read {got}");
    // The reply and the FIN are in the client's queue; let softirq close it.
    thread::sleep(Duration::from_millis(200));
    let before = tcp.report(&mut tracer)?;
    let early = before
        .flows
        .iter()
        .find(|f| f.pid == pid && f.side == "client" && f.local_port == local.port());
    ensure!(
        early.is_none(),
        "the closed client flow was collected before its socket was read or freed: {early:#?}"
    );
    let read_at = tracer_user::tcp::monotonic_now_ns();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)?;
    ensure!(reply.len() == REPLY, "client read {}", reply.len());
    drop(c);
    let r = settled_report(&mut tcp, &mut tracer, pid, &[local.port()], 2)?;
    let ours: Vec<&FlowReport> = r
        .flows
        .iter()
        .filter(|f| f.pid == pid && f.side == "client" && f.local_port == local.port())
        .collect();
    ensure!(ours.len() == 1, "one client flow expected: {ours:#?}");
    let cf = ours[0];
    // Not vacuous: the socket really was closed before the read began.
    ensure!(
        cf.end_ns.is_some_and(|e| e < read_at)
            && !cf.midstream
            && cf.close_reason == Some("local_close"),
        "client flow did not close before the read: {cf:#?}"
    );
    ensure!(
        cf.bytes_sent == REQUEST as u64 && cf.bytes_received == REPLY as u64 && cf.receives >= 1,
        "client: {cf:#?}"
    );
    let sf = find(&r, pid, "server", server.port(), local.port())?;
    ensure!(
        sf.bytes_received == REQUEST as u64 && sf.bytes_sent == REPLY as u64,
        "server: {sf:#?}"
    );
    eprintln!(
        "half-close: client closed from {:?} {} µs before the read, received {} in {} calls",
        cf.closed_from,
        read_at.saturating_sub(cf.end_ns.unwrap_or(read_at)) / 1000,
        cf.bytes_received,
        cf.receives
    );
    Ok(())
}

/// Bounded kernel state, with every loss counted: a flow table of 128
/// entries and a closed-flow ring buffer of 16 KiB (about 49 flows), no
/// draining until the end, and 300 connections held open at once (600
/// flows). Flows must be evicted from the table and lost to the full ring
/// buffer, both counted, and every flow that is reported must be exact.
#[test]
fn full_tables_count_evictions_and_lost_flows() -> Result<()> {
    if !privileged_tests_enabled("tcp_full_tables") {
        return Ok(());
    }
    const N: usize = 300;
    const MSG: usize = 10;
    const RING: u32 = 16 * 1024;
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let mut tracer = Tracer::load_sized(true, &[("TCP_FLOWS", 128), ("TCP_CLOSED_RB", RING)])?;
    let mut tcp = attach(&mut tracer, &[pid])?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let srv = thread::spawn(move || -> Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(N);
        for _ in 0..N {
            let (mut s, _) = listener.accept()?;
            let mut buf = [0u8; MSG];
            s.read_exact(&mut buf).context("server read")?;
            held.push(s);
        }
        Ok(held)
    });
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = TcpStream::connect(server)?;
        c.write_all(&[3u8; MSG])?;
        clients.push(c);
    }
    let held = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    drop(clients);
    drop(held);
    // Every socket freed: nothing stays open or pending in the kernel.
    thread::sleep(Duration::from_millis(300));
    tcp.finishing();
    let r = tcp.report(&mut tracer)?;
    let st = &r.stats;
    let ours: Vec<&FlowReport> = r.flows.iter().filter(|f| f.pid == pid).collect();
    eprintln!("full tables: {} flows reported, stats {st:?}", ours.len());
    ensure!(st.flows_created == 2 * N as u64, "flows_created: {st:?}");
    ensure!(st.open_now == 0 && st.closed_pending == 0, "{st:?}");
    ensure!(st.evicted > 0, "no eviction counted: {st:?}");
    ensure!(st.closed_lost > 0, "no lost flow counted: {st:?}");
    // The ring buffer cannot have held more.
    let cap = RING as usize / tracer_user::tcp::FLOW_RECORD_BYTES;
    ensure!(
        !ours.is_empty() && ours.len() <= cap,
        "{} flows reported, ring holds {cap}",
        ours.len()
    );
    ensure!(
        st.closed_collected + st.evicted + st.closed_lost == st.flows_created,
        "collected + evicted + lost != created: {st:?}"
    );
    for f in ours {
        let exact = match f.side {
            "client" => f.bytes_sent == MSG as u64 && f.bytes_received == 0,
            _ => f.bytes_received == MSG as u64 && f.bytes_sent == 0,
        };
        ensure!(exact && !f.open && f.destroyed, "flow not exact: {f:#?}");
    }
    Ok(())
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Deletes the test namespaces however the test ends.
struct Netns(&'static [&'static str]);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A server in another network namespace (reached over a veth pair from a
/// second namespace the test process enters for its client thread) is seen
/// from the client side, with that namespace's addresses.
#[test]
fn flows_across_network_namespaces() -> Result<()> {
    if !privileged_tests_enabled("tcp_netns") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let (a, b) = ("tracer-tcp-a", "tracer-tcp-b");
    let _cleanup = Netns(&["tracer-tcp-a", "tracer-tcp-b"]);
    for ns in [a, b] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        ip(&["netns", "add", ns])?;
    }
    ip(&[
        "link", "add", "trtcp0", "netns", a, "type", "veth", "peer", "name", "trtcp1", "netns", b,
    ])?;
    ip(&["-n", a, "addr", "add", "10.213.0.1/24", "dev", "trtcp0"])?;
    ip(&["-n", b, "addr", "add", "10.213.0.2/24", "dev", "trtcp1"])?;
    for (ns, dev) in [(a, "trtcp0"), (b, "trtcp1")] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    // Server: python in namespace b, untraced; it sends RESPONSE bytes after
    // reading REQUEST bytes.
    let script = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('10.213.0.2',7070));s.listen(8);print('ready',flush=True)\n\
         for _ in range({CONNS}):\n c,_=s.accept();n=0\n while n<{REQUEST}:\n  d=c.recv(65536)\n  if not d: break\n  n+=len(d)\n c.sendall(b'x'*{RESPONSE});c.recv(1);c.close()\n"
    );
    let mut server = Command::new("ip")
        .args(["netns", "exec", b, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the server in the namespace")?;
    let mut ready = [0u8; 6];
    server
        .stdout
        .as_mut()
        .context("server stdout")?
        .read_exact(&mut ready)
        .context("waiting for the server")?;

    let mut tracer = Tracer::load()?;
    let mut tcp = attach(&mut tracer, &[pid])?;
    // The client thread enters namespace a; the test's other threads stay put.
    let locals = thread::spawn(move || -> Result<Vec<SocketAddr>> {
        let f = std::fs::File::open(format!("/run/netns/{a}")).context("opening netns")?;
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd of a network namespace; affects only this thread.
        if unsafe { libc_setns(f.as_raw_fd()) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        clients("10.213.0.2:7070".parse()?, CONNS)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let status = server.wait()?;
    ensure!(status.success(), "namespace server failed");
    let mut ports: Vec<u16> = locals.iter().map(|l| l.port()).collect();
    ports.push(7070);
    let r = settled_report(&mut tcp, &mut tracer, pid, &ports, CONNS)?;
    for l in &locals {
        let c = find(&r, pid, "client", l.port(), 7070)?;
        ensure!(
            c.bytes_sent == REQUEST as u64
                && c.bytes_received == RESPONSE as u64
                && c.local_addr == Some("10.213.0.1".parse()?)
                && c.remote_addr == Some("10.213.0.2".parse()?)
                && c.connect_latency_ns.is_some_and(|v| v > 0)
                && !c.open,
            "{c:#?}"
        );
        eprintln!(
            "netns client {}: sent {} recv {} connect {} ns srtt {:?} us",
            l.port(),
            c.bytes_sent,
            c.bytes_received,
            c.connect_latency_ns.unwrap_or(0),
            c.srtt_us
        );
    }
    ensure!(
        !r.flows
            .iter()
            .any(|f| f.side == "server" && f.local_port == 7070),
        "the untraced namespace server was recorded: {:#?}",
        r.flows
    );
    Ok(())
}

/// setns(fd, CLONE_NEWNET) without a libc dependency in this crate.
unsafe fn libc_setns(fd: i32) -> i32 {
    const CLONE_NEWNET: i32 = 0x4000_0000;
    unsafe extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    // SAFETY: forwarded to the C library.
    unsafe { setns(fd, CLONE_NEWNET) }
}

/// The Go ground-truth fixture: `$TRACER_TCP_FIXTURE` (prebuilt, in the VM),
/// else built with the newest installed Go.
fn tcpflows_fixture() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_TCP_FIXTURE") {
        return Ok(PathBuf::from(p));
    }
    let tc = go_toolchains()?
        .pop()
        .context("no Go toolchain installed")?;
    build_fixture(&tc, "tcpflows", Variant::Plain)
}

/// Ground truth the fixture printed.
struct GoTruth {
    pid: u32,
    /// (family, client, server) per connection.
    flows: Vec<(String, SocketAddr, SocketAddr)>,
    /// Slow-accept connections: client, server, and the accept-queue wait
    /// the application measured (accept return − the client's dial return).
    slow: Vec<(SocketAddr, SocketAddr, u64)>,
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
            t.slow.push((
                kv("client")?.parse()?,
                kv("server")?.parse()?,
                kv("wait_ns")?.parse()?,
            ));
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
    if !privileged_tests_enabled("tcp_go_fixture") {
        return Ok(());
    }
    let want = std::env::var("TRACER_TCP_EXPECT").ok();
    go_fixture_check(None, want.as_deref(), TcpOptions::default().rtt(), &[])
}

/// The same ground truth with no hook on sockets being freed, as on a
/// kernel without `tcp_v4_destroy_sock`/`tcp:tcp_destroy_sock`: closed flows
/// stay in the kernel table and user space must collect each one once, after
/// its hold, byte-exact, none marked `destroyed`.
#[test]
fn go_fixture_flows_are_collected_without_a_destroy_hook() -> Result<()> {
    if !privileged_tests_enabled("tcp_go_fixture_no_destroy")
        || std::env::var_os("TRACER_TCP_EXPECT").is_some()
    {
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
    go_fixture_on_host("tcp_go_fixture_tracepoints", &[Mechanism::Tracepoint])
}

/// The same over raw tracepoints (what this host uses by default), accept
/// waits excepted (raw syscall tracepoints are not used; see
/// `--tcp-accept-wait`).
#[test]
fn go_fixture_flows_match_ground_truth_over_raw_tracepoints() -> Result<()> {
    go_fixture_on_host(
        "tcp_go_fixture_raw",
        &[Mechanism::RawTracepoint, Mechanism::Tracepoint],
    )
}

/// [`go_fixture_check`] forced to `order`, whose first mechanism must serve
/// every role, with RTT sampled at calls and then per segment. Not in
/// vm-test (`$TRACER_TCP_EXPECT` set), which runs the kprobe/fentry
/// variants: 6.1 lacks the send/recv events.
fn go_fixture_on_host(test: &str, order: &[Mechanism]) -> Result<()> {
    if !privileged_tests_enabled(test) || std::env::var_os("TRACER_TCP_EXPECT").is_some() {
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
    ports.extend(truth.slow.iter().map(|(c, _, _)| c.port()));
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
    let refused = r
        .flows
        .iter()
        .find(|f| f.pid == pid && f.remote_port == truth.refused_port)
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

/// The slow-accept flows: byte-exact both ways (8-byte dial time, 1-byte
/// answer), and each server flow's accept-queue wait within max(3 ms, 15%) of
/// the wait the application measured. The waits must really spread (the
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

fn check_slow_accepts(
    r: &TcpReport,
    pid: u32,
    slow: &[(SocketAddr, SocketAddr, u64)],
    sleep_ns: u64,
) -> Result<()> {
    let mut max_truth = 0u64;
    let mut max_seen = 0u64;
    for (client, server, truth) in slow {
        let c = find(r, pid, "client", client.port(), server.port())?;
        ensure!(
            c.bytes_sent == 8 && c.bytes_received == 1 && c.accept_wait_ns.is_none() && !c.open,
            "slow-accept client flow: {c:#?}"
        );
        let s = find(r, pid, "server", server.port(), client.port())?;
        ensure!(
            s.bytes_received == 8 && s.bytes_sent == 1 && !s.midstream && !s.open,
            "slow-accept server flow: {s:#?}"
        );
        let seen = s
            .accept_wait_ns
            .with_context(|| format!("slow-accept server flow without accept wait: {s:#?}"))?;
        let tolerance = (truth * 15 / 100).max(3_000_000);
        eprintln!(
            "slow accept {}: tracer {:.3} ms, application {:.3} ms",
            client.port(),
            seen as f64 / 1e6,
            *truth as f64 / 1e6
        );
        ensure!(
            seen.abs_diff(*truth) <= tolerance,
            "accept wait of {client}: tracer {seen} ns, application {truth} ns (tolerance {tolerance} ns)"
        );
        max_truth = max_truth.max(*truth);
        max_seen = max_seen.max(seen);
    }
    ensure!(
        max_truth >= 3 * sleep_ns && max_seen >= 3 * sleep_ns,
        "accept waits did not spread: largest application {max_truth} ns, tracer {max_seen} ns, sleep {sleep_ns} ns"
    );
    let server = slow.first().map(|s| s.1).context("no slow accepts")?;
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
