//! `vethbpf agent`: the optional long-running process of a cluster node. It leases
//! this node's pod subnet in etcd ([`super::etcd`]), brings the node `up` with it,
//! and keeps the remote nodes equal to the other leases, adding and removing them
//! with the same journalled calls as `node add/del`.
//!
//! The datapath never depends on it: killing the agent, or etcd going away, leaves
//! every route in place; when either comes back, the agent reads every lease again
//! and catches up.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc;

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use super::ClusterError;
use super::etcd::{self, LeaseValue, RegistryConfig, Update};
use super::join::{self, JoinError};
use super::maps::PinnedNodeMaps;
use super::neigh;
use super::nodes::{self, NodeSpec};
use super::setup::{self, ClusterRequest};
use super::subnets::{self, SubnetError};
use crate::datapath::Pins;
use crate::egress::EgressRequest;
use crate::kernel::netlink::{NetlinkError, RtNetlink};
use crate::node::UpRequest;
use crate::state::{Locked, NodeOrigin, StateDir, StateError};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub etcd: Vec<String>,
    pub prefix: String,
    pub node_name: String,
    pub cluster: ClusterRequest,
    pub subnet_len: u8,
    /// Prefix length of the IPv6 subnets (with `cluster.cluster_cidr6`).
    pub subnet_len6: u8,
    pub ttl_secs: i64,
    /// The pods' gateway when the agent brings a fresh node up.
    pub gateway: Ipv4Addr,
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("bringing the node up with the leased subnet {subnet}: {source}")]
    Join {
        subnet: Ipv4Net,
        #[source]
        source: Box<JoinError>,
    },
    #[error("{0}")]
    Registry(String),
    #[error("--lease-ttl must be at least 2 seconds, not {0}")]
    Ttl(i64),
}

impl AgentError {
    /// What kind of failure this is (see [`crate::error`]).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AgentError::Subnet(_) | AgentError::Ttl(_) => ErrorKind::Usage,
            AgentError::Netlink(e) => e.kind(),
            AgentError::Cluster(e) => e.kind(),
            AgentError::Join { source, .. } => source.kind(),
            AgentError::State(_) | AgentError::Registry(_) => ErrorKind::Other,
        }
    }
}

/// Runs until the registry reports a fatal error (or the process is killed).
pub fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    nodes::validate_name(&cfg.node_name)?;
    subnets::check_len(cfg.cluster.cluster_cidr, cfg.subnet_len)?;
    if let Some(cluster6) = cfg.cluster.cluster_cidr6 {
        subnets::check_len(cluster6, cfg.subnet_len6)?;
    }
    if cfg.ttl_secs < 2 {
        return Err(AgentError::Ttl(cfg.ttl_secs));
    }
    let mut nl = RtNetlink::connect()?;
    let uplink = setup::find_uplink(&mut nl, cfg.cluster.uplink.as_deref())?;
    let state_dir = StateDir::new(&cfg.state_dir);
    let (prefer, prefer6) = current_subnets(&state_dir, &cfg)?;
    info!(node = %cfg.node_name, address = %uplink.address, uplink = %uplink.name, ?prefer, "agent starting");

    let (tx, rx) = mpsc::channel();
    // Lives as long as this function: its thread stops when it is dropped.
    let _registry = etcd::spawn(
        RegistryConfig {
            endpoints: cfg.etcd.clone(),
            prefix: cfg.prefix.clone(),
            node_name: cfg.node_name.clone(),
            address: uplink.address,
            cluster_cidr: cfg.cluster.cluster_cidr,
            subnet_len: cfg.subnet_len,
            cluster_cidr6: cfg.cluster.cluster_cidr6,
            subnet_len6: cfg.subnet_len6,
            overlay: cfg.cluster.overlay,
            ttl_secs: cfg.ttl_secs,
            prefer,
            prefer6,
        },
        tx,
    );
    // Pin the uplink by name from now on: the default route may move.
    let cluster = ClusterRequest {
        uplink: Some(uplink.name.clone()),
        ..cfg.cluster.clone()
    };
    let mut own: Option<Ipv4Net> = None;
    loop {
        let update = match rx.recv_timeout(NEIGH_RETRY) {
            Ok(update) => update,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if own.is_some()
                    && let Err(e) = learn_missing_macs(&mut nl, &state_dir)
                {
                    warn!(error = %e, "cannot learn the remote nodes' MACs; trying again later");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match update {
            Update::Leased(subnet, subnet6) => {
                bring_up(&mut nl, &state_dir, &cfg, &cluster, subnet, subnet6)?;
                own = Some(subnet);
            }
            Update::Leases(leases) => {
                if let Some(own) = own
                    && let Err(e) = sync(&mut nl, &state_dir, &cfg, own, &leases)
                {
                    warn!(error = %e, "cannot apply the leases; next update tries again");
                }
            }
            Update::Fatal(msg) => return Err(AgentError::Registry(msg)),
        }
    }
    Err(AgentError::Registry(
        "the etcd registry thread ended".into(),
    ))
}

/// How often the agent tries again to learn the MACs of direct-routed IPv6 to
/// nodes that did not answer ARP when they were added.
const NEIGH_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Learns the MACs of nodes whose IPv6 pods are unreachable for want of them
/// (see [`super::neigh`]); nodes whose MACs are known are left alone.
fn learn_missing_macs(nl: &mut RtNetlink, state_dir: &StateDir) -> Result<(), AgentError> {
    let locked = state_dir.lock()?;
    let Some(node) = locked.state.node.clone() else {
        return Ok(());
    };
    let mut maps = PinnedNodeMaps::open(&Pins::new(&node.bpffs_dir)).map_err(ClusterError::from)?;
    let mut learn = |c: &crate::state::ClusterState, n: &crate::state::RemoteNode| {
        neigh::learn(nl, c.uplink_ifindex, n.address)
    };
    for fix in nodes::refresh_neigh(&mut maps, &locked, true, &mut learn)? {
        info!(node = %fix.name, "learnt the node's MAC");
    }
    Ok(())
}

/// The pod CIDRs the node has in this cluster, to keep across restarts.
fn current_subnets(
    state_dir: &StateDir,
    cfg: &AgentConfig,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), AgentError> {
    let locked = state_dir.lock()?;
    let keep = locked
        .state
        .node
        .as_ref()
        .and_then(|n| n.pod_cidr)
        .filter(|c| cfg.cluster.cluster_cidr.contains(c) && c.prefix_len() == cfg.subnet_len);
    let keep6 = locked
        .state
        .node
        .as_ref()
        .and_then(|n| n.pod_cidr6)
        .filter(|c| {
            cfg.cluster.cluster_cidr6.is_some_and(|c6| c6.contains(c))
                && c.prefix_len() == cfg.subnet_len6
        });
    if locked.state.node.is_none() {
        // Taking the lock made the state dir; a node that is not up keeps none.
        state_dir.remove(locked)?;
    }
    Ok((keep, keep6))
}

fn bring_up(
    nl: &mut RtNetlink,
    state_dir: &StateDir,
    cfg: &AgentConfig,
    cluster: &ClusterRequest,
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
) -> Result<(), AgentError> {
    let mut locked = state_dir.lock()?;
    let gateway = locked
        .state
        .node
        .as_ref()
        .map_or(cfg.gateway, |n| n.gateway);
    let req = UpRequest {
        pod_cidr: Some(subnet),
        // Without an IPv6 lease (an IPv4-only cluster), an IPv6 pod CIDR the node
        // has stays: its pods reach local pods only.
        pod_cidr6: subnet6.or_else(|| locked.state.node.as_ref().and_then(|n| n.pod_cidr6)),
        gateway,
        bpffs_dir: locked
            .state
            .node
            .as_ref()
            .map_or_else(|| cfg.bpffs_dir.clone(), |n| n.bpffs_dir.clone()),
        replace: false,
        // A new node's pods get tc filters; a node that is up keeps its own.
        pod_attach: None,
        // The cluster's uplink and CIDR are egress's too (never masqueraded).
        egress: EgressRequest {
            uplink: cluster.uplink.clone(),
            cluster_cidr: Some(cluster.cluster_cidr),
            ..EgressRequest::default()
        },
    };
    let report =
        join::up(nl, &mut locked, &req, Some(cluster), crate::EBPF_OBJECT).map_err(|e| {
            AgentError::Join {
                subnet,
                source: Box::new(e),
            }
        })?;
    info!(
        %subnet,
        ?subnet6,
        node = report.node.action,
        cluster = report.cluster.as_ref().map_or("-", |c| c.action),
        "node up"
    );
    Ok(())
}

/// Makes the etcd-made remote nodes equal to the leases of the other nodes.
fn sync(
    nl: &mut RtNetlink,
    state_dir: &StateDir,
    cfg: &AgentConfig,
    own: Ipv4Net,
    leases: &BTreeMap<Ipv4Net, LeaseValue>,
) -> Result<(), AgentError> {
    let mut locked = state_dir.lock()?;
    let node = locked.state.node.clone().ok_or(ClusterError::NotUp)?;
    let mut maps = PinnedNodeMaps::open(&Pins::new(&node.bpffs_dir)).map_err(ClusterError::from)?;
    nodes::finish_pending(&mut maps, &mut locked)?;
    // An IPv4-only node of a dual-stack cluster reaches the others' IPv4 pods only.
    let dual = locked
        .state
        .cluster
        .as_ref()
        .is_some_and(|c| c.cluster_cidr6.is_some());
    let desired: BTreeMap<String, NodeSpec> = leases
        .iter()
        .filter(|(subnet, v)| **subnet != own && v.node != cfg.node_name)
        .map(|(subnet, v)| {
            (
                v.node.clone(),
                NodeSpec {
                    name: v.node.clone(),
                    pod_cidr: *subnet,
                    pod_cidr6: v.pod_cidr6.filter(|_| dual),
                    address: v.address,
                    origin: NodeOrigin::Etcd,
                },
            )
        })
        .collect();
    let stale = stale_nodes(&locked, &desired);
    for name in stale {
        match nodes::del(&mut maps, &mut locked, &name) {
            Ok(n) => info!(node = %n.name, pod_cidr = %n.pod_cidr, "remote node removed"),
            Err(e) => warn!(node = %name, error = %e, "cannot remove a remote node"),
        }
    }
    let cluster = locked
        .state
        .cluster
        .clone()
        .ok_or(ClusterError::NoCluster)?;
    let nets = setup::uplink_nets(nl, &cluster)?;
    for spec in desired.values() {
        if cluster.nodes.contains_key(&spec.name) {
            continue;
        }
        let mut learn = |c: &crate::state::ClusterState, n: &crate::state::RemoteNode| {
            neigh::learn(nl, c.uplink_ifindex, n.address)
        };
        match nodes::add(&mut maps, &mut locked, spec, &nets, &mut learn) {
            Ok(n) => {
                info!(node = %n.name, pod_cidr = %n.pod_cidr, address = %n.address, "remote node added")
            }
            Err(e) => {
                warn!(node = %spec.name, pod_cidr = %spec.pod_cidr, error = %e, "cannot add a remote node")
            }
        }
    }
    Ok(())
}

/// Remote nodes from etcd that are no longer leased, or leased differently.
fn stale_nodes(locked: &Locked, desired: &BTreeMap<String, NodeSpec>) -> Vec<String> {
    locked
        .state
        .cluster
        .as_ref()
        .map(|c| {
            c.nodes
                .values()
                .filter(|n| n.origin == NodeOrigin::Etcd)
                .filter(|n| {
                    desired.get(&n.name).is_none_or(|d| {
                        d.pod_cidr != n.pod_cidr
                            || d.pod_cidr6 != n.pod_cidr6
                            || d.address != n.address
                    })
                })
                .map(|n| n.name.clone())
                .collect()
        })
        .unwrap_or_default()
}
