//! Address management for the pod CIDR: validation of requested addresses and
//! allocation of the next free one. Allocations themselves persist as the endpoint
//! records of the state file; this module is pure and has no I/O.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::ErrorKind;

/// An address that cannot be given to an endpoint, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("{ip} is outside the pod CIDR {cidr}")]
    OutsideCidr { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("{ip} is the network or broadcast address of the pod CIDR {cidr}")]
    Reserved { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("{ip} is already used by endpoint {owner}")]
    InUse { ip: Ipv4Addr, owner: String },
    #[error("{ip} is the pods' gateway address")]
    Gateway { ip: Ipv4Addr },
    #[error("the pod CIDR {cidr} has no free address left")]
    Exhausted { cidr: Ipv4Net },
}

impl IpamError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::OutsideCidr { .. }
            | IpamError::Reserved { .. }
            | IpamError::Gateway { .. } => ErrorKind::Usage,
            IpamError::InUse { .. } | IpamError::Exhausted { .. } => ErrorKind::Conflict,
        }
    }
}

/// The addresses of a pod CIDR that can be given to endpoints: all of them but the
/// network and broadcast addresses (a /31 or /32 has none of those).
fn usable(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let reserve_ends = cidr.prefix_len() < 31;
    let (first, last) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
    let (first, last) = if reserve_ends {
        (first + 1, last - 1)
    } else {
        (first, last)
    };
    (first..=last).map(Ipv4Addr::from)
}

/// Checks that `ip` may be given to a new endpoint. `used` maps addresses in use to
/// the endpoint names that hold them.
pub(crate) fn validate<'a>(
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
    mut used: impl Iterator<Item = (Ipv4Addr, &'a str)>,
) -> Result<(), IpamError> {
    if !cidr.contains(&ip) {
        return Err(IpamError::OutsideCidr { ip, cidr });
    }
    if cidr.prefix_len() < 31 && (ip == cidr.network() || ip == cidr.broadcast()) {
        return Err(IpamError::Reserved { ip, cidr });
    }
    if ip == gateway {
        return Err(IpamError::Gateway { ip });
    }
    if let Some((_, owner)) = used.find(|(u, _)| *u == ip) {
        return Err(IpamError::InUse {
            ip,
            owner: owner.to_string(),
        });
    }
    Ok(())
}

/// The lowest free address of the CIDR.
pub(crate) fn allocate(
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    used: impl Iterator<Item = Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let used: BTreeSet<Ipv4Addr> = used.collect();
    usable(cidr)
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or(IpamError::Exhausted { cidr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

    #[test]
    fn allocates_lowest_free_host_address() {
        let c = cidr("10.244.0.0/24");
        assert_eq!(
            allocate(c, GW, [].into_iter()).unwrap(),
            Ipv4Addr::new(10, 244, 0, 1)
        );
        let used = [Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(10, 244, 0, 3)];
        assert_eq!(
            allocate(c, GW, used.into_iter()).unwrap(),
            Ipv4Addr::new(10, 244, 0, 2)
        );
    }

    #[test]
    fn skips_gateway_inside_cidr_and_reports_exhaustion() {
        let c = cidr("10.0.0.0/30"); // .1 and .2 usable
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            allocate(c, gw, [].into_iter()).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert_eq!(
            allocate(c, gw, [Ipv4Addr::new(10, 0, 0, 2)].into_iter()),
            Err(IpamError::Exhausted { cidr: c })
        );
    }

    #[test]
    fn slash_32_and_31_have_no_reserved_ends() {
        let c = cidr("10.1.1.1/32");
        assert_eq!(
            allocate(c, GW, [].into_iter()).unwrap(),
            Ipv4Addr::new(10, 1, 1, 1)
        );
        assert!(validate(c, GW, Ipv4Addr::new(10, 1, 1, 1), [].into_iter()).is_ok());
    }

    #[test]
    fn validate_names_each_problem() {
        let c = cidr("10.244.0.0/24");
        let used = [(Ipv4Addr::new(10, 244, 0, 5), "web")];
        assert!(matches!(
            validate(c, GW, Ipv4Addr::new(10, 245, 0, 5), used.into_iter()),
            Err(IpamError::OutsideCidr { .. })
        ));
        assert!(matches!(
            validate(c, GW, Ipv4Addr::new(10, 244, 0, 255), used.into_iter()),
            Err(IpamError::Reserved { .. })
        ));
        assert_eq!(
            validate(c, GW, Ipv4Addr::new(10, 244, 0, 5), used.into_iter()),
            Err(IpamError::InUse {
                ip: Ipv4Addr::new(10, 244, 0, 5),
                owner: "web".into()
            })
        );
        assert!(validate(c, GW, Ipv4Addr::new(10, 244, 0, 6), used.into_iter()).is_ok());
    }
}
