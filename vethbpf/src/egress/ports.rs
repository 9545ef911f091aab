//! NAT ports, and why the node's own sockets never collide with them.
//!
//! The node's kernel gives its own connections source ports from
//! `net.ipv4.ip_local_port_range`; the NAT gives pod flows ports from its range. As
//! long as the two ranges are disjoint, a NAT mapping (node address, NAT port,
//! remote) can never be the tuple of a connection of the node, so a reply is never
//! delivered to the wrong side. `up` therefore reads the local range and refuses a
//! NAT range that overlaps it; by default the NAT takes the ports above it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where the node's ephemeral port range is (in the netns of the reading thread).
pub const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Fewer ports than this for the NAT is a configuration mistake, not a choice.
pub const MIN_NAT_PORTS: u32 = 1024;

/// An inclusive port range, written `A-B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// How many ports (never 0: a range has its first port).
    pub fn count(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortsError {
    #[error("invalid port range {0:?}: expected FIRST-LAST, e.g. 61000-65535")]
    Syntax(String),
    #[error("invalid port range {0}: the first port is above the last")]
    Reversed(PortRange),
    #[error(
        "NAT port range {nat} overlaps the node's own ephemeral ports {local} (net.ipv4.ip_local_port_range): pick ports outside it, or narrow that sysctl"
    )]
    Overlap { nat: PortRange, local: PortRange },
    #[error(
        "NAT port range {0} is below 1024 or has fewer than {MIN_NAT_PORTS} ports; give --nat-ports FIRST-LAST with 1024 <= FIRST and at least {MIN_NAT_PORTS} ports"
    )]
    TooSmall(PortRange),
    #[error(
        "the node's ephemeral ports {0} (net.ipv4.ip_local_port_range) leave fewer than {MIN_NAT_PORTS} ports above them for the NAT; give --nat-ports FIRST-LAST outside that range"
    )]
    NoDefault(PortRange),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

impl PortsError {
    /// What kind of failure this is.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            PortsError::Read { .. } => crate::error::ErrorKind::Other,
            PortsError::Overlap { .. } | PortsError::NoDefault(_) => {
                crate::error::ErrorKind::Conflict
            }
            _ => crate::error::ErrorKind::Usage,
        }
    }
}

impl FromStr for PortRange {
    type Err = PortsError;
    fn from_str(s: &str) -> Result<Self, PortsError> {
        let syntax = || PortsError::Syntax(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(syntax)?;
        let first: u16 = a.trim().parse().map_err(|_| syntax())?;
        let last: u16 = b.trim().parse().map_err(|_| syntax())?;
        let r = PortRange { first, last };
        if first > last {
            return Err(PortsError::Reversed(r));
        }
        Ok(r)
    }
}

/// Parses the two numbers of `ip_local_port_range`.
pub fn parse_local_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(first)), Some(Ok(last)), None) = (it.next(), it.next(), it.next()) else {
        return None;
    };
    (first <= last).then_some(PortRange { first, last })
}

/// The node's ephemeral port range, as the calling thread's namespace has it.
pub fn local_range() -> Result<PortRange, PortsError> {
    read_local_range(Path::new(LOCAL_PORT_RANGE))
}

fn read_local_range(path: &Path) -> Result<PortRange, PortsError> {
    let read = |reason: String| PortsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    parse_local_range(&text).ok_or_else(|| read(format!("unexpected contents {text:?}")))
}

/// The NAT range to use: `requested` if it is valid next to the node's `local`
/// range, or by default every port above `local`.
pub fn nat_range(requested: Option<PortRange>, local: PortRange) -> Result<PortRange, PortsError> {
    let nat = match requested {
        Some(r) => r,
        None => {
            let r = PortRange {
                first: local.last.saturating_add(1),
                last: u16::MAX,
            };
            if local.last == u16::MAX || r.count() < MIN_NAT_PORTS {
                return Err(PortsError::NoDefault(local));
            }
            r
        }
    };
    if nat.first < 1024 || nat.count() < MIN_NAT_PORTS {
        return Err(PortsError::TooSmall(nat));
    }
    if nat.overlaps(local) {
        return Err(PortsError::Overlap { nat, local });
    }
    Ok(nat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn parses_ranges_and_refuses_nonsense() {
        assert_eq!("61000-65535".parse(), Ok(r(61000, 65535)));
        assert_eq!(" 2000 - 3999".parse(), Ok(r(2000, 3999)));
        for bad in ["", "61000", "a-b", "1-70000", "-5", "5-"] {
            assert_eq!(
                bad.parse::<PortRange>(),
                Err(PortsError::Syntax(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            "9-1".parse::<PortRange>(),
            Err(PortsError::Reversed(r(9, 1)))
        );
        assert_eq!(r(61000, 65535).to_string(), "61000-65535");
    }

    #[test]
    fn reads_the_sysctl_format() {
        assert_eq!(parse_local_range("32768\t60999\n"), Some(r(32768, 60999)));
        assert_eq!(parse_local_range("32768 60999 1"), None);
        assert_eq!(parse_local_range("60999 32768"), None);
        let real = local_range().expect("this host's range");
        assert!(real.first <= real.last);
    }

    #[test]
    fn the_default_is_above_the_local_range_and_overlaps_are_refused() {
        let local = r(32768, 60999);
        assert_eq!(nat_range(None, local), Ok(r(61000, 65535)));
        assert_eq!(nat_range(Some(r(1024, 32767)), local), Ok(r(1024, 32767)));
        assert_eq!(
            nat_range(Some(r(60000, 65535)), local),
            Err(PortsError::Overlap {
                nat: r(60000, 65535),
                local
            })
        );
        assert_eq!(
            nat_range(Some(r(100, 5000)), local),
            Err(PortsError::TooSmall(r(100, 5000)))
        );
        assert_eq!(
            nat_range(Some(r(61000, 61100)), local),
            Err(PortsError::TooSmall(r(61000, 61100)))
        );
        assert_eq!(
            nat_range(None, r(1024, 65000)),
            Err(PortsError::NoDefault(r(1024, 65000)))
        );
        assert_eq!(
            nat_range(None, r(1024, 65535)),
            Err(PortsError::NoDefault(r(1024, 65535)))
        );
    }
}
