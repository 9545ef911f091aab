//! The datapath's event maps: the `EVENTS` ring buffer a monitor reads, the
//! `MONITOR` entry that tells the programs whether (and until when) anyone listens,
//! and the per-CPU count of events that found the ring full.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Array, MapData, MapError, MapInfo, PerCpuArray, RingBuf};
use vethbpf_common::{EVENT_VERSION, Event, MAP_EVENTS, MAP_EVENTS_LOST, MAP_MONITOR, Monitor};

use super::Pins;
use super::maps::{MapsError, open};

/// The ring buffer of events, opened from its pin.
pub struct EventRing {
    ring: RingBuf<MapData>,
    id: u32,
}

/// The id of the map pinned as `name` now (0 if it cannot be read).
fn pinned_id(pins: &Pins, name: &str) -> u32 {
    MapInfo::from_pin(pins.map(name)).map_or(0, |i| i.id())
}

/// What one ring buffer record held.
#[derive(Debug)]
pub enum RawEvent {
    Event(Box<Event>),
    /// A record of another size or layout version (a datapath of another build).
    Foreign {
        len: usize,
        version: Option<u8>,
    },
}

impl EventRing {
    /// Opens the pinned `EVENTS` ring buffer.
    pub fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(EventRing {
            ring: open(pins, MAP_EVENTS)?,
            id: pinned_id(pins, MAP_EVENTS),
        })
    }

    /// Whether the ring is still the one pinned (`up --replace` may make it new).
    pub fn is_pinned(&self, pins: &Pins) -> bool {
        pinned_id(pins, MAP_EVENTS) == self.id
    }

    /// The next record, if the ring holds one (never blocks).
    pub fn next_event(&mut self) -> Option<RawEvent> {
        let item = self.ring.next()?;
        let bytes: &[u8] = &item;
        let version = bytes.get(core::mem::offset_of!(Event, version)).copied();
        if bytes.len() < size_of::<Event>() || version != Some(EVENT_VERSION) {
            return Some(RawEvent::Foreign {
                len: bytes.len(),
                version,
            });
        }
        // SAFETY: `bytes` holds at least size_of::<Event>() bytes; Event is plain
        // old data (any bit pattern is valid), read unaligned.
        let event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
        Some(RawEvent::Event(Box::new(event)))
    }
}

impl AsFd for EventRing {
    /// Readable (for poll) when the ring holds records.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// The `MONITOR` entry and the lost-event counters.
pub struct Listener {
    monitor: Array<MapData, Monitor>,
    lost: PerCpuArray<MapData, u64>,
    ids: (u32, u32),
}

fn op(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op {
        map,
        op,
        source: Box::new(source),
    }
}

impl Listener {
    /// Opens the pinned `MONITOR` and `EVENTS_LOST` maps.
    pub fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(Listener {
            monitor: open(pins, MAP_MONITOR)?,
            lost: open(pins, MAP_EVENTS_LOST)?,
            ids: (
                pinned_id(pins, MAP_MONITOR),
                pinned_id(pins, MAP_EVENTS_LOST),
            ),
        })
    }

    /// Whether both maps are still the ones pinned (`up --replace` may make them new).
    pub fn is_pinned(&self, pins: &Pins) -> bool {
        (
            pinned_id(pins, MAP_MONITOR),
            pinned_id(pins, MAP_EVENTS_LOST),
        ) == self.ids
    }

    /// The entry as it is now.
    pub fn get(&self) -> Result<Monitor, MapsError> {
        self.monitor.get(&0, 0).map_err(op(MAP_MONITOR, "get"))
    }

    /// Writes the entry (all zero: nobody listens).
    pub fn set(&mut self, entry: &Monitor) -> Result<(), MapsError> {
        self.monitor
            .set(0, entry, 0)
            .map_err(op(MAP_MONITOR, "set"))
    }

    /// Events lost to a full ring since the maps were made, over all CPUs.
    pub fn lost(&self) -> Result<u64, MapsError> {
        let per_cpu = self.lost.get(&0, 0).map_err(op(MAP_EVENTS_LOST, "get"))?;
        Ok(per_cpu.iter().sum())
    }
}
