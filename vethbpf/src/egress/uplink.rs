//! The node's uplink: the interface pod egress leaves through and whose primary
//! IPv4 address pods are masqueraded behind.

use std::net::Ipv4Addr;

use crate::kernel::netlink::Netlink;

use super::EgressError;

/// The uplink chosen for egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    /// Its primary IPv4 address (the kernel lists it first).
    pub addr: Ipv4Addr,
}

/// `name`, or the device of the IPv4 default route; `Ok(None)` if neither exists.
pub fn find(nl: &mut dyn Netlink, name: Option<&str>) -> Result<Option<Uplink>, EgressError> {
    let link = match name {
        Some(name) => nl
            .link_by_name(name)?
            .ok_or_else(|| EgressError::NoSuchUplink(name.to_string()))?,
        None => {
            let default = nl.routes()?.into_iter().find(|r| r.dst.prefix_len() == 0);
            let Some(route) = default else {
                return Ok(None);
            };
            nl.link_by_index(route.oif)?
                .ok_or_else(|| EgressError::NoSuchUplink(format!("ifindex {}", route.oif)))?
        }
    };
    // Loopback cannot carry traffic off the node; a vethbpf host veth is a pod's.
    if link.name == "lo"
        || link
            .alias
            .as_deref()
            .is_some_and(|a| a.starts_with("vethbpf"))
    {
        return Err(EgressError::BadUplink(link.name));
    }
    let addr = addresses(nl, &link.name)?
        .first()
        .copied()
        .ok_or_else(|| EgressError::NoAddress(link.name.clone()))?;
    Ok(Some(Uplink {
        name: link.name,
        index: link.index,
        addr,
    }))
}

/// The IPv4 addresses of the interface `name`, primary first.
pub fn addresses(nl: &mut dyn Netlink, name: &str) -> Result<Vec<Ipv4Addr>, EgressError> {
    let link = nl
        .link_by_name(name)?
        .ok_or_else(|| EgressError::NoSuchUplink(name.to_string()))?;
    Ok(nl
        .addresses(Some(link.index))?
        .into_iter()
        .map(|(_, net)| net.addr())
        .collect())
}
