//! The node's uplink: the interface pod egress leaves through and whose primary
//! IPv4 address and primary global IPv6 address pods are masqueraded behind.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::kernel::netlink::Netlink;

use super::EgressError;

/// The uplink chosen for egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    /// Its primary IPv4 address (the kernel lists it first).
    pub addr: Option<Ipv4Addr>,
    /// Its first usable global IPv6 address as the kernel lists it (not
    /// temporary, deprecated or tentative).
    pub addr6: Option<Ipv6Addr>,
}

/// `name`, or the device of the IPv4 default route, else of the IPv6 one;
/// `Ok(None)` if none exists.
pub fn find(nl: &mut dyn Netlink, name: Option<&str>) -> Result<Option<Uplink>, EgressError> {
    let link = match name {
        Some(name) => nl
            .link_by_name(name)?
            .ok_or_else(|| EgressError::NoSuchUplink(name.to_string()))?,
        None => {
            let default = nl.routes()?.into_iter().find(|r| r.dst.prefix_len() == 0);
            let oif = match default {
                Some(r) => r.oif,
                None => match nl.routes6()?.into_iter().find(|r| r.dst.prefix_len() == 0) {
                    Some(r) => r.oif,
                    None => return Ok(None),
                },
            };
            nl.link_by_index(oif)?
                .ok_or_else(|| EgressError::NoSuchUplink(format!("ifindex {oif}")))?
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
    let addr = addresses(nl, &link.name)?.first().copied();
    let addr6 = nl.usable_global_addresses6(link.index)?.first().copied();
    if addr.is_none() && addr6.is_none() {
        return Err(EgressError::NoAddress(link.name));
    }
    Ok(Some(Uplink {
        name: link.name,
        index: link.index,
        addr,
        addr6,
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

/// The usable global IPv6 addresses of the interface `name`, primary first.
pub fn addresses6(nl: &mut dyn Netlink, name: &str) -> Result<Vec<Ipv6Addr>, EgressError> {
    let link = nl
        .link_by_name(name)?
        .ok_or_else(|| EgressError::NoSuchUplink(name.to_string()))?;
    Ok(nl.usable_global_addresses6(link.index)?)
}
