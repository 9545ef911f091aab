//! vethbpf as a CNI plugin, driven exactly as libcni (the reference runtimes'
//! library) drives a plugin: the protocol parameters in `CNI_*` environment
//! variables, the request configuration (the plugin object with `cniVersion` and
//! `name`) on stdin, the ADD result cached and given back as `prevResult` to CHECK and
//! DEL, and removed from the cache when DEL succeeds.
//!
//! Every test has its own node namespace (the plugin runs in it through `nsenter`,
//! as a runtime in that namespace would run it), its own state and bpffs dirs (in the
//! network configuration: `stateDir`, `bpffsDir`) and pod namespaces made by the test
//! in the role of the runtime; [`TestNode`]'s Drop removes all of them.
//!
//! `ptp_side_by_side` gives Debian's `ptp` plugin the same calls and prints both
//! results; the README lists the differences it asserts.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use vethbpf_tests::{TestNode, must, vethbpf_bin};

const VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
const GATEWAY: &str = "169.254.1.1";

/// What a plugin answered.
#[derive(Debug)]
struct Reply {
    ok: bool,
    /// The exit status (shown when a test fails).
    #[allow(dead_code)]
    status: std::process::ExitStatus,
    stdout: String,
    /// Shown when a test fails (the plugin's log).
    #[allow(dead_code)]
    stderr: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin printed no JSON ({e}): {self:?}"))
    }
    /// The error code of a failed call, checking that the error object has every
    /// field of the specification (Debian's ptp omits `cniVersion`: see
    /// [`Reply::foreign_code`]).
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {self:?}");
        let v = self.json();
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(v.get(k).is_some(), "error object without {k}: {v}");
        }
        v["code"].as_u64().expect("numeric code")
    }
    /// The error code of another plugin's failed call.
    fn foreign_code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {self:?}");
        self.json()["code"].as_u64().expect("numeric code")
    }
    fn success(&self) -> &Self {
        assert!(self.ok, "plugin call failed: {self:?}");
        self
    }
}

/// Runs `exe` in the network namespace `node_ns` with exactly the given `CNI_*`
/// variables (the rest of the environment inherited, as libcni does) and `stdin`.
fn exec_plugin(exe: &Path, node_ns: &str, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node_ns}"))
        .arg("--")
        .arg(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") || k.starts_with("VETHBPF_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin output");
    Reply {
        ok: out.status.success(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A runtime in the manner of libcni, for one network configuration.
struct Runtime {
    exe: PathBuf,
    node_ns: String,
    /// The plugin object with `cniVersion` and `name` (libcni's request config).
    conf: Value,
    cni_path: String,
    /// ADD results by (container ID, ifname), as libcni caches them.
    cache: HashMap<(String, String), Value>,
}

impl Runtime {
    fn new(exe: &Path, node_ns: &str, conf: Value) -> Runtime {
        Runtime {
            exe: exe.to_path_buf(),
            node_ns: node_ns.to_string(),
            conf,
            cni_path: DEBIAN_CNI_DIR.to_string(),
            cache: HashMap::new(),
        }
    }

    fn request(&self, prev: Option<&Value>) -> Vec<u8> {
        let mut c = self.conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        serde_json::to_vec(&c).expect("encode")
    }

    fn call(&self, command: &str, cid: &str, netns: &str, ifname: &str, stdin: &[u8]) -> Reply {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", "IgnoreUnknown=1"),
            ("CNI_PATH", self.cni_path.as_str()),
        ];
        if !netns.is_empty() {
            env.push(("CNI_NETNS", netns));
        }
        exec_plugin(&self.exe, &self.node_ns, &env, stdin)
    }

    fn add(&mut self, cid: &str, netns: &str, ifname: &str) -> Reply {
        let r = self.call("ADD", cid, netns, ifname, &self.request(None));
        if r.ok {
            self.cache.insert((cid.into(), ifname.into()), r.json());
        }
        r
    }

    fn check(&self, cid: &str, netns: &str, ifname: &str) -> Reply {
        let prev = self.cache.get(&(cid.into(), ifname.into()));
        self.call("CHECK", cid, netns, ifname, &self.request(prev))
    }

    fn del(&mut self, cid: &str, netns: &str, ifname: &str) -> Reply {
        let key = (cid.to_string(), ifname.to_string());
        // libcni gives the cached result to DEL for 0.4.0 and later.
        let r = self.call(
            "DEL",
            cid,
            netns,
            ifname,
            &self.request(self.cache.get(&key)),
        );
        if r.ok {
            self.cache.remove(&key);
        }
        r
    }

    fn gc(&self, valid: &[(&str, &str)]) -> Reply {
        let mut c = self.conf.clone();
        c["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect();
        let stdin = serde_json::to_vec(&c).expect("encode");
        exec_plugin(
            &self.exe,
            &self.node_ns,
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", &self.cni_path)],
            &stdin,
        )
    }

    fn status(&self) -> Reply {
        exec_plugin(
            &self.exe,
            &self.node_ns,
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &self.cni_path)],
            &self.request(None),
        )
    }
}

/// The vethbpf network of a test node.
fn vethbpf_conf(node: &TestNode, version: &str, pod_cidr: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "vbt-net",
        "type": "vethbpf",
        "stateDir": node.state,
        "bpffsDir": node.bpffs,
        "podCidr": pod_cidr,
    })
}

/// A pod namespace made by "the runtime"; returns its path (CNI_NETNS).
fn pod_netns(node: &TestNode, name: &str) -> String {
    let ns = node.pod(name);
    must("ip", ["netns", "add", &ns]);
    format!("/run/netns/{ns}")
}

fn endpoints(node: &TestNode) -> Vec<Value> {
    node.json(&["endpoint", "list"])
        .as_array()
        .expect("endpoint list")
        .clone()
}

fn endpoint_by_ip(node: &TestNode, ip: &str) -> Option<Value> {
    endpoints(node).into_iter().find(|e| e["ip"] == ip)
}

fn node_links(node: &TestNode) -> String {
    node.node_must("ip", &["-o", "link", "show"])
}

/// The address of the container interface in a result (without the prefix).
fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .split('/')
        .next()
        .expect("ip")
        .to_string()
}

/// The shape every vethbpf ADD result has, for `version`.
fn assert_result_shape(r: &Value, version: &str, ifname: &str, netns: &str, pod: &str) {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "{r}");
    // Host side: the veth with the gateway MAC and no sandbox.
    assert!(
        ifs[0]["name"].as_str().expect("name").starts_with("vb"),
        "{r}"
    );
    assert_eq!(ifs[0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert!(ifs[0].get("sandbox").is_none(), "{r}");
    // Container side: CNI_IFNAME, its real MAC, sandbox = CNI_NETNS.
    assert_eq!(ifs[1]["name"], ifname);
    assert_eq!(ifs[1]["sandbox"], netns);
    let link = must("ip", ["-n", pod, "-o", "link", "show", "dev", ifname]);
    let mac = ifs[1]["mac"].as_str().expect("mac");
    assert!(link.contains(mac), "{mac} not in {link}");
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r}");
    assert!(
        ips[0]["address"]
            .as_str()
            .expect("address")
            .ends_with("/32")
    );
    assert_eq!(ips[0]["gateway"], GATEWAY);
    assert_eq!(ips[0]["interface"], 1);
    if version == "0.4.0" {
        assert_eq!(ips[0]["version"], "4", "0.4.0 results carry ips[].version");
    } else {
        assert!(
            ips[0].get("version").is_none(),
            "{version} has no ips[].version"
        );
    }
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]),
        "{r}"
    );
    assert_eq!(r["dns"], json!({}));
}

/// Every step a runtime takes, for one cniVersion.
fn lifecycle(version: &str) {
    let node = TestNode::new(); // not up: the first ADD brings the node up
    let exe = vethbpf_bin();
    let mut rt = Runtime::new(
        exe,
        &node.netns,
        vethbpf_conf(&node, version, "10.244.0.0/24"),
    );
    let (na, nb, nc) = (
        pod_netns(&node, "a"),
        pod_netns(&node, "b"),
        pod_netns(&node, "c"),
    );
    let (pa, pb, pc) = (node.pod("a"), node.pod("b"), node.pod("c"));

    // VERSION.
    let v = exec_plugin(
        exe,
        &node.netns,
        &[("CNI_COMMAND", "VERSION")],
        json!({"cniVersion": version}).to_string().as_bytes(),
    );
    assert_eq!(
        v.success().json(),
        json!({"cniVersion": version, "supportedVersions": VERSIONS})
    );

    // ADD two containers.
    let ra = rt.add("ctr-a", &na, "eth0").success().json();
    assert_result_shape(&ra, version, "eth0", &na, &pa);
    let rb = rt.add("ctr-b", &nb, "eth0").success().json();
    assert_result_shape(&rb, version, "eth0", &nb, &pb);
    let (ipa, ipb) = (result_ip(&ra), result_ip(&rb));
    assert_ne!(ipa, ipb);
    // The CLI sees the same endpoints: one state, one datapath.
    let ea = endpoint_by_ip(&node, &ipa).expect("endpoint of ctr-a");
    assert_eq!(ea["name"], "ctr-a-eth0");
    assert_eq!(ea["host_veth"], ra["interfaces"][0]["name"]);

    // Traffic takes the eBPF path: one hop (TTL 63), counters move, no forwarding.
    let ping = |ns: &str, dst: &str| {
        TestNode::in_ns(ns, "ping", &["-c", "2", "-i", "0.2", "-W", "2", dst])
            .status
            .success()
    };
    assert!(ping(&pa, &ipb), "ping ctr-a -> ctr-b");
    assert!(ping(&pb, &ipa), "ping ctr-b -> ctr-a");
    assert!(node.ping_from_node(&ipa).is_some(), "node -> ctr-a");
    let ea = endpoint_by_ip(&node, &ipa).expect("endpoint of ctr-a");
    assert!(
        ea["counters"]["forwarded"]["packets"].as_u64() >= Some(2),
        "{ea}"
    );
    assert_eq!(
        node.node_must("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0"
    );

    // CHECK with the cached result passes; it sees a kernel change; and passes again
    // once the change is undone.
    rt.check("ctr-a", &na, "eth0").success();
    let host_a = ra["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    node.node_must("ip", &["route", "del", &format!("{ipa}/32")]);
    let bad = rt.check("ctr-a", &na, "eth0");
    assert_eq!(bad.code(), 104, "{bad:?}");
    assert!(bad.stdout.contains("no route"), "{bad:?}");
    node.node_must(
        "ip",
        &[
            "route",
            "add",
            &format!("{ipa}/32"),
            "dev",
            &host_a,
            "scope",
            "link",
        ],
    );
    rt.check("ctr-a", &na, "eth0").success();
    // The program's filter is checked too: deleted by hand, CHECK names it;
    // `vethbpf reconcile` puts it back.
    node.node_must("tc", &["filter", "del", "dev", &host_a, "ingress"]);
    let bad = rt.check("ctr-a", &na, "eth0");
    assert_eq!(bad.code(), 104, "{bad:?}");
    assert!(
        bad.stdout
            .contains(&format!("the tc attachment of {host_a} is missing")),
        "{bad:?}"
    );
    node.ok(&["reconcile"]);
    rt.check("ctr-a", &na, "eth0").success();

    // ADD of an interface name that exists in the container: an error, nothing
    // changed. Same attachment twice, and another container ID in b's namespace.
    let before = node.snapshot();
    let dup = rt.add("ctr-b", &nb, "eth0");
    assert_eq!(dup.code(), 101, "{dup:?}");
    let clash = rt.add("ctr-x", &nb, "eth0");
    assert_eq!(clash.code(), 101, "{clash:?}");
    assert!(clash.stdout.contains("already exists"), "{clash:?}");
    assert_eq!(node.snapshot(), before);

    // DEL, then DEL again: both succeed, and nothing of ctr-a is left.
    rt.del("ctr-a", &na, "eth0").success();
    assert!(!node_links(&node).contains(&host_a));
    assert!(endpoint_by_ip(&node, &ipa).is_none());
    assert!(!node.bpffs.join("links").join(&host_a).exists());
    rt.del("ctr-a", &na, "eth0").success();
    // DEL without CNI_NETNS, for an attachment vethbpf never saw: success.
    rt.del("ctr-never", "", "eth0").success();

    // DEL with the namespace gone (the runtime removed it first).
    let rc = rt.add("ctr-c", &nc, "eth0").success().json();
    let host_c = rc["interfaces"][0]["name"]
        .as_str()
        .expect("host")
        .to_string();
    must("ip", ["netns", "del", &pc]);
    rt.del("ctr-c", &nc, "eth0").success();
    assert!(endpoint_by_ip(&node, &result_ip(&rc)).is_none());
    assert!(!node_links(&node).contains(&host_c));

    // STATUS and GC are 1.1.0 commands.
    if version == "1.1.0" {
        rt.status().success();
    } else {
        assert_eq!(rt.status().code(), 1);
        assert_eq!(rt.gc(&[]).code(), 1);
    }

    rt.del("ctr-b", &nb, "eth0").success();
    assert!(endpoints(&node).is_empty());
    let links = node_links(&node);
    assert!(!links.contains(": vb"), "host veths left: {links}");
}

#[test]
fn lifecycle_cni_0_4_0() {
    lifecycle("0.4.0");
}

#[test]
fn lifecycle_cni_1_0_0() {
    lifecycle("1.0.0");
}

#[test]
fn lifecycle_cni_1_1_0() {
    lifecycle("1.1.0");
}

/// Missing environment (4), unsupported version (1), JSON that is not (6), bad
/// configuration (7): the error object on stdout, a non-zero exit, and nothing made.
#[test]
fn bad_calls_get_the_spec_error_codes() {
    let node = TestNode::new();
    let exe = vethbpf_bin();
    let netns = pod_netns(&node, "a");
    for version in VERSIONS {
        let conf = vethbpf_conf(&node, version, "10.244.0.0/24");
        let good = serde_json::to_vec(&conf).expect("encode");
        let add = |env: &[(&str, &str)], stdin: &[u8]| exec_plugin(exe, &node.netns, env, stdin);
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ctr-a"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", DEBIAN_CNI_DIR),
        ];
        // Each required variable missing in turn.
        for skip in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let env: Vec<_> = full.iter().copied().filter(|(k, _)| *k != skip).collect();
            let r = add(&env, &good);
            assert_eq!(r.code(), 4, "{skip}: {r:?}");
            assert!(
                r.json()["msg"].as_str().expect("msg").contains(skip),
                "{r:?}"
            );
            assert_eq!(r.json()["cniVersion"], version);
        }
        // DEL needs no CNI_NETNS, but a container ID.
        let r = add(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")], &good);
        assert_eq!(r.code(), 4, "{r:?}");
        let r = add(&[("CNI_COMMAND", "FROB")], &good);
        assert_eq!(r.code(), 4, "{r:?}");
        let bad_id = [full[0], ("CNI_CONTAINERID", "-x"), full[2], full[3]];
        assert_eq!(add(&bad_id, &good).code(), 4);
        // Broken JSON; JSON that is not a configuration.
        assert_eq!(add(&full, b"{\"cniVersion\": ").code(), 6);
        assert_eq!(add(&full, b"[1, 2]").code(), 6);
        let mut no_name = conf.clone();
        no_name.as_object_mut().expect("object").remove("name");
        assert_eq!(add(&full, no_name.to_string().as_bytes()).code(), 7);
        let mut bad_cidr = conf.clone();
        bad_cidr["podCidr"] = json!("10.244.0.0/99");
        assert_eq!(add(&full, bad_cidr.to_string().as_bytes()).code(), 7);
        // The gateway inside the pod CIDR: refused by `up`, as invalid configuration.
        let mut gw_inside = conf.clone();
        gw_inside["gateway"] = json!("10.244.0.1");
        assert_eq!(add(&full, gw_inside.to_string().as_bytes()).code(), 7);
    }
    // Unknown versions.
    for unknown in ["0.3.1", "2.0.0"] {
        let conf = vethbpf_conf(&node, unknown, "10.244.0.0/24");
        let r = exec_plugin(
            exe,
            &node.netns,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ctr-a"),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.to_string().as_bytes(),
        );
        assert_eq!(r.code(), 1, "{unknown}: {r:?}");
    }
    // Invoked as vethbpf-cni without CNI_COMMAND: the plugin's error, not the CLI.
    let alias_dir = node.dir.join("bin");
    std::fs::create_dir_all(&alias_dir).expect("bin dir");
    let alias = alias_dir.join("vethbpf-cni");
    std::os::unix::fs::symlink(exe, &alias).expect("symlink");
    let r = exec_plugin(&alias, &node.netns, &[], b"{}");
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(r.stdout.contains("CNI_COMMAND"), "{r:?}");
    // None of this made anything: no state, no pins, no links.
    assert!(!node.state.exists(), "state dir made by a refused call");
    assert!(!node.bpffs.exists());
    assert!(!node_links(&node).contains(": vb"));
}

/// IPAM delegated to Debian's host-local through CNI_PATH: its address is used, it
/// is released on DEL and after a failed ADD; for 1.1.0 (which host-local 1.1.1 does
/// not speak) it is called with 1.0.0.
#[test]
fn host_local_ipam_delegation() {
    let host_local = Path::new(DEBIAN_CNI_DIR).join("host-local");
    if !host_local.exists() {
        panic!(
            "{} is missing: install containernetworking-plugins (cargo xtask install-deps)",
            host_local.display()
        );
    }
    for version in VERSIONS {
        let node = TestNode::new();
        let data = node.dir.join("ipam");
        let mut conf = vethbpf_conf(&node, version, "10.244.0.0/24");
        conf["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.100"}]],
            "dataDir": data,
        });
        let mut rt = Runtime::new(vethbpf_bin(), &node.netns, conf);
        let na = pod_netns(&node, "a");
        let nb = pod_netns(&node, "b");
        let ra = rt.add("ctr-a", &na, "eth0").success().json();
        assert_result_shape(&ra, version, "eth0", &na, &node.pod("a"));
        assert_eq!(ra["ips"][0]["address"], "10.244.0.100/32", "{ra}");
        let allocated = data.join("vbt-net").join("10.244.0.100");
        assert!(allocated.exists(), "host-local recorded no allocation");
        rt.check("ctr-a", &na, "eth0").success();

        // A failed ADD (the interface exists) gives its address back.
        let r = rt.add("ctr-x", &na, "eth0");
        assert_eq!(r.code(), 101, "{r:?}");
        assert!(!data.join("vbt-net").join("10.244.0.101").exists());

        let rb = rt.add("ctr-b", &nb, "eth0").success().json();
        // host-local goes round-robin: .101 was handed out (and back) above.
        assert_eq!(rb["ips"][0]["address"], "10.244.0.102/32", "{rb}");
        let pb = node.pod("b");
        assert!(
            TestNode::in_ns(&pb, "ping", &["-c", "1", "-W", "2", "10.244.0.100"])
                .status
                .success()
        );

        rt.del("ctr-a", &na, "eth0").success();
        assert!(!allocated.exists(), "DEL left the host-local allocation");
        rt.del("ctr-a", &na, "eth0").success();
        rt.del("ctr-b", &nb, "eth0").success();
        assert!(endpoints(&node).is_empty());
    }
}

/// The dual-stack part of an ADD result: one address per family on the container
/// interface, each with its gateway, and a default route per family.
fn assert_dual_result(r: &Value, version: &str, v4: &str, v6: &str) {
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{r}");
    let gw6 = vethbpf_tests::GATEWAY6;
    for (ip, want, gw, family) in [(&ips[0], v4, GATEWAY, "4"), (&ips[1], v6, gw6, "6")] {
        assert_eq!(ip["address"], want, "{r}");
        assert_eq!(ip["gateway"], gw, "{r}");
        assert_eq!(ip["interface"], 1, "{r}");
        if version == "0.4.0" {
            assert_eq!(ip["version"], family, "{r}");
        } else {
            assert!(ip.get("version").is_none(), "{r}");
        }
    }
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}, {"dst": "::/0", "gw": gw6}]),
        "{r}"
    );
}

/// Dual stack with the built-in allocator (podCidr and podCidr6), for every
/// cniVersion: both addresses in the result and in the pod, both families work,
/// CHECK passes and notices a missing IPv6 address, DEL removes both.
#[test]
fn dual_stack_add_check_del() {
    for version in VERSIONS {
        let node = TestNode::new();
        let mut conf = vethbpf_conf(&node, version, "10.244.0.0/24");
        conf["podCidr6"] = json!("fd00:10:244::/64");
        let mut rt = Runtime::new(vethbpf_bin(), &node.netns, conf);
        let (na, nb) = (pod_netns(&node, "a"), pod_netns(&node, "b"));
        let ra = rt.add("ctr-a", &na, "eth0").success().json();
        assert_dual_result(&ra, version, "10.244.0.1/32", "fd00:10:244::1/128");
        let rb = rt.add("ctr-b", &nb, "eth0").success().json();
        assert_dual_result(&rb, version, "10.244.0.2/32", "fd00:10:244::2/128");
        let (pa, pb) = (node.pod("a"), node.pod("b"));
        for dst in ["10.244.0.1", "fd00:10:244::1"] {
            let out = TestNode::in_ns(&pb, "ping", &["-c", "1", "-W", "2", dst]);
            assert!(out.status.success(), "{version}: b -> {dst}");
        }
        rt.check("ctr-a", &na, "eth0").success();
        // Take the pod's IPv6 address away: CHECK names it.
        must(
            "ip",
            [
                "-n",
                &pa,
                "-6",
                "addr",
                "del",
                "fd00:10:244::1/128",
                "dev",
                "eth0",
            ],
        );
        let bad = rt.check("ctr-a", &na, "eth0");
        assert!(!bad.ok, "{version}: CHECK passed without the address");
        assert!(
            bad.stdout.contains("lacks the address fd00:10:244::1/128"),
            "{bad:?}"
        );
        rt.del("ctr-a", &na, "eth0").success();
        rt.del("ctr-b", &nb, "eth0").success();
        assert!(endpoints(&node).is_empty());
        let routes = node.node_must("ip", &["-6", "route", "show"]);
        assert!(!routes.contains("fd00:10:244::"), "{version}: {routes}");
        assert_eq!(
            vethbpf_tests::map_entries(&node.json(&["status"]), "ROUTES6"),
            0
        );
    }
}

/// host-local with a range per family: the plugin takes one address of each.
#[test]
fn dual_stack_host_local_ipam_delegation() {
    for version in VERSIONS {
        let node = TestNode::new();
        let data = node.dir.join("ipam");
        let mut conf = vethbpf_conf(&node, version, "10.244.0.0/24");
        conf["podCidr6"] = json!("fd00:10:244::/64");
        conf["ipam"] = json!({
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.100"}],
                [{"subnet": "fd00:10:244::/64", "rangeStart": "fd00:10:244::100"}],
            ],
            "dataDir": data,
        });
        let mut rt = Runtime::new(vethbpf_bin(), &node.netns, conf);
        let (na, nb) = (pod_netns(&node, "a"), pod_netns(&node, "b"));
        let ra = rt.add("ctr-a", &na, "eth0").success().json();
        assert_dual_result(&ra, version, "10.244.0.100/32", "fd00:10:244::100/128");
        let allocated6 = data.join("vbt-net").join("fd00:10:244::100");
        assert!(
            allocated6.exists(),
            "host-local recorded no IPv6 allocation"
        );
        rt.check("ctr-a", &na, "eth0").success();
        rt.add("ctr-b", &nb, "eth0").success();
        let pb = node.pod("b");
        let out = TestNode::in_ns(&pb, "ping", &["-c", "1", "-W", "2", "fd00:10:244::100"]);
        assert!(out.status.success(), "{version}: b -> a over IPv6");
        rt.del("ctr-a", &na, "eth0").success();
        assert!(!allocated6.exists(), "DEL left the IPv6 allocation");
        rt.del("ctr-b", &nb, "eth0").success();
        assert!(endpoints(&node).is_empty());
    }
}

/// GC (1.1.0) removes the attachments of this network that the runtime no longer
/// lists, and nothing else (not the CLI's endpoints).
#[test]
fn gc_removes_attachments_not_listed() {
    let node = TestNode::new();
    let mut rt = Runtime::new(
        vethbpf_bin(),
        &node.netns,
        vethbpf_conf(&node, "1.1.0", "10.244.0.0/24"),
    );
    let na = pod_netns(&node, "a");
    let nb = pod_netns(&node, "b");
    rt.add("ctr-a", &na, "eth0").success();
    rt.add("ctr-b", &nb, "eth0").success();
    // An endpoint of the command line, on the same node.
    node.add("cli", &[]);
    assert_eq!(endpoints(&node).len(), 3);
    // A GC request must name the valid attachments.
    let mut no_list = rt.conf.clone();
    no_list["cniVersion"] = json!("1.1.0");
    let r = exec_plugin(
        vethbpf_bin(),
        &node.netns,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", DEBIAN_CNI_DIR)],
        no_list.to_string().as_bytes(),
    );
    assert_eq!(r.code(), 7, "{r:?}");

    rt.gc(&[("ctr-b", "eth0")]).success();
    let names: Vec<String> = endpoints(&node)
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"ctr-b-eth0".to_string()), "{names:?}");
    assert!(names.contains(&node.pod("cli")), "{names:?}");
    // The removed attachment's DEL still succeeds afterwards.
    rt.del("ctr-a", &na, "eth0").success();
    rt.check("ctr-b", &nb, "eth0").success();
    rt.gc(&[]).success();
    assert_eq!(endpoints(&node).len(), 1);
    rt.status().success();
}

/// Concurrent ADDs and DELs of different containers: every ADD gets its own address
/// and endpoint, every DEL removes its own, nothing is lost.
#[test]
fn concurrent_calls_for_different_containers() {
    const N: usize = 8;
    let node = TestNode::new();
    let conf = vethbpf_conf(&node, "1.0.0", "10.244.0.0/24");
    let nets: Vec<String> = (0..N).map(|i| pod_netns(&node, &format!("p{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = nets
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = conf.clone();
                let node_ns = node.netns.clone();
                s.spawn(move || {
                    let mut rt = Runtime::new(vethbpf_bin(), &node_ns, conf);
                    rt.add(&format!("ctr-{i}"), ns, "eth0").success().json()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ips: Vec<String> = results.iter().map(result_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "addresses given twice: {ips:?}");
    assert_eq!(endpoints(&node).len(), N);
    std::thread::scope(|s| {
        for (i, ns) in nets.iter().enumerate() {
            let conf = conf.clone();
            let node_ns = node.netns.clone();
            s.spawn(move || {
                let mut rt = Runtime::new(vethbpf_bin(), &node_ns, conf);
                rt.del(&format!("ctr-{i}"), ns, "eth0").success();
            });
        }
    });
    assert!(endpoints(&node).is_empty());
    assert!(!node_links(&node).contains(": vb"));
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Debian's ptp plugin and vethbpf, given the same calls, side by side. The shapes
/// agree (the same top-level keys, two interfaces with the host's first and the
/// container's with `sandbox`, `ips[].interface` = 1); the README lists what
/// differs, and this test asserts each listed difference.
#[test]
fn ptp_side_by_side() {
    let ptp = Path::new(DEBIAN_CNI_DIR).join("ptp");
    assert!(
        ptp.exists(),
        "{} is missing: install containernetworking-plugins",
        ptp.display()
    );
    for version in VERSIONS {
        // Each plugin in a node namespace of its own (ptp turns on ip_forward there).
        let vnode = TestNode::new();
        let pnode = TestNode::new();
        let mut vb = Runtime::new(
            vethbpf_bin(),
            &vnode.netns,
            vethbpf_conf(&vnode, version, "10.244.0.0/24"),
        );
        let mut pt = Runtime::new(
            &ptp,
            &pnode.netns,
            json!({
                "cniVersion": version,
                "name": "vbt-net",
                "type": "ptp",
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.244.0.0/24",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": pnode.dir.join("ipam"),
                },
            }),
        );
        let vns = pod_netns(&vnode, "a");
        let pns = pod_netns(&pnode, "a");
        let v = vb.add("ctr-a", &vns, "eth0").success().json();
        let p = pt.add("ctr-a", &pns, "eth0");
        println!(
            "cniVersion {version}\n  vethbpf: {v}\n  ptp:     {}",
            p.stdout.trim()
        );
        if version == "1.1.0" {
            // Debian's plugins (1.1.1) speak spec 1.0.0 at most; their error
            // object has no cniVersion (vethbpf's has).
            assert_eq!(p.foreign_code(), 1, "{p:?}");
            assert!(p.json().get("cniVersion").is_none());
            vb.del("ctr-a", &vns, "eth0").success();
            continue;
        }
        let p = p.success().json();
        // The same shape ...
        assert_eq!(keys(&v), keys(&p), "top-level keys");
        assert_eq!(v["cniVersion"], p["cniVersion"]);
        assert_eq!(v["interfaces"].as_array().map(Vec::len), Some(2));
        assert_eq!(p["interfaces"].as_array().map(Vec::len), Some(2));
        for i in 0..2 {
            assert_eq!(
                keys(&v["interfaces"][i]),
                keys(&p["interfaces"][i]),
                "interface {i}"
            );
        }
        assert_eq!(keys(&v["ips"][0]), keys(&p["ips"][0]), "ips[0] keys");
        assert_eq!(v["ips"][0]["interface"], p["ips"][0]["interface"]);
        assert_eq!(v["interfaces"][1]["sandbox"], vns);
        assert_eq!(p["interfaces"][1]["sandbox"], pns);
        assert_eq!(v["dns"], p["dns"]);
        // ... and the listed differences.
        // 1. The address: vethbpf IP/32, ptp the IPAM subnet's prefix (/24).
        assert!(v["ips"][0]["address"].as_str().expect("a").ends_with("/32"));
        assert!(p["ips"][0]["address"].as_str().expect("a").ends_with("/24"));
        // 2. The gateway: vethbpf the link-local 169.254.1.1, ptp the subnet's .1.
        assert_eq!(v["ips"][0]["gateway"], GATEWAY);
        assert_eq!(p["ips"][0]["gateway"], "10.244.0.1");
        // 3. The host veth's MAC: the same gateway MAC on every vethbpf host veth,
        //    a random one with ptp (which puts the gateway address on it).
        assert_eq!(v["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
        assert_ne!(p["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
        // 4. Routes: vethbpf reports the default route with its gateway; ptp
        //    reports the IPAM routes as given (no gw: "via the ips gateway").
        assert_eq!(v["routes"], json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]));
        assert_eq!(p["routes"], json!([{"dst": "0.0.0.0/0"}]));
        // 5. Host veth names: vb + 13 hex digits of a hash, ptp veth + 8 hex.
        assert!(
            v["interfaces"][0]["name"]
                .as_str()
                .expect("n")
                .starts_with("vb")
        );
        assert!(
            p["interfaces"][0]["name"]
                .as_str()
                .expect("n")
                .starts_with("veth")
        );
        // 6. The node: ptp puts the gateway address on its host veth and turns on
        //    ip_forward; vethbpf leaves both alone.
        let forward = |n: &TestNode| n.node_must("cat", &["/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(forward(&vnode).trim(), "0");
        assert_eq!(forward(&pnode).trim(), "1");
        let host_addrs = |n: &TestNode, r: &Value| {
            n.node_must(
                "ip",
                &[
                    "-o",
                    "-4",
                    "addr",
                    "show",
                    "dev",
                    r["interfaces"][0]["name"].as_str().expect("n"),
                ],
            )
        };
        assert!(host_addrs(&vnode, &v).trim().is_empty());
        assert!(host_addrs(&pnode, &p).contains("10.244.0.1/32"));

        vb.check("ctr-a", &vns, "eth0").success();
        pt.check("ctr-a", &pns, "eth0").success();
        vb.del("ctr-a", &vns, "eth0").success();
        pt.del("ctr-a", &pns, "eth0").success();
        vb.del("ctr-a", &vns, "eth0").success();
        pt.del("ctr-a", &pns, "eth0").success();
    }
}
