//! Pod subnets of a cluster CIDR: which one a node leases, and their names as etcd
//! keys (Flannel's `10.244.1.0-24`, since '/' separates key path parts).

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetError {
    #[error(
        "--subnet-len {len} does not fit the cluster CIDR {cluster}: it must be longer than /{} and at most /30",
        cluster.prefix_len()
    )]
    BadLength { cluster: Ipv4Net, len: u8 },
    #[error("every /{len} subnet of {cluster} is leased")]
    Exhausted { cluster: Ipv4Net, len: u8 },
}

/// Checks that `len` splits `cluster` into pod subnets with room for pods.
pub fn check_len(cluster: Ipv4Net, len: u8) -> Result<(), SubnetError> {
    if len <= cluster.prefix_len() || len > 30 {
        return Err(SubnetError::BadLength { cluster, len });
    }
    Ok(())
}

/// The first /`len` subnet of `cluster` that is not in `taken`.
pub fn first_free(
    cluster: Ipv4Net,
    len: u8,
    taken: &BTreeSet<Ipv4Net>,
) -> Result<Ipv4Net, SubnetError> {
    check_len(cluster, len)?;
    cluster
        .subnets(len)
        .map_err(|_| SubnetError::BadLength { cluster, len })?
        .find(|s| {
            !taken
                .iter()
                .any(|t| t.contains(&s.network()) || s.contains(&t.network()))
        })
        .ok_or(SubnetError::Exhausted { cluster, len })
}

/// `10.244.1.0/24` -> `10.244.1.0-24`.
pub fn key_name(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// `10.244.1.0-24` -> `10.244.1.0/24`; `None` for anything else.
pub fn parse_key_name(name: &str) -> Option<Ipv4Net> {
    let (ip, len) = name.rsplit_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
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
            Err(SubnetError::Exhausted { cluster, len: 24 })
        );
        assert!(check_len(net("10.244.0.0/16"), 16).is_err());
        assert!(check_len(net("10.244.0.0/16"), 31).is_err());
    }

    #[test]
    fn key_names_round_trip() {
        let s = net("10.244.17.0/24");
        assert_eq!(key_name(s), "10.244.17.0-24");
        assert_eq!(parse_key_name("10.244.17.0-24"), Some(s));
        assert_eq!(parse_key_name("10.244.17.1-24"), None);
        assert_eq!(parse_key_name("config"), None);
    }
}
