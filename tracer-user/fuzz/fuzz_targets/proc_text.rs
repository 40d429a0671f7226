//! Fuzzes the parsers of `/proc` text and of ELF data symbols: both come from
//! processes and binaries tracer does not control.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::{
    datasyms::DataSymbols,
    kernelfs, privileges,
    process::{cgroup, procfs},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = procfs::parse_stat_state(&text);
    let _ = cgroup::parse(&text);
    let _ = cgroup::ns_pids(&text);
    let _ = privileges::parse_cap_eff(&text);
    let _ = kernelfs::is_mounted(&text, kernelfs::TRACEFS, "tracefs");
    let syms = DataSymbols::parse(data);
    for addr in [0u64, 0x400000, u64::MAX, data.len() as u64] {
        let _ = syms.name_of(addr);
    }
});
