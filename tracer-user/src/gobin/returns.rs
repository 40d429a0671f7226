//! RET sites of a function, for exit probes: uretprobes corrupt Go stacks
//! (the runtime copies and walks them), so tracer puts a plain uprobe on every
//! return instruction instead.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Offsets of `RET`/`RET imm16`/`RETF`/`RETF imm16` (C3, C2, CB, CA) in amd64
/// code. Go puts no data in text, so a linear sweep is exact; ENDBR64 and INT3
/// padding decode as ordinary instructions.
pub fn return_offsets_amd64(code: &[u8], ip: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut pos = 0u64;
    while dec.can_decode() {
        let insn = dec.decode();
        if matches!(insn.mnemonic(), Mnemonic::Ret | Mnemonic::Retf) {
            out.push(pos);
        }
        // Invalid bytes still advance (len ≥ 1), so this loop terminates.
        pos += insn.len().max(1) as u64;
    }
    out
}

/// Offsets of `RET Xn` in arm64 code (fixed 4-byte words; `ret` = d65f03c0).
pub fn return_offsets_arm64(code: &[u8]) -> Vec<u64> {
    code.chunks_exact(4)
        .enumerate()
        .filter(|(_, w)| {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            v & 0xffff_fc1f == 0xd65f_0000
        })
        .map(|(i, _)| i as u64 * 4)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd64_plain_ret() {
        // push rbp; mov rbp,rsp; pop rbp; ret
        assert_eq!(
            return_offsets_amd64(&[0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3], 0x1000),
            vec![5]
        );
    }

    #[test]
    fn amd64_endbr_int3_padding_and_imm16() {
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, // endbr64
            0x48, 0x85, 0xc0, // test rax,rax
            0x74, 0x03, // je +3
            0xc2, 0x08, 0x00, // ret 8
            0xc3, // ret
            0xcc, 0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(return_offsets_amd64(&code, 0x401000), vec![9, 12]);
    }

    #[test]
    fn amd64_c3_inside_immediate_is_not_a_ret() {
        // mov eax, 0xc3c3c3c3; retf; retf 4
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xcb, 0xca, 0x04, 0x00];
        assert_eq!(return_offsets_amd64(&code, 0), vec![5, 6]);
        // A call whose rel32 contains C3 bytes, then a ret.
        let code = [0xe8, 0xc3, 0x00, 0xc3, 0x00, 0xc3];
        assert_eq!(return_offsets_amd64(&code, 0), vec![5]);
    }

    #[test]
    fn amd64_garbage_and_truncation() {
        assert!(return_offsets_amd64(&[], 0).is_empty());
        // Truncated instruction at the end must not be reported or panic.
        assert!(return_offsets_amd64(&[0x48, 0xb8, 0xc3], 0).is_empty());
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = return_offsets_amd64(&junk, u64::MAX - 10);
    }

    #[test]
    fn arm64_rets() {
        let mut code = Vec::new();
        for w in [
            0xd503201fu32, // nop
            0xd65f03c0,    // ret
            0xd65f0220,    // ret x17
            0xd61f0220,    // br x17 (not a return)
            0xd65f0bff,    // retaa (not matched: different encoding)
        ] {
            code.extend_from_slice(&w.to_le_bytes());
        }
        code.push(0xc0); // trailing partial word ignored
        assert_eq!(return_offsets_arm64(&code), vec![4, 8]);
    }
}
