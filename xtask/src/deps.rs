//! `install-deps`: the Debian packages the tests and benchmarks run.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{run, step};

/// Package -> what needs it.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: namespaces, veths, routes"),
    ("iputils-ping", "ping between pods"),
    ("iperf3", "throughput benchmarks"),
    ("sockperf", "latency benchmarks"),
    ("bpftool", "inspecting programs and maps"),
    ("tcpdump", "packet captures when a test fails"),
    ("ethtool", "veth offload settings"),
    ("util-linux", "nsenter"),
    (
        "containernetworking-plugins",
        "CNI reference plugins for comparisons",
    ),
    (
        "podman",
        "the CNI end-to-end test (a real container runtime)",
    ),
    (
        "runc",
        "podman's OCI runtime where crun refuses hybrid cgroups",
    ),
    (
        "busybox-static",
        "the root file system of the podman test's image",
    ),
    ("etcd-server", "etcd for the cluster agent tests"),
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
