//! Types and constants of pod egress: the uplink configuration, connection tracking
//! and NAT entries, fragment tracking (shared by `from_pod`, `from_uplink` and
//! userspace's `nat list/flush`).
//!
//! One NAT map holds both halves of every flow (Cilium's SNAT map model): the
//! *forward* entry, keyed by the pod's tuple, says what to translate the source to;
//! the *reverse* entry, keyed by the reply's tuple, says which pod and port the reply
//! belongs to. Both carry the connection-tracking state and a last-seen time, so the
//! datapath itself decides when a flow has expired (no daemon runs).

/// Name of the tc ingress program attached to the node's uplink.
pub const PROG_FROM_UPLINK: &str = "from_uplink";

pub const MAP_EGRESS: &str = "EGRESS";
pub const MAP_EGRESS_SKIP: &str = "EGRESS_SKIP";
pub const MAP_NAT: &str = "NAT";
pub const MAP_NAT_STATE: &str = "NAT_STATE";
pub const MAP_FRAGS: &str = "FRAGS";
pub const MAP_EGRESS6: &str = "EGRESS6";
pub const MAP_EGRESS_SKIP6: &str = "EGRESS_SKIP6";
pub const MAP_NAT6: &str = "NAT6";
pub const MAP_NAT_SCRATCH: &str = "NAT_SCRATCH";

/// Value of the per-CPU `NAT_SCRATCH` array: where the datapath searches a port for
/// a new flow (an IPv6 search does not fit its stack). Opaque to userspace.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatScratch(pub [u64; 16]);

/// `EgressConfig::flags`: egress is configured (an uplink and its address are known).
pub const EGRESS_F_ENABLED: u32 = 1;
/// `EgressConfig::flags`: translate pod sources to `nat_addr` (else they keep their own
/// address and are only tracked, for networks that route the pod CIDR).
pub const EGRESS_F_MASQUERADE: u32 = 2;

/// `EGRESS_SKIP` values: why a destination is not egress.
pub const SKIP_NODE_ADDRESS: u32 = 1;
pub const SKIP_CLUSTER: u32 = 2;
/// Capacity of the `EGRESS_SKIP` LPM trie.
pub const MAX_EGRESS_SKIP: u32 = 1024;

/// Default flow limit; the NAT map holds two entries per flow plus slack.
pub const NAT_MAX_FLOWS_DEFAULT: u32 = 65536;
/// Entries beyond two per flow, so that the kernel's LRU, which can recycle entries
/// before the map is full (per-CPU free lists), has room before it evicts live ones.
pub const NAT_MAP_SLACK: u32 = 4096;
/// Capacity of the fragment map.
pub const FRAG_ENTRIES: u32 = 8192;

/// Size of the NAT map for a flow limit.
pub const fn nat_map_capacity(max_flows: u32) -> u32 {
    max_flows.saturating_mul(2).saturating_add(NAT_MAP_SLACK)
}

/// Value of the one-entry `EGRESS` array, written by `up`.
///
/// Addresses and masks are in the map representation (network order in memory);
/// ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EgressConfig {
    /// `EGRESS_F_*`.
    pub flags: u32,
    /// The uplink's primary IPv4 address: the masquerade source.
    pub nat_addr: u32,
    /// Where egress leaves the node.
    pub uplink_ifindex: u32,
    /// New flows beyond this many are dropped (`nat_table_full`).
    pub max_flows: u32,
    /// NAT ports (and ICMP identifiers): `port_min..=port_max`.
    pub port_min: u16,
    pub port_max: u16,
    /// The pod CIDR (replies to pod addresses in no-masquerade mode; unsolicited
    /// packets for pods are dropped on the uplink).
    pub pod_net: u32,
    pub pod_mask: u32,
    /// The cluster CIDR: its sources reach pods by other means (not the NAT).
    pub cluster_net: u32,
    pub cluster_mask: u32,
    /// Random per node: keys the hash that picks NAT ports when the pod's own port
    /// is not free, so outsiders cannot predict them.
    pub hash_seed: u32,
}

/// Value of the one-entry `EGRESS6` array, written by `up`: IPv6 egress, set apart
/// from IPv4's (`EgressConfig`) so that either family can be on alone. The shared
/// settings (uplink, ports, flow limit, seed) are the same values in both.
///
/// Addresses and masks are the bytes in network order read as four words (the map
/// representation, see [`ipv6_to_map`]); ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EgressConfig6 {
    /// `EGRESS_F_*`.
    pub flags: u32,
    pub uplink_ifindex: u32,
    pub max_flows: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub hash_seed: u32,
    pub _pad: u32,
    /// The uplink's primary global IPv6 address: the masquerade source.
    pub nat_addr: [u32; 4],
    pub pod_net: [u32; 4],
    pub pod_mask: [u32; 4],
    pub cluster_net: [u32; 4],
    pub cluster_mask: [u32; 4],
}

/// An IPv6 address as the datapath holds it: the 16 bytes in network order, read as
/// four words in memory order.
pub fn ipv6_to_map(octets: [u8; 16]) -> [u32; 4] {
    let w = |i: usize| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    };
    [w(0), w(1), w(2), w(3)]
}

/// The inverse of [`ipv6_to_map`].
pub fn ipv6_from_map(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// `NatKey::dir`: the pod's own tuple (forward entry).
pub const NAT_DIR_OUT: u8 = 1;
/// `NatKey::dir`: the reply's tuple (reverse entry).
pub const NAT_DIR_IN: u8 = 2;

/// Key of the `NAT` map: one direction of a flow as the packets carry it.
///
/// Forward: pod address and port (ICMP: echo identifier, `dport` 0) to the remote.
/// Reverse: remote address and port (ICMP: 0) to the NAT address and port.
/// Addresses and ports in network order, as loaded from the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Key of the `NAT6` map: [`NatKey`] for IPv6 (addresses as in [`ipv6_to_map`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Value of the `NAT6` map: [`NatEntry`] with the address moved behind it. The
/// first 32 bytes are laid out as a `NatEntry` whose `addr` is the last word of the
/// IPv6 address, so connection tracking reads and updates both kinds of entry as
/// one (port, flags and their 64-bit head store, times, interface).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry6 {
    /// The last word of `addr` (written with port and flags in one store).
    pub addr_tail: u32,
    pub port: u16,
    pub flags: u16,
    pub last_seen: u64,
    pub created: u64,
    pub ifindex: u32,
    pub _pad: u32,
    /// Forward: the NAT address. Reverse: the pod's address.
    pub addr: [u32; 4],
}

impl NatEntry6 {
    /// Whether the flow has been idle longer than its state allows at `now`.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, now: u64) -> bool {
        now.saturating_sub(self.last_seen) > CtState::of(proto, self.flags).timeout_ns(proto)
    }
}

/// `NatEntry::flags`: a packet in the reply direction was seen.
pub const CT_REPLIED: u16 = 1;
/// TCP FIN sent by the pod.
pub const CT_FIN_OUT: u16 = 2;
/// TCP FIN sent by the remote.
pub const CT_FIN_IN: u16 = 4;
/// TCP RST seen (either way).
pub const CT_RST: u16 = 8;

/// Value of the `NAT` map.
///
/// `addr`, `port` and `flags` form the first 8 bytes, which the datapath writes as one
/// 64-bit store when it (re)assigns an entry, so a concurrent reader never sees one
/// flow's address with another's port.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    /// Forward: the NAT address. Reverse: the pod's address.
    pub addr: u32,
    /// Forward: the NAT port. Reverse: the pod's port. Network order.
    pub port: u16,
    /// `CT_*`, kept the same in both entries of a flow.
    pub flags: u16,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC as of the last tick) when a packet
    /// of the flow last refreshed the entry; refreshed at most once a second per
    /// direction.
    pub last_seen: u64,
    /// When the flow was created.
    pub created: u64,
    /// Host-side veth of the pod that opened the flow.
    pub ifindex: u32,
    pub _pad: u32,
}

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const SEC: u64 = 1_000_000_000;
/// Timeouts, as the kernel's conntrack defaults (nf_conntrack_tcp_timeout_*,
/// nf_conntrack_udp_timeout[_stream], nf_conntrack_icmp_timeout).
pub const TCP_TIMEOUT_SYN_SENT: u64 = 120 * SEC;
pub const TCP_TIMEOUT_ESTABLISHED: u64 = 432_000 * SEC;
pub const TCP_TIMEOUT_FIN_WAIT: u64 = 120 * SEC;
pub const TCP_TIMEOUT_CLOSE_WAIT: u64 = 60 * SEC;
pub const TCP_TIMEOUT_TIME_WAIT: u64 = 120 * SEC;
pub const TCP_TIMEOUT_CLOSE: u64 = 10 * SEC;
pub const UDP_TIMEOUT: u64 = 30 * SEC;
pub const UDP_TIMEOUT_STREAM: u64 = 120 * SEC;
pub const ICMP_TIMEOUT: u64 = 30 * SEC;

/// The connection-tracking state a flow's flags stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// TCP: no reply yet.
    SynSent,
    Established,
    /// TCP: the pod sent FIN.
    FinWait,
    /// TCP: the remote sent FIN.
    CloseWait,
    /// TCP: both sent FIN.
    TimeWait,
    /// TCP: reset.
    Close,
    /// UDP / ICMP: no reply yet.
    Unreplied,
    /// UDP / ICMP: replies seen.
    Replied,
}

impl CtState {
    pub const fn of(proto: u8, flags: u16) -> CtState {
        if proto != IPPROTO_TCP {
            return if flags & CT_REPLIED != 0 {
                CtState::Replied
            } else {
                CtState::Unreplied
            };
        }
        if flags & CT_RST != 0 {
            CtState::Close
        } else if flags & (CT_FIN_OUT | CT_FIN_IN) == CT_FIN_OUT | CT_FIN_IN {
            CtState::TimeWait
        } else if flags & CT_FIN_OUT != 0 {
            CtState::FinWait
        } else if flags & CT_FIN_IN != 0 {
            CtState::CloseWait
        } else if flags & CT_REPLIED != 0 {
            CtState::Established
        } else {
            CtState::SynSent
        }
    }

    /// How long a flow in this state lives without packets.
    pub const fn timeout_ns(self, proto: u8) -> u64 {
        match self {
            CtState::SynSent => TCP_TIMEOUT_SYN_SENT,
            CtState::Established => TCP_TIMEOUT_ESTABLISHED,
            CtState::FinWait => TCP_TIMEOUT_FIN_WAIT,
            CtState::CloseWait => TCP_TIMEOUT_CLOSE_WAIT,
            CtState::TimeWait => TCP_TIMEOUT_TIME_WAIT,
            CtState::Close => TCP_TIMEOUT_CLOSE,
            CtState::Unreplied | CtState::Replied
                if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 =>
            {
                ICMP_TIMEOUT
            }
            CtState::Unreplied => UDP_TIMEOUT,
            CtState::Replied => UDP_TIMEOUT_STREAM,
        }
    }

    /// A TCP flow that is over: its NAT port may go to a new connection (as the
    /// kernel's NAT reuses ports of TIME_WAIT/CLOSE conntracks for a new SYN).
    pub const fn is_closed(self) -> bool {
        matches!(self, CtState::TimeWait | CtState::Close)
    }

    /// Stable name for `nat list`.
    pub const fn name(self) -> &'static str {
        match self {
            CtState::SynSent => "syn_sent",
            CtState::Established => "established",
            CtState::FinWait => "fin_wait",
            CtState::CloseWait => "close_wait",
            CtState::TimeWait => "time_wait",
            CtState::Close => "close",
            CtState::Unreplied => "unreplied",
            CtState::Replied => "replied",
        }
    }
}

impl NatEntry {
    /// Whether the flow has been idle longer than its state allows at `now`.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, now: u64) -> bool {
        now.saturating_sub(self.last_seen) > CtState::of(proto, self.flags).timeout_ns(proto)
    }
}

/// Value of the one-entry `NAT_STATE` array, written by the datapath (and reset by
/// `nat flush`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatState {
    /// Flows counted against `max_flows`: incremented per new flow, recounted by each
    /// garbage collection.
    pub flows: u64,
    /// `bpf_ktime_get_coarse_ns` of the last garbage collection (at most one a second, run
    /// by the datapath when the table is at its limit).
    pub gc_last: u64,
    pub gc_runs: u64,
    /// Entries the collections deleted.
    pub gc_deleted: u64,
}

/// Key of the `FRAGS` map: one IP datagram as its fragments carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// `NAT_DIR_OUT` (from a pod) or `NAT_DIR_IN` (from the uplink).
    pub dir: u8,
}

/// Value of the `FRAGS` map: the L4 ports of the datagram, from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragEntry {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub last_seen: u64,
}

/// How long the ports of a fragmented datagram are kept (the kernel's
/// ipfrag_time).
pub const FRAG_TIMEOUT: u64 = 30 * SEC;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EgressConfig>(), 10 * 4);
        assert_eq!(size_of::<NatKey>(), 16);
        assert_eq!(size_of::<NatEntry>(), 4 + 2 + 2 + 8 + 8 + 4 + 4);
        assert_eq!(size_of::<NatState>(), 32);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragEntry>(), 16);
        assert_eq!(size_of::<EgressConfig6>(), 6 * 4 + 5 * 16);
        assert_eq!(size_of::<NatKey6>(), 40);
        assert_eq!(size_of::<NatEntry6>(), 32 + 16);
        // The head of both entries is laid out alike (see NatEntry6).
        assert_eq!(core::mem::offset_of!(NatEntry6, port), 4);
        assert_eq!(core::mem::offset_of!(NatEntry6, last_seen), 8);
        assert_eq!(core::mem::offset_of!(NatEntry6, ifindex), 24);
        assert_eq!(core::mem::offset_of!(NatEntry, ifindex), 24);
        let a = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(ipv6_from_map(ipv6_to_map(a)), a);
    }

    #[test]
    fn states_and_timeouts_follow_the_kernel_defaults() {
        let tcp = |f| CtState::of(IPPROTO_TCP, f);
        assert_eq!(tcp(0), CtState::SynSent);
        assert_eq!(tcp(CT_REPLIED), CtState::Established);
        assert_eq!(tcp(CT_REPLIED | CT_FIN_OUT), CtState::FinWait);
        assert_eq!(tcp(CT_REPLIED | CT_FIN_IN), CtState::CloseWait);
        assert_eq!(tcp(CT_REPLIED | CT_FIN_IN | CT_FIN_OUT), CtState::TimeWait);
        assert_eq!(tcp(CT_REPLIED | CT_FIN_IN | CT_RST), CtState::Close);
        assert_eq!(
            CtState::Established.timeout_ns(IPPROTO_TCP),
            5 * 24 * 3600 * SEC
        );
        assert_eq!(
            CtState::of(IPPROTO_UDP, 0).timeout_ns(IPPROTO_UDP),
            30 * SEC
        );
        assert_eq!(
            CtState::of(IPPROTO_UDP, CT_REPLIED).timeout_ns(IPPROTO_UDP),
            120 * SEC
        );
        assert_eq!(
            CtState::of(IPPROTO_ICMP, CT_REPLIED).timeout_ns(IPPROTO_ICMP),
            30 * SEC
        );
        let e = NatEntry {
            last_seen: 100 * SEC,
            ..NatEntry::default()
        };
        assert!(!e.expired(IPPROTO_UDP, 130 * SEC));
        assert!(e.expired(IPPROTO_UDP, 130 * SEC + 1));
        // A clock that reads earlier than the entry (another CPU wrote it a moment
        // later) is not expiry.
        assert!(!e.expired(IPPROTO_UDP, 99 * SEC));
    }

    #[test]
    fn map_capacity_has_room_for_both_halves() {
        assert_eq!(nat_map_capacity(10), 20 + NAT_MAP_SLACK);
        assert_eq!(nat_map_capacity(u32::MAX), u32::MAX);
    }
}
