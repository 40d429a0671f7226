//! Emits `bpf_target_arch` so the probes read the right registers for the target.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
