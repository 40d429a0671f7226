//! Fuzzes `GoBinary::parse` and everything reachable from a parsed binary
//! (lookups, RET decoding, the Mutex wake-up points, symbolization, offsets,
//! inspect) on arbitrary bytes.
//! Seed with real Go binaries: see docs/binary-analysis.md.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_user::gobin::{GoBinary, inspect};

fuzz_target!(|data: &[u8]| {
    let Ok(bin) = GoBinary::parse(data.to_vec()) else {
        return;
    };
    let _ = bin.function("main.main");
    let _ = bin.functions_with_prefix("runtime.map");
    let funcs = bin.pclntab_functions();
    // A spread of functions, not all: inputs are whole binaries.
    let step = (funcs.len() / 32).max(1);
    for f in funcs.iter().step_by(step) {
        let _ = bin.return_offsets(f);
        for pc in [
            f.entry,
            f.entry.wrapping_add(f.size / 2),
            f.entry.wrapping_add(f.size),
        ] {
            let _ = bin.symbolize(pc);
        }
    }
    // Arbitrary PCs taken from the input itself.
    for w in data.chunks_exact(8).step_by(4096).take(64) {
        let pc = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let _ = bin.symbolize(pc);
        let _ = bin.vaddr_to_file_offset(pc);
        let _ = bin.read_vaddr(pc, 16);
    }
    let _ = bin.mutex_points();
    let _ = bin.image_base();
    let _ = bin.offsets();
    let _ = bin.missing_offsets();
    let _ = inspect(&bin).to_string();
});
