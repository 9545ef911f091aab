//! Identifiers: endpoint names, interface names, host-side veth names and MAC
//! addresses, with the validation that keeps bad input from reaching the kernel.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::error::ErrorKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Linux interface names are at most 15 bytes (`IFNAMSIZ` - 1).
pub(crate) const IFNAME_MAX: usize = 15;
/// Endpoint names also name the pod's namespace under /run/netns; keep them short
/// enough for every tool that prints them and safe as a file name.
pub(crate) const ENDPOINT_NAME_MAX: usize = 63;

/// Prefix of every host-side veth vethbpf makes; `down` and `reconcile` recognise
/// their links by it.
pub(crate) const HOST_VETH_PREFIX: &str = "vb";
/// Prefix of the pod-side veth while it is still in the node namespace.
pub(crate) const TEMP_PEER_PREFIX: &str = "vp";

/// An endpoint or interface name that cannot be used, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("endpoint name is empty")]
    Empty,
    #[error("endpoint name {name:?} is {len} bytes long; the limit is {ENDPOINT_NAME_MAX}")]
    TooLong { name: String, len: usize },
    #[error(
        "endpoint name {name:?} has the character {bad:?}; use letters, digits, '-', '_' and '.', starting with a letter or digit"
    )]
    BadChar { name: String, bad: char },
    #[error("interface name {name:?} is {len} bytes long; Linux allows at most {IFNAME_MAX}")]
    IfnameTooLong { name: String, len: usize },
    #[error("interface name {name:?} is not valid: {why}")]
    BadIfname { name: String, why: &'static str },
    #[error("{text:?} is not a MAC address (expected six hex bytes like ee:ee:ee:ee:ee:ee)")]
    BadMac { text: String },
}

impl NameError {
    /// Every bad name is a bad argument.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Usage
    }
}

/// Checks an endpoint name: 1 to 63 bytes of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit (so it is also a safe file name under /run/netns and never `.`/`..`).
pub(crate) fn validate_endpoint_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > ENDPOINT_NAME_MAX {
        return Err(NameError::TooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some(bad) = name
        .chars()
        .find(|c| !allowed(*c))
        .or((!first.is_ascii_alphanumeric()).then_some(first))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            bad,
        });
    }
    Ok(())
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub(crate) fn validate_ifname(name: &str) -> Result<(), NameError> {
    let bad = |why| NameError::BadIfname {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > IFNAME_MAX {
        return Err(NameError::IfnameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are reserved"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("it may not contain '/', ':' or white space"));
    }
    Ok(())
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, whose output may change between
/// Rust releases), so a given endpoint always gets the same host veth name.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn derived_name(prefix: &str, endpoint: &str) -> String {
    let hex = format!("{:016x}", fnv1a(endpoint.as_bytes()));
    format!("{prefix}{}", &hex[..IFNAME_MAX - prefix.len()])
}

/// Host-side veth name of an endpoint: `vb` + 13 hex digits of a hash of its name
/// (15 bytes, like Calico's `cali` + 11).
pub(crate) fn host_veth_name(endpoint: &str) -> String {
    derived_name(HOST_VETH_PREFIX, endpoint)
}

/// Temporary name of the pod-side veth before it moves into the pod namespace.
pub(crate) fn temp_peer_name(endpoint: &str) -> String {
    derived_name(TEMP_PEER_PREFIX, endpoint)
}

/// Whether `ifname` has the shape of a name vethbpf derives (`vb`/`vp` + 13 hex
/// digits): `reconcile` considers only such links its own.
pub fn is_derived_name(ifname: &str) -> bool {
    [HOST_VETH_PREFIX, TEMP_PEER_PREFIX].iter().any(|p| {
        ifname.len() == IFNAME_MAX
            && ifname.strip_prefix(p).is_some_and(|rest| {
                rest.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    })
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` in output and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The gateway MAC every host-side veth carries (Calico's choice): a locally
    /// administered unicast address that no real NIC uses.
    pub(crate) const GATEWAY: MacAddr = MacAddr([0xee; 6]);

    /// The IPv6 link-local address of this MAC by modified EUI-64 (RFC 4291
    /// appendix A): what the kernel's default `addr_gen_mode eui64` gives an
    /// interface with this MAC. The gateway's, fe80::ecee:eeff:feee:eeee, is the
    /// pods' IPv6 gateway (Calico's choice too).
    pub fn link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::BadMac {
            text: s.to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        assert!(validate_endpoint_name("pod-a_1.x").is_ok());
        assert_eq!(validate_endpoint_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_endpoint_name(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(matches!(
            validate_endpoint_name("a/b"),
            Err(NameError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            validate_endpoint_name(".."),
            Err(NameError::BadChar { bad: '.', .. })
        ));
        assert!(matches!(
            validate_endpoint_name("-x"),
            Err(NameError::BadChar { bad: '-', .. })
        ));
    }

    #[test]
    fn interface_names() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("fifteen-bytes-x").is_ok());
        assert!(matches!(
            validate_ifname("sixteen-bytes-xx"),
            Err(NameError::IfnameTooLong { len: 16, .. })
        ));
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("").is_err());
    }

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("web");
        assert_eq!(a, host_veth_name("web"));
        assert_eq!(a.len(), IFNAME_MAX);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_ne!(a, host_veth_name("web2"));
        let peer = temp_peer_name("web");
        assert_eq!(peer.len(), IFNAME_MAX);
        assert_ne!(peer, a);
        assert!(validate_ifname(&host_veth_name(&"x".repeat(63))).is_ok());
    }

    #[test]
    fn derived_names_are_recognised_and_others_not() {
        assert!(is_derived_name(&host_veth_name("p1")));
        assert!(is_derived_name(&temp_peer_name("p1")));
        for other in [
            "eth0",
            "vb",
            "vbABCDEF0123456",
            "vb0123456789abcd",
            "vx0123456789abc",
        ] {
            assert!(!is_derived_name(other), "{other}");
        }
    }

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "02:00:0a:f4:00:02".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xf4, 0, 2]);
        assert_eq!(m.to_string(), "02:00:0a:f4:00:02");
        assert_eq!(MacAddr::GATEWAY.to_string(), "ee:ee:ee:ee:ee:ee");
        assert_eq!(
            MacAddr::GATEWAY.link_local(),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            MacAddr([0x02, 0, 0, 0, 0, 0x02]).link_local(),
            "fe80::ff:fe00:2".parse::<Ipv6Addr>().unwrap()
        );
        assert!("02:00:0a:f4:00".parse::<MacAddr>().is_err());
        assert!("02:00:0a:f4:00:02:03".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:f4:00:02".parse::<MacAddr>().is_err());
    }
}
