//! The egress maps, as userspace sees them: the uplink configuration (`EGRESS`,
//! `EGRESS6`), the destinations that are not egress (`EGRESS_SKIP`,
//! `EGRESS_SKIP6`), and the NAT tables with their state (`NAT`, `NAT6`,
//! `NAT_STATE`, `FRAGS`) for `nat list`, `nat flush` and the flows of a deleted
//! endpoint.
//!
//! A node brought up by a vethbpf without IPv6 egress has no IPv6 maps until `up
//! --replace`: the table then has IPv4 alone.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use vethbpf_common::{
    CtState, EgressConfig, EgressConfig6, FragEntry, FragKey, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP, MAP_EGRESS, MAP_EGRESS_SKIP, MAP_EGRESS_SKIP6, MAP_EGRESS6,
    MAP_FRAGS, MAP_NAT, MAP_NAT_STATE, MAP_NAT6, NAT_DIR_OUT, NatEntry, NatEntry6, NatKey, NatKey6,
    NatState, ipv4_from_map, ipv4_to_map, ipv6_from_map,
};

use crate::datapath::Pins;
use crate::error::ErrorKind;
use crate::kernel::clock::monotonic_ns;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "cannot open the pinned map {path} ({source}); is the bpffs still mounted? `vethbpf up` loads the datapath again"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {map}: {op} failed: {source}")]
    Op {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
}

impl TableError {
    /// What kind of failure this is: a map that cannot be opened means the
    /// datapath is gone (`up` loads it again).
    pub fn kind(&self) -> ErrorKind {
        match self {
            TableError::Open { .. } => ErrorKind::NotUp,
            TableError::Op { .. } => ErrorKind::Other,
        }
    }
}

fn open<T>(pins: &Pins, name: &'static str) -> Result<T, TableError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pins.map(name);
    let err = |source| TableError::Open {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    T::try_from(map).map_err(err)
}

fn op(map: &'static str, op: &'static str) -> impl Fn(MapError) -> TableError {
    move |source| TableError::Op { map, op, source }
}

/// A deleted key that was already gone is fine (another deleter, the LRU).
fn gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// One flow of the NAT table, as `nat list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    pub protocol: &'static str,
    /// The pod's address and port (ICMP: echo identifier).
    pub pod: SocketAddr,
    /// What the pod's source became (its own without masquerade).
    pub node: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub age_secs: u64,
    pub idle_secs: u64,
    /// Idle past its state's timeout: the next flow that needs its port takes it.
    pub expired: bool,
    /// The host veth of the pod that opened it.
    pub ifindex: u32,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

fn sock(addr: u32, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(ipv4_from_map(addr))),
        u16::from_be(port),
    )
}

fn sock6(addr: [u32; 4], port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::from(ipv6_from_map(addr))),
        u16::from_be(port),
    )
}

/// The IPv6 maps, on a node that has them.
struct Ipv6Maps {
    egress: Array<MapData, EgressConfig6>,
    skip: LpmTrie<MapData, [u8; 16], u32>,
    nat: HashMap<MapData, NatKey6, NatEntry6>,
}

pub struct Table {
    egress: Array<MapData, EgressConfig>,
    skip: LpmTrie<MapData, u32, u32>,
    nat: HashMap<MapData, NatKey, NatEntry>,
    state: Array<MapData, NatState>,
    frags: HashMap<MapData, FragKey, FragEntry>,
    v6: Option<Ipv6Maps>,
    capacity: Option<u32>,
}

impl Table {
    pub fn open(pins: &Pins) -> Result<Self, TableError> {
        let capacity = MapData::from_pin(pins.map(MAP_NAT))
            .and_then(|m| m.info())
            .ok()
            .map(|i| i.max_entries());
        Ok(Table {
            capacity,
            egress: open(pins, MAP_EGRESS)?,
            skip: open(pins, MAP_EGRESS_SKIP)?,
            nat: open(pins, MAP_NAT)?,
            state: open(pins, MAP_NAT_STATE)?,
            frags: open(pins, MAP_FRAGS)?,
            v6: if pins.map(MAP_NAT6).exists() {
                Some(Ipv6Maps {
                    egress: open(pins, MAP_EGRESS6)?,
                    skip: open(pins, MAP_EGRESS_SKIP6)?,
                    nat: open(pins, MAP_NAT6)?,
                })
            } else {
                None
            },
        })
    }

    /// Whether the node has the IPv6 egress maps.
    pub fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    pub fn set_config6(&mut self, cfg: &EgressConfig6) -> Result<(), TableError> {
        match &mut self.v6 {
            Some(v6) => v6.egress.set(0, cfg, 0).map_err(op(MAP_EGRESS6, "set")),
            None => Ok(()),
        }
    }

    /// The IPv6 configuration (all zero, egress off, on a node without it).
    pub fn config6(&self) -> Result<EgressConfig6, TableError> {
        match &self.v6 {
            Some(v6) => v6.egress.get(&0, 0).map_err(op(MAP_EGRESS6, "get")),
            None => Ok(EgressConfig6::default()),
        }
    }

    /// Makes `EGRESS_SKIP6` hold exactly `entries`; whether it changed anything.
    pub fn sync_skip6(&mut self, entries: &[(Ipv6Net, u32)]) -> Result<bool, TableError> {
        let Some(v6) = &mut self.v6 else {
            return Ok(false);
        };
        let have: BTreeSet<(Ipv6Net, u32)> = v6
            .skip
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let ip = Ipv6Addr::from(k.data());
                Ipv6Net::new(ip, k.prefix_len() as u8).ok().map(|n| (n, v))
            })
            .collect();
        if have == entries.iter().copied().collect() {
            return Ok(false);
        }
        let key = |n: Ipv6Net| Key::new(u32::from(n.prefix_len()), n.network().octets());
        let want: BTreeSet<Ipv6Net> = entries.iter().map(|(n, _)| *n).collect();
        for (net, _) in have {
            if !want.contains(&net) {
                match v6.skip.remove(&key(net)) {
                    Ok(()) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(op(MAP_EGRESS_SKIP6, "remove")(e)),
                }
            }
        }
        for (net, why) in entries {
            v6.skip
                .insert(&key(*net), why, 0)
                .map_err(op(MAP_EGRESS_SKIP6, "insert"))?;
        }
        Ok(true)
    }

    pub fn set_config(&mut self, cfg: &EgressConfig) -> Result<(), TableError> {
        self.egress.set(0, cfg, 0).map_err(op(MAP_EGRESS, "set"))
    }

    pub fn config(&self) -> Result<EgressConfig, TableError> {
        self.egress.get(&0, 0).map_err(op(MAP_EGRESS, "get"))
    }

    /// Makes `EGRESS_SKIP` hold exactly `entries` (prefix -> `SKIP_*`); whether it
    /// changed anything.
    pub fn sync_skip(&mut self, entries: &[(Ipv4Net, u32)]) -> Result<bool, TableError> {
        let have: BTreeSet<(Ipv4Net, u32)> = self.skip_entries().into_iter().collect();
        if have == entries.iter().copied().collect() {
            return Ok(false);
        }
        let want: BTreeSet<Ipv4Net> = entries.iter().map(|(n, _)| *n).collect();
        for (net, _) in have {
            if !want.contains(&net) {
                match self.skip.remove(&skip_key(net)) {
                    Ok(()) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(op(MAP_EGRESS_SKIP, "remove")(e)),
                }
            }
        }
        for (net, why) in entries {
            self.skip
                .insert(&skip_key(*net), why, 0)
                .map_err(op(MAP_EGRESS_SKIP, "insert"))?;
        }
        Ok(true)
    }

    pub fn skip_entries(&self) -> Vec<(Ipv4Net, u32)> {
        self.skip
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let ip = Ipv4Addr::from(ipv4_from_map(k.data()));
                Ipv4Net::new(ip, k.prefix_len() as u8).ok().map(|n| (n, v))
            })
            .collect()
    }

    fn entries(&self) -> Vec<(NatKey, NatEntry)> {
        self.nat.iter().filter_map(Result::ok).collect()
    }

    fn entries6(&self) -> Vec<(NatKey6, NatEntry6)> {
        match &self.v6 {
            Some(v6) => v6.nat.iter().filter_map(Result::ok).collect(),
            None => Vec::new(),
        }
    }

    /// Every flow of both families (by its forward entry), oldest first.
    pub fn flows(&self) -> Vec<Flow> {
        // An entry may look a tick older than it is (the datapath's coarse clock).
        let now = monotonic_ns();
        let secs = |ns: u64| now.saturating_sub(ns) / 1_000_000_000;
        let flow = |family, proto: u8, pod, node, remote, e: &NatEntry| Flow {
            family,
            protocol: proto_name(proto),
            pod,
            node,
            remote,
            state: CtState::of(proto, e.flags).name(),
            age_secs: secs(e.created),
            idle_secs: secs(e.last_seen),
            expired: e.expired(proto, now),
            ifindex: e.ifindex,
        };
        let v4 = self
            .entries()
            .into_iter()
            .filter(|(k, _)| k.dir == NAT_DIR_OUT)
            .map(|(k, e)| {
                let (pod, node) = (sock(k.saddr, k.sport), sock(e.addr, e.port));
                flow("ipv4", k.proto, pod, node, sock(k.daddr, k.dport), &e)
            });
        let v6 = self
            .entries6()
            .into_iter()
            .filter(|(k, _)| k.dir == NAT_DIR_OUT)
            .map(|(k, e)| {
                let (pod, node) = (sock6(k.saddr, k.sport), sock6(e.addr, e.port));
                flow(
                    "ipv6",
                    k.proto,
                    pod,
                    node,
                    sock6(k.daddr, k.dport),
                    &common(&e),
                )
            });
        let mut flows: Vec<Flow> = v4.chain(v6).collect();
        flows.sort_by(|a, b| {
            b.age_secs
                .cmp(&a.age_secs)
                .then_with(|| (a.pod, a.remote).cmp(&(b.pod, b.remote)))
        });
        flows
    }

    /// Deletes the entries (of either family) `drop` selects by their state, and
    /// sets the table's flow count to the forward entries that stay (from the same
    /// walk: an empty 64k-entry LRU map takes ~0.6 ms to walk, paid by every
    /// `endpoint del`). Returns how many flows (forward entries) went.
    fn remove_where(&mut self, drop: impl Fn(&NatEntry) -> bool) -> Result<usize, TableError> {
        let (mut flows, mut kept) = (0, 0u64);
        for (k, e) in self.entries() {
            let forward = k.dir == NAT_DIR_OUT;
            if !drop(&e) {
                kept += u64::from(forward);
                continue;
            }
            match self.nat.remove(&k) {
                Ok(()) => flows += usize::from(forward),
                Err(err) if gone(&err) => {}
                Err(err) => return Err(op(MAP_NAT, "remove")(err)),
            }
        }
        for (k, e) in self.entries6() {
            let forward = k.dir == NAT_DIR_OUT;
            if !drop(&common(&e)) {
                kept += u64::from(forward);
                continue;
            }
            let Some(v6) = &mut self.v6 else { break };
            match v6.nat.remove(&k) {
                Ok(()) => flows += usize::from(forward),
                Err(err) if gone(&err) => {}
                Err(err) => return Err(op(MAP_NAT6, "remove")(err)),
            }
        }
        self.set_flows(kept)?;
        Ok(flows)
    }

    /// Removes every flow of the pod behind host veth `ifindex` (both halves: each
    /// entry records the pod's interface).
    pub fn remove_endpoint_flows(&mut self, ifindex: u32) -> Result<usize, TableError> {
        self.remove_where(|e| e.ifindex == ifindex)
    }

    /// [`Table::remove_endpoint_flows`] on the pinned table, if there is one (a node
    /// brought up by a vethbpf without egress has none).
    pub fn remove_endpoint_flows_at(pins: &Pins, ifindex: u32) -> Result<usize, TableError> {
        if !pins.map(MAP_NAT).exists() {
            return Ok(0);
        }
        Table::open(pins)?.remove_endpoint_flows(ifindex)
    }

    /// Empties the NAT and fragment tables. Returns how many flows went.
    pub fn flush(&mut self) -> Result<usize, TableError> {
        let n = self.remove_where(|_| true)?;
        let keys: Vec<FragKey> = self.frags.keys().filter_map(Result::ok).collect();
        for k in keys {
            match self.frags.remove(&k) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(op(MAP_FRAGS, "remove")(e)),
            }
        }
        Ok(n)
    }

    /// Sets the table's flow count (the datapath counts up per new flow and
    /// recounts when the table is full; userspace deletions are its to account for).
    fn set_flows(&mut self, flows: u64) -> Result<(), TableError> {
        let mut st = self.state()?;
        st.flows = flows;
        self.state.set(0, st, 0).map_err(op(MAP_NAT_STATE, "set"))
    }

    pub fn state(&self) -> Result<NatState, TableError> {
        self.state.get(&0, 0).map_err(op(MAP_NAT_STATE, "get"))
    }

    /// How many entries the NAT maps have (two per flow).
    pub fn entry_count(&self) -> usize {
        self.nat.keys().filter(Result::is_ok).count()
            + self
                .v6
                .as_ref()
                .map_or(0, |v6| v6.nat.keys().filter(Result::is_ok).count())
    }

    /// The NAT map's capacity (entries; two per flow plus slack).
    pub fn capacity(&self) -> Option<u32> {
        self.capacity
    }
}

fn skip_key(net: Ipv4Net) -> Key<u32> {
    Key::new(
        u32::from(net.prefix_len()),
        ipv4_to_map(net.network().octets()),
    )
}

/// The part of an IPv6 entry laid out as an IPv4 one (state, times, interface).
fn common(e: &NatEntry6) -> NatEntry {
    NatEntry {
        addr: e.addr_tail,
        port: e.port,
        flags: e.flags,
        last_seen: e.last_seen,
        created: e.created,
        ifindex: e.ifindex,
        _pad: 0,
    }
}
