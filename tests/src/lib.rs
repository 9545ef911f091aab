//! Shared helpers of the vethbpf integration tests (`tests/tests/*.rs`).
//!
//! The tests need root: they load eBPF programs and, except `testrun`, build network
//! namespaces and veth pairs of their own, which they remove even when they fail.
//!
//! [`TestNode`] is one test's world: a node namespace of its own (`vbt-<pid>-<n>-node`,
//! with `lo` up and 192.0.2.1/32 on it as the node's address), its own bpffs and state
//! dirs under a temp dir, and a name prefix for its pods. Its `Drop` runs `vethbpf
//! down`, deletes every namespace with its prefix, unmounts the bpffs and removes the
//! temp dir, so a failing test leaves nothing behind and tests can run in parallel; a
//! step of that cleanup that fails fails the test ([`CleanupErrors`]).

pub mod egress_run;
pub mod ipv6;
pub mod packet;
pub mod testrun;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod cluster;
pub mod cluster_run;

/// The node namespace's own address (TEST-NET-1, on its `lo`).
pub const NODE_IP: &str = "192.0.2.1";
/// The node namespace's own IPv6 address (documentation prefix, on its `lo`).
pub const NODE_IP6: &str = "2001:db8::1";
/// The pod CIDRs of a dual-stack test node.
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const POD_CIDR6: &str = "fd00:10:244::/64";
/// What IPv6 pods use as their gateway: the EUI-64 link-local address of the
/// gateway MAC.
pub const GATEWAY6: &str = "fe80::ecee:eeff:feee:eeee";

/// Path of the `vethbpf` binary: `$VETHBPF_BIN`, or the one next to the test
/// executable's target dir (built once with `cargo build -p vethbpf --features
/// fault-injection`, since `cargo test` of this crate does not build another
/// package's binary).
static BIN: OnceLock<PathBuf> = OnceLock::new();

pub fn vethbpf_bin() -> &'static Path {
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VETHBPF_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>/vethbpf
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = profile_dir.join("vethbpf");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // With the test-only hook (VETHBPF_FAULT), as the library this crate
            // links is built, so both share one build.
            .args([
                "build",
                "--quiet",
                "-p",
                "vethbpf",
                "--features",
                "fault-injection",
            ])
            .status()
            .expect("run cargo build -p vethbpf");
        assert!(status.success(), "cargo build -p vethbpf failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

/// Runs a command and returns its output (never panics on a non-zero exit).
pub fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds; returns stdout.
pub fn must<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = run(program, &args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the namespaces under /run/netns.
pub fn netns_list() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_mountpoint(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap_or("")))
        })
        .unwrap_or(false)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestNode {
    /// Prefix of every namespace this test makes.
    pub prefix: String,
    /// The node namespace's name.
    pub netns: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub state: PathBuf,
}

impl TestNode {
    /// A fresh node namespace with `lo` up and [`NODE_IP`] and [`NODE_IP6`] on it;
    /// not yet `up`.
    pub fn new() -> TestNode {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("vbt-{}-{n}-", std::process::id());
        let dir = std::env::temp_dir().join(format!("{prefix}dir"));
        let node = TestNode {
            netns: format!("{prefix}node"),
            bpffs: dir.join("bpffs"),
            state: dir.join("state"),
            dir,
            prefix,
        };
        std::fs::create_dir_all(&node.dir).expect("temp dir");
        must("ip", ["netns", "add", &node.netns]);
        node.node_must("ip", &["link", "set", "lo", "up"]);
        node.node_must(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"],
        );
        node.node_must(
            "ip",
            &[
                "addr",
                "add",
                &format!("{NODE_IP6}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        );
        // The kernel adds an IPv6 address's local route from its addrconf work
        // queue, even with nodad: wait for it, or a snapshot taken now differs from
        // one taken later for no doing of the code under test.
        let local = format!("local {NODE_IP6} ");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !node
            .node_must("ip", &["-6", "route", "show", "table", "local"])
            .contains(&local)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the local route of {NODE_IP6} never appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        node
    }

    /// A node that is `up` with the default pod CIDR.
    pub fn up() -> TestNode {
        let node = TestNode::new();
        node.ok(&["up"]);
        node
    }

    /// A node that is `up` with both pod CIDRs ([`POD_CIDR`], [`POD_CIDR6`]).
    pub fn dual() -> TestNode {
        let node = TestNode::new();
        node.ok(&["up", "--pod-cidr", POD_CIDR, "--pod-cidr", POD_CIDR6]);
        node
    }

    /// A node that is `up` with the IPv6 pod CIDR only.
    pub fn v6_only() -> TestNode {
        let node = TestNode::new();
        node.ok(&["up", "--pod-cidr", POD_CIDR6]);
        node
    }

    /// A pod (endpoint) name unique to this test.
    pub fn pod(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs vethbpf inside the node namespace with this test's dirs.
    pub fn vethbpf(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run vethbpf: {e}"))
    }

    /// The command that runs vethbpf inside the node namespace with this test's
    /// dirs, to add environment variables or spawn it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(vethbpf_bin())
            .arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        c
    }

    /// Runs vethbpf and panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.vethbpf(args);
        assert!(
            out.status.success(),
            "vethbpf {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs vethbpf with `-o json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }

    /// Adds an endpoint and returns its JSON.
    pub fn add(&self, pod: &str, extra: &[&str]) -> serde_json::Value {
        let name = self.pod(pod);
        let mut a = vec!["endpoint", "add", name.as_str()];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    /// Runs a command inside a namespace (by name under /run/netns).
    pub fn in_ns(netns: &str, program: &str, args: &[&str]) -> Output {
        let net = format!("--net=/run/netns/{netns}");
        let mut full = vec![net.as_str(), "--", program];
        full.extend_from_slice(args);
        run("nsenter", full)
    }

    /// Runs a command in the node namespace.
    pub fn in_node(&self, program: &str, args: &[&str]) -> Output {
        Self::in_ns(&self.netns, program, args)
    }

    pub fn node_must(&self, program: &str, args: &[&str]) -> String {
        let out = self.in_node(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in the node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command in this test's pod `pod` (short name).
    pub fn in_pod(&self, pod: &str, program: &str, args: &[&str]) -> Output {
        Self::in_ns(&self.pod(pod), program, args)
    }

    /// Pings `dst` from pod `pod` once or more; returns the TTL of the replies if all
    /// of them came back.
    pub fn ping_from_pod(&self, pod: &str, dst: &str, count: u32) -> Option<u8> {
        ping_ttl(&self.in_pod(
            pod,
            "ping",
            &["-c", &count.to_string(), "-i", "0.2", "-W", "2", dst],
        ))
    }

    /// Pings `dst` from the node namespace.
    pub fn ping_from_node(&self, dst: &str) -> Option<u8> {
        ping_ttl(&self.in_node("ping", &["-c", "1", "-W", "2", dst]))
    }

    /// A snapshot of what vethbpf may change in the node namespace: links,
    /// addresses and routes of both families, plus the namespaces under /run/netns,
    /// the state file and the pinned maps.
    pub fn snapshot(&self) -> Snapshot {
        let strip = |s: String| -> Vec<String> {
            s.lines()
                // Counters and timers are not state.
                .map(|l| l.split(" qlen").next().unwrap_or(l))
                // Nor the operational state (`state UP`, and NO-CARRIER, which is
                // `ip`'s word for "up but not running"): the kernel's link watcher
                // catches up with the carrier (LOWER_UP) asynchronously, up to a
                // second later. UP and LOWER_UP are what vethbpf sets.
                .map(
                    |l| match l.replace("NO-CARRIER,", "").split_once(" state ") {
                        Some((head, tail)) => {
                            let rest = tail.split_once(' ').map_or("", |(_, r)| r);
                            format!("{head} {rest}")
                        }
                        None => l.replace("NO-CARRIER,", ""),
                    },
                )
                .collect()
        };
        Snapshot {
            links: strip(self.node_must("ip", &["-o", "link", "show"])),
            addrs: strip(self.node_must("ip", &["-o", "-4", "addr", "show"])),
            routes: strip(self.node_must("ip", &["-4", "route", "show", "table", "all"])),
            addrs6: strip(self.node_must("ip", &["-o", "-6", "addr", "show"])),
            routes6: strip(self.node_must("ip", &["-6", "route", "show", "table", "all"])),
            netns: netns_list()
                .into_iter()
                .filter(|n| n.starts_with(&self.prefix))
                .collect(),
            state: read_state(&self.state),
            journal: self.state.join("intent.json").exists() || has_deletion_journal(&self.state),
            node_journal: self.state.join("node-intent.json").exists(),
            pins: list_tree(&self.bpffs),
            filters: self.host_filters(),
            routes_map: self.map_dump("ROUTES"),
            endpoints_map: self.map_dump("ENDPOINTS"),
            nodes_map: self
                .map_dump("NODES")
                .into_iter()
                .filter(|e| e.contains("\"value\"") && !e.contains("\"value\":[\"0x00\",\"0x00\",\"0x00\",\"0x00\",\"0x00\",\"0x00\",\"0x00\",\"0x00\"]"))
                .collect(),
            routes6_map: self.map_dump("ROUTES6"),
            endpoints6_map: self.map_dump("ENDPOINTS6"),
            node_neigh_map: self
                .map_dump("NODE_NEIGH")
                .into_iter()
                .filter(|e| e.contains("\"value\"") && !all_zero_hex(e))
                .collect(),
        }
    }

    /// The filters with a program on tc ingress of `dev` in the node namespace, as
    /// `tc` lists them: (pref, handle, program id) of each.
    pub fn filters(&self, dev: &str) -> Vec<(u64, String, u64)> {
        let out = must(
            "tc",
            [
                "-n",
                self.netns.as_str(),
                "-j",
                "filter",
                "show",
                "dev",
                dev,
                "ingress",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
        v.as_array()
            .expect("tc filter list")
            .iter()
            .filter_map(|f| {
                let o = f.get("options")?;
                Some((
                    f["pref"].as_u64().expect("pref"),
                    o["handle"].as_str().expect("handle").to_string(),
                    o["prog"]["id"].as_u64().expect("prog id"),
                ))
            })
            .collect()
    }

    /// The pinned `from_pod` program's id (from `status`).
    pub fn pod_program_id(&self) -> u64 {
        self.json(&["status"])["programs"][0]["id"]
            .as_u64()
            .expect("program id")
    }

    /// Every filter on tc ingress of each host veth (vethbpf's names) in the node
    /// namespace, as `tc filter show` prints them.
    fn host_filters(&self) -> Vec<String> {
        let links = self.node_must("ip", &["-o", "link", "show", "type", "veth"]);
        let mut out = Vec::new();
        for name in links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| vethbpf::state::ident::is_derived_name(n))
        {
            let shown = TestNode::in_ns(
                &self.netns,
                "tc",
                &["filter", "show", "dev", name, "ingress"],
            );
            for line in String::from_utf8_lossy(&shown.stdout).lines() {
                out.push(format!("{name}: {line}"));
            }
        }
        out.sort();
        out
    }

    /// `bpftool -j map OP pinned MAP key KEY [value VALUE..]` on one of the node's
    /// pinned maps: a `u32` key (as its bytes), the value as bpftool takes it (one
    /// word a byte). Its output (a lookup's entry as JSON).
    pub fn map_op(&self, op: &str, map: &str, key: u32, value: Option<&[String]>) -> String {
        let path = self.bpffs.join("maps").join(map);
        let mut args: Vec<String> = vec!["-j".into(), "map".into(), op.into(), "pinned".into()];
        args.push(path.to_str().unwrap_or("").into());
        args.push("key".into());
        args.extend(key.to_ne_bytes().iter().map(u8::to_string));
        if let Some(v) = value {
            args.push("value".into());
            args.extend_from_slice(v);
        }
        must("bpftool", &args)
    }

    /// The entries of a pinned map, as bpftool prints them (sorted; empty if the
    /// node is not up).
    pub fn map_dump(&self, map: &str) -> Vec<String> {
        let path = self.bpffs.join("maps").join(map);
        if !path.exists() {
            return Vec::new();
        }
        let out = must(
            "bpftool",
            ["-j", "map", "dump", "pinned", path.to_str().unwrap_or("")],
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
        let mut entries: Vec<String> = v
            .as_array()
            .expect("bpftool map dump is an array")
            .iter()
            .map(|e| e.to_string())
            .collect();
        entries.sort();
        entries
    }

    /// Counters of endpoint `pod` from `endpoint list -o json`.
    pub fn counters(&self, pod: &str) -> serde_json::Value {
        let name = self.pod(pod);
        let list = self.json(&["endpoint", "list"]);
        list.as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name.as_str()))
            .map(|e| e["counters"].clone())
            .unwrap_or_else(|| panic!("endpoint {name} not listed: {list}"))
    }
}

impl Default for TestNode {
    fn default() -> Self {
        Self::new()
    }
}

/// Entries of map `name` in `status -o json` output.
pub fn map_entries(status: &serde_json::Value, name: &str) -> u64 {
    status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or_else(|| panic!("no map {name} in {status}"))
}

/// Packets of a counter path like `["forwarded"]` or `["drops", "drop_spoof"]`.
pub fn packets(counters: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = counters;
    for p in path {
        v = &v[*p];
    }
    v["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {counters}"))
}

/// Whether every hex byte of a bpftool entry's raw value (the last `"value"`:
/// keys sort `formatted`, `key`, `value`) is zero.
fn all_zero_hex(entry: &str) -> bool {
    entry.rsplit("\"value\"").next().is_none_or(|v| {
        v.split('"')
            .filter(|w| w.starts_with("0x"))
            .all(|w| w == "0x00")
    })
}

fn ping_ttl(out: &Output) -> Option<u8> {
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
}

fn list_tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.display().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<String>,
    pub addrs: Vec<String>,
    pub routes: Vec<String>,
    pub netns: BTreeSet<String>,
    /// The state as vethbpf reads it (snapshot and log), as pretty JSON; `None`
    /// without a state file; the files' text when it cannot be read.
    pub state: Option<String>,
    /// The journal of an interrupted command is there.
    pub journal: bool,
    /// The journal of an interrupted remote-node change is there.
    pub node_journal: bool,
    pub pins: Vec<String>,
    /// The tc ingress filters of the host veths (vethbpf's cls_bpf filter on each,
    /// with the program it runs).
    pub filters: Vec<String>,
    pub routes_map: Vec<String>,
    pub endpoints_map: Vec<String>,
    /// NODES entries that are not all zero (remote nodes).
    pub nodes_map: Vec<String>,
    pub addrs6: Vec<String>,
    pub routes6: Vec<String>,
    pub routes6_map: Vec<String>,
    pub endpoints6_map: Vec<String>,
    /// NODE_NEIGH entries that are not all zero (direct-routed IPv6 to a node).
    pub node_neigh_map: Vec<String>,
}

impl Drop for TestNode {
    /// Every step runs even when an earlier one failed, in an order that works when the
    /// test died halfway; then a failed step panics the test (a test that leaves its
    /// namespaces or mounts behind has failed), unless it is panicking already.
    fn drop(&mut self) {
        let mut errors = CleanupErrors::new(format!("test node {}", self.netns));
        // `down` must work on any node a test leaves: up or not, with or without
        // endpoints, with the bpffs gone. Only with a binary that was found already:
        // building it here could panic again while unwinding.
        if BIN.get().is_some() {
            errors.command("vethbpf down", self.command(&["down"]).output());
        }
        for ns in netns_list() {
            if ns.starts_with(&self.prefix) && ns != self.netns {
                errors.command(
                    &format!("ip netns del {ns}"),
                    Command::new("ip").args(["netns", "del", &ns]).output(),
                );
            }
        }
        errors.command(
            &format!("ip netns del {}", self.netns),
            Command::new("ip")
                .args(["netns", "del", &self.netns])
                .output(),
        );
        if is_mountpoint(&self.bpffs) {
            errors.command(
                &format!("umount {}", self.bpffs.display()),
                Command::new("umount").arg("-l").arg(&self.bpffs).output(),
            );
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.failed(&format!("removing {}", self.dir.display()), e)
            }
            _ => {}
        }
        let left: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        if !left.is_empty() {
            errors.failed("removing the test's namespaces", format!("{left:?} left"));
        }
        errors.finish();
    }
}

/// What went wrong while a guard cleaned up. Each step is recorded and cleaning goes
/// on; [`CleanupErrors::finish`] then panics with all of them, as aya's `NetNsGuard`
/// does, unless the thread is panicking already (a second panic would abort the test
/// binary and hide the first failure; the errors are printed instead).
pub struct CleanupErrors {
    guard: String,
    errors: Vec<String>,
}

impl CleanupErrors {
    pub fn new(guard: impl Into<String>) -> Self {
        Self {
            guard: guard.into(),
            errors: Vec::new(),
        }
    }

    pub fn failed(&mut self, step: &str, error: impl std::fmt::Display) {
        self.errors.push(format!("{step}: {error}"));
    }

    /// Records the step as failed unless the command started and exited with 0.
    pub fn command(&mut self, step: &str, out: std::io::Result<Output>) {
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => self.failed(
                step,
                format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ),
            Err(e) => self.failed(step, format!("cannot start: {e}")),
        }
    }

    pub fn finish(self) {
        if self.errors.is_empty() {
            return;
        }
        let report = format!(
            "cleaning up {} failed:\n  {}",
            self.guard,
            self.errors.join("\n  ")
        );
        if std::thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

/// xorshift64*: a small deterministic generator, so that a failing run can be
/// replayed from the seed it prints.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One's complement sum of 16-bit big-endian words, folded, not complemented (the
/// Internet checksum is its complement).
pub fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sends `len` bytes over TCP from a socket in the namespace `client` to a listener
/// on `server_ip` in the namespace `server`, which echoes them; asserts they come
/// back intact and returns how long it took.
pub fn tcp_echo(
    server: &Path,
    server_ip: impl Into<std::net::IpAddr>,
    client: &Path,
    len: usize,
) -> std::time::Duration {
    tcp_echo_peer(server, server_ip, client, len).0
}

/// [`tcp_echo`], also returning the client address the server saw (to check that
/// nothing rewrote it on the way).
pub fn tcp_echo_peer(
    server: &Path,
    server_ip: impl Into<std::net::IpAddr>,
    client: &Path,
    len: usize,
) -> (std::time::Duration, std::net::SocketAddr) {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let server_ip: std::net::IpAddr = server_ip.into();
    let listener = vethbpf::kernel::netns::run_in(server, move || {
        TcpListener::bind(SocketAddr::from((server_ip, 0)))
    })
    .expect("enter server netns")
    .expect("bind in server netns");
    let port = listener.local_addr().expect("local addr").port();
    let server_thread = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("server write");
        }
        peer
    });
    let start = Instant::now();
    let mut stream = vethbpf::kernel::netns::run_in(client, move || {
        TcpStream::connect_timeout(&SocketAddr::from((server_ip, port)), Duration::from_secs(5))
    })
    .expect("enter client netns")
    .expect("connect from client netns");
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut w = stream.try_clone().expect("clone stream");
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).expect("client write");
            w.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut back = Vec::with_capacity(len);
    stream.read_to_end(&mut back).expect("client read");
    writer.join().expect("writer");
    let peer = server_thread.join().expect("server");
    let took = start.elapsed();
    let what = format!("{} -> {}", client.display(), server.display());
    assert_eq!(back.len(), len, "echoed length {what}");
    assert!(back == data, "echoed bytes differ {what}");
    (took, peer)
}

/// An Ethernet II frame: destination, source, EtherType, payload.
pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "MAC {s}");
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("MAC {s}"));
    }
    m
}

/// Turns IPv6 off in the namespace at `netns`, so that a pod sends nothing on its own
/// (router solicitations, MLD reports, DAD): tests that compare counters read at two
/// moments need a pod that is quiet between them.
pub fn no_ipv6(netns: &Path) {
    for key in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ] {
        must(
            "nsenter",
            [
                format!("--net={}", netns.display()).as_str(),
                "sysctl",
                "-qw",
                key,
            ],
        );
    }
}

/// The state in the state dir `dir` as vethbpf reads it (the snapshot in
/// `state.json` and the endpoint log `state.log` after it), as pretty JSON, so that
/// two histories that end in the same state compare equal. `None` without any
/// state file; the raw files when they cannot be read.
pub fn read_state(dir: &Path) -> Option<String> {
    let files = [vethbpf::state::STATE_FILE, vethbpf::state::LOG_FILE];
    if !files.iter().any(|f| dir.join(f).exists()) {
        return None;
    }
    Some(match vethbpf::state::StateDir::new(dir).read() {
        Ok(state) => serde_json::to_string_pretty(&state).expect("state as JSON"),
        Err(e) => format!(
            "unreadable ({e}): {:?}",
            files.map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
        ),
    })
}

/// The node's address on its uplink in [`TestNode::outside`]: the masquerade
/// address.
pub const UPLINK_NODE_IP: &str = "172.30.0.2";
/// The outside router's address on the uplink: the node's default gateway.
pub const ROUTER_IP: &str = "172.30.0.1";
/// A server address of the outside namespace (on its `lo`).
pub const SERVER_IP: &str = "198.51.100.10";
/// A server one hop behind the outside router (on the far namespace's `lo`).
pub const FAR_SERVER_IP: &str = "203.0.113.10";
/// The node's uplink interface in [`TestNode::outside`].
pub const UPLINK: &str = "up0";

/// The world outside a test node: a namespace `<prefix>out` that plays the router
/// and hosts servers on its own addresses, joined to the node by a veth (the node's
/// uplink, [`UPLINK`], with [`UPLINK_NODE_IP`]/24 and a default route via
/// [`ROUTER_IP`]); optionally a namespace `<prefix>far` behind the router over a
/// link of its own MTU. The node's guard removes the namespaces (same prefix).
pub struct Outside {
    pub netns: String,
    pub far: Option<String>,
}

impl Outside {
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }
    pub fn far_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/run/netns/{}",
            self.far
                .as_deref()
                .expect("an outside made with a far namespace")
        ))
    }
    /// Runs a command in the outside namespace and panics unless it succeeds.
    pub fn must(&self, program: &str, args: &[&str]) -> String {
        ns_must(&self.netns, program, args)
    }
}

/// Runs a command in namespace `netns` and panics unless it succeeds; returns stdout.
pub fn ns_must(netns: &str, program: &str, args: &[&str]) -> String {
    let out = TestNode::in_ns(netns, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} in {netns} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestNode {
    /// Gives the node an uplink to a new outside namespace (see [`Outside`]).
    pub fn outside(&self) -> Outside {
        self.build_outside(None)
    }

    /// [`TestNode::outside`] plus a far namespace behind the outside router, over a
    /// link whose router side has MTU `far_mtu` (the far side keeps 1500, so the
    /// far server offers a full-size MSS); the router forwards between the two.
    pub fn outside_with_far(&self, far_mtu: u32) -> Outside {
        self.build_outside(Some(far_mtu))
    }

    fn build_outside(&self, far_mtu: Option<u32>) -> Outside {
        let out = format!("{}out", self.prefix);
        must("ip", ["netns", "add", &out]);
        // Made right in both namespaces: no name in the test's own namespace.
        must(
            "ip",
            [
                "link",
                "add",
                UPLINK,
                "netns",
                &self.netns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &out,
            ],
        );
        self.node_must(
            "ip",
            &[
                "addr",
                "add",
                &format!("{UPLINK_NODE_IP}/24"),
                "dev",
                UPLINK,
            ],
        );
        self.node_must("ip", &["link", "set", UPLINK, "up"]);
        self.node_must("ip", &["route", "add", "default", "via", ROUTER_IP]);
        ns_must(&out, "ip", &["link", "set", "lo", "up"]);
        ns_must(
            &out,
            "ip",
            &["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"],
        );
        ns_must(&out, "ip", &["link", "set", "eth0", "up"]);
        ns_must(
            &out,
            "ip",
            &["addr", "add", &format!("{SERVER_IP}/32"), "dev", "lo"],
        );
        let far = far_mtu.map(|mtu| {
            let far = format!("{}far", self.prefix);
            must("ip", ["netns", "add", &far]);
            let mtu = mtu.to_string();
            must(
                "ip",
                [
                    "link", "add", "eth1", "mtu", &mtu, "netns", &out, "type", "veth", "peer",
                    "name", "eth0", "netns", &far,
                ],
            );
            ns_must(&out, "ip", &["addr", "add", "172.31.0.1/24", "dev", "eth1"]);
            ns_must(&out, "ip", &["link", "set", "eth1", "up"]);
            ns_must(
                &out,
                "ip",
                &[
                    "route",
                    "add",
                    &format!("{FAR_SERVER_IP}/32"),
                    "via",
                    "172.31.0.2",
                ],
            );
            ns_must(&out, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            ns_must(&far, "ip", &["link", "set", "lo", "up"]);
            ns_must(&far, "ip", &["addr", "add", "172.31.0.2/24", "dev", "eth0"]);
            ns_must(&far, "ip", &["link", "set", "eth0", "up"]);
            ns_must(
                &far,
                "ip",
                &["addr", "add", &format!("{FAR_SERVER_IP}/32"), "dev", "lo"],
            );
            ns_must(
                &far,
                "ip",
                &["route", "add", "default", "via", "172.31.0.1"],
            );
            far
        });
        Outside { netns: out, far }
    }
}

/// The node's IPv6 address on its uplink after [`TestNode::outside6`]: the IPv6
/// masquerade address (documentation prefix, as every address of the outside).
pub const UPLINK_NODE_IP6: &str = "2001:db8:30::2";
/// The outside router's IPv6 address on the uplink: the node's IPv6 default gateway.
pub const ROUTER_IP6: &str = "2001:db8:30::1";
/// An IPv6 server address of the outside namespace (on its `lo`).
pub const SERVER_IP6: &str = "2001:db8:100::10";
/// An IPv6 server one hop behind the outside router (on the far namespace's `lo`).
pub const FAR_SERVER_IP6: &str = "2001:db8:113::10";

impl TestNode {
    /// Gives the world of [`TestNode::outside`] IPv6: [`UPLINK_NODE_IP6`]/64 on the
    /// node's uplink with an IPv6 default route via [`ROUTER_IP6`], [`SERVER_IP6`] in
    /// the outside namespace and, with a far namespace, [`FAR_SERVER_IP6`] behind a
    /// 2001:db8:31::/64 link that the outside (the router) forwards to. Addresses are
    /// `nodad`: usable at once, as a configured node's would be. The node keeps
    /// IPv6 forwarding off.
    pub fn outside6(&self, out: &Outside) {
        self.node_must(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{UPLINK_NODE_IP6}/64"),
                "dev",
                UPLINK,
                "nodad",
            ],
        );
        self.node_must(
            "ip",
            &[
                "-6", "route", "add", "default", "via", ROUTER_IP6, "dev", UPLINK,
            ],
        );
        let o = &out.netns;
        ns_must(
            o,
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{ROUTER_IP6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ns_must(
            o,
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{SERVER_IP6}/128"),
                "dev",
                "lo",
            ],
        );
        if let Some(far) = &out.far {
            ns_must(o, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
            ns_must(
                o,
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:31::1/64",
                    "dev",
                    "eth1",
                    "nodad",
                ],
            );
            ns_must(
                o,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{FAR_SERVER_IP6}/128"),
                    "via",
                    "2001:db8:31::2",
                ],
            );
            ns_must(
                far,
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:31::2/64",
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            ns_must(
                far,
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{FAR_SERVER_IP6}/128"),
                    "dev",
                    "lo",
                ],
            );
            ns_must(
                far,
                "ip",
                &["-6", "route", "add", "default", "via", "2001:db8:31::1"],
            );
        }
    }
}

/// Whether `state_dir` holds the journal of an `endpoint del` (`del-<id>.json`).
fn has_deletion_journal(state_dir: &std::path::Path) -> bool {
    std::fs::read_dir(state_dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("del-") && n.ends_with(".json"))
        })
    })
}
