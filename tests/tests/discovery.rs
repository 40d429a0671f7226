//! Privileged tests of node-wide discovery (`tracer agent`): processes
//! started after the agent, short-lived ones, ones in their own mount and
//! pid namespaces, thousands of non-Go processes, and a clean exit.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    agent::{AgentProc, process_info, process_report},
    build_newest, privileged_test,
    procfs::{cgroup2_mount, container_id, fd_count, kernel_uuid, rss_kb},
    report::{ProcessEntry, Report},
    serial,
};

/// An agent with no servers and a fast refresh, tracing only `exe_filter`
/// (the machine may run other Go programs).
fn start_agent(exe_filter: &str) -> Result<AgentProc> {
    AgentProc::start_offline(&["--refresh", "200ms", "--exe", exe_filter])
}

fn run(cmd: &mut Command) -> Result<(u32, String)> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting fixture")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "fixture failed: {:?}", out.status);
    Ok((pid, String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn process_started_after_the_agent_is_traced_with_its_attach_latency() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let bin = build_newest("contention")?;
    let agent = start_agent(&bin.to_string_lossy())?;
    // 0.8 s of work: the first process of a never-seen binary waits for its
    // analysis and probes (≈0.3 s here, more on a loaded machine), and one
    // that exits first is never traced.
    let (pid, out) = run(Command::new(&bin).args(["-g", "4", "-m", "100", "-hold", "2ms"]))?;
    let log = agent.log();
    let report = agent.stop()?;
    let info = ProcessEntry::parse(process_info(&report, pid).with_context(|| {
        format!("pid {pid} not in the agent's report: {report:#}\nagent log:\n{log}")
    })?)?;
    let latency = info.attach_latency_ns;
    ensure!(
        latency > 0 && latency < 5_000_000_000,
        "attach latency not recorded sensibly: {latency} ns"
    );
    ensure!(info.state == "exited", "state: {}", info.state);
    let r = process_report(&report, pid).context("no report for the process")?;
    let n = Report::parse(r)?.contentions();
    // 4 goroutines × 100 iterations: at most 400 contended acquisitions; the
    // ones before the probes are live (first attach of this binary) are missed.
    ensure!(n > 0 && n <= 400, "contentions {n}; fixture said {out}");
    let site = Report::parse(r)?
        .locks
        .first()
        .map(|l| l.site.function.clone());
    ensure!(
        site.as_deref() == Some("main.holdLock"),
        "lock site {site:?}"
    );
    Ok(())
}

#[test]
fn short_lived_programs_are_traced_with_lock_and_map_events() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let locks = build_newest("contention")?;
    let maps = build_newest("maps")?;
    let filter = locks
        .parent()
        .context("fixture dir")?
        .to_string_lossy()
        .into_owned();
    // The always-on tier: under the default budget, a growth probe costing
    // a short program a third of its CPU (dozens of growths in 2 ms) is
    // rightly taken off.
    let mut agent =
        AgentProc::start_offline(&["--refresh", "200ms", "--maps", "always", "--exe", &filter])?;
    // The first run of a never-seen binary is analysed and probed (~0.1 s);
    // from then on the binary's probes stay live and a new process of it is
    // traced within a few ms of its exec.
    run(Command::new(&locks).args(["-g", "4", "-m", "5", "-hold", "1ms"]))?;
    run(Command::new(&maps).args(["-mode", "grow", "-n", "20000"]))?;
    for b in [&locks, &maps] {
        agent.wait_for_log(
            &format!("analysed {}", b.display()),
            Duration::from_secs(30),
        )?;
    }
    let mut runs = vec![];
    for _ in 0..3 {
        let t0 = Instant::now();
        let (lp, _) = run(Command::new(&locks).args(["-g", "4", "-m", "5", "-hold", "1ms"]))?;
        let lock_ms = t0.elapsed().as_millis();
        let t0 = Instant::now();
        let (mp, _) = run(Command::new(&maps).args(["-mode", "grow", "-n", "20000"]))?;
        runs.push((lp, lock_ms, mp, t0.elapsed().as_millis()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.log();
    let report = agent.stop()?;
    for (lp, lock_ms, mp, map_ms) in runs {
        let r = process_report(&report, lp).with_context(|| {
            format!("{lock_ms} ms lock program {lp} not traced; agent log:\n{log}")
        })?;
        ensure!(
            Report::parse(r)?.contentions() > 0,
            "{lock_ms} ms program {lp}: no lock events: {r:#} LOG {log}"
        );
        let latency =
            ProcessEntry::parse(process_info(&report, lp).context("info")?)?.attach_latency_ns;
        ensure!(
            latency < 200_000_000,
            "known binary took {latency} ns to trace (goal 200 ms)"
        );
        let r = process_report(&report, mp)
            .with_context(|| format!("{map_ms} ms map program {mp} not traced"))?;
        let growth: u64 = r["maps"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| x["growth_events"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        ensure!(
            growth > 0,
            "{map_ms} ms map program {mp}: no growth events: {r:#} LOG {log}"
        );
    }
    Ok(())
}

#[test]
fn process_in_private_mount_and_pid_namespace_is_found_with_both_pids() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let bin = build_newest("contention")?;
    let agent = start_agent("/private-")?;
    // The binary exists only inside the child's own mount namespace (a
    // tmpfs nobody else sees), and runs as pid 1 of a new pid namespace.
    let dir = format!("/tmp/private-{}", std::process::id());
    let script = format!(
        "mkdir -p {dir} && mount -t tmpfs tmpfs {dir} && cp {} {dir}/app && exec {dir}/app -g 4 -m 100 -hold 2ms",
        bin.display()
    );
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("unshare")?;
    let status = child.wait()?;
    ensure!(status.success(), "namespaced fixture failed: {status}");
    let _ = std::fs::remove_dir(&dir);
    ensure!(
        !std::path::Path::new(&format!("{dir}/app")).exists(),
        "the binary leaked out of the private mount"
    );
    let report = agent.stop()?;
    let procs = report["snapshot"]["processes"]
        .as_array()
        .context("processes")?;
    let p = procs
        .iter()
        .find(|p| p["exe"].as_str().is_some_and(|e| e.ends_with("/app")))
        .with_context(|| format!("namespaced process not found: {report:#}"))?;
    let (host, ns) = (
        p["pid"].as_u64().unwrap_or(0),
        p["ns_pid"].as_u64().unwrap_or(0),
    );
    ensure!(ns == 1, "in-namespace pid should be 1, got {ns}");
    ensure!(host > 1 && host != ns, "host pid {host}");
    let r = process_report(&report, host as u32).context("no report")?;
    ensure!(
        Report::parse(r)?.contentions() > 0,
        "no contention traced in the namespaced process"
    );
    Ok(())
}

#[test]
fn thousands_of_short_lived_non_go_processes_leave_memory_and_fds_bounded() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let agent = start_agent("/no-such-binary-")?;
    let pid = agent.pid();
    // Warm up allocator arenas and caches first.
    let churn = |n: u32| -> Result<()> {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
            ))
            .status()?;
        ensure!(st.success(), "churn failed");
        Ok(())
    };
    churn(200)?;
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, fds0) = (rss_kb(pid)?, fd_count(pid)?);
    churn(2000)?;
    std::thread::sleep(Duration::from_millis(1000));
    let (rss1, fds1) = (rss_kb(pid)?, fd_count(pid)?);
    let report = agent.stop()?;
    ensure!(
        rss1 <= rss0 + 8 * 1024,
        "agent RSS grew from {rss0} kB to {rss1} kB over 2000 processes"
    );
    ensure!(fds1 <= fds0 + 2, "agent fds grew from {fds0} to {fds1}");
    let lost = report["snapshot"]["health"]["events_lost"]
        .as_u64()
        .unwrap_or(0);
    ensure!(lost == 0, "{lost} events lost");
    Ok(())
}

/// (id, name) of the BPF programs loaded in the kernel with our names.
fn our_programs() -> Vec<(u32, String)> {
    const OURS: &[&str] = &[
        "lock_enter",
        "lock_exit",
        "mutex_sleep",
        "mutex_wake",
        "mutex_handoff",
        "proc_exec",
        "proc_exit",
        "map_fatal",
    ];
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .filter(|(_, n)| OURS.contains(&n.as_str()))
        .collect()
}

#[test]
fn sigterm_detaches_every_probe_and_unloads_every_program() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let bin = build_newest("contention")?;
    // Programs of earlier agents may still be on their way out (the kernel
    // frees them asynchronously): judge only the ones this agent loads.
    let before: Vec<u32> = our_programs().into_iter().map(|(id, _)| id).collect();
    let ours = move || -> Vec<(u32, String)> {
        our_programs()
            .into_iter()
            .filter(|(id, _)| !before.contains(id))
            .collect()
    };
    let mut fixture = Command::new(&bin)
        .args(["-g", "4", "-m", "100000", "-hold", "1ms"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut agent = start_agent(&bin.to_string_lossy())?;
    agent.wait_for_log("tracing pid", Duration::from_secs(10))?;
    let loaded = ours();
    ensure!(
        loaded.iter().any(|(_, n)| n == "lock_enter")
            && loaded.iter().any(|(_, n)| n == "proc_exec"),
        "programs not loaded while tracing: {loaded:?}"
    );
    agent.stop()?;
    let _ = fixture.kill();
    let _ = fixture.wait();
    // Links are released with the agent's fds; the kernel frees programs
    // asynchronously (RCU), so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ours().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = ours();
    ensure!(left.is_empty(), "programs left after SIGTERM: {left:?}");
    Ok(())
}

#[test]
fn process_in_a_kubepods_cgroup_is_selected_and_labelled_by_container_and_pod() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let bin = build_newest("contention")?;
    let uid = kernel_uuid()?;
    let id = container_id()?;
    // A kubelet/containerd-style tree below a test-specific top directory.
    let levels = [
        format!("tracer-agent-test-{}.slice", std::process::id()),
        "kubepods.slice".into(),
        "kubepods-burstable.slice".into(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{id}.scope"),
    ];
    let mut dir = cgroup2_mount()?.context("no cgroup v2 hierarchy mounted")?;
    let mut made = vec![];
    for l in &levels {
        dir.push(l);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        made.push(dir.clone());
    }
    // Only this container is traced: the agent selects by container id prefix.
    let agent = AgentProc::start_offline(&["--refresh", "200ms", "--container", &id[..12]])?;
    // The shell joins the container's cgroup, then execs the Go program, as a
    // container runtime does.
    let status = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\" && exec \"$2\" -g 4 -m 100 -hold 2ms >/dev/null")
        .arg("sh")
        .arg(&dir)
        .arg(&bin)
        .status()?;
    // An identical process outside the container must not be traced.
    let (outside, _) = run(Command::new(&bin).args(["-g", "2", "-m", "20", "-hold", "1ms"]))?;
    let report = agent.stop();
    for d in made.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    ensure!(status.success(), "containerised fixture failed: {status}");
    let report = report?;
    let procs = report["snapshot"]["processes"]
        .as_array()
        .context("processes")?;
    ensure!(
        procs
            .iter()
            .all(|p| p["pid"].as_u64() != Some(u64::from(outside))),
        "a process outside the container was traced: {report:#}"
    );
    let p = procs
        .iter()
        .find(|p| p["labels"]["container_id"] == id.as_str())
        .with_context(|| format!("containerised process not traced: {report:#}"))?;
    ensure!(
        p["labels"]["pod_uid"] == uid.as_str(),
        "labels: {}",
        p["labels"]
    );
    let pid = p["pid"].as_u64().context("pid")? as u32;
    let r = process_report(&report, pid).context("no report")?;
    ensure!(
        Report::parse(r)?.contentions() > 0,
        "no contention traced in the container"
    );
    Ok(())
}
