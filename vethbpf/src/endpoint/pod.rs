//! The inside of a pod: its interface, address and routes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::EndpointError;
use crate::kernel::netlink::{Netlink, RouteSpec};
use crate::state::ident::MacAddr;

/// What the pod side gets.
#[derive(Clone, Debug)]
pub(crate) struct PodConfig {
    /// Name of the peer when it arrives in the namespace.
    pub(crate) temp_name: String,
    pub(crate) ifname: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
    /// Bring `lo` up too (the namespace is vethbpf's own).
    pub(crate) lo_up: bool,
    /// The interface's MTU when the node's cluster sets one (an overlay's headers
    /// need room); `None` keeps the veth default.
    pub(crate) mtu: Option<u32>,
}

/// Inside the pod: rename the peer, bring it (and `lo` if asked) up, `IP/32`, a link route to
/// the gateway and a default route through it. Returns the pod interface's MAC.
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
