//! VXLAN encapsulation (Cilium's encap.h). The sender writes the outer headers
//! itself and sends the frame out of the uplink (Cilium's native encapsulation):
//! that skips, per packet, the VXLAN device's transmit (its route lookup for the
//! outer header, `udp_tunnel_xmit_skb`, a queue pass through the device). Frames
//! it cannot take (one whose segments would not fit the uplink's MTU once
//! wrapped, one already encapsulated) go the device's way instead, as every frame
//! did before: the sender sets the tunnel key (remote node, VNI) and redirects the
//! frame to the one collect-metadata device, which adds the same headers (and
//! treats an oversized frame as the kernel's tunnels do).
//!
//! Both ways put the same bytes on the wire; the receiver reads the outer source
//! either from the headers (`decap`) or from the key the device filled in.

use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_DONT_FRAGMENT,
        BPF_F_ZERO_CSUM_TX, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use vethbpf_common::{ClusterConfig, VXLAN_PORT, Verdict};

use crate::{
    clock, direct, fib,
    hdr::{
        ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, copy_mac, linear, ptr_at,
        set_be16, set_ipv4_addr,
    },
    stats::Decision,
};

/// The UDP and VXLAN headers.
#[repr(C)]
pub struct UdpVxlan {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
    pub flags: u8,
    pub _reserved: [u8; 3],
    /// VNI (3 bytes) and a reserved byte.
    pub vni: [u8; 4],
}
const _: () = assert!(size_of::<UdpVxlan>() == 16);

/// What goes between the outer Ethernet header and the inner packet: outer IPv4,
/// UDP, VXLAN and the inner Ethernet header.
pub const ENCAP_LEN: usize = size_of::<Ipv4Hdr>() + size_of::<UdpVxlan>() + ETH_HLEN;
/// VXLAN's "VNI valid" flag.
pub const VXLAN_F_VNI: u8 = 0x08;
/// The outer source port spreads flows over the underlay's ECMP paths; the range
/// is the kernel's default ephemeral one, as its VXLAN device picks from.
const SPORT_MIN: u32 = 32768;
const SPORT_MAX: u32 = 61000;
/// Outer header fields as stored: version 4 and 20 bytes; DF.
const VIHL: u8 = 0x45;
const DF: u16 = 0x4000;

/// The inner packet, as far as encapsulation needs it: where its L4 header is
/// (frame offset), which protocol, and its ECN bits (copied to the outer header,
/// as the kernel's tunnels do).
pub struct Inner {
    pub l4_off: usize,
    pub proto: u8,
    pub ecn: u8,
}

/// Tunnels the frame to the node at `node_ip` (network order in memory): wrapped
/// here and sent out of the uplink, or through the device (module docs).
#[inline(always)]
pub fn to_node(ctx: &TcContext, node_ip: u32, cluster: &ClusterConfig, inner: &Inner) -> Decision {
    match encapsulate(ctx, node_ip, cluster, inner) {
        Encap::Done => direct::redirect_to_node(node_ip, cluster.uplink_ifindex),
        Encap::Device => redirect_tunnel(ctx, node_ip, cluster),
        // The room was made but the headers could not be written: the frame is
        // neither the pod's nor a tunnel's any more.
        Encap::Broken => Decision::drop(Verdict::DropMalformed),
    }
}

enum Encap {
    Done,
    Device,
    Broken,
}

#[inline(always)]
fn encapsulate(ctx: &TcContext, node_ip: u32, cluster: &ClusterConfig, inner: &Inner) -> Encap {
    let len = ctx.len() as usize;
    let Some(mtu) = fib::uplink_mtu(ctx, cluster.uplink_ifindex, clock::now()) else {
        return Encap::Device;
    };
    // SAFETY: `ctx.skb.skb` is the program's context pointer.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    // The largest packet the uplink will carry: the frame itself, or one segment
    // of a GSO frame (its headers and `gso_size` bytes of payload).
    let seg = if gso_size == 0 {
        len - ETH_HLEN
    } else {
        let l4_hdr = match inner.proto {
            IPPROTO_TCP => match ctx.load::<u8>(inner.l4_off + 12) {
                Ok(off) => usize::from(off >> 4) * 4,
                Err(_) => return Encap::Device,
            },
            IPPROTO_UDP => 8,
            _ => return Encap::Device,
        };
        inner.l4_off - ETH_HLEN + l4_hdr + gso_size
    };
    let outer_len = len - ETH_HLEN + ENCAP_LEN;
    if seg + ENCAP_LEN > mtu as usize || outer_len > usize::from(u16::MAX) {
        return Encap::Device;
    }
    // SAFETY: the context pointer is the program's.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sport = ((u64::from(hash) * u64::from(SPORT_MAX - SPORT_MIN)) >> 32) as u32 + SPORT_MIN;
    // The helper marks the frame encapsulated (inner headers, GSO type UDP tunnel,
    // inner protocol Ethernet), so the uplink's GSO segments the inner packet and
    // repeats the outer headers. FIXED_GSO: the pod's MSS already leaves room.
    let flags = u64::from(
        BPF_F_ADJ_ROOM_FIXED_GSO
            | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
    ) | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    if ctx
        .adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        // Nothing changed (e.g. the frame is encapsulated already).
        return Encap::Device;
    }
    let Some((data, end)) = linear(ctx, ETH_HLEN + ENCAP_LEN) else {
        return Encap::Broken;
    };
    let (Some(eth), Some(ip), Some(udp), Some(inner_eth)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
        ptr_at::<UdpVxlan>(data, end, ETH_HLEN + size_of::<Ipv4Hdr>()),
        ptr_at::<EthHdr>(
            data,
            end,
            ETH_HLEN + size_of::<Ipv4Hdr>() + size_of::<UdpVxlan>(),
        ),
    ) else {
        return Encap::Broken;
    };
    // SAFETY: all four bounds-checked just above, distinct, and no helper that
    // changes packet data runs while they are in use.
    let (eth, ip, udp, inner_eth) = unsafe { (&mut *eth, &mut *ip, &mut *udp, &mut *inner_eth) };
    // The pod's Ethernet header goes inside unchanged (the receiving side
    // rewrites it on delivery); the outer one's MACs are the neighbour code's.
    copy_mac(&mut inner_eth.dst_addr, &eth.dst_addr);
    copy_mac(&mut inner_eth.src_addr, &eth.src_addr);
    inner_eth.ether_type = eth.ether_type;
    eth.ether_type = ETH_P_IP;

    write_ipv4(ip, inner.ecn, outer_len as u16, cluster.node_ip, node_ip);
    set_be16(&mut udp.sport, (sport as u16).to_be());
    set_be16(&mut udp.dport, VXLAN_PORT.to_be());
    set_be16(
        &mut udp.len,
        ((outer_len - size_of::<Ipv4Hdr>()) as u16).to_be(),
    );
    // No UDP checksum, as the device path sends (see `redirect_tunnel`).
    set_be16(&mut udp.check, 0);
    udp.flags = VXLAN_F_VNI;
    udp._reserved = [0; 3];
    udp.vni = (cluster.vni << 8).to_be_bytes();
    Encap::Done
}

/// The outer IPv4 header from this node to `dst`, its checksum computed over the
/// values written (all as stored, in network order).
#[inline(always)]
fn write_ipv4(ip: &mut Ipv4Hdr, ecn: u8, tot_len: u16, src: u32, dst: u32) {
    ip.vihl = VIHL;
    ip.tos = ecn & 0x03;
    set_be16(&mut ip.tot_len, tot_len.to_be());
    set_be16(&mut ip.id, 0);
    set_be16(&mut ip.frags, DF.to_be());
    ip.ttl = OUTER_TTL;
    ip.proto = IPPROTO_UDP;
    set_ipv4_addr(&mut ip.src_addr, src);
    set_ipv4_addr(&mut ip.dst_addr, dst);
    // Host-order sum of the ten 16-bit words (the checksum word as 0).
    let word = |hi: u8, lo: u8| u32::from(hi) << 8 | u32::from(lo);
    let addr = |a: u32| {
        let b = a.to_ne_bytes();
        word(b[0], b[1]) + word(b[2], b[3])
    };
    let mut sum = word(VIHL, ip.tos)
        + u32::from(tot_len)
        + u32::from(DF)
        + word(OUTER_TTL, IPPROTO_UDP)
        + addr(src)
        + addr(dst);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    set_be16(&mut ip.check, (!(sum as u16)).to_be());
}

/// TTL of the outer header (the inner one is the pods' business).
const OUTER_TTL: u8 = 64;

/// Tunnels the frame to the node at `node_ip` (network order in memory) through
/// the VXLAN device.
#[inline(always)]
fn redirect_tunnel(ctx: &TcContext, node_ip: u32, cluster: &ClusterConfig) -> Decision {
    // SAFETY: bpf_tunnel_key is plain old data; zero is "unset" for every field.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = cluster.vni;
    // The helper takes the address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_ip);
    key.tunnel_ttl = OUTER_TTL;
    // No outer UDP checksum (RFC 7348 allows 0 over IPv4; the inner packet has its
    // own), and DF on the outer header: pods get an MTU that leaves room for the
    // 50 bytes of VXLAN, so nothing needs fragmenting, and a wrong MTU shows as
    // drops instead of silently fragmented traffic.
    let flags = u64::from(BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT);
    // SAFETY: the context pointer is the program's; the key lives on our stack.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc < 0 {
        return Decision::drop(Verdict::DropNodeUnreachable);
    }
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(cluster.tunnel_ifindex, 0) };
    Decision::redirect(Verdict::ToNode, action)
}

/// The outer source address (network order in memory) and VNI of a decapsulated
/// frame; `None` if it carries no IPv4 tunnel key.
#[inline(always)]
pub fn tunnel_source(ctx: &TcContext) -> Option<(u32, u32)> {
    // SAFETY: plain old data.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the context pointer is the program's; the key lives on our stack.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc < 0 {
        return None;
    }
    // SAFETY (union read): an IPv4 key (flags 0) fills remote_ipv4, host order.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    Some((remote.to_be(), key.tunnel_id))
}
