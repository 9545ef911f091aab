//! `vethbpf reconcile`: bring the state file, the maps, the pinned links and the
//! node's links and routes back into agreement after a crash or an outside hand.
//!
//! The state file says which endpoints exist. For each of them, what can be
//! re-made from the record is repaired (map entries, attachment, node route, link
//! up); an endpoint whose veth or namespace is gone is removed. What vethbpf made
//! but no record owns (links with vethbpf's names, map entries, pinned links) is
//! removed. The journal of a command that died halfway is settled first (see
//! `endpoint::finish_pending`).
//!
//! `--from-kernel` rebuilds a lost or corrupt state file: each host veth carries its
//! endpoint's identity in its alias (`KernelTag`), and the ENDPOINTS map has its
//! address, counter id and pod MAC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use tracing::info;
use vethbpf_common::{
    EndpointInfo, EndpointInfo6, EndpointSlot, PROG_FROM_POD, ipv4_from_map, ipv4_to_map,
};

use crate::datapath::maps::Maps;
use crate::datapath::pods::{self, AttachState};
use crate::datapath::{self, AttachMode, Pins};
use crate::egress::{self, EgressError};
use crate::endpoint::{self, EndpointError, Env, KernelTag, Recovered};
use crate::error::ErrorKind;
use crate::kernel::bpffs;
use crate::kernel::netlink::{Change, Route6Spec, RouteSpec, TcFilter};
use crate::state::ident::{self, MacAddr};
use crate::state::{EndpointRecord, Locked, NodeConfig, StateError};

/// Why `reconcile` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(
        "endpoint {name} has the address {ip}, outside the --pod-cidr given for its family ({cidr}); pass the pod CIDRs the node was brought up with"
    )]
    OutsideCidr {
        name: String,
        ip: IpAddr,
        /// The CIDR given for the address's family, or "none".
        cidr: String,
    },
    #[error(transparent)]
    Egress(#[from] EgressError),
}

impl ReconcileError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReconcileError::Endpoint(e) => e.kind(),
            ReconcileError::OutsideCidr { .. } => ErrorKind::Usage,
            ReconcileError::Egress(e) => e.kind(),
        }
    }
}

impl From<StateError> for ReconcileError {
    fn from(e: StateError) -> Self {
        ReconcileError::Endpoint(e.into())
    }
}

impl From<crate::kernel::netlink::NetlinkError> for ReconcileError {
    fn from(e: crate::kernel::netlink::NetlinkError) -> Self {
        ReconcileError::Endpoint(e.into())
    }
}

/// One change `reconcile` made to an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fix {
    pub endpoint: String,
    pub what: String,
}

/// What `reconcile` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The journals of interrupted commands, settled.
    pub pending: Vec<Recovered>,
    /// A journal that could not be read was removed (the scan below cleans up).
    pub discarded_journal: bool,
    /// Endpoints rebuilt from the kernel (`--from-kernel`).
    pub rebuilt: Vec<String>,
    /// Parts of endpoints put back from their records.
    pub repaired: Vec<Fix>,
    /// Endpoints removed because their veth or namespace was gone.
    pub removed_endpoints: Vec<Fix>,
    /// Links with vethbpf's names that no endpoint owns.
    pub removed_links: Vec<String>,
    /// ROUTES and ROUTES6 entries that no endpoint owns.
    pub removed_route_entries: Vec<IpNet>,
    /// ENDPOINTS and ENDPOINTS6 entries (host ifindex) that no endpoint owns.
    pub removed_endpoint_entries: Vec<u32>,
    /// Pinned attachments that no endpoint owns.
    pub removed_pins: Vec<String>,
    /// What was out of order with pod egress (the uplink and its program), fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
}

impl Report {
    /// Whether anything was out of agreement.
    pub fn changed(&self) -> bool {
        !self.pending.is_empty()
            || self.discarded_journal
            || !self.rebuilt.is_empty()
            || !self.repaired.is_empty()
            || !self.removed_endpoints.is_empty()
            || !self.removed_links.is_empty()
            || !self.removed_route_entries.is_empty()
            || !self.removed_endpoint_entries.is_empty()
            || !self.removed_pins.is_empty()
            || self.uplink.is_some()
    }
}

/// Settles the journal, then makes kernel and state agree (see the module docs).
pub fn reconcile(env: &mut Env<'_>, locked: &mut Locked) -> Result<Report, ReconcileError> {
    let mut report = Report::default();
    match endpoint::finish_pending(env, locked) {
        Ok(p) => report.pending = p,
        Err(EndpointError::State(StateError::CorruptIntent { .. })) => {
            // Only a power loss or a full disk makes one; the scan below finds
            // whatever the interrupted command left, except a namespace it made.
            locked.end()?;
            report.discarded_journal = true;
        }
        Err(e) => return Err(e.into()),
    }
    check_records(env, locked, &mut report)?;
    remove_orphans(env, locked, &mut report)?;
    check_uplink(env, locked, &mut report)?;
    if report.changed() {
        info!(?report, "reconciled");
    }
    Ok(report)
}

/// Pod egress: the uplink's program and configuration (see
/// [`egress::reconcile_uplink`]).
fn check_uplink(
    env: &mut Env<'_>,
    locked: &mut Locked,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let Some(mut node) = locked.state.node.clone() else {
        return Ok(());
    };
    let Some(e) = node.egress.clone() else {
        return Ok(());
    };
    let pins = Pins::new(&node.bpffs_dir);
    if let Some((what, now)) = egress::reconcile_uplink(
        &pins,
        env.node,
        &e,
        node.pod_cidr,
        node.pod_cidr6,
        node.attach_mode,
    )? {
        if now != e {
            node.egress = Some(now);
            locked.state.node = Some(node);
            locked.save()?;
        }
        report.uplink = Some(what);
    }
    Ok(())
}

/// Repairs or removes each recorded endpoint.
fn check_records(
    env: &mut Env<'_>,
    locked: &mut Locked,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let endpoint_entries: BTreeMap<u32, EndpointInfo> =
        env.dp.endpoint_entries()?.into_iter().collect();
    let route_entries: BTreeMap<Ipv4Net, vethbpf_common::Route> =
        env.dp.route_entries()?.into_iter().collect();
    let endpoint6_entries: BTreeMap<u32, EndpointInfo6> =
        env.dp.endpoint6_entries()?.into_iter().collect();
    let route6_entries: BTreeMap<Ipv6Net, vethbpf_common::Route> =
        env.dp.route6_entries()?.into_iter().collect();
    let pod_attach = env.dp.pod_attach();
    let pinned = env.dp.pod_program()?.id;
    // What from_pod runs on: TCX links by their pins, tc filters by their place on
    // each recorded host veth (one batch of gets).
    let pod_links: BTreeMap<String, Option<u32>> = match pod_attach {
        AttachMode::Tcx => env.dp.links().into_iter().collect(),
        AttachMode::Tc => BTreeMap::new(),
    };
    let filters: BTreeMap<u32, Option<TcFilter>> = match pod_attach {
        AttachMode::Tc => {
            let indexes: Vec<u32> = locked
                .state
                .endpoints
                .values()
                .map(|r| r.host_ifindex)
                .collect();
            let found = env.node.ingress_filters(&indexes)?;
            indexes.into_iter().zip(found).collect()
        }
        AttachMode::Tcx => BTreeMap::new(),
    };
    let node_routes = env.node.routes()?;
    let node_routes6 = env.node.routes6()?;
    let gateway6 = locked.state.node.as_ref().map(NodeConfig::gateway6);
    // One dump instead of a lookup per record.
    let links: BTreeMap<String, crate::kernel::netlink::LinkInfo> = env
        .node
        .links()?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let records: Vec<EndpointRecord> = locked.state.endpoints.values().cloned().collect();
    for rec in records {
        let fix = |what: &str| Fix {
            endpoint: rec.name.clone(),
            what: what.to_string(),
        };
        let link = links.get(&rec.host_veth);
        let gone = match &link {
            None => Some("its host veth is gone"),
            Some(l) if l.index != rec.host_ifindex => Some("its host veth was re-created"),
            Some(_) if env.ns.resolve(&rec.netns.to_string_lossy()).is_err() => {
                Some("its namespace is gone")
            }
            Some(_) => None,
        };
        if let Some(why) = gone {
            endpoint::remove_endpoint(env, &rec)?;
            locked.state.endpoints.remove(&rec.name);
            locked.save()?;
            report.removed_endpoints.push(fix(why));
            continue;
        }
        let expected = EndpointInfo {
            ip: rec.ip.map_or(0, |ip| ipv4_to_map(ip.octets())),
            id: rec.id,
            mac: rec.pod_mac.0,
            _pad: [0; 2],
        };
        let slot = EndpointSlot {
            ifindex: rec.host_ifindex,
            info: expected,
        };
        if endpoint_entries.get(&rec.host_ifindex) != Some(&expected) {
            env.dp.put_endpoint(rec.host_ifindex, &expected)?;
            report.repaired.push(fix("endpoint map entry"));
        } else if env.dp.slot(rec.id).is_some_and(|s| s != slot) {
            // Only speed is lost without it (from_pod falls back to ENDPOINTS).
            env.dp.put_endpoint(rec.host_ifindex, &expected)?;
            report.repaired.push(fix("endpoint slot"));
        }
        let expected6 = rec.ip6.map(|ip6| EndpointInfo6 {
            ip: ip6.octets(),
            link_local: rec.link_local().octets(),
        });
        match (expected6, endpoint6_entries.get(&rec.host_ifindex)) {
            (Some(want), have) if have != Some(&want) => {
                env.dp.put_endpoint6(rec.host_ifindex, &want)?;
                report.repaired.push(fix("IPv6 endpoint map entry"));
            }
            (None, Some(_)) => {
                env.dp.del_endpoint6(rec.host_ifindex)?;
                report.repaired.push(fix("stray IPv6 endpoint map entry"));
            }
            _ => {}
        }
        let attachment = match pod_attach {
            AttachMode::Tcx => {
                repair_link(env, &rec, pod_links.get(&rec.host_veth).copied(), pinned)?
            }
            AttachMode::Tc => repair_filter(
                env,
                &rec,
                filters.get(&rec.host_ifindex).cloned().flatten(),
                pinned,
            )?,
        };
        if let Some(what) = attachment {
            report.repaired.push(fix(&what));
        }
        if link.is_some_and(|l| !l.up) {
            env.node.set_link_up(rec.host_ifindex)?;
            report.repaired.push(fix("host veth up"));
        }
        let route = endpoint::route_of(&rec);
        if let Some(ip) = rec.ip {
            let node_route = RouteSpec {
                dst: Ipv4Net::from(ip),
                oif: rec.host_ifindex,
                gateway: None,
                scope_link: true,
                onlink: false,
            };
            if !node_routes
                .iter()
                .any(|r| r.dst == node_route.dst && r.oif == node_route.oif)
            {
                env.node.add_route(&node_route)?;
                report.repaired.push(fix("node route"));
            }
            if route_entries.get(&Ipv4Net::from(ip)) != Some(&route) {
                env.dp.put_route(Ipv4Net::from(ip), &route)?;
                report.repaired.push(fix("route map entry"));
            } else if env.dp.addr_entry(ip) == Some(0) {
                // Empty only: another id there is a pod with the same last two address
                // bytes (a pod CIDR larger than a /16), which keeps it.
                env.dp.put_route(Ipv4Net::from(ip), &route)?;
                report.repaired.push(fix("endpoint address entry"));
            }
        }
        if let (Some(ip6), Some(gateway6)) = (rec.ip6, gateway6) {
            let gateway_addr = Ipv6Net::new_assert(gateway6, 64);
            if !env
                .node
                .addresses6(Some(rec.host_ifindex))?
                .contains(&(rec.host_ifindex, gateway_addr))
            {
                env.node.add_address6(rec.host_ifindex, gateway_addr)?;
                report.repaired.push(fix("host veth gateway address"));
            }
            let node_route = Route6Spec {
                dst: Ipv6Net::from(ip6),
                oif: rec.host_ifindex,
                gateway: None,
            };
            if !node_routes6
                .iter()
                .any(|r| r.dst == node_route.dst && r.oif == node_route.oif)
            {
                env.node.add_route6(&node_route)?;
                report.repaired.push(fix("IPv6 node route"));
            }
            if route6_entries.get(&Ipv6Net::from(ip6)) != Some(&route) {
                env.dp.put_route6(Ipv6Net::from(ip6), &route)?;
                report.repaired.push(fix("IPv6 route map entry"));
            }
        }
    }
    Ok(())
}

/// Gives `rec`'s host veth its TCX link running the `pinned` program, if the link
/// is missing (`link`: `None`) or runs another one. What was repaired, if anything.
fn repair_link(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
    link: Option<Option<u32>>,
    pinned: u32,
) -> Result<Option<String>, ReconcileError> {
    Ok(match pods::link_state(link, pinned) {
        AttachState::Ok => None,
        AttachState::Missing | AttachState::Foreign => {
            env.dp.attach(&rec.host_veth)?;
            Some("program attachment".into())
        }
        AttachState::Stale => {
            env.dp.relink(&rec.host_veth)?;
            Some(format!(
                "program attachment (its TCX link ran program {}, not {pinned})",
                link.flatten().map_or("?".into(), |i| i.to_string())
            ))
        }
    })
}

/// Gives `rec`'s host veth vethbpf's cls_bpf filter running the `pinned` program:
/// made if missing (`filter`: what holds its place), its program swapped in place
/// if it runs another, or put in place of someone else's filter there. What was
/// repaired, if anything.
fn repair_filter(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
    filter: Option<TcFilter>,
    pinned: u32,
) -> Result<Option<String>, ReconcileError> {
    let index = rec.host_ifindex;
    let what = match (pods::filter_state(filter.as_ref(), pinned), &filter) {
        (AttachState::Ok, _) => return Ok(None),
        (AttachState::Missing, _) | (_, None) => "program attachment".to_string(),
        (AttachState::Foreign, Some(f)) => {
            // Another classifier cannot be turned into cls_bpf: it goes first.
            env.node.del_filter(index)?;
            format!("program attachment (a {} filter held its place)", f.kind)
        }
        (AttachState::Stale, Some(f)) => format!(
            "program attachment (its filter ran program {}, not {pinned})",
            f.program_id.map_or("?".into(), |i| i.to_string())
        ),
    };
    // The filter's program is swapped in place if it is there; made if not.
    let prog = env.dp.pod_program()?;
    env.node.apply(&[
        Change::Clsact(index),
        Change::BpfFilter(index, prog.fd, PROG_FROM_POD, Some(rec.id)),
    ])?;
    Ok(Some(what))
}

/// Removes links, map entries and pins that have vethbpf's shape but no record.
fn remove_orphans(
    env: &mut Env<'_>,
    locked: &Locked,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let records = &locked.state.endpoints;
    let hosts: BTreeSet<&str> = records.values().map(|r| r.host_veth.as_str()).collect();
    let ips: BTreeSet<Ipv4Net> = records
        .values()
        .filter_map(|r| r.ip.map(Ipv4Net::from))
        .collect();
    let ips6: BTreeSet<Ipv6Net> = records
        .values()
        .filter_map(|r| r.ip6.map(Ipv6Net::from))
        .collect();
    let indexes: BTreeSet<u32> = records.values().map(|r| r.host_ifindex).collect();

    // Only endpoint routes can be orphans: remote-node routes are the cluster's (see
    // cluster::nodes::reconcile), the pod CIDR's own entry is the node's.
    for (net, _) in env
        .dp
        .route_entries()?
        .into_iter()
        .filter(|(_, r)| r.kind == vethbpf_common::ROUTE_KIND_LOCAL)
    {
        if !ips.contains(&net) {
            env.dp.del_route(net)?;
            report.removed_route_entries.push(net.into());
        }
    }
    for net in env
        .dp
        .route6_entries()?
        .into_iter()
        .filter(|(_, r)| r.kind == vethbpf_common::ROUTE_KIND_LOCAL)
        .map(|(n, _)| n)
    {
        if !ips6.contains(&net) {
            env.dp.del_route6(net)?;
            report.removed_route_entries.push(net.into());
        }
    }
    for link in env.node.links()? {
        if ident::is_derived_name(&link.name)
            && link.kind.as_deref() == Some("veth")
            && !hosts.contains(link.name.as_str())
        {
            match env.node.del_link(link.index) {
                Ok(()) => report.removed_links.push(link.name),
                // The other end of a pair deleted just before.
                Err(crate::kernel::netlink::NetlinkError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (index, _) in env.dp.endpoint_entries()? {
        if !indexes.contains(&index) {
            env.dp.del_endpoint(index)?;
            report.removed_endpoint_entries.push(index);
        }
    }
    for (index, _) in env.dp.endpoint6_entries()? {
        if !indexes.contains(&index) {
            env.dp.del_endpoint6(index)?;
            if !report.removed_endpoint_entries.contains(&index) {
                report.removed_endpoint_entries.push(index);
            }
        }
    }
    // Pods' TCX links: those no endpoint owns, and on a node whose pods have tc
    // filters, every one (from_pod would run twice).
    let tcx = env.dp.pod_attach() == AttachMode::Tcx;
    for (host, _) in env.dp.links() {
        if !tcx || !hosts.contains(host.as_str()) {
            env.dp.detach(&host)?;
            report.removed_pins.push(host);
        }
    }
    Ok(())
}

/// The node config of a node whose state file is lost: gateway and its MAC from
/// the CONFIG map, the bpffs mount if one sits right on the dir, the attach mode of
/// this kernel for the node's own programs, TCX for pods if they have pinned links
/// (else tc filters), and the pod CIDRs the user gives (the kernel does not hold
/// them).
pub fn node_from_pins(
    pins: &Pins,
    pod_cidr: Option<Ipv4Net>,
    pod_cidr6: Option<Ipv6Net>,
) -> Result<NodeConfig, EndpointError> {
    bpffs::check_lasting(pins.root())?;
    let config = Maps::open(pins)?.config()?;
    Ok(NodeConfig {
        pod_cidr,
        pod_cidr6,
        gateway: Ipv4Addr::from(ipv4_from_map(config.gateway_ip)),
        gateway_mac: MacAddr(config.gateway_mac),
        bpffs_dir: pins.root().to_path_buf(),
        bpffs_mount: bpffs::mounted_on(pins.root()),
        attach_mode: datapath::attach_mode(),
        pod_attach: if datapath::pinned_links(pins, PROG_FROM_POD).is_empty() {
            AttachMode::Tc
        } else {
            AttachMode::Tcx
        },
        // Needs the uplink's name: filled in by `from_kernel`.
        egress: None,
    })
}

/// Rebuilds the endpoint records from the kernel into `locked` (whose state is
/// empty: the file was lost or corrupt), then reconciles. A host veth whose tag or
/// map entry is missing was never committed, and is removed as an orphan.
pub fn from_kernel(
    env: &mut Env<'_>,
    locked: &mut Locked,
    node: NodeConfig,
) -> Result<Report, ReconcileError> {
    let entries: BTreeMap<u32, EndpointInfo> = env.dp.endpoint_entries()?.into_iter().collect();
    let entries6: BTreeMap<u32, EndpointInfo6> = env.dp.endpoint6_entries()?.into_iter().collect();
    let mut rebuilt = Vec::new();
    for link in env.node.links()? {
        let (Some(tag), Some(info)) = (
            link.alias.as_deref().and_then(KernelTag::decode),
            entries.get(&link.index),
        ) else {
            continue;
        };
        // The tag's name must hash to this link's name, or the alias is not ours
        // (and the link is no host veth).
        if ident::host_veth_name(&tag.name) != link.name {
            continue;
        }
        let Some(netns) = tag.netns.clone().or_else(|| {
            tag.netns_created
                .then(|| crate::kernel::netns::named_path(&tag.name))
        }) else {
            continue;
        };
        // 0.0.0.0: an endpoint without IPv4.
        let ip = Some(Ipv4Addr::from(ipv4_from_map(info.ip))).filter(|ip| !ip.is_unspecified());
        let ip6 = entries6.get(&link.index).map(|e| Ipv6Addr::from(e.ip));
        let outside = |ip: IpAddr, cidr: Option<String>| ReconcileError::OutsideCidr {
            name: tag.name.clone(),
            ip,
            cidr: cidr.unwrap_or_else(|| "none".into()),
        };
        if let Some(ip) = ip
            && !node.pod_cidr.is_some_and(|c| c.contains(&ip))
        {
            return Err(outside(ip.into(), node.pod_cidr.map(|c| c.to_string())));
        }
        if let Some(ip6) = ip6
            && !node.pod_cidr6.is_some_and(|c| c.contains(&ip6))
        {
            return Err(outside(ip6.into(), node.pod_cidr6.map(|c| c.to_string())));
        }
        rebuilt.push(EndpointRecord {
            name: tag.name,
            id: info.id,
            ip,
            ip6,
            pod_mac: MacAddr(info.mac),
            host_veth: link.name,
            host_ifindex: link.index,
            netns,
            netns_created: tag.netns_created,
            ifname: tag.ifname,
            cni: tag.cni,
        });
    }
    // Egress lives in the EGRESS map but for the uplink's name.
    let egress = egress::from_pins(&Pins::new(&node.bpffs_dir), env.node)?;
    locked.state.node = Some(NodeConfig { egress, ..node });
    locked.state.endpoints = rebuilt
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    locked.save()?;
    let mut report = reconcile(env, locked)?;
    report.rebuilt = rebuilt.into_iter().map(|r| r.name).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! `reconcile` against the endpoint fakes.

    use std::collections::BTreeSet;
    use std::fs;

    use ipnet::Ipv4Net;

    use crate::endpoint::route_of;
    use crate::endpoint::testing::World;
    use crate::kernel::netlink::Netlink;

    #[test]
    fn reconcile_repairs_records_and_removes_what_no_record_owns() {
        let mut w = World::new("reconcile");
        let a = w.add("a").unwrap();
        let b = w.add("b").unwrap();
        let healthy = w.snapshot();
        // Damage: a's attachment and route entry gone, an orphan map entry and an
        // orphan vethbpf-named veth pair, b's namespace deleted from under it.
        w.dp.attached.remove(&a.host_veth);
        w.dp.routes.remove(&Ipv4Net::from(a.ip.unwrap()));
        w.dp.routes
            .insert("10.244.0.99/32".parse().unwrap(), route_of(&a));
        w.node
            .add_veth("vb0123456789abc", "vp0123456789abc")
            .unwrap();
        fs::remove_file(&b.netns).unwrap();

        let report = w.with(crate::reconcile::reconcile).unwrap();
        let fixes = |v: &[crate::reconcile::Fix]| {
            v.iter()
                .map(|f| format!("{} {}", f.endpoint, f.what))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fixes(&report.repaired),
            ["a program attachment", "a route map entry"]
        );
        assert_eq!(
            fixes(&report.removed_endpoints),
            ["b its namespace is gone"]
        );
        assert_eq!(
            report.removed_route_entries,
            ["10.244.0.99/32".parse::<ipnet::IpNet>().unwrap()]
        );
        assert_eq!(report.removed_links.len(), 1, "{report:?}");
        // What is left is exactly a healthy node without b.
        let (links, netns, dp, state) = w.snapshot();
        assert_eq!(links, ["lo", a.host_veth.as_str()]);
        assert_eq!(netns, ["a"]);
        assert_eq!(dp.attached, BTreeSet::from([a.host_veth.clone()]));
        assert_eq!(dp.routes.len(), 1);
        assert_eq!(dp.endpoints.len(), 1);
        assert_eq!(state.endpoints.keys().collect::<Vec<_>>(), ["a"]);
        let _ = healthy;
        // A second run finds nothing to do.
        let again = w.with(crate::reconcile::reconcile).unwrap();
        assert!(!again.changed(), "{again:?}");
    }
}
