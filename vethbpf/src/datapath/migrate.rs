//! Keeping a node's map entries when a new build's maps differ from the pinned
//! ones (`up --replace`): a map without BTF from a build before BTF maps, a `STATS`
//! array sized for another number of verdicts.
//!
//! A pinned map that matches the object's definition (type, key and value size,
//! capacity, flags, and BTF when the object has it) is reused as ever. One that does
//! not is made new from the object and the old one's entries copied into it, before
//! any attachment switches to the new program: endpoints, routes and config as they
//! are (the state lock keeps them still); counters by endpoint and verdict (`STATS`
//! re-strided: verdicts keep their numbers, new ones start at zero). After the
//! switch, what the old program counted meanwhile is added, and the new map is
//! pinned over the old one. The event ring and the trace filter start empty. A map
//! whose key or value layout changed cannot be carried over: the upgrade is refused,
//! naming it, before anything changes.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;

use aya::maps::MapData;
use vethbpf_common::{ALL_MAPS, MAP_EVENTS, MAP_STATS, MAP_TRACE_FLOWS, MAX_ENDPOINTS, Verdict};

use super::sys::{self, MapInfoRaw};
use super::{BpfError, Pins};

const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// How an old map's entries reach its replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    /// Entry by entry, as they are.
    Copy,
    /// `STATS`: counter `id * old_count + verdict` to `id * Verdict::COUNT + verdict`.
    Restride { old_count: u32 },
    /// Nothing (the event ring, the trace filter: transient).
    Nothing,
}

/// A pinned map being replaced by a new one.
pub(crate) struct Pending {
    name: &'static str,
    old: MapData,
    /// Where the new map is pinned until it takes the old one's place.
    tmp: PathBuf,
    carry: Carry,
    /// Per-CPU counters copied so far, by old key: what the old program adds after
    /// the copy is carried over after the switch.
    copied: HashMap<Vec<u8>, Vec<u8>>,
}

/// What loading the object does with each pinned map.
pub(crate) struct MapPlan {
    /// Maps whose pin the loader uses (reused if there, made and pinned if not).
    pub(crate) bind: Vec<&'static str>,
    pub(crate) pending: Vec<Pending>,
}

fn describe(map_type: u32, key: u32, value: u32, max: u32, flags: u32, btf: bool) -> String {
    format!(
        "type {map_type}, key {key} B, value {value} B, {max} entries, flags {flags:#x}{}",
        if btf { ", BTF" } else { ", no BTF" }
    )
}

/// Compares every pinned map with the object's definition, with the capacities the
/// loader will set (`capacities`: map name -> max_entries, e.g. the NAT table sized
/// for the node's flow limit).
pub(crate) fn plan(
    pins: &Pins,
    object: &[u8],
    capacities: &[(&str, u32)],
) -> Result<MapPlan, BpfError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| BpfError::Parse(e.to_string()))?;
    let mut plan = MapPlan {
        bind: Vec::new(),
        pending: Vec::new(),
    };
    for name in ALL_MAPS {
        let path = pins.map(name);
        if !path.exists() {
            plan.bind.push(name);
            continue;
        }
        let def = obj.maps.get(name).ok_or(BpfError::MissingMap(name))?;
        let want_max = capacities
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(def.max_entries(), |(_, c)| *c);
        let old = MapData::from_pin(&path).map_err(|source| BpfError::OpenMap {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let have = sys::map_info(old.fd().as_fd()).map_err(|source| BpfError::MapInfo {
            path: path.clone(),
            source,
        })?;
        // The kernel takes no BTF for a ring buffer's zero-sized key and value.
        let want_btf =
            matches!(def, aya_obj::Map::Btf(_)) && def.map_type() != BPF_MAP_TYPE_RINGBUF;
        let has_btf = have.btf_value_type_id != 0 || have.btf_key_type_id != 0;
        let same_layout = have.map_type == def.map_type()
            && have.key_size == def.key_size()
            && have.value_size == def.value_size();
        if same_layout
            && have.max_entries == want_max
            && have.map_flags == def.map_flags()
            && (has_btf || !want_btf)
        {
            plan.bind.push(name);
            continue;
        }
        let pinned = describe(
            have.map_type,
            have.key_size,
            have.value_size,
            have.max_entries,
            have.map_flags,
            has_btf,
        );
        let carry = if name == MAP_EVENTS || name == MAP_TRACE_FLOWS {
            Carry::Nothing
        } else if !same_layout {
            return Err(BpfError::IncompatibleMap {
                map: name,
                detail: format!(
                    "{pinned}; this vethbpf uses {}",
                    describe(
                        def.map_type(),
                        def.key_size(),
                        def.value_size(),
                        want_max,
                        def.map_flags(),
                        want_btf,
                    )
                ),
            });
        } else if name == MAP_STATS && have.max_entries != want_max {
            let old_count = have.max_entries / MAX_ENDPOINTS;
            if !have.max_entries.is_multiple_of(MAX_ENDPOINTS)
                || old_count == 0
                || old_count > Verdict::COUNT
            {
                return Err(BpfError::IncompatibleMap {
                    map: name,
                    detail: format!(
                        "{} entries: no whole number of {MAX_ENDPOINTS} endpoints x at most {} verdicts",
                        have.max_entries,
                        Verdict::COUNT
                    ),
                });
            }
            Carry::Restride { old_count }
        } else {
            Carry::Copy
        };
        tracing::info!(
            map = name,
            %pinned,
            ?carry,
            "the pinned map differs from this build's: making it new"
        );
        plan.pending.push(Pending {
            name,
            old,
            tmp: pins.map(&format!("{name}_new")),
            carry,
            copied: HashMap::new(),
        });
    }
    Ok(plan)
}

fn is_per_cpu(info: &MapInfoRaw) -> bool {
    matches!(
        info.map_type,
        BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH
    )
}

/// Bytes a lookup of one value takes: per-CPU maps hand back one 8-aligned slot per
/// possible CPU.
fn value_len(info: &MapInfoRaw) -> Result<usize, BpfError> {
    if !is_per_cpu(info) {
        return Ok(info.value_size as usize);
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| BpfError::Cpus(source))?;
    Ok((info.value_size as usize).div_ceil(8) * 8 * cpus)
}

impl Pending {
    /// The map's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    fn op_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> BpfError + '_ {
        move |source| BpfError::Migrate {
            map: self.name,
            op,
            source,
        }
    }

    /// The new map's key for an old key (`None`: no place for it in the new map).
    fn new_key(&self, key: &[u8], new_max: u32) -> Option<Vec<u8>> {
        match self.carry {
            Carry::Restride { old_count } => {
                let index = u32::from_ne_bytes(key.try_into().ok()?);
                let (id, verdict) = (index / old_count, index % old_count);
                (verdict < Verdict::COUNT)
                    .then(|| (id * Verdict::COUNT + verdict).to_ne_bytes().to_vec())
                    .filter(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) < new_max)
            }
            _ => Some(key.to_vec()),
        }
    }
}

/// Pins the new map `map` of `pending` at its temporary pin and copies the old one's
/// entries into it.
pub(crate) fn fill(pending: &mut Pending, map: &aya::maps::Map) -> Result<(), BpfError> {
    let _ = fs::remove_file(&pending.tmp);
    map.pin(&pending.tmp).map_err(|source| BpfError::Pin {
        path: pending.tmp.clone(),
        source,
    })?;
    if pending.carry == Carry::Nothing {
        return Ok(());
    }
    let new = MapData::from_pin(&pending.tmp).map_err(|source| BpfError::OpenMap {
        path: pending.tmp.clone(),
        source: Box::new(source),
    })?;
    let old_info = sys::map_info(pending.old.fd().as_fd()).map_err(pending.op_err("info"))?;
    let new_info = sys::map_info(new.fd().as_fd()).map_err(pending.op_err("info"))?;
    let len = value_len(&old_info)?;
    let keys = sys::keys(
        pending.old.fd().as_fd(),
        old_info.key_size,
        u64::from(old_info.max_entries),
    )
    .map_err(pending.op_err("walk"))?;
    let mut value = vec![0u8; len];
    let mut copied = HashMap::new();
    for key in keys {
        if !sys::lookup(pending.old.fd().as_fd(), &key, &mut value)
            .map_err(pending.op_err("lookup"))?
        {
            continue;
        }
        let Some(new_key) = pending.new_key(&key, new_info.max_entries) else {
            continue;
        };
        sys::update(new.fd().as_fd(), &new_key, &value).map_err(pending.op_err("update"))?;
        if is_per_cpu(&old_info) {
            copied.insert(key, value.clone());
        }
    }
    pending.copied = copied;
    Ok(())
}

/// After the switch: adds to the new per-CPU counters what the old program counted
/// since [`fill`] (nothing runs the old program any more), then pins the new map over
/// the old one (a reader sees one or the other, never none).
pub(crate) fn finish(pending: Pending, pins: &Pins) -> Result<(), BpfError> {
    if !pending.copied.is_empty() {
        let new = MapData::from_pin(&pending.tmp).map_err(|source| BpfError::OpenMap {
            path: pending.tmp.clone(),
            source: Box::new(source),
        })?;
        let new_info = sys::map_info(new.fd().as_fd()).map_err(pending.op_err("info"))?;
        let mut now = vec![0u8; pending.copied.values().next().map_or(0, Vec::len)];
        let mut current = now.clone();
        for (key, then) in &pending.copied {
            let Some(new_key) = pending.new_key(key, new_info.max_entries) else {
                continue;
            };
            if !sys::lookup(pending.old.fd().as_fd(), key, &mut now)
                .map_err(pending.op_err("lookup"))?
                || now == *then
            {
                continue;
            }
            if !sys::lookup(new.fd().as_fd(), &new_key, &mut current)
                .map_err(pending.op_err("lookup"))?
            {
                continue;
            }
            // Per-CPU counters are u64s: add each one's growth.
            for ((c, n), t) in current
                .chunks_exact_mut(8)
                .zip(now.chunks_exact(8))
                .zip(then.chunks_exact(8))
            {
                let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
                let sum = word(c).wrapping_add(word(n).wrapping_sub(word(t)));
                c.copy_from_slice(&sum.to_ne_bytes());
            }
            sys::update(new.fd().as_fd(), &new_key, &current).map_err(pending.op_err("update"))?;
        }
    }
    let path = pins.map(pending.name);
    fs::rename(&pending.tmp, &path).map_err(|source| BpfError::Remove {
        path: pending.tmp.clone(),
        source,
    })?;
    tracing::info!(map = pending.name, "map made new, entries kept");
    Ok(())
}

/// Removes the temporary pins of maps that did not take their old one's place.
pub(crate) fn abandon(pending: Vec<Pending>) {
    for p in pending {
        let _ = fs::remove_file(&p.tmp);
    }
}
