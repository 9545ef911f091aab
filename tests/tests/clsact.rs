//! The netlink (clsact + cls_bpf) attachment that kernels without TCX (< 6.6) get,
//! forced on this TCX kernel with the test-only `VETHBPF_TEST_ATTACH_MODE=netlink`:
//! pods talk through it, and `up --replace` swaps the program of every endpoint's
//! filter in place (one filter per host veth, running the new program), as it
//! swaps TCX links.

use vethbpf_tests::{TestNode, must};

/// The cls_bpf filters on tc ingress of `host_veth` in the node: (pref, handle,
/// program id) of each filter that has a program.
fn filters(node: &TestNode, host_veth: &str) -> Vec<(u64, String, u64)> {
    let out = must(
        "tc",
        [
            "-n",
            node.netns.as_str(),
            "-j",
            "filter",
            "show",
            "dev",
            host_veth,
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

fn up(node: &TestNode, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-o", "json", "up"];
    a.extend_from_slice(args);
    let out = node
        .command(&a)
        .env("VETHBPF_TEST_ATTACH_MODE", "netlink")
        .output()
        .expect("run vethbpf up");
    assert!(
        out.status.success(),
        "up {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("up JSON")
}

#[test]
fn up_replace_swaps_the_program_of_every_cls_bpf_filter() {
    let node = TestNode::new();
    let loaded = up(&node, &[]);
    assert_eq!(loaded["config"]["attach_mode"], "netlink", "{loaded}");
    let old = loaded["program_id"].as_u64().expect("program id");

    let pods: Vec<serde_json::Value> = ["a", "b", "c"].iter().map(|p| node.add(p, &[])).collect();
    let host = |p: &serde_json::Value| p["host_veth"].as_str().expect("host_veth").to_string();
    let ip = |p: &serde_json::Value| p["ip"].as_str().expect("ip").to_string();
    for p in &pods {
        assert_eq!(filters(&node, &host(p)), [(1, "0x1".to_string(), old)]);
    }
    // No TCX link was pinned: the filters are the attachments.
    assert!(
        std::fs::read_dir(node.bpffs.join("links"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    assert_eq!(node.ping_from_pod("a", &ip(&pods[1]), 2), Some(63));
    let forwarded = |pod: &str| vethbpf_tests::packets(&node.counters(pod), &["forwarded"]);
    let before = forwarded("a");

    let replaced = up(&node, &["--replace"]);
    assert_eq!(replaced["action"], "replaced", "{replaced}");
    assert_eq!(replaced["replaced"], 3, "{replaced}");
    let new = replaced["program_id"].as_u64().expect("program id");
    assert_ne!(new, old, "a new program was loaded");
    for p in &pods {
        // The same single filter, now running the new program.
        assert_eq!(filters(&node, &host(p)), [(1, "0x1".to_string(), new)]);
    }
    let status = node.json(&["status"]);
    assert_eq!(status["programs"][0]["id"], new, "{status}");

    // Traffic takes the new program, and the maps (counters included) were kept.
    assert_eq!(node.ping_from_pod("a", &ip(&pods[2]), 2), Some(63));
    assert_eq!(node.ping_from_pod("c", &ip(&pods[1]), 2), Some(63));
    assert!(forwarded("a") >= before + 2, "counters kept and moving");

    // The table output says what happened.
    let out = node
        .command(&["up", "--replace"])
        .env("VETHBPF_TEST_ATTACH_MODE", "netlink")
        .output()
        .expect("run vethbpf up --replace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("program replaced on 3 attachment(s) (cls_bpf filters, in place)"),
        "{text}"
    );
    node.ok(&["down"]);
    assert!(!node.state.exists());
}
