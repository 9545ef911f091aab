//! Fragments: only the first fragment of a datagram carries its ports, so they are
//! kept per datagram (addresses, IP id, protocol, direction) when a first fragment of
//! a tracked flow passes, and looked up for the fragments that follow (Cilium's
//! IPV4_FRAG_DATAGRAMS map). Fragments that arrive before their first are not
//! reassembled here: the caller counts and drops them (from a pod) or leaves them to
//! the node stack (from the uplink).

use vethbpf_common::{FRAG_TIMEOUT, FragEntry, FragKey};

use crate::{l4::Ip, maps::FRAGS};

#[inline(always)]
fn key(ip: &Ip, dir: u8) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        dir,
    }
}

/// Remembers the ports of the datagram whose first fragment `ip` is.
#[inline(always)]
pub fn record(ip: &Ip, dir: u8, sport: u16, dport: u16, now: u64) {
    let entry = FragEntry {
        sport,
        dport,
        _pad: 0,
        last_seen: now,
    };
    // A full LRU map drops its oldest datagram: only fragments of that one suffer.
    let _ = FRAGS.insert(key(ip, dir), entry, 0);
}

/// The ports of the datagram the later fragment `ip` belongs to, if its first
/// fragment was seen within the reassembly timeout.
#[inline(always)]
pub fn ports(ip: &Ip, dir: u8, now: u64) -> Option<(u16, u16)> {
    // SAFETY: the value is only read, and stays valid for the program run.
    let e = unsafe { FRAGS.get(key(ip, dir)) }?;
    if now.saturating_sub(e.last_seen) > FRAG_TIMEOUT {
        return None;
    }
    Some((e.sport, e.dport))
}
