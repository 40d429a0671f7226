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
    ebpf::{Scope, Tracer},
    export::ExportOptions,
    gobin::GoBinary,
    kernelfs, privileges,
    session::{OutputOptions, STUCK_SCAN, Session, TraceOptions},
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

/// The signals that end a `tracer run`. They are caught from the start, so
/// none of them kills tracer with the program still held at its gate or
/// running untraced; once the program runs they are passed on to it, and
/// tracer reports after it has exited.
struct Stops {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stops {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("catching SIGHUP")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    /// The next signal received.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.int.recv() => libc::SIGINT,
        }
    }

    /// A signal already received, without waiting.
    async fn pending(&mut self) -> Option<i32> {
        tokio::select! {
            biased;
            sig = self.next() => Some(sig),
            () = std::future::ready(()) => None,
        }
    }
}

/// Whether `sig`, received by tracer, must be sent on to the program. A
/// Ctrl-C at the terminal already reaches the whole foreground process
/// group, program included: sending it again could make a program that
/// counts interrupts exit without its own clean-up.
fn forward(sig: i32) -> bool {
    if sig != libc::SIGINT {
        return true;
    }
    // SAFETY: getpgrp and tcgetpgrp only read process state.
    let foreground = unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp() };
    !foreground
}

/// Runs the program under the tracer and returns the exit code tracer should exit
/// with: the program's own (128 + signal when it was killed), or
/// [`FINDINGS_EXIT_CODE`](crate::export::FINDINGS_EXIT_CODE) when the program
/// succeeded, something was found and `--fail-on-findings` was given.
pub async fn run(
    program: &Path,
    args: &[OsString],
    trace: &TraceOptions,
    out: &OutputOptions,
    export: &ExportOptions,
) -> Result<i32> {
    let mut stops = Stops::new()?;
    let path = resolve_program(program)?;
    let bin = GoBinary::open(&path).with_context(|| format!("{}", path.display()))?;
    privileges::check()?;
    kernelfs::ensure_tracefs()?;
    let tracer = Tracer::load_for_maps(trace.tcp.is_some(), trace.maps)?;

    // `Command::spawn` returns only once the child has exec'd, so the child
    // reports its pid through a second pipe before it blocks on the gate.
    let (gate_rd, gate_wr) = pipe()?;
    let (mut pid_rd, pid_wr) = pipe()?;
    let (rd, wr, gate_wr_fd) = (gate_rd.as_raw_fd(), pid_wr.as_raw_fd(), gate_wr.as_raw_fd());
    let parent = std::process::id();
    let mut cmd = std::process::Command::new(&path);
    cmd.args(args);
    // SAFETY: the closure only calls prctl(2), getppid(2), close(2),
    // getpid(2), write(2) and read(2), which are async-signal-safe, on fds
    // that stay open until exec.
    unsafe {
        cmd.pre_exec(move || {
            // The program dies with tracer (with the thread that forked it,
            // which lives until the program is reaped): never left held at
            // the gate, nor running on untraced after tracer was killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "tracer exited before the program started",
                ));
            }
            // Our copy of the gate's write end: closed, so tracer's exit is EOF.
            libc::close(gate_wr_fd);
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(wr, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut b = 0u8;
            loop {
                match libc::read(rd, (&raw mut b).cast(), 1) {
                    1 => return Ok(()),
                    // EOF: tracer gave up (or died) without opening the gate.
                    0 => return Err(std::io::Error::other("tracer did not release the program")),
                    _ if *libc::__errno_location() == libc::EINTR => {}
                    _ => return Err(std::io::Error::last_os_error()),
                }
            }
        });
    }
    // The child is forked, and later reaped, by one dedicated thread: the
    // death signal above follows the forking thread, and a pooled blocking
    // thread may exit while the program still runs.
    let (spawned_tx, spawned_rx) = tokio::sync::oneshot::channel();
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tracer-run-child".into())
        .spawn(move || {
            let child = cmd.spawn();
            // Dropped only now, so the pid read below sees EOF if fork failed.
            drop((gate_rd, pid_wr));
            match child {
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                }
                Ok(mut c) => {
                    let _ = spawned_tx.send(Ok(()));
                    let _ = exited_tx.send(c.wait());
                }
            }
        })
        .context("starting the program's thread")?;
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
            return Err(match spawned_rx.await {
                Ok(Err(se)) => {
                    anyhow::Error::new(se).context(format!("starting {}", path.display()))
                }
                _ => e,
            });
        }
    };
    let kill = |sig: i32| {
        // SAFETY: kill(2) on our own child, not yet reaped (its thread reaps it).
        unsafe { libc::kill(pid as i32, sig) };
    };

    let exe = path
        .canonicalize()
        .unwrap_or(path.clone())
        .to_string_lossy()
        .into_owned();
    // Probes are placed on the binary's inode for every process and filtered to
    // this pid in the kernel: a pid-scoped uprobe taken before exec would be bound
    // to the pre-exec address space.
    let session = Session::start(tracer, bin, &path, pid, exe, Scope::AllProcesses, trace);
    if let Some(sig) = stops.pending().await {
        // Stopped while the probes were being placed: the program never ran.
        drop(gate_wr);
        kill(libc::SIGKILL);
        let _ = exited_rx.await;
        return Ok(128 + sig);
    }
    // Open the gate: the child execs the Go program now. A byte, not EOF: EOF
    // tells the child to give up.
    let released = (&gate_wr).write_all(&[1]);
    drop(gate_wr);
    let started = spawned_rx.await.context("the program's thread ended")?;
    started.with_context(|| format!("starting {}", path.display()))?;
    let mut session =
        match session.and_then(|s| released.map(|()| s).context("releasing the program")) {
            Ok(s) => s,
            Err(e) => {
                kill(libc::SIGKILL);
                let _ = exited_rx.await;
                return Err(e);
            }
        };
    tokio::pin!(exited_rx);

    let mut tick = tokio::time::interval(out.interval.max(Duration::from_millis(100)));
    tick.tick().await;
    let mut scan = tokio::time::interval(STUCK_SCAN);
    let mut drain = tokio::time::interval(crate::tcp::TCP_DRAIN);
    let status = loop {
        let budget = session.budget_due();
        tokio::select! {
            st = &mut exited_rx => break st.context("the program's thread ended")?.context("waiting for the program")?,
            _ = crate::session::sleep_until_due(budget), if budget.is_some() => session.poll_budget(),
            _ = tick.tick(), if out.live => session.print_live(out),
            _ = scan.tick() => session.scan_stuck(trace.stuck_threshold),
            _ = drain.tick() => session.drain_tcp(),
            // Passed on to the program; tracing goes on until it has exited,
            // so its final waits are counted and the report is complete.
            sig = stops.next() => if forward(sig) {
                kill(sig);
            },
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
