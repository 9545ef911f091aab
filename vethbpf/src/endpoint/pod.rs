//! The inside of a pod: its interface, address and routes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::EndpointError;
use crate::kernel::netlink::{Change, Netlink, RouteSpec};
use crate::state::ident::MacAddr;

/// `lo` is the first device of every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;

/// What the pod side gets.
#[derive(Clone, Debug)]
pub(crate) struct PodConfig {
    /// The pod's interface: the veth's peer, made in the pod under this name.
    pub(crate) ifname: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
    /// Bring `lo` up too (the namespace is vethbpf's own).
    pub(crate) lo_up: bool,
}

/// Inside the pod (`nl` is a client in its namespace): bring the interface (and
/// `lo` if asked) up, `IP/32`, a link route to the gateway and a default route
/// through it, all in one batch. Returns the pod interface's MAC.
pub(crate) fn configure_pod_side(
    nl: &mut dyn Netlink,
    cfg: &PodConfig,
) -> Result<MacAddr, EndpointError> {
    let vanished = || EndpointError::PeerVanished {
        ifname: cfg.ifname.clone(),
    };
    let link = nl.link_by_name(&cfg.ifname)?.ok_or_else(vanished)?;
    let mac = link.mac.ok_or_else(vanished)?;
    let gateway_route = RouteSpec {
        dst: Ipv4Net::from(cfg.gateway),
        oif: link.index,
        gateway: None,
        scope_link: true,
        onlink: false,
    };
    let default_route = RouteSpec {
        dst: Ipv4Net::default(),
        oif: link.index,
        gateway: Some(cfg.gateway),
        scope_link: false,
        onlink: true,
    };
    let mut changes = Vec::with_capacity(5);
    // Only in a namespace vethbpf made: an existing one is its owner's, and a
    // rollback could not tell whether lo was up before.
    if cfg.lo_up {
        changes.push(Change::LinkUp(LOOPBACK_INDEX));
    }
    // In this order: the `onlink` default route needs the address first.
    changes.extend([
        Change::LinkUp(link.index),
        Change::AddAddress(link.index, Ipv4Net::from(cfg.ip)),
        Change::AddRoute(&gateway_route),
        Change::AddRoute(&default_route),
    ]);
    nl.apply(&changes)?;
    Ok(MacAddr(mac))
}
