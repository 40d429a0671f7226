//! The `tracer` subcommands.
pub mod agent;
pub mod attach;
pub mod inspect;
pub mod run;
pub mod top;

use std::io::Write as _;

/// Writes `text` to stdout. A closed pipe (`tracer inspect BIN | head`) ends
/// the output quietly instead of panicking as `print!` does.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
