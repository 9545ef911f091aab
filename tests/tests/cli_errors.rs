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

/// Every command, with each kind of wrong argument it can get: a specific message,
/// the exit status of its kind (2 usage, 3 not found, 4 not up, 5 conflict, 1 the
/// rest) and an unchanged node.
#[test]
fn every_command_names_what_is_wrong_and_changes_nothing() {
    let node = TestNode::up();
    let web = node.add("web", &[]);
    let web_name = web["name"].as_str().expect("name").to_string();
    let fresh = node.pod("fresh");
    let other_bpffs = node.dir.join("other-bpffs");
    let other = other_bpffs.to_str().expect("utf-8 path");
    let file = node.dir.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let file = file.to_str().expect("utf-8 path");
    // (arguments, exit code, message)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // No or unknown command, unknown options, bad global options.
        (vec![], 2, "Usage:"),
        (
            vec!["frobnicate"],
            2,
            "unrecognized subcommand 'frobnicate'",
        ),
        (vec!["endpoint"], 2, "Usage:"),
        (
            vec!["endpoint", "rename"],
            2,
            "unrecognized subcommand 'rename'",
        ),
        (vec!["-o", "xml", "status"], 2, "invalid value 'xml'"),
        (
            vec!["status", "--bogus"],
            2,
            "unexpected argument '--bogus'",
        ),
        (vec!["down", "--force"], 2, "unexpected argument '--force'"),
        (
            vec!["demo", "--count", "3"],
            2,
            "unexpected argument '--count'",
        ),
        // A bpffs dir other than the node's.
        (
            vec!["--bpffs-dir", other, "endpoint", "list"],
            5,
            "the node was brought up with --bpffs-dir",
        ),
        (
            vec!["--bpffs-dir", other, "endpoint", "add", &fresh],
            5,
            "the node was brought up with --bpffs-dir",
        ),
        (
            vec!["--bpffs-dir", other, "down"],
            5,
            "the node was brought up with --bpffs-dir",
        ),
        (
            vec!["--bpffs-dir", other, "reconcile"],
            5,
            "the node was brought up with --bpffs-dir",
        ),
        // A state dir that cannot be one.
        (
            vec!["--state-dir", file, "up"],
            1,
            "cannot create the state directory",
        ),
        (
            vec!["--state-dir", file, "endpoint", "list"],
            4,
            "the node is not up",
        ),
        // up: CIDRs and gateways.
        (
            vec!["up", "--pod-cidr", "10.244.0.0"],
            2,
            "invalid value '10.244.0.0'",
        ),
        (vec!["up", "--pod-cidr", "300.1.0.0/24"], 2, "invalid value"),
        (
            vec!["up", "--gateway", "169.254.1"],
            2,
            "invalid value '169.254.1'",
        ),
        (
            vec!["up", "--gateway", "fe80::1"],
            2,
            "invalid value 'fe80::1'",
        ),
        (
            vec!["up", "--pod-cidr", "10.1.0.0/24"],
            5,
            "before changing it to 10.1.0.0/24",
        ),
        (
            vec!["up", "--gateway", "10.244.0.9"],
            2,
            "lies inside the pod CIDR",
        ),
        // up: one CIDR per family, IPv6 ones routable.
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.0.0/24",
                "--pod-cidr",
                "10.245.0.0/24",
            ],
            2,
            "two IPv4 pod CIDRs given",
        ),
        (
            vec!["up", "--pod-cidr", "fd00::/64", "--pod-cidr", "fd01::/64"],
            2,
            "two IPv6 pod CIDRs given",
        ),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.0.0/24",
                "--pod-cidr",
                "fe80::/64",
            ],
            2,
            "is link-local",
        ),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.0.0/24",
                "--pod-cidr",
                "ff02::/16",
            ],
            2,
            "is multicast",
        ),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.0.0/24",
                "--pod-cidr",
                "fd00:10:244::/64",
            ],
            5,
            "before changing it to 10.244.0.0/24 and fd00:10:244::/64",
        ),
        // endpoint add: names, addresses, namespaces, interface names.
        (
            vec!["endpoint", "add"],
            2,
            "required arguments were not provided",
        ),
        (vec!["endpoint", "add", ""], 2, "endpoint name is empty"),
        (
            vec!["endpoint", "add", ".hidden"],
            2,
            "starting with a letter or digit",
        ),
        (vec!["endpoint", "add", "a b"], 2, "has the character ' '"),
        (vec!["endpoint", "add", &web_name], 5, "already exists"),
        (
            vec!["endpoint", "add", &fresh, "--ip", "10.244.0.0"],
            2,
            "network or broadcast address",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "169.254.1.1"],
            2,
            "outside the pod CIDR",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "10.244.0.1/32"],
            2,
            "invalid value",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ip", "fd00:10:244::5"],
            2,
            "the node has no IPv6 pod CIDR",
        ),
        (
            vec![
                "endpoint",
                "add",
                &fresh,
                "--ip",
                "10.244.0.5",
                "--ip",
                "10.244.0.6",
            ],
            2,
            "more than one IPv4 address given",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ifname", "eth/0"],
            2,
            "may not contain '/'",
        ),
        (
            vec!["endpoint", "add", &fresh, "--ifname", ""],
            2,
            "interface name \"\"",
        ),
        (
            vec!["endpoint", "add", &fresh, "--netns", "../etc"],
            3,
            "does not exist",
        ),
        (
            vec!["endpoint", "add", &fresh, "--netns", file],
            2,
            "is not a network namespace",
        ),
        // endpoint del.
        (
            vec!["endpoint", "del"],
            2,
            "required arguments were not provided",
        ),
        (vec!["endpoint", "del", &fresh], 3, "no endpoint named"),
        (vec!["endpoint", "del", "a/b"], 3, "no endpoint named a/b"),
        // reconcile.
        (
            vec!["reconcile", "--pod-cidr", "10.0.0.0/8"],
            2,
            "--from-kernel",
        ),
        (
            vec!["reconcile", "--from-kernel"],
            5,
            "is readable; run `vethbpf reconcile` without",
        ),
        (
            vec!["--bpffs-dir", other, "reconcile", "--from-kernel"],
            4,
            "nothing is pinned at",
        ),
    ];
    for (args, code, expect) in &cases {
        let before = node.snapshot();
        let out = own_dirs(&node, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in the error, got: {stderr}"
        );
        assert_eq!(node.snapshot(), before, "{args:?} changed the node");
        assert!(!other_bpffs.exists(), "{args:?} made {other}");
    }
}

/// Runs vethbpf in the node namespace with the test's --bpffs-dir and --state-dir,
/// unless the arguments bring their own.
fn own_dirs(node: &TestNode, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", node.netns))
        .arg("--")
        .arg(vethbpf_tests::vethbpf_bin());
    if !args.contains(&"--bpffs-dir") {
        cmd.arg("--bpffs-dir").arg(&node.bpffs);
    }
    if !args.contains(&"--state-dir") {
        cmd.arg("--state-dir").arg(&node.state);
    }
    cmd.args(args).output().expect("run vethbpf")
}

/// Runs vethbpf as `nobody` inside the node namespace.
fn as_nobody(node: &TestNode, args: &[&str]) -> std::process::Output {
    let net = format!("--net=/run/netns/{}", node.netns);
    let bin = vethbpf_tests::vethbpf_bin()
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let bpffs = node.bpffs.to_str().expect("utf-8").to_string();
    let state = node.state.to_str().expect("utf-8").to_string();
    let mut full = vec![
        net.as_str(),
        "--",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        bin.as_str(),
        "--bpffs-dir",
        bpffs.as_str(),
        "--state-dir",
        state.as_str(),
    ];
    full.extend_from_slice(args);
    vethbpf_tests::run("nsenter", full)
}

#[test]
fn every_command_refuses_to_run_without_root() {
    let node = TestNode::up();
    let pod = node.pod("p");
    node.add("p", &[]);
    for args in [
        &["up"][..],
        &["endpoint", "add", "x"],
        &["endpoint", "del", &pod],
        &["endpoint", "list"],
        &["status"],
        &["reconcile"],
        &["reconcile", "--from-kernel"],
        &["down"],
        &["demo"],
    ] {
        let before = node.snapshot();
        let out = as_nobody(&node, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("vethbpf must run as root"),
            "{args:?}: {stderr}"
        );
        assert_eq!(node.snapshot(), before, "{args:?} changed the node");
    }
}

#[test]
fn a_missing_bpffs_is_named_and_up_then_reconcile_bring_the_datapath_back() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let ip = |e: &serde_json::Value| e["ip"].as_str().expect("ip").to_string();
    // Someone unmounts the bpffs: the pins are gone. The pods' cls_bpf filters
    // hold the program, and it its maps: pods keep talking, but vethbpf can no
    // longer reach that datapath.
    must("umount", [node.bpffs.to_str().expect("utf-8")]);
    assert_eq!(
        node.ping_from_pod("a", &ip(&b), 1),
        Some(63),
        "the filters keep the datapath"
    );
    for args in [
        &["endpoint", "add", &node.pod("c")][..],
        &["endpoint", "list"],
        &["status"],
        &["reconcile"],
    ] {
        assert_rejected(
            &node,
            args,
            "is the bpffs still mounted? `vethbpf up` loads the datapath again",
        );
    }
    // `up` loads the datapath again; `reconcile` puts every endpoint back into it.
    let up = node.ok(&["up"]);
    assert!(up.contains("loaded again"), "{up}");
    let r = node.json(&["reconcile"]);
    let repaired: Vec<String> = r["repaired"]
        .as_array()
        .expect("repaired")
        .iter()
        .map(|f| f["what"].as_str().unwrap_or("").to_string())
        .collect();
    for what in ["endpoint map entry", "route map entry"] {
        assert_eq!(
            repaired.iter().filter(|w| *w == what).count(),
            2,
            "{what}: {r}"
        );
    }
    // The filters ran the old program (and maps) until reconcile gave them the new.
    assert_eq!(
        repaired
            .iter()
            .filter(|w| w.starts_with("program attachment (its filter ran program"))
            .count(),
        2,
        "{r}"
    );
    // Traffic resumes. A pod whose gateway neighbour entry failed while the
    // datapath was gone resolves it again first, which can cost a packet.
    let resumes = |from: &str, to: &str| (0..3).find_map(|_| node.ping_from_pod(from, to, 2));
    assert_eq!(resumes("a", &ip(&b)), Some(63));
    assert_eq!(resumes("b", &ip(&a)), Some(63));
}

#[test]
fn down_cleans_up_even_when_the_bpffs_is_gone() {
    let node = TestNode::new();
    let clean = node.snapshot();
    node.ok(&["up"]);
    node.add("a", &[]);
    node.add("b", &[]);
    must("umount", [node.bpffs.to_str().expect("utf-8")]);
    node.ok(&["down"]);
    let after = node.snapshot();
    assert_eq!(
        after, clean,
        "links, namespaces, routes and state as before up"
    );
    assert!(!node.state.exists(), "state dir removed");
}

/// With `-o json`, a failure is one JSON object on stderr (nothing on stdout), with
/// the message, the exit status and its kind; argument errors included.
#[test]
fn errors_are_json_objects_with_o_json() {
    let fresh = TestNode::new();
    let node = TestNode::up();
    let web = node.add("web", &[]);
    let web_name = web["name"].as_str().expect("name").to_string();
    let cases: [(&TestNode, Vec<&str>, i32, &str, &str); 5] = [
        (
            &fresh,
            vec!["-o", "json", "endpoint", "list"],
            4,
            "not_up",
            "the node is not up",
        ),
        (
            &node,
            vec!["-o", "json", "endpoint", "del", "nope"],
            3,
            "not_found",
            "no endpoint named nope",
        ),
        (
            &node,
            vec!["endpoint", "add", &web_name, "--output=json"],
            5,
            "conflict",
            "already exists",
        ),
        (
            &node,
            vec!["-ojson", "endpoint", "add", "a b"],
            2,
            "usage",
            "has the character ' '",
        ),
        (
            &node,
            vec!["--output", "json", "up", "--pod-cidr", "10.1.0.0/33"],
            2,
            "usage",
            "invalid value '10.1.0.0/33'",
        ),
    ];
    for (n, args, code, kind, expect) in cases {
        let out = n.vethbpf(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let err: serde_json::Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not one JSON object ({e}): {stderr}"));
        assert_eq!(err["code"], code, "{args:?}: {err}");
        assert_eq!(err["kind"], kind, "{args:?}: {err}");
        let message = err["error"].as_str().expect("error is a string");
        assert!(message.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn monitor_and_metrics_name_what_is_wrong_and_change_nothing() {
    let node = TestNode::new();
    for args in [&["monitor"][..], &["metrics"]] {
        let out = node.vethbpf(args);
        assert_eq!(out.status.code(), Some(4), "{args:?} before up");
        assert!(String::from_utf8_lossy(&out.stderr).contains("the node is not up"));
    }
    assert!(!node.state.exists(), "no state dir may appear before up");
    node.ok(&["up"]);
    // (arguments, exit code, message)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["monitor", "--endpoint", "no-such-pod"],
            3,
            "no endpoint named no-such-pod",
        ),
        (
            vec!["monitor", "--type", "everything"],
            2,
            "invalid value 'everything'",
        ),
        (
            vec!["metrics", "--listen", "localhost"],
            2,
            "invalid value 'localhost'",
        ),
        // An address the node does not have.
        (
            vec!["metrics", "--listen", "198.51.100.7:9662"],
            1,
            "cannot serve metrics on 198.51.100.7:9662",
        ),
    ];
    for (args, code, expect) in cases {
        let before = node.snapshot();
        let out = node.vethbpf(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {expect:?} in {stderr}");
        assert_eq!(node.snapshot(), before, "{args:?} changed the node");
    }
    for args in [&["monitor"][..], &["metrics"]] {
        let out = as_nobody(&node, args);
        assert_eq!(out.status.code(), Some(1), "{args:?} as nobody");
    }
    // No listener was left behind by any of them.
    let text = node.ok(&["metrics"]);
    assert!(text.contains("vethbpf_monitor_listening 0"), "{text}");
}
