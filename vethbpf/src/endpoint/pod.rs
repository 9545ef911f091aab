//! The inside of a pod: its interface, addresses and routes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::EndpointError;
use crate::kernel::netlink::{Change, Netlink, Route6Spec, RouteSpec};
use crate::state::ident::MacAddr;

/// `lo` is the first device of every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;

/// What the pod side gets.
#[derive(Clone, Debug)]
pub(crate) struct PodConfig {
    /// The pod's interface: the veth's peer, made in the pod under this name (and
    /// with the MTU the node's cluster sets, if it sets one).
    pub(crate) ifname: String,
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) ip6: Option<Ipv6Addr>,
    pub(crate) gateway6: Ipv6Addr,
    /// Bring `lo` up too (the namespace is vethbpf's own).
    pub(crate) lo_up: bool,
}

/// Inside the pod (`nl` is a client in its namespace), in one batch: bring the
/// interface (and `lo` if asked) up; for IPv4 `IP/32`, a link route to the gateway
/// and a default route through it; for IPv6 the EUI-64 link-local address and
/// `IP6/128` (both usable at once, no DAD), a route to the link-local gateway and
/// a default route through it. Returns the pod interface's MAC.
pub(crate) fn configure_pod_side(
    nl: &mut dyn Netlink,
    cfg: &PodConfig,
) -> Result<MacAddr, EndpointError> {
    let vanished = || EndpointError::PeerVanished {
        ifname: cfg.ifname.clone(),
    };
    let link = nl.link_by_name(&cfg.ifname)?.ok_or_else(vanished)?;
    let mac = MacAddr(link.mac.ok_or_else(vanished)?);
    let index = link.index;
    let routes4 = cfg.ip.map(|_| {
        [
            RouteSpec {
                dst: Ipv4Net::from(cfg.gateway),
                oif: index,
                gateway: None,
                scope_link: true,
                onlink: false,
            },
            RouteSpec {
                dst: Ipv4Net::default(),
                oif: index,
                gateway: Some(cfg.gateway),
                scope_link: false,
                onlink: true,
            },
        ]
    });
    let routes6 = cfg.ip6.map(|_| {
        [
            Route6Spec {
                dst: Ipv6Net::from(cfg.gateway6),
                oif: index,
                gateway: None,
            },
            Route6Spec {
                dst: Ipv6Net::default(),
                oif: index,
                gateway: Some(cfg.gateway6),
            },
        ]
    });
    let mut changes = Vec::with_capacity(11);
    // Only in a namespace vethbpf made: an existing one is its owner's, and a
    // rollback could not tell whether lo was up before.
    if cfg.lo_up {
        changes.push(Change::LinkUp(LOOPBACK_INDEX));
    }
    if cfg.ip6.is_some() {
        // The only link-local address the pod gets is the one added below, which
        // the datapath accepts as its NDP source: no kernel-generated one (stable
        // privacy, say) it would not know. Must precede bringing the link up.
        changes.push(Change::NoIpv6AddrGen(index));
    }
    changes.push(Change::LinkUp(index));
    // Addresses before the routes that need them (the `onlink` default route
    // fails without the pod's address).
    if let (Some(ip), Some([gateway, default])) = (cfg.ip, &routes4) {
        changes.extend([
            Change::AddAddress(index, Ipv4Net::from(ip)),
            Change::AddRoute(gateway),
            Change::AddRoute(default),
        ]);
    }
    if let (Some(ip6), Some([gateway, default])) = (cfg.ip6, &routes6) {
        changes.extend([
            Change::AddAddress6(index, Ipv6Net::new_assert(mac.link_local(), 64)),
            Change::AddAddress6(index, Ipv6Net::from(ip6)),
            Change::AddRoute6(gateway),
            Change::AddRoute6(default),
        ]);
    }
    nl.apply(&changes)?;
    Ok(mac)
}
