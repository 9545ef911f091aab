//! Typed access to the pinned maps: the routes the datapath forwards by, the
//! endpoints it validates sources against, the node config, and the counters.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, PerCpuValues};
use ipnet::{Ipv4Net, Ipv6Net};
use vethbpf_common::{
    Config, Counter, EndpointInfo, EndpointInfo6, EndpointSlot, MAP_CONFIG, MAP_ENDPOINT_ADDRS,
    MAP_ENDPOINT_SLOTS, MAP_ENDPOINTS, MAP_ENDPOINTS6, MAP_ROUTES, MAP_ROUTES6, MAP_STATS,
    ROUTE_KIND_LOCAL, Route, Verdict, endpoint_addr_index, ipv4_to_map, stats_index,
};

use crate::datapath::{Pins, batch};
use crate::error::ErrorKind;

/// Why a pinned map could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "cannot open the pinned map {path} ({source}); is the bpffs still mounted? `vethbpf up` loads the datapath again"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error(
        "the pinned map {} is missing while the others are there: the datapath was loaded by an older vethbpf (or the pin was removed); `vethbpf up --replace` loads this version and pins what is missing",
        path.display()
    )]
    MissingPin { path: PathBuf },
    #[error("map {map}: {op} failed: {source}")]
    Op {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

impl MapsError {
    /// What kind of failure this is: a pinned map that cannot be opened means the
    /// datapath is gone (`up` loads it again).
    pub fn kind(&self) -> ErrorKind {
        match self {
            MapsError::Open { .. } | MapsError::MissingPin { .. } => ErrorKind::NotUp,
            MapsError::Op { .. } => ErrorKind::Other,
        }
    }
}

/// Counters of one endpoint, summed over CPUs, indexed by `Verdict as usize`.
pub type EndpointCounters = [Counter; Verdict::COUNT as usize];

pub(crate) struct Maps {
    routes: LpmTrie<MapData, u32, Route>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    slots: Array<MapData, EndpointSlot>,
    addrs: Array<MapData, u32>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, Counter>,
    routes6: LpmTrie<MapData, [u8; 16], Route>,
    endpoints6: HashMap<MapData, u32, EndpointInfo6>,
}

/// Opens the pinned map `name` as the typed view `T`.
pub(crate) fn open<T>(pins: &Pins, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let path = pins.map(name);
    // One map missing among present ones is an upgrade, not a lost bpffs.
    if !path.exists() && std::fs::read_dir(pins.maps_dir()).is_ok_and(|mut d| d.next().is_some()) {
        return Err(MapsError::MissingPin { path });
    }
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let map = aya::maps::Map::from_map_data(data).map_err(|source| MapsError::Open {
        path: path.clone(),
        source: Box::new(source),
    })?;
    T::try_from(map).map_err(|source| MapsError::Open {
        path,
        source: Box::new(source),
    })
}

/// A delete of a key that is not there: aya reports it as `KeyNotFound` for some
/// map types and as the syscall's ENOENT for others (LPM tries).
pub(crate) fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn route6_key(net: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

/// The address (map representation) of a local endpoint's route, which
/// `ENDPOINT_ADDRS` indexes; `None` for any other route.
fn local_addr(net: Ipv4Net, route: &Route) -> Option<u32> {
    (net.prefix_len() == 32 && route.kind == ROUTE_KIND_LOCAL)
        .then(|| ipv4_to_map(net.addr().octets()))
}

fn route_key(net: Ipv4Net) -> Key<u32> {
    Key::new(
        u32::from(net.prefix_len()),
        ipv4_to_map(net.network().octets()),
    )
}

impl Maps {
    pub(crate) fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(Maps {
            routes: open(pins, MAP_ROUTES)?,
            endpoints: open(pins, MAP_ENDPOINTS)?,
            slots: open(pins, MAP_ENDPOINT_SLOTS)?,
            addrs: open(pins, MAP_ENDPOINT_ADDRS)?,
            config: open(pins, MAP_CONFIG)?,
            stats: open(pins, MAP_STATS)?,
            routes6: open(pins, MAP_ROUTES6)?,
            endpoints6: open(pins, MAP_ENDPOINTS6)?,
        })
    }

    pub(crate) fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), MapsError> {
        self.routes6
            .insert(&route6_key(net), route, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_ROUTES6,
                op: "insert",
                source: Box::new(source),
            })
    }

    /// Deletes an IPv6 route; one that is not there is fine.
    pub(crate) fn del_route6(&mut self, net: Ipv6Net) -> Result<(), MapsError> {
        match self.routes6.remove(&route6_key(net)) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(MapsError::Op {
                map: MAP_ROUTES6,
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    pub(crate) fn put_endpoint6(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo6,
    ) -> Result<(), MapsError> {
        self.endpoints6
            .insert(ifindex, info, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_ENDPOINTS6,
                op: "insert",
                source: Box::new(source),
            })
    }

    /// Deletes an IPv6 endpoint entry; one that is not there is fine.
    pub(crate) fn del_endpoint6(&mut self, ifindex: u32) -> Result<(), MapsError> {
        match self.endpoints6.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(MapsError::Op {
                map: MAP_ENDPOINTS6,
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    pub(crate) fn route6(&self, net: Ipv6Net) -> Option<Route> {
        self.routes6.get(&route6_key(net), 0).ok()
    }

    pub(crate) fn endpoint6(&self, ifindex: u32) -> Option<EndpointInfo6> {
        self.endpoints6.get(&ifindex, 0).ok()
    }

    /// Every IPv6 route entry: (prefix, route).
    pub(crate) fn routes6(&self) -> Vec<(Ipv6Net, Route)> {
        self.routes6
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8)
                    .ok()
                    .map(|n| (n, v))
            })
            .collect()
    }

    /// Every IPv6 endpoint entry: (ifindex, info).
    pub(crate) fn endpoints6(&self) -> Vec<(u32, EndpointInfo6)> {
        self.endpoints6.iter().filter_map(|r| r.ok()).collect()
    }

    pub(crate) fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_CONFIG,
                op: "set",
                source: Box::new(source),
            })
    }

    pub(crate) fn config(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(|source| MapsError::Op {
            map: MAP_CONFIG,
            op: "get",
            source: Box::new(source),
        })
    }

    /// Writes a route; a local endpoint's (/32) also into `ENDPOINT_ADDRS`, the
    /// datapath's way to its slot by address. A failed `ENDPOINT_ADDRS` write leaves
    /// the route for the caller's undo (`del_route`).
    pub(crate) fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), MapsError> {
        self.routes
            .insert(&route_key(net), route, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_ROUTES,
                op: "insert",
                source: Box::new(source),
            })?;
        match local_addr(net, route) {
            Some(ip) => self.set_addr(ip, route.endpoint_id),
            None => Ok(()),
        }
    }

    fn set_addr(&mut self, ip: u32, id: u32) -> Result<(), MapsError> {
        self.addrs
            .set(endpoint_addr_index(ip), id, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_ENDPOINT_ADDRS,
                op: "set",
                source: Box::new(source),
            })
    }

    /// The endpoint id `ENDPOINT_ADDRS` holds at the index of `ip` (map
    /// representation; 0: none).
    pub(crate) fn addr_entry(&self, ip: u32) -> Option<u32> {
        self.addrs.get(&endpoint_addr_index(ip), 0).ok()
    }

    pub(crate) fn route(&self, net: Ipv4Net) -> Option<Route> {
        self.routes.get(&route_key(net), 0).ok()
    }

    /// Deletes a route, and a local endpoint's `ENDPOINT_ADDRS` entry if it is still
    /// this endpoint's; one that is not there is fine.
    pub(crate) fn del_route(&mut self, net: Ipv4Net) -> Result<(), MapsError> {
        if let Some(route) = self.route(net)
            && let Some(ip) = local_addr(net, &route)
            && self.addr_entry(ip) == Some(route.endpoint_id)
        {
            self.set_addr(ip, 0)?;
        }
        match self.routes.remove(&route_key(net)) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(MapsError::Op {
                map: MAP_ROUTES,
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    /// Writes an endpoint's entry: in `ENDPOINTS` (by ifindex) and in its slot of
    /// `ENDPOINT_SLOTS` (by id, what `from_pod` reads first). A failed slot write
    /// leaves the `ENDPOINTS` entry for the caller's undo (`del_endpoint`).
    pub(crate) fn put_endpoint(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo,
    ) -> Result<(), MapsError> {
        self.endpoints
            .insert(ifindex, info, 0)
            .map_err(|source| MapsError::Op {
                map: MAP_ENDPOINTS,
                op: "insert",
                source: Box::new(source),
            })?;
        self.set_slot(
            info.id,
            &EndpointSlot {
                ifindex,
                info: *info,
            },
        )
    }

    fn set_slot(&mut self, id: u32, slot: &EndpointSlot) -> Result<(), MapsError> {
        self.slots.set(id, slot, 0).map_err(|source| MapsError::Op {
            map: MAP_ENDPOINT_SLOTS,
            op: "set",
            source: Box::new(source),
        })
    }

    /// The slot of endpoint id `id` (empty: ifindex 0).
    pub(crate) fn slot(&self, id: u32) -> Option<EndpointSlot> {
        self.slots.get(&id, 0).ok()
    }

    /// Fills the slot of every `ENDPOINTS` entry whose slot does not hold it, and
    /// the empty `ENDPOINT_ADDRS` entry of every local endpoint route (pods of a
    /// datapath that had neither: `up --replace` from an earlier version). Returns
    /// how many entries were written.
    pub(crate) fn fill_slots(&mut self) -> Result<usize, MapsError> {
        let entries: Vec<(u32, EndpointInfo)> =
            self.endpoints.iter().filter_map(|r| r.ok()).collect();
        let mut written = 0;
        for (ifindex, info) in entries {
            let slot = EndpointSlot { ifindex, info };
            if self.slot(info.id) != Some(slot) {
                self.set_slot(info.id, &slot)?;
                written += 1;
            }
        }
        let locals: Vec<(u32, u32)> = self
            .routes
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, r)| k.prefix_len() == 32 && r.kind == ROUTE_KIND_LOCAL)
            .map(|(k, r)| (k.data(), r.endpoint_id))
            .collect();
        for (ip, id) in locals {
            // Empty entries only: another id there is a pod with the same last two
            // address bytes (a pod CIDR larger than a /16), which keeps it.
            if self.addr_entry(ip) == Some(0) {
                self.set_addr(ip, id)?;
                written += 1;
            }
        }
        Ok(written)
    }

    pub(crate) fn endpoint(&self, ifindex: u32) -> Option<EndpointInfo> {
        self.endpoints.get(&ifindex, 0).ok()
    }

    /// Deletes an endpoint entry, and its slot if the slot is still this veth's;
    /// one that is not there is fine.
    pub(crate) fn del_endpoint(&mut self, ifindex: u32) -> Result<(), MapsError> {
        if let Some(info) = self.endpoint(ifindex)
            && self.slot(info.id).is_some_and(|s| s.ifindex == ifindex)
        {
            self.set_slot(info.id, &EndpointSlot::default())?;
        }
        match self.endpoints.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(MapsError::Op {
                map: MAP_ENDPOINTS,
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    /// Zeroes every counter of an endpoint id (before the id is given out again).
    pub(crate) fn reset_counters(&mut self, id: u32) -> Result<(), MapsError> {
        let ncpus = self.stats_cpus()?;
        for v in Verdict::ALL {
            let zeros =
                PerCpuValues::try_from(vec![Counter::default(); ncpus]).map_err(|source| {
                    MapsError::Op {
                        map: MAP_STATS,
                        op: "zero",
                        source: Box::new(MapError::IoError(source)),
                    }
                })?;
            self.stats
                .set(stats_index(id, v), zeros, 0)
                .map_err(|source| MapsError::Op {
                    map: MAP_STATS,
                    op: "set",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    fn stats_cpus(&self) -> Result<usize, MapsError> {
        aya::util::nr_cpus().map_err(|(_, e)| MapsError::Op {
            map: MAP_STATS,
            op: "count possible cpus",
            source: Box::new(MapError::IoError(e)),
        })
    }

    /// An endpoint's counters, summed over CPUs.
    pub(crate) fn counters(&self, id: u32) -> Result<EndpointCounters, MapsError> {
        let mut out = [Counter::default(); Verdict::COUNT as usize];
        for v in Verdict::ALL {
            let per_cpu =
                self.stats
                    .get(&stats_index(id, v), 0)
                    .map_err(|source| MapsError::Op {
                        map: MAP_STATS,
                        op: "get",
                        source: Box::new(source),
                    })?;
            for c in per_cpu.iter() {
                out[v as usize].packets += c.packets;
                out[v as usize].bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// One verdict's packets, summed over CPUs and over the endpoint ids `ids`: one
    /// lookup per id, where a whole batch would read every verdict of every id.
    pub(crate) fn packets_of(
        &self,
        verdict: Verdict,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<u64, MapsError> {
        let mut sum = 0;
        for id in ids {
            let per_cpu = self
                .stats
                .get(&stats_index(id, verdict), 0)
                .map_err(|source| MapsError::Op {
                    map: MAP_STATS,
                    op: "get",
                    source: Box::new(source),
                })?;
            sum += per_cpu.iter().map(|c| c.packets).sum::<u64>();
        }
        Ok(sum)
    }

    /// The counters of endpoint ids `0..=max_id`, summed over CPUs, indexed by id:
    /// in one `bpf()` call (a batch lookup), or, where the kernel has none (before
    /// 5.6), one call per counter.
    pub(crate) fn counters_upto(&self, max_id: u32) -> Result<Vec<EndpointCounters>, MapsError> {
        let err = |source| MapsError::Op {
            map: MAP_STATS,
            op: "batch lookup",
            source: Box::new(MapError::IoError(source)),
        };
        let ncpus = self.stats_cpus()?;
        // The kernel copies each CPU's value rounded up to 8 bytes.
        let slot = size_of::<Counter>().next_multiple_of(8);
        let verdicts = Verdict::COUNT as usize;
        let count = (max_id + 1) * Verdict::COUNT;
        let bytes = match batch::lookup_array(self.stats.map().fd().as_fd(), count, slot * ncpus) {
            Ok(bytes) => bytes,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return (0..=max_id).map(|id| self.counters(id)).collect();
            }
            Err(e) => return Err(err(e)),
        };
        let word = |b: &[u8], at: usize| -> u64 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        let mut out = vec![[Counter::default(); Verdict::COUNT as usize]; max_id as usize + 1];
        for (entry, value) in bytes.chunks_exact(slot * ncpus).enumerate() {
            let c = &mut out[entry / verdicts][entry % verdicts];
            for cpu in value.chunks_exact(slot) {
                // Counter is #[repr(C)] { packets: u64, bytes: u64 }.
                c.packets += word(cpu, 0);
                c.bytes += word(cpu, 8);
            }
        }
        Ok(out)
    }

    /// Every route entry: (prefix, route).
    pub(crate) fn routes(&self) -> Vec<(Ipv4Net, Route)> {
        self.routes
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                let ip = Ipv4Addr::from(vethbpf_common::ipv4_from_map(k.data()));
                Ipv4Net::new(ip, k.prefix_len() as u8).ok().map(|n| (n, v))
            })
            .collect()
    }

    /// Every endpoint entry: (ifindex, info).
    pub(crate) fn endpoints(&self) -> Vec<(u32, EndpointInfo)> {
        self.endpoints.iter().filter_map(|r| r.ok()).collect()
    }
}
