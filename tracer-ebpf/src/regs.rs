//! Register access for Go's register ABI (ABIInternal, Go >= 1.17), per target arch.

use aya_ebpf::programs::ProbeContext;

/// Per-thread fallback key bit, used when the `g` register is zero (non-Go code).
const TID_KEY: u64 = 1 << 63;

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use aya_ebpf::{bindings::pt_regs, programs::ProbeContext};

    #[inline(always)]
    fn regs(ctx: &ProbeContext) -> &pt_regs {
        // SAFETY: for uprobe programs the context is the trapped task's pt_regs.
        unsafe { &*ctx.regs }
    }
    /// The current goroutine: Go keeps `g` in R14.
    #[inline(always)]
    pub fn g(ctx: &ProbeContext) -> u64 {
        regs(ctx).r14
    }
    /// First integer argument (a method's receiver): RAX.
    #[inline(always)]
    pub fn arg0(ctx: &ProbeContext) -> u64 {
        regs(ctx).rax
    }
    /// Second integer argument: RBX.
    #[inline(always)]
    pub fn arg1(ctx: &ProbeContext) -> u64 {
        regs(ctx).rbx
    }
    /// Address holding the return address at function entry: the stack pointer.
    #[inline(always)]
    pub fn return_address_slot(ctx: &ProbeContext) -> u64 {
        regs(ctx).rsp
    }
    /// Inside a function's body, past its prologue, Go keeps the frame
    /// pointer in RBP and the function's return address just above it.
    #[inline(always)]
    pub fn frame_return_address_slot(ctx: &ProbeContext) -> u64 {
        regs(ctx).rbp.wrapping_add(8)
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use aya_ebpf::{bindings::user_pt_regs, programs::ProbeContext};

    #[inline(always)]
    fn regs(ctx: &ProbeContext) -> &user_pt_regs {
        // SAFETY: for uprobe programs the context is the trapped task's registers.
        unsafe { &*(ctx.regs as *const user_pt_regs) }
    }
    /// The current goroutine: Go keeps `g` in X28.
    #[inline(always)]
    pub fn g(ctx: &ProbeContext) -> u64 {
        regs(ctx).regs[28]
    }
    #[inline(always)]
    pub fn arg0(ctx: &ProbeContext) -> u64 {
        regs(ctx).regs[0]
    }
    #[inline(always)]
    pub fn arg1(ctx: &ProbeContext) -> u64 {
        regs(ctx).regs[1]
    }
    /// Probes inside a function's body are placed on amd64 only (user space
    /// decodes no arm64 bodies), so there is nothing to read here.
    #[inline(always)]
    pub fn frame_return_address_slot(_ctx: &ProbeContext) -> u64 {
        0
    }
    /// On arm64 the return address is in LR (X30) at entry; there is no slot to read.
    #[inline(always)]
    pub fn return_address_slot(_ctx: &ProbeContext) -> u64 {
        0
    }
    #[inline(always)]
    pub fn link_register(ctx: &ProbeContext) -> u64 {
        regs(ctx).regs[30]
    }
}

pub use arch::{arg0, arg1};

/// Key for the current goroutine, falling back to the thread id when the
/// `g` register is zero.
#[inline(always)]
pub fn goroutine(ctx: &ProbeContext, pid_tgid: u64) -> u64 {
    let g = arch::g(ctx);
    if g != 0 {
        g
    } else {
        TID_KEY | (pid_tgid & 0xffff_ffff)
    }
}

/// The return address of the probed call, read at function entry.
#[inline(always)]
pub fn return_address(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "aarch64")]
    {
        arch::link_register(ctx)
    }
    #[cfg(not(bpf_target_arch = "aarch64"))]
    {
        let slot = arch::return_address_slot(ctx);
        // SAFETY: reading user memory through the helper, which faults safely.
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(slot as *const u64) }.unwrap_or(0)
    }
}

/// The return address of the function the probe is inside, read past its
/// prologue (0 where that is not known).
#[inline(always)]
pub fn frame_return_address(ctx: &ProbeContext) -> u64 {
    let slot = arch::frame_return_address_slot(ctx);
    if slot < 8 {
        return 0;
    }
    // SAFETY: reading user memory through the helper, which faults safely.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(slot as *const u64) }.unwrap_or(0)
}
