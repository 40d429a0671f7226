//! Running the `tracer` binary under test as a one-shot command (`run`,
//! `attach`, `inspect`, ...) and collecting its output and JSON report.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The `tracer` binary under test: `$TRACER_BIN`, else the one cargo built next to
/// this test executable (`cargo xtask test` builds it first).
pub fn tracer_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/tracer
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tracer"))
        .context("cannot locate target directory")?;
    if !bin.is_file() {
        bail!(
            "{} not built: run `cargo xtask test` (or `cargo build -p tracer-user --bin tracer`) first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Output of one tracer invocation.
#[derive(Debug)]
pub struct TracerRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Parsed `--json-report`, when one was asked for and written.
    pub report: Option<serde_json::Value>,
}

/// Runs `tracer ARGS`, adding `--json-report` to a temporary file when `json` is set
/// (it must then be a `run` or `attach` invocation; the flag is placed right after
/// the subcommand).
pub fn run_tracer(args: &[&str], json: bool) -> Result<TracerRun> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let bin = tracer_bin()?;
    let report_path = std::env::temp_dir().join(format!(
        "tracer-test-{}-{}.json",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new(&bin);
    if json {
        let (sub, rest) = args.split_first().context("no subcommand")?;
        cmd.arg(sub)
            .arg("--json-report")
            .arg(&report_path)
            .args(rest);
    } else {
        cmd.args(args);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let report = if json {
        fs::read(&report_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };
    let _ = fs::remove_file(&report_path);
    Ok(TracerRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    })
}
