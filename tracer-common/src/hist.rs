//! Log-linear latency histogram shared by the kernel (which increments slots) and
//! user space (which turns slots back into nanosecond ranges).
//!
//! Each power of two is split into 4 linear sub-buckets, so a value reported from
//! a bucket is within 12.5% of the true one. A plain log2 histogram (factor-2
//! error) would make p50/p99 too coarse to trust. Values below 4 ns are exact;
//! values of 2^40 ns (about 18 minutes) and above share the last slot.

/// Sub-buckets per power of two.
pub const SUB_BUCKETS: u32 = 4;
/// Powers of two covered, from 2^0 to 2^40 ns.
pub const OCTAVES: u32 = 40;
/// Number of histogram slots.
pub const HIST_SLOTS: usize = (SUB_BUCKETS * OCTAVES) as usize;

/// floor(log2(v)) for v > 0, written as a branch-light binary search because the
/// BPF backend has no count-leading-zeros instruction.
#[inline(always)]
pub fn log2_u64(mut v: u64) -> u32 {
    let mut r = 0u32;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// Slot index for a value in nanoseconds; always `< HIST_SLOTS`.
#[inline(always)]
pub fn hist_slot(v: u64) -> usize {
    if v < SUB_BUCKETS as u64 {
        return v as usize;
    }
    let l = log2_u64(v); // >= 2
    let sub = ((v >> (l - 2)) & 3) as u32;
    let idx = SUB_BUCKETS * (l - 1) + sub;
    if idx as usize >= HIST_SLOTS {
        HIST_SLOTS - 1
    } else {
        idx as usize
    }
}

/// The half-open range `[lo, hi)` of values that land in `slot`.
/// The last slot is open-ended; its `hi` is `u64::MAX`.
pub fn slot_bounds(slot: usize) -> (u64, u64) {
    let s = slot as u32;
    if s < SUB_BUCKETS {
        return (s as u64, s as u64 + 1);
    }
    let l = s / SUB_BUCKETS + 1;
    let sub = (s % SUB_BUCKETS) as u64;
    let width = 1u64 << (l - 2);
    let lo = (SUB_BUCKETS as u64 + sub) << (l - 2);
    if slot + 1 >= HIST_SLOTS {
        (lo, u64::MAX)
    } else {
        (lo, lo + width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for shift in 0..64 {
            for v in [
                1u64 << shift,
                (1u64 << shift) | 1,
                ((1u64 << shift) << 1).wrapping_sub(1),
            ] {
                if v == 0 {
                    continue;
                }
                assert_eq!(log2_u64(v), 63 - v.leading_zeros(), "v={v}");
            }
        }
    }

    #[test]
    fn every_value_falls_inside_its_slot_bounds() {
        let mut v = 0u64;
        while v < (1u64 << 41) {
            let s = hist_slot(v);
            let (lo, hi) = slot_bounds(s);
            assert!(lo <= v && v < hi, "v={v} slot={s} [{lo},{hi})");
            v = v * 9 / 8 + 1;
        }
        assert_eq!(hist_slot(u64::MAX), HIST_SLOTS - 1);
    }

    #[test]
    fn slots_are_contiguous_and_bounded_error() {
        for s in 0..HIST_SLOTS - 1 {
            let (lo, hi) = slot_bounds(s);
            let (next_lo, _) = slot_bounds(s + 1);
            assert_eq!(hi, next_lo, "gap after slot {s}");
            // width / lo <= 1/4, so the bucket midpoint is within 12.5% of any member.
            assert!(lo == 0 || (hi - lo) * 4 <= lo.max(4), "slot {s} too wide");
        }
    }
}
