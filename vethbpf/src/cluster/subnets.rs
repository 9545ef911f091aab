//! Pod subnets of a cluster CIDR: which one a node leases, and their names as etcd
//! keys (Flannel's `10.244.1.0-24`, since '/' separates key path parts;
//! `fd00:10:244:1::-64` for IPv6). Both families go through [`Subnet`], so that
//! leasing is one piece of code.

use std::collections::BTreeSet;
use std::fmt::{Debug, Display};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetError {
    #[error(
        "the subnet length {len} does not fit the cluster CIDR {cluster}: it must be longer than /{} and at most /{max}",
        cluster.prefix_len()
    )]
    BadLength { cluster: IpNet, len: u8, max: u8 },
    #[error("every /{len} subnet of {cluster} is leased")]
    Exhausted { cluster: IpNet, len: u8 },
}

/// A pod subnet of either family.
pub trait Subnet: Copy + Ord + Display + Debug + Send + Sync + Into<IpNet> + 'static {
    /// The longest subnet a node may lease (room for pods).
    const MAX_LEN: u8;
    fn prefix(self) -> u8;
    /// Whether the two share an address.
    fn overlaps(self, other: Self) -> bool;
    /// The /`len` subnets of `self`, in order.
    fn split(self, len: u8) -> Option<Box<dyn Iterator<Item = Self>>>;
    /// `10.244.1.0/24` -> `10.244.1.0-24`.
    fn key_name(self) -> String;
    /// The inverse of [`Subnet::key_name`]; `None` for anything else.
    fn parse_key_name(name: &str) -> Option<Self>;
}

impl Subnet for Ipv4Net {
    const MAX_LEN: u8 = 30;
    fn prefix(self) -> u8 {
        self.prefix_len()
    }
    fn overlaps(self, other: Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
    fn split(self, len: u8) -> Option<Box<dyn Iterator<Item = Self>>> {
        Some(Box::new(self.subnets(len).ok()?))
    }
    fn key_name(self) -> String {
        format!("{}-{}", self.network(), self.prefix_len())
    }
    fn parse_key_name(name: &str) -> Option<Self> {
        let (ip, len) = name.rsplit_once('-')?;
        let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        (net.trunc() == net).then_some(net)
    }
}

impl Subnet for Ipv6Net {
    /// /120 leaves 256 addresses per node; /64 is the usual.
    const MAX_LEN: u8 = 120;
    fn prefix(self) -> u8 {
        self.prefix_len()
    }
    fn overlaps(self, other: Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
    fn split(self, len: u8) -> Option<Box<dyn Iterator<Item = Self>>> {
        Some(Box::new(self.subnets(len).ok()?))
    }
    fn key_name(self) -> String {
        format!("{}-{}", self.network(), self.prefix_len())
    }
    fn parse_key_name(name: &str) -> Option<Self> {
        let (ip, len) = name.rsplit_once('-')?;
        let net = Ipv6Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        (net.trunc() == net).then_some(net)
    }
}

/// Checks that `len` splits `cluster` into pod subnets with room for pods.
pub fn check_len<S: Subnet>(cluster: S, len: u8) -> Result<(), SubnetError> {
    if len <= cluster.prefix() || len > S::MAX_LEN {
        return Err(SubnetError::BadLength {
            cluster: cluster.into(),
            len,
            max: S::MAX_LEN,
        });
    }
    Ok(())
}

/// The first /`len` subnet of `cluster` that is not in `taken`.
pub fn first_free<S: Subnet>(cluster: S, len: u8, taken: &BTreeSet<S>) -> Result<S, SubnetError> {
    check_len(cluster, len)?;
    cluster
        .split(len)
        .ok_or(SubnetError::BadLength {
            cluster: cluster.into(),
            len,
            max: S::MAX_LEN,
        })?
        .find(|s| !taken.iter().any(|t| t.overlaps(*s)))
        .ok_or(SubnetError::Exhausted {
            cluster: cluster.into(),
            len,
        })
}

/// `10.244.1.0/24` -> `10.244.1.0-24`.
pub fn key_name<S: Subnet>(subnet: S) -> String {
    subnet.key_name()
}

/// `10.244.1.0-24` -> `10.244.1.0/24`; `None` for anything else.
pub fn parse_key_name<S: Subnet>(name: &str) -> Option<S> {
    S::parse_key_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_free_skips_taken_and_overlapping_subnets() {
        let cluster = net("10.244.0.0/16");
        let mut taken = BTreeSet::new();
        assert_eq!(first_free(cluster, 24, &taken), Ok(net("10.244.0.0/24")));
        taken.insert(net("10.244.0.0/24"));
        taken.insert(net("10.244.1.0/25"));
        assert_eq!(first_free(cluster, 24, &taken), Ok(net("10.244.2.0/24")));

        let cluster6 = net6("fd00:10:244::/48");
        let mut taken6 = BTreeSet::new();
        assert_eq!(
            first_free(cluster6, 64, &taken6),
            Ok(net6("fd00:10:244::/64"))
        );
        taken6.insert(net6("fd00:10:244::/64"));
        taken6.insert(net6("fd00:10:244:1::/80"));
        assert_eq!(
            first_free(cluster6, 64, &taken6),
            Ok(net6("fd00:10:244:2::/64"))
        );
    }

    #[test]
    fn exhausted_and_bad_lengths_are_errors() {
        let cluster = net("10.0.0.0/30");
        assert!(matches!(
            first_free(cluster, 30, &BTreeSet::new()),
            Err(SubnetError::BadLength { .. })
        ));
        let cluster = net("10.0.0.0/23");
        let taken = [net("10.0.0.0/24"), net("10.0.1.0/24")].into();
        assert_eq!(
            first_free(cluster, 24, &taken),
            Err(SubnetError::Exhausted {
                cluster: cluster.into(),
                len: 24
            })
        );
        assert!(check_len(net("10.244.0.0/16"), 16).is_err());
        assert!(check_len(net("10.244.0.0/16"), 31).is_err());
        assert!(check_len(net6("fd00:10:244::/48"), 48).is_err());
        assert!(check_len(net6("fd00:10:244::/48"), 121).is_err());
        assert!(check_len(net6("fd00:10:244::/48"), 64).is_ok());
    }

    #[test]
    fn key_names_round_trip() {
        let s = net("10.244.17.0/24");
        assert_eq!(key_name(s), "10.244.17.0-24");
        assert_eq!(parse_key_name("10.244.17.0-24"), Some(s));
        assert_eq!(parse_key_name::<Ipv4Net>("10.244.17.1-24"), None);
        assert_eq!(parse_key_name::<Ipv4Net>("config"), None);
        let s6 = net6("fd00:10:244:11::/64");
        assert_eq!(key_name(s6), "fd00:10:244:11::-64");
        assert_eq!(parse_key_name("fd00:10:244:11::-64"), Some(s6));
        assert_eq!(parse_key_name::<Ipv6Net>("fd00:10:244:11::1-64"), None);
        assert_eq!(parse_key_name::<Ipv6Net>("10.244.17.0-24"), None);
    }
}
