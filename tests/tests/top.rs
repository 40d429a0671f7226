//! End-to-end test of `tracer top` against a real agent: `tracer agent`
//! traces two copies of the contention fixture and the maps fixture, and
//! `tracer top --connect` runs inside a detached tmux session (200x50) that
//! the test drives with `send-keys` and reads with `capture-pane -p`.
//!
//! Ground truth: the fixtures' own pids and the `LOCKSITE` line of the
//! contention fixture; the race comes from the maps fixture's unlocked
//! writers (`WRITESITE`).

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use tracer_api::v1::{self as api, tracer_client::TracerClient};
use tracer_tests::{
    Variant, build_fixture, go_toolchains, marker_line, net::free_port, privileged_test,
    process::KillOnDrop, tracer_bin,
};

/// A tmux server of our own (`-L`), so the test never touches the user's.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn start(command: &str) -> Result<Tmux> {
        let t = Tmux {
            socket: format!("tracer-top-test-{}", std::process::id()),
        };
        let st = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "200",
                "-y",
                "50",
                command,
            ])
            .status()
            .context("tmux not found: run `cargo xtask setup`")?;
        ensure!(st.success(), "tmux new-session failed: {st}");
        Ok(t)
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()?;
        ensure!(st.success(), "tmux send-keys {keys:?}: {st}");
        Ok(())
    }

    /// Types `text` literally (no key-name lookup).
    fn type_text(&self, text: &str) -> Result<()> {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "top", "-l", text])
            .status()?;
        ensure!(st.success(), "tmux send-keys -l {text:?}: {st}");
        Ok(())
    }

    /// Opens the filter prompt, types `text`, and applies it, checking the
    /// screen at each step: keys sent while the view is busy redrawing are
    /// not lost, but the test must not race ahead of what the view shows.
    fn set_filter(&self, text: &str) -> Result<()> {
        let typed = format!("filter: {text}_");
        for _ in 0..3 {
            self.keys(&["/", "C-u"])?;
            if self
                .wait_for("filter prompt", Duration::from_secs(5), |s| {
                    s.contains("filter: _")
                })
                .is_err()
            {
                self.keys(&["Escape"])?;
                continue;
            }
            self.type_text(text)?;
            if self
                .wait_for("typed filter", Duration::from_secs(5), |s| {
                    s.contains(&typed)
                })
                .is_ok()
            {
                return self.keys(&["Enter"]);
            }
            self.keys(&["Escape"])?;
        }
        bail!("could not type the filter {text:?}: {}", self.capture()?)
    }

    fn capture(&self) -> Result<String> {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()?;
        ensure!(out.status.success(), "tmux capture-pane: {}", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls the screen until `ok` holds; fails with the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let screen = self.capture()?;
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > end {
                bail!("timed out waiting for {what}; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The screen line (index) of the table row whose PID column is `pid` and
/// that mentions `needle`.
fn row_line(screen: &str, pid: u32, needle: &str) -> Option<usize> {
    let pid = pid.to_string();
    screen
        .lines()
        .position(|l| l.contains(needle) && l.split_whitespace().any(|w| w == pid))
}

/// A Findings row of `pid` for the fixture's race: the deep tier's overlap at
/// the writer's call site, or the runtime's "concurrent map writes" crash.
fn is_race_row(line: &str, pid: u32) -> bool {
    let pid = pid.to_string();
    line.split_whitespace().any(|w| w == pid)
        && ((line.contains("concurrent_map_write") && line.contains("main.slowWriter"))
            || (line.contains("map_fatal") && line.contains("concurrent map writes")))
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Result<KillOnDrop> {
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(KillOnDrop(child))
}

fn agent_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("agent.log"))
        .unwrap_or_default()
        .chars()
        .rev()
        .take(4000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Waits until the agent traces `pid`, then turns on the deep map tier for it
/// so overlapping map writes are reported before the runtime's own check.
async fn deep_trace(grpc: &str, pid: u32, timeout: Duration) -> Result<()> {
    let mut client = TracerClient::connect(format!("http://{grpc}")).await?;
    let end = Instant::now() + timeout;
    loop {
        let procs = client
            .list_processes(api::ListProcessesRequest {
                filter: Some(api::Filter {
                    pids: vec![pid],
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .processes;
        if procs.iter().any(|p| p.pid == pid && p.status == "traced") {
            client
                .start_deep_map_trace(api::StartDeepMapTraceRequest {
                    pid,
                    duration_ms: 20_000,
                    sites: vec!["main".into()],
                })
                .await?;
            return Ok(());
        }
        if procs.iter().any(|p| p.pid == pid && p.status != "traced") || Instant::now() > end {
            bail!("pid {pid} not traced: {procs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn top_shows_tabs_sorts_filters_and_a_race_finding() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let tc = go_toolchains()?
        .into_iter()
        .rfind(|t| t.swiss_maps())
        .context("no Go ≥ 1.24 installed (run `cargo xtask setup`)")?;
    let contention = build_fixture(&tc, "contention", Variant::Plain)?;
    let maps = build_fixture(&tc, "maps", Variant::Plain)?;
    let lock_line = marker_line("contention", "// LOCKSITE")?;
    let call_site = format!("main.holdLock main.go:{lock_line}");
    let tracer = tracer_bin()?;

    let dir: PathBuf = std::env::temp_dir().join(format!("tracer-top-e2e-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let socket = dir.join("s.sock");
    let socket_s = socket.to_str().context("path")?;
    let mut agent = spawn(
        &tracer,
        &[
            "agent",
            "--grpc-listen",
            &grpc,
            // Full access without a token on loopback: deep_trace() starts a
            // deep map trace over TCP.
            "--grpc-insecure",
            "--unix-socket",
            socket_s,
            "--metrics-listen",
            &metrics,
            "--refresh",
            "500ms",
        ],
        &dir.join("agent.log"),
    )?;
    let end = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&grpc).is_err() {
        if let Some(st) = agent.0.try_wait()? {
            bail!("tracer agent exited ({st}):\n{}", agent_log(&dir));
        }
        ensure!(
            Instant::now() < end,
            "agent never listened on {grpc}:\n{}",
            agent_log(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two lock-contending programs that run for minutes: rows whose pids we know.
    let args = ["-g", "4", "-m", "1000000", "-hold", "1ms"];
    let a = spawn(&contention, &args, &dir.join("a.log"))?;
    let b = spawn(&contention, &args, &dir.join("b.log"))?;
    let (pa, pb) = (a.0.id(), b.0.id());
    let (lo, hi) = (pa.min(pb), pa.max(pb));

    // The agent traces every Go process on the machine: start filtered to
    // ours so other programs' rows cannot push them off the screen.
    let top_cmd = format!(
        "{} top --connect {grpc} --interval 500ms --filter pid={pa},pid={pb} 2>{}",
        tracer.display(),
        dir.join("top.err").display()
    );
    let tmux = Tmux::start(&top_cmd)?;
    let ctx = |s: &str| format!("{s}\nagent log:\n{}", agent_log(&dir));

    // Tabs and the Locks table with both programs' rows.
    let screen = tmux
        .wait_for("both contention rows", Duration::from_secs(60), |s| {
            row_line(s, pa, &call_site).is_some() && row_line(s, pb, &call_site).is_some()
        })
        .map_err(|e| anyhow::anyhow!(ctx(&format!("{e:#}"))))?;
    for t in ["Locks (", "Maps (", "sync.Map (", "Net (", "Findings ("] {
        ensure!(screen.contains(t), "tab {t} missing:\n{screen}");
    }
    for h in ["PID", "COMM", "LOCK", "CONT", "TOTAL", "P99", "CALL SITE"] {
        ensure!(screen.contains(h), "header {h} missing:\n{screen}");
    }
    ensure!(
        screen.contains("connected"),
        "no connection state:\n{screen}"
    );

    // Sort by PID (column 2): descending first, then ascending.
    tmux.keys(&["2"])?;
    tmux.wait_for("PID descending", Duration::from_secs(10), |s| {
        s.contains("PID▼")
            && matches!((row_line(s, hi, &call_site), row_line(s, lo, &call_site)), (Some(h), Some(l)) if h < l)
    })?;
    tmux.keys(&["2"])?;
    tmux.wait_for("PID ascending", Duration::from_secs(10), |s| {
        s.contains("PID▲")
            && matches!((row_line(s, hi, &call_site), row_line(s, lo, &call_site)), (Some(h), Some(l)) if l < h)
    })?;

    // Filter to one program; the other's row disappears.
    tmux.set_filter(&format!("pid={pa}"))?;
    tmux.wait_for("filtered to one pid", Duration::from_secs(10), |s| {
        s.contains(&format!("filter: pid={pa}"))
            && row_line(s, pa, &call_site).is_some()
            && row_line(s, pb, &call_site).is_none()
    })?;
    // Detail pane: histogram and stack of the selected row.
    tmux.keys(&["Enter"])?;
    tmux.wait_for("lock detail", Duration::from_secs(10), |s| {
        s.contains("Wait histogram:") && s.contains("Stack:") && s.contains("main.holdLock")
    })?;
    tmux.keys(&["Escape"])?;
    drop((a, b));

    // A race: two unlocked writers on one map for 20 s (`-mode racyslow`,
    // which rarely crashes; `-wait` gives the agent time to analyse the new
    // binary first). The deep tier is turned on as soon as the agent has the
    // process and reports the overlapping writes; if the runtime kills the
    // program first, the always-on tier reports its fatal error.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tmux.keys(&["F"])?;
    let mut last = String::new();
    for attempt in 1..=5 {
        let fixture = spawn(
            &maps,
            &["-mode", "racyslow", "-n", "20000", "-wait", "500ms"],
            &dir.join(format!("maps-{attempt}.log")),
        )?;
        let pid = fixture.0.id();
        tmux.set_filter(&format!("pid={pid}"))?;
        let deep = rt.block_on(deep_trace(&grpc, pid, Duration::from_secs(20)));
        let found = tmux.wait_for("a race finding", Duration::from_secs(25), |s| {
            s.lines().any(|l| is_race_row(l, pid))
        });
        match found {
            Ok(screen) => {
                ensure!(screen.contains("Findings ("), "{screen}");
                tmux.keys(&["q"])?;
                std::thread::sleep(Duration::from_millis(500));
                let err = fs::read_to_string(dir.join("top.err")).unwrap_or_default();
                ensure!(!err.contains("panicked"), "tracer top panicked:\n{err}");
                let _ = fs::remove_dir_all(&dir);
                return Ok(());
            }
            Err(e) => last = format!("attempt {attempt} (deep trace: {deep:?}): {e:#}"),
        }
    }
    bail!("no race finding shown: {}", ctx(&last))
}
