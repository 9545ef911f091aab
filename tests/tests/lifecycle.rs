//! The datapath outlives its manager and survives upgrades; concurrent commands are
//! serialised, not corrupted.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vethbpf_tests::{TestNode, packets};

fn status_program_id(node: &TestNode) -> u64 {
    node.json(&["status"])["programs"][0]["id"]
        .as_u64()
        .expect("program id")
}

#[test]
fn replace_and_rerun_up_keep_a_running_tcp_stream_and_the_maps() {
    let node = TestNode::up();
    node.add("a", &[]);
    let b: Ipv4Addr = node.add("b", &[])["ip"]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ip");
    let ns = |p: &str| PathBuf::from(format!("/run/netns/{}", node.pod(p)));

    // An echo server in b and a client in a that keeps a stream going.
    let listener = vethbpf::kernel::netns::run_in(&ns("b"), move || {
        TcpListener::bind(SocketAddr::from((b, 0)))
    })
    .expect("netns b")
    .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 16384];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            s.write_all(&buf[..n])?;
        }
    });
    let stream = vethbpf::kernel::netns::run_in(&ns("a"), move || {
        TcpStream::connect_timeout(&SocketAddr::from((b, port)), Duration::from_secs(5))
    })
    .expect("netns a")
    .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut s = stream;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let chunk = [0x5au8; 8192];
            let mut back = [0u8; 8192];
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&chunk)?;
                s.read_exact(&mut back)?;
                assert_eq!(back, chunk);
                rounds += 1;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(rounds)
        })
    };

    let routes_before = node.json(&["status"])["maps"].clone();
    let first_id = status_program_id(&node);
    let start = Instant::now();
    // No vethbpf process runs while the stream flows; then upgrades happen under it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.json(&["up", "--replace"])["action"], "replaced");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node.json(&["up"])["action"], "unchanged");
    assert_eq!(node.json(&["up", "--replace"])["action"], "replaced");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds = client
        .join()
        .expect("client thread")
        .expect("the stream must survive without a reset");
    server.join().expect("server thread").expect("server side");
    assert!(
        rounds > 10,
        "the stream moved data ({rounds} rounds in {:?})",
        start.elapsed()
    );

    let status = node.json(&["status"]);
    assert_eq!(status["maps"], routes_before, "map entries kept");
    let new_id = status_program_id(&node);
    assert_ne!(new_id, first_id, "a new program was loaded");
    for a in status["attachments"].as_array().expect("attachments") {
        assert_eq!(a["program_id"].as_u64(), Some(new_id), "{a}");
    }
    let c = node.counters("a");
    assert!(
        packets(&c, &["forwarded"]) > rounds,
        "counters kept across replace: {c}"
    );
}

#[test]
fn concurrent_adds_and_dels_all_succeed_with_distinct_addresses() {
    const N: usize = 50;
    let node = TestNode::up();
    let spawn_all = |verb: &str| {
        let commands: Vec<Vec<String>> = (0..N)
            .map(|i| {
                ["-o", "json", "endpoint", verb, &node.pod(&format!("c{i}"))]
                    .map(String::from)
                    .to_vec()
            })
            .collect();
        spawn_together(&node, &commands)
    };

    let outs = spawn_all("add");
    let mut ips = std::collections::BTreeSet::new();
    for o in &outs {
        assert!(
            o.status.success(),
            "concurrent add failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        ips.insert(v["ip"].as_str().expect("ip").to_string());
    }
    assert_eq!(ips.len(), N, "every endpoint got its own address");
    let status = node.json(&["status"]);
    let entries = |name: &str| vethbpf_tests::map_entries(&status, name);
    // One /32 per endpoint and the pod CIDR's own entry.
    assert_eq!(entries("ROUTES"), N as u64 + 1);
    assert_eq!(entries("ENDPOINTS"), N as u64);
    assert_eq!(status["attachments"].as_array().map(Vec::len), Some(N));
    let links = node.node_must("ip", &["-o", "link", "show", "type", "veth"]);
    assert_eq!(links.lines().count(), N);

    for o in spawn_all("del") {
        assert!(
            o.status.success(),
            "concurrent del failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let status = node.json(&["status"]);
    assert_eq!(status["endpoints"], 0);
    let links = node.node_must("ip", &["-o", "link", "show", "type", "veth"]);
    assert!(links.trim().is_empty(), "{links}");
    assert!(
        vethbpf_tests::netns_list()
            .iter()
            .all(|n| !n.starts_with(&node.pod("c"))),
        "every pod namespace removed"
    );
}

/// Spawns every command at once and waits for all of them.
fn spawn_together(node: &TestNode, commands: &[Vec<String>]) -> Vec<std::process::Output> {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.command(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn vethbpf")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect()
}

#[test]
fn up_and_down_racing_endpoint_changes_are_serialized() {
    let node = TestNode::new();
    let clean = node.snapshot();
    node.ok(&["up"]);
    let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Round 1: 20 adds with `up` and `up --replace` in between: all succeed.
    let mut round: Vec<Vec<String>> = (0..20)
        .map(|i| cmd(&["endpoint", "add", &node.pod(&format!("u{i}"))]))
        .collect();
    for i in 0..6 {
        let up: &[&str] = if i % 2 == 0 {
            &["up"]
        } else {
            &["up", "--replace"]
        };
        round.insert(i * 4, cmd(up));
    }
    for (args, out) in round.iter().zip(spawn_together(&node, &round)) {
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = node.json(&["status"]);
    assert_eq!(status["endpoints"], 20);
    assert_eq!(vethbpf_tests::map_entries(&status, "ROUTES"), 20 + 1);
    assert_eq!(vethbpf_tests::map_entries(&status, "ENDPOINTS"), 20);
    let program = status_program_id(&node);
    let attachments = status["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 20);
    for a in attachments {
        assert_eq!(
            a["program_id"].as_u64(),
            Some(program),
            "every link runs the newest program: {a}"
        );
    }
    let first = node.pod("u0");
    let second = node.pod("u1");
    let ip_of = |name: &str| {
        node.json(&["endpoint", "list"])
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == name).cloned())
            .and_then(|e| e["ip"].as_str().map(str::to_string))
            .expect("listed")
    };
    assert_eq!(node.ping_from_pod("u0", &ip_of(&second), 1), Some(63));

    // Round 2: dels, new adds and one `down`, at once. Each command either ran
    // before `down` (and `down` removed what it made) or after it (and says the
    // node is not up); none fails otherwise and nothing is left.
    let mut round: Vec<Vec<String>> = (0..10)
        .flat_map(|i| {
            [
                cmd(&["endpoint", "del", &node.pod(&format!("u{i}"))]),
                cmd(&["endpoint", "add", &node.pod(&format!("v{i}"))]),
            ]
        })
        .collect();
    round.insert(10, cmd(&["down"]));
    for (args, out) in round.iter().zip(spawn_together(&node, &round)) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("the node is not up"),
            "{args:?}: {stderr}"
        );
    }
    // If an add slipped in after `down` it failed; the node is down.
    let status = node.json(&["status"]);
    assert_eq!(status["up"], false, "{status}");
    assert_eq!(node.snapshot(), clean, "everything gone, as before up");
    assert!(!node.state.exists(), "state dir gone");
    let _ = first;
}
