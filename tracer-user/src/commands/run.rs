//! `tracer run -- PROGRAM [ARGS...]`: start a Go program with the probes already
//! in place, trace it until it exits, then report.
//!
//! The child is held between fork and exec (it blocks reading a pipe) until the
//! probes are attached, so no contention at start-up is missed.

use std::{
    ffi::OsString,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use std::io::{Read as _, Write as _};

use anyhow::{Context, Result, bail};

use crate::{
    export::ExportOptions,
    gobin::GoBinary,
    kernelfs, privileges,
    probes::{Scope, Tracer},
    session::{OutputOptions, STUCK_SCAN, Session},
};

/// Finds PROGRAM like a shell does: as given when it has a slash, else on PATH.
pub fn resolve_program(program: &Path) -> Result<PathBuf> {
    if program.components().count() > 1 || program.to_string_lossy().contains('/') {
        if program.is_file() {
            return Ok(program.to_path_buf());
        }
        bail!("program not found: {}", program.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(program);
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!("program not found on PATH: {}", program.display())
}

/// A close-on-exec pipe (read end, write end).
fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Runs the program under the tracer and returns the exit code tracer should exit
/// with: the program's own (128 + signal when it was killed), or
/// [`FINDINGS_EXIT_CODE`](crate::export::FINDINGS_EXIT_CODE) when the program
/// succeeded, something was found and `--fail-on-findings` was given.
pub async fn run(
    program: &Path,
    args: &[OsString],
    out: &OutputOptions,
    export: &ExportOptions,
) -> Result<i32> {
    let path = resolve_program(program)?;
    let bin = GoBinary::open(&path).with_context(|| format!("{}", path.display()))?;
    privileges::check()?;
    kernelfs::ensure_tracefs()?;
    let tracer = Tracer::load_with(out.tcp)?;

    // `Command::spawn` returns only once the child has exec'd, so the child
    // reports its pid through a second pipe before it blocks on the gate.
    let (gate_rd, gate_wr) = pipe()?;
    let (mut pid_rd, pid_wr) = pipe()?;
    let (rd, wr) = (gate_rd.as_raw_fd(), pid_wr.as_raw_fd());
    let mut cmd = std::process::Command::new(&path);
    cmd.args(args);
    // SAFETY: the closure only calls getpid(2), write(2) and read(2), which are
    // async-signal-safe, on fds that stay open until exec.
    unsafe {
        cmd.pre_exec(move || {
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(wr, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut b = 0u8;
            loop {
                let n = libc::read(rd, (&raw mut b).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    return Ok(());
                }
            }
        });
    }
    let spawner = tokio::task::spawn_blocking(move || {
        let child = cmd.spawn();
        // Dropped only now, so the pid read below sees EOF if fork failed.
        drop((gate_rd, pid_wr));
        child
    });
    let pid = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 4];
        pid_rd.read_exact(&mut b).map(|()| u32::from_ne_bytes(b))
    })
    .await?
    .with_context(|| format!("starting {}", path.display()));
    let pid = match pid {
        Ok(p) => p,
        Err(e) => {
            // spawn failed; its own error is the better message.
            return Err(match spawner.await? {
                Err(se) => anyhow::Error::new(se).context(format!("starting {}", path.display())),
                Ok(_) => e,
            });
        }
    };

    let exe = path
        .canonicalize()
        .unwrap_or(path.clone())
        .to_string_lossy()
        .into_owned();
    // Probes are placed on the binary's inode for every process and filtered to
    // this pid in the kernel: a pid-scoped uprobe taken before exec would be bound
    // to the pre-exec address space.
    let session = Session::start(tracer, bin, &path, pid, exe, Scope::AllProcesses, out);
    // Open the gate: the child execs the Go program now. A byte, not EOF: the
    // child holds its own copy of the write end until exec.
    let released = (&gate_wr).write_all(&[1]);
    drop(gate_wr);
    let mut child = spawner
        .await?
        .with_context(|| format!("starting {}", path.display()))?;
    let mut session =
        match session.and_then(|s| released.map(|()| s).context("releasing the program")) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(waiter);

    let mut tick = tokio::time::interval(out.interval.max(Duration::from_millis(100)));
    tick.tick().await;
    let mut scan = tokio::time::interval(STUCK_SCAN);
    let mut drain = tokio::time::interval(crate::tcp::TCP_DRAIN);
    let status = loop {
        tokio::select! {
            st = &mut waiter => break st?.context("waiting for the program")?,
            _ = tick.tick(), if out.live => session.print_live(out),
            _ = scan.tick() => session.scan_stuck(out.stuck_threshold),
            _ = drain.tick() => session.drain_tcp(),
            // Ctrl-C reaches the program too (same process group); keep tracing
            // until it has exited so its final waits are counted.
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    session.settle_stuck();
    let report = session.finish(out)?;
    export.write(&report)?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(export.exit_code(code, &report))
}
