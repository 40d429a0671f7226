//! The `tracer` command line: [`args`] declares it (clap), [`resolve`] turns
//! the raw flags into the commands' options, and [`run`] starts the
//! runtime and calls the command. `main.rs` only parses and calls [`run`].

pub mod args;
pub mod resolve;

use std::process::ExitCode;

use self::args::{Cli, Command};
use crate::commands;

/// Sets up logging on stderr, at a level that suits `command` unless
/// `$TRACER_LOG` says otherwise.
fn init_logging(command: &Command) {
    // The full-screen view owns the terminal: its embedded agent's log lines
    // would scribble over it, so they are off unless TRACER_LOG asks.
    // The agent is a daemon: its log is the only sign of life an operator
    // has (what it listens on, that it is ready, what it traces), so it logs
    // at info by default.
    let default_log = match command {
        Command::Top(_) => "off",
        Command::Agent(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file
        // or `kubectl logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the parsed command line; the exit code is the command's (2 for a
/// bad global flag, 1 for an error).
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.command);
    let tcp = match resolve::tcp_options(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tracer: error: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Agent(_)) {
        // A long-running daemon with many short-lived blocking threads:
        // glibc would give each its own 64 MiB heap arena and keep what they
        // freed. Two arenas hold the agent's whole working set.
        // A fixed mmap threshold: glibc would otherwise raise it after the
        // first large free, and then keep each binary's megabytes-large
        // image in the heap after the binary is forgotten.
        #[cfg(target_env = "gnu")]
        // SAFETY: mallopt before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run {
                output,
                export,
                program,
                args,
            } => {
                let trace = resolve::trace_options(&output, &tcp, crate::maps::MapsMode::Budget);
                let out = resolve::output_options(&output);
                commands::run::run(&program, &args, &trace, &out, &export.into()).await
            }
            Command::Attach {
                pid,
                duration,
                output,
                export,
            } => {
                let trace = resolve::trace_options(&output, &tcp, crate::maps::MapsMode::Budget);
                let out = resolve::output_options(&output);
                commands::attach::attach(pid, duration, &trace, &out, &export.into()).await
            }
            Command::Agent(a) => match resolve::agent_options(*a, &tcp) {
                Ok((mut opts, fe, kube)) => {
                    match commands::agent::pod_index(&kube, &opts.node).await {
                        Ok(p) => {
                            opts.pods = p;
                            commands::agent::agent(opts, fe).await.map(|()| 0)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            Command::Inspect {
                kernel: true, json, ..
            } => commands::inspect::inspect_kernel(json, &tcp).map(|()| 0),
            Command::Inspect {
                binary, pid, json, ..
            } => commands::inspect::inspect(binary.as_deref(), pid, json).map(|()| 0),
            Command::Top(a) => commands::top::top(a.into(), tcp).await.map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
