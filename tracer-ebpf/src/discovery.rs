//! Process lifecycle events for `tracer agent`: every exec and every process
//! exit on the node, so new Go processes are traced within milliseconds and
//! the state of exited ones is freed. Both tracepoints are stable ABI.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_common::{
    discovery::{EVENT_EXEC, EVENT_EXIT, ProcEvent},
    names,
};

/// Exec and exit events. 1 MiB holds ~43k events: a burst of short-lived
/// processes between two polls; a failed reserve is counted in `PROC_LOST`.
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Events dropped because the ring buffer was full.
#[map]
static PROC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

fn emit(kind: u32, tgid: u32) {
    match PROC_EVENTS.reserve::<ProcEvent>(0) {
        Some(mut entry) => {
            entry.write(ProcEvent {
                kind,
                tgid,
                // SAFETY: plain helper call.
                ktime_ns: unsafe { bpf_ktime_get_ns() },
            });
            entry.submit(0);
        }
        None => {
            if let Some(p) = PROC_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *p += 1 };
            }
        }
    }
}

/// `sched:sched_process_exec`: runs in the task that exec'd, after the new
/// image is in place, so `/proc/PID/exe` already names the new binary.
#[tracepoint]
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(EVENT_EXEC, tgid);
    0
}

/// `sched:sched_process_exit`: runs for every exiting thread; only the
/// thread-group leader's exit ends the process.
#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((id >> 32) as u32, id as u32);
    if tgid == pid {
        emit(EVENT_EXIT, tgid);
    }
    0
}

crate::names::check_names! {
    PROC_EVENTS => names::map::PROC_EVENTS,
    PROC_LOST => names::map::PROC_LOST,
    proc_exec => names::program::PROC_EXEC,
    proc_exit => names::program::PROC_EXIT,
}
