//! Simulated clusters for the multi-node tests.
//!
//! An underlay namespace whose bridge `br0` stands in for the physical switch
//! (192.168.77.254/24 on it, where the tests' etcd listens); node namespaces, each a
//! [`TestNode`] with its own state and bpffs dirs, wired to the bridge by a veth whose
//! node end is the node's uplink `eth0` (192.168.77.N/24, default route through
//! it); etcd and agents as child processes ended by pid. Every guard removes what it
//! made even when a test fails.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{TestNode, must, run};

/// The cluster CIDR of every simulated cluster.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 cluster CIDR of every dual-stack simulated cluster.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
/// Where etcd listens (the underlay bridge's address).
pub const UNDERLAY_GW: &str = "192.168.77.254";

static UNDERLAYS: AtomicU32 = AtomicU32::new(0);

/// The underlay namespace with its bridge.
pub struct Underlay {
    pub netns: String,
}

impl Underlay {
    pub fn new() -> Underlay {
        let n = UNDERLAYS.fetch_add(1, Ordering::SeqCst);
        let u = Underlay {
            netns: format!("vbt-{}-ul{n}", std::process::id()),
        };
        must("ip", ["netns", "add", &u.netns]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "br0", "type", "bridge"][..],
            &["addr", "add", &format!("{UNDERLAY_GW}/24"), "dev", "br0"][..],
            &["link", "set", "br0", "up"][..],
        ] {
            let mut a = vec!["-n", u.netns.as_str()];
            a.extend_from_slice(args);
            must("ip", a);
        }
        u
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.netns.as_str()];
        a.extend_from_slice(args);
        must("ip", a)
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let out = run("ip", ["netns", "del", &self.netns]);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "cannot delete the underlay {}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Nodes on one underlay. Field order matters: nodes (and their `down`) go before
/// the underlay.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub underlay: Underlay,
}

impl Cluster {
    /// `n` nodes wired to a fresh underlay, not yet up.
    pub fn new(n: usize) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            underlay: Underlay::new(),
        };
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    /// Wires one more node; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = TestNode::new();
        let port = format!("n{i}");
        must(
            "ip",
            [
                "link",
                "add",
                &port,
                "netns",
                &self.underlay.netns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ],
        );
        self.underlay
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        let addr = format!("{}/24", Self::node_ip(i));
        for args in [
            // No IPv6 link-local address on the underlay: its DAD would finish at some
            // moment during a test and change the node's snapshot under it.
            &["link", "set", "eth0", "addrgenmode", "none"][..],
            &["addr", "add", addr.as_str(), "dev", "eth0"][..],
            &["link", "set", "eth0", "up"][..],
            &["route", "add", "default", "via", UNDERLAY_GW, "dev", "eth0"][..],
        ] {
            node.node_must("ip", args);
        }
        self.nodes.push(node);
        i
    }

    /// Node `i`'s address on the underlay.
    pub fn node_ip(i: usize) -> String {
        format!("192.168.77.{}", i + 1)
    }

    /// The pod CIDR the static tests give node `i`.
    pub fn pod_cidr(i: usize) -> String {
        format!("10.244.{}.0/24", i + 1)
    }

    /// The IPv6 pod CIDR the static dual-stack tests give node `i`.
    pub fn pod_cidr6(i: usize) -> String {
        format!("fd00:10:244:{}::/64", i + 1)
    }

    /// `vethbpf up` on node `i` in a dual-stack cluster, with the given overlay.
    pub fn up_dual(&self, i: usize, overlay: &str) -> serde_json::Value {
        self.nodes[i].json(&[
            "up",
            "--pod-cidr",
            &Self::pod_cidr(i),
            "--pod-cidr",
            &Self::pod_cidr6(i),
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--overlay",
            overlay,
        ])
    }

    /// Every node learns every other, with both pod CIDRs, with `node add`.
    pub fn connect_static_dual(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            for j in (0..self.nodes.len()).filter(|j| *j != i) {
                node.ok(&[
                    "node",
                    "add",
                    &format!("node{j}"),
                    "--pod-cidr",
                    &Self::pod_cidr(j),
                    "--pod-cidr",
                    &Self::pod_cidr6(j),
                    "--address",
                    &Self::node_ip(j),
                ]);
            }
        }
    }

    /// `vethbpf up` on node `i` in the cluster, with the given overlay.
    pub fn up(&self, i: usize, overlay: &str) -> serde_json::Value {
        self.nodes[i].json(&[
            "up",
            "--pod-cidr",
            &Self::pod_cidr(i),
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--overlay",
            overlay,
        ])
    }

    /// Every node learns every other with `node add`.
    pub fn connect_static(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            for j in (0..self.nodes.len()).filter(|j| *j != i) {
                node.ok(&[
                    "node",
                    "add",
                    &format!("node{j}"),
                    "--pod-cidr",
                    &Self::pod_cidr(j),
                    "--address",
                    &Self::node_ip(j),
                ]);
            }
        }
    }

    /// The namespace path of pod `pod` (short name) on node `i`.
    pub fn pod_path(&self, i: usize, pod: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.nodes[i].pod(pod)))
    }
}

/// Where a pod lives and its address.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub node: usize,
    pub name: &'static str,
    pub ip: Ipv4Addr,
}

/// Waits up to `timeout` for `f` to give `Some`; panics with `what` otherwise.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// etcd on the underlay with a data dir of its own, ended by pid.
pub struct Etcd {
    child: Option<Child>,
    underlay: PathBuf,
    netns: String,
    pub dir: PathBuf,
}

impl Etcd {
    pub fn url() -> String {
        format!("http://{UNDERLAY_GW}:2379")
    }

    /// Starts etcd with a fresh data dir of its own (a missing binary fails the
    /// test) and waits until it answers.
    pub fn start(underlay: &Underlay) -> Etcd {
        let mut e = Etcd {
            child: None,
            underlay: underlay.path(),
            netns: underlay.netns.clone(),
            dir: std::env::temp_dir().join(format!("{}-etcd", underlay.netns)),
        };
        let _ = std::fs::remove_dir_all(&e.dir);
        e.restart();
        e
    }

    /// Starts etcd again on the same data dir (after [`Etcd::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        std::fs::create_dir_all(&self.dir).expect("etcd dir");
        let log = File::create(self.dir.join("etcd.log")).expect("etcd log");
        let client = Self::url();
        let peer = "http://127.0.0.1:2380";
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg("etcd")
            .args(["--name", "vbt", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("vbt={peer}"),
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
        let ul = self.underlay.clone();
        wait_for(Duration::from_secs(20), "etcd to answer", || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "etcd exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                );
            }
            let ul = ul.clone();
            let ready = vethbpf::kernel::netns::run_in(&ul, || {
                let out = std::process::Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &Self::url(), "endpoint", "health"])
                    .output();
                out.is_ok_and(|o| o.status.success())
            })
            .unwrap_or(false);
            ready.then_some(())
        });
    }

    /// Kills etcd (SIGKILL, by pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl get --prefix KEY` from the underlay: keys and values.
    pub fn get_prefix(&self, key: &str) -> Vec<(String, String)> {
        let ul = self.underlay.clone();
        let key = key.to_string();
        let out = vethbpf::kernel::netns::run_in(&ul, move || {
            std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &Self::url(), "get", "--prefix", &key])
                .output()
                .expect("run etcdctl")
        })
        .expect("enter the underlay");
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `vethbpf agent` running in a node's namespace, ended by pid.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent on `node` named `name` with `extra` flags.
    pub fn start(node: &TestNode, name: &str, overlay: &str, extra: &[&str]) -> Agent {
        let log = node.dir.join(format!("agent-{name}-{}.log", now_ms()));
        let mut args = vec![
            "agent",
            "--etcd",
            "http://192.168.77.254:2379",
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--node-name",
            name,
            "--overlay",
            overlay,
            "--lease-ttl",
            "4",
        ];
        args.extend_from_slice(extra);
        let child = node
            .command(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("agent log"))
            .spawn()
            .expect("start vethbpf agent");
        Agent {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL, by pid, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Panics with the agent's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "the agent exited ({status}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A stopped agent must be continued to die cleanly.
        if self.child.is_some() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        }
        self.kill();
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The remote nodes of `node` as `node list -o json` gives them: name -> pod CIDR.
pub fn remote_nodes(node: &TestNode) -> std::collections::BTreeMap<String, String> {
    node.json(&["node", "list"])
        .as_array()
        .expect("node list is an array")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["pod_cidr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The pod CIDR a node is up with, if it is up.
pub fn pod_cidr_of(node: &TestNode) -> Option<String> {
    let out = node.vethbpf(&["-o", "json", "status"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["node"]["pod_cidr"].as_str().map(str::to_string)
}

/// A TCP stream that runs in the background: the client writes a known pattern as
/// fast as it can, the server echoes, the client checks every byte that comes back.
pub struct TcpStreamJob {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64, String>>>,
}

impl TcpStreamJob {
    /// Connects from `client` to `server_ip` in `server` and starts streaming.
    pub fn start(server: &Path, server_ip: Ipv4Addr, client: &Path) -> TcpStreamJob {
        let listener = vethbpf::kernel::netns::run_in(server, move || {
            TcpListener::bind(SocketAddr::from((server_ip, 0)))
        })
        .expect("enter server netns")
        .expect("bind in server netns");
        let port = listener.local_addr().expect("local addr").port();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let stream = vethbpf::kernel::netns::run_in(client, move || {
            TcpStream::connect_timeout(&SocketAddr::from((server_ip, port)), Duration::from_secs(5))
        })
        .expect("enter client netns")
        .expect("connect from client netns");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || stream_until(stream, &stop))
        };
        TcpStreamJob {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops writing, drains the echo, and returns the bytes that made the round
    /// trip intact (an error names the first problem: a stall, a reset, a bad byte).
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().map_or(Err("no stream".into()), |h| {
            h.join().unwrap_or(Err("stream thread panicked".into()))
        })
    }
}

impl Drop for TcpStreamJob {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) % 251) as u8
}

fn stream_until(stream: TcpStream, stop: &AtomicBool) -> Result<u64, String> {
    // A stall of 3 s is an interruption: the test kills things under the stream.
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let writer_stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        let ws = writer_stop.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut off = 0u64;
            let mut chunk = vec![0u8; 16384];
            while !ws.load(Ordering::SeqCst) {
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(off + k as u64);
                }
                w.write_all(&chunk)
                    .map_err(|e| format!("write at {off}: {e}"))?;
                off += chunk.len() as u64;
                sent.store(off, Ordering::SeqCst);
            }
            w.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())
        })
    };
    let mut r = stream;
    let mut got = 0u64;
    let mut buf = vec![0u8; 65536];
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            writer_stop.store(true, Ordering::SeqCst);
        }
        match r.read(&mut buf) {
            Ok(0) => break Ok(got),
            Ok(n) => {
                if let Some(k) = buf[..n]
                    .iter()
                    .enumerate()
                    .position(|(k, b)| *b != pattern(got + k as u64))
                {
                    break Err(format!("byte {} differs", got + k as u64));
                }
                got += n as u64;
            }
            Err(e) => break Err(format!("read after {got} bytes: {e}")),
        }
    };
    writer_stop.store(true, Ordering::SeqCst);
    let w = writer.join().unwrap_or(Err("writer panicked".into()));
    let result = result?;
    w?;
    let sent = sent.load(Ordering::SeqCst);
    if result != sent {
        return Err(format!("sent {sent} bytes, {result} came back"));
    }
    Ok(result)
}

/// A namespace on the underlay that is no node of the cluster: `eth0` on the switch
/// with 192.168.77.50/24, for tests of what a stranger cannot do. Removed when
/// dropped, even when the test fails.
pub struct Stranger {
    pub netns: String,
}

impl Stranger {
    pub fn join(c: &Cluster) -> Stranger {
        let s = Stranger {
            netns: format!("{}stranger", c.nodes[0].prefix),
        };
        must("ip", ["netns", "add", &s.netns]);
        must(
            "ip",
            [
                "link",
                "add",
                "nx",
                "netns",
                &c.underlay.netns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &s.netns,
            ],
        );
        c.underlay.ip(&["link", "set", "nx", "master", "br0", "up"]);
        s.ip(&["link", "set", "lo", "up"]);
        s.ip(&["addr", "add", "192.168.77.50/24", "dev", "eth0"]);
        s.ip(&["link", "set", "eth0", "up"]);
        s
    }

    /// Runs `ip args` in the stranger's namespace; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.netns.as_str()];
        full.extend_from_slice(args);
        must("ip", &full);
    }

    /// Gives the stranger a kernel VXLAN device `vx0` speaking the cluster's VNI and
    /// port to node 0 (192.168.77.1).
    pub fn vxlan_to_node0(&self) {
        self.ip(&[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "1",
            "remote",
            "192.168.77.1",
            "dstport",
            "8472",
            "dev",
            "eth0",
        ]);
        self.ip(&["link", "set", "vx0", "up"]);
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let out = run("ip", ["netns", "del", &self.netns]);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "removing the stranger {}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
