//! Source NAT of pod flows (Cilium's SNAT engine, bpf/lib/nat.h, as a model): the
//! forward and reverse entries of a flow, port allocation, and the packet rewrite.
//!
//! A new flow writes its reverse entry first (no-overwrite), then the forward one, so
//! a reply can never find a forward entry without its way back, and two flows never
//! share a reverse key: each candidate port is taken by inserting its reverse key
//! with BPF_NOEXIST, or by claiming an expired entry with a compare-and-swap on its
//! last-seen time (of CPUs racing for it, one wins).
//!
//! Ports: the pod's own source port if it lies in the NAT range and is free (most
//! flows keep their port), else a sequence that starts at a keyed hash of the tuple
//! (the seed is random per node, so outsiders cannot predict ports) and probes
//! upwards, a bounded number of times.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop};
use vethbpf_common::{CtState, NAT_DIR_IN, NatEntry, NatKey, Verdict};

use crate::{
    atomic,
    conntrack::{self, Pair},
    csum::{self, L4Csum},
    l4::{DADDR_OFF, L4_OFF, SADDR_OFF, port_off},
    maps::NAT,
};

/// Candidate ports tried for a new flow before it is dropped (`drop_nat_no_port`).
const RETRIES: u32 = 32;

/// An address and port (ICMP: identifier), as stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Xlate {
    pub addr: u32,
    pub port: u16,
}

/// What new flows translate to.
pub struct Target {
    /// The NAT address, or the pod's own in identity mode.
    pub addr: u32,
    /// The NAT range, host order.
    pub min: u16,
    pub max: u16,
    /// No translation (no-masquerade): the flow keeps the pod's address and port and
    /// is only tracked.
    pub identity: bool,
    pub seed: u32,
}

/// What a packet means for its flow's state.
#[derive(Clone, Copy)]
pub struct Event {
    /// `CT_*` flags it sets.
    pub set: u16,
    /// TCP SYN without ACK.
    pub syn: bool,
}

/// The reverse entry a forward entry implies (key, and value as it should be).
#[inline(always)]
fn reverse_of(fwd: &NatKey, e: &NatEntry) -> (NatKey, NatEntry) {
    (
        NatKey {
            saddr: fwd.daddr,
            daddr: e.addr,
            sport: fwd.dport,
            dport: e.port,
            proto: fwd.proto,
            dir: NAT_DIR_IN,
            _pad: [0; 2],
        },
        NatEntry {
            addr: fwd.saddr,
            port: fwd.sport,
            ..*e
        },
    )
}

/// The forward entry a reverse entry implies.
#[inline(always)]
fn forward_of(rev: &NatKey, e: &NatEntry) -> (NatKey, NatEntry) {
    (
        NatKey {
            saddr: e.addr,
            daddr: rev.saddr,
            sport: e.port,
            dport: rev.sport,
            proto: rev.proto,
            dir: vethbpf_common::NAT_DIR_OUT,
            _pad: [0; 2],
        },
        NatEntry {
            addr: rev.daddr,
            port: rev.dport,
            ..*e
        },
    )
}

/// The forward entry of the pod flow `key`, if there is one (for [`egress`]).
#[inline(always)]
pub fn lookup(key: &NatKey) -> Option<*mut NatEntry> {
    NAT.get_ptr_mut(key)
}

/// The translation of a packet of the pod flow `key` (forward direction; `found` is
/// its entry from [`lookup`]), creating the flow if it is new (and `create`: later
/// fragments never create one).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn egress(
    key: &NatKey,
    found: Option<*mut NatEntry>,
    target: &Target,
    ev: Event,
    create: bool,
    ifindex: u32,
    max_flows: u32,
    now: u64,
) -> Result<Xlate, Verdict> {
    let mut replace = None;
    if let Some(e) = found {
        // SAFETY: a NAT map value, valid for the program run.
        let (live, closed) = unsafe {
            (
                !(*e).expired(key.proto, now),
                CtState::of(key.proto, (*e).flags).is_closed(),
            )
        };
        // A new connection on the tuple of a finished one starts a new flow (it may
        // get another port).
        if live && !(ev.syn && closed) {
            // SAFETY: as above.
            let (xlate, intact) = unsafe {
                let xlate = Xlate {
                    addr: (*e).addr,
                    port: (*e).port,
                };
                let intact = !conntrack::touch(e, ev.set, now) || {
                    let (rkey, rval) = reverse_of(key, &*e);
                    conntrack::sync_pair(&rkey, &rval, (*e).flags, now) == Pair::Intact
                };
                (xlate, intact)
            };
            if intact {
                return Ok(xlate);
            }
            // Its NAT port went to another flow (it had expired meanwhile): map anew.
        }
        replace = Some(e);
    }
    if !create {
        return Err(Verdict::DropFragUnknown);
    }
    create_flow(key, target, ev.syn, replace, ifindex, max_flows, now)
}

/// A new mapping for `key`, replacing its dead forward entry `replace` if there is
/// one.
#[inline(always)]
fn create_flow(
    key: &NatKey,
    target: &Target,
    syn: bool,
    replace: Option<*mut NatEntry>,
    ifindex: u32,
    max_flows: u32,
    now: u64,
) -> Result<Xlate, Verdict> {
    match replace {
        None => {
            let max = u64::from(max_flows);
            if conntrack::flows() >= max
                && conntrack::flows_after_collect(now).unwrap_or(max) >= max
            {
                return Err(Verdict::NatTableFull);
            }
        }
        // SAFETY: a NAT map value, valid for the program run.
        Some(e) => unsafe {
            let seen = (*e).last_seen;
            if !atomic::compare_exchange(&raw mut (*e).last_seen, seen, now) {
                // Another CPU is renewing this very flow: use what it writes.
                return Ok(Xlate {
                    addr: (*e).addr,
                    port: (*e).port,
                });
            }
        },
    }
    let Some(port) = allocate(key, target, syn, ifindex, now) else {
        return Err(Verdict::DropNatNoPort);
    };
    let xlate = Xlate {
        addr: target.addr,
        port,
    };
    match replace {
        // SAFETY: as above; the compare-and-swap made this CPU its only writer.
        Some(e) => unsafe {
            conntrack::set_head(e, xlate.addr, xlate.port, 0);
            (*e).created = now;
            (*e).ifindex = ifindex;
        },
        None => {
            let entry = NatEntry {
                addr: xlate.addr,
                port: xlate.port,
                flags: 0,
                last_seen: now,
                created: now,
                ifindex,
                _pad: 0,
            };
            if NAT.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok() {
                conntrack::count_flow();
            } else {
                // Another CPU created the flow first: use its mapping, and drop the
                // reverse entry just taken if that one uses another port.
                // SAFETY: read only.
                let Some(won) = (unsafe { NAT.get(key) }) else {
                    return Err(Verdict::DropNatError);
                };
                let won = Xlate {
                    addr: won.addr,
                    port: won.port,
                };
                if won != xlate {
                    let (rkey, _) = reverse_of(key, &entry);
                    let _ = NAT.remove(rkey);
                }
                return Ok(won);
            }
        }
    }
    Ok(xlate)
}

/// A keyed hash of the tuple: where the port search starts.
#[inline(always)]
fn hash(key: &NatKey, seed: u32) -> u32 {
    let mut h = seed
        ^ key.saddr
        ^ key.daddr.rotate_left(13)
        ^ ((u32::from(key.sport) << 16) | u32::from(key.dport))
        ^ u32::from(key.proto);
    // lowbias32 (Chris Wellons' integer hash).
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// The port search of one new flow: its reverse entry as it will be written (the
/// key's port is the candidate being tried), and the range.
#[repr(C)]
struct Search {
    rkey: NatKey,
    rval: NatEntry,
    min: u16,
    range: u32,
    start: u32,
    /// Whether a finished TCP flow's port may be taken over.
    syn: bool,
    /// The port taken (network order), with [`FOUND`] set; 0 while searching.
    found: u32,
}

const FOUND: u32 = 1 << 16;

/// Takes a NAT port for the pod flow `key`: writes its reverse entry and returns the
/// port (network order): the pod's own if it is in range (or `identity`) and free,
/// else the first free one of up to [`RETRIES`] candidates.
#[inline(always)]
fn allocate(key: &NatKey, target: &Target, syn: bool, ifindex: u32, now: u64) -> Option<u16> {
    let mut search = Search {
        rkey: NatKey {
            saddr: key.daddr,
            daddr: target.addr,
            sport: key.dport,
            dport: key.sport,
            proto: key.proto,
            dir: NAT_DIR_IN,
            _pad: [0; 2],
        },
        rval: NatEntry {
            addr: key.saddr,
            port: key.sport,
            flags: 0,
            last_seen: now,
            created: now,
            ifindex,
            _pad: 0,
        },
        min: target.min,
        range: u32::from(target.max.wrapping_sub(target.min)) + 1,
        start: hash(key, target.seed),
        syn,
        found: 0,
    };
    // First a port nobody holds: one a finished connection left may still be in the
    // remote's TIME_WAIT for that tuple, where a new SYN is answered with an ACK and
    // the connection stalls until a retransmit. Only when no port is free does a new
    // TCP connection take over a finished one's (`search.syn`, second pass).
    search.syn = false;
    let own = u16::from_be(key.sport);
    if target.identity || (target.min <= own && own <= target.max) {
        if claim(&search.rkey, &search.rval, target.identity && syn, now) {
            return Some(key.sport);
        }
        if target.identity {
            return None;
        }
    }
    search_ports(&mut search);
    if search.found & FOUND == 0 && syn {
        search.syn = true;
        search_ports(&mut search);
    }
    (search.found & FOUND != 0).then_some(search.found as u16)
}

/// Up to [`RETRIES`] candidates of `search`.
#[inline(always)]
fn search_ports(search: &mut Search) {
    // bpf_loop: the verifier checks the callback once, not once per iteration (a
    // plain loop of this many map operations costs it half a million instructions).
    // SAFETY: a plain helper call; `search` outlives it.
    unsafe {
        bpf_loop(
            RETRIES,
            try_port as *mut c_void,
            (search as *mut Search).cast(),
            0,
        );
    }
}

/// One candidate of the port search (a `bpf_loop` callback): 1 stops the loop.
extern "C" fn try_port(i: u64, search: *mut Search) -> i64 {
    // SAFETY: `bpf_loop` hands back the context `allocate` gave it.
    let s = unsafe { &mut *search };
    // (`checked_rem`: a division that could panic would leave the function without
    // an exit, which the verifier refuses; the range is never 0.)
    let Some(offset) = s.start.wrapping_add(i as u32).checked_rem(s.range) else {
        return 1;
    };
    let port = s.min.wrapping_add(offset as u16);
    s.rkey.dport = port.to_be();
    if claim(&s.rkey, &s.rval, s.syn, s.rval.last_seen) {
        s.found = FOUND | u32::from(s.rkey.dport);
        return 1;
    }
    0
}

/// Makes the reverse key `rkey` ours: free, already ours, or reclaimable.
#[inline(always)]
fn claim(rkey: &NatKey, rval: &NatEntry, syn: bool, now: u64) -> bool {
    let Some(r) = NAT.get_ptr_mut(rkey) else {
        return NAT.insert(rkey, rval, u64::from(BPF_NOEXIST)).is_ok();
    };
    // SAFETY: a NAT map value, valid for the program run.
    unsafe {
        if (*r).addr == rval.addr && (*r).port == rval.port {
            // This flow's own, left from before its forward entry was lost or expired.
            conntrack::set_head(r, rval.addr, rval.port, 0);
            (*r).last_seen = now;
            (*r).ifindex = rval.ifindex;
            return true;
        }
        let seen = (*r).last_seen;
        if !conntrack::reclaimable(&*r, rkey.proto, now, syn)
            || !atomic::compare_exchange(&raw mut (*r).last_seen, seen, now)
        {
            return false;
        }
        conntrack::set_head(r, rval.addr, rval.port, 0);
        (*r).created = now;
        (*r).ifindex = rval.ifindex;
    }
    true
}

/// A reply (or an ICMP error about the flow, with `ev` = None: no state change) for
/// the reverse key `key`: where it goes, and the pod's host veth.
#[inline(always)]
pub fn ingress(key: &NatKey, ev: Option<Event>, now: u64) -> Option<(Xlate, u32)> {
    let r = NAT.get_ptr_mut(key)?;
    // SAFETY: a NAT map value, valid for the program run.
    unsafe {
        if (*r).expired(key.proto, now) {
            return None;
        }
        let to = Xlate {
            addr: (*r).addr,
            port: (*r).port,
        };
        if let Some(ev) = ev
            && conntrack::touch(r, ev.set, now)
        {
            let (fkey, fval) = forward_of(key, &*r);
            // A forward entry that maps elsewhere now (the flow was re-created with
            // another port) leaves this reply a reply of the pod's flow all the same.
            let _ = conntrack::sync_pair(&fkey, &fval, (*r).flags, now);
        }
        Some((to, (*r).ifindex))
    }
}

/// The translation of a live pod flow, without creating or refreshing it (for ICMP
/// errors the pod sends about a reply).
#[inline(always)]
pub fn lookup_forward(key: &NatKey, now: u64) -> Option<Xlate> {
    // SAFETY: read only.
    let e = unsafe { NAT.get(key) }?;
    if e.expired(key.proto, now) {
        return None;
    }
    Some(Xlate {
        addr: e.addr,
        port: e.port,
    })
}

/// Rewrites the source (`source`) or destination address and port of the packet,
/// with its IPv4 and L4 checksums. `csum` is `None` for a later fragment: the address
/// only.
#[inline(always)]
pub fn rewrite(
    ctx: &aya_ebpf::programs::TcContext,
    source: bool,
    proto: u8,
    csum: L4Csum,
    from: Xlate,
    to: Xlate,
) -> Result<(), ()> {
    if from.addr != to.addr {
        let off = if source { SADDR_OFF } else { DADDR_OFF };
        ctx.store(off, &to.addr, 0).map_err(|_| ())?;
        csum::l3_replace4(ctx, from.addr, to.addr)?;
        csum::l4_replace_addr(ctx, csum, from.addr, to.addr)?;
    }
    if from.port != to.port && !csum.is_none() {
        ctx.store(port_off(proto, L4_OFF, source), &to.port, 0)
            .map_err(|_| ())?;
        csum::l4_replace2(ctx, csum, from.port, to.port)?;
    }
    Ok(())
}
