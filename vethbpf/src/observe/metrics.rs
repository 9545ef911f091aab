//! `vethbpf metrics`: the node's counters, map fill and programs in the Prometheus
//! text format (0.0.4, what node_exporter's textfile collector and Prometheus read),
//! encoded by prometheus-client.
//!
//! Everything is read when asked for (a scrape): counters from the pinned maps, names
//! from the state file (read without the lock, so a scrape never waits for or
//! blocks a command), so a registry is built per scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vethbpf_common::{MONITOR_LEASE_NS, PROG_FROM_POD, Verdict};

use super::ObserveError;
use super::record::monotonic_ns;
use crate::datapath::events::Listener;
use crate::datapath::fill::map_fill;
use crate::datapath::maps::{EndpointCounters, Maps};
use crate::datapath::{AttachMode, Pins, link_ids, pinned_links, program_info};
use crate::state::StateDir;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointVerdict {
    endpoint: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
    id: String,
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    program: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    pod_cidr: String,
    gateway: String,
    attach_mode: String,
}

fn family<S, M>(registry: &mut Registry, name: &str, help: &str) -> Family<S, M>
where
    Family<S, M>: prometheus_client::registry::Metric + Clone + Default,
{
    let f: Family<S, M> = Family::default();
    registry.register(name, help, f.clone());
    f
}

fn count(counter: &Counter, v: u64) {
    counter.inc_by(v);
}

fn gauge(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The node's metrics, in the Prometheus text format.
pub fn render(state_dir: &StateDir) -> Result<String, ObserveError> {
    let state = state_dir.read()?;
    let node = state.node.clone().ok_or(ObserveError::NotUp)?;
    let pins = Pins::new(&node.bpffs_dir);
    if !pins.is_loaded() {
        return Err(ObserveError::NotUp);
    }
    let maps = Maps::open(&pins)?;
    let mut registry = Registry::with_prefix("vethbpf");

    let packets: Family<EndpointVerdict, Counter> = family(
        &mut registry,
        "packets",
        "Packets the datapath saw from each endpoint, by verdict (a GSO packet counts as its segments)",
    );
    let bytes: Family<EndpointVerdict, Counter> = family(
        &mut registry,
        "bytes",
        "Bytes the datapath saw from each endpoint, by verdict",
    );
    let unattributed: Family<VerdictLabel, Counter> = family(
        &mut registry,
        "unattributed_packets",
        "Packets counted under no endpoint (an interface without an endpoint entry), by verdict",
    );
    let drops: Family<ReasonLabel, Counter> = family(
        &mut registry,
        "drops",
        "Packets dropped by the datapath, by reason, over all endpoints",
    );
    let add = |c: &EndpointCounters, endpoint: Option<&str>| {
        for v in Verdict::ALL {
            let n = c[v as usize];
            match endpoint {
                Some(name) => {
                    let labels = EndpointVerdict {
                        endpoint: name.to_string(),
                        verdict: v.name().to_string(),
                    };
                    count(&packets.get_or_create(&labels), n.packets);
                    count(&bytes.get_or_create(&labels), n.bytes);
                }
                None => count(
                    &unattributed.get_or_create(&VerdictLabel {
                        verdict: v.name().to_string(),
                    }),
                    n.packets,
                ),
            }
            if v.is_drop() {
                count(
                    &drops.get_or_create(&ReasonLabel {
                        reason: v.name().to_string(),
                    }),
                    n.packets,
                );
            }
        }
    };
    for rec in state.endpoints.values() {
        add(&maps.counters(rec.id)?, Some(&rec.name));
    }
    add(&maps.counters(0)?, None);

    let endpoints: Gauge = Gauge::default();
    registry.register("endpoints", "Endpoints on this node", endpoints.clone());
    gauge(&endpoints, state.endpoints.len() as u64);

    let entries: Family<MapLabel, Gauge> = family(
        &mut registry,
        "map_entries",
        "Entries in each pinned map (arrays are always full)",
    );
    let max_entries: Family<MapLabel, Gauge> = family(
        &mut registry,
        "map_max_entries",
        "Capacity of each pinned map (bytes for a ring buffer)",
    );
    for m in map_fill(&pins)? {
        let labels = MapLabel {
            map: m.name.to_string(),
            kind: m.kind.to_string(),
        };
        if let Some(n) = m.entries {
            gauge(&entries.get_or_create(&labels), n);
        }
        gauge(
            &max_entries.get_or_create(&labels),
            u64::from(m.max_entries),
        );
    }

    let listener = Listener::open(&pins)?;
    let lost: Counter = Counter::default();
    registry.register(
        "events_lost",
        "Monitor events the datapath could not put into the full ring buffer",
        lost.clone(),
    );
    count(&lost, listener.lost()?);
    let listening: Gauge = Gauge::default();
    registry.register(
        "monitor_listening",
        "Whether a vethbpf monitor holds the event stream (1) or not (0)",
        listening.clone(),
    );
    let entry = listener.get()?;
    let now = monotonic_ns();
    let live =
        entry.kinds != 0 && entry.deadline_ns > now && entry.deadline_ns - now <= MONITOR_LEASE_NS;
    gauge(&listening, u64::from(live));

    let program: Family<ProgramLabels, Gauge> = family(
        &mut registry,
        "program_info",
        "The pinned programs: id and tag of each (value 1)",
    );
    let info = program_info(&pins)?;
    program
        .get_or_create(&ProgramLabels {
            program: PROG_FROM_POD.to_string(),
            id: info.id().to_string(),
            tag: format!("{:016x}", info.tag()),
        })
        .set(1);
    if node.attach_mode == AttachMode::Tcx {
        // Counted from the kernel: pinned TCX links that run the pinned program
        // (netlink filters leave nothing to count by, so that mode has no series).
        let attached: Family<AttachLabels, Gauge> = family(
            &mut registry,
            "program_attachments",
            "Interfaces the program runs on: pinned TCX links whose program is the pinned one",
        );
        let n = pinned_links(&pins, PROG_FROM_POD)
            .iter()
            .filter(|ifname| {
                link_ids(&pins, PROG_FROM_POD, ifname).is_some_and(|(_, p)| p == info.id())
            })
            .count();
        gauge(
            &attached.get_or_create(&AttachLabels {
                program: PROG_FROM_POD.to_string(),
                mode: node.attach_mode.name().to_string(),
            }),
            n as u64,
        );
    }

    let node_info: Family<NodeLabels, Gauge> = family(
        &mut registry,
        "node_info",
        "This node's configuration (value 1)",
    );
    node_info
        .get_or_create(&NodeLabels {
            pod_cidr: node.pod_cidr.to_string(),
            gateway: node.gateway.to_string(),
            attach_mode: node.attach_mode.name().to_string(),
        })
        .set(1);

    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|_| ObserveError::Encode)?;
    Ok(text)
}

/// The HTTP `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
