//! Types and names shared by the vethbpf eBPF programs and the userspace loader.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields, so that the
//! byte layout is the same on both sides and no uninitialised padding reaches the
//! kernel. Enums and `Option` never appear inside map values: kinds and verdicts are
//! plain `u32` constants.
//!
//! IPv4 addresses are stored as `u32` holding the address bytes *in network order in
//! memory* (what a load from the packet gives). Userspace converts with
//! [`ipv4_to_map`] / [`ipv4_from_map`].
#![no_std]

mod egress;
pub use egress::*;

/// Name of the tc ingress program attached to every host-side veth.
pub const PROG_FROM_POD: &str = "from_pod";
/// tc ingress of vethbpf's collect-metadata VXLAN device: decapsulated packets.
pub const PROG_FROM_TUNNEL: &str = "from_tunnel";

/// Map names as they appear in the eBPF object. The `#[map]` statics in
/// `vethbpf-ebpf` carry these names (an attribute cannot take a constant); a
/// userspace test checks that the embedded object defines exactly these maps.
pub const MAP_ROUTES: &str = "ROUTES";
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_STATS: &str = "STATS";
pub const MAP_ROUTES6: &str = "ROUTES6";
pub const MAP_ENDPOINTS6: &str = "ENDPOINTS6";
pub const MAP_CLUSTER: &str = "CLUSTER";
pub const MAP_NODES: &str = "NODES";
pub const MAP_NODE_STATS: &str = "NODE_STATS";
pub const MAP_NODE_NEIGH: &str = "NODE_NEIGH";
pub const MAP_UPLINK_MTU: &str = "UPLINK_MTU";
pub const MAP_ENDPOINT_SLOTS: &str = "ENDPOINT_SLOTS";
pub const MAP_ENDPOINT_ADDRS: &str = "ENDPOINT_ADDRS";
pub const ALL_MAPS: [&str; 26] = [
    MAP_ROUTES,
    MAP_ENDPOINTS,
    MAP_CONFIG,
    MAP_STATS,
    MAP_EGRESS,
    MAP_EGRESS_SKIP,
    MAP_NAT,
    MAP_NAT_STATE,
    MAP_FRAGS,
    MAP_ROUTES6,
    MAP_ENDPOINTS6,
    MAP_CLUSTER,
    MAP_NODES,
    MAP_NODE_STATS,
    MAP_EVENTS,
    MAP_MONITOR,
    MAP_EVENTS_LOST,
    MAP_TRACE_FLOWS,
    MAP_NODE_NEIGH,
    MAP_EGRESS6,
    MAP_EGRESS_SKIP6,
    MAP_NAT6,
    MAP_NAT_SCRATCH,
    MAP_UPLINK_MTU,
    MAP_ENDPOINT_SLOTS,
    MAP_ENDPOINT_ADDRS,
];

/// Capacity of the LPM routes map.
pub const MAX_ROUTES: u32 = 16384;
/// Endpoint ids run from 1 to `MAX_ENDPOINTS - 1`; id 0 counts traffic seen on an
/// interface that has no endpoint entry.
pub const MAX_ENDPOINTS: u32 = 4096;

/// Remote node ids run from 1 to `MAX_NODES - 1` (index of `NODES` and
/// `NODE_STATS`); 0 is never given out, so an all-zero entry is no node.
pub const MAX_NODES: u32 = 1024;

/// `Route::kind`: the prefix is an endpoint on this node, reached with
/// `bpf_redirect_peer` through its host-side veth.
pub const ROUTE_KIND_LOCAL: u32 = 1;
/// `Route::kind`: the prefix is a remote node's pod CIDR; `Route::endpoint_id` holds
/// the node id (`NODES` has its underlay address). Sent there directly or tunnelled.
/// In `ROUTES6` too, for the node's IPv6 pod CIDR (carried over the same IPv4
/// underlay).
pub const ROUTE_KIND_REMOTE: u32 = 2;
/// `Route::kind`: the /32 of a remote node's own (underlay) address;
/// `Route::endpoint_id` holds the node id. Never forwarded to by `from_pod`; used to
/// tell known nodes from strangers on the receive side.
pub const ROUTE_KIND_NODE: u32 = 3;

/// Value of the LPM `ROUTES` map (key: `Key<u32>`, the IPv4 destination prefix) and of
/// `ROUTES6` (key: `Key<[u8; 16]>`, the IPv6 destination prefix, bytes in network
/// order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// One of the `ROUTE_KIND_*` constants.
    pub kind: u32,
    /// Host-side veth ifindex of the destination endpoint.
    pub ifindex: u32,
    /// Endpoint id of the destination (for counters and diagnostics); the node id for
    /// `ROUTE_KIND_REMOTE` and `ROUTE_KIND_NODE`.
    pub endpoint_id: u32,
    /// MAC address of the pod-side interface: the rewritten destination MAC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the `ENDPOINTS` hash map (key: host-side veth ifindex, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The pod's IPv4 address (network order in memory): the only source it may use.
    /// 0 for an endpoint without IPv4 (IPv6 only): every IPv4 and ARP frame it sends
    /// is then a spoof.
    pub ip: u32,
    /// Endpoint id: index of the endpoint's counters in `STATS`.
    pub id: u32,
    /// MAC address of the pod-side interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the `ENDPOINT_SLOTS` array (index: endpoint id): an endpoint's
/// `ENDPOINTS` entry again, with the host-side veth it belongs to. `from_pod` finds
/// it by the id its cls_bpf filter carries as classid: one array read instead of a
/// hash lookup. Trusted only where `ifindex` is the veth the frame came in on; an
/// empty slot (ifindex 0) or another veth's sends the program to `ENDPOINTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlot {
    pub ifindex: u32,
    pub info: EndpointInfo,
}

/// Value of the one-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The pods' gateway IPv4 address (network order in memory), e.g. 169.254.1.1.
    pub gateway_ip: u32,
    /// Reserved for feature flags; 0 today.
    pub flags: u32,
    /// MAC address every host-side veth carries and ARP replies announce.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// `ClusterConfig::mode`: the node has no remote nodes configured.
pub const CLUSTER_MODE_OFF: u32 = 0;
/// Remote pod CIDRs are reached by routing to the node's address on the uplink's
/// network (Flannel's host-gw).
pub const CLUSTER_MODE_DIRECT: u32 = 1;
/// Remote pod CIDRs are reached through the collect-metadata VXLAN device.
pub const CLUSTER_MODE_VXLAN: u32 = 2;
/// The UDP port of vethbpf's VXLAN device (Flannel's and the Linux default's, not
/// IANA's 4789): `from_uplink` decapsulates what arrives on it.
pub const VXLAN_PORT: u16 = 8472;

/// Value of the one-entry `CLUSTER` array: how this node reaches the others.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// One of the `CLUSTER_MODE_*` constants.
    pub mode: u32,
    /// The uplink's ifindex (direct routing goes out of it).
    pub uplink_ifindex: u32,
    /// The VXLAN device's ifindex (`CLUSTER_MODE_VXLAN`).
    pub tunnel_ifindex: u32,
    /// The VXLAN network identifier every node of the cluster uses.
    pub vni: u32,
    /// This node's underlay address (network order in memory).
    pub node_ip: u32,
    pub _pad: u32,
}

/// Value of the `NODES` array (index: node id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's underlay address (network order in memory); 0 = no node.
    pub ip: u32,
    pub _pad: u32,
}

/// Value of the `NODE_NEIGH` array (index: node id): the Ethernet addresses of a
/// direct-routed IPv6 packet to that node. IPv6 pod traffic crosses the IPv4
/// underlay with the node's IPv4 address as next hop, which `bpf_redirect_neigh`
/// cannot take for an IPv6 packet (the kernel's `bpf_out_neigh_v6` reads only an
/// IPv6 next hop), so the datapath writes both MACs itself and `bpf_redirect`s;
/// userspace learns them from the uplink's neighbour table. All zero: not known
/// (yet), such packets are dropped as `drop_node_unreachable`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeNeigh {
    /// The remote node's MAC on the uplink's network.
    pub mac: [u8; 6],
    /// This node's uplink MAC: the source of those frames.
    pub uplink_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// Traffic exchanged with one remote node (per CPU in `NODE_STATS`, index: node id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounter {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC as of the last tick) of the last
    /// packet sent to the node on this CPU; 0 = none yet.
    pub tx_last_ns: u64,
    /// Likewise, of the last packet delivered from the node.
    pub rx_last_ns: u64,
}

/// Value of the per-CPU `UPLINK_MTU` array: the uplink's MTU as the datapath last
/// asked the kernel for it (see the eBPF crate's `fib`). Opaque to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkMtu {
    /// The uplink it is of; 0: never asked.
    pub ifindex: u32,
    pub mtu: u32,
    /// `bpf_ktime_get_coarse_ns` when it was asked.
    pub asked_ns: u64,
}

/// One counter of the per-CPU `STATS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// What `from_pod` did with a frame. Each verdict has a counter per endpoint.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// IPv4 or IPv6 to a local endpoint: MACs rewritten, TTL / hop limit - 1,
    /// `bpf_redirect_peer`.
    Forward = 0,
    /// ARP request answered with the gateway MAC.
    ArpReply = 1,
    /// Handed to the node stack (`TC_ACT_OK`): unknown destination, ARP replies,
    /// ARP for the pod's own address, ARP probes (duplicate address detection, from
    /// 0.0.0.0), IPv4 with options, IPv6 to an address of no local endpoint, NDP the
    /// node may see (RS, NS for the pod's own addresses or from `::`, NA for them,
    /// MLD), untagged non-IP traffic.
    Pass = 2,
    /// IPv4 or IPv6 whose source is not the pod's address (for IPv6 NDP and MLD its
    /// link-local address and `::` too).
    DropSpoof = 3,
    /// ARP whose sender address is not the pod's address (a probe's 0.0.0.0 aside).
    DropArpSpoof = 4,
    /// IPv4 or IPv6 to a local endpoint with TTL / hop limit <= 1.
    DropTtl = 5,
    /// Truncated or malformed frame (short headers, IHL < 5, non-Ethernet/IPv4 ARP).
    DropMalformed = 6,
    /// Frame on an interface with no endpoint entry (or no node config).
    DropNoEndpoint = 7,
    /// VLAN-tagged frame (802.1Q or 802.1ad, tag stripped into the skb or still in the
    /// frame, QinQ included): a pod must never put a tagged frame onto another pod.
    DropVlan = 8,
    /// IPv4 header (without options) whose checksum does not verify.
    DropCsum = 9,
    /// ICMP echo request to the gateway address answered with an echo reply.
    EchoReply = 10,
    /// IPv4 to the outside: source translated to the node address, sent out of the
    /// uplink (`from_pod`).
    Masquerade = 11,
    /// IPv4 to the outside with `--no-masquerade`: tracked, sent out of the uplink
    /// with the pod's own source (`from_pod`).
    Egress = 12,
    /// A reply of a pod's flow: translated back and delivered into the pod
    /// (`from_uplink`).
    RevNat = 13,
    /// An ICMP error about a pod's flow: translated inside and out (RFC 5508) and
    /// delivered into the pod (`from_uplink`).
    RevNatIcmp = 14,
    /// A new flow while the NAT table is at its flow limit.
    NatTableFull = 15,
    /// A new flow for which no free NAT port was found within the retries.
    DropNatNoPort = 16,
    /// A non-first fragment of a datagram whose first fragment was not seen.
    DropFragUnknown = 17,
    /// Egress larger than the uplink's MTU.
    DropTooBig = 18,
    /// `from_uplink`: traffic of the node itself, handed to its stack.
    UplinkPass = 19,
    /// `from_uplink`: a packet for a pod address that is no reply to a pod's flow.
    DropUnsolicited = 20,
    /// A packet rewrite helper failed (the packet was left half-translated).
    DropNatError = 21,
    /// IPv6 neighbour solicitation answered with the gateway MAC (the twin of
    /// `ArpReply`).
    NaReply = 22,
    /// Neighbour advertisement for an address that is not the pod's (the twin of
    /// `DropArpSpoof`).
    DropNaSpoof = 23,
    /// Router advertisement or redirect: only routers send those, and a pod is none.
    DropNdpRouter = 24,
    /// Sent to a remote node (routed out of the uplink or tunnelled), counted under
    /// the sending endpoint.
    ToNode = 25,
    /// Delivered from a remote node, counted under the receiving endpoint.
    FromNode = 26,
    /// For a local endpoint but from a source that is neither a known node nor in a
    /// known node's pod CIDR (or tunnelled by a stranger, or routed around the
    /// tunnel): dropped, counted under that endpoint.
    DropUnknownSource = 27,
    /// For an address of this node's pods that no endpoint has: tunnelled from a
    /// known node (counted under 0), or sent by a pod to an address of the node's pod
    /// CIDR (a deleted pod's, or one never given out; counted under the sender).
    DropUnknownDestination = 28,
    /// For a remote node that cannot be reached now: no node entry, the cluster is
    /// not configured, no route to the node's address, or the tunnel refused it.
    DropNodeUnreachable = 29,
}

impl Verdict {
    /// Number of verdicts: the stride of the `STATS` array.
    pub const COUNT: u32 = 30;
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::Forward,
        Verdict::ArpReply,
        Verdict::Pass,
        Verdict::DropSpoof,
        Verdict::DropArpSpoof,
        Verdict::DropTtl,
        Verdict::DropMalformed,
        Verdict::DropNoEndpoint,
        Verdict::DropVlan,
        Verdict::DropCsum,
        Verdict::EchoReply,
        Verdict::Masquerade,
        Verdict::Egress,
        Verdict::RevNat,
        Verdict::RevNatIcmp,
        Verdict::NatTableFull,
        Verdict::DropNatNoPort,
        Verdict::DropFragUnknown,
        Verdict::DropTooBig,
        Verdict::UplinkPass,
        Verdict::DropUnsolicited,
        Verdict::DropNatError,
        Verdict::NaReply,
        Verdict::DropNaSpoof,
        Verdict::DropNdpRouter,
        Verdict::ToNode,
        Verdict::FromNode,
        Verdict::DropUnknownSource,
        Verdict::DropUnknownDestination,
        Verdict::DropNodeUnreachable,
    ];

    /// Stable name used in CLI output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Forward => "forward",
            Verdict::ArpReply => "arp_reply",
            Verdict::Pass => "pass",
            Verdict::DropSpoof => "drop_spoof",
            Verdict::DropArpSpoof => "drop_arp_spoof",
            Verdict::DropTtl => "drop_ttl",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropNoEndpoint => "drop_no_endpoint",
            Verdict::DropVlan => "drop_vlan",
            Verdict::DropCsum => "drop_csum",
            Verdict::EchoReply => "echo_reply",
            Verdict::Masquerade => "masquerade",
            Verdict::Egress => "egress",
            Verdict::RevNat => "rev_nat",
            Verdict::RevNatIcmp => "rev_nat_icmp",
            Verdict::NatTableFull => "nat_table_full",
            Verdict::DropNatNoPort => "drop_nat_no_port",
            Verdict::DropFragUnknown => "drop_frag_unknown",
            Verdict::DropTooBig => "drop_too_big",
            Verdict::UplinkPass => "uplink_pass",
            Verdict::DropUnsolicited => "drop_unsolicited",
            Verdict::DropNatError => "drop_nat_error",
            Verdict::NaReply => "na_reply",
            Verdict::DropNaSpoof => "drop_na_spoof",
            Verdict::DropNdpRouter => "drop_ndp_router",
            Verdict::ToNode => "to_node",
            Verdict::FromNode => "from_node",
            Verdict::DropUnknownSource => "drop_unknown_source",
            Verdict::DropUnknownDestination => "drop_unknown_destination",
            Verdict::DropNodeUnreachable => "drop_node_unreachable",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Verdict::DropSpoof
                | Verdict::DropArpSpoof
                | Verdict::DropTtl
                | Verdict::DropMalformed
                | Verdict::DropNoEndpoint
                | Verdict::DropVlan
                | Verdict::DropCsum
                | Verdict::NatTableFull
                | Verdict::DropNatNoPort
                | Verdict::DropFragUnknown
                | Verdict::DropTooBig
                | Verdict::DropUnsolicited
                | Verdict::DropNatError
                | Verdict::DropNaSpoof
                | Verdict::DropNdpRouter
                | Verdict::DropUnknownSource
                | Verdict::DropUnknownDestination
                | Verdict::DropNodeUnreachable
        )
    }
}

/// Size of the `ENDPOINT_ADDRS` array: one entry for each value of an IPv4
/// address's last two bytes.
pub const ENDPOINT_ADDRS_ENTRIES: u32 = 1 << 16;

/// Index into `ENDPOINT_ADDRS` of the IPv4 address `ip` (map representation): its
/// last two bytes. Addresses of a pod CIDR up to a /16 never share one; in a larger
/// pod CIDR two may, and the one without the entry is found through `ROUTES`.
#[inline(always)]
pub const fn endpoint_addr_index(ip: u32) -> u32 {
    // Network order in memory, read little-endian: the last two bytes are the high
    // half of the word.
    ip >> 16
}

/// Index into `STATS` of the counter for `endpoint_id` and `verdict`.
#[inline(always)]
pub const fn stats_index(endpoint_id: u32, verdict: Verdict) -> u32 {
    endpoint_id * Verdict::COUNT + verdict as u32
}

/// Size of the `STATS` per-CPU array.
pub const STATS_ENTRIES: u32 = MAX_ENDPOINTS * Verdict::COUNT;

/// IPv4 address octets to the map representation (network order in memory).
#[inline(always)]
pub const fn ipv4_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Map representation back to octets.
#[inline(always)]
pub const fn ipv4_from_map(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// Value of the `ENDPOINTS6` hash map (key: host-side veth ifindex, `u32`): the IPv6
/// addresses of an endpoint that has IPv6. An endpoint without an entry has none: it
/// gets no neighbour advertisements and may send only link-local control traffic.
///
/// Addresses are the 16 bytes in network order. Aligned to 4 so that the datapath
/// reads them as four words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo6 {
    /// The pod's IPv6 address: the only source it may use beyond link-local NDP.
    pub ip: [u8; 16],
    /// The pod's link-local address (on its interface): a valid source for neighbour
    /// discovery and multicast listener reports only.
    pub link_local: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of them are repr(C), made only of integers and byte arrays, with
    // explicit padding fields: every bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::EndpointSlot {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: the egress types are repr(C) integers with explicit padding, too.
    unsafe impl aya::Pod for super::EgressConfig {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::NatState {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragEntry {}
    unsafe impl aya::Pod for super::EgressConfig6 {}
    unsafe impl aya::Pod for super::NatKey6 {}
    unsafe impl aya::Pod for super::NatEntry6 {}
    unsafe impl aya::Pod for super::NatScratch {}
    // SAFETY: repr(C), two byte arrays whose sizes fill the alignment: no padding.
    unsafe impl aya::Pod for super::EndpointInfo6 {}
    unsafe impl aya::Pod for super::ClusterConfig {}
    unsafe impl aya::Pod for super::NodeInfo {}
    unsafe impl aya::Pod for super::NodeCounter {}
    unsafe impl aya::Pod for super::NodeNeigh {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Route>(), 4 + 4 + 4 + 6 + 2);
        assert_eq!(size_of::<EndpointInfo>(), 4 + 4 + 6 + 2);
        assert_eq!(size_of::<Config>(), 4 + 4 + 6 + 2);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<EndpointInfo6>(), 32);
        assert_eq!(size_of::<ClusterConfig>(), 6 * 4);
        assert_eq!(size_of::<NodeInfo>(), 8);
        assert_eq!(size_of::<NodeCounter>(), 6 * 8);
        assert_eq!(size_of::<NodeNeigh>(), 16);
    }

    #[test]
    fn verdict_table_is_dense() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        assert_eq!(stats_index(2, Verdict::DropTtl), 2 * Verdict::COUNT + 5);
    }

    #[test]
    fn ipv4_round_trip_keeps_network_order_in_memory() {
        let v = ipv4_to_map([10, 244, 0, 2]);
        assert_eq!(v.to_ne_bytes(), [10, 244, 0, 2]);
        assert_eq!(ipv4_from_map(v), [10, 244, 0, 2]);
    }
}

mod observe;
pub use observe::*;
