//! Developer tasks: `cargo xtask setup | build | test | demo`.
//!
//! Every task runs `setup` first; setup is idempotent, so the README's two
//! commands work on a fresh machine and cost seconds on a prepared one.

mod bench;
mod demo;
mod go;
mod setup;
mod shell;
mod test;
mod vm_test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (rust-src, bpf-linker, Go toolchains) and mount tracefs/bpffs.
    Setup,
    /// Setup, then build tracer (release).
    Build,
    /// Setup, then run formatting/lint checks, unit tests, and the privileged integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, start the bundled Go demo service and trace it live.
    Demo,
    /// TCP kprobe and fentry paths inside Debian's Linux 6.1 under QEMU
    /// (installs qemu/busybox/cpio and the kernel package when missing).
    VmTest,
    /// Setup, build, then the agent soak test for 10 minutes (or
    /// TRACER_SOAK_SECS): bounded memory and prompt answers under load.
    Soak,
    /// Setup, then measure traced against untraced workloads side by side.
    Bench {
        /// Which benchmarks: locks, analysis, maps, budget, agent, tcp, realworld or all.
        #[arg(default_value = "all")]
        what: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            shell::build_tracer()
        }
        Cmd::Test { args } => {
            setup::setup()?;
            test::test(&args)
        }
        Cmd::Demo => {
            setup::setup()?;
            demo::demo()
        }
        Cmd::VmTest => {
            setup::setup()?;
            vm_test::vm_test()
        }
        Cmd::Soak => {
            setup::setup()?;
            test::soak()
        }
        Cmd::Bench { what } => {
            setup::setup()?;
            bench::bench(&what)
        }
    }
}
