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

/// Name of the tc ingress program attached to every host-side veth.
pub const PROG_FROM_POD: &str = "from_pod";

/// Map names as they appear in the eBPF object. The `#[map]` statics in
/// `vethbpf-ebpf` carry these names (an attribute cannot take a constant); a
/// userspace test checks that the embedded object defines exactly these maps.
pub const MAP_ROUTES: &str = "ROUTES";
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_STATS: &str = "STATS";
pub const ALL_MAPS: [&str; 4] = [MAP_ROUTES, MAP_ENDPOINTS, MAP_CONFIG, MAP_STATS];

/// Capacity of the LPM routes map.
pub const MAX_ROUTES: u32 = 16384;
/// Endpoint ids run from 1 to `MAX_ENDPOINTS - 1`; id 0 counts traffic seen on an
/// interface that has no endpoint entry.
pub const MAX_ENDPOINTS: u32 = 4096;

/// `Route::kind`: the prefix is an endpoint on this node, reached with
/// `bpf_redirect_peer` through its host-side veth.
pub const ROUTE_KIND_LOCAL: u32 = 1;

/// Value of the LPM `ROUTES` map (key: `Key<u32>`, the IPv4 destination prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// One of the `ROUTE_KIND_*` constants.
    pub kind: u32,
    /// Host-side veth ifindex of the destination endpoint.
    pub ifindex: u32,
    /// Endpoint id of the destination (for counters and diagnostics).
    pub endpoint_id: u32,
    /// MAC address of the pod-side interface: the rewritten destination MAC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the `ENDPOINTS` hash map (key: host-side veth ifindex, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The pod's IPv4 address (network order in memory): the only source it may use.
    pub ip: u32,
    /// Endpoint id: index of the endpoint's counters in `STATS`.
    pub id: u32,
    /// MAC address of the pod-side interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
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
    /// IPv4 to a local endpoint: MACs rewritten, TTL-1, `bpf_redirect_peer`.
    Forward = 0,
    /// ARP request answered with the gateway MAC.
    ArpReply = 1,
    /// Handed to the node stack (`TC_ACT_OK`): unknown destination, ARP replies,
    /// ARP for the pod's own address, ARP probes (duplicate address detection, from
    /// 0.0.0.0), IPv4 with options, untagged non-IPv4 traffic.
    Pass = 2,
    /// IPv4 whose source is not the pod's address.
    DropSpoof = 3,
    /// ARP whose sender address is not the pod's address (a probe's 0.0.0.0 aside).
    DropArpSpoof = 4,
    /// IPv4 to a local endpoint with TTL <= 1.
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
}

impl Verdict {
    /// Number of verdicts: the stride of the `STATS` array.
    pub const COUNT: u32 = 11;
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
        )
    }
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are repr(C), made only of integers and byte arrays, with
    // explicit padding fields: every bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
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
