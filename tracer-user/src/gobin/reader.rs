//! Bounds-checked little-endian reads over untrusted bytes.
//!
//! Every accessor returns `None` instead of panicking, so parsers can use `?`
//! and never index past the end of attacker-controlled input.

/// `len` bytes at `off`, if all of them are inside `d`.
pub(crate) fn slice(d: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    d.get(off..off.checked_add(len)?)
}

pub(crate) fn u8_at(d: &[u8], off: usize) -> Option<u8> {
    d.get(off).copied()
}

pub(crate) fn u32_le(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(d, off, 4)?.try_into().ok()?))
}

pub(crate) fn i32_le(d: &[u8], off: usize) -> Option<i32> {
    Some(i32::from_le_bytes(slice(d, off, 4)?.try_into().ok()?))
}

pub(crate) fn u64_le(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(slice(d, off, 8)?.try_into().ok()?))
}

/// A pointer-sized word (4 or 8 bytes) in the given byte order.
pub(crate) fn word(d: &[u8], off: usize, ptr_size: u8, big_endian: bool) -> Option<u64> {
    match (ptr_size, big_endian) {
        (8, false) => u64_le(d, off),
        (8, true) => Some(u64::from_be_bytes(slice(d, off, 8)?.try_into().ok()?)),
        (4, false) => u32_le(d, off).map(u64::from),
        (4, true) => Some(u32::from_be_bytes(slice(d, off, 4)?.try_into().ok()?).into()),
        _ => None,
    }
}

/// NUL-terminated string starting at `off`, at most `max` bytes long.
pub(crate) fn cstr(d: &[u8], off: usize, max: usize) -> Option<&[u8]> {
    let rest = d.get(off..)?;
    let rest = &rest[..rest.len().min(max)];
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// Go's `encoding/binary.Uvarint`: at most 10 bytes, rejects overflow.
#[inline]
pub(crate) fn uvarint(d: &[u8], pos: &mut usize) -> Option<u64> {
    // Fast path: most pc-value deltas fit in one byte.
    if let Some(&b) = d.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Some(u64::from(b));
    }
    let mut x: u64 = 0;
    let mut shift = 0u32;
    for i in 0..10 {
        let b = *d.get(*pos + i)?;
        if b < 0x80 {
            if i == 9 && b > 1 {
                return None;
            }
            *pos += i + 1;
            return Some(x | (u64::from(b) << shift));
        }
        x |= u64::from(b & 0x7f) << shift;
        shift += 7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(uvarint(&[0x00], &mut p), Some(0));
        assert_eq!(p, 1);
        p = 0;
        assert_eq!(uvarint(&[0x7f], &mut p), Some(127));
        p = 0;
        assert_eq!(uvarint(&[0x80, 0x01], &mut p), Some(128));
        assert_eq!(p, 2);
        p = 0;
        assert_eq!(uvarint(&[0xac, 0x02, 0xff], &mut p), Some(300));
        assert_eq!(p, 2);
        // Truncated, and overlong/overflowing encodings.
        p = 0;
        assert_eq!(uvarint(&[0x80, 0x80], &mut p), None);
        p = 0;
        assert_eq!(uvarint(&[0xff; 11], &mut p), None);
        p = 0;
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(uvarint(&max, &mut p), Some(u64::MAX));
        p = 0;
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(uvarint(&over, &mut p), None);
        p = 5;
        assert_eq!(uvarint(&[0x01], &mut p), None);
    }

    #[test]
    fn bounded_reads() {
        let d = [1u8, 2, 3, 4, 5, 0, 7];
        assert_eq!(u32_le(&d, 0), Some(0x04030201));
        assert_eq!(u32_le(&d, 4), None);
        assert_eq!(u64_le(&d, usize::MAX), None);
        assert_eq!(slice(&d, usize::MAX, 2), None);
        assert_eq!(cstr(&d, 3, 100), Some(&[4u8, 5][..]));
        assert_eq!(cstr(&d, 6, 100), None);
        assert_eq!(cstr(&d, 0, 2), None);
        assert_eq!(word(&d, 0, 4, true), Some(0x01020304));
        assert_eq!(word(&d, 0, 3, false), None);
    }
}
