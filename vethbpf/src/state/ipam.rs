//! Address management for the pod CIDRs (one per family): validation of requested
//! addresses and allocation of the next free one. Allocations themselves persist as
//! the endpoint records of the state file; this module is pure and has no I/O.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::ErrorKind;

/// An address that cannot be given to an endpoint, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("{ip} is outside the pod CIDR {cidr}")]
    OutsideCidr { ip: IpAddr, cidr: IpNet },
    #[error("{ip} is the network or broadcast address of the pod CIDR {cidr}")]
    Reserved { ip: IpAddr, cidr: IpNet },
    #[error("{ip} is the subnet-router anycast address of the pod CIDR {cidr} (RFC 4291)")]
    Anycast { ip: IpAddr, cidr: IpNet },
    #[error("{ip} is already used by endpoint {owner}")]
    InUse { ip: IpAddr, owner: String },
    #[error("{ip} is the pods' gateway address")]
    Gateway { ip: IpAddr },
    #[error("the pod CIDR {cidr} has no free address left")]
    Exhausted { cidr: IpNet },
    #[error(
        "the node has no {family} pod CIDR, so {ip} cannot be given; bring it up with one (`vethbpf up --pod-cidr ...`)"
    )]
    NoCidr { ip: IpAddr, family: &'static str },
    #[error(
        "more than one {family} address given ({first} and {second}); an endpoint has one per family"
    )]
    TwoOfAFamily {
        family: &'static str,
        first: IpAddr,
        second: IpAddr,
    },
}

impl IpamError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::OutsideCidr { .. }
            | IpamError::Reserved { .. }
            | IpamError::Anycast { .. }
            | IpamError::Gateway { .. }
            | IpamError::NoCidr { .. }
            | IpamError::TwoOfAFamily { .. } => ErrorKind::Usage,
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
    used: impl Iterator<Item = (Ipv4Addr, &'a str)>,
) -> Result<(), IpamError> {
    if !cidr.contains(&ip) {
        return Err(IpamError::OutsideCidr {
            ip: ip.into(),
            cidr: cidr.into(),
        });
    }
    if cidr.prefix_len() < 31 && (ip == cidr.network() || ip == cidr.broadcast()) {
        return Err(IpamError::Reserved {
            ip: ip.into(),
            cidr: cidr.into(),
        });
    }
    if ip == gateway {
        return Err(IpamError::Gateway { ip: ip.into() });
    }
    in_use(ip.into(), used.map(|(u, owner)| (u.into(), owner)))
}

fn in_use<'a>(
    ip: IpAddr,
    mut used: impl Iterator<Item = (IpAddr, &'a str)>,
) -> Result<(), IpamError> {
    match used.find(|(u, _)| *u == ip) {
        Some((_, owner)) => Err(IpamError::InUse {
            ip,
            owner: owner.to_string(),
        }),
        None => Ok(()),
    }
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
        .ok_or(IpamError::Exhausted { cidr: cidr.into() })
}

/// The addresses of an IPv6 pod CIDR that can be given to endpoints: all but the
/// subnet-router anycast address (host bits zero, RFC 4291 2.6.1), lowest first.
/// There is no broadcast address, and the gateway is link-local, never inside.
fn usable6(cidr: Ipv6Net) -> impl Iterator<Item = Ipv6Addr> {
    let (first, last) = (u128::from(cidr.network()), u128::from(cidr.broadcast()));
    let first = if cidr.prefix_len() < 127 {
        first + 1
    } else {
        first
    };
    (first..=last).map(Ipv6Addr::from)
}

/// Checks that `ip` may be given to a new endpoint (IPv6). `used` maps addresses in
/// use to the endpoint names that hold them.
pub(crate) fn validate6<'a>(
    cidr: Ipv6Net,
    ip: Ipv6Addr,
    used: impl Iterator<Item = (Ipv6Addr, &'a str)>,
) -> Result<(), IpamError> {
    if !cidr.contains(&ip) {
        return Err(IpamError::OutsideCidr {
            ip: ip.into(),
            cidr: cidr.into(),
        });
    }
    if cidr.prefix_len() < 127 && ip == cidr.network() {
        return Err(IpamError::Anycast {
            ip: ip.into(),
            cidr: cidr.into(),
        });
    }
    in_use(ip.into(), used.map(|(u, owner)| (u.into(), owner)))
}

/// The lowest free address of the IPv6 CIDR. At most as many candidates are looked
/// at as addresses are in use, plus one: a /64 is never scanned.
pub(crate) fn allocate6(
    cidr: Ipv6Net,
    used: impl Iterator<Item = Ipv6Addr>,
) -> Result<Ipv6Addr, IpamError> {
    let used: BTreeSet<Ipv6Addr> = used.collect();
    usable6(cidr)
        .take(used.len() + 1)
        .find(|ip| !used.contains(ip))
        .ok_or(IpamError::Exhausted { cidr: cidr.into() })
}

/// One requested address per family at most: `(IPv4, IPv6)`.
pub(crate) fn split_by_family(
    ips: &[IpAddr],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), IpamError> {
    let (mut v4, mut v6) = (None, None);
    for ip in ips {
        match *ip {
            IpAddr::V4(a) => {
                if let Some(first) = v4.replace(a) {
                    return Err(IpamError::TwoOfAFamily {
                        family: "IPv4",
                        first: IpAddr::V4(first),
                        second: *ip,
                    });
                }
            }
            IpAddr::V6(a) => {
                if let Some(first) = v6.replace(a) {
                    return Err(IpamError::TwoOfAFamily {
                        family: "IPv6",
                        first: IpAddr::V6(first),
                        second: *ip,
                    });
                }
            }
        }
    }
    Ok((v4, v6))
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
            Err(IpamError::Exhausted { cidr: c.into() })
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
    fn ipv6_allocates_from_1_and_skips_the_anycast_address() {
        let c: Ipv6Net = "fd00:10:244::/64".parse().unwrap();
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(allocate6(c, [].into_iter()).unwrap(), ip("fd00:10:244::1"));
        let used = [ip("fd00:10:244::1"), ip("fd00:10:244::3")];
        assert_eq!(
            allocate6(c, used.into_iter()).unwrap(),
            ip("fd00:10:244::2")
        );
        assert_eq!(
            validate6(c, ip("fd00:10:244::"), [].into_iter()),
            Err(IpamError::Anycast {
                ip: ip("fd00:10:244::").into(),
                cidr: c.into()
            })
        );
        assert!(matches!(
            validate6(c, ip("fd00:10:245::1"), [].into_iter()),
            Err(IpamError::OutsideCidr { .. })
        ));
        assert!(matches!(
            validate6(
                c,
                ip("fd00:10:244::1"),
                [(ip("fd00:10:244::1"), "web")].into_iter()
            ),
            Err(IpamError::InUse { .. })
        ));
        // A /127 has two addresses and no anycast one; a /128 one.
        let tiny: Ipv6Net = "fd00::/127".parse().unwrap();
        assert_eq!(allocate6(tiny, [].into_iter()).unwrap(), ip("fd00::"));
        assert_eq!(
            allocate6(tiny, [ip("fd00::"), ip("fd00::1")].into_iter()),
            Err(IpamError::Exhausted { cidr: tiny.into() })
        );
    }

    #[test]
    fn one_address_per_family() {
        let a: IpAddr = "10.244.0.5".parse().unwrap();
        let b: IpAddr = "fd00::5".parse().unwrap();
        let c: IpAddr = "10.244.0.6".parse().unwrap();
        assert_eq!(
            split_by_family(&[a, b]).unwrap(),
            (
                Some("10.244.0.5".parse().unwrap()),
                Some("fd00::5".parse().unwrap())
            )
        );
        assert!(matches!(
            split_by_family(&[a, b, c]),
            Err(IpamError::TwoOfAFamily { family: "IPv4", .. })
        ));
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
                ip: Ipv4Addr::new(10, 244, 0, 5).into(),
                owner: "web".into()
            })
        );
        assert!(validate(c, GW, Ipv4Addr::new(10, 244, 0, 6), used.into_iter()).is_ok());
    }
}
