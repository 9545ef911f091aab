//! Endpoints as `endpoint list` and `endpoint add` show them, with counters.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Serialize;
use vethbpf_common::{Counter, Verdict};

use super::{EndpointError, PinnedDatapath};
use crate::datapath::maps::EndpointCounters;
use crate::state::ident::MacAddr;
use crate::state::{EndpointRecord, Locked, NodeConfig};

/// An endpoint as `endpoint list` and `endpoint add` show it.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointView {
    pub name: String,
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub pod_mac: MacAddr,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CounterView>,
}

/// Packets and bytes of one counter.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Count {
    fn from(c: Counter) -> Self {
        Count {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Counters of one endpoint, by verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterView {
    pub forwarded: Count,
    pub arp_replies: Count,
    /// Pings to the gateway address answered.
    pub echo_replies: Count,
    /// Neighbour solicitations answered (IPv6's ARP replies).
    pub na_replies: Count,
    pub passed: Count,
    /// Egress: sent out of the uplink, masqueraded (or with the pod's own address).
    pub masqueraded: Count,
    pub egress: Count,
    /// Replies (and ICMP errors) of its flows translated back and delivered.
    pub rev_nat: Count,
    pub rev_nat_icmp: Count,
    /// Sent to pods on other nodes.
    pub to_nodes: Count,
    /// Delivered from pods (or nodes) elsewhere in the cluster.
    pub from_nodes: Count,
    /// Total of all drop reasons.
    pub dropped: Count,
    /// Drops by reason, keyed by the verdict's name.
    pub drops: std::collections::BTreeMap<&'static str, Count>,
}

impl CounterView {
    pub(crate) fn from_counters(c: &EndpointCounters) -> Self {
        let mut v = CounterView {
            forwarded: c[Verdict::Forward as usize].into(),
            arp_replies: c[Verdict::ArpReply as usize].into(),
            echo_replies: c[Verdict::EchoReply as usize].into(),
            na_replies: c[Verdict::NaReply as usize].into(),
            passed: c[Verdict::Pass as usize].into(),
            masqueraded: c[Verdict::Masquerade as usize].into(),
            egress: c[Verdict::Egress as usize].into(),
            rev_nat: c[Verdict::RevNat as usize].into(),
            rev_nat_icmp: c[Verdict::RevNatIcmp as usize].into(),
            to_nodes: c[Verdict::ToNode as usize].into(),
            from_nodes: c[Verdict::FromNode as usize].into(),
            ..Default::default()
        };
        for verdict in Verdict::ALL.into_iter().filter(|v| v.is_drop()) {
            let n = c[verdict as usize];
            v.dropped.packets += n.packets;
            v.dropped.bytes += n.bytes;
            v.drops.insert(verdict.name(), n.into());
        }
        v
    }
}

impl EndpointView {
    /// The view of a record, with its counters if read.
    pub fn new(rec: &EndpointRecord, counters: Option<&EndpointCounters>) -> Self {
        EndpointView {
            name: rec.name.clone(),
            id: rec.id,
            ip: rec.ip,
            ip6: rec.ip6,
            pod_mac: rec.pod_mac,
            host_veth: rec.host_veth.clone(),
            host_ifindex: rec.host_ifindex,
            netns: rec.netns.clone(),
            ifname: rec.ifname.clone(),
            counters: counters.map(CounterView::from_counters),
        }
    }
}

/// Every endpoint of the node with its counters (read in one go).
pub fn list(node: &NodeConfig, locked: &Locked) -> Result<Vec<EndpointView>, EndpointError> {
    let dp = PinnedDatapath::open(node)?;
    let endpoints = &locked.state.endpoints;
    let max_id = endpoints.values().map(|r| r.id).max().unwrap_or(0);
    let counters = dp.counters_upto(max_id)?;
    Ok(endpoints
        .values()
        .map(|rec| EndpointView::new(rec, counters.get(rec.id as usize)))
        .collect())
}
