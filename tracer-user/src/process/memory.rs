//! Reading a traced process's memory with `process_vm_readv`: the kernel
//! checks the remote range, so a bad address (the process changed, or a
//! value we read was garbage) is `None`, never a fault.

/// `N` bytes at `addr` in `pid`.
pub fn read_array<const N: usize>(pid: u32, addr: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: N,
    };
    // Ranges that wrap, or reach the non-canonical half, are no user memory.
    if addr.checked_add(N as u64)? > 1 << 63 {
        return None;
    }
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: N,
    };
    let pid = i32::try_from(pid).ok()?;
    // SAFETY: one local iovec of N valid bytes; the remote side is checked by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    (n == N as isize).then_some(buf)
}

/// The little-endian u64 at `addr` in `pid`.
pub fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    read_array::<8>(pid, addr).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_refuses_bad_addresses() {
        let x: u64 = 0x1122_3344_5566_7788;
        let me = std::process::id();
        assert_eq!(read_u64(me, &x as *const u64 as u64), Some(x));
        assert_eq!(read_u64(me, 0), None);
        assert_eq!(read_u64(me, u64::MAX - 3), None);
        assert_eq!(read_u64(me, 1 << 63), None);
        assert_eq!(read_u64(u32::MAX, &x as *const u64 as u64), None);
    }
}
