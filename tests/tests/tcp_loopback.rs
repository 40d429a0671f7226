//! Privileged tests of TCP flow tracing in the test process itself: it
//! moves known byte counts over loopback connections (IPv4 and IPv6, resets,
//! peeks, half-closes, full kernel tables, a second network namespace) and
//! every flow, both sides, is checked against them. On this host they run
//! over tracepoints. The Go-fixture ground truth, which `cargo xtask vm-test`
//! also runs on Linux 6.1, is in `tcp.rs`.
//!
//! Slightly over ~600 lines: the exchange checks (`check_exchange`) are
//! shared by every loopback test here.

mod tcp_common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use tcp_common::{find, settled_report};
use tracer_tests::{
    netns::{VethPair, enter_netns},
    privileged_test,
    procfs::retrans_segs,
};
use tracer_user::{
    ebpf::Tracer,
    tcp::{AcceptWait, FlowReport, TcpOptions, TcpReport, TcpTracing, attach_tcp},
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
    privileged_test!();
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
    privileged_test!();
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
    privileged_test!();
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
    privileged_test!();
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
    // A socket an earlier test of this process left closing can still send
    // after attach: it is counted as a midstream flow, never as one of ours
    // (ours were all opened after attach), so it is told apart by that and
    // by the server port.
    let ours: Vec<&FlowReport> = r
        .flows
        .iter()
        .filter(|f| {
            f.pid == pid && (f.local_port == server.port() || f.remote_port == server.port())
        })
        .collect();
    eprintln!("full tables: {} flows reported, stats {st:?}", ours.len());
    ensure!(
        st.flows_created.checked_sub(st.flows_midstream) == Some(2 * N as u64)
            && st.flows_midstream <= 2,
        "flows_created: {st:?}"
    );
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

/// A server in another network namespace (reached over a veth pair from a
/// second namespace the test process enters for its client thread) is seen
/// from the client side, with that namespace's addresses.
#[test]
fn flows_across_network_namespaces() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let pid = std::process::id();
    let net = VethPair::create("tracer-tcp-a", "tracer-tcp-b", "trtcp0", "trtcp1", 213)?;
    let (a, b) = (net.a, net.b);
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
        enter_netns(a)?;
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
