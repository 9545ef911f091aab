//! The inside of a pod: its interface, addresses and routes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::EndpointError;
use crate::kernel::netlink::{Netlink, Route6Spec, RouteSpec};
use crate::state::ident::MacAddr;

/// What the pod side gets.
#[derive(Clone, Debug)]
pub(crate) struct PodConfig {
    /// Name of the peer when it arrives in the namespace.
    pub(crate) temp_name: String,
    pub(crate) ifname: String,
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) ip6: Option<Ipv6Addr>,
    pub(crate) gateway6: Ipv6Addr,
    /// Bring `lo` up too (the namespace is vethbpf's own).
    pub(crate) lo_up: bool,
    /// The interface's MTU when the node's cluster sets one (an overlay's headers
    /// need room); `None` keeps the veth default.
    pub(crate) mtu: Option<u32>,
}

/// Inside the pod: rename the peer, bring it (and `lo` if asked) up; for IPv4
/// `IP/32`, a link route to the gateway and a default route through it; for IPv6 the
/// EUI-64 link-local address and `IP6/128` (both usable at once, no DAD), a route to
/// the link-local gateway and a default route through it. Returns the pod
/// interface's MAC.
pub(crate) fn configure_pod_side(
    nl: &mut dyn Netlink,
    cfg: &PodConfig,
) -> Result<MacAddr, EndpointError> {
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
    if cfg.ip6.is_some() {
        // The only link-local address the pod gets is the one added below, which
        // the datapath accepts as its NDP source: no kernel-generated one (stable
        // privacy, say) it would not know. Must precede bringing the link up.
        nl.disable_ipv6_addr_gen(link.index)?;
    }
    nl.set_link_up(link.index)?;
    if let Some(ip) = cfg.ip {
        nl.add_address(link.index, Ipv4Net::from(ip))?;
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
    }
    if let Some(ip6) = cfg.ip6 {
        let mac = link.mac.ok_or_else(|| EndpointError::PeerVanished {
            ifname: cfg.ifname.clone(),
        })?;
        let link_local = Ipv6Net::new_assert(MacAddr(mac).link_local(), 64);
        nl.add_address6(link.index, link_local)?;
        nl.add_address6(link.index, Ipv6Net::from(ip6))?;
        nl.add_route6(&Route6Spec {
            dst: Ipv6Net::from(cfg.gateway6),
            oif: link.index,
            gateway: None,
        })?;
        nl.add_route6(&Route6Spec {
            dst: Ipv6Net::default(),
            oif: link.index,
            gateway: Some(cfg.gateway6),
        })?;
    }
    let mac = nl
        .link_by_index(link.index)?
        .and_then(|l| l.mac)
        .ok_or_else(|| EndpointError::PeerVanished {
            ifname: cfg.ifname.clone(),
        })?;
    Ok(MacAddr(mac))
}
