//! The two ways of running vethbpf in a node's network namespace.
//!
//! `nsenter --net=/run/netns/NODE vethbpf ...` changes only the network namespace.
//! `ip netns exec NODE vethbpf ...` also gives the command a mount namespace of its
//! own with a fresh /sys: a bpffs mounted there (the default, /sys/fs/bpf/vethbpf,
//! is below /sys) and the pins on it vanish when the command exits. vethbpf must
//! then refuse, naming the way out, and change nothing. The same holds for the
//! namespaces `endpoint add` makes under /run/netns. Where the bpffs dir is on a
//! bpffs the host sees and pods go into existing namespaces, `ip netns exec` works,
//! across commands and mixed with `nsenter`.

use std::path::Path;
use std::process::Output;

use vethbpf_tests::{NODE_IP, TestNode, must, run, vethbpf_bin};

/// `ip netns exec NODE vethbpf --bpffs-dir BPFFS --state-dir STATE ARGS`.
fn ip_netns_exec(node: &TestNode, bpffs: &Path, args: &[&str]) -> Output {
    let bin = vethbpf_bin().to_str().expect("utf-8 path");
    let bpffs = bpffs.to_str().expect("utf-8 path");
    let state = node.state.to_str().expect("utf-8 path");
    let mut full = vec![
        "netns",
        "exec",
        node.netns.as_str(),
        bin,
        "--bpffs-dir",
        bpffs,
        "--state-dir",
        state,
    ];
    full.extend_from_slice(args);
    run("ip", full)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_refused(node: &TestNode, out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(out.stdout.is_empty(), "{what} printed a result");
    for expect in [
        "a mount namespace of its own",
        "would vanish when this command exits",
        &format!("nsenter --net=/run/netns/{} vethbpf", node.netns),
    ] {
        assert!(
            stderr.contains(expect),
            "{what}: {expect:?} not in: {stderr}"
        );
    }
}

fn pod_ip(endpoint: &serde_json::Value) -> String {
    endpoint["ip"].as_str().expect("ip").to_string()
}

/// The tutorials' way: `ip netns exec NODE vethbpf up` with a bpffs dir below /sys
/// (as the default is), or one that would need a bpffs mounted in the command's
/// own namespace. Refused with the way out; no state, pin, mount or link appears,
/// here or in the host's view.
#[test]
fn up_under_ip_netns_exec_is_refused_where_pins_would_vanish() {
    let node = TestNode::new();
    let before = node.snapshot();
    let under_sys = Path::new("/sys/fs/bpf").join(format!("{}bpffs", node.prefix));
    for bpffs in [under_sys.as_path(), node.bpffs.as_path()] {
        for args in [
            &["up"][..],
            &["-o", "json", "up", "--pod-cidr", "10.77.0.0/24"],
        ] {
            let out = ip_netns_exec(&node, bpffs, args);
            assert_refused(&node, &out, &format!("{args:?} at {}", bpffs.display()));
            assert_eq!(node.snapshot(), before, "{args:?} changed the node");
            assert!(!node.state.exists(), "{args:?} made the state dir");
            assert!(!bpffs.exists(), "{args:?} made {}", bpffs.display());
        }
    }
    // `endpoint add` after a refused `up` still finds no node.
    let out = ip_netns_exec(&node, &node.bpffs, &["endpoint", "add", &node.pod("a")]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // The JSON form names the same.
    let out = ip_netns_exec(&node, &node.bpffs, &["-o", "json", "up"]);
    let err: serde_json::Value =
        serde_json::from_slice(&out.stderr).expect("one JSON object on stderr");
    assert_eq!(
        (err["code"].as_i64(), err["kind"].as_str()),
        (Some(1), Some("other"))
    );
}

/// Every command that mounts, pins, unpins or reads pins holds to the same rule:
/// in a mount namespace of its own whose bpffs at the node's dir is not the host's
/// (here: one mounted over it in that namespace), each is refused and changes
/// nothing.
#[test]
fn every_command_is_refused_on_a_bpffs_the_host_does_not_see() {
    let node = TestNode::up();
    node.add("a", &[]);
    let a = node.pod("a");
    let bpffs = node.bpffs.to_str().expect("utf-8 path").to_string();
    let bin = vethbpf_bin().to_str().expect("utf-8 path").to_string();
    let state = node.state.to_str().expect("utf-8 path").to_string();
    for args in [
        vec!["up"],
        vec!["up", "--replace"],
        vec!["endpoint", "add", "b"],
        vec!["endpoint", "del", a.as_str()],
        vec!["endpoint", "list"],
        vec!["status"],
        vec!["reconcile"],
        vec!["reconcile", "--from-kernel"],
        vec!["down"],
    ] {
        let before = node.snapshot();
        // A mount namespace of its own (private, so nothing propagates back) with a
        // fresh bpffs over the node's: what the command sees is not what the host
        // sees.
        let script = format!(
            "umount -l {bpffs} && mount -t bpf bpf {bpffs} && exec nsenter --net=/run/netns/{} -- {bin} --bpffs-dir {bpffs} --state-dir {state} {}",
            node.netns,
            args.join(" ")
        );
        let out = run(
            "unshare",
            ["--mount", "--propagation", "private", "sh", "-c", &script],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("a mount namespace of its own"),
            "{args:?}: {stderr}"
        );
        assert_eq!(node.snapshot(), before, "{args:?} changed the node");
    }
    // The node is as it was: the endpoint is still listed and reachable.
    assert_eq!(
        node.json(&["endpoint", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}

/// Whether a mount sits on `path` in the host's mount namespace (ours).
fn is_mountpoint(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// With the bpffs dir on a bpffs mounted in the host's mount namespace,
/// `ip netns exec` works across commands: the pins land on the host's bpffs, where
/// the next command (either way of running) finds them. A namespace it would make
/// under /run/netns would not outlive it, so `endpoint add` without `--netns` is
/// refused there (and changes nothing); with an existing namespace it works.
#[test]
fn ip_netns_exec_works_on_a_bpffs_the_host_sees() {
    let node = TestNode::new();
    std::fs::create_dir_all(&node.bpffs).expect("mkdir bpffs");
    let dir = node.bpffs.to_str().expect("utf-8 path");
    must("mount", ["-t", "bpf", "bpf", dir]);
    ok(
        ip_netns_exec(&node, &node.bpffs, &["up"]),
        "ip netns exec up",
    );
    assert!(
        node.bpffs.join("progs/from_pod").exists(),
        "pinned in the host's view"
    );

    let pod_a = node.pod("a");
    let before = node.snapshot();
    let out = ip_netns_exec(&node, &node.bpffs, &["endpoint", "add", &pod_a]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expect in [
        format!("the network namespace {pod_a} it would make under /run/netns would vanish"),
        format!("nsenter --net=/run/netns/{} vethbpf", node.netns),
        "pass --netns an existing namespace".to_string(),
    ] {
        assert!(stderr.contains(&expect), "{expect:?} not in: {stderr}");
    }
    assert_eq!(node.snapshot(), before, "the refused add changed the node");

    must("ip", ["netns", "add", &pod_a]);
    let a: serde_json::Value = serde_json::from_str(&ok(
        ip_netns_exec(
            &node,
            &node.bpffs,
            &["-o", "json", "endpoint", "add", &pod_a, "--netns", &pod_a],
        ),
        "ip netns exec endpoint add a --netns",
    ))
    .expect("JSON");
    // The other way of running, on the same node.
    let b = node.add("b", &[]);
    let host_a = a["host_veth"].as_str().expect("host_veth");
    assert_eq!(
        node.filters(host_a).len(),
        1,
        "from_pod attached to the host veth"
    );
    assert_eq!(node.ping_from_pod("a", &pod_ip(&b), 2), Some(63));
    assert_eq!(node.ping_from_pod("b", &pod_ip(&a), 2), Some(63));
    let list = ok(
        ip_netns_exec(&node, &node.bpffs, &["-o", "json", "endpoint", "list"]),
        "ip netns exec endpoint list",
    );
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // `down` from there removes b's namespace (vethbpf made it) for the host too.
    ok(
        ip_netns_exec(&node, &node.bpffs, &["down"]),
        "ip netns exec down",
    );
    let b_netns = format!("/run/netns/{}", node.pod("b"));
    assert!(!Path::new(&b_netns).exists(), "{b_netns} left");
    assert!(!is_mountpoint(&b_netns), "{b_netns} still mounted");
    assert!(!node.bpffs.join("progs").exists(), "down removed the pins");
    assert!(!node.state.exists(), "down removed the state");
}

/// `nsenter` (vethbpf mounts the bpffs, in the host's mount namespace) and then
/// `ip netns exec` for the next commands: each sees the datapath the other made.
#[test]
fn nsenter_then_ip_netns_exec_share_one_datapath() {
    let node = TestNode::up();
    let pod_a = node.pod("a");
    must("ip", ["netns", "add", &pod_a]);
    let a: serde_json::Value = serde_json::from_str(&ok(
        ip_netns_exec(
            &node,
            &node.bpffs,
            &["-o", "json", "endpoint", "add", &pod_a, "--netns", &pod_a],
        ),
        "ip netns exec endpoint add a --netns",
    ))
    .expect("JSON");
    let b = node.add("b", &[]);
    assert_eq!(node.ping_from_pod("a", &pod_ip(&b), 2), Some(63));
    assert_eq!(node.ping_from_pod("b", &pod_ip(&a), 2), Some(63));
    // b's namespace was made by vethbpf (through nsenter); deleting it from a mount
    // namespace of its own must still remove it for the host.
    ok(
        ip_netns_exec(&node, &node.bpffs, &["endpoint", "del", &node.pod("b")]),
        "ip netns exec endpoint del b",
    );
    let b_netns = format!("/run/netns/{}", node.pod("b"));
    assert!(!Path::new(&b_netns).exists(), "{b_netns} left");
    assert!(!is_mountpoint(&b_netns), "{b_netns} still mounted");
    let list = node.json(&["endpoint", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, [pod_a.as_str()]);
    assert_eq!(node.ping_from_pod("a", NODE_IP, 1), Some(64));
}
