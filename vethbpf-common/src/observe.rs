//! What the datapath tells observers: events in the `EVENTS` ring buffer (drops and
//! traces), the `MONITOR` entry that says whether anyone listens, the per-CPU count of
//! events lost to a full ring, and the "seen flows" map that keeps traces to the first
//! packet of a flow and its TCP flag changes.

use crate::Verdict;

/// Map names (see the `MAP_*` constants in the crate root).
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_MONITOR: &str = "MONITOR";
pub const MAP_EVENTS_LOST: &str = "EVENTS_LOST";
pub const MAP_TRACE_FLOWS: &str = "TRACE_FLOWS";

/// Size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page
/// size): about 3,000 events of [`Event`]'s 160 bytes (+8 bytes of ring header each).
pub const EVENTS_RING_BYTES: u32 = 512 * 1024;
/// Capacity of `TRACE_FLOWS` (LRU: the least recently seen flow makes room).
pub const MAX_TRACE_FLOWS: u32 = 16384;
/// Bytes of the packet an event carries (from the Ethernet header on): enough for
/// Ethernet + IPv6 + TCP with options, as Cilium's 128-byte trace payload.
pub const EVENT_DATA_LEN: usize = 128;

/// `Event::kind`: the packet was dropped; `verdict` says why.
pub const EVENT_DROP: u8 = 1;
/// `Event::kind`: the packet was forwarded (or, later, NATed or tunnelled); the first
/// packet of its flow or a TCP flag not seen before in it.
pub const EVENT_TRACE: u8 = 2;
/// Layout version of [`Event`], so that a monitor can tell an event of another build.
pub const EVENT_VERSION: u8 = 1;

/// `Monitor::kinds` bit for an event kind.
pub const fn kind_bit(kind: u8) -> u32 {
    1 << kind
}

/// One event in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// `EVENT_DROP` or `EVENT_TRACE`.
    pub kind: u8,
    /// `EVENT_VERSION`.
    pub version: u8,
    /// The `Verdict` as `u16`.
    pub verdict: u16,
    /// The endpoint the packet came from (0: none, e.g. an interface without an
    /// endpoint entry).
    pub endpoint_id: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// The packet's length (skb->len; a GSO packet's whole length).
    pub len: u32,
    /// Segments of a GSO packet (1 for a plain one).
    pub segs: u32,
    /// Bytes of `data` that hold packet bytes (min(len, EVENT_DATA_LEN)).
    pub cap_len: u32,
    /// The first bytes of the packet as the program left it (after a rewrite).
    pub data: [u8; EVENT_DATA_LEN],
}

/// Value of the one-entry `MONITOR` array: whether, and for what, events are wanted.
///
/// Written by `vethbpf monitor` while it runs; all zero when nobody listens, so the
/// datapath's whole cost then is reading `kinds`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Monitor {
    /// Events are emitted only while `bpf_ktime_get_ns()` is below this: the monitor
    /// pushes it forward as a heartbeat, so a monitor that was SIGKILLed stops the
    /// events within `MONITOR_LEASE_NS`.
    pub deadline_ns: u64,
    /// Bit set of `kind_bit(EVENT_*)`: the kinds wanted; 0 when nobody listens.
    pub kinds: u32,
    /// Changes with every monitor run, so that a new monitor sees every flow again
    /// (entries of `TRACE_FLOWS` from another session count as unseen).
    pub session: u32,
    /// The listening monitor's process id (for `status` and to refuse a second one).
    pub pid: u32,
    pub _pad: u32,
}

/// How far ahead of now a monitor sets `Monitor::deadline_ns`; it renews the lease
/// every second. Long enough that a monitor stopped for a few seconds (SIGSTOP) still
/// sees what it missed counted as lost, short enough that a killed one's flag lapses
/// soon.
pub const MONITOR_LEASE_NS: u64 = 10_000_000_000;

/// Key of `TRACE_FLOWS`: a flow in one direction. IPv4 addresses take the first
/// four bytes of the 16; ports are 0 for protocols without them (ICMP uses its
/// identifier as `sport` and type/code as `dport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network byte order, as in the packet.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `TRACE_FLOWS`: what a monitor session has been told about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSeen {
    /// `Monitor::session` of the trace that recorded it.
    pub session: u32,
    /// TCP flags (SYN, FIN, RST bits) already traced in this session.
    pub tcp_flags: u32,
}

/// TCP flags that make a new trace event when a flow first shows them.
pub const TRACE_TCP_FLAGS: u8 = TCP_FIN | TCP_SYN | TCP_RST;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// `ROUTES` kind of the node's own pod CIDR: an address in it that no endpoint
/// route (a longer prefix) covers belongs to no pod (deleted, or never created), and
/// is dropped as `DropUnknownDestination` instead of going to the node stack (Calico
/// installs a blackhole route for its IPAM blocks for the same reason).
pub const ROUTE_KIND_POD_CIDR: u32 = 4;

impl Verdict {
    /// Whether the verdict makes trace events: a packet the datapath carried on
    /// itself (forwarded to a pod, masqueraded or sent out, translated back, sent to
    /// or received from a remote node). Drops make drop
    /// events ([`Verdict::is_drop`]); verdicts that hand the packet to the node stack
    /// or answer it make none.
    pub const fn is_traced(self) -> bool {
        matches!(
            self,
            Verdict::Forward
                | Verdict::Masquerade
                | Verdict::Egress
                | Verdict::RevNat
                | Verdict::RevNatIcmp
                | Verdict::ToNode
                | Verdict::FromNode
        )
    }

    /// The event kind the verdict makes: `EVENT_DROP`, `EVENT_TRACE`, or 0 for none.
    #[inline(always)]
    pub const fn event_kind(self) -> u8 {
        if self.is_drop() {
            EVENT_DROP
        } else if self.is_traced() {
            EVENT_TRACE
        } else {
            0
        }
    }

    /// What the verdict means, in words, for people reading `vethbpf monitor`.
    pub const fn reason(self) -> &'static str {
        match self {
            Verdict::Forward => "forwarded to a pod on this node",
            Verdict::ArpReply => "ARP request answered with the gateway MAC",
            Verdict::Pass => "handed to the node stack",
            Verdict::DropSpoof => "source address is not the pod's",
            Verdict::DropArpSpoof => "ARP sender address is not the pod's",
            Verdict::DropTtl => "TTL expired (<= 1) on the way to a pod",
            Verdict::DropMalformed => "truncated or malformed headers",
            Verdict::DropNoEndpoint => {
                "interface has no endpoint entry (or the node has no config)"
            }
            Verdict::DropVlan => "VLAN-tagged frame (pods are joined untagged only)",
            Verdict::DropCsum => "IPv4 header checksum does not verify",
            Verdict::EchoReply => "ping to the gateway answered",
            Verdict::NaReply => "IPv6 neighbour solicitation answered with the gateway MAC",
            Verdict::DropNaSpoof => "neighbour advertisement for an address that is not the pod's",
            Verdict::DropNdpRouter => "router advertisement or redirect from a pod",
            Verdict::Masquerade => "sent to the outside, source translated to the node's address",
            Verdict::Egress => "sent to the outside with the pod's own address (no masquerade)",
            Verdict::RevNat => "reply of a pod's flow, translated back and delivered",
            Verdict::RevNatIcmp => "ICMP error about a pod's flow, translated back and delivered",
            Verdict::NatTableFull => "new flow refused: the NAT table is at its flow limit",
            Verdict::DropNatNoPort => "new flow refused: no free NAT port",
            Verdict::DropFragUnknown => "fragment of a datagram whose first fragment was not seen",
            Verdict::DropTooBig => "larger than the uplink's MTU",
            Verdict::UplinkPass => "the node's own traffic on the uplink, handed to its stack",
            Verdict::DropUnsolicited => "for a pod address but no reply to a pod's flow",
            Verdict::DropNatError => "a packet rewrite failed halfway",
            Verdict::ToNode => "sent to a remote node (routed or tunnelled)",
            Verdict::FromNode => "delivered from a remote node",
            Verdict::DropUnknownSource => {
                "for a pod here, from no known node or remote pod CIDR (or around the tunnel)"
            }
            Verdict::DropUnknownDestination => {
                "destination is in this node's pod CIDR but no endpoint has it (deleted or never created)"
            }
            Verdict::DropNodeUnreachable => "for a remote node that cannot be reached now",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers and byte arrays only, explicit padding fields: every
    // bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Monitor {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowSeen {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Event>(), 8 + 1 + 1 + 2 + 4 * 5 + EVENT_DATA_LEN);
        assert_eq!(size_of::<Event>() % 8, 0);
        assert_eq!(size_of::<Monitor>(), 8 + 4 * 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowSeen>(), 8);
    }

    #[test]
    fn every_drop_makes_a_drop_event_and_forward_a_trace() {
        for v in Verdict::ALL {
            let kind = v.event_kind();
            assert_eq!(kind == EVENT_DROP, v.is_drop(), "{v:?}");
            assert!(!v.reason().is_empty());
        }
        assert_eq!(Verdict::Forward.event_kind(), EVENT_TRACE);
        assert_eq!(Verdict::Masquerade.event_kind(), EVENT_TRACE);
        assert_eq!(Verdict::FromNode.event_kind(), EVENT_TRACE);
        assert_eq!(Verdict::UplinkPass.event_kind(), 0);
        assert_eq!(Verdict::Pass.event_kind(), 0);
        assert_eq!(Verdict::ArpReply.event_kind(), 0);
        assert_eq!(Verdict::EchoReply.event_kind(), 0);
        assert_eq!(Verdict::NaReply.event_kind(), 0);
    }
}
