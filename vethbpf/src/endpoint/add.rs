//! `endpoint add`: a sequence of kernel changes; each one that succeeds pushes its
//! undo step, and any failure runs the undo steps in reverse, so a failed add leaves
//! the node as it found it. Everything that can be checked without changing
//! anything is checked first. The record's line in the state's log is written
//! last: it is the commit point.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use tracing::{debug, warn};
use vethbpf_common::{EndpointInfo, MAX_ENDPOINTS, ROUTE_KIND_LOCAL, Route, ipv4_to_map};

use super::journal::finish_pending;
use super::{EndpointError, Env, KernelTag, PodConfig, configure_pod_side};
use crate::fault;
use crate::kernel::netlink::{Change, Netlink, RouteSpec};
use crate::state::ident;
use crate::state::ipam;
use crate::state::{
    CniAttachment, EndpointRecord, Intent, Locked, LogEntry, NodeConfig, PlannedEndpoint,
};

/// What `endpoint add` is asked to make.
#[derive(Clone, Debug)]
pub struct AddRequest {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
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
    let used = || {
        locked
            .state
            .endpoints
            .values()
            .map(|e| (e.ip, e.name.as_str()))
    };
    let ip = match req.ip {
        Some(ip) => {
            ipam::validate(node.pod_cidr, node.gateway, ip, used())?;
            ip
        }
        None => ipam::allocate(node.pod_cidr, node.gateway, used().map(|(ip, _)| ip))?,
    };
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
    ip: Ipv4Addr,
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
    // side in the pod's namespace under its final name. Deleting the host side
    // later takes the pod side with it.
    fault::point("add.veth")?;
    let netns_fd = env.ns.open(&netns)?;
    let host_index =
        env.node
            .add_veth_into(&host, node.gateway_mac.0, &req.ifname, netns_fd.as_fd())?;
    drop(netns_fd);
    undo.push(Undo::DeleteLink(host_index));
    // Who this veth belongs to, for `reconcile --from-kernel`; and no IPv6
    // link-local address on the host side, which must be set before it comes up.
    let tag = KernelTag {
        name: req.name.clone(),
        ifname: req.ifname.clone(),
        netns: Some(netns.clone()),
        netns_created,
        cni: cni.clone(),
    }
    .encode();
    fault::point("add.ipv6")?;
    env.node.apply(&[
        Change::NoIpv6AddrGen(host_index),
        Change::Alias(host_index, &tag),
    ])?;
    fault::point("add.pod")?;
    let pod_mac = configure_pod_side(
        pod_nl.as_mut(),
        &PodConfig {
            ifname: req.ifname.clone(),
            ip,
            gateway: node.gateway,
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
            ip: ipv4_to_map(ip.octets()),
            id,
            mac: pod_mac.0,
            _pad: [0; 2],
        },
    )?;
    undo.push(Undo::DelEndpointEntry(host_index));
    fault::point("add.attach")?;
    env.dp.attach(&host)?;
    undo.push(Undo::Detach(host.clone()));
    // Up, and node -> pod through the kernel: `IP/32 dev HOST scope link`
    // (removed with the link, so no undo step of its own). One batch.
    fault::point("add.link-up")?;
    env.node.apply(&[
        Change::LinkUp(host_index),
        Change::AddRoute(&RouteSpec {
            dst: Ipv4Net::from(ip),
            oif: host_index,
            gateway: None,
            scope_link: true,
            onlink: false,
        }),
    ])?;
    let net = Ipv4Net::from(ip);
    fault::point("add.route-map")?;
    env.dp.put_route(
        net,
        &Route {
            kind: ROUTE_KIND_LOCAL,
            ifindex: host_index,
            endpoint_id: id,
            mac: pod_mac.0,
            _pad: [0; 2],
        },
    )?;
    undo.push(Undo::DelRouteEntry(net));

    let record = EndpointRecord {
        name: req.name.clone(),
        id,
        ip,
        pod_mac,
        host_veth: host,
        host_ifindex: host_index,
        netns,
        netns_created,
        ifname: req.ifname.clone(),
        cni,
    };
    fault::point("add.commit")?;
    locked.commit(LogEntry::Put(record.clone()))?;
    Ok(record)
}
