//! `cargo xtask <task>`: the project's build, bootstrap and test entry points. See
//! `cargo xtask --help`.

mod bench;
mod deps;
mod ebpf;
mod install;
mod lint;
mod test;
mod util;

use std::{ffi::OsString, process::Command};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::util::run;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "vethbpf build, bootstrap and test tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install rust-src and bpf-linker if needed, then build the eBPF object.
    BuildEbpf,
    /// Install the Debian packages the tests and benchmarks use (root).
    InstallDeps,
    /// What CI runs (root): install-deps; without ARGS the lint; build-ebpf;
    /// `cargo test --workspace [ARGS]`; then a check that the tests left no
    /// namespaces, links or bpffs entries behind.
    Test {
        /// Passed to `cargo test --workspace` (e.g. `--test datapath -- --nocapture`);
        /// a run with ARGS is a targeted one and skips the lint.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// build-ebpf, then `cargo run --release -p vethbpf -- demo [ARGS]`.
    Demo {
        /// Passed to `vethbpf demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// rustfmt and clippy (`-D warnings`) for the workspace and for vethbpf-ebpf.
    Lint,
    /// Performance benchmark: vethbpf vs bridge, kernel routing, CNI ptp, veth pair
    /// and loopback, round-robin; program cost (TEST_RUN); control-plane latency (root).
    Bench(bench::BenchArgs),
    /// Build vethbpf and install it as a CNI plugin (/opt/cni/bin, /usr/lib/cni),
    /// with an example network configuration in /etc/cni/net.d (root).
    Install(install::InstallArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => ebpf::build_ebpf().map(drop),
        Task::InstallDeps => deps::install_deps(),
        Task::Test { args } => test::test(&args),
        Task::Demo { args } => demo(&args),
        Task::Lint => lint::lint(),
        Task::Bench(args) => bench::run(args),
        Task::Install(args) => install::install(&args),
    }
}

fn demo(args: &[OsString]) -> Result<()> {
    ebpf::build_ebpf()?;
    run(ebpf::require_object(&mut Command::new(util::cargo()))
        .current_dir(util::workspace_root()?)
        .args(["run", "--release", "-p", "vethbpf", "--", "demo"])
        .args(args))
    .context("running the demo")
}
