//! The first bytes of a packet, as an event carries them, into the fields people
//! look for: MACs, VLAN, addresses, protocol, ports, TCP flags, ICMP type, or the
//! ARP fields. Decoding is done with etherparse's lax slicer, which takes what a
//! truncated capture holds (an event has at most 128 bytes of the packet).
//!
//! A frame `from_pod` has wrapped in VXLAN for another node (the event is taken
//! after the program, so it carries the outer headers) is shown as the pod's
//! packet inside, with the outer addresses and VNI in `tunnel`: what a reader of
//! `monitor` looks for is the pods' flow, and `--node` matches its addresses.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
use serde::Serialize;

use crate::state::ident::MacAddr;

/// An ARP packet's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArpView {
    /// `request`, `reply`, or the operation's number.
    pub op: String,
    pub sender_mac: Option<MacAddr>,
    pub sender_ip: Option<Ipv4Addr>,
    pub target_mac: Option<MacAddr>,
    pub target_ip: Option<Ipv4Addr>,
}

/// The outer headers of a VXLAN frame between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelView {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub vni: u32,
}

/// What the captured bytes show. Fields the capture does not reach (or that the
/// protocol does not have) are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PacketView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<MacAddr>,
    /// `ipv4`, `ipv6`, `arp`, or the EtherType in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// TTL or hop limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// TCP flags set, as `SYN,ACK`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp: Option<ArpView>,
    /// A fragment after the first (no transport header).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    /// The frame came wrapped in VXLAN: the fields above are the inner packet's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelView>,
}

/// The inner frame and VNI of a VXLAN payload (its 8-byte header with the "VNI
/// valid" flag, then Ethernet), if that is what `udp_payload` is.
fn vxlan_inner(udp_payload: &[u8]) -> Option<(&[u8], u32)> {
    let (hdr, inner) = udp_payload.split_first_chunk::<8>()?;
    let vni = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    (hdr[0] & 0x08 != 0 && inner.len() >= 14).then_some((inner, vni))
}

fn ether_type_name(t: EtherType) -> String {
    match t {
        EtherType::IPV4 => "ipv4".into(),
        EtherType::IPV6 => "ipv6".into(),
        EtherType::ARP => "arp".into(),
        EtherType::VLAN_TAGGED_FRAME => "vlan".into(),
        other => format!("0x{:04x}", other.0),
    }
}

fn mac(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

impl PacketView {
    /// Decodes the captured bytes of an Ethernet frame (a VXLAN frame to the
    /// cluster's port: the frame inside, see the module docs).
    pub fn decode(frame: &[u8]) -> PacketView {
        let (outer, udp_payload) = Self::decode_one(frame);
        let inner = udp_payload
            .filter(|_| outer.dport == Some(vethbpf_common::VXLAN_PORT))
            .and_then(vxlan_inner);
        match (inner, outer.src, outer.dst) {
            (Some((inner, vni)), Some(src), Some(dst)) => PacketView {
                tunnel: Some(TunnelView { src, dst, vni }),
                ..Self::decode_one(inner).0
            },
            _ => outer,
        }
    }

    /// The fields of one frame, and its UDP payload (as far as captured) if it is
    /// UDP.
    fn decode_one(frame: &[u8]) -> (PacketView, Option<&[u8]>) {
        let mut v = PacketView::default();
        let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
            return (v, None);
        };
        let mut udp_payload = None;
        if let Some(LinkSlice::Ethernet2(eth)) = &p.link {
            v.src_mac = Some(MacAddr(eth.source()));
            v.dst_mac = Some(MacAddr(eth.destination()));
            v.ethertype = Some(ether_type_name(eth.ether_type()));
        }
        for ext in &p.link_exts {
            if let etherparse::LaxLinkExtSlice::Vlan(vlan) = ext {
                v.vlan = Some(vlan.vlan_identifier().value());
                v.ethertype = Some(ether_type_name(vlan.ether_type()));
            }
        }
        let payload = match &p.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                v.src = Some(h.source_addr().into());
                v.dst = Some(h.destination_addr().into());
                v.ttl = Some(h.ttl());
                Some(ip.payload())
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let h = ip.header();
                v.src = Some(h.source_addr().into());
                v.dst = Some(h.destination_addr().into());
                v.ttl = Some(h.hop_limit());
                Some(ip.payload())
            }
            Some(LaxNetSlice::Arp(arp)) => {
                v.arp = Some(ArpView {
                    op: match arp.operation().0 {
                        1 => "request".into(),
                        2 => "reply".into(),
                        n => n.to_string(),
                    },
                    sender_mac: mac(arp.sender_hw_addr()),
                    sender_ip: ipv4(arp.sender_protocol_addr()),
                    target_mac: mac(arp.target_hw_addr()),
                    target_ip: ipv4(arp.target_protocol_addr()),
                });
                None
            }
            None => None,
        };
        if let Some(payload) = payload {
            v.protocol = Some(match payload.ip_number.0 {
                6 => "tcp".into(),
                17 => "udp".into(),
                1 => "icmp".into(),
                58 => "icmpv6".into(),
                n => n.to_string(),
            });
            v.fragment = payload.fragmented && p.transport.is_none();
        }
        match &p.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                v.sport = Some(tcp.source_port());
                v.dport = Some(tcp.destination_port());
                let flags: Vec<&str> = [
                    (tcp.syn(), "SYN"),
                    (tcp.ack(), "ACK"),
                    (tcp.fin(), "FIN"),
                    (tcp.rst(), "RST"),
                    (tcp.psh(), "PSH"),
                    (tcp.urg(), "URG"),
                ]
                .into_iter()
                .filter(|(set, _)| *set)
                .map(|(_, name)| name)
                .collect();
                v.tcp_flags = Some(flags.join(","));
            }
            Some(TransportSlice::Udp(udp)) => {
                v.sport = Some(udp.source_port());
                v.dport = Some(udp.destination_port());
                udp_payload = Some(udp.payload());
            }
            Some(TransportSlice::Icmpv4(icmp)) => {
                v.icmp_type = Some(icmp.type_u8());
                v.icmp_code = Some(icmp.code_u8());
            }
            Some(TransportSlice::Icmpv6(icmp)) => {
                v.icmp_type = Some(icmp.type_u8());
                v.icmp_code = Some(icmp.code_u8());
            }
            _ => {}
        }
        (v, udp_payload)
    }

    /// One line for people: `TCP 10.244.0.1:40000 -> 10.244.0.2:80 [SYN]`, `ARP
    /// request who-has 10.244.0.2 tell 10.244.0.1`, ...
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(arp) = &self.arp {
            let ip = |a: Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or("?".into());
            let mac = |m: Option<MacAddr>| m.map(|m| m.to_string()).unwrap_or("?".into());
            match arp.op.as_str() {
                "request" => {
                    let _ = write!(
                        s,
                        "ARP request who-has {} tell {} ({})",
                        ip(arp.target_ip),
                        ip(arp.sender_ip),
                        mac(arp.sender_mac)
                    );
                }
                "reply" => {
                    let _ = write!(
                        s,
                        "ARP reply {} is-at {} (to {})",
                        ip(arp.sender_ip),
                        mac(arp.sender_mac),
                        ip(arp.target_ip)
                    );
                }
                op => {
                    let _ = write!(
                        s,
                        "ARP op {op} sender {} ({}) target {}",
                        ip(arp.sender_ip),
                        mac(arp.sender_mac),
                        ip(arp.target_ip)
                    );
                }
            }
        } else if let (Some(src), Some(dst)) = (self.src, self.dst) {
            let proto = self.protocol.as_deref().unwrap_or("ip").to_uppercase();
            let ep = |a: IpAddr, port: Option<u16>| match (a, port) {
                (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
                (a, Some(p)) => format!("{a}:{p}"),
                (a, None) => a.to_string(),
            };
            let _ = write!(
                s,
                "{proto} {} -> {}",
                ep(src, self.sport),
                ep(dst, self.dport)
            );
            if let Some(flags) = &self.tcp_flags {
                let _ = write!(s, " [{flags}]");
            }
            if let Some(t) = self.icmp_type {
                let _ = write!(s, " {}", icmp_name(self.protocol.as_deref(), t));
                if let Some(c) = self.icmp_code.filter(|c| *c != 0) {
                    let _ = write!(s, " code {c}");
                }
            }
            if self.fragment {
                s.push_str(" (fragment)");
            }
            if let Some(ttl) = self.ttl {
                let _ = write!(s, " ttl {ttl}");
            }
        } else {
            let mac = |m: Option<MacAddr>| m.map(|m| m.to_string()).unwrap_or("?".into());
            let _ = write!(
                s,
                "ethertype {} {} -> {}",
                self.ethertype.as_deref().unwrap_or("?"),
                mac(self.src_mac),
                mac(self.dst_mac)
            );
        }
        if let Some(vlan) = self.vlan {
            let _ = write!(s, " vlan {vlan}");
        }
        if let Some(t) = &self.tunnel {
            let _ = write!(s, " (vxlan {} -> {} vni {})", t.src, t.dst, t.vni);
        }
        s
    }
}

fn icmp_name(protocol: Option<&str>, t: u8) -> String {
    match (protocol, t) {
        (Some("icmp"), 8) | (Some("icmpv6"), 128) => "echo-request".into(),
        (Some("icmp"), 0) | (Some("icmpv6"), 129) => "echo-reply".into(),
        (Some("icmp"), 3) | (Some("icmpv6"), 1) => "unreachable".into(),
        (Some("icmp"), 11) | (Some("icmpv6"), 3) => "time-exceeded".into(),
        (Some("icmpv6"), 135) => "neighbor-solicitation".into(),
        (Some("icmpv6"), 136) => "neighbor-advertisement".into(),
        (Some("icmpv6"), 133) => "router-solicitation".into(),
        (Some("icmpv6"), 134) => "router-advertisement".into(),
        (_, t) => format!("type {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a];
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, l4: &[u8], tot_len: u16) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&tot_len.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
        h.extend_from_slice(&[10, 244, 0, 1, 10, 244, 0, 2]);
        h.extend_from_slice(l4);
        h
    }

    #[test]
    fn tcp_syn_cut_short_like_an_event_capture() {
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&[0u8; 200]);
        // The IPv4 header says 240 bytes; the capture has 128 of the frame.
        let frame = eth(0x0800, &ipv4(6, &tcp, 240));
        let v = PacketView::decode(&frame[..128]);
        assert_eq!(v.src, Some("10.244.0.1".parse().unwrap()));
        assert_eq!(v.dst, Some("10.244.0.2".parse().unwrap()));
        assert_eq!(v.protocol.as_deref(), Some("tcp"));
        assert_eq!((v.sport, v.dport), (Some(40000), Some(80)));
        assert_eq!(v.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(
            v.summary(),
            "TCP 10.244.0.1:40000 -> 10.244.0.2:80 [SYN] ttl 64"
        );
    }

    #[test]
    fn udp_and_icmp() {
        let udp = [0x30, 0x39, 0, 9, 0, 12, 0, 0, 1, 2, 3, 4];
        let v = PacketView::decode(&eth(0x0800, &ipv4(17, &udp, 32)));
        assert_eq!(v.summary(), "UDP 10.244.0.1:12345 -> 10.244.0.2:9 ttl 64");
        let icmp = [8, 0, 0, 0, 0, 7, 0, 1];
        let v = PacketView::decode(&eth(0x0800, &ipv4(1, &icmp, 28)));
        assert_eq!(v.icmp_type, Some(8));
        assert_eq!(
            v.summary(),
            "ICMP 10.244.0.1 -> 10.244.0.2 echo-request ttl 64"
        );
    }

    #[test]
    fn arp_fields() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 2];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 10, 244, 0, 9]);
        arp.extend_from_slice(&[0xee; 6]);
        arp.extend_from_slice(&[169, 254, 1, 1]);
        let v = PacketView::decode(&eth(0x0806, &arp));
        let a = v.arp.clone().unwrap();
        assert_eq!(a.op, "reply");
        assert_eq!(a.sender_ip, Some(Ipv4Addr::new(10, 244, 0, 9)));
        assert_eq!(a.target_ip, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(
            v.summary(),
            "ARP reply 10.244.0.9 is-at 02:00:00:00:00:0a (to 169.254.1.1)"
        );
    }

    #[test]
    fn a_vxlan_frame_shows_the_pods_packet_inside() {
        // An ICMP echo between pods, wrapped as from_pod sends it to another node,
        // cut to the event's 128 bytes.
        let icmp = [8, 0, 0, 0, 0, 7, 0, 1, 0xab, 0xab];
        let inner = eth(0x0800, &ipv4(1, &icmp, 30));
        let port = vethbpf_common::VXLAN_PORT.to_be_bytes();
        let mut udp = vec![0xab, 0x13, port[0], port[1], 0, 0, 0, 0];
        udp.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        udp.extend_from_slice(&inner);
        let len = (20 + udp.len()) as u16;
        udp[4..6].copy_from_slice(&(len - 20).to_be_bytes());
        let mut outer = ipv4(17, &udp, len);
        outer[12..20].copy_from_slice(&[192, 168, 77, 1, 192, 168, 77, 2]);
        let frame = eth(0x0800, &outer);
        let v = PacketView::decode(&frame[..frame.len().min(128)]);
        assert_eq!(v.src, Some("10.244.0.1".parse().unwrap()));
        assert_eq!(v.dst, Some("10.244.0.2".parse().unwrap()));
        assert_eq!(v.icmp_type, Some(8));
        assert_eq!(
            v.tunnel,
            Some(TunnelView {
                src: "192.168.77.1".parse().unwrap(),
                dst: "192.168.77.2".parse().unwrap(),
                vni: 1,
            })
        );
        assert_eq!(
            v.summary(),
            "ICMP 10.244.0.1 -> 10.244.0.2 echo-request ttl 64 (vxlan 192.168.77.1 -> 192.168.77.2 vni 1)"
        );
        // UDP to another port, or without the VNI flag: an ordinary UDP packet.
        let mut other = frame.clone();
        other[14 + 20 + 3] ^= 1;
        assert_eq!(PacketView::decode(&other).tunnel, None);
        let mut no_flag = frame.clone();
        no_flag[14 + 20 + 8] = 0;
        let v = PacketView::decode(&no_flag);
        assert_eq!((v.tunnel, v.protocol.as_deref()), (None, Some("udp")));
    }

    #[test]
    fn garbage_and_short_frames_decode_to_what_they_hold() {
        assert_eq!(PacketView::decode(&[1, 2, 3]), PacketView::default());
        let v = PacketView::decode(&eth(0x88cc, &[0; 4]));
        assert_eq!(v.ethertype.as_deref(), Some("0x88cc"));
        assert!(v.summary().starts_with("ethertype 0x88cc"));
    }
}
