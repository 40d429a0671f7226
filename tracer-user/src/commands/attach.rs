//! `tracer attach --pid PID`: trace a running Go process for a while, then report.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{
    ebpf::{Scope, Tracer},
    export::ExportOptions,
    gobin::GoBinary,
    kernelfs, privileges,
    process::procfs,
    session::{OutputOptions, STUCK_SCAN, Session, TraceOptions},
};

/// Attaches to `pid` until `duration` passes, the process exits, or Ctrl-C.
/// Returns the exit code: 0, or the findings code with `--fail-on-findings`.
pub async fn attach(
    pid: u32,
    duration: Option<Duration>,
    trace: &TraceOptions,
    out: &OutputOptions,
    export: &ExportOptions,
) -> Result<i32> {
    procfs::check_pid(pid)?;
    // Through /proc/PID/exe, so a binary in another mount namespace, or one
    // deleted since it started, still opens.
    let exe_link = procfs::exe_link(pid);
    let exe = procfs::exe_display(pid);
    let bin = GoBinary::open(&exe_link).with_context(|| format!("pid {pid} ({exe})"))?;
    privileges::check()?;
    kernelfs::ensure_tracefs()?;
    let tracer = Tracer::load_for_maps(trace.tcp.is_some(), trace.maps)?;
    let mut session = Session::start(tracer, bin, &exe_link, pid, exe, Scope::Pid(pid), trace)?;

    let deadline = duration.map(|d| Instant::now() + d);
    let mut live_tick = tokio::time::interval(out.interval.max(Duration::from_millis(100)));
    live_tick.tick().await;
    let mut scan_tick = tokio::time::interval(STUCK_SCAN);
    let mut drain = tokio::time::interval(crate::tcp::TCP_DRAIN);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let budget = session.budget_due();
        tokio::select! {
            _ = tokio::time::sleep(until_deadline.unwrap_or(Duration::from_secs(3600))), if until_deadline.is_some() => break,
            _ = crate::session::sleep_until_due(budget), if budget.is_some() => session.poll_budget(),
            _ = &mut ctrl_c => break,
            _ = live_tick.tick(), if out.live => session.print_live(out),
            _ = drain.tick() => session.drain_tcp(),
            _ = scan_tick.tick() => {
                if !procfs::is_alive(pid) {
                    tracing::info!("pid {pid} exited");
                    break;
                }
                session.scan_stuck(trace.stuck_threshold);
            }
        }
    }
    if procfs::is_alive(pid) {
        session.scan_stuck(trace.stuck_threshold);
    } else {
        session.settle_stuck();
    }
    let report = session.finish(out)?;
    export.write(&report)?;
    Ok(export.exit_code(0, &report))
}
