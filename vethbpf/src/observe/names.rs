//! Names for what the datapath knows by number: endpoint ids, pod addresses and
//! interface indexes, from the state file (read without the lock: it is replaced
//! atomically) and the kernel's interface names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use std::time::{Duration, Instant};

use crate::state::{StateDir, StateError};

/// How often a name not found makes the state file be read again (a pod added
/// since): often enough to name new pods at once, rarely enough that a flood of
/// events for unknown ids does not become a flood of reads.
const RELOAD_AFTER: Duration = Duration::from_millis(500);

/// Endpoint names by id, address and host ifindex; remote nodes by pod CIDR and
/// address.
pub struct Names {
    state_dir: StateDir,
    by_id: HashMap<u32, String>,
    by_ip: HashMap<IpAddr, String>,
    by_ifindex: HashMap<u32, String>,
    /// Each remote node: name, pod CIDR, IPv6 pod CIDR, underlay address.
    nodes: Vec<(String, Ipv4Net, Option<Ipv6Net>, Ipv4Addr)>,
    loaded: Option<Instant>,
}

impl Names {
    /// Names read from the state in `state_dir`.
    pub fn load(state_dir: &StateDir) -> Result<Self, StateError> {
        let mut names = Names {
            state_dir: state_dir.clone(),
            by_id: HashMap::new(),
            by_ip: HashMap::new(),
            by_ifindex: HashMap::new(),
            nodes: Vec::new(),
            loaded: None,
        };
        names.reload()?;
        Ok(names)
    }

    fn reload(&mut self) -> Result<(), StateError> {
        let state = self.state_dir.read()?;
        self.by_id.clear();
        self.by_ip.clear();
        self.by_ifindex.clear();
        self.nodes = state
            .cluster
            .as_ref()
            .map(|c| {
                c.nodes
                    .values()
                    .map(|n| (n.name.clone(), n.pod_cidr, n.pod_cidr6, n.address))
                    .collect()
            })
            .unwrap_or_default();
        for rec in state.endpoints.values() {
            self.by_id.insert(rec.id, rec.name.clone());
            for ip in rec
                .ip
                .map(IpAddr::V4)
                .into_iter()
                .chain(rec.ip6.map(IpAddr::V6))
            {
                self.by_ip.insert(ip, rec.name.clone());
            }
            self.by_ifindex.insert(rec.host_ifindex, rec.name.clone());
        }
        self.loaded = Some(Instant::now());
        Ok(())
    }

    /// Reads the state again if a lookup missed and the last read is not recent.
    fn refresh_on_miss(&mut self, hit: bool) {
        if !hit && self.loaded.is_none_or(|t| t.elapsed() >= RELOAD_AFTER) {
            // An unreadable state file (being replaced, or corrupt) keeps the names
            // we have: the monitor goes on with numbers.
            if let Err(e) = self.reload() {
                tracing::debug!(error = %e, "monitor: names not refreshed");
                self.loaded = Some(Instant::now());
            }
        }
    }

    /// The endpoint with counter id `id` (0 is nobody's).
    pub fn endpoint(&mut self, id: u32) -> Option<String> {
        if id == 0 {
            return None;
        }
        self.refresh_on_miss(self.by_id.contains_key(&id));
        self.by_id.get(&id).cloned()
    }

    /// The endpoint that has the address `ip`.
    pub fn endpoint_of_ip(&mut self, ip: IpAddr) -> Option<String> {
        self.refresh_on_miss(self.by_ip.contains_key(&ip));
        self.by_ip.get(&ip).cloned()
    }

    /// The endpoint whose host veth has index `ifindex`.
    pub fn endpoint_of_ifindex(&mut self, ifindex: u32) -> Option<String> {
        self.refresh_on_miss(self.by_ifindex.contains_key(&ifindex));
        self.by_ifindex.get(&ifindex).cloned()
    }
}

impl Names {
    /// The remote node whose pod CIDR (of either family) holds `ip`, or whose own
    /// address it is.
    pub fn node_of_ip(&self, ip: IpAddr) -> Option<String> {
        self.nodes
            .iter()
            .find(|(_, cidr, cidr6, address)| match ip {
                IpAddr::V4(ip) => cidr.contains(&ip) || *address == ip,
                IpAddr::V6(ip) => cidr6.is_some_and(|c| c.contains(&ip)),
            })
            .map(|(name, ..)| name.clone())
    }

    /// Whether a remote node of this name exists.
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|(n, ..)| n == name)
    }
}

/// The name of interface `ifindex` in this network namespace, if it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|n| n.into_string().ok())
}
