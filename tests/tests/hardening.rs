//! Regression tests for the agent's start-up and visibility defects (issue
//! "Hardening"): each reproduces what an operator saw on a fresh node.
//!
//! - The default Unix socket lives in `/run/tracer`, which does not exist on
//!   a fresh node: the agent must create it, serve, and say so at the
//!   default log level, without terminal colour codes in a log file.
//! - An endpoint that cannot bind must fail start-up, with its address,
//!   before any probe is loaded (it used to trace on, serving nothing).
//! - Without CAP_SYS_PTRACE, processes of other users cannot be opened: the
//!   agent must warn and count them instead of passing them over in silence.
//!
//! Longer than ~600 lines: one regression test per operator-visible defect,
//! each with its own set-up (other users, signals, rewritten binaries); the
//! shared parts (agent start, readiness, SIGTERM, scratch dirs) are in
//! tests/src.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    Variant,
    agent::wait_ready,
    build_fixture, build_newest, go_toolchains,
    net::{free_addr, http_get, metric_value},
    privileged_test,
    process::{KillOnDrop, read_log, scratch_dir, terminate},
    tracer_bin,
};

#[test]
fn agent_on_a_fresh_node_creates_its_socket_directory_serves_and_says_so() -> Result<()> {
    privileged_test!();
    let dir = scratch_dir("hardening-fresh")?;
    // As on a fresh node: neither run/ nor run/tracer/ exists.
    let socket = dir.join("run/tracer/tracer.sock");
    let metrics = free_addr()?;
    let log = dir.join("agent.log");
    let agent = Command::new(tracer_bin()?)
        .args(["agent", "--grpc-listen", "off", "--unix-socket"])
        .arg(&socket)
        .args(["--metrics-listen", &metrics.to_string()])
        // The default log level, as the DaemonSet runs it.
        .env_remove("TRACER_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting tracer agent")?;
    let mut agent = KillOnDrop(agent);
    wait_ready(&mut agent.0, metrics, || read_log(&log))?;

    let meta = std::fs::symlink_metadata(&socket)
        .with_context(|| format!("no socket at {}:\n{}", socket.display(), read_log(&log)))?;
    ensure!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        socket.display()
    );
    let parent = socket.parent().context("socket dir")?;
    let mode = std::fs::metadata(parent)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "socket directory mode {mode:o}, want 700");

    // The socket really serves gRPC: a client gets the agent's snapshot.
    ensure!(
        top_connects(&format!("unix:{}", socket.display()), None)?,
        "tracer top did not connect over the socket"
    );

    let text = read_log(&log);
    for needle in [
        format!("gRPC listening on unix:{}", socket.display()),
        format!("metrics on http://{metrics}/metrics"),
        "agent ready".to_string(),
    ] {
        ensure!(
            text.contains(&needle),
            "default-level log lacks {needle:?}:\n{text}"
        );
    }
    ensure!(
        !text.contains('\u{1b}'),
        "log written to a file carries ANSI escape codes:\n{text:?}"
    );

    let status = terminate(&mut agent.0, Duration::from_secs(30), || read_log(&log))?;
    ensure!(
        status.success(),
        "SIGTERM gave {status}:\n{}",
        read_log(&log)
    );
    ensure!(!socket.exists(), "socket left behind after a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `tracer agent ARGS` that must fail at start-up: its exit status and
/// stderr. Needs no privilege: endpoints are bound before anything loads.
fn failed_start(args: &[&str]) -> Result<(std::process::ExitStatus, String)> {
    let t0 = Instant::now();
    let mut child = KillOnDrop(
        Command::new(tracer_bin()?)
            .arg("agent")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer agent")?,
    );
    let status = loop {
        if let Some(st) = child.0.try_wait()? {
            break st;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "agent {args:?} still running after 10 s: it must refuse to start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err)?;
    }
    Ok((status, err))
}

#[test]
fn agent_refuses_to_start_when_an_endpoint_cannot_bind() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    for (args, names) in [
        (
            vec![
                "--grpc-listen",
                &addr,
                "--unix-socket",
                "off",
                "--metrics-listen",
                "off",
            ],
            format!("binding gRPC on {addr}"),
        ),
        (
            vec![
                "--grpc-listen",
                "off",
                "--unix-socket",
                "off",
                "--metrics-listen",
                &addr,
            ],
            format!("binding metrics on {addr}"),
        ),
        (
            // A directory that cannot be created (/proc refuses mkdir).
            vec![
                "--grpc-listen",
                "off",
                "--unix-socket",
                "/proc/tracer-test/tracer.sock",
                "--metrics-listen",
                "off",
            ],
            "creating the socket directory /proc/tracer-test".to_string(),
        ),
    ] {
        let (status, err) = failed_start(&args)?;
        ensure!(
            status.code() == Some(1),
            "agent {args:?} exited with {status}, want 1:\n{err}"
        );
        ensure!(
            err.contains(&names),
            "error for {args:?} does not say {names:?}:\n{err}"
        );
        ensure!(
            !err.contains("agent ready"),
            "agent {args:?} got ready although it could not serve:\n{err}"
        );
    }
    drop(taken);
    Ok(())
}

#[test]
fn agent_without_cap_sys_ptrace_counts_the_processes_it_may_not_open() -> Result<()> {
    privileged_test!();
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("hardening-ptrace")?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    // A name of its own, so the agent's --comm filter selects only it.
    let bin = dir.join("hardnoptrace");
    std::fs::copy(&fixture, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let metrics = free_addr()?;
    let log = dir.join("agent.log");
    // The agent as root, but without CAP_SYS_PTRACE (dropped from the
    // bounding set before exec, so root's exec does not regain it).
    let agent = Command::new("setpriv")
        .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
        .arg(tracer_bin()?)
        .args(["agent", "--grpc-listen", "off", "--unix-socket", "off"])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--comm", "hardnoptrace", "--refresh", "200ms"])
        .env("TRACER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting tracer agent under setpriv")?;
    let mut agent = KillOnDrop(agent);
    wait_ready(&mut agent.0, metrics, || read_log(&log))?;
    ensure!(
        read_log(&log).contains("running without CAP_SYS_PTRACE"),
        "no start-up warning about CAP_SYS_PTRACE:\n{}",
        read_log(&log)
    );

    let unreadable = || -> f64 {
        http_get(metrics, "/metrics")
            .and_then(|(_, body)| metric_value(&body, "tracer_agent_processes_unreadable_total"))
            .unwrap_or(-1.0)
    };
    ensure!(
        unreadable() == 0.0,
        "unreadable before any process ran: {}",
        unreadable()
    );

    // The same binary as another user: the agent may not open it.
    let nobody = KillOnDrop(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(["-g", "2", "-m", "2000", "-hold", "1ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the fixture as uid 65534")?,
    );
    let pid = nobody.0.id();
    let t0 = Instant::now();
    while unreadable() < 1.0 {
        ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "the other user's process was not counted as unreadable (metric {}):\n{}",
            unreadable(),
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = read_log(&log);
    ensure!(
        text.contains(&format!(
            "pid {pid} (hardnoptrace): cannot open its executable"
        )),
        "the log does not name pid {pid}:\n{text}"
    );
    ensure!(
        !text.contains(&format!("tracing pid {pid} ")),
        "pid {pid} reported as traced although it could not be opened:\n{text}"
    );
    drop(nobody);

    // Control: the same binary run with the agent's own credentials (root,
    // without CAP_SYS_PTRACE: a process holding a capability the agent lacks
    // is refused too) is traced.
    let root = KillOnDrop(
        Command::new("setpriv")
            .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
            .arg(&bin)
            .args(["-g", "2", "-m", "2000", "-hold", "1ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = root.0.id();
    let t0 = Instant::now();
    while !read_log(&log).contains(&format!("tracing pid {pid} ")) {
        ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "root's process of the same binary was not traced:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        unreadable() == 1.0,
        "unreadable count {} after the control",
        unreadable()
    );
    drop(root);
    let status = terminate(&mut agent.0, Duration::from_secs(30), || read_log(&log))?;
    ensure!(
        status.success(),
        "SIGTERM gave {status}:\n{}",
        read_log(&log)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Pids of the live processes whose environment holds `TRACER_MARK=mark`:
/// tracer and its child, which before exec is a copy of tracer.
fn marked(mark: &str) -> Vec<(u32, String)> {
    let needle = format!("TRACER_MARK={mark}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter(|pid| {
            // Zombies (exited, not yet reaped) hold nothing.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// Starts `tracer run` of the contention fixture, marked with `mark`.
fn marked_run(fixture: &Path, mark: &str, extra: &[&str]) -> Result<KillOnDrop> {
    Ok(KillOnDrop(
        Command::new(tracer_bin()?)
            .arg("run")
            .args(extra)
            .arg("--")
            .arg(fixture)
            .args(["-g", "4", "-m", "100000", "-hold", "1ms"])
            .env("TRACER_MARK", mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer run")?,
    ))
}

/// Polls until `cond` holds, up to `secs`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while !cond() {
        ensure!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn run_killed_while_placing_probes_leaves_no_program_behind() -> Result<()> {
    privileged_test!();
    let fixture = build_newest("contention")?;
    let tracer_exe = tracer_bin()?.canonicalize()?;
    // Killed the moment its child exists, held at the gate (still a copy of
    // tracer: its executable is tracer's), while the probes are being attached: the child used to block
    // on the gate pipe forever.
    for (i, sig) in [libc::SIGKILL, libc::SIGTERM, libc::SIGKILL, libc::SIGHUP]
        .into_iter()
        .enumerate()
    {
        let mark = format!("gate-{}-{i}", std::process::id());
        let mut run = marked_run(&fixture, &mark, &[])?;
        let tracer = run.0.id();
        wait_until(20, "the held child did not appear", || {
            marked(&mark).iter().any(|(p, _)| {
                *p != tracer
                    && std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == tracer_exe)
            })
        })?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(tracer as i32, sig) };
        let status = run.0.wait()?;
        ensure!(
            !status.success(),
            "tracer run exited 0 after signal {sig} during attach"
        );
        wait_until(
            5,
            &format!("processes left after signal {sig}: {:?}", marked(&mark)),
            || marked(&mark).is_empty(),
        )?;
    }
    Ok(())
}

#[test]
fn run_passes_sigterm_and_sighup_on_and_still_reports() -> Result<()> {
    privileged_test!();
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("hardening-signals")?;
    let comm: String = fixture
        .file_name()
        .and_then(|n| n.to_str())
        .context("fixture name")?
        .chars()
        .take(15)
        .collect();
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let mark = format!("sig-{}-{sig}", std::process::id());
        let report = dir.join(format!("report-{sig}.json"));
        let report_arg = report.to_string_lossy().into_owned();
        let mut run = marked_run(&fixture, &mark, &["--json-report", &report_arg])?;
        let tracer = run.0.id();
        // The program runs (exec'd), and has waited on its lock for a while.
        wait_until(20, "the program did not start", || {
            marked(&mark)
                .iter()
                .any(|(p, c)| *p != tracer && *c == comm)
        })?;
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(tracer as i32, sig) };
        // tracer must wait for the program, which got the signal too: a
        // program left running (tracer gone) fails here rather than hang.
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = run.0.try_wait()? {
                break st;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "signal {sig}: tracer still running after 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let left = marked(&mark);
        for (pid, _) in &left {
            // SAFETY: kill(2) of a leftover of this test.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        ensure!(
            left.is_empty(),
            "signal {sig}: tracer exited, the program still ran: {left:?}"
        );
        let (mut stdout, mut stderr) = (String::new(), String::new());
        use std::io::Read;
        if let Some(mut o) = run.0.stdout.take() {
            o.read_to_string(&mut stdout)?;
        }
        if let Some(mut e) = run.0.stderr.take() {
            e.read_to_string(&mut stderr)?;
        }
        ensure!(
            status.code() == Some(128 + sig),
            "signal {sig}: tracer exited {status:?}, want the program's {} (it got the signal):\n{stderr}",
            128 + sig,
        );
        ensure!(
            stdout.contains("main.holdLock"),
            "signal {sig}: no contention table on stdout:\n{stdout}"
        );
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report).with_context(|| format!("signal {sig}: no JSON report"))?,
        )?;
        let waits: u64 = json["locks"]
            .as_array()
            .context("locks")?
            .iter()
            .filter_map(|l| l["contentions"].as_u64())
            .sum();
        ensure!(waits > 0, "signal {sig}: the report counts no lock waits");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `tracer ARGS` to completion (at most 60 s): exit code, stderr, and
/// peak RSS in bytes (from wait4's rusage).
fn peak_rss_of(args: &[&std::ffi::OsStr]) -> Result<(i32, String, u64)> {
    let child = Command::new(tracer_bin()?)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let mut guard = KillOnDrop(child);
    let mut stderr = guard.0.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        use std::io::Read;
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        ensure!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "tracer {args:?} still running after 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reaped here; the guard's kill and wait then find nothing.
    std::mem::forget(guard);
    let err = reader.join().unwrap_or_default();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, err, usage.ru_maxrss as u64 * 1024))
}

#[test]
fn analysis_refuses_special_files_and_reads_padded_binaries_in_bounded_memory() -> Result<()> {
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("hardening-padded")?;
    // A FIFO used to hang the analysis; /dev/zero was read until OOM.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes())?;
    // SAFETY: mkfifo on a path of our own.
    ensure!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0, "mkfifo");
    for (path, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let (code, err, rss) = peak_rss_of(&["inspect".as_ref(), path.as_os_str()])?;
        ensure!(code == 1, "inspect {}: exit {code}:\n{err}", path.display());
        ensure!(
            err.contains(&format!("not a regular file: {what}")),
            "inspect {}: {err}",
            path.display()
        );
        ensure!(
            rss < 100 << 20,
            "inspect {}: peak RSS {rss}",
            path.display()
        );
    }
    // A Go binary padded with 2 GiB after its last section (sparse on disk),
    // as an unprivileged user could run it on a node: it used to be read
    // whole (2.1 GB peak RSS).
    let padded = dir.join("padded");
    std::fs::copy(&fixture, &padded)?;
    let f = std::fs::OpenOptions::new().write(true).open(&padded)?;
    f.set_len(f.metadata()?.len() + (2 << 30))?;
    drop(f);
    let (code, err, rss) = peak_rss_of(&["inspect".as_ref(), padded.as_os_str()])?;
    ensure!(
        code == 0,
        "inspect of the padded binary failed ({code}):\n{err}"
    );
    let (_, _, plain_rss) = peak_rss_of(&["inspect".as_ref(), fixture.as_os_str()])?;
    ensure!(
        rss < plain_rss + (32 << 20),
        "padded binary: peak RSS {rss} bytes, against {plain_rss} for the binary itself"
    );
    // The same OS error is said once, not twice.
    let (code, err, _) = peak_rss_of(&["inspect".as_ref(), "/nonexistent/tracer".as_ref()])?;
    ensure!(code == 1, "exit {code}");
    ensure!(
        err.matches("No such file or directory").count() == 1,
        "the OS error is repeated: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_binary_rewritten_in_place_is_analysed_again_and_its_old_probes_go() -> Result<()> {
    privileged_test!();
    let tcs = go_toolchains()?;
    let (old_tc, new_tc) = (tcs.first().context("no Go")?, tcs.last().context("no Go")?);
    ensure!(old_tc.version != new_tc.version, "needs two Go versions");
    let old_bin = build_fixture(old_tc, "contention", Variant::Plain)?;
    let new_bin = build_fixture(new_tc, "contention", Variant::Plain)?;
    let dir = scratch_dir("hardening-rewrite")?;
    let prog = dir.join("rewriteme");
    std::fs::copy(&old_bin, &prog)?;
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755))?;
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&prog)?);
    let metrics = free_addr()?;
    let log = dir.join("agent.log");
    let mut agent = KillOnDrop(
        Command::new(tracer_bin()?)
            .args(["agent", "--grpc-listen", "off", "--unix-socket", "off"])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--comm", "rewriteme"])
            .env("TRACER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    wait_ready(&mut agent.0, metrics, || read_log(&log))?;
    let run = |want: &str| -> Result<()> {
        let out = Command::new(&prog)
            .args(["-g", "2", "-m", "200", "-hold", "1ms"])
            .output()?;
        ensure!(
            out.status.success(),
            "{want}: the program failed under the agent ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run("first binary")?;
    wait_until(15, "first binary not traced", || {
        read_log(&log).contains(&format!("Go go{})", old_tc.version))
    })?;
    // Same path, same inode, new contents, within the agent's 30 s keep
    // window for the old binary's probes.
    let bytes = std::fs::read(&new_bin)?;
    std::fs::write(&prog, &bytes)?;
    ensure!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&prog)?) == ino,
        "the rewrite changed the inode"
    );
    // The old probes must go before the new code runs (the scan notices
    // within 250 ms); then the new binary must be analysed and traced as what
    // it is.
    std::thread::sleep(Duration::from_millis(1500));
    run("rewritten binary")?;
    wait_until(
        15,
        "rewritten binary not traced as the new Go version",
        || read_log(&log).contains(&format!("Go go{})", new_tc.version)),
    )?;
    let analysed = read_log(&log).matches("analysed ").count();
    ensure!(
        analysed == 2,
        "analysed {analysed} times, want 2:\n{}",
        read_log(&log)
    );
    let status = terminate(&mut agent.0, Duration::from_secs(30), || read_log(&log))?;
    ensure!(status.success(), "SIGTERM gave {status}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn agent_stopping_reports_live_processes_as_detached_not_exited() -> Result<()> {
    privileged_test!();
    use tracer_tests::{
        agent::{AgentProc, process_info},
        report::ProcessEntry,
    };
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("hardening-detached")?;
    let prog = dir.join("detachme");
    std::fs::copy(&fixture, &prog)?;
    let mut agent = AgentProc::start_offline(&["--comm", "detachme"])?;
    let live = KillOnDrop(
        Command::new(&prog)
            .args(["-g", "2", "-m", "100000", "-hold", "1ms"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = live.0.id();
    agent.wait_for_log(&format!("tracing pid {pid} "), Duration::from_secs(20))?;
    let report = agent.stop()?;
    let info = ProcessEntry::parse(
        process_info(&report, pid).context("the live process is not in the final report")?,
    )?;
    ensure!(
        info.state == "detached",
        "a process still running at shutdown is reported as {}",
        info.state
    );
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn agent_refuses_unauthenticated_grpc_beyond_loopback() -> Result<()> {
    let dir = scratch_dir("hardening-grpc-auth-cli")?;
    let short = dir.join("short");
    std::fs::write(&short, "abc\n")?;
    let short = short.to_str().context("path")?;
    let quiet = ["--unix-socket", "off", "--metrics-listen", "off"];
    for (args, says) in [
        (vec!["--grpc-listen", "0.0.0.0:0"], "--grpc-token-file"),
        (vec!["--grpc-listen", "[::]:0"], "--grpc-insecure"),
        (
            vec!["--grpc-listen", "0.0.0.0:0", "--grpc-token-file", short],
            "at least 16",
        ),
        (
            vec!["--grpc-token-file", short],
            "apply to --grpc-listen, which is off",
        ),
    ] {
        let all: Vec<&str> = args.iter().chain(&quiet).copied().collect();
        let (status, err) = failed_start(&all)?;
        ensure!(status.code() == Some(1), "{all:?}: {status}\n{err}");
        ensure!(err.contains(says), "{all:?}: no {says:?} in:\n{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `tracer top --once --json` against `addr`: whether it connected.
fn top_connects(addr: &str, token: Option<&Path>) -> Result<bool> {
    let mut cmd = Command::new(tracer_bin()?);
    cmd.args([
        "top",
        "--once",
        "--json",
        "--interval",
        "200ms",
        "--connect",
        addr,
    ]);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    let out = cmd.output().context("running tracer top")?;
    let round: Option<serde_json::Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .find(|l| !l.is_empty())
        .and_then(|l| serde_json::from_slice(l).ok());
    Ok(out.status.success()
        && round.is_some_and(|r| r["agents"][0]["connection"]["state"] == "connected"))
}

#[test]
fn grpc_tcp_is_off_by_default_and_needs_its_token() -> Result<()> {
    privileged_test!();
    let dir = scratch_dir("hardening-grpc-auth")?;
    let socket = dir.join("tracer.sock");
    let metrics = free_addr()?;
    let log = dir.join("agent.log");
    // Default --grpc-listen: only the Unix socket serves gRPC.
    let mut agent = KillOnDrop(
        Command::new(tracer_bin()?)
            .arg("agent")
            .arg("--unix-socket")
            .arg(&socket)
            .args(["--metrics-listen", &metrics.to_string()])
            .env("TRACER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting tracer agent")?,
    );
    wait_ready(&mut agent.0, metrics, || read_log(&log))?;
    let text = read_log(&log);
    let grpc: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("gRPC listening on"))
        .collect();
    ensure!(
        grpc.len() == 1 && grpc[0].contains("unix:"),
        "gRPC must listen on the Unix socket only by default:\n{text}"
    );
    drop(agent);

    // TCP with a token: tracer top needs --token-file.
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n")?;
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "fedcba9876543210fedcba9876543210\n")?;
    let grpc = free_addr()?.to_string();
    let metrics = free_addr()?;
    let mut agent = KillOnDrop(
        Command::new(tracer_bin()?)
            .args(["agent", "--grpc-listen", &grpc, "--grpc-token-file"])
            .arg(&token)
            .args([
                "--unix-socket",
                "off",
                "--metrics-listen",
                &metrics.to_string(),
            ])
            .env("TRACER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting tracer agent")?,
    );
    wait_ready(&mut agent.0, metrics, || read_log(&log))?;
    ensure!(
        !top_connects(&grpc, None)?,
        "top connected without the token"
    );
    ensure!(
        !top_connects(&grpc, Some(&wrong))?,
        "top connected with a wrong token"
    );
    ensure!(
        top_connects(&grpc, Some(&token))?,
        "top with the token did not connect:\n{}",
        read_log(&log)
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
