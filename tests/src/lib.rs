//! Shared helpers for tracer's integration tests (`tests/tests/*.rs`); see
//! `tests/README.md` for how to write a test and which helper to use.
//!
//! - [`fixtures`]: Go toolchains and the cached fixture builds;
//! - [`tracer`]: one-shot `tracer run`/`attach`/`inspect` invocations;
//! - [`agent`]: a `tracer agent` in the background;
//! - [`privileged`]: the [`privileged_test!`] opt-out and the [`serial`] lock;
//! - [`process`], [`net`], [`procfs`]: child guards, loopback HTTP, /proc readers;
//! - [`netns`]: network namespaces joined by a veth pair;
//! - [`report`]: typed queries on the JSON reports.
//!
//! The items most tests use are re-exported here.

pub mod agent;
pub mod fixtures;
pub mod net;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod procfs;
pub mod report;
pub mod tracer;

pub use fixtures::{
    GoToolchain, Variant, build_fixture, build_go_dir, build_newest, cache_dir, classic_and_swiss,
    debian_go, distinct_copies, fixture_value, fixtures_src_dir, go_toolchains, marker_line,
    newest_go, newest_noswissmap,
};
pub use privileged::{privileged_tests_enabled, serial};
pub use procfs::retrans_segs_of;
pub use tracer::{TracerRun, run_tracer, tracer_bin};
