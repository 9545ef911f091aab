//! `vethbpf metrics`: the node's counters, map fill and programs in the Prometheus
//! text format (0.0.4, what node_exporter's textfile collector and Prometheus read),
//! encoded by prometheus-client.
//!
//! Everything is read when asked for (a scrape): counters from the pinned maps, names
//! from the state file (read without the lock, so a scrape never waits for or
//! blocks a command). The values are the kernel's, not this process's, so they are
//! handed to prometheus-client as a [`Collector`] of constant metrics, series in a
//! fixed order (endpoints by name, verdicts by number, maps as the object defines
//! them): two scrapes of an idle node print the same text.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use vethbpf_common::{PROG_FROM_POD, Verdict};

use super::ObserveError;
use super::monitor;
use crate::datapath::events::Listener;
use crate::datapath::fill::map_fill;
use crate::datapath::maps::{EndpointCounters, Maps};
use crate::datapath::pods::{self, AttachState};
use crate::datapath::{Pins, program_info};
use crate::kernel::netlink::RtNetlink;
use crate::state::StateDir;

type Labels = Vec<(&'static str, String)>;

/// One metric: its name (without the `vethbpf_` prefix and a counter's `_total`),
/// help, type, and its series.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Labels, u64)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            counter: true,
            series: Vec::new(),
        }
    }
    fn gauge(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            counter: false,
            series: Vec::new(),
        }
    }
    fn add(&mut self, labels: Labels, value: u64) {
        self.series.push((labels, value));
    }
}

/// What one scrape read.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for f in &self.0 {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.series {
                let series = metric.encode_family(labels)?;
                if f.counter {
                    ConstCounter::new(*value).encode(series)?;
                } else {
                    ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(series)?;
                }
            }
        }
        Ok(())
    }
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The node's metrics, in the Prometheus text format.
pub fn render(state_dir: &StateDir) -> Result<String, ObserveError> {
    let mut registry = Registry::with_prefix("vethbpf");
    registry.register_collector(Box::new(scrape(state_dir)?));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|_| ObserveError::Encode)?;
    Ok(text)
}

fn scrape(state_dir: &StateDir) -> Result<Scrape, ObserveError> {
    let state = state_dir.read()?;
    let node = state.node.clone().ok_or(ObserveError::NotUp)?;
    let pins = Pins::new(&node.bpffs_dir);
    if !pins.is_loaded() {
        return Err(ObserveError::NotUp);
    }
    let maps = Maps::open(&pins)?;

    let mut packets = Family::counter(
        "packets",
        "Packets the datapath saw from each endpoint, by verdict (a GSO packet counts as its segments)",
    );
    let mut bytes = Family::counter(
        "bytes",
        "Bytes the datapath saw from each endpoint, by verdict",
    );
    let mut unattributed = Family::counter(
        "unattributed_packets",
        "Packets counted under no endpoint (an interface without an endpoint entry), by verdict",
    );
    let mut drop_totals = [0u64; Verdict::COUNT as usize];
    let mut add = |c: &EndpointCounters, endpoint: Option<&str>| {
        for v in Verdict::ALL {
            let n = c[v as usize];
            match endpoint {
                Some(name) => {
                    let l = labels([("endpoint", name), ("verdict", v.name())]);
                    packets.add(l.clone(), n.packets);
                    bytes.add(l, n.bytes);
                }
                None => unattributed.add(labels([("verdict", v.name())]), n.packets),
            }
            drop_totals[v as usize] += n.packets;
        }
    };
    for rec in state.endpoints.values() {
        add(&maps.counters(rec.id)?, Some(&rec.name));
    }
    add(&maps.counters(0)?, None);
    let mut drops = Family::counter(
        "drops",
        "Packets dropped by the datapath, by reason, over all endpoints",
    );
    for v in Verdict::ALL.into_iter().filter(|v| v.is_drop()) {
        drops.add(labels([("reason", v.name())]), drop_totals[v as usize]);
    }

    let mut endpoints = Family::gauge("endpoints", "Endpoints on this node");
    endpoints.add(vec![], state.endpoints.len() as u64);

    let mut entries = Family::gauge(
        "map_entries",
        "Entries in each pinned map (arrays are always full)",
    );
    let mut max_entries = Family::gauge(
        "map_max_entries",
        "Capacity of each pinned map (bytes for a ring buffer)",
    );
    for m in map_fill(&pins)? {
        let l = labels([("map", m.name), ("kind", m.kind)]);
        if let Some(n) = m.entries {
            entries.add(l.clone(), n);
        }
        max_entries.add(l, u64::from(m.max_entries));
    }

    let listener = Listener::open(&pins)?;
    let mut lost = Family::counter(
        "events_lost",
        "Monitor events the datapath could not put into the full ring buffer",
    );
    lost.add(vec![], listener.lost()?);
    let mut listening = Family::gauge(
        "monitor_listening",
        "Whether a vethbpf monitor holds the event stream (1) or not (0)",
    );
    listening.add(vec![], u64::from(monitor::listening(&listener.get()?)));

    let info = program_info(&pins)?;
    let mut program = Family::gauge(
        "program_info",
        "The pinned programs: id and tag of each (value 1)",
    );
    program.add(
        labels([
            ("program", PROG_FROM_POD),
            ("id", &info.id().to_string()),
            ("tag", &format!("{:016x}", info.tag())),
        ]),
        1,
    );
    let mut attached = Family::gauge(
        "program_attachments",
        "Pods' host veths whose attachment (TCX link or cls_bpf filter, by mode) runs the pinned program",
    );
    // Read from the kernel: a missing filter or a link left on an old program is
    // not counted (alert on it below vethbpf_endpoints).
    let hosts: Vec<(&str, u32)> = state
        .endpoints
        .values()
        .map(|e| (e.host_veth.as_str(), e.host_ifindex))
        .collect();
    let running = if hosts.is_empty() {
        0
    } else {
        let mut nl = RtNetlink::connect()?;
        pods::read(&pins, node.pod_attach, &mut nl, info.id(), &hosts)?
            .iter()
            .filter(|a| a.state == AttachState::Ok)
            .count()
    };
    attached.add(
        labels([("program", PROG_FROM_POD), ("mode", node.pod_attach.name())]),
        running as u64,
    );

    let mut node_info = Family::gauge("node_info", "This node's configuration (value 1)");
    node_info.add(
        labels([
            (
                "pod_cidr",
                &node.pod_cidr.map(|c| c.to_string()).unwrap_or_default(),
            ),
            (
                "pod_cidr6",
                &node.pod_cidr6.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("gateway", &node.gateway.to_string()),
            ("attach_mode", node.attach_mode.name()),
            ("pod_attach", node.pod_attach.name()),
        ]),
        1,
    );

    Ok(Scrape(vec![
        packets,
        bytes,
        unattributed,
        drops,
        endpoints,
        entries,
        max_entries,
        lost,
        listening,
        program,
        attached,
        node_info,
    ]))
}

/// The HTTP `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
