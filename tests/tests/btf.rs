//! The maps describe themselves (BTF): `bpftool map dump` of every pinned map shows
//! field names and values; and a node whose maps were made by a build without BTF
//! (or with another number of verdicts) keeps its entries and counters through
//! `up --replace`, which makes its maps new, with BTF. Needs root.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use serde_json::Value;
use vethbpf_common::{
    ALL_MAPS, Config, Counter, EndpointInfo, MAP_CONFIG, MAP_ENDPOINT_ADDRS, MAP_ENDPOINT_SLOTS,
    MAP_ENDPOINTS, MAP_EVENTS, MAP_ROUTES, MAP_STATS, MAX_ENDPOINTS, Route, STATS_ENTRIES, Verdict,
    endpoint_addr_index, ipv4_to_map,
};
use vethbpf_tests::{TestNode, must, no_ipv6};

fn map_path(node: &TestNode, map: &str) -> PathBuf {
    node.bpffs.join("maps").join(map)
}

fn bpftool_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&must("bpftool", &full)).expect("bpftool JSON")
}

fn dump(node: &TestNode, map: &str) -> Value {
    let path = map_path(node, map);
    bpftool_json(&["map", "dump", "pinned", path.to_str().expect("path")])
}

fn show(node: &TestNode, map: &str) -> Value {
    let path = map_path(node, map);
    bpftool_json(&["map", "show", "pinned", path.to_str().expect("path")])
}

/// Asserts that `v` is an object with exactly the fields `names`.
fn assert_fields(v: &Value, names: &[&str]) {
    let mut got: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object with named fields, not {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = names.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "fields of {v}");
}

#[test]
fn bpftool_dumps_every_map_with_named_fields() {
    // Dual stack, so that the IPv6 maps have entries too.
    let node = TestNode::dual();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    assert_eq!(
        node.ping_from_pod("a", b["ip"].as_str().expect("ip"), 1),
        Some(63)
    );
    // A monitor session leaves a traced flow in TRACE_FLOWS.
    let mut monitor = node
        .command(&["monitor", "--type", "trace"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("monitor");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        node.ping_from_pod("a", b["ip"].as_str().expect("ip"), 1),
        Some(63)
    );
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) }, 0);
    assert!(monitor.wait().expect("wait").success());

    let mut checked = Vec::new();
    let mut empty = Vec::new();
    for map in ALL_MAPS {
        let info = show(&node, map);
        if map == MAP_EVENTS {
            // A ring buffer has no entries to dump, and the kernel takes no BTF for
            // its zero-sized key and value.
            assert_eq!(info["type"], "ringbuf");
            continue;
        }
        assert!(info["btf_id"].as_u64().is_some(), "{map} has BTF: {info}");
        let entries = dump(&node, map);
        let entries = entries.as_array().expect("entries");
        if entries.is_empty() {
            // Tables of features this node does not use (egress, fragments): their
            // BTF is there (above), nothing to show yet. Arrays always have entries.
            assert!(
                !info["type"].as_str().unwrap_or("").contains("array"),
                "{map}: an array without entries"
            );
            empty.push(map);
            continue;
        }
        // bpftool -j prints each entry's bytes in hex, and with BTF also the entry
        // "formatted": keys and values by field. Without BTF there is no such part.
        let e = entries[0]
            .get("formatted")
            .unwrap_or_else(|| panic!("{map}: no formatted entry, no BTF: {}", entries[0]));
        let value = e.get("value").or_else(|| e["values"][0].get("value"));
        let value = value.unwrap_or_else(|| panic!("{map}: {e}"));
        match map {
            "ROUTES" | "ROUTES6" => {
                assert_fields(&e["key"], &["prefix_len", "data"]);
                assert_fields(value, &["kind", "ifindex", "endpoint_id", "mac", "_pad"]);
            }
            "ENDPOINTS" => {
                assert!(e["key"].is_u64(), "{e}");
                assert_fields(value, &["ip", "id", "mac", "_pad"]);
            }
            "CONFIG" => assert_fields(value, &["gateway_ip", "flags", "gateway_mac", "_pad"]),
            "STATS" => assert_fields(value, &["packets", "bytes"]),
            "MONITOR" => assert_fields(value, &["deadline_ns", "kinds", "session", "pid", "_pad"]),
            "ENDPOINTS6" => assert_fields(value, &["ip", "link_local"]),
            "ENDPOINT_SLOTS" => {
                assert_fields(value, &["ifindex", "info"]);
                assert_fields(&value["info"], &["ip", "id", "mac", "_pad"]);
            }
            "EVENTS_LOST" => assert!(value.is_u64(), "{e}"),
            "TRACE_FLOWS" => {
                assert_fields(
                    &e["key"],
                    &[
                        "saddr", "daddr", "sport", "dport", "proto", "family", "_pad",
                    ],
                );
                assert_fields(value, &["session", "tcp_flags"]);
            }
            // The other features' maps: values by field, whatever the fields are.
            _ => assert!(
                value.is_object() || value.is_u64(),
                "{map}: a value by field: {e}"
            ),
        }
        checked.push(map);
    }
    // The maps of this feature set all had entries to show.
    for map in [
        "ROUTES",
        "ENDPOINTS",
        "ENDPOINT_SLOTS",
        "CONFIG",
        "STATS",
        "ROUTES6",
        "ENDPOINTS6",
        "MONITOR",
        "EVENTS_LOST",
        "TRACE_FLOWS",
    ] {
        assert!(
            checked.contains(&map),
            "{map} was checked (empty: {empty:?})"
        );
    }
    assert_eq!(checked.len() + empty.len(), ALL_MAPS.len() - 1);
    // The values are the entries: a's ENDPOINTS entry holds its id and address.
    let eps = dump(&node, MAP_ENDPOINTS);
    let a_id = a["id"].as_u64().expect("id");
    assert!(
        eps.as_array()
            .expect("entries")
            .iter()
            .any(|e| e["formatted"]["value"]["id"] == a_id),
        "{eps}"
    );
}

/// A map made without BTF, as a build before BTF maps made it: `BPF_MAP_CREATE` with
/// no BTF ids.
fn legacy_map(map_type: u32, key: u32, value: u32, max: u32, flags: u32) -> MapData {
    let mut attr = [0u8; 72];
    for (at, v) in [(0, map_type), (4, key), (8, value), (12, max), (16, flags)] {
        attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: a BPF_MAP_CREATE attr with the fields above, the rest zero.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len() as u32) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd).expect("map from fd")
}

/// Pins `map` over the pin at `path` (as the old build's map would be there).
fn pin_over(map: &MapData, path: &Path) {
    let tmp = path.with_file_name("legacy_tmp");
    map.pin(&tmp).expect("pin");
    std::fs::rename(&tmp, path).expect("rename over the pin");
}

fn open(path: &Path) -> Map {
    let data = MapData::from_pin(path).expect("open pin");
    Map::from_map_data(data).expect("map")
}

fn counters_json(node: &TestNode) -> Value {
    let mut list = node.json(&["endpoint", "list"]);
    for e in list.as_array_mut().expect("list") {
        e.as_object_mut().expect("endpoint").remove("counters");
    }
    list
}

#[test]
fn up_replace_carries_a_node_without_btf_over_entries_and_counters_kept() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    for pod in [&a, &b] {
        no_ipv6(Path::new(pod["netns"].as_str().expect("netns")));
    }
    let b_ip = b["ip"].as_str().expect("ip").to_string();
    assert_eq!(node.ping_from_pod("a", &b_ip, 3), Some(63));
    let endpoints = counters_json(&node);
    let counters_before: Vec<Value> = node
        .json(&["endpoint", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["counters"].clone())
        .collect();

    // The node as a build before BTF maps (and with 8 verdicts) left it: ROUTES,
    // ENDPOINTS and CONFIG without BTF, STATS without BTF and strided by 8.
    let old_count = 8u32;
    let routes_path = map_path(&node, MAP_ROUTES);
    let eps_path = map_path(&node, MAP_ENDPOINTS);
    let config_path = map_path(&node, MAP_CONFIG);
    let stats_path = map_path(&node, MAP_STATS);
    // The maps as they are now, held open while their pins get legacy maps.
    let cur_routes: LpmTrie<MapData, u32, Route> = open(&routes_path).try_into().expect("lpm");
    let cur_eps: HashMap<MapData, u32, EndpointInfo> = open(&eps_path).try_into().expect("hash");
    let cur_config: Array<MapData, Config> = open(&config_path).try_into().expect("array");
    let cur_stats: PerCpuArray<MapData, Counter> = open(&stats_path).try_into().expect("percpu");
    pin_over(
        &legacy_map(11, 8, size_of::<Route>() as u32, 16384, 1),
        &routes_path,
    );
    pin_over(
        &legacy_map(1, 4, size_of::<EndpointInfo>() as u32, MAX_ENDPOINTS, 0),
        &eps_path,
    );
    pin_over(
        &legacy_map(2, 4, size_of::<Config>() as u32, 1, 0),
        &config_path,
    );
    pin_over(
        &legacy_map(
            6,
            4,
            size_of::<Counter>() as u32,
            MAX_ENDPOINTS * old_count,
            0,
        ),
        &stats_path,
    );
    let mut old_routes: LpmTrie<MapData, u32, Route> = open(&routes_path).try_into().expect("lpm");
    for entry in cur_routes.iter() {
        let (k, v) = entry.expect("route");
        old_routes
            .insert(&Key::new(k.prefix_len(), k.data()), v, 0)
            .expect("insert");
    }
    let mut old_eps: HashMap<MapData, u32, EndpointInfo> =
        open(&eps_path).try_into().expect("hash");
    for entry in cur_eps.iter() {
        let (k, v) = entry.expect("endpoint");
        old_eps.insert(k, v, 0).expect("insert");
    }
    let mut old_config: Array<MapData, Config> = open(&config_path).try_into().expect("array");
    old_config
        .set(0, cur_config.get(&0, 0).expect("config"), 0)
        .expect("set");
    let mut old_stats: PerCpuArray<MapData, Counter> =
        open(&stats_path).try_into().expect("percpu");
    for id in 0..8u32 {
        for v in 0..old_count {
            let values: Vec<Counter> = cur_stats
                .get(&(id * Verdict::COUNT + v), 0)
                .expect("counter")
                .iter()
                .copied()
                .collect();
            old_stats
                .set(
                    id * old_count + v,
                    PerCpuValues::try_from(values).expect("values"),
                    0,
                )
                .expect("set");
        }
    }
    for map in [MAP_ROUTES, MAP_ENDPOINTS, MAP_CONFIG, MAP_STATS] {
        assert!(show(&node, map)["btf_id"].is_null(), "{map} has no BTF now");
    }
    // And from before ENDPOINT_SLOTS and ENDPOINT_ADDRS: no such maps.
    for map in [MAP_ENDPOINT_SLOTS, MAP_ENDPOINT_ADDRS] {
        std::fs::remove_file(map_path(&node, map)).expect("unpin");
    }
    let routes_before = dump(&node, MAP_ROUTES);

    let out = node.ok(&["up", "--replace"]);
    assert!(out.contains("program replaced"), "{out}");
    for map in [MAP_ROUTES, MAP_ENDPOINTS, MAP_CONFIG, MAP_STATS] {
        let info = show(&node, map);
        assert!(info["btf_id"].as_u64().is_some(), "{map} has BTF: {info}");
    }
    assert_eq!(
        show(&node, MAP_STATS)["max_entries"],
        STATS_ENTRIES,
        "STATS has this build's size"
    );
    // Entries kept: the same routes (now with named fields), endpoints, counters.
    let routes_after = dump(&node, MAP_ROUTES);
    assert_eq!(
        routes_after.as_array().map(Vec::len),
        routes_before.as_array().map(Vec::len)
    );
    assert_eq!(counters_json(&node), endpoints);
    let counters_after: Vec<Value> = node
        .json(&["endpoint", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["counters"].clone())
        .collect();
    assert_eq!(counters_after, counters_before, "counters carried over");
    // The pods got their slots in the new ENDPOINT_SLOTS, and their addresses'
    // entries in the new ENDPOINT_ADDRS.
    let addrs = dump(&node, MAP_ENDPOINT_ADDRS);
    for pod in [&a, &b] {
        let ip: std::net::Ipv4Addr = pod["ip"].as_str().expect("ip").parse().expect("ip");
        let index = endpoint_addr_index(ipv4_to_map(ip.octets()));
        let entry = addrs
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["formatted"]["key"] == index)
            .unwrap_or_else(|| panic!("entry {index}"));
        assert_eq!(entry["formatted"]["value"], pod["id"], "{entry}");
    }
    let slots = dump(&node, MAP_ENDPOINT_SLOTS);
    for pod in [&a, &b] {
        let id = pod["id"].as_u64().expect("id");
        let slot = slots
            .as_array()
            .expect("slots")
            .iter()
            .find(|e| e["formatted"]["key"] == id)
            .unwrap_or_else(|| panic!("slot {id}: {slots}"));
        assert_eq!(
            slot["formatted"]["value"]["ifindex"], pod["host_ifindex"],
            "{slot}"
        );
    }
    // The pods talk over the new maps, counted there.
    assert_eq!(node.ping_from_pod("a", &b_ip, 2), Some(63));
    let forwarded = |c: &Value| c["forwarded"]["packets"].as_u64().expect("p");
    let now: Vec<Value> = node
        .json(&["endpoint", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["counters"].clone())
        .collect();
    assert_eq!(forwarded(&now[0]), forwarded(&counters_before[0]) + 2);
    // Nothing left at temporary pins.
    let pins: Vec<String> = std::fs::read_dir(node.bpffs.join("maps"))
        .expect("maps dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pins.len(), ALL_MAPS.len(), "{pins:?}");

    // A map whose layout changed cannot be carried over: refused, nothing changed.
    let good = MapData::from_pin(&eps_path).expect("ENDPOINTS");
    pin_over(&legacy_map(1, 4, 8, MAX_ENDPOINTS, 0), &eps_path);
    let before = node.snapshot();
    let out = node.vethbpf(&["up", "--replace"]);
    assert_eq!(out.status.code(), Some(5), "a conflict");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ENDPOINTS") && err.contains("cannot be carried over"),
        "{err}"
    );
    assert_eq!(node.snapshot(), before, "nothing changed");
    // Put the good map back, so that `down` can clean up.
    pin_over(&good, &eps_path);
}
