//! Neighbour discovery (RFC 4861) and multicast listener reports from a pod: the pod
//! resolves its gateway (and anything else it thinks on-link) to the gateway MAC,
//! answered right here, so the node needs no proxy NDP and no address on the
//! host-side veth; what only routers or owners may say is dropped.
//!
//! | message | from | verdict |
//! |---|---|---|
//! | router advertisement, redirect | anyone | `drop_ndp_router` |
//! | neighbour solicitation | pod address or its link-local | answered (`na_reply`), unless for one of the pod's own addresses (`pass`) |
//! | neighbour solicitation | `::` (duplicate address detection) | `pass`, never answered: that would fail the pod's DAD |
//! | neighbour advertisement | pod address or its link-local | `pass` if the target is the pod's, else `drop_na_spoof` |
//! | router solicitation, MLD | pod address, its link-local, `::` | `pass` (the node, not a router, ignores them) |
//! | any of them | another source | `drop_spoof` |
//! | NS, NA, RS behind extension headers, or failing RFC 4861's checks | | `drop_malformed` |
//!
//! The incoming checksum is not verified: an answer goes back only to the pod that
//! asked, which could as well have asked correctly.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use vethbpf_common::{Config, EndpointInfo6, Verdict};

use crate::{
    hdr::{ETH_HLEN, EthHdr, Ipv6Hdr, copy_mac, linear, ptr_at},
    ipv6::{
        self, Addr, IPV6_HLEN, NEXTHDR_ICMPV6, UNSPECIFIED, UpperLayer, is_multicast, load_addr,
        store_addr,
    },
    stats::Decision,
};

/// ICMPv6 types (RFC 4861, RFC 2710, RFC 3810).
pub const ICMPV6_MLD_QUERY: u8 = 130;
pub const ICMPV6_MLD_REPORT: u8 = 131;
pub const ICMPV6_MLD_DONE: u8 = 132;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;
pub const ICMPV6_MLD2_REPORT: u8 = 143;

/// NDP messages must arrive with this hop limit (RFC 4861 7.1): proof that no router
/// forwarded them. The answers carry it too.
const NDP_HOP_LIMIT: u8 = 255;

/// Neighbour solicitation / advertisement without options (RFC 4861 4.3, 4.4).
#[repr(C)]
pub struct NdMsg {
    pub icmp_type: u8,
    pub code: u8,
    pub check: [u8; 2],
    /// Router, Solicited, Override (NA) in the top bits; reserved otherwise.
    pub flags: [u8; 4],
    pub target: [u8; 16],
}

/// Source/target link-layer address option for Ethernet (RFC 4861 4.6.1).
#[repr(C)]
pub struct LinkLayerOpt {
    pub opt_type: u8,
    /// In units of 8 bytes.
    pub len: u8,
    pub mac: [u8; 6],
}

const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Router | Solicited | Override: we are the router for every target the pod asks
/// about, the answer is solicited, and it must replace whatever the pod had cached.
const NA_FLAGS_RSO: u8 = 0xe0;
/// The whole answer: Ethernet, IPv6, NA, one target link-layer address option.
const NA_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + NA_LEN;
const NA_LEN: usize = size_of::<NdMsg>() + size_of::<LinkLayerOpt>();

const _: () = assert!(size_of::<NdMsg>() == 24);
const _: () = assert!(size_of::<LinkLayerOpt>() == 8);
const _: () =
    assert!((ETH_HLEN + IPV6_HLEN + core::mem::offset_of!(NdMsg, target)).is_multiple_of(2));
const _: () = assert!((ETH_HLEN + IPV6_HLEN + size_of::<NdMsg>() + 2).is_multiple_of(2));

/// Whose address a packet's source is, as far as the endpoint goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The endpoint's IPv6 address.
    Own,
    /// Its link-local address (any link-local one for an endpoint without IPv6, whose
    /// link-local address vethbpf did not configure).
    LinkLocal,
    /// `::`, what duplicate address detection and early MLD reports use.
    Unspecified,
    /// Anything else: not the pod's to use.
    Foreign,
}

/// Classifies `src` for the endpoint `ep6` (`None`: the endpoint has no IPv6).
#[inline(always)]
pub fn source_of(src: &Addr, ep6: Option<&EndpointInfo6>) -> Source {
    if *src == UNSPECIFIED {
        return Source::Unspecified;
    }
    match ep6 {
        Some(ep6) if *src == ipv6::map_addr(&ep6.ip) => Source::Own,
        Some(ep6) if *src == ipv6::map_addr(&ep6.link_local) => Source::LinkLocal,
        Some(_) => Source::Foreign,
        None if ipv6::is_link_local(src) => Source::LinkLocal,
        None => Source::Foreign,
    }
}

/// Whether the ICMPv6 type is one this module handles.
#[inline(always)]
pub const fn is_link_control(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMPV6_MLD_QUERY..=ICMPV6_REDIRECT | ICMPV6_MLD2_REPORT
    )
}

/// Handles an NDP or MLD message (`is_link_control(icmp_type)`) at `l4` from the
/// endpoint behind `ifindex`; `source` classifies the packet's source `src`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn handle(
    ctx: &TcContext,
    ifindex: u32,
    ep6: Option<&EndpointInfo6>,
    cfg: &Config,
    l4: UpperLayer,
    icmp_type: u8,
    src: &Addr,
    source: Source,
) -> Decision {
    match icmp_type {
        // Whatever its source or form: a pod is no router.
        ICMPV6_ROUTER_ADVERT | ICMPV6_REDIRECT => return Decision::drop(Verdict::DropNdpRouter),
        // Listener reports (and queries, which only routers send, harmless to a node
        // that routes no multicast) are link-local: the node stack may see them.
        ICMPV6_MLD_QUERY | ICMPV6_MLD_REPORT | ICMPV6_MLD_DONE | ICMPV6_MLD2_REPORT => {
            return if source == Source::Foreign {
                Decision::drop(Verdict::DropSpoof)
            } else {
                Decision::pass()
            };
        }
        _ if source == Source::Foreign => return Decision::drop(Verdict::DropSpoof),
        // No stack sends RS, NS or NA behind extension headers; answering or passing
        // them would need the whole walk again for nothing.
        _ if !l4.plain => return Decision::drop(Verdict::DropMalformed),
        ICMPV6_ROUTER_SOLICIT => return Decision::pass(),
        _ => {}
    }
    // A neighbour solicitation or advertisement.
    let Some(target) = valid_target(ctx) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    if icmp_type == ICMPV6_NEIGHBOUR_SOLICIT {
        solicitation(ctx, ifindex, ep6, cfg, src, &target, source)
    } else {
        advertisement(ep6, &target, source)
    }
}

/// The target of the NS or NA right behind the fixed header, if the message passes
/// the checks RFC 4861 7.1 has receivers make (hop limit 255, code 0, at least 24
/// bytes, target not multicast; nor unspecified, which no one can resolve).
#[inline(always)]
fn valid_target(ctx: &TcContext) -> Option<Addr> {
    let (data, data_end) = linear(ctx, ETH_HLEN + IPV6_HLEN + size_of::<NdMsg>())?;
    let ip = ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN)?;
    let msg = ptr_at::<NdMsg>(data, data_end, ETH_HLEN + IPV6_HLEN)?;
    // SAFETY: both bounds-checked just above; only read.
    let (ip, msg) = unsafe { (&*ip, &*msg) };
    let icmp_len = u16::from_be_bytes(ip.payload_len);
    let target = load_addr(&msg.target);
    if ip.hop_limit != NDP_HOP_LIMIT
        || msg.code != 0
        || usize::from(icmp_len) < size_of::<NdMsg>()
        || is_multicast(&target)
        || target == UNSPECIFIED
    {
        return None;
    }
    Some(target)
}

/// Whether `target` is one of the endpoint's addresses.
#[inline(always)]
fn owns(ep6: &EndpointInfo6, target: &Addr) -> bool {
    *target == ipv6::map_addr(&ep6.ip) || *target == ipv6::map_addr(&ep6.link_local)
}

/// A neighbour advertisement from the pod: it may only speak for its own addresses,
/// which stops it from poisoning caches with the gateway's or another pod's address.
#[inline(always)]
fn advertisement(ep6: Option<&EndpointInfo6>, target: &Addr, source: Source) -> Decision {
    // An advertisement never comes from `::` (RFC 4861 4.4: the sender's address).
    if source == Source::Unspecified {
        return Decision::drop(Verdict::DropSpoof);
    }
    match ep6 {
        Some(ep6) if owns(ep6, target) => Decision::pass(),
        // An endpoint without IPv6 owns nothing vethbpf knows of.
        _ => Decision::drop(Verdict::DropNaSpoof),
    }
}

/// A neighbour solicitation from the pod: answered with the gateway MAC for any
/// target but the pod's own addresses.
#[inline(always)]
fn solicitation(
    ctx: &TcContext,
    ifindex: u32,
    ep6: Option<&EndpointInfo6>,
    cfg: &Config,
    requester: &Addr,
    target: &Addr,
    source: Source,
) -> Decision {
    // Duplicate address detection: an answer would tell the pod its address is taken.
    // The node stack, which owns no address on the veth, stays silent too.
    if source == Source::Unspecified {
        return Decision::pass();
    }
    let Some(ep6) = ep6 else {
        // No IPv6 for this endpoint: nothing to resolve.
        return Decision::pass();
    };
    if owns(ep6, target) {
        return Decision::pass();
    }
    advertise(ctx, ifindex, requester, target, &cfg.gateway_mac)
}

/// Turns the solicitation into the advertisement "`target` is at `gateway_mac`" from
/// `target` to `requester`, and sends it back out of the veth to the pod.
#[inline(always)]
fn advertise(
    ctx: &TcContext,
    ifindex: u32,
    requester: &Addr,
    target: &Addr,
    gateway_mac: &[u8; 6],
) -> Decision {
    // The answer has exactly one option; the question had none, one (the source
    // link-layer address, usually) or more: make the frame the answer's size. This
    // invalidates packet pointers, taken again below.
    if ctx.len() != NA_FRAME_LEN as u32 {
        // SAFETY: a plain helper call on the program's own skb.
        let ret =
            unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb, NA_FRAME_LEN as u32, 0) };
        if ret != 0 {
            // Out of memory for 8 more bytes: the pod will ask again.
            return Decision::drop(Verdict::DropMalformed);
        }
    }
    let Some((data, data_end)) = linear(ctx, NA_FRAME_LEN) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(ip), Some(msg), Some(opt)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN),
        ptr_at::<NdMsg>(data, data_end, ETH_HLEN + IPV6_HLEN),
        ptr_at::<LinkLayerOpt>(data, data_end, ETH_HLEN + IPV6_HLEN + size_of::<NdMsg>()),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: all four bounds-checked just above, disjoint, and no helper that changes
    // packet data runs while they are in use.
    let (eth, ip, msg, opt) = unsafe { (&mut *eth, &mut *ip, &mut *msg, &mut *opt) };

    copy_mac(&mut eth.dst_addr, &eth.src_addr);
    copy_mac(&mut eth.src_addr, gateway_mac);

    // Version 6, traffic class and flow label 0.
    ip.vcf = [0x60, 0, 0, 0];
    ip.payload_len = (NA_LEN as u16).to_be_bytes();
    ip.next_hdr = NEXTHDR_ICMPV6;
    ip.hop_limit = NDP_HOP_LIMIT;
    store_addr(&mut ip.src_addr, target);
    store_addr(&mut ip.dst_addr, requester);

    msg.icmp_type = ICMPV6_NEIGHBOUR_ADVERT;
    msg.code = 0;
    msg.flags = [NA_FLAGS_RSO, 0, 0, 0];
    // msg.target stays: it is the address asked about.
    opt.opt_type = ND_OPT_TARGET_LL_ADDR;
    opt.len = 1;
    // At an even frame offset (checked above), as copy_mac needs.
    copy_mac(&mut opt.mac, gateway_mac);
    msg.check = checksum(requester, target, gateway_mac).to_ne_bytes();

    // Egress out of the same veth: straight back to the pod.
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    Decision::redirect(Verdict::NaReply, action)
}

/// The ICMPv6 checksum of the advertisement [`advertise`] writes, computed from its
/// fields rather than read back: the one's complement sum over the pseudo-header
/// (source, destination, upper-layer length, next header; RFC 8200 8.1) and the
/// message with its checksum field zero.
///
/// Words are summed as loaded (memory order): the one's complement sum is the same in
/// either byte order once stored the same way (RFC 1071 2(B)), so constants are given
/// as their bytes.
#[inline(always)]
fn checksum(requester: &Addr, target: &Addr, mac: &[u8; 6]) -> u16 {
    let word = |b: [u8; 4]| u64::from(u32::from_ne_bytes(b));
    let addr = |a: &Addr| u64::from(a[0]) + u64::from(a[1]) + u64::from(a[2]) + u64::from(a[3]);
    let len = NA_LEN as u32;
    let sum = addr(target) // pseudo-header source
        + addr(requester) // pseudo-header destination
        + word(len.to_be_bytes())
        + word([0, 0, 0, NEXTHDR_ICMPV6])
        + word([ICMPV6_NEIGHBOUR_ADVERT, 0, 0, 0]) // type, code, checksum 0
        + word([NA_FLAGS_RSO, 0, 0, 0])
        + addr(target)
        + word([ND_OPT_TARGET_LL_ADDR, 1, mac[0], mac[1]])
        + word([mac[2], mac[3], mac[4], mac[5]]);
    !fold(sum)
}

/// Folds a sum of 32-bit words into 16 bits with end-around carries.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}
