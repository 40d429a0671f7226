//! Child processes of a test: a guard that kills what a failed assertion
//! would leave running, waiting for a server child to be ready, stopping a
//! child with SIGTERM, its log file, and fresh scratch directories.

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process killed (and reaped) on drop, so a failed assertion
/// leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ready` every 200 ms until it holds; fails, with `log()`, if
/// `child` exits first or 30 s pass (a server that never comes up).
pub fn wait_until_ready(
    child: &mut Child,
    what: &str,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited ({st}):\n{}", log());
        }
        if ready() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{what} not ready after 30 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM to `child` and returns its exit status; fails, with
/// `log()`, if it is still running `within` later.
pub fn terminate(
    child: &mut Child,
    within: Duration,
    log: impl Fn() -> String,
) -> Result<ExitStatus> {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if t0.elapsed() > within {
            bail!("still running {within:?} after SIGTERM:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh, empty directory `tracer-<name>-<pid>-<n>` under the temp dir
/// (`n` counts the calls, so each gets its own), removed first if an earlier
/// run left it.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tracer-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The text of a log file so far; empty when it cannot be read (it is only
/// ever shown in a failure message).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
