//! Pinned maps made by another vethbpf version, checked before a load reuses them.
//!
//! aya binds a pinned map to the object's definition of the same name without
//! comparing the two, so a map whose layout changed would be read with the wrong
//! sizes and indices, silently. Before every load (`up`, `up --replace`), each
//! pinned map is compared with what this build expects:
//!
//! - `STATS` with another number of verdicts per endpoint (verdicts are only ever
//!   appended) is migrated: a new array is filled with every endpoint's counters at
//!   their new indices and renamed over the old pin, so counters survive the upgrade
//!   (the old program keeps the old array until the new one replaces it; what it
//!   counts in between is lost);
//! - any other difference (key or value size, type, capacity) fails the load with
//!   the map named and the way out (`vethbpf down`, then `up`): reading it anyway
//!   would misread every entry. The NAT map's capacity is the node's flow limit, an
//!   egress setting `up` checks on its own.

use std::fs;
use std::path::Path;

use aya::EbpfLoader;
use aya::maps::{MapData, MapInfo, MapType, PerCpuArray, PerCpuValues};
use vethbpf_common::{
    ClusterConfig, Config, Counter, EgressConfig, EndpointInfo, FRAG_ENTRIES, FragEntry, FragKey,
    MAP_CLUSTER, MAP_CONFIG, MAP_EGRESS, MAP_EGRESS_SKIP, MAP_ENDPOINTS, MAP_FRAGS, MAP_NAT,
    MAP_NAT_STATE, MAP_NODE_STATS, MAP_NODES, MAP_ROUTES, MAP_STATS, MAX_EGRESS_SKIP,
    MAX_ENDPOINTS, MAX_NODES, MAX_ROUTES, NatEntry, NatKey, NatState, NodeCounter, NodeInfo, Route,
    STATS_ENTRIES, Verdict,
};

use super::{BpfError, Pins};

/// What this build expects of a map: type, key and value size, capacity (`None`:
/// set per node).
struct Expect {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    entries: Option<u32>,
}

const fn expect(
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    entries: Option<u32>,
) -> Expect {
    Expect {
        name,
        kind,
        key,
        value,
        entries,
    }
}

/// Every map of the object. An LPM trie key is the prefix length and the address.
const EXPECTED: [Expect; 12] = [
    expect(
        MAP_ROUTES,
        MapType::LpmTrie,
        8,
        size_of::<Route>(),
        Some(MAX_ROUTES),
    ),
    expect(
        MAP_ENDPOINTS,
        MapType::Hash,
        4,
        size_of::<EndpointInfo>(),
        Some(MAX_ENDPOINTS),
    ),
    expect(MAP_CONFIG, MapType::Array, 4, size_of::<Config>(), Some(1)),
    expect(
        MAP_STATS,
        MapType::PerCpuArray,
        4,
        size_of::<Counter>(),
        Some(STATS_ENTRIES),
    ),
    expect(
        MAP_EGRESS,
        MapType::Array,
        4,
        size_of::<EgressConfig>(),
        Some(1),
    ),
    expect(
        MAP_EGRESS_SKIP,
        MapType::LpmTrie,
        8,
        4,
        Some(MAX_EGRESS_SKIP),
    ),
    expect(
        MAP_NAT,
        MapType::LruHash,
        size_of::<NatKey>(),
        size_of::<NatEntry>(),
        None,
    ),
    expect(
        MAP_NAT_STATE,
        MapType::Array,
        4,
        size_of::<NatState>(),
        Some(1),
    ),
    expect(
        MAP_FRAGS,
        MapType::LruHash,
        size_of::<FragKey>(),
        size_of::<FragEntry>(),
        Some(FRAG_ENTRIES),
    ),
    expect(
        MAP_CLUSTER,
        MapType::Array,
        4,
        size_of::<ClusterConfig>(),
        Some(1),
    ),
    expect(
        MAP_NODES,
        MapType::Array,
        4,
        size_of::<NodeInfo>(),
        Some(MAX_NODES),
    ),
    expect(
        MAP_NODE_STATS,
        MapType::PerCpuArray,
        4,
        size_of::<NodeCounter>(),
        Some(MAX_NODES),
    ),
];

fn incompatible(name: &'static str, detail: String) -> BpfError {
    BpfError::IncompatibleMap { map: name, detail }
}

/// Checks every pinned map against this build, migrating `STATS` if its verdict
/// count changed. Maps not pinned yet (a fresh node, or maps this version adds) are
/// fine: the load creates them.
pub(crate) fn prepare(pins: &Pins, object: &[u8]) -> Result<(), BpfError> {
    for e in &EXPECTED {
        let path = pins.map(e.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| BpfError::OpenMap {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let kind = info.map_type().ok();
        if kind != Some(e.kind)
            || info.key_size() as usize != e.key
            || info.value_size() as usize != e.value
        {
            return Err(incompatible(
                e.name,
                format!(
                    "{kind:?} with {}-byte keys and {}-byte values, this vethbpf uses {:?} with {} and {}",
                    info.key_size(),
                    info.value_size(),
                    e.kind,
                    e.key,
                    e.value
                ),
            ));
        }
        match e.entries {
            Some(n) if info.max_entries() != n => {
                if e.name == MAP_STATS {
                    migrate_stats(pins, object, info.max_entries())?;
                } else {
                    return Err(incompatible(
                        e.name,
                        format!("{} entries, this vethbpf uses {n}", info.max_entries()),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies the counters of the pinned `STATS` (with `old_entries` entries) into a new
/// array of this build's size and renames it over the pin.
fn migrate_stats(pins: &Pins, object: &[u8], old_entries: u32) -> Result<(), BpfError> {
    let old_count = old_entries / MAX_ENDPOINTS;
    if !old_entries.is_multiple_of(MAX_ENDPOINTS) || old_count == 0 || old_count > Verdict::COUNT {
        return Err(incompatible(
            MAP_STATS,
            format!(
                "{old_entries} entries is no whole number of endpoints x at most {} verdicts",
                Verdict::COUNT
            ),
        ));
    }
    let path = pins.map(MAP_STATS);
    let tmp = pins.maps_dir().join(format!("{MAP_STATS}_new"));
    let _ = fs::remove_file(&tmp);
    let map_err = |source: aya::maps::MapError| BpfError::OpenMap {
        path: path.clone(),
        source: Box::new(source),
    };
    // A load that pins only the new STATS (at a temporary name); its other maps are
    // throwaway copies, dropped at the end of this function.
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(MAP_STATS, &tmp)
        .load(object)
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    let copied = (|| {
        let old: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(
            aya::maps::Map::PerCpuArray(MapData::from_pin(&path).map_err(map_err)?),
        )
        .map_err(map_err)?;
        let mut new: PerCpuArray<&mut MapData, Counter> = ebpf
            .map_mut(MAP_STATS)
            .ok_or_else(|| incompatible(MAP_STATS, "missing from the object".into()))?
            .try_into()
            .map_err(map_err)?;
        for id in 0..MAX_ENDPOINTS {
            for v in 0..old_count {
                let values = old.get(&(id * old_count + v), 0).map_err(map_err)?;
                if values.iter().all(|c| *c == Counter::default()) {
                    continue;
                }
                let values: Vec<Counter> = values.iter().copied().collect();
                let values = PerCpuValues::try_from(values)
                    .map_err(|e| map_err(aya::maps::MapError::IoError(e)))?;
                new.set(id * Verdict::COUNT + v, values, 0)
                    .map_err(map_err)?;
            }
        }
        Ok::<_, BpfError>(())
    })();
    drop(ebpf);
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename(&tmp, &path)
}

fn rename(from: &Path, to: &Path) -> Result<(), BpfError> {
    fs::rename(from, to).map_err(|source| BpfError::Remove {
        path: from.to_path_buf(),
        source,
    })
}
