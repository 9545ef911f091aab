//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the binary, so that
//! one built `vethbpf` is all a node needs.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=VETHBPF_EBPF_OBJECT");
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("VETHBPF_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/vethbpf-ebpf"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("vethbpf.bpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        panic!(
            "cannot read the eBPF object at {}: {e}\n\
             Build it first with `cargo xtask build-ebpf` (or set VETHBPF_EBPF_OBJECT).",
            object.display()
        );
    }
}
