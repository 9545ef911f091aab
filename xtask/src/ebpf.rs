//! `build-ebpf`: the toolchain bootstrap (rust-src, bpf-linker against the toolchain's
//! own libLLVM) and the build of `vethbpf-ebpf` for `bpfel-unknown-none`.
//!
//! Every step checks first and does nothing when already done, so that running it on
//! each `cargo xtask test` costs a few process starts. Why each step is needed:
//! docs/toolchain.md.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, capture, run, step};

/// The BPF target; the object's path under the target dir depends on it.
const TARGET: &str = "bpfel-unknown-none";
/// bpf-linker release we build and accept (0.13 supports LLVM 22 through a feature).
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_ACCEPTED: &str = "bpf-linker 0.13.";
/// The LLVM major bpf-linker links against: the one inside the Rust toolchain (Debian
/// bookworm has no LLVM 22). Must match the toolchain's `libLLVM.so.<major>.*-rust-*`.
const LLVM_MAJOR: &str = "22";

/// Bootstraps the toolchain if needed, builds the eBPF object and returns its path.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = util::workspace_root()?;
    bootstrap()?;

    let target_dir = target_dir(&root);
    step(format!("building vethbpf-ebpf for {TARGET}"));
    run(&mut ebpf_cargo(&root, "build")?).context("building the eBPF object")?;

    let object = target_dir.join(TARGET).join("release").join("vethbpf-ebpf");
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    step(format!("eBPF object: {}", object.display()));
    Ok(object)
}

/// Makes a cargo build of vethbpf fail instead of embedding vethbpf/build.rs's empty
/// placeholder when the object is missing: for every build xtask makes after
/// [`build_ebpf`].
pub fn require_object(cmd: &mut Command) -> &mut Command {
    cmd.env("VETHBPF_REQUIRE_EBPF_OBJECT", "1")
}

/// clippy on the eBPF crate, as it is built (`-D warnings`).
pub fn clippy_ebpf() -> Result<()> {
    let root = util::workspace_root()?;
    bootstrap()?;
    let mut cmd = ebpf_cargo(&root, "clippy")?;
    cmd.args(["--", "-D", "warnings"]);
    run(&mut cmd).context("clippy (vethbpf-ebpf)")
}

fn target_dir(root: &Path) -> PathBuf {
    root.join("target").join("ebpf")
}

/// `cargo <subcommand>` for the eBPF crate, with the flags and environment of its build.
fn ebpf_cargo(root: &Path, subcommand: &str) -> Result<Command> {
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(root.join("vethbpf-ebpf"))
        .args([
            subcommand,
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        // Stable rustc with unstable flags (build-std): docs/toolchain.md.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir(root))
        // rustc finds bpf-linker on PATH; make sure a fresh install is on it.
        .env("PATH", path_with(&util::cargo_bin_dir()?)?);
    // Wrappers and an outer rustc meant for host builds must not leak into this one
    // (aya-build removes the same two).
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(key);
    }
    Ok(cmd)
}

/// rust-src for `-Z build-std=core`, bpf-linker, and protoc for the userspace build.
fn bootstrap() -> Result<()> {
    let sysroot = PathBuf::from(
        capture(Command::new("rustc").args(["--print", "sysroot"]))
            .context("asking rustc for its sysroot")?
            .trim(),
    );
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    ensure_protoc()
}

/// Debian packages the userspace build needs: etcd-client's build script runs
/// `protoc`, which imports the well-known types (google/protobuf/*.proto).
const PROTOC_PACKAGES: [&str; 2] = ["protobuf-compiler", "libprotobuf-dev"];
const WELL_KNOWN_PROTO: &str = "/usr/include/google/protobuf/descriptor.proto";

fn ensure_protoc() -> Result<()> {
    let protoc_runs = Command::new("protoc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if protoc_runs && Path::new(WELL_KNOWN_PROTO).is_file() {
        return Ok(());
    }
    step(format!(
        "protoc or {WELL_KNOWN_PROTO} is missing (etcd-client's build needs both): installing {}",
        PROTOC_PACKAGES.join(" ")
    ));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update"])).context("apt-get update (this needs root)")?;
    run(apt(&["install", "-y", "--no-install-recommends"]).args(PROTOC_PACKAGES))
        .with_context(|| format!("installing {}", PROTOC_PACKAGES.join(" ")))?;
    if !Path::new(WELL_KNOWN_PROTO).is_file() {
        bail!(
            "{} were installed but {WELL_KNOWN_PROTO} is still missing",
            PROTOC_PACKAGES.join(" ")
        );
    }
    Ok(())
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    let library = sysroot.join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        return Ok(());
    }
    step(format!(
        "{} is missing: installing rust-src",
        library.display()
    ));
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
        .context("installing the rust-src component (needed by -Z build-std=core)")?;
    if !library.is_dir() {
        bail!(
            "rustup installed rust-src, but {} is still missing",
            library.display()
        );
    }
    Ok(())
}

/// The version bpf-linker reports, or `None` if it cannot run (absent, or its libLLVM
/// link is broken).
fn bpf_linker_version(bin_dir: &Path) -> Option<String> {
    let path = path_with(bin_dir).ok()?;
    let out = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    let bin_dir = util::cargo_bin_dir()?;
    match bpf_linker_version(&bin_dir) {
        Some(v) if v.starts_with(BPF_LINKER_ACCEPTED) => return Ok(()),
        Some(v) => step(format!(
            "found `{v}`, need {BPF_LINKER_VERSION}: installing bpf-linker"
        )),
        None => step("bpf-linker is missing or cannot start: setting it up"),
    }

    let prefix = llvm_prefix()?;
    link_toolchain_llvm(sysroot, &prefix)?;
    // A binary of ours whose libLLVM links had gone stale works again now.
    if let Some(v) = bpf_linker_version(&bin_dir)
        && v.starts_with(BPF_LINKER_ACCEPTED)
    {
        step(format!("{v} works again after relinking libLLVM"));
        return Ok(());
    }

    step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the toolchain's LLVM {LLVM_MAJOR} (takes a few minutes)"
    ));
    run(Command::new(util::cargo())
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
            "--version",
            BPF_LINKER_VERSION,
            // Replace an older or broken bpf-linker in place.
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix))
    .context("installing bpf-linker")?;

    match bpf_linker_version(&bin_dir) {
        Some(v) if v.starts_with(BPF_LINKER_ACCEPTED) => {
            step(format!("installed {v}"));
            Ok(())
        }
        other => bail!(
            "bpf-linker was installed into {} but `bpf-linker --version` gives {other:?}",
            bin_dir.display()
        ),
    }
}

/// Where the links to the toolchain's libLLVM live. The bpf-linker binary records
/// `<prefix>/lib` as its rpath, so this directory must stay.
fn llvm_prefix() -> Result<PathBuf> {
    Ok(util::home()?.join(".local").join("vethbpf-llvm"))
}

/// `<prefix>/lib/libLLVM.so.<major>.*-rust-*` (the soname bpf-linker asks for) and
/// `<prefix>/lib/libLLVM.so` (what its build links with), both pointing at the file in
/// the toolchain's sysroot. Recreated every time: cheap, and it follows toolchain
/// updates.
fn link_toolchain_llvm(sysroot: &Path, prefix: &Path) -> Result<()> {
    let sys_lib = sysroot.join("lib");
    let wanted = format!("libLLVM.so.{LLVM_MAJOR}.");
    let mut found = Vec::new();
    for entry in fs::read_dir(&sys_lib).with_context(|| format!("listing {}", sys_lib.display()))? {
        let entry = entry.with_context(|| format!("listing {}", sys_lib.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&wanted) && name.contains("-rust-") {
            found.push(entry.path());
        }
    }
    found.sort();
    let Some(llvm) = found.pop() else {
        bail!(
            "no {wanted}*-rust-* in {}: this toolchain does not ship LLVM {LLVM_MAJOR}; \
             bpf-linker {BPF_LINKER_VERSION} is built here against the toolchain's own LLVM",
            sys_lib.display()
        );
    };
    let file_name = llvm
        .file_name()
        .with_context(|| format!("{} has no file name", llvm.display()))?;

    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join(file_name), lib.join("libLLVM.so")] {
        replace_symlink(&llvm, &link)?;
    }
    step(format!("{}/libLLVM* -> {}", lib.display(), llvm.display()));
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(_) => fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", link.display())),
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// `PATH` with `dir` in front (if it is not there already).
fn path_with(dir: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    env::join_paths(dirs).context("building PATH")
}
