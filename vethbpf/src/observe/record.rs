//! What `vethbpf monitor` reports, one record per line: a datapath event with names
//! and decoded packet fields, a count of events lost to a full ring, or a
//! diagnostic from the program's log.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use vethbpf_common::{EVENT_DROP, EVENT_TRACE, Event, Verdict};

use super::decode::PacketView;
use super::names::{Names, interface_name};
use crate::kernel::clock::monotonic_ns;

/// One line of `vethbpf monitor`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Record {
    Event(Box<EventRecord>),
    Lost(LostRecord),
    Log(LogRecord),
}

/// A drop or trace event from the datapath.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    /// When the program saw the packet (UTC, RFC 3339).
    pub time: String,
    /// `drop` or `trace`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The verdict's name (`drop_spoof`, `forward`, ...).
    pub verdict: String,
    /// The verdict in words.
    pub reason: &'static str,
    /// The endpoint whose host veth the packet came in on (none: not an endpoint's).
    pub endpoint: Option<String>,
    pub endpoint_id: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    pub interface: Option<String>,
    /// The endpoint the packet's destination address belongs to, if any.
    pub destination_endpoint: Option<String>,
    /// The remote node the packet comes from or goes to (its pod CIDR or its own
    /// address is the source or destination), if any.
    pub node: Option<String>,
    /// The packet's length; a GSO packet's whole length, with `segs` segments.
    pub len: u32,
    pub segs: u32,
    pub packet: PacketView,
    /// The captured bytes (at most 128), hex.
    pub data: String,
}

/// Events the datapath could not put into the full ring since the last report.
#[derive(Clone, Debug, Serialize)]
pub struct LostRecord {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Lost since the previous report.
    pub lost: u64,
    /// Lost since the monitor started.
    pub lost_total: u64,
}

/// A diagnostic the program logged (aya-log).
#[derive(Clone, Debug, Serialize)]
pub struct LogRecord {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub level: String,
    pub message: String,
}

/// Now, as records show it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Converts the datapath's CLOCK_MONOTONIC nanoseconds to wall-clock time.
pub fn wall_time(mono_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let now_mono = monotonic_ns();
    now_wall
        .checked_sub(Duration::from_nanos(now_mono.saturating_sub(mono_ns)))
        .unwrap_or(now_wall)
}

impl LostRecord {
    pub fn new(lost: u64, lost_total: u64) -> Self {
        LostRecord {
            time: now(),
            kind: "lost",
            lost,
            lost_total,
        }
    }
}

impl LogRecord {
    pub fn new(level: log::Level, message: String) -> Self {
        LogRecord {
            time: now(),
            kind: "log",
            level: level.as_str().to_lowercase(),
            message,
        }
    }
}

impl EventRecord {
    /// The record of `ev`, with names looked up in `names`.
    pub fn new(ev: &Event, names: &mut Names) -> Self {
        let verdict = Verdict::ALL.get(usize::from(ev.verdict)).copied();
        let cap = (ev.cap_len as usize).min(ev.data.len());
        let data = &ev.data[..cap];
        let packet = PacketView::decode(data);
        let endpoint = names
            .endpoint(ev.endpoint_id)
            .or_else(|| names.endpoint_of_ifindex(ev.ifindex));
        let destination_endpoint =
            packet
                .dst
                .and_then(|ip| names.endpoint_of_ip(ip))
                .or_else(|| {
                    packet
                        .arp
                        .as_ref()
                        .and_then(|a| a.target_ip)
                        .and_then(|ip| names.endpoint_of_ip(ip.into()))
                });
        let node = [packet.src, packet.dst]
            .into_iter()
            .flatten()
            .find_map(|ip| names.node_of_ip(ip));
        EventRecord {
            time: humantime::format_rfc3339_millis(wall_time(ev.time_ns)).to_string(),
            kind: match ev.kind {
                EVENT_DROP => "drop",
                EVENT_TRACE => "trace",
                _ => "unknown",
            },
            verdict: verdict
                .map(|v| v.name().to_string())
                .unwrap_or_else(|| format!("verdict_{}", ev.verdict)),
            reason: verdict
                .map(Verdict::reason)
                .unwrap_or("a verdict of another build"),
            endpoint,
            endpoint_id: ev.endpoint_id,
            ifindex: ev.ifindex,
            interface: interface_name(ev.ifindex),
            destination_endpoint,
            node,
            len: ev.len,
            segs: ev.segs,
            packet,
            data: data.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Whether the event concerns endpoint `name`: it came from it, or is addressed
    /// to it.
    pub fn involves(&self, name: &str) -> bool {
        self.endpoint.as_deref() == Some(name) || self.destination_endpoint.as_deref() == Some(name)
    }
}
