//! `add`/`del` against fakes: every step of `add` is made to fail in turn, and
//! each time the node must hold exactly what it held before.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::remove::delete_host_veth;
use super::testing::World;
use super::*;
use crate::kernel::netlink::Netlink;
use crate::state::ident::{self, MacAddr};
use crate::state::{EndpointRecord, Intent, PlannedEndpoint};

#[test]
fn add_then_del_round_trip() {
    let mut w = World::new("roundtrip");
    let empty = w.snapshot();
    let rec = w.add("web").unwrap();
    assert_eq!(rec.ip, Some(Ipv4Addr::new(10, 244, 0, 1)));
    assert_eq!(rec.ip6, None);
    assert_eq!(rec.id, 1);
    assert!(rec.netns_created);
    // Pod side: eth0 up with IP/32 and the two routes.
    let pod = w.ns.handle(&rec.netns);
    let mut pod2 = pod.clone();
    let eth0 = pod2.link_by_name("eth0").unwrap().unwrap();
    assert!(eth0.up);
    assert_eq!(
        pod2.addresses(Some(eth0.index)).unwrap(),
        vec![(eth0.index, "10.244.0.1/32".parse().unwrap())]
    );
    let routes = pod2.routes().unwrap();
    assert!(routes.iter().any(|r| r.dst == Ipv4Net::default()
        && r.gateway == Some(Ipv4Addr::new(169, 254, 1, 1))
        && r.onlink));
    // Node side: the host veth carries the gateway MAC and the /32 route.
    let host = w.node.link_by_name(&rec.host_veth).unwrap().unwrap();
    assert_eq!(host.mac, Some(MacAddr::GATEWAY.0));
    assert!(host.up);
    assert!(w.dp.attached.contains(&rec.host_veth));
    assert_eq!(w.dp.routes.len(), 1);
    assert_eq!(w.dp.endpoints[&host.index].id, 1);
    // A second endpoint gets the next address and id.
    let rec2 = w.add("db").unwrap();
    assert_eq!((rec2.ip, rec2.id), (Some(Ipv4Addr::new(10, 244, 0, 2)), 2));
    // IPv4 only: no IPv6 entry, no address on the host side.
    assert!(w.dp.endpoints6.is_empty() && w.dp.routes6.is_empty());
    assert!(w.node.addresses6(Some(host.index)).unwrap().is_empty());
    w.del("db").unwrap();
    w.del("web").unwrap();
    assert_eq!(w.snapshot(), empty);
}

#[test]
fn every_failing_step_of_add_is_rolled_back() {
    let netlink_steps = [
        ("link_by_name", 1),  // the host veth's name is free
        ("add_veth_into", 1), // the pair, its pod end in the pod
        ("disable_ipv6_addr_gen", 1),
        ("set_link_alias", 1),
        ("link_by_name", 2), // the pod's end, for its index and MAC
        ("set_link_up", 1),  // lo in the pod
        ("set_link_up", 2),  // eth0 in the pod
        ("add_address", 1),
        ("add_route", 1),   // gateway link route in the pod
        ("add_route", 2),   // default route in the pod
        ("set_link_up", 3), // host side
        ("add_route", 3),   // node /32 route
    ];
    for (op, nth) in netlink_steps {
        let mut w = World::new(&format!("nl-{op}-{nth}"));
        w.add("keep").unwrap();
        let before = w.snapshot();
        w.node.fail_at(op, nth);
        let err = w.add("web").expect_err(op);
        assert_eq!(w.snapshot(), before, "after {op} #{nth} failed: {err}");
    }
    for op in ["reset_counters", "put_endpoint", "attach", "put_route"] {
        let mut w = World::new(&format!("dp-{op}"));
        w.add("keep").unwrap();
        let before = w.snapshot();
        w.dp.fail = Some(op);
        let err = w.add("web").expect_err(op);
        assert_eq!(w.snapshot(), before, "after {op} failed: {err}");
    }
    let mut w = World::new("netns-create");
    let before = w.snapshot();
    w.ns.fail_create = true;
    assert!(w.add("web").is_err());
    assert_eq!(w.snapshot(), before);
}

/// What one add asks of the kernel: the pair made in one call with its pod end
/// already in the pod under its final name (nothing moved, nothing renamed, no
/// MAC set afterwards), then batches; and what that leaves in each namespace.
#[test]
fn add_makes_the_pair_in_place_in_four_batches() {
    let mut w = World::new("calls");
    w.node.clear_calls();
    let rec = w.add("web").unwrap();
    assert_eq!(
        w.node.mutations(),
        [
            "add_veth_into",
            // one batch on the node: no IPv6 link-local, the alias
            "disable_ipv6_addr_gen",
            "set_link_alias",
            // one batch in the pod
            "set_link_up",
            "set_link_up",
            "add_address",
            "add_route",
            "add_route",
            // one batch on the node: up, the /32 route
            "set_link_up",
            "add_route",
        ]
    );
    let pod_ops: Vec<&str> = w
        .node
        .calls()
        .iter()
        .filter(|c| c.netns != w.node.netns_id())
        .map(|c| c.op)
        .collect();
    assert_eq!(
        pod_ops,
        [
            "link_by_name",
            "set_link_up",
            "set_link_up",
            "add_address",
            "add_route",
            "add_route"
        ]
    );
    let host = w.node.link_by_name(&rec.host_veth).unwrap().unwrap();
    let state = w.node.link_state(host.index).unwrap();
    assert!(state.ipv6_addr_gen_disabled && !state.ipv6_link_local);
    assert_eq!(host.mac, Some(MacAddr::GATEWAY.0));
    assert!(host.alias.is_some_and(|a| a.contains("web")));
    let mut pod = w.ns.handle(&rec.netns);
    let eth0 = pod.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(Some(rec.pod_mac.0), eth0.mac);
    assert_eq!(state.peer.map(|(_, i)| i), Some(eth0.index));
    // Only the host side and lo are in the node namespace.
    let names: Vec<String> = w
        .node
        .links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["lo", rec.host_veth.as_str()]);
}

#[test]
fn bad_input_changes_nothing() {
    let mut w = World::new("bad");
    w.add("web").unwrap();
    let before = w.snapshot();
    for name in ["web", "", "a/b", &"x".repeat(64)] {
        assert!(w.add(name).is_err(), "{name:?}");
    }
    assert!(matches!(w.del("nope"), Err(EndpointError::NotFound { .. })));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn del_tolerates_parts_already_gone() {
    let mut w = World::new("gone");
    let rec = w.add("web").unwrap();
    let empty_links = vec!["lo".to_string()];
    // The veth and the namespace vanish behind vethbpf's back.
    let host = w.node.link_by_name(&rec.host_veth).unwrap().unwrap();
    w.node.del_link(host.index).unwrap();
    fs::remove_file(&rec.netns).unwrap();
    w.del("web").unwrap();
    let (links, netns, dp, state) = w.snapshot();
    assert_eq!(links, empty_links);
    assert!(netns.is_empty());
    assert!(dp.routes.is_empty() && dp.endpoints.is_empty() && dp.attached.is_empty());
    assert!(state.endpoints.is_empty());
}

#[test]
fn an_add_that_died_before_its_commit_is_rolled_back_by_the_next_command() {
    let mut w = World::new("died-add");
    w.add("keep").unwrap();
    let before = w.snapshot();
    // Everything made, then the process died before the state write: the
    // record is not there, the journal is.
    let rec = w.add("web").unwrap();
    w.with(|_, locked| {
        locked.state.endpoints.remove("web");
        locked.save().unwrap();
        locked
            .begin(&Intent::Add(PlannedEndpoint {
                name: "web".into(),
                ip: rec.ip,
                ip6: rec.ip6,
                id: rec.id,
                host_veth: rec.host_veth.clone(),
                temp_peer: ident::temp_peer_name("web"),
                create_netns: true,
            }))
            .unwrap();
    });
    let recovered = w.with(finish_pending).unwrap();
    assert_eq!(
        recovered
            .iter()
            .map(|r| (r.op, r.outcome))
            .collect::<Vec<_>>(),
        [("add", "rolled back")]
    );
    assert_eq!(w.snapshot(), before);
    assert!(w.with(|_, l| l.pending()).unwrap().is_none());
    // Nothing left to settle the second time.
    assert_eq!(w.with(finish_pending).unwrap(), []);
}

#[test]
fn a_del_that_died_after_the_veth_is_finished_by_the_next_command() {
    let mut w = World::new("died-del");
    let empty = w.snapshot();
    let rec = w.add("web").unwrap();
    // The del journaled itself, removed the route entry and the veth, and died.
    w.with(|env, locked| {
        locked.begin(&Intent::Del(rec.clone())).unwrap();
        env.dp.del_route(Ipv4Net::from(rec.ip.unwrap())).unwrap();
        delete_host_veth(env, &rec).unwrap();
    });
    // Running `del web` again is the natural next command: it succeeds.
    assert_eq!(w.del("web").unwrap(), rec);
    assert_eq!(w.snapshot(), empty);
    assert!(matches!(w.del("web"), Err(EndpointError::NotFound { .. })));
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn dual_stack_add_then_del_round_trip() {
    let mut w = World::dual("dual");
    let empty = w.snapshot();
    let rec = w.add("web").unwrap();
    assert_eq!(rec.ip, Some(Ipv4Addr::new(10, 244, 0, 1)));
    assert_eq!(rec.ip6, Some(ip6("fd00:10:244::1")));
    let gw6 = ip6("fe80::ecee:eeff:feee:eeee");
    // Pod side: no generated link-local address, the EUI-64 one and IP6/128, a
    // route to the gateway and the default route through it.
    let mut pod = w.ns.handle(&rec.netns);
    let eth0 = pod.link_by_name("eth0").unwrap().unwrap();
    let state = pod.link_state(eth0.index).unwrap();
    assert!(state.ipv6_addr_gen_disabled && !state.ipv6_link_local);
    let mut addrs6: Vec<Ipv6Net> = pod
        .addresses6(Some(eth0.index))
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    addrs6.sort();
    let lla = Ipv6Net::new(rec.link_local(), 64).unwrap();
    assert_eq!(addrs6, vec!["fd00:10:244::1/128".parse().unwrap(), lla]);
    assert_eq!(rec.link_local(), rec.pod_mac.link_local());
    let routes6 = pod.routes6().unwrap();
    assert!(
        routes6
            .iter()
            .any(|r| r.dst == Ipv6Net::from(gw6) && r.gateway.is_none())
    );
    assert!(
        routes6
            .iter()
            .any(|r| r.dst == Ipv6Net::default() && r.gateway == Some(gw6))
    );
    // Node side: the gateway's link-local address on the host veth (and no other
    // IPv6 address), the /128 route, both map entries.
    let host = w.node.link_by_name(&rec.host_veth).unwrap().unwrap();
    assert_eq!(
        w.node.addresses6(Some(host.index)).unwrap(),
        vec![(host.index, Ipv6Net::new(gw6, 64).unwrap())]
    );
    assert!(
        w.node.routes6().unwrap().iter().any(|r| r.dst
            == "fd00:10:244::1/128".parse::<Ipv6Net>().unwrap()
            && r.oif == host.index)
    );
    let e6 = w.dp.endpoints6[&host.index];
    assert_eq!(
        (e6.ip, e6.link_local),
        (ip6("fd00:10:244::1").octets(), rec.link_local().octets())
    );
    assert_eq!(
        w.dp.routes6[&"fd00:10:244::1/128".parse::<Ipv6Net>().unwrap()],
        route_of(&rec)
    );
    assert_eq!(w.dp.routes.len(), 1);
    // A second one: the next address of each family.
    let rec2 = w.add("db").unwrap();
    assert_eq!(rec2.ip6, Some(ip6("fd00:10:244::2")));
    w.del("db").unwrap();
    w.del("web").unwrap();
    assert_eq!(w.snapshot(), empty);
}

#[test]
fn an_ipv6_only_endpoint_has_no_ipv4() {
    let mut w = World::with_cidrs("v6only", None, Some("fd00:10:244::/64"));
    let rec = w.add_with("web", &["fd00:10:244::99"]).unwrap();
    assert_eq!((rec.ip, rec.ip6), (None, Some(ip6("fd00:10:244::99"))));
    let host = w.node.link_by_name(&rec.host_veth).unwrap().unwrap();
    // ENDPOINTS says "no IPv4": every IPv4 and ARP frame of the pod is a spoof.
    assert_eq!(w.dp.endpoints[&host.index].ip, 0);
    assert!(w.dp.routes.is_empty());
    let mut pod = w.ns.handle(&rec.netns);
    let eth0 = pod.link_by_name("eth0").unwrap().unwrap();
    assert!(pod.addresses(Some(eth0.index)).unwrap().is_empty());
    assert!(pod.routes().unwrap().is_empty());
    w.del("web").unwrap();
    assert!(w.dp.endpoints6.is_empty() && w.dp.routes6.is_empty());
}

#[test]
fn requested_addresses_are_checked_per_family() {
    use crate::state::ipam::IpamError;
    let mut w = World::dual("requested");
    let rec = w.add_with("a", &["fd00:10:244::7", "10.244.0.7"]).unwrap();
    assert_eq!(
        (rec.ip, rec.ip6),
        (
            Some(Ipv4Addr::new(10, 244, 0, 7)),
            Some(ip6("fd00:10:244::7"))
        )
    );
    let before = w.snapshot();
    let ipam = |r: Result<EndpointRecord, EndpointError>| match r {
        Err(EndpointError::Ipam(e)) => e,
        other => panic!("expected an IPAM error, got {other:?}"),
    };
    assert!(matches!(
        ipam(w.add_with("b", &["fd00:10:244::7"])),
        IpamError::InUse { .. }
    ));
    assert!(matches!(
        ipam(w.add_with("b", &["fd00:10:244::"])),
        IpamError::Anycast { .. }
    ));
    assert!(matches!(
        ipam(w.add_with("b", &["fd00:10:245::1"])),
        IpamError::OutsideCidr { .. }
    ));
    assert!(matches!(
        ipam(w.add_with("b", &["fd00:10:244::8", "fd00:10:244::9"])),
        IpamError::TwoOfAFamily { family: "IPv6", .. }
    ));
    assert_eq!(w.snapshot(), before);
    let mut v4 = World::new("requested-v4");
    assert!(matches!(
        ipam(v4.add_with("b", &["fd00:10:244::8"])),
        IpamError::NoCidr { family: "IPv6", .. }
    ));
}

#[test]
fn every_failing_ipv6_step_of_add_is_rolled_back() {
    let netlink_steps = [
        ("disable_ipv6_addr_gen", 2), // eth0 in the pod
        ("add_address6", 1),          // the gateway on the host veth
        ("add_address6", 2),          // the pod's link-local address
        ("add_address6", 3),          // the pod's address
        ("add_route6", 1),            // gateway route in the pod
        ("add_route6", 2),            // default route in the pod
        ("add_route6", 3),            // node /128 route
    ];
    for (op, nth) in netlink_steps {
        let mut w = World::dual(&format!("nl6-{op}-{nth}"));
        w.add("keep").unwrap();
        let before = w.snapshot();
        let node_routes6 = w.node.routes6().unwrap();
        w.node.fail_at(op, nth);
        let err = w.add("web").expect_err(op);
        assert_eq!(w.snapshot(), before, "after {op} #{nth} failed: {err}");
        assert_eq!(w.node.routes6().unwrap(), node_routes6, "{op} #{nth}");
    }
    for op in ["put_endpoint6", "put_route6"] {
        let mut w = World::dual(&format!("dp6-{op}"));
        w.add("keep").unwrap();
        let before = w.snapshot();
        w.dp.fail = Some(op);
        let err = w.add("web").expect_err(op);
        assert_eq!(w.snapshot(), before, "after {op} failed: {err}");
    }
}

/// With tc filters (the default), the filter is made in the batch that brings the
/// host veth up, before it comes up; nothing is pinned; del leaves nothing.
#[test]
fn tc_mode_attaches_in_the_link_up_batch() {
    let mut w = World::tc("tc-calls");
    let empty = w.snapshot();
    w.node.clear_calls();
    let rec = w.add("web").unwrap();
    let node_ops: Vec<&str> = w
        .node
        .calls()
        .iter()
        .filter(|c| c.netns == w.node.netns_id() && c.ok)
        .map(|c| c.op)
        .collect();
    assert_eq!(
        node_ops[node_ops.len() - 4..],
        ["add_clsact", "set_bpf_filter", "set_link_up", "add_route"]
    );
    let pinned = w.dp.program_id();
    let f = w.filter(rec.host_ifindex).expect("a filter");
    assert_eq!((f.kind.as_str(), f.program_id), ("bpf", Some(pinned)));
    assert!(f.direct_action);
    // The endpoint id, which from_pod reads as skb->tc_classid to find its slot.
    assert_eq!(f.classid, Some(rec.id));
    assert!(w.dp.attached.is_empty(), "no TCX link pinned");
    w.del("web").unwrap();
    assert_eq!(w.snapshot(), empty);
}

#[test]
fn tc_mode_failing_attach_steps_are_rolled_back() {
    for (op, nth) in [("add_clsact", 1), ("set_bpf_filter", 1)] {
        let mut w = World::tc(&format!("tc-nl-{op}"));
        w.add("keep").unwrap();
        let before = w.snapshot();
        w.node.fail_at(op, nth);
        let err = w.add("web").expect_err(op);
        assert_eq!(w.snapshot(), before, "after {op} failed: {err}");
    }
    let mut w = World::tc("tc-dp-prog");
    let before = w.snapshot();
    w.dp.fail = Some("pod_program");
    w.add("web").expect_err("pod_program");
    assert_eq!(w.snapshot(), before);
}

/// reconcile finds a tc filter that is missing, runs an old program or was
/// replaced by someone else's classifier, and puts vethbpf's back.
#[test]
fn reconcile_repairs_tc_filters() {
    let mut w = World::tc("tc-reconcile");
    let a = w.add("a").unwrap();
    let b = w.add("b").unwrap();
    let c = w.add("c").unwrap();
    let d = w.add("d").unwrap();
    let pinned = w.dp.program_id();
    w.node.seed_filter(a.host_ifindex, None);
    w.node
        .seed_filter(b.host_ifindex, Some(("bpf", Some(pinned + 1))));
    w.node.seed_filter(c.host_ifindex, Some(("u32", None)));
    let report = w.with(crate::reconcile::reconcile).unwrap();
    let fixes = fix_lines(&report);
    assert_eq!(
        fixes,
        [
            "a program attachment".to_string(),
            format!(
                "b program attachment (its filter ran program {}, not {pinned})",
                pinned + 1
            ),
            "c program attachment (a u32 filter held its place)".to_string(),
        ]
    );
    for rec in [&a, &b, &c, &d] {
        let f = w.filter(rec.host_ifindex).expect("a filter");
        assert_eq!(
            (f.kind.as_str(), f.program_id, f.classid),
            ("bpf", Some(pinned), Some(rec.id)),
            "{}",
            rec.name
        );
    }
    let again = w.with(crate::reconcile::reconcile).unwrap();
    assert!(!again.changed(), "{again:?}");
}

/// With TCX links, a pinned link that runs another program is pointed back at the
/// pinned one; on a tc node, a pod link pin is a stray and goes.
#[test]
fn reconcile_relinks_stale_tcx_links_and_removes_pod_pins_on_a_tc_node() {
    let mut w = World::new("tcx-stale");
    let a = w.add("a").unwrap();
    w.dp.stale.insert(a.host_veth.clone());
    let report = w.with(crate::reconcile::reconcile).unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    assert!(
        report.repaired[0]
            .what
            .starts_with("program attachment (its TCX link ran program 0")
    );
    assert!(w.dp.stale.is_empty());
    assert!(!w.with(crate::reconcile::reconcile).unwrap().changed());

    let mut w = World::tc("tc-stray-pin");
    let a = w.add("a").unwrap();
    w.dp.attached.insert(a.host_veth.clone());
    let report = w.with(crate::reconcile::reconcile).unwrap();
    assert_eq!(report.removed_pins, std::slice::from_ref(&a.host_veth));
    assert!(w.dp.attached.is_empty());
}

/// reconcile puts back a lost slot and an emptied address entry (only speed is lost
/// without them); an address entry held by another id, as two pods of a pod CIDR
/// larger than a /16 can share one, it leaves.
#[test]
fn reconcile_refills_slots_and_address_entries() {
    let mut w = World::new("slots");
    let a = w.add("a").unwrap();
    let b = w.add("b").unwrap();
    let b_ip = b.ip.unwrap();
    let a_slot = w.dp.slots.remove(&a.id).expect("a's slot");
    assert_eq!(a_slot.ifindex, a.host_ifindex);
    assert_eq!(
        w.dp.addrs.remove(&super::testing::addr_index(b_ip)),
        Some(b.id)
    );
    let report = w.with(crate::reconcile::reconcile).unwrap();
    let fixes = fix_lines(&report);
    assert_eq!(fixes, ["a endpoint slot", "b endpoint address entry"]);
    assert_eq!(w.dp.slots.get(&a.id), Some(&a_slot));
    assert_eq!(
        w.dp.addrs.get(&super::testing::addr_index(b_ip)),
        Some(&b.id)
    );
    w.dp.addrs.insert(super::testing::addr_index(b_ip), 999);
    let again = w.with(crate::reconcile::reconcile).unwrap();
    assert!(!again.changed(), "{again:?}");
}

/// A reconcile report's repairs as "ENDPOINT WHAT".
fn fix_lines(report: &crate::reconcile::Report) -> Vec<String> {
    report
        .repaired
        .iter()
        .map(|f| format!("{} {}", f.endpoint, f.what))
        .collect()
}
