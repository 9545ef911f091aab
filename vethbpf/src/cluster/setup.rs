//! `up`'s cluster part: find the uplink, check the request against the node, then
//! make the kernel match (the VXLAN device, the attachment of `from_tunnel`, the
//! CLUSTER map); `down`'s; and the cluster view of `status`. `up` loads, pins and
//! upgrades the programs with the rest of the datapath, and attaches `from_uplink`
//! to the uplink with egress (one program there, for NAT replies and other nodes'
//! traffic alike); links are pinned under `links/<program>/`.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use tracing::{info, warn};
use vethbpf_common::{CLUSTER_MODE_DIRECT, CLUSTER_MODE_VXLAN, ClusterConfig, ipv4_to_map};

use vethbpf_common::{PROG_FROM_TUNNEL, PROG_FROM_UPLINK};

use super::ClusterError;
use super::maps::NodeMaps;
use super::nodes::{self, NodeView};
use crate::datapath::{self, AttachMode, Pins};
use crate::kernel::netlink::{Netlink, NetlinkError, VxlanSpec};
use crate::state::{ClusterState, Locked, Overlay, VxlanDevice};

/// vethbpf's VXLAN device (at most 15 bytes, like every interface name).
pub const VXLAN_DEVICE: &str = "vethbpf.vx";
/// The port Flannel's and the kernel's VXLAN default to on Linux.
pub use vethbpf_common::VXLAN_PORT;
/// Every node of a cluster tunnels with the same VNI.
pub const VXLAN_VNI: u32 = 1;
/// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// What a veth gets when nobody sets its MTU: what endpoints made before the node
/// joined a cluster have.
pub const DEFAULT_POD_MTU: u32 = 1500;
/// The smallest datagram every IPv4 host must accept (RFC 791): pods get at least
/// this.
const MIN_POD_MTU: u32 = 576;
/// The smallest link MTU IPv6 allows (RFC 8200): pods of a dual-stack cluster get
/// at least this, the overlay's 50 bytes on top (the outer header is IPv4 whatever
/// the inner family).
const MIN_POD_MTU6: u32 = 1280;

/// `up`'s cluster flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRequest {
    pub cluster_cidr: Ipv4Net,
    /// The IPv6 cluster CIDR of a dual-stack cluster.
    pub cluster_cidr6: Option<Ipv6Net>,
    pub overlay: Overlay,
    /// `None`: the device of the default route.
    pub uplink: Option<String>,
}

/// `--cluster-cidr` given once per family: (IPv4, IPv6). An IPv6 one needs an
/// IPv4 one (the underlay, node addresses and the cluster itself are IPv4).
pub fn split_cluster_cidrs(
    cidrs: &[ipnet::IpNet],
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), ClusterError> {
    let (mut v4, mut v6): (Option<Ipv4Net>, Option<Ipv6Net>) = (None, None);
    for cidr in cidrs {
        let (family, first) = match cidr.trunc() {
            ipnet::IpNet::V4(c) => ("IPv4", v4.replace(c).map(ipnet::IpNet::V4)),
            ipnet::IpNet::V6(c) => ("IPv6", v6.replace(c).map(ipnet::IpNet::V6)),
        };
        if let Some(first) = first {
            return Err(ClusterError::TwoClusterCidrs {
                family,
                first,
                second: *cidr,
            });
        }
    }
    if v6.is_some() && v4.is_none() {
        return Err(ClusterError::Ipv6ClusterWithoutIpv4);
    }
    Ok((v4, v6))
}

/// The node's uplink as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    /// Its first IPv4 address: this node's address in the cluster.
    pub address: Ipv4Addr,
    /// The networks of its addresses (direct routing reaches nodes in them).
    pub nets: Vec<Ipv4Net>,
    pub mtu: u32,
}

/// Finds the uplink: `name`, or the device of the default route.
pub fn find_uplink(nl: &mut dyn Netlink, name: Option<&str>) -> Result<Uplink, ClusterError> {
    let link = match name {
        Some(name) => nl
            .link_by_name(name)?
            .ok_or_else(|| ClusterError::NoUplink {
                name: name.to_string(),
            })?,
        None => {
            let oif = nl
                .routes()?
                .into_iter()
                .find(|r| r.dst.prefix_len() == 0)
                .map(|r| r.oif)
                .ok_or(ClusterError::NoDefaultRoute)?;
            nl.link_by_index(oif)?.ok_or(ClusterError::NoDefaultRoute)?
        }
    };
    let addrs: Vec<Ipv4Net> = nl
        .addresses(Some(link.index))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let address =
        addrs
            .first()
            .map(|a| a.addr())
            .ok_or_else(|| ClusterError::UplinkWithoutAddress {
                name: link.name.clone(),
            })?;
    Ok(Uplink {
        name: link.name,
        index: link.index,
        address,
        nets: addrs.iter().map(|a| a.trunc()).collect(),
        mtu: link.mtu,
    })
}

/// The networks of the recorded uplink's addresses now (for `node add`'s check).
pub fn uplink_nets(
    nl: &mut dyn Netlink,
    cluster: &ClusterState,
) -> Result<Vec<Ipv4Net>, ClusterError> {
    Ok(nl
        .addresses(Some(cluster.uplink_ifindex))?
        .into_iter()
        .map(|(_, a)| a.trunc())
        .collect())
}

/// Checks the request against the node (about to get `pod_cidr` and `pod_cidr6`)
/// and returns the cluster state to apply; changes nothing.
pub fn plan(
    nl: &mut dyn Netlink,
    locked: &Locked,
    pod_cidr: Ipv4Net,
    pod_cidr6: Option<Ipv6Net>,
    req: &ClusterRequest,
    uplink: &Uplink,
) -> Result<ClusterState, ClusterError> {
    if !req.cluster_cidr.contains(&pod_cidr) {
        return Err(ClusterError::OutsideCluster {
            pod_cidr: pod_cidr.into(),
            cluster_cidr: req.cluster_cidr.into(),
        });
    }
    if let Some(cluster6) = req.cluster_cidr6 {
        let own6 = pod_cidr6.ok_or(ClusterError::NoIpv6PodCidr)?;
        if !cluster6.contains(&own6) {
            return Err(ClusterError::OutsideCluster {
                pod_cidr: own6.into(),
                cluster_cidr: cluster6.into(),
            });
        }
    }
    if req.cluster_cidr.contains(&uplink.address) {
        return Err(ClusterError::AddressInCluster {
            address: uplink.address,
            cluster_cidr: req.cluster_cidr,
        });
    }
    let overhead = match req.overlay {
        Overlay::None => 0,
        Overlay::Vxlan => VXLAN_OVERHEAD,
    };
    let min_pod_mtu = if req.cluster_cidr6.is_some() {
        MIN_POD_MTU6
    } else {
        MIN_POD_MTU
    };
    if uplink.mtu < min_pod_mtu + overhead {
        return Err(ClusterError::MtuTooSmall {
            name: uplink.name.clone(),
            mtu: uplink.mtu,
            overhead,
        });
    }
    let pod_mtu = uplink.mtu - overhead;
    let current = locked.state.cluster.as_ref();
    let endpoints = locked.state.endpoints.len();
    let describe = |cidr: Ipv4Net, cidr6: Option<Ipv6Net>, overlay: Overlay, uplink: &str| {
        let cidr6 = cidr6.map_or_else(String::new, |c| format!(" --cluster-cidr {c}"));
        format!(
            "--cluster-cidr {cidr}{cidr6} --overlay {} --uplink {uplink}",
            overlay.name()
        )
    };
    let mut nodes = std::collections::BTreeMap::new();
    if let Some(cur) = current {
        let same = cur.cluster_cidr == req.cluster_cidr
            && cur.cluster_cidr6 == req.cluster_cidr6
            && cur.overlay == req.overlay
            && cur.uplink == uplink.name;
        if !same && (endpoints > 0 || !cur.nodes.is_empty()) {
            return Err(ClusterError::ClusterChange {
                current: describe(
                    cur.cluster_cidr,
                    cur.cluster_cidr6,
                    cur.overlay,
                    &cur.uplink,
                ),
                requested: describe(
                    req.cluster_cidr,
                    req.cluster_cidr6,
                    req.overlay,
                    &uplink.name,
                ),
                endpoints,
                nodes: cur.nodes.len(),
            });
        }
        nodes = cur.nodes.clone();
    }
    let current_mtu = current.map_or(DEFAULT_POD_MTU, |c| c.pod_mtu);
    if endpoints > 0 && pod_mtu != current_mtu {
        return Err(ClusterError::MtuChange {
            current: current_mtu,
            requested: pod_mtu,
            endpoints,
        });
    }
    if let Some(other) = nodes.values().find(|n: &&crate::state::RemoteNode| {
        n.pod_cidr.contains(&pod_cidr.network()) || pod_cidr.contains(&n.pod_cidr.network())
    }) {
        return Err(ClusterError::Overlaps {
            pod_cidr: pod_cidr.into(),
            other: other.name.clone(),
            other_cidr: other.pod_cidr.into(),
        });
    }
    if let Some(own6) = pod_cidr6
        && let Some((other, other6)) = nodes.values().find_map(|n| {
            n.pod_cidr6
                .filter(|c| c.contains(&own6.network()) || own6.contains(&c.network()))
                .map(|c| (n, c))
        })
    {
        return Err(ClusterError::Overlaps {
            pod_cidr: own6.into(),
            other: other.name.clone(),
            other_cidr: other6.into(),
        });
    }
    let vxlan = match req.overlay {
        Overlay::None => None,
        Overlay::Vxlan => {
            let recorded = current.and_then(|c| c.vxlan.as_ref());
            if let Some(link) = nl.link_by_name(VXLAN_DEVICE)?
                && (link.kind.as_deref() != Some("vxlan")
                    || recorded.is_none_or(|v| v.ifindex != link.index))
            {
                return Err(ClusterError::TunnelNameTaken {
                    name: VXLAN_DEVICE.to_string(),
                });
            }
            Some(VxlanDevice {
                name: VXLAN_DEVICE.to_string(),
                ifindex: recorded.map_or(0, |v| v.ifindex),
                vni: VXLAN_VNI,
                port: VXLAN_PORT,
            })
        }
    };
    Ok(ClusterState {
        cluster_cidr: req.cluster_cidr,
        cluster_cidr6: req.cluster_cidr6,
        overlay: req.overlay,
        uplink: uplink.name.clone(),
        uplink_ifindex: uplink.index,
        node_ip: uplink.address,
        uplink_mtu: uplink.mtu,
        pod_mtu,
        vxlan,
        nodes,
    })
}

/// The CLUSTER map entry of a cluster state.
pub fn kernel_config(c: &ClusterState) -> ClusterConfig {
    ClusterConfig {
        mode: match c.overlay {
            Overlay::None => CLUSTER_MODE_DIRECT,
            Overlay::Vxlan => CLUSTER_MODE_VXLAN,
        },
        uplink_ifindex: c.uplink_ifindex,
        tunnel_ifindex: c.vxlan.as_ref().map_or(0, |v| v.ifindex),
        vni: c.vxlan.as_ref().map_or(0, |v| v.vni),
        node_ip: ipv4_to_map(c.node_ip.octets()),
        _pad: 0,
    }
}

/// What `up` did to the cluster part.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    /// `joined` (first time), `unchanged`, `repaired` (a device or attachment was
    /// missing), or `reconfigured`.
    pub action: &'static str,
    pub cluster: ClusterState,
}

/// A step `apply` took and how to take it back.
#[derive(Debug)]
enum Undo {
    DeleteLink(u32),
    /// A program's link on an interface.
    Detach(&'static str, String),
    ClusterMap(ClusterConfig),
}

/// Makes the kernel match `desired` (from [`plan`]) and records it. A failure
/// undoes the steps taken.
pub fn apply(
    nl: &mut dyn Netlink,
    maps: &mut dyn NodeMaps,
    pins: &Pins,
    mode: AttachMode,
    locked: &mut Locked,
    mut desired: ClusterState,
) -> Result<ClusterReport, ClusterError> {
    let current = locked.state.cluster.clone();
    let mut undo = Vec::new();
    let mut repaired = false;
    let result = (|| {
        // `up` pins every program of the object; a datapath loaded by an older
        // vethbpf has only from_pod.
        if [PROG_FROM_UPLINK, PROG_FROM_TUNNEL]
            .iter()
            .any(|p| !pins.program(p).exists())
        {
            return Err(ClusterError::ProgramsMissing);
        }
        // Leaving one overlay for another (only allowed with nothing depending on
        // it): take the old pieces down first.
        if let Some(cur) = &current
            && (cur.overlay != desired.overlay || cur.uplink != desired.uplink)
        {
            remove_kernel_parts(nl, pins, cur)?;
        }
        match desired.overlay {
            // Direct-routed packets from other nodes arrive on the uplink, where
            // egress's `from_uplink` (attached by the node's `up`) hands them to the
            // cluster's checks.
            Overlay::None => {}
            Overlay::Vxlan => {
                // `plan` gives every VXLAN cluster its device.
                let Some(vx) = desired.vxlan.as_mut() else {
                    return Err(ClusterError::NoCluster);
                };
                let existing = nl
                    .link_by_name(&vx.name)?
                    .filter(|l| l.index == vx.ifindex && l.kind.as_deref() == Some("vxlan"));
                let fresh = existing.is_none();
                if fresh {
                    let index = nl.add_vxlan(&VxlanSpec {
                        name: vx.name.clone(),
                        port: vx.port,
                        mtu: desired.pod_mtu,
                    })?;
                    undo.push(Undo::DeleteLink(index));
                    nl.disable_ipv6_addr_gen(index)?;
                    nl.set_link_up(index)?;
                    vx.ifindex = index;
                    repaired |= current.is_some();
                } else if existing.is_some_and(|l| !l.up) {
                    nl.set_link_up(vx.ifindex)?;
                    repaired = true;
                }
                if fresh || !attached(pins, mode, PROG_FROM_TUNNEL, &vx.name, current.is_some()) {
                    // A link to a device that is gone is dead weight: drop its pin.
                    datapath::detach(pins, PROG_FROM_TUNNEL, &vx.name)?;
                    datapath::attach(pins, PROG_FROM_TUNNEL, &vx.name, mode)?;
                    undo.push(Undo::Detach(PROG_FROM_TUNNEL, vx.name.clone()));
                    repaired |= current.is_some();
                }
            }
        }
        let config = kernel_config(&desired);
        let before = maps.cluster()?;
        if before != config {
            maps.set_cluster(&config)?;
            undo.push(Undo::ClusterMap(before));
        }
        locked.state.cluster = Some(desired.clone());
        if let Err(e) = locked.save() {
            locked.state.cluster = current.clone();
            return Err(e.into());
        }
        Ok(())
    })();
    if let Err(e) = result {
        for step in undo.into_iter().rev() {
            let r = match &step {
                Undo::DeleteLink(index) => nl.del_link(*index).map_err(ClusterError::from),
                Undo::Detach(prog, ifname) => {
                    datapath::detach(pins, prog, ifname).map_err(ClusterError::from)
                }
                Undo::ClusterMap(before) => maps.set_cluster(before).map_err(ClusterError::from),
            };
            if let Err(e) = r {
                warn!(?step, error = %e, "rolling back the cluster set-up");
            }
        }
        return Err(e);
    }
    // Interface indexes change when a device is made again: a repair, not a new
    // configuration.
    let settings = |c: &ClusterState| {
        (
            c.cluster_cidr,
            c.cluster_cidr6,
            c.overlay,
            c.uplink.clone(),
            c.node_ip,
            c.uplink_mtu,
            c.pod_mtu,
        )
    };
    let action = match &current {
        None => "joined",
        Some(c) if settings(c) != settings(&desired) => "reconfigured",
        Some(_) if repaired => "repaired",
        Some(_) => "unchanged",
    };
    if action != "unchanged" {
        info!(action, overlay = desired.overlay.name(), uplink = %desired.uplink, "cluster set up");
    }
    Ok(ClusterReport {
        action,
        cluster: desired,
    })
}

/// Whether `program` is attached to `ifname`: its link's pin exists (TCX). Netlink
/// filters leave no trace to check, so there only a node that was not set up yet
/// (`!known`) attaches.
fn attached(pins: &Pins, mode: AttachMode, program: &str, ifname: &str, known: bool) -> bool {
    match mode {
        AttachMode::Tcx => pins.link(program, ifname).exists(),
        AttachMode::Tc => known,
    }
}

/// Detaches the cluster's programs and deletes the VXLAN device of `cluster`.
fn remove_kernel_parts(
    nl: &mut dyn Netlink,
    pins: &Pins,
    cluster: &ClusterState,
) -> Result<(), ClusterError> {
    // `from_uplink` on the uplink is egress's: it stays while the node is up.
    if let Some(vx) = &cluster.vxlan {
        datapath::detach(pins, PROG_FROM_TUNNEL, &vx.name)?;
    }
    if let Some(vx) = &cluster.vxlan
        && let Some(link) = nl.link_by_name(&vx.name)?
        && link.kind.as_deref() == Some("vxlan")
    {
        match nl.del_link(link.index) {
            Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `down`'s cluster part: the attachments, the VXLAN device and the record. The
/// programs and maps go with the rest of the datapath.
pub fn down(nl: &mut dyn Netlink, pins: &Pins, locked: &mut Locked) -> Result<(), ClusterError> {
    if let Some(cluster) = locked.state.cluster.clone() {
        remove_kernel_parts(nl, pins, &cluster)?;
    }
    if locked.state.cluster.take().is_some() {
        locked.save()?;
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterProgram {
    pub name: &'static str,
    pub id: Option<u32>,
    pub attached_to: Option<String>,
    pub link_id: Option<u32>,
}

/// The cluster view of `status`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster_cidr: Ipv4Net,
    pub cluster_cidr6: Option<Ipv6Net>,
    pub overlay: Overlay,
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    pub uplink_mtu: u32,
    pub pod_mtu: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanDevice>,
    pub programs: Vec<ClusterProgram>,
    pub nodes: Vec<NodeView>,
}

pub fn status(
    maps: &dyn NodeMaps,
    pins: &Pins,
    locked: &Locked,
) -> Result<Option<ClusterStatus>, ClusterError> {
    let Some(c) = &locked.state.cluster else {
        return Ok(None);
    };
    let tunnel = c
        .vxlan
        .as_ref()
        .map_or_else(String::new, |v| v.name.clone());
    let programs = [
        (PROG_FROM_UPLINK, c.uplink.clone()),
        (PROG_FROM_TUNNEL, tunnel),
    ]
    .into_iter()
    .map(|(name, ifname)| {
        let link = datapath::link_ids(pins, name, &ifname);
        ClusterProgram {
            name,
            id: aya::programs::ProgramInfo::from_pin(pins.program(name))
                .ok()
                .map(|p| p.id()),
            attached_to: link.map(|_| ifname),
            link_id: link.map(|(l, _)| l),
        }
    })
    .collect();
    Ok(Some(ClusterStatus {
        cluster_cidr: c.cluster_cidr,
        cluster_cidr6: c.cluster_cidr6,
        overlay: c.overlay,
        uplink: c.uplink.clone(),
        node_ip: c.node_ip,
        uplink_mtu: c.uplink_mtu,
        pod_mtu: c.pod_mtu,
        vxlan: c.vxlan.clone(),
        programs,
        nodes: nodes::list(maps, locked)?,
    }))
}
