//! `endpoint add`, `endpoint del` and `endpoint list`.
//!
//! `add` is a sequence of kernel changes; each one that succeeds pushes its undo
//! step, and any failure runs the undo steps in reverse, so a failed add leaves the
//! node as it found it. Everything that can be checked without changing anything is
//! checked first. The state file is written last: it is the commit point.
//!
//! The kernel is reached through three small traits ([`Netlink`] for the node
//! namespace, [`Namespaces`] for pod namespaces, [`Datapath`] for the pinned eBPF
//! objects) so that the logic, rollback included, is unit-tested with fakes.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::{debug, warn};
use vethbpf_common::{
    Counter, EndpointInfo, MAX_ENDPOINTS, ROUTE_KIND_LOCAL, Route, Verdict, ipv4_to_map,
};

use crate::bpf::{self, BpfError, Pins};
use crate::fault::{self, Injected};
use crate::ident::{self, MacAddr, NameError};
use crate::ipam::{self, IpamError};
use crate::maps::{EndpointCounters, Maps, MapsError};
use crate::netlink::{Netlink, NetlinkError, RouteSpec};
use crate::netns::{self, NetnsError};
use crate::reconcile::KernelTag;
use crate::state::{
    AttachMode, CniAttachment, EndpointRecord, Intent, Locked, NodeConfig, PlannedEndpoint,
    StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the node is not up: run `vethbpf up` first")]
    NotUp,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("endpoint {name} already exists")]
    Duplicate { name: String },
    #[error("no endpoint named {name}")]
    NotFound { name: String },
    #[error(
        "the interface {ifname} already exists in the node namespace (left over from an earlier run?); delete it or choose another endpoint name"
    )]
    HostVethExists { ifname: String },
    #[error(
        "the network namespace {name} already exists; pass `--netns {name}` to put the endpoint in it"
    )]
    NetnsExists { name: String },
    #[error("the interface {ifname} already exists in the namespace {netns}")]
    IfnameExists { ifname: String, netns: PathBuf },
    #[error("the node has {max} endpoints, the most it supports", max = MAX_ENDPOINTS - 1)]
    TooMany,
    #[error("the veth peer {ifname} vanished while it was being set up")]
    PeerVanished { ifname: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Injected(#[from] Injected),
    #[error(
        "endpoint del {name} stopped after the pod's interface was removed ({source}); the next vethbpf command, or `vethbpf reconcile`, finishes it"
    )]
    DelInterrupted {
        name: String,
        #[source]
        source: Box<EndpointError>,
    },
}

/// Pod namespaces: creating, deleting, resolving, and configuring the inside.
pub trait Namespaces {
    /// Whether a named namespace exists under /run/netns.
    fn named_exists(&self, name: &str) -> bool;
    fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError>;
    fn delete(&mut self, name: &str) -> Result<(), EndpointError>;
    /// `NAME` (under /run/netns) or a path; must exist and be a network namespace.
    fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError>;
    /// Moves a node-side link into the namespace at `netns`.
    fn move_link(
        &mut self,
        node: &mut dyn Netlink,
        index: u32,
        netns: &Path,
    ) -> Result<(), EndpointError>;
    /// Whether `ifname` exists inside the namespace.
    fn link_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, EndpointError>;
    /// Runs [`configure_pod_side`] inside the namespace.
    fn configure(&mut self, netns: &Path, cfg: &PodConfig) -> Result<MacAddr, EndpointError>;
}

/// The pinned eBPF objects, as endpoint changes use them.
pub trait Datapath {
    fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError>;
    fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError>;
    fn put_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), EndpointError>;
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), EndpointError>;
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), EndpointError>;
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError>;
    fn reset_counters(&mut self, id: u32) -> Result<(), EndpointError>;
    fn counters(&self, id: u32) -> Result<EndpointCounters, EndpointError>;
    /// Every ROUTES entry (for `reconcile`).
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError>;
    /// Every ENDPOINTS entry, by host ifindex (for `reconcile`).
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError>;
    /// The host veths with a pinned attachment; `None` when attachments are not
    /// pinned (netlink mode), so there is nothing to compare.
    fn attached(&self) -> Option<Vec<String>>;
}

/// What the pod side gets.
#[derive(Clone, Debug)]
pub struct PodConfig {
    /// Name of the peer when it arrives in the namespace.
    pub temp_name: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Bring `lo` up too (the namespace is vethbpf's own).
    pub lo_up: bool,
    /// The interface's MTU when the node's cluster sets one (an overlay's headers
    /// need room); `None` keeps the veth default.
    pub mtu: Option<u32>,
}

/// Inside the pod: rename the peer, bring it (and `lo` if asked) up, `IP/32`, a link route to
/// the gateway and a default route through it. Returns the pod interface's MAC.
pub fn configure_pod_side(nl: &mut dyn Netlink, cfg: &PodConfig) -> Result<MacAddr, EndpointError> {
    let link = nl
        .link_by_name(&cfg.temp_name)?
        .ok_or_else(|| EndpointError::PeerVanished {
            ifname: cfg.temp_name.clone(),
        })?;
    nl.rename_link(link.index, &cfg.ifname)?;
    if let Some(mtu) = cfg.mtu {
        nl.set_link_mtu(link.index, mtu)?;
    }
    // Only in a namespace vethbpf made: an existing one is its owner's, and a
    // rollback could not tell whether lo was up before.
    if cfg.lo_up
        && let Some(lo) = nl.link_by_name("lo")?
    {
        nl.set_link_up(lo.index)?;
    }
    nl.set_link_up(link.index)?;
    nl.add_address(link.index, Ipv4Net::from(cfg.ip))?;
    nl.add_route(&RouteSpec {
        dst: Ipv4Net::from(cfg.gateway),
        oif: link.index,
        gateway: None,
        scope_link: true,
        onlink: false,
    })?;
    nl.add_route(&RouteSpec {
        dst: Ipv4Net::default(),
        oif: link.index,
        gateway: Some(cfg.gateway),
        scope_link: false,
        onlink: true,
    })?;
    let mac = nl
        .link_by_index(link.index)?
        .and_then(|l| l.mac)
        .ok_or_else(|| EndpointError::PeerVanished {
            ifname: cfg.ifname.clone(),
        })?;
    Ok(MacAddr(mac))
}

/// The kernel as `endpoint` commands see it.
pub struct Env<'a> {
    pub node: &'a mut dyn Netlink,
    pub ns: &'a mut dyn Namespaces,
    pub dp: &'a mut dyn Datapath,
}

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
pub fn add_tagged(
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
    let peer = ident::temp_peer_name(&req.name);
    for name in [&host, &peer] {
        if env.node.link_by_name(name)?.is_some() {
            return Err(EndpointError::HostVethExists {
                ifname: name.clone(),
            });
        }
    }
    let existing_netns = match &req.netns {
        Some(spec) => {
            let path = env.ns.resolve(spec)?;
            if env.ns.link_exists(&path, &req.ifname)? {
                return Err(EndpointError::IfnameExists {
                    ifname: req.ifname.clone(),
                    netns: path,
                });
            }
            Some(path)
        }
        None if env.ns.named_exists(&req.name) => {
            return Err(EndpointError::NetnsExists {
                name: req.name.clone(),
            });
        }
        None => None,
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
            peer,
            existing_netns,
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
    peer: String,
    existing_netns: Option<PathBuf>,
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
        peer,
        existing_netns,
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

    // The pair is made in the node namespace; deleting the host side later takes
    // the pod side with it, wherever it is.
    fault::point("add.veth")?;
    let host_index = env.node.add_veth(&host, &peer)?;
    undo.push(Undo::DeleteLink(host_index));
    fault::point("add.ipv6")?;
    env.node.disable_ipv6_addr_gen(host_index)?;
    fault::point("add.mac")?;
    env.node.set_link_mac(host_index, node.gateway_mac.0)?;
    // Both ends alike: the pod's side limits what it sends, the host's what a
    // redirect into it may carry.
    let pod_mtu = locked.state.cluster.as_ref().map(|c| c.pod_mtu);
    if let Some(mtu) = pod_mtu {
        env.node.set_link_mtu(host_index, mtu)?;
    }
    // Who this veth belongs to, for `reconcile --from-kernel`.
    let tag = KernelTag {
        name: req.name.clone(),
        ifname: req.ifname.clone(),
        netns: Some(netns.clone()),
        netns_created,
        cni: cni.clone(),
    };
    env.node.set_link_alias(host_index, &tag.encode())?;
    let peer_index = env
        .node
        .link_by_name(&peer)?
        .ok_or_else(|| EndpointError::PeerVanished {
            ifname: peer.clone(),
        })?
        .index;
    fault::point("add.move")?;
    env.ns.move_link(env.node, peer_index, &netns)?;
    fault::point("add.pod")?;
    let pod_mac = env.ns.configure(
        &netns,
        &PodConfig {
            temp_name: peer,
            ifname: req.ifname.clone(),
            ip,
            gateway: node.gateway,
            lo_up: netns_created,
            mtu: pod_mtu,
        },
    )?;

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
    fault::point("add.link-up")?;
    env.node.set_link_up(host_index)?;
    // Node -> pod goes through the kernel: `IP/32 dev HOST scope link` (removed
    // with the link, so no undo step of its own).
    fault::point("add.node-route")?;
    env.node.add_route(&RouteSpec {
        dst: Ipv4Net::from(ip),
        oif: host_index,
        gateway: None,
        scope_link: true,
        onlink: false,
    })?;
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
    locked
        .state
        .endpoints
        .insert(record.name.clone(), record.clone());
    if let Err(e) = fault::point("add.commit")
        .map_err(EndpointError::from)
        .and_then(|()| Ok(locked.save()?))
    {
        locked.state.endpoints.remove(&record.name);
        return Err(e);
    }
    Ok(record)
}

/// Deletes an endpoint: route entry first (nobody is sent to it any more), then the
/// veth (the pod loses its interface and the program its hook), then the pins, map
/// entries, the namespace if vethbpf made it, and the record.
///
/// A failure before the veth is deleted puts the route entry back: the endpoint is
/// as it was. From the veth's deletion on there is no going back, so a failure
/// leaves the journal and the next command (or `reconcile`) finishes the delete.
pub fn del(
    env: &mut Env<'_>,
    locked: &mut Locked,
    name: &str,
) -> Result<EndpointRecord, EndpointError> {
    // `endpoint del NAME` run again after a del of NAME died: finishing that one is
    // the answer.
    match locked.pending()? {
        Some(Intent::Del(rec)) if rec.name == name => {
            settle(env, locked, Intent::Del(rec.clone()))?;
            return Ok(rec);
        }
        Some(intent) => {
            settle(env, locked, intent)?;
        }
        None => {}
    }
    let rec = locked
        .state
        .endpoints
        .get(name)
        .cloned()
        .ok_or_else(|| EndpointError::NotFound {
            name: name.to_string(),
        })?;
    fault::point("del.intent")?;
    locked.begin(&Intent::Del(rec.clone()))?;

    let reversible = (|| {
        fault::point("del.route-map")?;
        env.dp.del_route(Ipv4Net::from(rec.ip))?;
        if let Err(e) = delete_host_veth(env, &rec) {
            if let Err(undo) = env.dp.put_route(Ipv4Net::from(rec.ip), &route_of(&rec)) {
                warn!(error = %undo, "cannot restore the route entry");
            }
            return Err(e);
        }
        Ok(())
    })();
    if let Err(e) = reversible {
        if let Err(end) = locked.end() {
            warn!(error = %end, "cannot clear the journal");
        }
        return Err(e);
    }
    let interrupted = |source| EndpointError::DelInterrupted {
        name: name.to_string(),
        source: Box::new(source),
    };
    remove_after_veth(env, &rec).map_err(interrupted)?;
    fault::point("del.commit").map_err(|e| interrupted(e.into()))?;
    locked.state.endpoints.remove(name);
    if let Err(e) = locked.save() {
        // The kernel side is gone; the record stays until the journal is replayed.
        locked.state.endpoints.insert(rec.name.clone(), rec.clone());
        return Err(interrupted(e.into()));
    }
    if let Err(e) = fault::point("del.done")
        .map_err(EndpointError::from)
        .and_then(|()| Ok(locked.end()?))
    {
        warn!(error = %e, "cannot clear the journal; the next command will");
    }
    Ok(rec)
}

/// The route entry that sends traffic to `rec`.
pub(crate) fn route_of(rec: &EndpointRecord) -> Route {
    Route {
        kind: ROUTE_KIND_LOCAL,
        ifindex: rec.host_ifindex,
        endpoint_id: rec.id,
        mac: rec.pod_mac.0,
        _pad: [0; 2],
    }
}

/// Deletes the host veth (and with it the pod side and the node's /32 route).
fn delete_host_veth(env: &mut Env<'_>, rec: &EndpointRecord) -> Result<(), EndpointError> {
    fault::point("del.link")?;
    // Look the link up by name: after a crash the recorded index may belong to
    // something else.
    if let Some(link) = env.node.link_by_name(&rec.host_veth)? {
        match env.node.del_link(link.index) {
            Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What `del` removes once the veth is gone; each part already gone is fine.
fn remove_after_veth(env: &mut Env<'_>, rec: &EndpointRecord) -> Result<(), EndpointError> {
    fault::point("del.detach")?;
    env.dp.detach(&rec.host_veth)?;
    fault::point("del.endpoint-map")?;
    env.dp.del_endpoint(rec.host_ifindex)?;
    if rec.netns_created {
        fault::point("del.netns")?;
        match env.ns.delete(&rec.name) {
            Ok(()) | Err(EndpointError::Netns(NetnsError::NotFound(_))) => {}
            Err(e) => return Err(e),
        }
    }
    fault::point("del.counters")?;
    env.dp.reset_counters(rec.id)?;
    Ok(())
}

/// The kernel side of `del`, without the state record. Idempotent: parts already
/// gone are fine, so it also finishes a `del` that was interrupted.
pub fn remove_endpoint(env: &mut Env<'_>, rec: &EndpointRecord) -> Result<(), EndpointError> {
    env.dp.del_route(Ipv4Net::from(rec.ip))?;
    delete_host_veth(env, rec)?;
    remove_after_veth(env, rec)
}

/// How the journal of an interrupted command was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// `add` or `del`.
    pub op: &'static str,
    pub name: String,
    /// `rolled back` (an add that had not committed), `completed` (a del, or an
    /// add that had committed before it died).
    pub outcome: &'static str,
}

/// Settles the journal a command that died halfway left behind: an add that did
/// not commit is rolled back, a del is finished. Cheap when there is none (one
/// failed `open`), so every command that changes endpoints calls it first.
pub fn finish_pending(
    env: &mut Env<'_>,
    locked: &mut Locked,
) -> Result<Option<Recovered>, EndpointError> {
    match locked.pending()? {
        Some(intent) => settle(env, locked, intent).map(Some),
        None => Ok(None),
    }
}

/// Settles one journaled intent (see [`finish_pending`]) and clears the journal.
fn settle(
    env: &mut Env<'_>,
    locked: &mut Locked,
    intent: Intent,
) -> Result<Recovered, EndpointError> {
    let recovered = match intent {
        Intent::Add(plan) => {
            let committed = locked
                .state
                .endpoints
                .get(&plan.name)
                .is_some_and(|r| r.host_veth == plan.host_veth && r.ip == plan.ip);
            if !committed {
                roll_back_add(env, locked, &plan)?;
            }
            Recovered {
                op: "add",
                name: plan.name,
                outcome: if committed {
                    "completed"
                } else {
                    "rolled back"
                },
            }
        }
        Intent::Del(rec) => {
            remove_endpoint(env, &rec)?;
            if locked.state.endpoints.get(&rec.name) == Some(&rec) {
                locked.state.endpoints.remove(&rec.name);
                if let Err(e) = locked.save() {
                    locked.state.endpoints.insert(rec.name.clone(), rec.clone());
                    return Err(e.into());
                }
            }
            Recovered {
                op: "del",
                name: rec.name,
                outcome: "completed",
            }
        }
    };
    locked.end()?;
    warn!(
        op = recovered.op,
        endpoint = %recovered.name,
        outcome = recovered.outcome,
        "settled a command that was interrupted"
    );
    Ok(recovered)
}

/// Removes whatever an uncommitted add made, found by the names it planned.
fn roll_back_add(
    env: &mut Env<'_>,
    locked: &Locked,
    plan: &PlannedEndpoint,
) -> Result<(), EndpointError> {
    let owned = |pred: &dyn Fn(&EndpointRecord) -> bool| locked.state.endpoints.values().any(pred);
    // The address was free when the add began, under the lock; an entry for it is
    // the add's.
    if !owned(&|r| r.ip == plan.ip) {
        env.dp.del_route(Ipv4Net::from(plan.ip))?;
    }
    for ifname in [&plan.host_veth, &plan.temp_peer] {
        if owned(&|r| &r.host_veth == ifname) {
            continue;
        }
        if let Some(link) = env.node.link_by_name(ifname)? {
            env.dp.del_endpoint(link.index)?;
            match env.node.del_link(link.index) {
                Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !owned(&|r| r.host_veth == plan.host_veth) {
        env.dp.detach(&plan.host_veth)?;
    }
    if plan.create_netns && env.ns.named_exists(&plan.name) && !owned(&|r| r.name == plan.name) {
        match env.ns.delete(&plan.name) {
            Ok(()) | Err(EndpointError::Netns(NetnsError::NotFound(_))) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An endpoint as `endpoint list` and `endpoint add` show it.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointView {
    pub name: String,
    pub id: u32,
    pub ip: Ipv4Addr,
    pub pod_mac: MacAddr,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CounterView>,
}

/// Packets and bytes of one counter.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Count {
    fn from(c: Counter) -> Self {
        Count {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Counters of one endpoint, by verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterView {
    pub forwarded: Count,
    pub arp_replies: Count,
    pub passed: Count,
    /// Sent to pods on other nodes.
    pub to_nodes: Count,
    /// Delivered from pods (or nodes) elsewhere in the cluster.
    pub from_nodes: Count,
    /// Total of all drop reasons.
    pub dropped: Count,
    /// Drops by reason, keyed by the verdict's name.
    pub drops: std::collections::BTreeMap<&'static str, Count>,
}

impl CounterView {
    pub fn from_counters(c: &EndpointCounters) -> Self {
        let mut v = CounterView {
            forwarded: c[Verdict::Forward as usize].into(),
            arp_replies: c[Verdict::ArpReply as usize].into(),
            passed: c[Verdict::Pass as usize].into(),
            to_nodes: c[Verdict::ToNode as usize].into(),
            from_nodes: c[Verdict::FromNode as usize].into(),
            ..Default::default()
        };
        for verdict in Verdict::ALL.into_iter().filter(|v| v.is_drop()) {
            let n = c[verdict as usize];
            v.dropped.packets += n.packets;
            v.dropped.bytes += n.bytes;
            v.drops.insert(verdict.name(), n.into());
        }
        v
    }
}

impl EndpointView {
    pub fn new(rec: &EndpointRecord, counters: Option<&EndpointCounters>) -> Self {
        EndpointView {
            name: rec.name.clone(),
            id: rec.id,
            ip: rec.ip,
            pod_mac: rec.pod_mac,
            host_veth: rec.host_veth.clone(),
            host_ifindex: rec.host_ifindex,
            netns: rec.netns.clone(),
            ifname: rec.ifname.clone(),
            counters: counters.map(CounterView::from_counters),
        }
    }
}

/// Every endpoint with its counters.
pub fn list(dp: &dyn Datapath, locked: &Locked) -> Result<Vec<EndpointView>, EndpointError> {
    locked
        .state
        .endpoints
        .values()
        .map(|rec| Ok(EndpointView::new(rec, Some(&dp.counters(rec.id)?))))
        .collect()
}

// ---- the real kernel ----

/// Pod namespaces through [`crate::netns`].
pub struct KernelNamespaces;

impl Namespaces for KernelNamespaces {
    fn named_exists(&self, name: &str) -> bool {
        netns::named_path(name).exists()
    }
    fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError> {
        Ok(netns::create_named(name)?)
    }
    fn delete(&mut self, name: &str) -> Result<(), EndpointError> {
        Ok(netns::delete_named(name)?)
    }
    fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError> {
        Ok(netns::resolve(spec)?)
    }
    fn move_link(
        &mut self,
        node: &mut dyn Netlink,
        index: u32,
        netns: &Path,
    ) -> Result<(), EndpointError> {
        let fd = netns::open(netns)?;
        Ok(node.move_link_to_netns(index, fd.as_fd())?)
    }
    fn link_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, EndpointError> {
        let ifname = ifname.to_string();
        netns::with_netlink_in(netns, move |nl| {
            Ok::<_, EndpointError>(nl.link_by_name(&ifname)?.is_some())
        })
    }
    fn configure(&mut self, netns: &Path, cfg: &PodConfig) -> Result<MacAddr, EndpointError> {
        let cfg = cfg.clone();
        netns::with_netlink_in(netns, move |nl| configure_pod_side(nl, &cfg))
    }
}

/// The pinned program and maps of a node that is up.
pub struct PinnedDatapath {
    pins: Pins,
    maps: Maps,
    mode: AttachMode,
}

impl PinnedDatapath {
    pub fn open(node: &NodeConfig) -> Result<Self, EndpointError> {
        let pins = Pins::new(&node.bpffs_dir);
        let maps = Maps::open(&pins)?;
        Ok(PinnedDatapath {
            pins,
            maps,
            mode: node.attach_mode,
        })
    }
    pub fn maps(&self) -> &Maps {
        &self.maps
    }
}

impl Datapath for PinnedDatapath {
    fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        bpf::attach(&self.pins, host_veth, self.mode)?;
        Ok(())
    }
    fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        Ok(bpf::detach(&self.pins, host_veth)?)
    }
    fn put_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), EndpointError> {
        Ok(self.maps.put_endpoint(ifindex, info)?)
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), EndpointError> {
        Ok(self.maps.del_endpoint(ifindex)?)
    }
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), EndpointError> {
        Ok(self.maps.put_route(net, route)?)
    }
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError> {
        Ok(self.maps.del_route(net)?)
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), EndpointError> {
        Ok(self.maps.reset_counters(id)?)
    }
    fn counters(&self, id: u32) -> Result<EndpointCounters, EndpointError> {
        Ok(self.maps.counters(id)?)
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
        Ok(self.maps.routes())
    }
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
        Ok(self.maps.endpoints())
    }
    fn attached(&self) -> Option<Vec<String>> {
        (self.mode == AttachMode::Tcx).then(|| bpf::pinned_links(&self.pins))
    }
}

/// The datapath of a node whose pins are gone (its bpffs was unmounted): every map
/// entry and attachment went with them, so removing one is done already. Lets
/// `down` clean up links, namespaces and state all the same.
pub struct GoneDatapath;

impl Datapath for GoneDatapath {
    fn attach(&mut self, _host_veth: &str) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn detach(&mut self, _host_veth: &str) -> Result<(), EndpointError> {
        Ok(())
    }
    fn put_endpoint(&mut self, _ifindex: u32, _info: &EndpointInfo) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_endpoint(&mut self, _ifindex: u32) -> Result<(), EndpointError> {
        Ok(())
    }
    fn put_route(&mut self, _net: Ipv4Net, _route: &Route) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_route(&mut self, _net: Ipv4Net) -> Result<(), EndpointError> {
        Ok(())
    }
    fn reset_counters(&mut self, _id: u32) -> Result<(), EndpointError> {
        Ok(())
    }
    fn counters(&self, _id: u32) -> Result<EndpointCounters, EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
        Ok(Vec::new())
    }
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
        Ok(Vec::new())
    }
    fn attached(&self) -> Option<Vec<String>> {
        None
    }
}

#[cfg(test)]
mod tests {
    //! `add`/`del` against fakes: every step of `add` is made to fail in turn, and
    //! each time the node must hold exactly what it held before.

    use std::collections::{BTreeMap, BTreeSet};
    use std::fs::{self, File};

    use super::*;
    use crate::netlink::FakeNetlink;
    use crate::state::{State, StateDir};

    /// Namespaces as plain files in a temp dir; the fake netlink world tells them
    /// apart by file identity.
    struct FakeNamespaces {
        dir: PathBuf,
        node: FakeNetlink,
        fail_create: bool,
    }

    impl FakeNamespaces {
        fn handle(&self, netns: &Path) -> FakeNetlink {
            let f = File::open(netns).unwrap();
            self.node.namespace_for_fd(f.as_fd()).unwrap()
        }
    }

    impl Namespaces for FakeNamespaces {
        fn named_exists(&self, name: &str) -> bool {
            self.dir.join(name).exists()
        }
        fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError> {
            if self.fail_create {
                return Err(NetnsError::AlreadyExists(self.dir.join(name)).into());
            }
            let p = self.dir.join(name);
            fs::write(&p, b"").unwrap();
            Ok(p)
        }
        fn delete(&mut self, name: &str) -> Result<(), EndpointError> {
            let p = self.dir.join(name);
            fs::remove_file(&p).map_err(|_| NetnsError::NotFound(p))?;
            Ok(())
        }
        fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError> {
            let p = self.dir.join(spec);
            if p.exists() {
                Ok(p)
            } else {
                Err(NetnsError::NotFound(p).into())
            }
        }
        fn move_link(
            &mut self,
            node: &mut dyn Netlink,
            index: u32,
            netns: &Path,
        ) -> Result<(), EndpointError> {
            let f = File::open(netns).unwrap();
            Ok(node.move_link_to_netns(index, f.as_fd())?)
        }
        fn link_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, EndpointError> {
            Ok(self.handle(netns).link_by_name(ifname)?.is_some())
        }
        fn configure(&mut self, netns: &Path, cfg: &PodConfig) -> Result<MacAddr, EndpointError> {
            configure_pod_side(&mut self.handle(netns), cfg)
        }
    }

    #[derive(Default, Debug, PartialEq, Eq, Clone)]
    struct FakeDatapath {
        attached: BTreeSet<String>,
        endpoints: BTreeMap<u32, EndpointInfo>,
        routes: BTreeMap<Ipv4Net, Route>,
        /// Datapath op that fails (name) on its first call.
        fail: Option<&'static str>,
    }

    impl FakeDatapath {
        fn check(&self, op: &'static str) -> Result<(), EndpointError> {
            if self.fail == Some(op) {
                return Err(MapsError::Op {
                    map: "FAKE",
                    op,
                    source: aya::maps::MapError::KeyNotFound,
                }
                .into());
            }
            Ok(())
        }
    }

    impl Datapath for FakeDatapath {
        fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
            self.check("attach")?;
            self.attached.insert(host_veth.into());
            Ok(())
        }
        fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
            self.attached.remove(host_veth);
            Ok(())
        }
        fn put_endpoint(&mut self, i: u32, info: &EndpointInfo) -> Result<(), EndpointError> {
            self.check("put_endpoint")?;
            self.endpoints.insert(i, *info);
            Ok(())
        }
        fn del_endpoint(&mut self, i: u32) -> Result<(), EndpointError> {
            self.endpoints.remove(&i);
            Ok(())
        }
        fn put_route(&mut self, net: Ipv4Net, r: &Route) -> Result<(), EndpointError> {
            self.check("put_route")?;
            self.routes.insert(net, *r);
            Ok(())
        }
        fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError> {
            self.routes.remove(&net);
            Ok(())
        }
        fn reset_counters(&mut self, _id: u32) -> Result<(), EndpointError> {
            self.check("reset_counters")
        }
        fn counters(&self, _id: u32) -> Result<EndpointCounters, EndpointError> {
            Ok([Counter::default(); Verdict::COUNT as usize])
        }
        fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
            Ok(self.routes.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
            Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn attached(&self) -> Option<Vec<String>> {
            Some(self.attached.iter().cloned().collect())
        }
    }

    struct World {
        dir: PathBuf,
        node: FakeNetlink,
        ns: FakeNamespaces,
        dp: FakeDatapath,
        state: StateDir,
    }

    impl World {
        fn new(tag: &str) -> World {
            let dir = std::env::temp_dir().join(format!(
                "vethbpf-endpoint-test-{}-{tag}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("netns")).unwrap();
            let node = FakeNetlink::new();
            let state = StateDir::new(dir.join("state"));
            let mut l = state.lock().unwrap();
            l.state.node = Some(NodeConfig {
                pod_cidr: "10.244.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(169, 254, 1, 1),
                gateway_mac: MacAddr::GATEWAY,
                bpffs_dir: dir.join("bpffs"),
                bpffs_mount: None,
                attach_mode: AttachMode::Tcx,
            });
            l.save().unwrap();
            World {
                ns: FakeNamespaces {
                    dir: dir.join("netns"),
                    node: node.clone(),
                    fail_create: false,
                },
                dir,
                node,
                dp: FakeDatapath::default(),
                state,
            }
        }

        fn add(&mut self, name: &str) -> Result<EndpointRecord, EndpointError> {
            let mut locked = self.state.lock().unwrap();
            let mut env = Env {
                node: &mut self.node,
                ns: &mut self.ns,
                dp: &mut self.dp,
            };
            add(
                &mut env,
                &mut locked,
                &AddRequest {
                    name: name.into(),
                    ip: None,
                    netns: None,
                    ifname: "eth0".into(),
                },
            )
        }

        fn del(&mut self, name: &str) -> Result<EndpointRecord, EndpointError> {
            let mut locked = self.state.lock().unwrap();
            let mut env = Env {
                node: &mut self.node,
                ns: &mut self.ns,
                dp: &mut self.dp,
            };
            del(&mut env, &mut locked, name)
        }

        /// Everything the node holds: links, namespaces, datapath, state.
        fn snapshot(&mut self) -> (Vec<String>, Vec<String>, FakeDatapath, State) {
            let links = self
                .node
                .links()
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
            let mut netns: Vec<String> = fs::read_dir(&self.ns.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            netns.sort();
            let state = self.state.lock().unwrap().state.clone();
            let mut dp = self.dp.clone();
            dp.fail = None;
            (links, netns, dp, state)
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn add_then_del_round_trip() {
        let mut w = World::new("roundtrip");
        let empty = w.snapshot();
        let rec = w.add("web").unwrap();
        assert_eq!(rec.ip, Ipv4Addr::new(10, 244, 0, 1));
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
        assert_eq!((rec2.ip, rec2.id), (Ipv4Addr::new(10, 244, 0, 2), 2));
        w.del("db").unwrap();
        w.del("web").unwrap();
        assert_eq!(w.snapshot(), empty);
    }

    #[test]
    fn every_failing_step_of_add_is_rolled_back() {
        let netlink_steps = [
            ("add_veth", 1),
            ("disable_ipv6_addr_gen", 1),
            ("set_link_mac", 1),
            ("move_link_to_netns", 1),
            ("rename_link", 1),
            ("set_link_up", 1), // lo in the pod
            ("set_link_up", 2), // eth0 in the pod
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

    impl World {
        /// Runs `f` with the world's kernel and the locked state.
        fn with<T>(&mut self, f: impl FnOnce(&mut Env<'_>, &mut Locked) -> T) -> T {
            let mut locked = self.state.lock().unwrap();
            let mut env = Env {
                node: &mut self.node,
                ns: &mut self.ns,
                dp: &mut self.dp,
            };
            f(&mut env, &mut locked)
        }
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
                    id: rec.id,
                    host_veth: rec.host_veth.clone(),
                    temp_peer: ident::temp_peer_name("web"),
                    create_netns: true,
                }))
                .unwrap();
        });
        let recovered = w.with(finish_pending).unwrap();
        assert_eq!(
            recovered.map(|r| (r.op, r.outcome)),
            Some(("add", "rolled back"))
        );
        assert_eq!(w.snapshot(), before);
        assert!(w.with(|_, l| l.pending()).unwrap().is_none());
        // Nothing left to settle the second time.
        assert_eq!(w.with(finish_pending).unwrap(), None);
    }

    #[test]
    fn a_del_that_died_after_the_veth_is_finished_by_the_next_command() {
        let mut w = World::new("died-del");
        let empty = w.snapshot();
        let rec = w.add("web").unwrap();
        // The del journaled itself, removed the route entry and the veth, and died.
        w.with(|env, locked| {
            locked.begin(&Intent::Del(rec.clone())).unwrap();
            env.dp.del_route(Ipv4Net::from(rec.ip)).unwrap();
            delete_host_veth(env, &rec).unwrap();
        });
        // Running `del web` again is the natural next command: it succeeds.
        assert_eq!(w.del("web").unwrap(), rec);
        assert_eq!(w.snapshot(), empty);
        assert!(matches!(w.del("web"), Err(EndpointError::NotFound { .. })));
    }

    #[test]
    fn reconcile_repairs_records_and_removes_what_no_record_owns() {
        let mut w = World::new("reconcile");
        let a = w.add("a").unwrap();
        let b = w.add("b").unwrap();
        let healthy = w.snapshot();
        // Damage: a's attachment and route entry gone, an orphan map entry and an
        // orphan vethbpf-named veth pair, b's namespace deleted from under it.
        w.dp.attached.remove(&a.host_veth);
        w.dp.routes.remove(&Ipv4Net::from(a.ip));
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
            ["10.244.0.99/32".parse::<Ipv4Net>().unwrap()]
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
