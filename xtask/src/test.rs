//! `test`, what CI runs (.ci/run): dependencies, the lint, the eBPF object, `cargo
//! test --workspace`, and a check that the tests left no namespaces, links or bpffs
//! entries behind.

use std::{collections::BTreeSet, env, ffi::OsString, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    deps, ebpf, lint,
    util::{self, capture, run, step},
};

/// The opt-out of tests/tests/podman.rs, for machines that cannot have podman.
const NO_PODMAN: &str = "VETHBPF_TEST_NO_PODMAN";
const PODMAN_TEST: &str = "podman_containers_on_a_vethbpf_network";

pub fn test(extra: &[OsString]) -> Result<()> {
    // Loading programs, making namespaces and installing packages all need root; say
    // so once instead of through dozens of EPERMs.
    let uid = capture(Command::new("id").arg("-u")).context("asking `id -u` who we are")?;
    if uid.trim() != "0" {
        bail!(
            "`cargo xtask test` must run as root (uid 0), not uid {}",
            uid.trim()
        );
    }
    deps::install_deps()?;
    ebpf::build_ebpf()?;
    // The full run is CI's and lints first; a run with arguments is someone working on
    // a few tests, who should not be stopped by a formatting nit elsewhere. (After
    // build-ebpf, so that clippy sees the vethbpf that is tested, object included.)
    if extra.is_empty() {
        lint::lint().context("the lint failed")?;
    } else {
        step("lint: not part of a run with arguments (`cargo xtask test` alone runs it)");
    }
    let mut libtest: Vec<&str> = vec!["--include-ignored"];
    if env::var_os(NO_PODMAN).is_some() {
        step(format!(
            "WARNING: {NO_PODMAN} is set: the podman test is left out (the summary \
             counts it as filtered out); CI never sets it"
        ));
        libtest.extend(["--skip", PODMAN_TEST]);
    }

    let before = Snapshot::take().context("recording the system state before the tests")?;
    let mut cmd = Command::new(util::cargo());
    ebpf::require_object(&mut cmd)
        .current_dir(util::workspace_root()?)
        .args(["test", "--workspace"])
        .args(with_libtest_args(extra, &libtest));
    let tests = run(&mut cmd);
    let after = Snapshot::take().context("recording the system state after the tests")?;

    // Report leftovers even when tests failed: a failing test must clean up too.
    let leftovers = before.new_in(&after);
    for l in &leftovers {
        eprintln!("xtask: LEFTOVER after the tests: {l}");
    }
    tests.context("the tests failed")?;
    if !leftovers.is_empty() {
        bail!(
            "the tests left {} thing(s) behind: {}",
            leftovers.len(),
            leftovers.join(", ")
        );
    }
    step("tests passed, nothing left behind");
    Ok(())
}

/// `cargo test` arguments: the user's, with `ours` added for the test binaries
/// (after the user's `--`, or after a new one). `--include-ignored` runs the unit
/// tests that are `#[ignore = "needs root: ..."]` (xtask runs as root); `--skip`
/// leaves a test out so that the summary says so.
fn with_libtest_args(extra: &[OsString], ours: &[&str]) -> Vec<OsString> {
    let mut args = extra.to_vec();
    if !args.iter().any(|a| a == "--") {
        args.push("--".into());
    }
    args.extend(ours.iter().map(OsString::from));
    args
}

/// What tests must leave as they found it.
struct Snapshot {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    bpffs: BTreeSet<String>,
}

const BPFFS: &str = "/sys/fs/bpf";

impl Snapshot {
    fn take() -> Result<Self> {
        let netns = capture(Command::new("ip").args(["netns", "list"]))?
            .lines()
            // "name (id: 3)" -> "name"
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let links = capture(Command::new("ip").args(["-o", "link"]))?
            .lines()
            // "7: vb-1@if6: <BROADCAST,...> ..." -> "vb-1"
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect();
        let bpffs = if Path::new(BPFFS).is_dir() {
            fs::read_dir(BPFFS)
                .with_context(|| format!("listing {BPFFS}"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("listing {BPFFS}"))?
        } else {
            BTreeSet::new()
        };
        Ok(Self {
            netns,
            links,
            bpffs,
        })
    }

    /// Everything in `after` that was not in `self`, named for a human.
    fn new_in(&self, after: &Self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            after
                .netns
                .difference(&self.netns)
                .map(|n| format!("network namespace {n}")),
        );
        out.extend(
            after
                .links
                .difference(&self.links)
                .map(|n| format!("link {n}")),
        );
        out.extend(
            after
                .bpffs
                .difference(&self.bpffs)
                .map(|n| format!("{BPFFS}/{n}")),
        );
        out
    }
}
