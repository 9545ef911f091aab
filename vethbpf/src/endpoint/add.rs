//! `endpoint add`: a sequence of kernel changes; each one that succeeds pushes its
//! undo step, and any failure runs the undo steps in reverse, so a failed add leaves
//! the node as it found it. Everything that can be checked without changing
//! anything is checked first. The record's line in the state's log is written
//! last: it is the commit point.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{debug, warn};
use vethbpf_common::{
    EndpointInfo, EndpointInfo6, MAX_ENDPOINTS, PROG_FROM_POD, ROUTE_KIND_LOCAL, Route, ipv4_to_map,
};

use super::journal::finish_pending;
use super::{EndpointError, Env, KernelTag, PodConfig, configure_pod_side};
use crate::datapath::AttachMode;
use crate::fault;
use crate::kernel::netlink::{Change, Netlink, Route6Spec, RouteSpec};
use crate::state::ident;
use crate::state::ipam;
use crate::state::ipam::IpamError;
use crate::state::{
    CniAttachment, EndpointRecord, Intent, Locked, LogEntry, NodeConfig, PlannedEndpoint,
};

/// What `endpoint add` is asked to make.
#[derive(Clone, Debug)]
pub struct AddRequest {
    pub name: String,
    /// Requested addresses, at most one per family; a family of the node without
    /// one gets the next free address of its pod CIDR.
    pub ips: Vec<IpAddr>,
    /// An existing namespace (name under /run/netns or path); `None` makes one
    /// named after the endpoint.
    pub netns: Option<String>,
    pub ifname: String,
}

/// One step of `add` that has happened and how to take it back.
#[derive(Debug)]
enum Undo {
    DeleteNetns(String),
    DeleteLink(u32),
    Detach(String),
    DelEndpointEntry(u32),
    DelRouteEntry(Ipv4Net),
    DelEndpoint6Entry(u32),
    DelRoute6Entry(Ipv6Net),
}

fn run_undo(env: &mut Env<'_>, steps: Vec<Undo>) {
    for step in steps.into_iter().rev() {
        debug!(?step, "rolling back");
        let r = match &step {
            Undo::DeleteNetns(name) => env.ns.delete(name),
            Undo::DeleteLink(index) => env.node.del_link(*index).map_err(Into::into),
            Undo::Detach(host) => env.dp.detach(host),
            Undo::DelEndpointEntry(ifindex) => env.dp.del_endpoint(*ifindex),
            Undo::DelRouteEntry(net) => env.dp.del_route(*net),
            Undo::DelEndpoint6Entry(ifindex) => env.dp.del_endpoint6(*ifindex),
            Undo::DelRoute6Entry(net) => env.dp.del_route6(*net),
        };
        if let Err(e) = r {
            warn!(?step, error = %e, "rollback step failed");
        }
    }
}

fn free_id(locked: &Locked) -> Result<u32, EndpointError> {
    let used: std::collections::BTreeSet<u32> =
        locked.state.endpoints.values().map(|e| e.id).collect();
    (1..MAX_ENDPOINTS)
        .find(|id| !used.contains(id))
        .ok_or(EndpointError::TooMany)
}

/// The endpoint's addresses, one per family the node has: the requested one
/// (checked) or the next free one.
fn addresses(
    locked: &Locked,
    node: &NodeConfig,
    requested: &[IpAddr],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), EndpointError> {
    let (want4, want6) = ipam::split_by_family(requested)?;
    let endpoints = || locked.state.endpoints.values();
    let ip = match (node.pod_cidr, want4) {
        (Some(cidr), Some(ip)) => {
            let used = endpoints().filter_map(|e| Some((e.ip?, e.name.as_str())));
            ipam::validate(cidr, node.gateway, ip, used)?;
            Some(ip)
        }
        (Some(cidr), None) => Some(ipam::allocate(
            cidr,
            node.gateway,
            endpoints().filter_map(|e| e.ip),
        )?),
        (None, Some(ip)) => {
            return Err(IpamError::NoCidr {
                ip: ip.into(),
                family: "IPv4",
            }
            .into());
        }
        (None, None) => None,
    };
    let ip6 = match (node.pod_cidr6, want6) {
        (Some(cidr), Some(ip)) => {
            let used = endpoints().filter_map(|e| Some((e.ip6?, e.name.as_str())));
            ipam::validate6(cidr, ip, used)?;
            Some(ip)
        }
        (Some(cidr), None) => Some(ipam::allocate6(cidr, endpoints().filter_map(|e| e.ip6))?),
        (None, Some(ip)) => {
            return Err(IpamError::NoCidr {
                ip: ip.into(),
                family: "IPv6",
            }
            .into());
        }
        (None, None) => None,
    };
    Ok((ip, ip6))
}

fn node_config(locked: &Locked) -> Result<NodeConfig, EndpointError> {
    locked.state.node.clone().ok_or(EndpointError::NotUp)
}

/// Adds an endpoint; on failure nothing of it remains.
pub fn add(
    env: &mut Env<'_>,
    locked: &mut Locked,
    req: &AddRequest,
) -> Result<EndpointRecord, EndpointError> {
    add_tagged(env, locked, req, None)
}

/// [`add`], recording the CNI attachment the endpoint belongs to (the CNI plugin's
/// ADD), in the same state write as the endpoint itself.
pub(crate) fn add_tagged(
    env: &mut Env<'_>,
    locked: &mut Locked,
    req: &AddRequest,
    cni: Option<CniAttachment>,
) -> Result<EndpointRecord, EndpointError> {
    // Checks that change nothing.
    ident::validate_endpoint_name(&req.name)?;
    finish_pending(env, locked)?;
    ident::validate_ifname(&req.ifname)?;
    let node = node_config(locked)?;
    if locked.state.endpoints.contains_key(&req.name) {
        return Err(EndpointError::Duplicate {
            name: req.name.clone(),
        });
    }
    let (ip, ip6) = addresses(locked, &node, &req.ips)?;
    let id = free_id(locked)?;
    let host = ident::host_veth_name(&req.name);
    // Journalled for the rollback of older vethbpf versions, which made the pod's
    // end under this name in the node namespace and then moved it; this one makes
    // it in the pod's namespace directly.
    let peer = ident::temp_peer_name(&req.name);
    if env.node.link_by_name(&host)?.is_some() {
        return Err(EndpointError::HostVethExists { ifname: host });
    }
    // A netlink client in the pod's namespace, opened once (on a throwaway thread)
    // and used from here for the check and the pod's configuration.
    let (existing_netns, pod_nl) = match &req.netns {
        Some(spec) => {
            let path = env.ns.resolve(spec)?;
            let mut nl = env.ns.netlink_in(&path)?;
            if nl.link_by_name(&req.ifname)?.is_some() {
                return Err(EndpointError::IfnameExists {
                    ifname: req.ifname.clone(),
                    netns: path,
                });
            }
            (Some(path), Some(nl))
        }
        None if env.ns.named_exists(&req.name) => {
            return Err(EndpointError::NetnsExists {
                name: req.name.clone(),
            });
        }
        None => {
            env.ns.check_create(&req.name)?;
            (None, None)
        }
    };

    // The journal goes first: if vethbpf dies from here on, the next command
    // rolls back whatever of this add exists (see `finish_pending`).
    fault::point("add.intent")?;
    locked.begin(&Intent::Add(PlannedEndpoint {
        name: req.name.clone(),
        ip,
        ip6,
        id,
        host_veth: host.clone(),
        temp_peer: peer.clone(),
        create_netns: existing_netns.is_none(),
    }))?;
    let mut undo = Vec::new();
    let result = add_steps(
        env,
        locked,
        &node,
        req,
        AddPlan {
            ip,
            ip6,
            id,
            host,
            existing_netns,
            pod_nl,
            cni,
        },
        &mut undo,
    );
    if result.is_err() {
        run_undo(env, undo);
    }
    // After a commit or a complete rollback the journal has nothing left to say. If
    // removing it fails, the next command finds the add done or undone and only
    // removes it then.
    if let Err(e) = fault::point("add.done")
        .map_err(EndpointError::from)
        .and_then(|()| Ok(locked.end()?))
    {
        warn!(error = %e, "cannot clear the journal; the next command will");
    }
    result
}

struct AddPlan {
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    id: u32,
    host: String,
    existing_netns: Option<PathBuf>,
    /// A netlink client in the existing namespace (opened by the checks).
    pod_nl: Option<Box<dyn Netlink>>,
    cni: Option<CniAttachment>,
}

fn add_steps(
    env: &mut Env<'_>,
    locked: &mut Locked,
    node: &NodeConfig,
    req: &AddRequest,
    plan: AddPlan,
    undo: &mut Vec<Undo>,
) -> Result<EndpointRecord, EndpointError> {
    let AddPlan {
        ip,
        ip6,
        id,
        host,
        existing_netns,
        pod_nl,
        cni,
    } = plan;
    let (netns, netns_created) = match existing_netns {
        Some(path) => (path, false),
        None => {
            fault::point("add.netns")?;
            let path = env.ns.create(&req.name)?;
            undo.push(Undo::DeleteNetns(req.name.clone()));
            (path, true)
        }
    };
    let mut pod_nl = match pod_nl {
        Some(nl) => nl,
        None => env.ns.netlink_in(&netns)?,
    };

    // One request makes the pair: the host side here with the gateway MAC, the pod
    // side in the pod's namespace under its final name, both with the cluster's
    // MTU if it sets one (the pod's side limits what it sends, the host's what a
    // redirect into it may carry). Deleting the host side later takes the pod
    // side with it.
    let pod_mtu = locked.state.cluster.as_ref().map(|c| c.pod_mtu);
    fault::point("add.veth")?;
    let netns_fd = env.ns.open(&netns)?;
    let host_index = env.node.add_veth_into(
        &host,
        node.gateway_mac.0,
        pod_mtu,
        &req.ifname,
        netns_fd.as_fd(),
    )?;
    drop(netns_fd);
    undo.push(Undo::DeleteLink(host_index));
    // In one batch: no IPv6 link-local address of the kernel's on the host side
    // (set before it comes up); with IPv6, the gateway's link-local address and no
    // other: the node's own neighbour solicitations to the pod need a link-local
    // source on the link (ndisc sends none without one), while the pod's
    // solicitations for it never reach the node (from_pod answers them); and who
    // this veth belongs to, for `reconcile --from-kernel`.
    let tag = KernelTag {
        name: req.name.clone(),
        ifname: req.ifname.clone(),
        netns: Some(netns.clone()),
        netns_created,
        cni: cni.clone(),
    }
    .encode();
    let mut host_changes = vec![Change::NoIpv6AddrGen(host_index)];
    if ip6.is_some() {
        host_changes.push(Change::AddAddress6(
            host_index,
            Ipv6Net::new_assert(node.gateway6(), 64),
        ));
    }
    host_changes.push(Change::Alias(host_index, &tag));
    fault::point("add.ipv6")?;
    env.node.apply(&host_changes)?;
    fault::point("add.pod")?;
    let pod_mac = configure_pod_side(
        pod_nl.as_mut(),
        &PodConfig {
            ifname: req.ifname.clone(),
            ip,
            gateway: node.gateway,
            ip6,
            gateway6: node.gateway6(),
            lo_up: netns_created,
        },
    )?;
    drop(pod_nl);

    // Datapath: the endpoint entry must exist before the program sees the first
    // frame (else it drops as no-endpoint); the route entry comes last because it
    // makes the pod reachable from the others.
    fault::point("add.counters")?;
    env.dp.reset_counters(id)?;
    fault::point("add.endpoint-map")?;
    env.dp.put_endpoint(
        host_index,
        &EndpointInfo {
            // 0.0.0.0: no IPv4, every IPv4 and ARP source is a spoof.
            ip: ip.map_or(0, |ip| ipv4_to_map(ip.octets())),
            id,
            mac: pod_mac.0,
            _pad: [0; 2],
        },
    )?;
    undo.push(Undo::DelEndpointEntry(host_index));
    if let Some(ip6) = ip6 {
        fault::point("add.endpoint6-map")?;
        env.dp.put_endpoint6(
            host_index,
            &EndpointInfo6 {
                ip: ip6.octets(),
                link_local: pod_mac.link_local().octets(),
            },
        )?;
        undo.push(Undo::DelEndpoint6Entry(host_index));
    }
    fault::point("add.attach")?;
    // from_pod: a TCX link, attached and pinned here; or a clsact qdisc and a
    // cls_bpf filter, made in the batch below, before the link comes up (a filter
    // goes with the veth, so it has no undo step of its own).
    let filter_program = match env.dp.pod_attach() {
        AttachMode::Tcx => {
            env.dp.attach(&host)?;
            undo.push(Undo::Detach(host.clone()));
            None
        }
        AttachMode::Tc => Some(env.dp.pod_program()?),
    };
    // Up, and node -> pod through the kernel: `IP/32 dev HOST scope link` and
    // `IP6/128 dev HOST` (removed with the link, so no undo step of their own).
    // One batch.
    let node_route = ip.map(|ip| RouteSpec {
        dst: Ipv4Net::from(ip),
        oif: host_index,
        gateway: None,
        scope_link: true,
        onlink: false,
    });
    let node_route6 = ip6.map(|ip6| Route6Spec {
        dst: Ipv6Net::from(ip6),
        oif: host_index,
        gateway: None,
    });
    let mut node_changes = Vec::with_capacity(5);
    if let Some(prog) = filter_program {
        node_changes.push(Change::Clsact(host_index));
        // The classid is the endpoint id: from_pod finds its ENDPOINT_SLOTS entry by it.
        node_changes.push(Change::BpfFilter(
            host_index,
            prog.fd,
            PROG_FROM_POD,
            Some(id),
        ));
    }
    node_changes.push(Change::LinkUp(host_index));
    node_changes.extend(node_route.as_ref().map(Change::AddRoute));
    node_changes.extend(node_route6.as_ref().map(Change::AddRoute6));
    fault::point("add.link-up")?;
    env.node.apply(&node_changes)?;
    let route = Route {
        kind: ROUTE_KIND_LOCAL,
        ifindex: host_index,
        endpoint_id: id,
        mac: pod_mac.0,
        _pad: [0; 2],
    };
    fault::point("add.route-map")?;
    if let Some(ip) = ip {
        let net = Ipv4Net::from(ip);
        env.dp.put_route(net, &route)?;
        undo.push(Undo::DelRouteEntry(net));
    }
    if let Some(ip6) = ip6 {
        let net = Ipv6Net::from(ip6);
        env.dp.put_route6(net, &route)?;
        undo.push(Undo::DelRoute6Entry(net));
    }

    let record = EndpointRecord {
        name: req.name.clone(),
        id,
        ip,
        ip6,
        pod_mac,
        host_veth: host,
        host_ifindex: host_index,
        netns,
        netns_created,
        ifname: req.ifname.clone(),
        cni,
    };
    fault::point("add.commit")?;
    locked.commit(LogEntry::Put(Box::new(record.clone())))?;
    Ok(record)
}
