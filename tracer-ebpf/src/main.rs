//! tracer's kernel side: uprobes on the Go runtime's lock slow paths.
//!
//! Only slow paths are probed: an uncontended `Lock` is an inlined CAS that never
//! reaches them, so the default mode costs nothing on hot paths. Returns are caught
//! with ordinary uprobes placed on every RET instruction, never with uretprobes,
//! which corrupt Go stacks when the runtime moves them.
#![no_std]
#![no_main]

mod discovery;
mod hb;
mod lock;
mod maps;
mod names;
mod regs;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
