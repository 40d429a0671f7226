//! The `tracer` subcommands.
pub mod agent;
pub mod attach;
pub mod inspect;
pub mod run;
pub mod top;
