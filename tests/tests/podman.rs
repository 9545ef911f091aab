//! End to end with a real container runtime: Debian's podman (4.3, CNI backend)
//! runs two containers on a vethbpf network; they reach each other and the node
//! through the eBPF path, and `podman rm` leaves nothing behind.
//!
//! Where podman runs. A runtime executes CNI plugins in its own network namespace
//! (SPEC.md: "the runtime must execute the plugin in the runtime's networking
//! domain"). This test runs podman itself under `nsenter --net=<test node ns>`, so
//! podman, the plugins it executes and conmon live in the test's node namespace:
//! the host veths, the /32 routes and the datapath are there, and the machine's
//! root namespace is not touched. Podman makes each container's namespace itself
//! (`/run/netns/netns-<uuid>`), independent of the namespace it runs in.
//!
//! Podman is kept off the machine's own configuration: a private `--root`,
//! `--runroot`, `--tmpdir` and `CONTAINERS_CONF` (network backend `cni`, plugin dir
//! and network config dir of the test's own, cgroupfs, file events), the `vfs`
//! storage driver, and an image made by `podman import` of a busybox-static root
//! file system (no registry). Two things podman 4.3 writes outside that and cannot
//! be told otherwise, libcni's result cache (/var/lib/cni) and the image blob-info
//! cache (/var/lib/containers/cache), are removed afterwards if the test made them.
//!
//! The OCI runtime is the one `cargo xtask install-deps` installs, runc (crun
//! refuses hybrid cgroup v1/v2 hierarchies, and is not installed), named both in
//! containers.conf and with `--runtime`, so the machine's default never matters; the
//! test prints which runtime ran the containers and checks it. A missing podman,
//! runc or busybox-static fails the test. Only `VETHBPF_TEST_NO_PODMAN=1 cargo xtask
//! test`, for a machine that cannot have podman, leaves it out: xtask warns and
//! passes `--skip`, so the summary counts it as filtered out, not passed. CI never
//! sets it (.ci/run refuses to run with it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vethbpf_tests::{CleanupErrors, NODE_IP, TestNode, must, netns_list, vethbpf_bin};

const POD_CIDR: &str = "10.246.0.0/24";
/// The network is dual stack: every container gets an address of each family.
const POD_CIDR6: &str = "fd00:10:246::/64";
/// The OCI runtime: the one xtask/src/deps.rs installs.
const RUNTIME: &str = "runc";
/// Read by `cargo xtask test`, which then passes `--skip` for this test: for a
/// machine that cannot have podman (never in CI).
const OPT_OUT: &str = "VETHBPF_TEST_NO_PODMAN";

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Directories outside the test's own that podman may create; removed afterwards
/// when they did not exist before.
const OUTSIDE: [&str; 2] = ["/var/lib/cni", "/var/lib/containers"];

/// Podman with a private configuration, running in the test node's namespace.
/// Drop removes every container, image and mount it made.
struct Podman {
    dir: PathBuf,
    node_ns: String,
    sandboxes: Vec<String>,
    outside_before: Vec<bool>,
}

impl Podman {
    fn new(node: &TestNode, network: &str) -> Podman {
        let dir = node.dir.join("podman");
        for d in ["rootfs/bin", "plugins", "net.d", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).expect("podman dirs");
        }
        // The plugin: vethbpf under its CNI type name.
        std::os::unix::fs::symlink(vethbpf_bin(), dir.join("plugins/vethbpf")).expect("symlink");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "vethbpf",
                "stateDir": node.state,
                "bpffsDir": node.bpffs,
                "podCidr": POD_CIDR,
                "podCidr6": POD_CIDR6,
            }],
        });
        std::fs::write(
            dir.join("net.d").join(format!("{network}.conflist")),
            serde_json::to_vec_pretty(&conflist).expect("conflist"),
        )
        .expect("write conflist");
        let p = Podman {
            node_ns: node.netns.clone(),
            sandboxes: vec![],
            outside_before: OUTSIDE.iter().map(|d| Path::new(d).exists()).collect(),
            dir,
        };
        p.write_conf();
        p
    }

    fn write_conf(&self) {
        let d = self.dir.display();
        let conf = format!(
            r#"[containers]
# The machine's hard limits may be lower than podman's defaults (1048576 files),
# and raising them needs CAP_SYS_RESOURCE.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/plugins", "/usr/lib/cni"]
network_config_dir = "{d}/net.d"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{d}/tmp"
runtime = "{RUNTIME}"
"#
        );
        std::fs::write(self.dir.join("containers.conf"), conf).expect("containers.conf");
    }

    fn cmd(&self, args: &[&str]) -> Output {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"))
    }

    fn try_cmd(&self, args: &[&str]) -> std::io::Result<Output> {
        let d = &self.dir;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--runtime", RUNTIME]);
        cmd.args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .output()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
    }
}

impl Drop for Podman {
    /// Every step runs; a failed one fails the test unless it is failing already.
    fn drop(&mut self) {
        let mut errors = CleanupErrors::new(format!("podman in {}", self.dir.display()));
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            errors.command(&format!("podman {args:?}"), self.try_cmd(args));
        }
        // Whatever podman left mounted under the test's dir (shm, overlay, netns).
        let prefix = self.dir.display().to_string();
        match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(info) => {
                let mut mounts: Vec<&str> = info
                    .lines()
                    .filter_map(|l| l.split(' ').nth(4))
                    .filter(|m| m.starts_with(&prefix))
                    .collect();
                mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
                for m in mounts {
                    errors.command(
                        &format!("umount {m}"),
                        Command::new("umount").args(["-l", m]).output(),
                    );
                }
            }
            Err(e) => errors.failed("reading /proc/self/mountinfo", e),
        }
        for sb in &self.sandboxes {
            if let Some(name) = sb.strip_prefix("/run/netns/")
                && netns_list().contains(name)
            {
                errors.command(
                    &format!("ip netns del {name}"),
                    Command::new("ip").args(["netns", "del", name]).output(),
                );
            }
        }
        for (d, existed) in OUTSIDE.iter().zip(&self.outside_before) {
            if !existed {
                match std::fs::remove_dir_all(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        errors.failed(&format!("removing {d}"), e)
                    }
                    _ => {}
                }
            }
        }
        errors.finish();
    }
}

/// What this machine lacks for the test, named with the package that has it.
fn missing_tools() -> Vec<String> {
    let mut missing = Vec::new();
    for (tool, package) in [("podman", "podman"), (RUNTIME, RUNTIME)] {
        let out = Command::new(tool).arg("--version").output();
        if !out.is_ok_and(|o| o.status.success()) {
            missing.push(format!("{tool} (Debian package {package})"));
        }
    }
    let ldd = Command::new("ldd").arg("/bin/busybox").output();
    let is_static = ldd.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
            || String::from_utf8_lossy(&o.stderr).contains("not a dynamic")
    });
    if !Path::new("/bin/busybox").exists() || !is_static {
        missing.push("a static /bin/busybox (Debian package busybox-static)".into());
    }
    missing
}

/// A line on stderr that the test harness does not capture: a CI log shows which
/// runtime ran, also when the test passes.
fn say(line: &str) {
    use std::io::Write as _;
    // Nothing to do about a closed stderr; the test's assertions are what count.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The first line of `program --version`.
fn version(program: &str) -> String {
    let out = must(program, ["--version"]);
    out.lines().next().unwrap_or_default().to_string()
}

/// A root file system with busybox-static and its applets, as a tar for `podman
/// import`.
fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "true", "ping", "nc", "printf", "httpd", "sleep", "ip", "cat", "echo", "mkdir",
        "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    let tar = dir.join("rootfs.tar");
    must(
        "tar",
        [
            "-C",
            root.to_str().expect("path"),
            "-cf",
            tar.to_str().expect("path"),
            ".",
        ],
    );
    tar
}

#[test]
fn podman_containers_on_a_vethbpf_network() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "the podman test needs {} (`cargo xtask install-deps` installs them; on a \
         machine that cannot have podman, `{OPT_OUT}=1 cargo xtask test` leaves this \
         test out)",
        missing.join(", ")
    );
    let node = TestNode::new(); // not up: podman's first ADD brings it up
    let network = format!("{}net", node.prefix);
    let mut pm = Podman::new(&node, &network);
    let image = format!("localhost/{}busybox:test", node.prefix);
    let tar = busybox_tar(&pm.dir);
    pm.ok(&["import", tar.to_str().expect("path"), &image]);

    let a = format!("{}a", node.prefix);
    let b = format!("{}b", node.prefix);
    pm.ok(&[
        "run",
        "-d",
        "--name",
        &a,
        "--network",
        &network,
        "--cap-add",
        "NET_RAW",
        &image,
        "sleep",
        "600",
    ]);
    pm.ok(&[
        "run",
        "-d",
        "--name",
        &b,
        "--network",
        &network,
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-b > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let net_field = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let ip_a = pm.inspect(&a, &net_field);
    let ip_b = pm.inspect(&b, &net_field);
    for name in [&a, &b] {
        let sb = pm.inspect(name, "{{.NetworkSettings.SandboxKey}}");
        pm.sandboxes.push(sb);
    }
    assert!(ip_a.starts_with("10.246.0."), "{ip_a}");
    assert!(ip_b.starts_with("10.246.0."), "{ip_b}");
    let net6_field =
        format!("{{{{(index .NetworkSettings.Networks \"{network}\").GlobalIPv6Address}}}}");
    let ip6_a = pm.inspect(&a, &net6_field);
    let ip6_b = pm.inspect(&b, &net6_field);
    assert!(ip6_a.starts_with("fd00:10:246::"), "{ip6_a}");
    assert!(ip6_b.starts_with("fd00:10:246::"), "{ip6_b}");
    for name in [&a, &b] {
        assert_eq!(pm.inspect(name, "{{.OCIRuntime}}"), RUNTIME, "{name}");
    }
    say(&format!(
        "podman ran the containers with OCI runtime {RUNTIME} ({}; {})",
        version(RUNTIME),
        version("podman")
    ));

    // Container to container (ICMP, then HTTP over TCP), container to node, node to
    // container.
    let ping = pm.cmd(&["exec", &a, "ping", "-c", "3", "-W", "2", &ip_b]);
    assert!(ping.status.success(), "a -> b: {}", text(&ping));
    let ttl = String::from_utf8_lossy(&ping.stdout).contains("ttl=63");
    assert!(ttl, "one eBPF hop (TTL 63): {}", text(&ping));
    // (HTTP by hand with nc: Debian's busybox-static wget crashes, even on the host.)
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ip_b} 8080");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = pm.cmd(&["exec", &a, "sh", "-c", &get]);
        if String::from_utf8_lossy(&out.stdout).contains("hello-from-b") {
            break;
        }
        assert!(Instant::now() < deadline, "a -> b HTTP: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The same over IPv6: ICMPv6 (one eBPF hop: hop limit 63) and HTTP.
    let ping6 = pm.cmd(&["exec", &a, "ping", "-6", "-c", "3", "-W", "2", &ip6_b]);
    assert!(ping6.status.success(), "a -> b over IPv6: {}", text(&ping6));
    let hops = String::from_utf8_lossy(&ping6.stdout).contains("ttl=63");
    assert!(hops, "one eBPF hop (hop limit 63): {}", text(&ping6));
    let get6 = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ip6_b} 8080");
    let out = pm.cmd(&["exec", &a, "sh", "-c", &get6]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-from-b"),
        "a -> b HTTP over IPv6: {}",
        text(&out)
    );
    assert!(node.ping_from_node(&ip6_b).is_some(), "node -> b over IPv6");
    let to_node = pm.cmd(&["exec", &a, "ping", "-c", "1", "-W", "2", NODE_IP]);
    assert!(to_node.status.success(), "a -> node: {}", text(&to_node));
    assert!(node.ping_from_node(&ip_b).is_some(), "node -> b");

    // The eBPF path carried it: counters moved, there is no bridge, the node does
    // not forward; each endpoint is the CNI attachment of its container.
    let list = node.json(&["endpoint", "list"]);
    let eps = list.as_array().expect("endpoint list");
    assert_eq!(eps.len(), 2, "{list}");
    for (name, ip) in [(&a, &ip_a), (&b, &ip_b)] {
        let id = pm.inspect(name, "{{.Id}}");
        let ep = eps
            .iter()
            .find(|e| e["ip"] == ip.as_str())
            .unwrap_or_else(|| panic!("no endpoint with {ip}: {list}"));
        assert!(
            ep["ip6"]
                .as_str()
                .is_some_and(|a| a.starts_with("fd00:10:246::")),
            "{name}: {ep}"
        );
        assert!(
            ep["name"].as_str().expect("name").starts_with(&id[..12]),
            "endpoint name {} vs container {id}",
            ep["name"]
        );
        assert!(
            ep["counters"]["forwarded"]["packets"].as_u64() >= Some(3),
            "{name}: {ep}"
        );
        assert_eq!(ep["counters"]["dropped"]["packets"], 0, "{name}: {ep}");
    }
    let bridges = node.node_must("ip", &["-o", "link", "show", "type", "bridge"]);
    assert!(bridges.trim().is_empty(), "{bridges}");
    assert_eq!(
        node.node_must("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0"
    );

    // podman rm: DEL for each; nothing of either container is left.
    pm.ok(&["rm", "--force", "--time", "0", &a, &b]);
    let list = node.json(&["endpoint", "list"]);
    assert_eq!(list, serde_json::json!([]), "endpoints left");
    let links = node.node_must("ip", &["-o", "link", "show"]);
    assert!(!links.contains(": vb"), "host veths left: {links}");
    let routes = node.node_must("ip", &["-4", "route", "show"]);
    assert!(!routes.contains("10.246.0."), "routes left: {routes}");
    let routes6 = node.node_must("ip", &["-6", "route", "show"]);
    assert!(
        !routes6.contains("fd00:10:246:"),
        "IPv6 routes left: {routes6}"
    );
    let pinned = std::fs::read_dir(node.bpffs.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pinned, 0, "pinned links left");
    let netns = netns_list();
    for sb in &pm.sandboxes {
        let name = sb.trim_start_matches("/run/netns/");
        assert!(!netns.contains(name), "container namespace {sb} left");
    }
    let cached = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&network))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(cached, 0, "libcni cache entries left");
}
