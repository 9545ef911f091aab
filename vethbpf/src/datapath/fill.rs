//! How full each pinned map is: entries against capacity, for every map the object
//! defines (the list is `vethbpf_common::ALL_MAPS`), so that a table nearing its
//! limit is visible before packets find it full.
//!
//! Counting is generic over key sizes: hash, LRU hash and LPM trie maps are walked
//! with `BPF_MAP_GET_NEXT_KEY` on raw key bytes (no typed view per map); arrays are
//! always full by construction and report their size; a ring buffer has no entries.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, MapType};
use serde::Serialize;
use vethbpf_common::ALL_MAPS;

use super::Pins;
use super::maps::MapsError;

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
                MapType::Hash => (
                    "hash",
                    Some(count_keys(&data, info.key_size(), info.max_entries())),
                ),
                MapType::LruHash => (
                    "lru_hash",
                    Some(count_keys(&data, info.key_size(), info.max_entries())),
                ),
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

/// `union bpf_attr` for BPF_MAP_GET_NEXT_KEY (linux/bpf.h).
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Number of keys in a map of any key size. A key deleted during the walk may
/// restart it (the kernel then returns the first key): the count is capped at the
/// map's capacity, as good as any snapshot of a changing map.
fn count_keys(map: &MapData, key_size: u32, max_entries: u32) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    let size = key_size as usize;
    let mut key = vec![0u8; size];
    let mut next = vec![0u8; size];
    let mut first = true;
    let mut n = 0u64;
    let limit = u64::from(max_entries);
    while n < limit {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: the attr is valid for the call; `key` and `next` are `key_size`
        // bytes each, what the kernel reads and writes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                size_of::<NextKeyAttr>() as u32,
            )
        };
        if ret != 0 {
            // ENOENT: past the last key (any other error ends the walk too).
            break;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    n
}
