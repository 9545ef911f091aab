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
//!
//! Written once for both families ([`Family`]: `NAT` for IPv4, `NAT6` for IPv6); the
//! packet rewrite is IPv4's here, IPv6's in [`crate::egress6`].

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use vethbpf_common::{CtState, NAT_DIR_IN, NAT_DIR_OUT, NatScratch, Verdict};

use crate::{
    atomic,
    conntrack::{self, Pair as Sync},
    csum::{self, L4Csum},
    diag::{self, Diag},
    family::{Family, V4, V6},
    hdr::{ETH_HLEN, Ipv4Hdr, be16, linear, ptr_at, set_be16, set_ipv4_addr},
    l4::{L4_OFF, port_off},
    maps::NAT_SCRATCH,
};

/// Candidate ports tried for a new flow before it is dropped (`drop_nat_no_port`).
const RETRIES: u32 = 32;

/// An address and port (ICMP: identifier), as stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Xlate<A = u32> {
    pub addr: A,
    pub port: u16,
}

/// What new flows translate to.
pub struct Target<A = u32> {
    /// The NAT address, or the pod's own in identity mode.
    pub addr: A,
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

/// The translation an entry holds.
///
/// # Safety
/// `e` points to a NAT map value.
#[inline(always)]
unsafe fn xlate_of<F: Family>(e: *mut F::Entry) -> Xlate<F::Addr> {
    // SAFETY: as the caller promises.
    unsafe {
        Xlate {
            addr: F::addr(e),
            port: (*F::common(e)).port,
        }
    }
}

/// The reverse key a forward key and its translation imply.
#[inline(always)]
fn reverse_key<F: Family>(fwd: &F::Key, to: Xlate<F::Addr>) -> F::Key {
    F::key(
        *F::daddr(fwd),
        to.addr,
        F::dport(fwd),
        to.port,
        F::proto(fwd),
        NAT_DIR_IN,
    )
}

/// The forward key a reverse key and its pod's address and port imply.
#[inline(always)]
fn forward_key<F: Family>(rev: &F::Key, pod: Xlate<F::Addr>) -> F::Key {
    F::key(
        pod.addr,
        *F::saddr(rev),
        pod.port,
        F::sport(rev),
        F::proto(rev),
        NAT_DIR_OUT,
    )
}

/// The other entry of a pair, as it should be, written to this CPU's scratch:
/// built from one entry `e` under the forward or reverse tuple `t` (an IPv6 key and
/// entry on the stack too would not fit it). `None`: no scratch (never, an array).
///
/// # Safety
/// `e` points to a NAT map value.
#[inline(always)]
unsafe fn other_of<F: Family>(t: &F::Key, e: *mut F::Entry) -> Option<*mut Pair<F>> {
    let p = scratch::<Pair<F>>(SCRATCH_PAIR)?;
    // SAFETY: as the caller promises; `p` is this CPU's scratch.
    unsafe {
        let to = xlate_of::<F>(e);
        let c = F::common(e);
        let (addr, port) = if F::dir(t) == NAT_DIR_OUT {
            (*p).key = reverse_key::<F>(t, to);
            (*F::saddr(t), F::sport(t))
        } else {
            (*p).key = forward_key::<F>(t, to);
            (*F::daddr(t), F::dport(t))
        };
        (*p).val = F::entry(addr, port, (*c).flags, (*c).last_seen, (*c).ifindex);
        (*F::common(&raw mut (*p).val)).created = (*c).created;
    }
    Some(p)
}

/// A key and entry of a flow, in scratch.
#[repr(C)]
pub struct Pair<F: Family> {
    pub key: F::Key,
    pub val: F::Entry,
}

/// Scratch slots: the port search, and a key/entry pair (never both in use).
const SCRATCH_SEARCH: u32 = 0;
const SCRATCH_PAIR: u32 = 1;

const _: () = assert!(size_of::<Pair<V6>>() <= size_of::<NatScratch>());
const _: () = assert!(size_of::<Pair<V4>>() <= size_of::<NatScratch>());

/// This CPU's scratch slot `slot`, as a `T` (every user writes what it reads).
#[inline(always)]
fn scratch<T>(slot: u32) -> Option<*mut T> {
    NAT_SCRATCH.get_ptr_mut(slot).map(|p| p.cast::<T>())
}

/// The forward entry of the pod flow `key`, if there is one (for [`egress`]).
#[inline(always)]
pub fn lookup<F: Family>(key: &F::Key) -> Option<*mut F::Entry> {
    F::get(key)
}

/// The translation of a packet of the pod flow `key` (forward direction; `found` is
/// its entry from [`lookup`]), creating the flow if it is new (and `create`: later
/// fragments never create one).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn egress<F: Family>(
    key: &F::Key,
    found: Option<*mut F::Entry>,
    target: &Target<F::Addr>,
    ev: Event,
    create: bool,
    ifindex: u32,
    max_flows: u32,
    now: u64,
) -> Result<Xlate<F::Addr>, Verdict> {
    let t = key;
    let proto = F::proto(t);
    let mut replace = None;
    if let Some(e) = found {
        let c = F::common(e);
        // SAFETY: a NAT map value, valid for the program run.
        let (live, closed) = unsafe {
            (
                !(*c).expired(proto, now),
                CtState::of(proto, (*c).flags).is_closed(),
            )
        };
        // A new connection on the tuple of a finished one starts a new flow (it may
        // get another port).
        if live && !(ev.syn && closed) {
            // SAFETY: as above.
            let (xlate, intact) = unsafe {
                let xlate = xlate_of::<F>(e);
                let intact = !conntrack::touch(c, ev.set, now)
                    || other_of::<F>(t, e).is_none_or(|p| {
                        conntrack::sync_pair::<F>(&(*p).key, &mut (*p).val, (*c).flags, now)
                            == Sync::Intact
                    });
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
    create_flow::<F>(key, target, ev.syn, replace, ifindex, max_flows, now)
}

/// A new mapping for `key`, replacing its dead forward entry `replace` if there is
/// one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn create_flow<F: Family>(
    key: &F::Key,
    target: &Target<F::Addr>,
    syn: bool,
    replace: Option<*mut F::Entry>,
    ifindex: u32,
    max_flows: u32,
    now: u64,
) -> Result<Xlate<F::Addr>, Verdict> {
    match replace {
        None => {
            let max = u64::from(max_flows);
            if conntrack::flows() >= max
                && conntrack::flows_after_collect(now).unwrap_or(max) >= max
            {
                diag::report(Diag::NatTableFull, max_flows);
                return Err(Verdict::NatTableFull);
            }
        }
        // SAFETY: a NAT map value, valid for the program run.
        Some(e) => unsafe {
            let c = F::common(e);
            let seen = (*c).last_seen;
            if !atomic::compare_exchange(&raw mut (*c).last_seen, seen, now) {
                // Another CPU is renewing this very flow: use what it writes.
                return Ok(xlate_of::<F>(e));
            }
        },
    }
    let found = allocate::<F>(key, target, syn, ifindex, now);
    if found & FOUND == 0 {
        return Err(Verdict::DropNatNoPort);
    }
    let port = found as u16;
    let xlate = Xlate {
        addr: target.addr,
        port,
    };
    match replace {
        // SAFETY: as above; the compare-and-swap made this CPU its only writer.
        Some(e) => unsafe {
            F::set_head(e, xlate.addr, xlate.port, 0);
            let c = F::common(e);
            (*c).created = now;
            (*c).ifindex = ifindex;
        },
        None => {
            let Some(entry) = scratch::<F::Entry>(SCRATCH_PAIR) else {
                return Err(Verdict::DropNatError);
            };
            // SAFETY: this CPU's scratch, written before it is read.
            let entry = unsafe {
                entry.write(F::entry(xlate.addr, xlate.port, 0, now, ifindex));
                &*entry
            };
            if F::insert_new(key, entry) {
                conntrack::count_flow();
            } else {
                // Another CPU created the flow first: use its mapping, and drop the
                // reverse entry just taken if that one uses another port.
                let Some(won) = F::get(key) else {
                    return Err(Verdict::DropNatError);
                };
                // SAFETY: a NAT map value, valid for the program run.
                let won = unsafe { xlate_of::<F>(won) };
                if won != xlate {
                    F::remove(&reverse_key::<F>(key, xlate));
                }
                return Ok(won);
            }
        }
    }
    Ok(xlate)
}

/// A keyed hash of the tuple: where the port search starts.
#[inline(always)]
fn hash<F: Family>(t: &F::Key, seed: u32) -> u32 {
    let mut h = seed
        ^ F::fold(F::saddr(t))
        ^ F::fold(F::daddr(t)).rotate_left(13)
        ^ ((u32::from(F::sport(t)) << 16) | u32::from(F::dport(t)))
        ^ u32::from(F::proto(t));
    // lowbias32 (Chris Wellons' integer hash).
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// The port search of one new flow: its reverse entry as it will be written (the
/// key's port is the candidate being tried), and the range. It lives in the per-CPU
/// `NAT_SCRATCH` map, not on the stack: an IPv6 flow's keys and entries would not
/// fit the 512 bytes a call chain has next to the rest of `from_pod`.
#[repr(C)]
pub struct Search<F: Family> {
    /// The reverse key; its destination port is the candidate.
    rkey: F::Key,
    rval: F::Entry,
    now: u64,
    min: u16,
    range: u32,
    start: u32,
    /// Whether a finished TCP flow's port may be taken over.
    syn: bool,
    /// The port taken (network order), with [`FOUND`] set; 0 while searching.
    found: u32,
}

const _: () = assert!(size_of::<Search<V6>>() <= size_of::<NatScratch>());
const _: () = assert!(size_of::<Search<V4>>() <= size_of::<NatScratch>());
const _: () = assert!(align_of::<Search<V6>>() <= align_of::<NatScratch>());

/// What `bpf_loop` hands the callback: it must point to the stack.
#[repr(C)]
struct Cursor<F: Family> {
    search: *mut Search<F>,
}

const FOUND: u32 = 1 << 16;

/// Takes a NAT port for the pod flow `t`: writes its reverse entry and returns the
/// port (network order) with [`FOUND`] set: the pod's own if it is in range (or
/// `identity`) and free, else the first free one of up to [`RETRIES`] candidates.
/// 0: none.
#[inline(always)]
fn allocate<F: Family>(
    t: &F::Key,
    target: &Target<F::Addr>,
    syn: bool,
    ifindex: u32,
    now: u64,
) -> u32 {
    let Some(search) = scratch::<Search<F>>(SCRATCH_SEARCH) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch value, large and aligned enough (checked above),
    // this CPU's alone for the program run; every field is written before use, one
    // by one (a whole struct would be built on the stack first).
    let s = unsafe {
        let s = &mut *search;
        s.rkey = F::key(
            *F::daddr(t),
            target.addr,
            F::dport(t),
            F::sport(t),
            F::proto(t),
            NAT_DIR_IN,
        );
        s.rval = F::entry(*F::saddr(t), F::sport(t), 0, now, ifindex);
        s.now = now;
        s.min = target.min;
        s.range = u32::from(target.max.wrapping_sub(target.min)) + 1;
        s.start = hash::<F>(t, target.seed);
        s.syn = false;
        s.found = 0;
        s
    };
    // First a port nobody holds: one a finished connection left may still be in the
    // remote's TIME_WAIT for that tuple, where a new SYN is answered with an ACK and
    // the connection stalls until a retransmit. Only when no port is free does a new
    // TCP connection take over a finished one's (`s.syn`, second pass).
    let own = u16::from_be(F::sport(t));
    if target.identity || (target.min <= own && own <= target.max) {
        if claim::<F>(&s.rkey, &mut s.rval, target.identity && syn, now) {
            return FOUND | u32::from(F::sport(t));
        }
        if target.identity {
            return 0;
        }
    }
    search_ports(s);
    if s.found & FOUND == 0 && syn {
        s.syn = true;
        search_ports(s);
    }
    s.found
}

/// Up to [`RETRIES`] candidates of `search`.
#[inline(always)]
fn search_ports<F: Family>(search: &mut Search<F>) {
    let mut cursor = Cursor::<F> { search };
    // bpf_loop: the verifier checks the callback once, not once per iteration (a
    // plain loop of this many map operations costs it half a million instructions).
    // SAFETY: a plain helper call; `cursor` outlives it.
    unsafe {
        bpf_loop(
            RETRIES,
            try_port::<F> as *mut c_void,
            (&raw mut cursor).cast(),
            0,
        );
    }
}

/// One candidate of the port search (a `bpf_loop` callback): 1 stops the loop.
extern "C" fn try_port<F: Family>(i: u64, cursor: *mut Cursor<F>) -> i64 {
    // SAFETY: `bpf_loop` hands back the cursor `search_ports` gave it, which points
    // to the scratch value.
    let s = unsafe { &mut *(*cursor).search };
    // (`checked_rem`: a division that could panic would leave the function without
    // an exit, which the verifier refuses; the range is never 0.)
    let Some(offset) = s.start.wrapping_add(i as u32).checked_rem(s.range) else {
        return 1;
    };
    let port = s.min.wrapping_add(offset as u16).to_be();
    F::set_dport(&mut s.rkey, port);
    if claim::<F>(&s.rkey, &mut s.rval, s.syn, s.now) {
        s.found = FOUND | u32::from(port);
        return 1;
    }
    0
}

/// Makes the reverse key `rkey` ours: free, already ours, or reclaimable.
#[inline(always)]
fn claim<F: Family>(rkey: &F::Key, rval: &mut F::Entry, syn: bool, now: u64) -> bool {
    let Some(r) = F::get(rkey) else {
        return F::insert_new(rkey, rval);
    };
    let proto = F::proto(rkey);
    // SAFETY: a NAT map value, valid for the program run; `rval` a local entry.
    unsafe {
        let want = xlate_of::<F>(rval);
        let ifindex = (*F::common(rval)).ifindex;
        let c = F::common(r);
        if xlate_of::<F>(r) == want {
            // This flow's own, left from before its forward entry was lost or expired.
            F::set_head(r, want.addr, want.port, 0);
            (*c).last_seen = now;
            (*c).ifindex = ifindex;
            return true;
        }
        let seen = (*c).last_seen;
        if !conntrack::reclaimable(&*c, proto, now, syn)
            || !atomic::compare_exchange(&raw mut (*c).last_seen, seen, now)
        {
            return false;
        }
        F::set_head(r, want.addr, want.port, 0);
        (*c).created = now;
        (*c).ifindex = ifindex;
    }
    true
}

/// A reply (or an ICMP error about the flow, with `ev` = None: no state change) for
/// the reverse key `key`: where it goes, and the pod's host veth.
#[inline(always)]
pub fn ingress<F: Family>(
    key: &F::Key,
    ev: Option<Event>,
    now: u64,
) -> Option<(Xlate<F::Addr>, u32)> {
    let r = F::get(key)?;
    let c = F::common(r);
    // SAFETY: a NAT map value, valid for the program run.
    unsafe {
        if (*c).expired(F::proto(key), now) {
            return None;
        }
        let to = xlate_of::<F>(r);
        if let Some(ev) = ev
            && conntrack::touch(c, ev.set, now)
        {
            // A forward entry that maps elsewhere now (the flow was re-created with
            // another port) leaves this reply a reply of the pod's flow all the same.
            if let Some(p) = other_of::<F>(key, r) {
                let _ = conntrack::sync_pair::<F>(&(*p).key, &mut (*p).val, (*c).flags, now);
            }
        }
        Some((to, (*c).ifindex))
    }
}

/// The translation of a live pod flow, without creating or refreshing it (for ICMP
/// errors the pod sends about a reply).
#[inline(always)]
pub fn lookup_forward<F: Family>(key: &F::Key, now: u64) -> Option<Xlate<F::Addr>> {
    let e = F::get(key)?;
    let proto = F::proto(key);
    // SAFETY: a NAT map value, valid for the program run; read only.
    unsafe {
        if (*F::common(e)).expired(proto, now) {
            return None;
        }
        Some(xlate_of::<F>(e))
    }
}

/// Rewrites the source (`source`) or destination address and port of the packet,
/// with its IPv4 and L4 checksums. `csum` is `None` for a later fragment: the address
/// only.
///
/// The address, the IPv4 header checksum and the port are written through packet
/// pointers: the header checksum is never offloaded, and a valid header sums to the
/// same whatever its address, so a CHECKSUM_COMPLETE `skb->csum` stays right (as with
/// `bpf_skb_store_bytes` and `bpf_l3_csum_replace`, two helper calls a packet this
/// saves). The L4 checksum goes through the kernel's helper, which knows the skb's
/// checksum state (under CHECKSUM_PARTIAL the field holds the pseudo header's sum).
#[inline(always)]
pub fn rewrite(
    ctx: &aya_ebpf::programs::TcContext,
    source: bool,
    proto: u8,
    csum: L4Csum,
    from: Xlate,
    to: Xlate,
) -> Result<(), ()> {
    let addr = from.addr != to.addr;
    let port = from.port != to.port && !csum.is_none();
    if addr {
        let (data, end) = linear(ctx, L4_OFF).ok_or(())?;
        let ip = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN).ok_or(())?;
        // SAFETY: bounds-checked just above; no helper runs while it is used.
        let ip = unsafe { &mut *ip };
        let check = csum::replace32(be16(&ip.check), from.addr, to.addr);
        set_be16(&mut ip.check, check);
        if source {
            set_ipv4_addr(&mut ip.src_addr, to.addr);
        } else {
            set_ipv4_addr(&mut ip.dst_addr, to.addr);
        }
    }
    if port {
        let off = port_off(proto, L4_OFF, source);
        let (data, end) = linear(ctx, off + 2).ok_or(())?;
        let p = ptr_at::<u16>(data, end, off).ok_or(())?;
        // SAFETY: bounds-checked just above; the L4 header is 2-byte aligned.
        unsafe { p.write(to.port) };
    }
    // The helpers may move packet data: after every pointer above is done with.
    if addr {
        csum::l4_replace_addr(ctx, csum, from.addr, to.addr)?;
    }
    if port {
        csum::l4_replace2(ctx, csum, from.port, to.port)?;
    }
    Ok(())
}
