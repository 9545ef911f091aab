//! How full each pinned map is: entries against capacity, for every map the object
//! defines (the list is `vethbpf_common::ALL_MAPS`), so that a table nearing its
//! limit is visible before packets find it full.
//!
//! Counting is generic over key sizes: hash and LRU hash maps are read in batches
//! (`BPF_MAP_LOOKUP_BATCH`, a few calls for thousands of entries), LPM tries, which
//! have no batch operation, walked with `BPF_MAP_GET_NEXT_KEY` on raw key bytes (no
//! typed view per map); arrays are always full by construction and report their
//! size; a ring buffer has no entries.

use std::os::fd::AsFd;

use aya::maps::{MapData, MapType};
use serde::Serialize;
use vethbpf_common::ALL_MAPS;

use super::maps::MapsError;
use super::sys;
use super::{Pins, batch};

/// One map's fill.
#[derive(Clone, Debug, Serialize)]
pub struct MapFill {
    pub name: &'static str,
    /// The kernel's map type, as bpftool names it (hash, lru_hash, lpm_trie, array,
    /// percpu_array, ringbuf).
    pub kind: &'static str,
    /// Entries now; `None` for a ring buffer.
    pub entries: Option<u64>,
    /// The map's `max_entries` (bytes for a ring buffer).
    pub max_entries: u32,
}

/// The fill of every map pinned under `pins`.
pub fn map_fill(pins: &Pins) -> Result<Vec<MapFill>, MapsError> {
    ALL_MAPS
        .iter()
        .map(|name| {
            let path = pins.map(name);
            let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
            let info = data.info().map_err(|source| MapsError::Op {
                map: name,
                op: "info",
                source: Box::new(source),
            })?;
            let map_type = info.map_type().map_err(|source| MapsError::Op {
                map: name,
                op: "type",
                source: Box::new(source),
            })?;
            let (kind, entries) = match map_type {
                MapType::Hash => ("hash", Some(count_hash(&data, &info))),
                MapType::LruHash => ("lru_hash", Some(count_hash(&data, &info))),
                MapType::LpmTrie => (
                    "lpm_trie",
                    Some(count_keys(&data, info.key_size(), info.max_entries())),
                ),
                MapType::Array => ("array", Some(u64::from(info.max_entries()))),
                MapType::PerCpuArray => ("percpu_array", Some(u64::from(info.max_entries()))),
                MapType::RingBuf => ("ringbuf", None),
                _ => ("other", None),
            };
            Ok(MapFill {
                name,
                kind,
                entries,
                max_entries: info.max_entries(),
            })
        })
        .collect()
}

/// Number of entries in a (plain or LRU) hash map: in batches, or by walking its
/// keys where the kernel has no batch operation.
fn count_hash(map: &MapData, info: &aya::maps::MapInfo) -> u64 {
    let (key_size, max_entries) = (info.key_size(), info.max_entries());
    match batch::count_hash(map.fd().as_fd(), key_size, info.value_size(), max_entries) {
        Ok(Some(n)) => n,
        Ok(None) => count_keys(map, key_size, max_entries),
        Err(e) => {
            tracing::warn!(error = %e, "counting map entries");
            count_keys(map, key_size, max_entries)
        }
    }
}

/// Number of keys in a map of any key size (capped at its capacity: see
/// [`sys::keys`]). A walk that fails counts what it saw.
fn count_keys(map: &MapData, key_size: u32, max_entries: u32) -> u64 {
    match sys::keys(map.fd().as_fd(), key_size, u64::from(max_entries)) {
        Ok(keys) => keys.len() as u64,
        Err(e) => {
            tracing::warn!(error = %e, "counting map entries");
            0
        }
    }
}
