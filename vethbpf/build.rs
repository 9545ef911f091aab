//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the binary, so that
//! one built `vethbpf` is all a node needs.
//!
//! A fresh clone has no object yet, and `cargo check`, clippy and rust-analyzer must
//! work there anyway (as in aya's template). So when the object is missing and nobody
//! asked for a particular one, an empty placeholder is embedded, with a cargo warning;
//! the binary then refuses `up` with an error saying how to build the object
//! (`vethbpf::datapath::BpfError::NoObject`).
//!
//! A missing object is an error instead when `VETHBPF_EBPF_OBJECT` names one, or when
//! `VETHBPF_REQUIRE_EBPF_OBJECT` is set: `cargo xtask` sets it for everything it builds,
//! tests or installs (after building the object), so those always embed the real
//! program. It is deliberately not a `rerun-if-env-changed` variable (switching
//! between xtask and plain cargo would rebuild vethbpf every time); it needs no
//! tracking, because this script runs again on every build for as long as the
//! object is missing (see the `rerun-if-changed` below).
use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=VETHBPF_EBPF_OBJECT");
    let (Some(manifest), Some(out_dir)) =
        (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR"))
    else {
        eprintln!("cargo did not set CARGO_MANIFEST_DIR and OUT_DIR");
        return ExitCode::FAILURE;
    };
    let out = PathBuf::from(out_dir).join("vethbpf.bpf.o");
    let named = env::var_os("VETHBPF_EBPF_OBJECT").map(PathBuf::from);
    let object = named.clone().unwrap_or_else(|| {
        PathBuf::from(manifest).join("../target/ebpf/bpfel-unknown-none/release/vethbpf-ebpf")
    });
    // Also when it does not exist yet: cargo then runs this script again on every
    // build, so the object is picked up as soon as `cargo xtask build-ebpf` made it.
    println!("cargo:rerun-if-changed={}", object.display());

    let required = named.is_some() || env::var_os("VETHBPF_REQUIRE_EBPF_OBJECT").is_some();
    match fs::copy(&object, &out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if required => {
            eprintln!(
                "cannot read the eBPF object at {}: {e}\n\
                 Build it first with `cargo xtask build-ebpf` (or set VETHBPF_EBPF_OBJECT).",
                object.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            if let Err(e) = fs::write(&out, b"") {
                eprintln!("cannot write the placeholder {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            println!(
                "cargo:warning=no eBPF object at {} ({e}): this vethbpf embeds none and \
                 cannot load the datapath; run `cargo xtask build-ebpf`, then build again",
                object.display()
            );
            ExitCode::SUCCESS
        }
    }
}
