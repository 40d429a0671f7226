//! Runs `tracer agent` for a test. [`AgentProc`] is the usual way: started in
//! the background, ready once it logs so, stopped with SIGTERM, its final JSON
//! report parsed. Tests that need their own command line (another user, a
//! log file kept for the assertions) build it with [`agent_command`] and wait
//! with [`wait_ready`] and [`terminate`](crate::process::terminate).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{net::http_get, process::terminate, tracer_bin};

/// Flags that turn off every server: for tests that read the agent's final
/// JSON report only.
pub const NO_SERVERS: [&str; 6] = [
    "--grpc-listen",
    "off",
    "--unix-socket",
    "off",
    "--metrics-listen",
    "off",
];

/// A running agent.
pub struct AgentProc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    report: PathBuf,
}

impl AgentProc {
    /// Starts `tracer agent ARGS --json-report TMP` and waits (up to 30 s)
    /// for its "agent ready" line.
    pub fn start(args: &[&str]) -> Result<Self> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let report = std::env::temp_dir().join(format!(
            "tracer-agent-{}-{}.json",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&report);
        let mut child = Command::new(tracer_bin()?)
            .arg("agent")
            .arg("--json-report")
            .arg(&report)
            .args(args)
            .env("TRACER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer agent")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("agent stderr")?;
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut agent = Self { child, log, report };
        agent.wait_for_log("agent ready", Duration::from_secs(30))?;
        Ok(agent)
    }

    /// [`AgentProc::start`] with [`NO_SERVERS`] and then `args`.
    pub fn start_offline(args: &[&str]) -> Result<Self> {
        let all: Vec<&str> = NO_SERVERS.iter().chain(args).copied().collect();
        Self::start(&all)
    }

    /// Pid of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "agent exited ({st}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "agent did not log {needle:?} within {timeout:?}:\n{}",
            self.log()
        )
    }

    /// SIGTERM, wait for exit (up to 60 s), and return the final report.
    pub fn stop(mut self) -> Result<serde_json::Value> {
        let log = self.log.clone();
        let status = terminate(&mut self.child, Duration::from_secs(60), || {
            log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
        })
        .context("stopping the agent")?;
        if !status.success() {
            bail!("agent exited with {status}:\n{}", self.log());
        }
        let bytes = std::fs::read(&self.report)
            .with_context(|| format!("agent wrote no report:\n{}", self.log()))?;
        let _ = std::fs::remove_file(&self.report);
        serde_json::from_slice(&bytes).context("parsing the agent's report")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tracer agent` with stdout discarded and stderr written to `log`; the
/// caller adds the flags and environment and spawns it.
pub fn agent_command(log: &Path) -> Result<Command> {
    let mut cmd = Command::new(tracer_bin()?);
    cmd.arg("agent")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?);
    Ok(cmd)
}

/// Waits (up to 30 s) until `/readyz` on `metrics` answers 200; fails at
/// once, with `log()`, if `agent` exits first.
pub fn wait_ready(agent: &mut Child, metrics: SocketAddr, log: impl Fn() -> String) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = agent.try_wait()? {
            bail!("agent exited ({st}) before it was ready:\n{}", log());
        }
        if http_get(metrics, "/readyz").is_some_and(|(c, _)| c == 200) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("agent not ready within 30 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Report of `pid` in an agent's final report.
pub fn process_report(report: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    report["snapshot"]["reports"]
        .as_array()?
        .iter()
        .find(|r| r["target"]["pid"].as_u64() == Some(u64::from(pid)))
}

/// Process entry of `pid` in an agent's final report.
pub fn process_info(report: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    report["snapshot"]["processes"]
        .as_array()?
        .iter()
        .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
}
