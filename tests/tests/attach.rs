//! How `from_pod` is attached to pods' host veths: a clsact qdisc and a cls_bpf
//! filter by default (`up --pod-attach tc`), a pinned TCX link per pod with
//! `--pod-attach tcx`. Each: pods talk, `status` reads what runs on every host
//! veth from the kernel, `reconcile` repairs a missing, stale or foreign
//! attachment, `up --replace` swaps the program in place, deletes leave nothing.

use std::process::Output;

use vethbpf_tests::TestNode;

fn up(node: &TestNode, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["up"];
    a.extend_from_slice(args);
    node.json(&a)
}

fn host(p: &serde_json::Value) -> String {
    p["host_veth"].as_str().expect("host_veth").to_string()
}

fn ip(p: &serde_json::Value) -> String {
    p["ip"].as_str().expect("ip").to_string()
}

/// The `state` of `host`'s attachment in `status -o json`.
fn attach_state(node: &TestNode, host: &str) -> String {
    let st = node.json(&["status"]);
    st["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .find(|a| a["host_veth"] == host)
        .and_then(|a| a["state"].as_str())
        .unwrap_or_else(|| panic!("no attachment of {host} in {st}"))
        .to_string()
}

/// The `what` of each repair in a reconcile report, with its endpoint.
fn repaired(r: &serde_json::Value) -> Vec<String> {
    r["repaired"]
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
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pods_get_cls_bpf_filters_by_default_and_up_replace_swaps_them() {
    let node = TestNode::new();
    let loaded = up(&node, &[]);
    assert_eq!(loaded["config"]["pod_attach"], "tc", "{loaded}");
    assert_eq!(
        loaded["config"]["attach_mode"], "tcx",
        "the node's own: TCX {loaded}"
    );
    let old = loaded["program_id"].as_u64().expect("program id");

    let pods: Vec<serde_json::Value> = ["a", "b", "c"].iter().map(|p| node.add(p, &[])).collect();
    for p in &pods {
        assert_eq!(node.filters(&host(p)), [(1, "0x1".to_string(), old)]);
    }
    // No TCX link was pinned: the filters are the attachments.
    assert!(
        std::fs::read_dir(node.bpffs.join("links"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    let st = node.json(&["status"]);
    assert_eq!(st["node"]["pod_attach"], "tc", "{st}");
    for a in st["attachments"].as_array().expect("attachments") {
        assert_eq!(
            (&a["mode"], &a["state"]),
            (&"tc".into(), &"ok".into()),
            "{st}"
        );
        assert_eq!(a["program_id"], old, "{st}");
        assert!(a["link_id"].is_null(), "{st}");
    }
    let text = node.ok(&["status"]);
    assert!(text.contains("pod attach tc  node attach tcx"), "{text}");
    assert_eq!(node.ping_from_pod("a", &ip(&pods[1]), 2), Some(63));
    let forwarded = |pod: &str| vethbpf_tests::packets(&node.counters(pod), &["forwarded"]);
    let before = forwarded("a");

    let replaced = up(&node, &["--replace"]);
    assert_eq!(replaced["action"], "replaced", "{replaced}");
    // The three pods' filters and the uplink-less node's nothing else.
    assert_eq!(replaced["replaced"], 3, "{replaced}");
    let new = replaced["program_id"].as_u64().expect("program id");
    assert_ne!(new, old, "a new program was loaded");
    for p in &pods {
        // The same single filter, now running the new program.
        assert_eq!(node.filters(&host(p)), [(1, "0x1".to_string(), new)]);
        assert_eq!(attach_state(&node, &host(p)), "ok");
        // Still with the endpoint id as classid (a swapped cls_bpf filter keeps
        // only what the swap gives it): from_pod's way to the pod's slot.
        let id = p["id"].as_u64().expect("id");
        let shown = node.node_must("tc", &["filter", "show", "dev", &host(p), "ingress"]);
        assert!(shown.contains(&format!("flowid :{id:x} ")), "{shown}");
    }
    // Traffic takes the new program, and the maps (counters included) were kept.
    assert_eq!(node.ping_from_pod("a", &ip(&pods[2]), 2), Some(63));
    assert_eq!(node.ping_from_pod("c", &ip(&pods[1]), 2), Some(63));
    assert!(forwarded("a") >= before + 2, "counters kept and moving");
    let text = node.ok(&["up", "--replace"]);
    assert!(
        text.contains("program replaced on 3 attachment(s) (pods: cls_bpf filters, in place; node: TCX links, atomically)"),
        "{text}"
    );

    // A pod's delete takes its qdisc and filter with its veth; down leaves nothing.
    node.ok(&["endpoint", "del", &node.pod("c")]);
    let qdiscs = node.node_must("tc", &["qdisc", "show"]);
    assert!(!qdiscs.contains(&host(&pods[2])), "{qdiscs}");
    node.ok(&["down"]);
    assert!(!node.state.exists());
    let qdiscs = node.node_must("tc", &["qdisc", "show"]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

/// A filter that runs another program (an old one, a hand's), and someone else's
/// filter in vethbpf's place, are found by `status` and repaired by `reconcile`.
#[test]
fn reconcile_repairs_a_filter_with_another_program_or_of_another_kind() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let program = node.pod_program_id();
    let uplink_prog = node.bpffs.join("progs").join("from_uplink");
    let uplink_prog = uplink_prog.to_str().expect("path");

    // Another program in vethbpf's filter: tc swaps it in place.
    node.node_must(
        "tc",
        &[
            "filter",
            "replace",
            "dev",
            &host(&a),
            "ingress",
            "pref",
            "1",
            "handle",
            "1",
            "protocol",
            "all",
            "bpf",
            "object-pinned",
            uplink_prog,
            "direct-action",
        ],
    );
    let stale = node.filters(&host(&a));
    assert_eq!(stale.len(), 1);
    assert_ne!(stale[0].2, program, "the filter runs from_uplink now");
    assert_eq!(attach_state(&node, &host(&a)), "stale");
    assert_eq!(
        node.ping_from_pod("a", &ip(&b), 1),
        None,
        "from_uplink does not forward pods"
    );

    // Someone else's classifier at vethbpf's priority.
    node.node_must(
        "tc",
        &["filter", "del", "dev", &host(&b), "ingress", "pref", "1"],
    );
    node.node_must(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            &host(&b),
            "ingress",
            "pref",
            "1",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
        ],
    );
    assert_eq!(attach_state(&node, &host(&b)), "foreign");
    let text = node.ok(&["status"]);
    assert!(
        text.contains("2 endpoint(s) do not run the pinned program"),
        "{text}"
    );

    let r = node.json(&["reconcile"]);
    let mut fixes = repaired(&r);
    fixes.sort();
    assert_eq!(
        fixes,
        [
            format!(
                "{} program attachment (its filter ran program {}, not {program})",
                node.pod("a"),
                stale[0].2
            ),
            format!(
                "{} program attachment (a u32 filter held its place)",
                node.pod("b")
            ),
        ],
        "{r}"
    );
    for p in [&a, &b] {
        assert_eq!(node.filters(&host(p)), [(1, "0x1".to_string(), program)]);
        assert_eq!(attach_state(&node, &host(p)), "ok");
    }
    // Traffic resumes. A pod whose gateway neighbour entry failed while its veth
    // ran no from_pod (nobody answered its ARP) resolves it again first, which can
    // cost a packet.
    let resumes = |from: &str, to: &str| (0..3).find_map(|_| node.ping_from_pod(from, to, 2));
    assert_eq!(resumes("a", &ip(&b)), Some(63));
    assert_eq!(resumes("b", &ip(&a)), Some(63));
    let again = node.json(&["reconcile"]);
    assert!(repaired(&again).is_empty(), "{again}");
}

/// `--pod-attach tcx`: a pinned TCX link per pod, end to end.
#[test]
fn a_node_with_pod_attach_tcx_pins_a_link_per_pod() {
    let node = TestNode::new();
    let loaded = up(&node, &["--pod-attach", "tcx"]);
    assert_eq!(loaded["config"]["pod_attach"], "tcx", "{loaded}");
    let program = loaded["program_id"].as_u64().expect("program id");
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let pin = |p: &serde_json::Value| node.bpffs.join("links").join(host(p));
    for p in [&a, &b] {
        assert!(pin(p).exists(), "{} pinned", host(p));
        assert!(
            node.filters(&host(p)).is_empty(),
            "no cls_bpf filter on {}",
            host(p)
        );
    }
    assert_eq!(node.ping_from_pod("a", &ip(&b), 2), Some(63));
    let st = node.json(&["status"]);
    for at in st["attachments"].as_array().expect("attachments") {
        assert_eq!(
            (&at["mode"], &at["state"]),
            (&"tcx".into(), &"ok".into()),
            "{st}"
        );
        assert_eq!(at["program_id"], program, "{st}");
        assert!(at["link_id"].as_u64().is_some(), "{st}");
    }

    // Settings are kept: another pod attach mode is refused, none keeps this one.
    let out = node.vethbpf(&["up", "--pod-attach", "tc"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--pod-attach tcx"),
        "{}",
        stderr(&out)
    );
    assert_eq!(up(&node, &[])["action"], "unchanged");

    // A's link unpinned: the program leaves its veth; reconcile attaches it again.
    std::fs::remove_file(pin(&a)).expect("unpin");
    assert_eq!(attach_state(&node, &host(&a)), "missing");
    let r = node.json(&["reconcile"]);
    assert_eq!(
        repaired(&r),
        [format!("{} program attachment", node.pod("a"))],
        "{r}"
    );
    assert!(pin(&a).exists());
    assert_eq!(node.ping_from_pod("a", &ip(&b), 2), Some(63));

    let replaced = up(&node, &["--replace"]);
    assert_eq!(replaced["replaced"], 2, "{replaced}");
    assert_eq!(attach_state(&node, &host(&a)), "ok");
    assert_eq!(node.ping_from_pod("b", &ip(&a), 2), Some(63));

    // A lost state file rebuilt from the kernel finds the pods' links: TCX again.
    std::fs::write(node.state.join("state.json"), b"garbage").expect("break the state");
    let rebuilt = node.json(&["reconcile", "--from-kernel"]);
    assert_eq!(
        rebuilt["rebuilt"].as_array().map(Vec::len),
        Some(2),
        "{rebuilt}"
    );
    assert!(repaired(&rebuilt).is_empty(), "{rebuilt}");
    assert_eq!(node.json(&["status"])["node"]["pod_attach"], "tcx");

    node.ok(&["endpoint", "del", &node.pod("a")]);
    assert!(!pin(&a).exists(), "a's link pin is gone");
    node.ok(&["down"]);
    assert!(
        !node.bpffs.exists()
            || std::fs::read_dir(&node.bpffs)
                .map(|d| d.count() == 0)
                .unwrap_or(true)
    );
}

/// Without TCX (forced on this kernel, as on kernels before 6.6) pods and the
/// node's own attach points both get filters, and `--pod-attach tcx` is refused.
#[test]
fn without_tcx_everything_gets_filters_and_tcx_is_refused() {
    let node = TestNode::new();
    let run = |args: &[&str]| {
        node.command(args)
            .env("VETHBPF_TEST_ATTACH_MODE", "tc")
            .output()
            .expect("run vethbpf")
    };
    let out = run(&["up", "--pod-attach", "tcx"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs TCX links"), "{}", stderr(&out));
    assert!(!node.state.join("state.json").exists(), "nothing changed");
    let out = run(&["-o", "json", "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let loaded: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (
            &loaded["config"]["attach_mode"],
            &loaded["config"]["pod_attach"]
        ),
        (&"tc".into(), &"tc".into()),
        "{loaded}"
    );
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    assert_eq!(node.ping_from_pod("a", &ip(&b), 2), Some(63));
    assert_eq!(attach_state(&node, &host(&a)), "ok");
    node.ok(&["down"]);
}
