//! `lint`: rustfmt and clippy `-D warnings` on every crate, the eBPF one included.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{
    ebpf,
    util::{self, run},
};

/// Needs no eBPF object (vethbpf/build.rs embeds a placeholder when there is none),
/// only the toolchain bootstrap for the eBPF crate's clippy.
pub fn lint() -> Result<()> {
    let root = util::workspace_root()?;
    let cargo = || {
        let mut cmd = Command::new(util::cargo());
        cmd.current_dir(&root);
        cmd
    };
    run(cargo().args(["fmt", "--all", "--check"])).context("rustfmt (workspace)")?;
    run(cargo()
        .current_dir(root.join("vethbpf-ebpf"))
        .args(["fmt", "--check"]))
    .context("rustfmt (vethbpf-ebpf)")?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy (workspace)")?;
    ebpf::clippy_ebpf()
}
