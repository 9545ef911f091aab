//! Transactions and crash recovery in real namespaces: every step of `endpoint add`
//! and `endpoint del` made to fail, and made to crash, through the test-only
//! `VETHBPF_FAULT` hook; SIGKILL at random moments; `reconcile` repairing damage
//! done by hand; a corrupt state file rebuilt with `reconcile --from-kernel`.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::time::{Duration, Instant};

use vethbpf::fault::{ADD_POINTS, DEL_POINTS};
use vethbpf_tests::{Rng, Snapshot, TestNode};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs vethbpf with `VETHBPF_FAULT=spec`.
fn with_fault(node: &TestNode, spec: &str, args: &[&str]) -> Output {
    node.command(args)
        .env("VETHBPF_FAULT", spec)
        .output()
        .expect("run vethbpf")
}

fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    assert_eq!(before, after, "{what}: the node changed");
}

/// A namespace of the test's own, for `endpoint add --netns`.
fn make_netns(node: &TestNode, name: &str) -> String {
    let ns = node.pod(name);
    vethbpf_tests::must("ip", ["netns", "add", &ns]);
    ns
}

fn ns_links(ns: &str) -> String {
    let out = TestNode::in_ns(ns, "ip", &["-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_failing_add_step_leaves_the_node_as_it_was() {
    // Dual stack: every step, the IPv6 ones included, is reached.
    let node = TestNode::dual();
    let a = node.add("a", &[]);
    let a_ip = a["ip"].as_str().expect("ip").to_string();
    let ext = make_netns(&node, "ext");
    let ext_before = ns_links(&ext);
    let before = node.snapshot();
    let b = node.pod("b");
    let mut tried = 0;
    for point in ADD_POINTS.iter().filter(|p| **p != "add.done") {
        for netns in [None, Some(ext.as_str())] {
            if netns.is_some() && *point == "add.netns" {
                continue; // an existing namespace is not created
            }
            let mut args = vec!["endpoint", "add", b.as_str()];
            if let Some(ns) = netns {
                args.extend(["--netns", ns]);
            }
            let out = with_fault(&node, point, &args);
            assert!(!out.status.success(), "add with {point} failing succeeded");
            let msg = stderr(&out);
            assert!(
                msg.contains(&format!("injected fault at {point}")),
                "{point}: {msg}"
            );
            assert_same(
                &before,
                &node.snapshot(),
                &format!("add failing at {point}"),
            );
            assert_eq!(ns_links(&ext), ext_before, "{point}: --netns namespace");
            tried += 1;
        }
    }
    assert!(tried >= 2 * ADD_POINTS.len() - 4, "{tried} cases");
    // The endpoint that was there all along still works, and the name is free.
    assert_eq!(node.ping_from_node(&a_ip), Some(64));
    node.add("b", &[]);
    assert_eq!(node.ping_from_pod("b", &a_ip, 1), Some(63));
}

#[test]
fn every_failing_del_step_is_undone_or_finished_by_the_next_command() {
    // Dual stack: every step, the IPv6 ones included, is reached.
    let node = TestNode::dual();
    let a_ip = node.add("a", &[])["ip"].as_str().expect("ip").to_string();
    let without_b = node.snapshot();
    let b = node.pod("b");
    // Up to the veth's deletion a failing del is undone; after it, it is finished.
    let reversible = ["del.intent", "del.route-map", "del.link"];
    for point in DEL_POINTS {
        let b_ip = node.add("b", &[])["ip"].as_str().expect("ip").to_string();
        let with_b = node.snapshot();
        let out = with_fault(&node, point, &["endpoint", "del", &b]);
        if *point == "del.done" {
            // Fails only after the commit: the del succeeded.
            assert!(out.status.success(), "{point}: {}", stderr(&out));
            assert!(
                node.snapshot().journal,
                "{point}: journal left for the next command"
            );
        } else {
            assert!(!out.status.success(), "del with {point} failing succeeded");
            let msg = stderr(&out);
            assert!(
                msg.contains(&format!("injected fault at {point}")),
                "{point}: {msg}"
            );
            if reversible.contains(point) {
                assert_same(
                    &with_b,
                    &node.snapshot(),
                    &format!("del failing at {point}"),
                );
                assert_eq!(node.ping_from_pod("b", &a_ip, 1), Some(63), "{point}");
                node.ok(&["endpoint", "del", &b]);
                assert_same(&without_b, &node.snapshot(), &format!("{point}, del again"));
                continue;
            }
            assert!(msg.contains("finishes it"), "{point}: {msg}");
            let after = node.snapshot();
            assert!(after.journal, "{point}: the journal stays");
            assert!(
                after.state.as_deref().is_some_and(|s| s.contains(&b)),
                "{point}"
            );
        }
        // The next command, whatever it is, finishes the delete before its own work.
        let list = node.json(&["endpoint", "list"]);
        assert!(
            list.as_array()
                .expect("list")
                .iter()
                .all(|e| e["name"] != b.as_str()),
            "{point}: {list}"
        );
        assert_same(
            &without_b,
            &node.snapshot(),
            &format!("del failing at {point}, then list"),
        );
        assert_eq!(
            node.ping_from_node(&b_ip),
            None,
            "{point}: {b_ip} unreachable"
        );
    }
    assert_eq!(node.ping_from_node(&a_ip), Some(64));
}

#[test]
fn a_crash_at_every_point_is_settled_by_the_next_command() {
    // Dual stack: every step, the IPv6 ones included, is reached.
    let node = TestNode::dual();
    let a_ip = node.add("a", &[])["ip"].as_str().expect("ip").to_string();
    let without_b = node.snapshot();
    let b = node.pod("b");
    // Each crash is followed by a different command, to show that any of them
    // settles it.
    let next: [&[&str]; 3] = [&["endpoint", "list"], &["status"], &["up"]];
    for (i, point) in ADD_POINTS.iter().enumerate() {
        let out = with_fault(&node, &format!("{point}:crash"), &["endpoint", "add", &b]);
        assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
        node.ok(next[i % next.len()]);
        let after = node.snapshot();
        assert!(!after.journal, "{point}");
        if *point == "add.done" {
            // Died after its commit: the endpoint exists and works.
            assert_eq!(node.ping_from_pod("b", &a_ip, 1), Some(63), "{point}");
            node.ok(&["endpoint", "del", &b]);
        }
        assert_same(
            &without_b,
            &node.snapshot(),
            &format!("add crashed at {point}"),
        );
    }
    for (i, point) in DEL_POINTS.iter().enumerate() {
        node.add("b", &[]);
        let out = with_fault(&node, &format!("{point}:crash"), &["endpoint", "del", &b]);
        assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
        // Running the same del again is the most natural next command: it
        // succeeds (finishing the first one), whatever point the first died at.
        if i % 2 == 0 {
            node.ok(&["endpoint", "del", &b]);
        } else {
            node.ok(next[i % next.len()]);
        }
        assert_same(
            &without_b,
            &node.snapshot(),
            &format!("del crashed at {point}"),
        );
    }
    assert_eq!(node.ping_from_node(&a_ip), Some(64));
}

/// Checks, from the kernel and the files alone (not through vethbpf), that state,
/// maps, pins, links, routes and namespaces describe the same endpoints.
fn assert_consistent(node: &TestNode, context: &str) -> Vec<serde_json::Value> {
    let snap = node.snapshot();
    assert!(!snap.journal, "{context}: journal left");
    let state: serde_json::Value =
        serde_json::from_str(snap.state.as_deref().expect("state file")).expect("state JSON");
    let records: Vec<serde_json::Value> = state["endpoints"]
        .as_object()
        .expect("endpoints")
        .values()
        .cloned()
        .collect();
    let s = |r: &serde_json::Value, k: &str| r[k].as_str().expect(k).to_string();
    let hosts: BTreeSet<String> = records.iter().map(|r| s(r, "host_veth")).collect();
    let vethbpf_links: BTreeSet<String> = snap
        .links
        .iter()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| vethbpf::state::ident::is_derived_name(n))
        .collect();
    assert_eq!(vethbpf_links, hosts, "{context}: links vs records");
    // Pods get cls_bpf filters (the default): no pod link is pinned, and each host
    // veth has one filter, at vethbpf's place, running the pinned program.
    let pins: Vec<&String> = snap.pins.iter().filter(|p| p.contains("/links/")).collect();
    assert!(pins.is_empty(), "{context}: pinned links: {pins:?}");
    let program = node.pod_program_id();
    for host in &hosts {
        assert_eq!(
            node.filters(host),
            [(1, "0x1".to_string(), program)],
            "{context}: the filter of {host}"
        );
    }
    // One /32 per endpoint, and the pod CIDR's own entry.
    assert_eq!(
        snap.routes_map.len(),
        records.len() + 1,
        "{context}: ROUTES"
    );
    assert_eq!(
        snap.endpoints_map.len(),
        records.len(),
        "{context}: ENDPOINTS"
    );
    for r in &records {
        let ip = s(r, "ip");
        let ifindex = r["host_ifindex"].as_u64().expect("ifindex");
        assert!(
            snap.endpoints_map
                .iter()
                .any(|e| e.contains(&format!("\"key\":{ifindex}"))
                    || e.contains(&format!("\"key\":[\"{:#04x}\"", ifindex & 0xff))),
            "{context}: ENDPOINTS has no entry for {ifindex}: {:?}",
            snap.endpoints_map
        );
        assert!(
            snap.routes
                .iter()
                .any(|l| l.starts_with(&format!("{ip} dev {} ", s(r, "host_veth")))),
            "{context}: node route to {ip}"
        );
    }
    let made: BTreeSet<String> = records
        .iter()
        .filter(|r| r["netns_created"] == true)
        .map(|r| s(r, "name"))
        .collect();
    let pods: BTreeSet<String> = snap
        .netns
        .iter()
        .filter(|n| **n != node.netns && !n.ends_with("-ext"))
        .cloned()
        .collect();
    assert_eq!(pods, made, "{context}: namespaces vs records");
    records
}

#[test]
fn sigkill_at_random_moments_never_leaves_the_node_broken() {
    const RUNS: usize = 60;
    let seed = std::env::var("VETHBPF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (VETHBPF_TEST_SEED to repeat)");
    let mut rng = Rng(seed);
    let node = TestNode::up();
    let keep_ip = node.add("keep", &[])["ip"]
        .as_str()
        .expect("ip")
        .to_string();

    // How long an add and a del take here at the fastest, to spread the kills
    // over them (one slow run would put most kills after the end).
    let (mut add_time, mut del_time) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        node.add("probe", &[]);
        add_time = add_time.min(t.elapsed());
        let t = Instant::now();
        node.ok(&["endpoint", "del", &node.pod("probe")]);
        del_time = del_time.min(t.elapsed());
    }
    eprintln!("add {add_time:?}, del {del_time:?}");

    let names: Vec<String> = (0..4).map(|i| node.pod(&format!("r{i}"))).collect();
    let (mut killed, mut settled, mut finished) = (0, 0, 0);
    for run in 0..RUNS {
        let name = &names[rng.below(names.len())];
        let exists = node
            .snapshot()
            .state
            .is_some_and(|s| s.contains(&format!("\"name\": \"{name}\"")));
        let (verb, span) = if exists {
            ("del", del_time)
        } else {
            ("add", add_time)
        };
        let delay = span.mul_f64((rng.next_u64() % 1000) as f64 / 1000.0 * 1.2);
        let mut child = node
            .command(&["endpoint", verb, name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn vethbpf");
        std::thread::sleep(delay);
        // Our own child, by pid.
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if status.signal() == Some(9) {
            killed += 1;
        } else {
            finished += 1;
        }
        // Every other run is settled by `reconcile`, the others by `endpoint list`.
        let report = if run % 2 == 0 {
            Some(node.json(&["reconcile"]))
        } else {
            node.json(&["endpoint", "list"]);
            None
        };
        if report
            .as_ref()
            .is_some_and(|r| r["pending"].as_array().is_some_and(|p| !p.is_empty()))
        {
            settled += 1;
        }
        let records =
            assert_consistent(&node, &format!("run {run}: {verb} {name} after {delay:?}"));
        // What exists works: reachable from the pod that was there all along.
        for r in &records {
            let ip = r["ip"].as_str().expect("ip");
            if ip != keep_ip {
                assert_eq!(
                    node.ping_from_pod("keep", ip, 1),
                    Some(63),
                    "run {run}: {} at {ip}",
                    r["name"]
                );
            }
        }
        if let Some(r) = report {
            assert!(
                r["removed_links"].as_array().is_some_and(Vec::is_empty)
                    && r["removed_route_entries"]
                        .as_array()
                        .is_some_and(Vec::is_empty)
                    && r["removed_endpoint_entries"]
                        .as_array()
                        .is_some_and(Vec::is_empty)
                    && r["removed_pins"].as_array().is_some_and(Vec::is_empty),
                "run {run}: the journal alone should account for every leftover: {r}"
            );
        }
    }
    eprintln!(
        "{RUNS} runs: {killed} killed mid-command, {finished} finished first; reconcile settled {settled} journals"
    );
    assert!(
        killed >= RUNS / 2,
        "most kills must land mid-command: {killed}"
    );
    assert!(settled >= 3, "some kills must land mid-change: {settled}");
}

#[test]
fn reconcile_repairs_damage_and_removes_what_no_endpoint_owns() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let c = node.add("c", &[]);
    let ip = |e: &serde_json::Value| e["ip"].as_str().expect("ip").to_string();
    let host = |e: &serde_json::Value| e["host_veth"].as_str().expect("host").to_string();
    let healthy = node.snapshot();

    // Damage: a's filter deleted by hand (the program leaves its veth), b's route
    // entry and node route deleted, c's namespace deleted (its veth goes with it),
    // and a veth pair with vethbpf's names that no endpoint owns.
    node.node_must("tc", &["filter", "del", "dev", &host(&a), "ingress"]);
    assert!(node.filters(&host(&a)).is_empty());
    let status = node.json(&["status"]);
    let state_of = |st: &serde_json::Value, h: &str| {
        st["attachments"]
            .as_array()
            .expect("attachments")
            .iter()
            .find(|x| x["host_veth"] == h)
            .map(|x| x["state"].clone())
    };
    assert_eq!(
        state_of(&status, &host(&a)),
        Some("missing".into()),
        "{status}"
    );
    assert_eq!(state_of(&status, &host(&b)), Some("ok".into()), "{status}");
    let b_ip: std::net::Ipv4Addr = ip(&b).parse().expect("ip");
    let mut key = vec![
        "key".to_string(),
        "32".into(),
        "0".into(),
        "0".into(),
        "0".into(),
    ];
    key.extend(b_ip.octets().iter().map(u8::to_string));
    let routes_map = node.bpffs.join("maps/ROUTES");
    let mut args = vec![
        "map".to_string(),
        "delete".into(),
        "pinned".into(),
        routes_map.display().to_string(),
    ];
    args.extend(key);
    vethbpf_tests::must("bpftool", &args);
    node.node_must("ip", &["route", "del", &format!("{}/32", ip(&b))]);
    vethbpf_tests::must("ip", ["netns", "del", &node.pod("c")]);
    node.node_must(
        "ip",
        &[
            "link",
            "add",
            "vb0123456789abc",
            "type",
            "veth",
            "peer",
            "name",
            "vp0123456789abc",
        ],
    );
    assert_eq!(node.ping_from_pod("a", &ip(&b), 1), None, "damage done");

    let r = node.json(&["reconcile"]);
    let fixes = |k: &str| -> Vec<String> {
        r[k].as_array()
            .expect(k)
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["endpoint"].as_str().unwrap_or(""),
                    f["what"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let name = |p: &str| node.pod(p);
    let mut repaired = fixes("repaired");
    repaired.sort();
    let mut want = vec![
        format!("{} program attachment", name("a")),
        format!("{} node route", name("b")),
        format!("{} route map entry", name("b")),
    ];
    want.sort();
    assert_eq!(repaired, want, "{r}");
    // Its veth goes with the namespace, but the kernel frees a namespace
    // asynchronously: either reason is right.
    let removed = fixes("removed_endpoints");
    assert!(
        removed == [format!("{} its host veth is gone", name("c"))]
            || removed == [format!("{} its namespace is gone", name("c"))],
        "{r}"
    );
    let mut links: Vec<&str> = r["removed_links"]
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    links.sort();
    // Deleting either end deletes the pair; the dump order decides which.
    assert!(
        links == ["vb0123456789abc"] || links == ["vp0123456789abc"],
        "{r}"
    );
    let left = node.node_must("ip", &["-o", "link", "show"]);
    assert!(!left.contains("0123456789abc"), "{left}");

    // Working again, and agreeing. A's gateway neighbour entry failed while its veth
    // had no filter (nobody answered its ARP): resolving it again can cost a packet.
    let resumes = |from: &str, to: &str| (0..3).find_map(|_| node.ping_from_pod(from, to, 2));
    assert_eq!(resumes("a", &ip(&b)), Some(63));
    assert_eq!(resumes("b", &ip(&a)), Some(63));
    assert_eq!(node.ping_from_node(&ip(&c)), None);
    let records = assert_consistent(&node, "after reconcile");
    assert_eq!(records.len(), 2);
    // A second run has nothing to do.
    let again = node.json(&["reconcile"]);
    assert!(
        again["repaired"].as_array().is_some_and(Vec::is_empty),
        "{again}"
    );
    assert!(
        again["removed_links"].as_array().is_some_and(Vec::is_empty),
        "{again}"
    );
    let _ = healthy;
}

#[test]
fn a_corrupt_state_file_is_a_clear_error_and_from_kernel_rebuilds_it() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let ext = make_netns(&node, "ext");
    let b = node.add("b", &["--netns", &ext, "--ifname", "net1"]);
    let state_path = node.state.join("state.json");
    let logical = || -> serde_json::Value {
        serde_json::from_str(&node.snapshot().state.expect("state")).expect("json")
    };
    let good = logical();
    let text = std::fs::read(&state_path).expect("state");

    // The endpoints are in the log after the snapshot `up` wrote: a bad line
    // there is as much a corrupt state as a bad snapshot.
    let log_path = node.state.join("state.log");
    let log = std::fs::read(&log_path).expect("the adds are in the log");
    assert!(log.ends_with(b"\n"), "one line per commit");
    for (what, path, bytes) in [
        ("truncated", &state_path, text[..text.len() / 2].to_vec()),
        ("garbage", &state_path, b"\x00\x01not json at all".to_vec()),
        ("empty", &state_path, Vec::new()),
        (
            "bad log line",
            &log_path,
            [&b"{\"seq\":1,\"put\":7}\n"[..], &log].concat(),
        ),
    ] {
        std::fs::write(&state_path, &text).expect("write");
        std::fs::write(&log_path, &log).expect("write");
        std::fs::write(path, &bytes).expect("write");
        let before = node.snapshot();
        for args in [
            &["endpoint", "list"][..],
            &["endpoint", "add", &node.pod("x")],
            &["endpoint", "del", &node.pod("a")],
            &["status"],
            &["reconcile"],
        ] {
            let out = node.vethbpf(args);
            assert_eq!(out.status.code(), Some(1), "{what} {args:?}");
            let msg = stderr(&out);
            assert!(
                msg.contains("is corrupt") && msg.contains("vethbpf reconcile --from-kernel"),
                "{what} {args:?}: {msg}"
            );
            assert_same(
                &before,
                &node.snapshot(),
                &format!("{what} state, {args:?}"),
            );
        }
    }

    let r = node.json(&["reconcile", "--from-kernel"]);
    let mut rebuilt: Vec<&str> = r["rebuilt"]
        .as_array()
        .expect("rebuilt")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    rebuilt.sort();
    assert_eq!(rebuilt, [node.pod("a"), node.pod("b")], "{r}");
    assert_eq!(
        logical(),
        good,
        "the rebuilt state is the state that was lost"
    );
    assert!(
        node.state.join("state.json.corrupt").exists()
            && node.state.join("state.log.corrupt").exists(),
        "the bad files are kept"
    );

    // A readable file is not thrown away.
    let out = node.vethbpf(&["reconcile", "--from-kernel"]);
    assert!(stderr(&out).contains("is readable"), "{}", stderr(&out));

    let ip = |e: &serde_json::Value| e["ip"].as_str().expect("ip").to_string();
    assert_eq!(node.ping_from_pod("a", &ip(&b), 1), Some(63));
    node.ok(&["endpoint", "del", &node.pod("b")]);
    assert_eq!(
        ns_links(&ext).lines().count(),
        1,
        "only lo left in the --netns namespace"
    );
    assert_consistent(&node, "after rebuild and del");
    let _ = a;
}

/// `bpftool map delete` of the ROUTES6 entry of `ip`/128 (LPM key: prefix length,
/// little endian, then the address).
fn delete_route6(node: &TestNode, ip: std::net::Ipv6Addr) {
    let path = node.bpffs.join("maps/ROUTES6");
    let mut args = vec![
        "map".to_string(),
        "delete".into(),
        "pinned".into(),
        path.display().to_string(),
        "key".into(),
    ];
    args.extend(["128", "0", "0", "0"].map(String::from));
    args.extend(ip.octets().iter().map(u8::to_string));
    vethbpf_tests::must("bpftool", &args);
}

#[test]
fn reconcile_repairs_ipv6_damage_and_from_kernel_rebuilds_ipv6_endpoints() {
    let node = TestNode::dual();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let ip6 = |e: &serde_json::Value| e["ip6"].as_str().expect("ip6").to_string();
    let host = |e: &serde_json::Value| e["host_veth"].as_str().expect("host").to_string();
    let state_path = node.state.join("state.json");
    // The state as vethbpf reads it: the snapshot and the endpoint log after it.
    let logical = || -> serde_json::Value {
        serde_json::from_str(&node.snapshot().state.expect("state")).expect("json")
    };
    let good = logical();

    // Damage: a's IPv6 endpoint entry and its host veth's gateway address gone, b's
    // IPv6 route entry and node route gone, and a route entry nobody owns.
    let a_ifindex = a["host_ifindex"].as_u64().expect("ifindex") as u32;
    let endpoints6 = node.bpffs.join("maps/ENDPOINTS6");
    let mut args = vec![
        "map".to_string(),
        "delete".into(),
        "pinned".into(),
        endpoints6.display().to_string(),
        "key".into(),
    ];
    args.extend(a_ifindex.to_le_bytes().iter().map(u8::to_string));
    vethbpf_tests::must("bpftool", &args);
    node.node_must(
        "ip",
        &[
            "-6",
            "addr",
            "del",
            &format!("{}/64", vethbpf_tests::GATEWAY6),
            "dev",
            &host(&a),
        ],
    );
    delete_route6(&node, ip6(&b).parse().expect("ip6"));
    node.node_must("ip", &["-6", "route", "del", &format!("{}/128", ip6(&b))]);
    let routes6 = node.bpffs.join("maps/ROUTES6");
    let mut args = vec![
        "map".to_string(),
        "update".into(),
        "pinned".into(),
        routes6.display().to_string(),
        "key".into(),
    ];
    args.extend(["128", "0", "0", "0"].map(String::from));
    let orphan: std::net::Ipv6Addr = "fd00:10:244::99".parse().expect("ip6");
    args.extend(orphan.octets().iter().map(u8::to_string));
    args.push("value".into());
    args.extend(
        [1u32, 7, 9]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain([2, 0, 0, 0, 0, 9, 0, 0])
            .map(|b| b.to_string()),
    );
    vethbpf_tests::must("bpftool", &args);
    assert_eq!(node.ping_from_pod("a", &ip6(&b), 1), None, "damage done");

    let r = node.json(&["reconcile"]);
    let mut repaired: Vec<String> = r["repaired"]
        .as_array()
        .expect("repaired")
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["endpoint"].as_str().unwrap_or(""),
                f["what"].as_str().unwrap_or("")
            )
        })
        .collect();
    repaired.sort();
    let mut want = vec![
        format!("{} IPv6 endpoint map entry", node.pod("a")),
        format!("{} host veth gateway address", node.pod("a")),
        format!("{} IPv6 node route", node.pod("b")),
        format!("{} IPv6 route map entry", node.pod("b")),
    ];
    want.sort();
    assert_eq!(repaired, want, "{r}");
    assert_eq!(
        r["removed_route_entries"],
        serde_json::json!(["fd00:10:244::99/128"]),
        "{r}"
    );
    assert_eq!(node.ping_from_pod("a", &ip6(&b), 1), Some(63));
    assert_eq!(node.ping_from_pod("b", &ip6(&a), 1), Some(63));
    assert_eq!(node.ping_from_node(&ip6(&a)), Some(64));
    assert!(!node.json(&["reconcile"]).to_string().contains("IPv6"));

    // The state file lost: rebuilt from the kernel with both pod CIDRs, IPv6
    // addresses included.
    std::fs::write(&state_path, b"garbage").expect("write");
    let r = node.json(&[
        "reconcile",
        "--from-kernel",
        "--pod-cidr",
        vethbpf_tests::POD_CIDR,
        "--pod-cidr",
        vethbpf_tests::POD_CIDR6,
    ]);
    assert_eq!(r["rebuilt"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(
        logical(),
        good,
        "the rebuilt state is the state that was lost"
    );
    // Without the IPv6 CIDR the rebuild is refused, naming the address.
    std::fs::write(&state_path, b"garbage").expect("write");
    let out = node.vethbpf(&["reconcile", "--from-kernel"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&ip6(&a)) || stderr(&out).contains(&ip6(&b)),
        "{}",
        stderr(&out)
    );
    node.ok(&[
        "reconcile",
        "--from-kernel",
        "--pod-cidr",
        vethbpf_tests::POD_CIDR,
        "--pod-cidr",
        vethbpf_tests::POD_CIDR6,
    ]);
    node.ok(&["down"]);
}

/// A vethbpf process held at a fault point with `:stop`; SIGKILLed when dropped,
/// so a failing test leaves no stopped process behind.
struct Held(Option<std::process::Child>);

impl Held {
    fn spawn(node: &TestNode, spec: &str, args: &[&str]) -> Held {
        let child = node
            .command(args)
            .env("VETHBPF_FAULT", spec)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn vethbpf");
        let held = Held(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while held.state() != Some('T') {
            assert!(Instant::now() < deadline, "{spec}: never reached its stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        held
    }

    fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).expect("child")
    }

    /// The process state letter from /proc (`T`: stopped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which we have not waited for.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn resume(mut self) -> Output {
        self.signal(libc::SIGCONT);
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("wait")
    }

    fn kill(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGKILL);
        self.0.take().expect("child").wait().expect("wait")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs vethbpf and waits at most 20 s for it (killed after that: the test fails
/// rather than hangs).
fn within(node: &TestNode, args: &[&str]) -> Output {
    let mut child = node
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vethbpf");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vethbpf {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

fn names(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn a_del_deleting_its_veth_holds_up_no_other_add_or_del_and_list_waits_for_it() {
    let node = TestNode::up();
    let a_ip = node.add("a", &[])["ip"].as_str().expect("ip").to_string();
    let b_ip = node.add("b", &[])["ip"].as_str().expect("ip").to_string();
    node.add("c", &[]);
    let (b, c, d) = (node.pod("b"), node.pod("c"), node.pod("d"));
    // b's del stopped just before its veth's deletion, with the state lock let go.
    let held = Held::spawn(&node, "del.link:stop", &["endpoint", "del", &b]);
    // Other endpoints come and go meanwhile; b keeps its record, its address and
    // its name.
    // (Bounded: were they to wait for b's del, they would wait forever.)
    let add_d = within(&node, &["-o", "json", "endpoint", "add", &d]);
    assert!(add_d.status.success(), "add d: {}", stderr(&add_d));
    let d_json: serde_json::Value = serde_json::from_slice(&add_d.stdout).expect("json");
    let d_ip = d_json["ip"].as_str().expect("ip").to_string();
    assert_ne!(
        d_ip, b_ip,
        "b's address is not given out while b's del runs"
    );
    let del_c = within(&node, &["endpoint", "del", &c]);
    assert!(del_c.status.success(), "del c: {}", stderr(&del_c));
    let again = within(&node, &["endpoint", "add", &b]);
    assert!(!again.status.success(), "b's name is still taken");
    // Any other command waits until b's del is done, and then sees it done.
    let mut list = node
        .command(&["-o", "json", "endpoint", "list"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn list");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        list.try_wait().expect("try_wait").is_none(),
        "endpoint list waits for the del in progress"
    );
    let out = held.resume();
    assert!(out.status.success(), "held del: {}", stderr(&out));
    let list = list.wait_with_output().expect("list");
    assert!(list.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(
        names(&listed),
        BTreeSet::from([node.pod("a"), d.clone()]),
        "{listed}"
    );
    assert!(!node.snapshot().journal, "no journal left");
    assert_eq!(node.ping_from_pod("d", &a_ip, 1), Some(63));
    assert_eq!(node.ping_from_node(&b_ip), None, "b is gone");
}

#[test]
fn a_del_killed_while_its_veth_goes_is_finished_by_the_next_command() {
    let node = TestNode::up();
    node.add("a", &[]);
    let without_b = node.snapshot();
    let b = node.pod("b");
    for next in [&["endpoint", "add"][..], &["status"], &["endpoint", "del"]] {
        let b_ip = node.add("b", &[])["ip"].as_str().expect("ip").to_string();
        let held = Held::spawn(&node, "del.link:stop", &["endpoint", "del", &b]);
        assert!(node.snapshot().journal, "the del's journal is there");
        let status = held.kill();
        assert_eq!(status.signal(), Some(9));
        // The next command, whatever it is, finishes b's del (an add of another
        // endpoint too, although adds do not wait for live deletions).
        let other = node.pod("other");
        match next {
            ["endpoint", "add"] => {
                node.ok(&["endpoint", "add", &other]);
                node.ok(&["endpoint", "del", &other]);
            }
            ["endpoint", "del"] => {
                node.ok(&["endpoint", "del", &b]);
            }
            args => {
                node.ok(args);
            }
        }
        assert_same(
            &without_b,
            &node.snapshot(),
            &format!("{next:?} after the kill"),
        );
        assert_eq!(node.ping_from_node(&b_ip), None, "{next:?}: b is gone");
    }
}
