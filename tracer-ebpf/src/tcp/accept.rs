//! The tracepoint entry of the TCP `accept` role: `syscalls:sys_exit_accept4`
//! and `syscalls:sys_exit_accept` give only the new fd, so the socket is found
//! by walking the current task's fd table (task → files → fdt → fd[ret] →
//! file → private_data, a `struct socket` → sk) with `bpf_probe_read_kernel`,
//! at offsets user space read from BTF. The walk runs only for traced
//! processes. A stale or wrong pointer can only miss the `TCP_SOCKS` lookup
//! in `on_accept`, so the worst outcome is an unmeasured accept wait.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    names,
    tcp::{OFF_NONE, STAT_ACCEPT_WALK_FAILED, TcpConfig},
};

use super::{
    flow::on_accept,
    maps::{TCP_CONFIG, stat, traced},
};

/// Reads the `u64` (a pointer here) at `base + off`; `None` for a NULL base,
/// an unknown offset or a fault.
#[inline(always)]
fn read_ptr(base: u64, off: u16) -> Option<u64> {
    if base == 0 || off == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

/// The `struct sock` behind `fd` of the current task.
#[inline(always)]
fn sock_of_fd(fd: u64, c: &TcpConfig) -> Option<u64> {
    // SAFETY: plain helper call; the task is only read through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task, c.task_files)?;
    let fdt = read_ptr(files, c.files_fdt)?;
    if c.fdt_max_fds == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let max_fds: u32 =
        unsafe { bpf_probe_read_kernel((fdt + c.fdt_max_fds as u64) as *const u32) }.ok()?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fds = read_ptr(fdt, c.fdt_fd)?;
    let file = read_ptr(fds + fd * 8, 0)?;
    let socket = read_ptr(file, c.file_private_data)?;
    read_ptr(socket, c.socket_sk)
}

fn on_accept_tp(ctx: &TracePointContext) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(tgid) {
        return None;
    }
    let c = TCP_CONFIG.get(0)?;
    if c.accept_ret == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; the offset is the
    // format file's.
    let fd: i64 = unsafe { ctx.read_at(c.accept_ret as usize) }.ok()?;
    if fd < 0 {
        // EAGAIN from a non-blocking accept, or an error: nothing accepted.
        return None;
    }
    match sock_of_fd(fd as u64, c) {
        Some(sk) => on_accept(sk),
        None => {
            stat(STAT_ACCEPT_WALK_FAILED);
            None
        }
    }
}

/// `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` (same record
/// layout; user space attaches this program to both).
#[tracepoint]
pub fn tcp_accept_tp(ctx: TracePointContext) -> u32 {
    let _ = on_accept_tp(&ctx);
    0
}

crate::names::check_names! {
    tcp_accept_tp => names::program::TCP_ACCEPT_TP,
}
