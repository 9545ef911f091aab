//! Bad input gets a specific error, a non-zero exit, and changes nothing: the node
//! namespace's links, addresses and routes, the test's namespaces, the state file and
//! the pins are snapshotted before and after each command.

use vethbpf_tests::{TestNode, must};

fn assert_rejected(node: &TestNode, args: &[&str], expect: &str) {
    let before = node.snapshot();
    let out = node.vethbpf(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in the error, got: {stderr}"
    );
    assert_eq!(node.snapshot(), before, "{args:?} changed the node");
}

#[test]
fn commands_before_up_say_so_and_create_nothing() {
    let node = TestNode::new();
    for args in [
        &["endpoint", "add", "x"][..],
        &["endpoint", "del", "x"][..],
        &["endpoint", "list"][..],
    ] {
        assert_rejected(&node, args, "the node is not up");
    }
    let status = node.json(&["status"]);
    assert_eq!(status["up"], false);
    assert!(!node.state.exists(), "no state dir may appear before up");
    assert!(!node.bpffs.exists(), "no bpffs dir may appear before up");
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let node = TestNode::up();
    let web = node.add("web", &[]);
    let web_ip = web["ip"].as_str().expect("ip").to_string();
    let fresh = node.pod("fresh");
    let long = "x".repeat(64);
    let missing = node.pod("no-such-netns");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["endpoint", "add", &long],
            "is 64 bytes long; the limit is 63",
        ),
        (vec!["endpoint", "add", "a/b"], "has the character '/'"),
        (vec!["endpoint", "add", "-x"], "unexpected argument"),
        (
            vec!["endpoint", "add", &fresh, "--ifname", "sixteen-bytes-xx"],
            "Linux allows at most 15",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "10.9.9.9"],
            "10.9.9.9 is outside the pod CIDR 10.244.0.0/24",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "10.244.0.255"],
            "network or broadcast address",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", &web_ip],
            "is already used by endpoint",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "not-an-ip"],
            "invalid value 'not-an-ip'",
        ),
        (
            vec!["endpoint", "add", web["name"].as_str().expect("name")],
            "already exists",
        ),
        (
            vec!["endpoint", "add", &fresh, "--netns", &missing],
            "does not exist",
        ),
        (
            vec!["endpoint", "add", &fresh, "--netns", "/etc/hostname"],
            "is not a network namespace",
        ),
        (vec!["endpoint", "del", "nope"], "no endpoint named nope"),
        (
            vec!["up", "--pod-cidr", "10.1.0.0/24"],
            "before changing it to 10.1.0.0/24",
        ),
        (
            vec!["up", "--gateway", "10.244.0.9"],
            "lies inside the pod CIDR",
        ),
        (vec!["up", "--pod-cidr", "10.1.0.0/33"], "invalid value"),
    ];
    for (args, expect) in &cases {
        assert_rejected(&node, args, expect);
    }
}

#[test]
fn existing_interface_in_a_given_namespace_is_refused() {
    let node = TestNode::up();
    let ns = node.pod("given");
    must("ip", ["netns", "add", &ns]);
    // The namespace already has an eth0 (one end of a veth pair of its own).
    let out = TestNode::in_ns(
        &ns,
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );
    assert!(out.status.success());
    let pod = node.pod("p");
    assert_rejected(
        &node,
        &["endpoint", "add", &pod, "--netns", &ns],
        "the interface eth0 already exists in the namespace",
    );
}

#[test]
fn failure_halfway_through_add_undoes_everything() {
    let node = TestNode::up();
    let ns = node.pod("given");
    must("ip", ["netns", "add", &ns]);
    // The given namespace already has a default route, so the pod-side step that
    // adds one fails after the veth was made, moved and configured: everything
    // must be taken back.
    for args in [
        &["link", "add", "x0", "type", "veth", "peer", "name", "x1"][..],
        &["link", "set", "x0", "up"][..],
        &["addr", "add", "10.99.0.1/24", "dev", "x0"][..],
        &["route", "add", "default", "via", "10.99.0.2"][..],
    ] {
        let out = TestNode::in_ns(&ns, "ip", args);
        assert!(out.status.success(), "{args:?}");
    }
    let links_in_ns = || {
        String::from_utf8_lossy(&TestNode::in_ns(&ns, "ip", &["-o", "link", "show"]).stdout)
            .lines()
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            .collect::<Vec<_>>()
    };
    let ns_links_before = links_in_ns();
    let pod = node.pod("p");
    assert_rejected(&node, &["endpoint", "add", &pod, "--netns", &ns], "exists");
    assert_eq!(
        links_in_ns(),
        ns_links_before,
        "nothing left in the pod netns"
    );
    // And the same endpoint works in a clean namespace afterwards.
    node.add("p", &[]);
}
