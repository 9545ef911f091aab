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
    ("curl", "scraping `vethbpf metrics --listen` in the tests"),
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

/// `promtool` (checks `vethbpf metrics` output), taken out of Debian's `prometheus`
/// package into target/tools/ instead of installing that package: installing it
/// would start a Prometheus server (it ships a systemd unit and an init script) and
/// put 96 MB on the system for one 48 MB tool. Done once; the binary is kept.
pub fn promtool() -> Result<std::path::PathBuf> {
    let tools = crate::util::workspace_root()?.join("target").join("tools");
    let promtool = tools.join("promtool");
    if promtool.is_file() {
        return Ok(promtool);
    }
    step("fetching promtool from Debian's prometheus package (not installing it)");
    let dl = tools.join("prometheus-deb");
    std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let download = |dl: &std::path::Path| {
        let mut cmd = Command::new("apt-get");
        cmd.arg("download").arg("prometheus").current_dir(dl);
        run(&mut cmd)
    };
    if download(&dl).is_err() {
        // The package lists may be missing or stale on a fresh machine.
        run(Command::new("apt-get").arg("update")).context("apt-get update")?;
        download(&dl).context("apt-get download prometheus")?;
    }
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = dl.join("tree");
    std::fs::create_dir_all(&tree)?;
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(&tree);
    run(&mut extract).context("unpacking the prometheus package")?;
    std::fs::rename(tree.join("usr/bin/promtool"), &promtool)
        .context("the prometheus package has no usr/bin/promtool")?;
    std::fs::remove_dir_all(&dl).with_context(|| format!("removing {}", dl.display()))?;
    step(format!("promtool: {}", promtool.display()));
    Ok(promtool)
}
