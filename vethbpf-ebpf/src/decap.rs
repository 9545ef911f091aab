//! VXLAN decapsulation on the uplink, before the kernel's UDP and VXLAN receive
//! path: a frame another node wrapped (its `from_pod`, see `encap`, or its
//! `vethbpf.vx`) for a pod here has its outer
//! headers taken off by `bpf_skb_adjust_room` in `from_uplink` and goes through the
//! same checks and delivery as one that came up through the VXLAN device
//! ([`overlay::handle`]). That saves, per packet, the UDP socket lookup,
//! `vxlan_rcv` and the softirq pass of the device's GRO cell.
//!
//! Only what is plainly a tunnelled packet for a pod is taken: IPv4 outer and
//! inner headers without options, no fragment, a zero UDP checksum (as every
//! vethbpf node sends, see `encap`), the VXLAN flag set, an inner destination that
//! is a local endpoint, no GSO packet (those keep the device's path, which
//! segments and checksums them as their flags say) and no frame over 512 bytes
//! (see [`DECAP_MAX_LEN`]). Everything else passes to the stack as before and
//! reaches `from_tunnel` through the device.

use aya_ebpf::{bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, programs::TcContext};
use vethbpf_common::{CLUSTER_MODE_VXLAN, VXLAN_PORT, Verdict};

use crate::{
    encap::{ENCAP_LEN, UdpVxlan, VXLAN_F_VNI},
    hdr::{ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, be16, ipv4_addr, linear, ptr_at},
    ipv4,
    maps::CLUSTER,
    overlay, remote,
    stats::Decision,
};

const IPV4_HLEN: usize = 20;
/// What comes off: outer IPv4, UDP, VXLAN and the inner Ethernet header (the
/// outer Ethernet header stays and is rewritten on delivery).
const OUTER: usize = ENCAP_LEN;
/// Larger frames keep the device's path: they are mostly segments of bulk
/// transfers, which the device's GRO cell merges before the pod's TCP sees them;
/// what is latency-bound (requests, replies, ACKs) is small. (Whether this matters
/// for throughput is not settled: BENCHMARKS.md, "VXLAN decapsulated in
/// `from_uplink`".)
const DECAP_MAX_LEN: u32 = 512;

/// Decapsulates and delivers a VXLAN frame for a local pod (see the module docs);
/// `None` when the frame is not one: it goes on through `from_uplink` as before.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Option<(u32, Decision)> {
    let cluster = CLUSTER.get(0)?;
    if cluster.mode != CLUSTER_MODE_VXLAN {
        return None;
    }
    // What the node's own traffic pays here: the outer header is in the linear part
    // already (`from_uplink` checked), two comparisons and nothing is pulled.
    {
        let (data, end) = linear(ctx, ETH_HLEN + IPV4_HLEN)?;
        let eth = ptr_at::<EthHdr>(data, end, 0)?;
        // SAFETY: bounds-checked just above.
        if unsafe { (*eth).ether_type } != ETH_P_IP {
            return None;
        }
        let outer = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN)?;
        // SAFETY: bounds-checked just above; byte 9 of the header is the protocol.
        let proto = unsafe { *outer.cast::<u8>().add(9) };
        // SAFETY: as above.
        if proto != IPPROTO_UDP || ipv4_addr(unsafe { &(*outer).dst_addr }) != cluster.node_ip {
            return None;
        }
    }
    // SAFETY: `ctx.skb.skb` is the program's context pointer.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 || ctx.len() > DECAP_MAX_LEN {
        return None;
    }
    let (data, end) = linear(ctx, ETH_HLEN + OUTER + IPV4_HLEN)?;
    let outer = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN)?;
    let udp = ptr_at::<UdpVxlan>(data, end, ETH_HLEN + IPV4_HLEN)?;
    let inner_eth = ptr_at::<EthHdr>(data, end, ETH_HLEN + IPV4_HLEN + size_of::<UdpVxlan>())?;
    let inner = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN + OUTER)?;
    // SAFETY: all four bounds-checked above; read only, before any helper that
    // changes the packet.
    let (outer, udp, inner_eth, inner) = unsafe { (&*outer, &*udp, &*inner_eth, &*inner) };
    if outer.vihl != 0x45
        || be16(&outer.frags) & 0xff3f != 0
        || be16(&udp.dport) != VXLAN_PORT.to_be()
        || be16(&udp.check) != 0
        || udp.flags & VXLAN_F_VNI == 0
        || inner_eth.ether_type != ETH_P_IP
        || inner.vihl != 0x45
        || !ipv4::checksum_ok(outer)
    {
        return None;
    }
    remote::local_endpoint(ipv4_addr(&inner.dst_addr))?;
    let outer_src = ipv4_addr(&outer.src_addr);
    let vni = u32::from_be_bytes(udp.vni) >> 8;
    if ctx
        .adjust_room(-(OUTER as i32), BPF_ADJ_ROOM_MAC, 0)
        .is_err()
    {
        return Some((0, Decision::drop(Verdict::DropMalformed)));
    }
    Some(overlay::handle(ctx, |_| Some((outer_src, vni))))
}
