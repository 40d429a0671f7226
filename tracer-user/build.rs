//! Builds the eBPF object (`tracer-ebpf`) with nightly and bpf-linker, so that a
//! plain `cargo build` produces a complete `tracer` once `cargo xtask setup` has run.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // `cargo xtask setup` installs bpf-linker here; put it on PATH for the nested build.
    println!("cargo:rerun-if-env-changed=TRACER_CACHE_DIR");
    let cache = env::var_os("TRACER_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tracer")));
    if let Some(cache) = cache {
        let bin = cache.join("bpf-linker/bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = vec![bin];
        paths.extend(env::split_paths(&path));
        let joined = env::join_paths(paths).context("PATH")?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", joined) };
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Lets tooling that never loads BPF (docs, fuzzing, analysis-only tests) build
        // without nightly; the binary then reports that it has no eBPF object.
        std::fs::write(out_dir.join("tracer"), b"")?;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path"))?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
