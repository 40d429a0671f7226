//! The `tracer` binary: parses the command line and runs it
//! (`tracer_user::cli`).

use std::process::ExitCode;

use clap::Parser;
use tracer_user::cli::{self, args::Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
