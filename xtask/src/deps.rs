//! `install-deps`: the Debian packages the tests and benchmarks run.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{run, step};

/// Package -> what needs it. Every program a test, the benchmark or the demo runs is
/// here, except those of Debian's essential set (coreutils: cat, timeout; tar; dash:
/// sh; libc-bin: ldd), which every Debian system has. A test whose tool is missing
/// fails; it does not skip.
const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip: namespaces, veths, addresses, routes, neighbours",
    ),
    (
        "util-linux",
        "nsenter: running commands in the tests' namespaces",
    ),
    (
        "mount",
        "mount/umount: the tests' and the benchmark's bpffs",
    ),
    (
        "procps",
        "sysctl in the pods of hostile.rs and the benchmark",
    ),
    ("iputils-ping", "ping between pods"),
    (
        "iputils-arping",
        "arping: the gratuitous ARP of datapath.rs (options -U -I)",
    ),
    (
        "iptables",
        "iptables-save: datapath.rs checks there are no rules",
    ),
    ("nftables", "nft: datapath.rs checks there is no ruleset"),
    (
        "bpftool",
        "dumping pinned maps (tests) and program info (benchmark)",
    ),
    ("iperf3", "throughput benchmarks"),
    (
        "strace",
        "syscall breakdowns of endpoint add/del (BENCHMARKS.md)",
    ),
    (
        "linux-perf",
        "perf stat/record/trace for the same breakdowns (BENCHMARKS.md)",
    ),
    ("sockperf", "latency benchmarks"),
    (
        "containernetworking-plugins",
        "CNI reference plugins: ptp and host-local in cni.rs and the benchmark",
    ),
    (
        "podman",
        "the CNI end-to-end test (a real container runtime)",
    ),
    (
        "runc",
        "the OCI runtime podman.rs runs containers with (not crun, which refuses \
         hybrid cgroup hierarchies)",
    ),
    (
        "busybox-static",
        "the root file system of the podman test's image",
    ),
    ("tcpdump", "watching a pod's veth by hand when a test fails"),
    ("ethtool", "inspecting veth offloads by hand"),
    (
        "iptables",
        "egress: the kernel-path comparison (MASQUERADE) and the no-rules checks",
    ),
    ("nftables", "egress: the empty-ruleset checks"),
    ("etcd-server", "etcd for the cluster agent tests"),
    (
        "etcd-client",
        "etcdctl: the agent tests check etcd's health and leases",
    ),
];

/// Installs the missing packages; does nothing (and needs no network) when all are
/// there.
pub fn install_deps() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !installed(name))
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    for (name, why) in PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        step(format!("missing package {name} ({why})"));
    }

    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update"])).context("apt-get update (this needs root)")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install).with_context(|| format!("installing {}", missing.join(" ")))?;

    let still_missing: Vec<&str> = missing.into_iter().filter(|n| !installed(n)).collect();
    if !still_missing.is_empty() {
        anyhow::bail!(
            "apt-get succeeded but these are still not installed: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// Whether `dpkg -s` reports the package as installed (not merely known, or removed
/// with its configuration files left).
fn installed(name: &str) -> bool {
    let Ok(out) = Command::new("dpkg").args(["-s", name]).output() else {
        return false;
    };
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "Status: install ok installed")
}
