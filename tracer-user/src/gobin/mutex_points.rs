//! Where a `sync.Mutex` wait can be timed with no probe in the critical
//! section, decoded per binary from the code the Go compiler emitted.
//!
//! In `lockSlow` a waiter calls `runtime_SemacquireMutex(&m.sema, lifo, ..)`
//! to sleep. When it returns, the waiter loads `m.state` and tests the
//! starvation bit: clear (the fall-through), it was woken normally and goes
//! back to compete for the lock, which it does not own yet; set (the jump),
//! the unlocker handed the lock over and the waiter owns it. In `unlockSlow`
//! the starvation branch is the `runtime_Semrelease(&m.sema, true, ..)` call
//! (`handoff` = true in BX). Probes go on the sleeping call, the normal-wake
//! fall-through and the hand-off call; none on the owner's path.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Offsets (from their function's entry) of the three Mutex wait probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutexPoints {
    /// In `lockSlow`: the `CALL runtime_SemacquireMutex`.
    pub sleep: u64,
    /// In `lockSlow`: the first instruction after the starvation-bit branch
    /// that follows the call (normal wake-up).
    pub wake: u64,
    /// In `unlockSlow`: the `CALL runtime_Semrelease` with `handoff` = true.
    pub handoff: u64,
}

/// Instructions between the semaphore call's return and the starvation-bit
/// test: about 15 in Go 1.21–1.27 (a clock read and the state load).
const WAKE_SCAN_LIMIT: usize = 48;
/// Instructions before a `runtime_Semrelease` call searched for what sets
/// its `handoff` argument (BX).
const HANDOFF_ARG_WINDOW: usize = 8;

fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while dec.can_decode() {
        out.push(dec.decode());
    }
    out
}

fn calls_to(insns: &[Instruction], target: u64) -> Vec<usize> {
    insns
        .iter()
        .enumerate()
        .filter(|(_, i)| i.mnemonic() == Mnemonic::Call && i.near_branch_target() == target)
        .map(|(n, _)| n)
        .collect()
}

/// `BT reg, 2` / `TEST reg, 4` (the starvation bit, `mutexStarving` = 4)
/// followed by the jump taken when it is set.
fn starvation_branch(test: &Instruction, jump: &Instruction) -> bool {
    let imm = |i: &Instruction| {
        (i.op_count() == 2 && i.op1_kind() == OpKind::Immediate8)
            .then(|| i.immediate8())
            .or_else(|| (i.op1_kind() == OpKind::Immediate32).then(|| i.immediate32() as u8))
    };
    let reg_operand = test.op_count() == 2 && test.op0_kind() == OpKind::Register;
    reg_operand
        && match test.mnemonic() {
            Mnemonic::Bt => imm(test) == Some(2) && jump.mnemonic() == Mnemonic::Jb,
            Mnemonic::Test => imm(test) == Some(4) && jump.mnemonic() == Mnemonic::Jne,
            _ => false,
        }
}

/// The sleep and wake offsets in `lockSlow` (`code` at `ip`), given the
/// entry address of `runtime_SemacquireMutex`.
pub fn lock_slow_points_amd64(code: &[u8], ip: u64, semacquire: u64) -> Result<(u64, u64), String> {
    let insns = decode(code, ip);
    let calls = calls_to(&insns, semacquire);
    let [call] = calls.as_slice() else {
        return Err(format!(
            "expected one call to runtime_SemacquireMutex in lockSlow, found {}",
            calls.len()
        ));
    };
    let after = insns.get(call + 1..).unwrap_or_default();
    for (n, test) in after.iter().enumerate().take(WAKE_SCAN_LIMIT) {
        if matches!(test.mnemonic(), Mnemonic::Ret) {
            break;
        }
        // Go 1.19's assembler pads branches with NOPs (Intel's jump
        // erratum), also between the bit test and its jump.
        let Some((j, jump)) = after
            .iter()
            .enumerate()
            .skip(n + 1)
            .find(|(_, i)| i.mnemonic() != Mnemonic::Nop)
        else {
            break;
        };
        if !starvation_branch(test, jump) {
            continue;
        }
        let end = ip.saturating_add(code.len() as u64);
        let target = jump.near_branch_target();
        if !(ip..end).contains(&target) {
            return Err(format!(
                "starvation branch leaves lockSlow (to {target:#x})"
            ));
        }
        let wake = after
            .get(j + 1)
            .ok_or("lockSlow ends at its starvation branch")?;
        return Ok((insns[*call].ip() - ip, wake.ip() - ip));
    }
    Err("no starvation-bit test after the runtime_SemacquireMutex call in lockSlow".into())
}

/// Whether the instructions before a call set BX (the `handoff` argument) to
/// a non-zero constant: `MOV EBX, imm` with imm ≠ 0. `None` when nothing in
/// the window sets it.
fn handoff_arg(before: &[Instruction]) -> Option<bool> {
    before.iter().rev().take(HANDOFF_ARG_WINDOW).find_map(|i| {
        let writes_bx = i.op_count() >= 1
            && i.op0_kind() == OpKind::Register
            && matches!(
                i.op0_register(),
                Register::EBX | Register::RBX | Register::BL
            );
        if !writes_bx {
            return None;
        }
        match i.mnemonic() {
            Mnemonic::Mov if i.op1_kind() == OpKind::Immediate32 => Some(i.immediate32() != 0),
            Mnemonic::Mov if i.op1_kind() == OpKind::Immediate8 => Some(i.immediate8() != 0),
            // `XOR EBX, EBX` (false) or a value not known here.
            _ => Some(false),
        }
    })
}

/// The hand-off call's offset in `unlockSlow` (`code` at `ip`), given the
/// entry address of `runtime_Semrelease`.
pub fn unlock_slow_handoff_amd64(code: &[u8], ip: u64, semrelease: u64) -> Result<u64, String> {
    let insns = decode(code, ip);
    let handoffs: Vec<usize> = calls_to(&insns, semrelease)
        .into_iter()
        .filter(|&n| handoff_arg(&insns[..n]) == Some(true))
        .collect();
    match handoffs.as_slice() {
        [n] => Ok(insns[*n].ip() - ip),
        other => Err(format!(
            "expected one runtime_Semrelease(handoff = true) call in unlockSlow, found {}",
            other.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asm(insns: &[&[u8]]) -> Vec<u8> {
        insns.concat()
    }

    const IP: u64 = 0x1000;

    /// call rel32 to `target`, placed at `at`.
    fn call(at: u64, target: u64) -> Vec<u8> {
        let rel = (target as i64 - (at as i64 + 5)) as i32;
        let mut v = vec![0xe8];
        v.extend_from_slice(&rel.to_le_bytes());
        v
    }

    #[test]
    fn finds_sleep_and_wake_in_a_go_shaped_lock_slow() {
        let sem = 0x5000;
        // lea rax,[rbx+4]; call sem; mov esi,[rdx]; bt esi,2; jb +2; nop; nop; ret
        let lea: &[u8] = &[0x48, 0x8d, 0x43, 0x04];
        let c = call(IP + 4, sem);
        let load: &[u8] = &[0x8b, 0x32];
        let bt: &[u8] = &[0x0f, 0xba, 0xe6, 0x02];
        let jb: &[u8] = &[0x72, 0x02];
        let tail: &[u8] = &[0x90, 0x90, 0xc3];
        let code = asm(&[lea, &c, load, bt, jb, tail]);
        assert_eq!(
            lock_slow_points_amd64(&code, IP, sem),
            Ok((4, 4 + 5 + 2 + 4 + 2))
        );
        // Go 1.19: a NOP between the bit test and its jump.
        let pad: &[u8] = &[0x0f, 0x1f, 0x44, 0x00, 0x00];
        let padded = asm(&[lea, &c, load, bt, pad, jb, tail]);
        assert_eq!(
            lock_slow_points_amd64(&padded, IP, sem),
            Ok((4, 4 + 5 + 2 + 4 + 5 + 2))
        );
        // No semaphore call, or the wrong one.
        assert!(lock_slow_points_amd64(&code, IP, sem + 1).is_err());
        // A test of another bit is not the starvation branch.
        let bt1: &[u8] = &[0x0f, 0xba, 0xe6, 0x01];
        let code = asm(&[lea, &c, load, bt1, jb, tail]);
        assert!(lock_slow_points_amd64(&code, IP, sem).is_err());
    }

    #[test]
    fn handoff_is_the_release_with_bx_one() {
        let sem = 0x6000;
        // mov ebx,1; call sem; ret; xor ebx,ebx; call sem; ret
        let mov1: &[u8] = &[0xbb, 0x01, 0x00, 0x00, 0x00];
        let c1 = call(IP + 5, sem);
        let ret: &[u8] = &[0xc3];
        let xor: &[u8] = &[0x31, 0xdb];
        let c2 = call(IP + 5 + 5 + 1 + 2, sem);
        let code = asm(&[mov1, &c1, ret, xor, &c2, ret]);
        assert_eq!(unlock_slow_handoff_amd64(&code, IP, sem), Ok(5));
        // Two normal releases: no hand-off call.
        let c1 = call(IP + 2, sem);
        let code = asm(&[xor, &c1, ret, xor, &call(IP + 2 + 5 + 1 + 2, sem), ret]);
        assert!(unlock_slow_handoff_amd64(&code, IP, sem).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let _ = lock_slow_points_amd64(&junk, u64::MAX - 100, 0);
        let _ = unlock_slow_handoff_amd64(&junk, 0, 0x10);
        assert!(lock_slow_points_amd64(&[], 0, 0).is_err());
    }
}
