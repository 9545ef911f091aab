//! [`FakeNetlink`]: an in-memory [`Netlink`] for unit tests that run without root.
//!
//! It behaves like the kernel where vethbpf's logic depends on it: per-namespace
//! links with indexes, veth pairs that die together (even across namespaces), links
//! that leave a namespace when moved (losing their addresses and routes and going
//! down), connected routes for addresses, and the errno the kernel would answer,
//! mapped to the same [`NetlinkError`] variants as [`super::RtNetlink`]. Every call is
//! logged, and [`FakeNetlink::fail_at`] makes the nth call of an operation fail so
//! that callers' rollback paths can be tested.
//!
//! Handles share one "world": [`FakeNetlink::namespace_for_fd`] returns the handle of
//! the namespace that a file descriptor stands for (by file identity), which is also
//! where [`Netlink::move_link_to_netns`] with that descriptor puts the link.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::{Ipv4Net, Ipv6Net};

use super::rt::{fmt_mac, fmt_route, fmt_route6};
use super::{LinkInfo, Netlink, NetlinkError, Route6Spec, RouteSpec, TcFilter, VxlanSpec};

/// The operation names accepted by [`FakeNetlink::fail_at`] and recorded in the log:
/// the [`Netlink`] method names.
pub(crate) const FAKE_OPS: &[&str] = &[
    "link_by_name",
    "link_by_index",
    "links",
    "add_veth",
    "add_veth_into",
    "del_link",
    "move_link_to_netns",
    "rename_link",
    "set_link_mac",
    "set_link_alias",
    "set_link_up",
    "set_link_mtu",
    "add_vxlan",
    "disable_ipv6_addr_gen",
    "add_address",
    "addresses",
    "add_route",
    "del_route",
    "routes",
    "add_address6",
    "addresses6",
    "add_route6",
    "del_route6",
    "routes6",
    "add_clsact",
    "set_bpf_filter",
    "del_filter",
    "ingress_filters",
];

/// Linux's IFNAMSIZ - 1.
const MAX_IFNAME_LEN: usize = 15;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FakeCall {
    /// Which namespace of the world the call was made in (0 = the one [`FakeNetlink::new`]
    /// made).
    pub(crate) netns: usize,
    /// The [`Netlink`] method name.
    pub(crate) op: &'static str,
    /// The arguments, human-readable.
    pub(crate) args: String,
    /// Whether the call succeeded.
    pub(crate) ok: bool,
}

/// What the fake knows about a link beyond [`LinkInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FakeLinkState {
    pub(crate) info: LinkInfo,
    /// The other end of a veth pair: (namespace, index), if it still exists.
    pub(crate) peer: Option<(usize, u32)>,
    /// [`Netlink::disable_ipv6_addr_gen`] was called on it.
    pub(crate) ipv6_addr_gen_disabled: bool,
    /// The kernel would have given it an IPv6 link-local address: it was brought up
    /// while address generation was still enabled.
    pub(crate) ipv6_link_local: bool,
}

#[derive(Clone, Debug)]
struct Link {
    /// World-unique identity, stable across moves; veth peers refer to it.
    uid: u64,
    index: u32,
    name: String,
    mac: [u8; 6],
    kind: Option<String>,
    up: bool,
    alias: Option<String>,
    peer: Option<u64>,
    /// IFF_LOOPBACK: its addresses' prefix routes go to the local table, not main.
    loopback: bool,
    addr_gen_disabled: bool,
    ipv6_link_local: bool,
    mtu: u32,
    /// A clsact qdisc.
    clsact: bool,
    /// What holds vethbpf's filter place on tc ingress: the classifier's kind and,
    /// for `bpf`, the program (the fake's program ids are the (st_ino of) the
    /// descriptor's file).
    filter: Option<(String, Option<u32>)>,
    /// The classid of a `bpf` filter.
    filter_classid: Option<u32>,
}

#[derive(Debug, Default)]
struct Namespace {
    links: Vec<Link>,
    next_index: u32,
    addresses: Vec<(u32, Ipv4Net)>,
    /// Routes added explicitly; connected routes are derived from addresses.
    routes: Vec<RouteSpec>,
    /// IPv6 addresses added explicitly (a generated link-local one is derived from
    /// the link's MAC).
    addresses6: Vec<(u32, Ipv6Net)>,
    /// IPv6 routes added explicitly.
    routes6: Vec<Route6Spec>,
    /// IPv4 neighbours with a link-layer address: (ifindex, address, MAC).
    neighbours: Vec<(u32, Ipv4Addr, [u8; 6])>,
    /// The kernel creates the local routing table lazily, with the first local
    /// address (lo going up counts: it gets 127.0.0.1). Until then every gateway's
    /// address type is "broadcast", so `onlink` gateway routes fail with EINVAL.
    local_table: bool,
}

#[derive(Debug, Default)]
struct World {
    namespaces: Vec<Namespace>,
    /// (st_dev, st_ino) of a file descriptor -> namespace.
    by_file: HashMap<(u64, u64), usize>,
    next_uid: u64,
    calls: Vec<FakeCall>,
    counts: HashMap<&'static str, usize>,
    /// (op, nth call, errno) to fail.
    faults: Vec<(&'static str, usize, i32)>,
}

/// An in-memory [`Netlink`]: a handle to one namespace of a shared fake world.
/// Cloning gives another handle to the same namespace.
#[derive(Clone, Debug)]
pub(crate) struct FakeNetlink {
    world: Arc<Mutex<World>>,
    ns: usize,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNetlink {
    /// A world with one namespace holding `lo` (index 1, up), like a node's.
    pub(crate) fn new() -> Self {
        let mut world = World::default();
        let ns = world.new_namespace(true);
        Self {
            world: Arc::new(Mutex::new(world)),
            ns,
        }
    }

    /// This handle's namespace number (as in [`FakeCall::netns`]).
    pub(crate) fn netns_id(&self) -> usize {
        self.ns
    }

    /// The handle of the namespace that `netns` designates: descriptors of the same
    /// file (same `st_dev`/`st_ino`) designate the same namespace. An unknown file
    /// gets a fresh namespace holding only `lo` (down), like a new network namespace.
    pub(crate) fn namespace_for_fd(
        &self,
        netns: BorrowedFd<'_>,
    ) -> Result<FakeNetlink, NetlinkError> {
        let key = file_identity(netns).map_err(|source| NetlinkError::Kernel {
            op: "namespace_for_fd",
            what: "netns fd".into(),
            source,
        })?;
        let mut world = self.lock();
        let ns = world.namespace_for(key);
        Ok(FakeNetlink {
            world: Arc::clone(&self.world),
            ns,
        })
    }

    /// Makes the `nth` call (1-based, counted from now over the whole world) of `op`
    /// (a [`Netlink`] method name, see [`FAKE_OPS`]) fail with EIO, before it has any
    /// effect.
    ///
    /// # Panics
    /// If `op` is not a [`Netlink`] method name or `nth` is 0: a typo must not make a
    /// rollback test pass vacuously.
    pub(crate) fn fail_at(&self, op: &'static str, nth: usize) {
        self.fail_at_with(op, nth, libc::EIO);
    }

    /// Like [`fail_at`](Self::fail_at) with the given errno, mapped like the real
    /// client's (EEXIST -> `Exists`, ENODEV/ENOENT/ESRCH -> `NotFound`, others ->
    /// `Kernel`).
    pub(crate) fn fail_at_with(&self, op: &'static str, nth: usize, errno: i32) {
        assert!(FAKE_OPS.contains(&op), "fail_at: unknown netlink op {op:?}");
        assert!(nth >= 1, "fail_at: calls are counted from 1");
        let mut world = self.lock();
        let already = world.counts.get(op).copied().unwrap_or(0);
        world.faults.push((op, already + nth, errno));
    }

    /// All calls so far, in order, in every namespace of the world.
    pub(crate) fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The names of the calls that changed something (not the lookups), in order:
    /// handy for asserting what a caller did and undid.
    pub(crate) fn mutations(&self) -> Vec<&'static str> {
        const READS: &[&str] = &[
            "link_by_name",
            "link_by_index",
            "links",
            "addresses",
            "routes",
            "addresses6",
            "routes6",
            "ingress_filters",
        ];
        self.lock()
            .calls
            .iter()
            .filter(|c| c.ok && !READS.contains(&c.op))
            .map(|c| c.op)
            .collect()
    }

    pub(crate) fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Seeds a link (not logged, no faults), e.g. a node's `eth0`. It is down and
    /// gets a generated MAC.
    pub(crate) fn seed_link(&self, name: &str, kind: Option<&str>) -> Result<u32, NetlinkError> {
        let mut world = self.lock();
        let op = "seed_link";
        validate_name(op, name)?;
        if world.ns(self.ns).by_name(name).is_some() {
            return Err(NetlinkError::Exists {
                op,
                what: format!("link {name:?}"),
            });
        }
        let uid = world.uid();
        Ok(world
            .ns_mut(self.ns)
            .insert(uid, name, kind.map(str::to_owned), None)
            .index)
    }

    /// A neighbour entry, as if ARP had resolved `ip` on link `index`.
    pub(crate) fn seed_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) {
        let ns = self.ns;
        self.lock().ns_mut(ns).neighbours.push((index, ip, mac));
    }

    /// The full state of a link of this namespace.
    pub(crate) fn link_state(&self, index: u32) -> Option<FakeLinkState> {
        let world = self.lock();
        let link = world.ns(self.ns).by_index(index)?;
        Some(FakeLinkState {
            info: link.info(),
            peer: link.peer.and_then(|uid| world.find_uid(uid)),
            ipv6_addr_gen_disabled: link.addr_gen_disabled,
            ipv6_link_local: link.ipv6_link_local,
        })
    }

    /// Puts a filter of another classifier (`kind`) in vethbpf's place on tc
    /// ingress of a link, as someone else's `tc filter add` would; `None` removes
    /// what is there, as `tc filter del` would.
    pub(crate) fn seed_filter(&self, index: u32, kind: Option<(&str, Option<u32>)>) {
        let mut world = self.lock();
        if let Some(link) = world.ns_mut(self.ns).by_index_mut(index) {
            link.filter = kind.map(|(k, id)| (k.to_owned(), id));
            link.filter_classid = None;
        }
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock leaves consistent data: every
        // operation validates before it mutates.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one operation: counts it, injects a fault if one is due, logs the result.
    fn call<T>(
        &mut self,
        op: &'static str,
        args: String,
        f: impl FnOnce(&mut World, usize) -> Result<T, NetlinkError>,
    ) -> Result<T, NetlinkError> {
        let ns = self.ns;
        let mut world = self.lock();
        let count = world.counts.entry(op).or_insert(0);
        *count += 1;
        let n = *count;
        let fault = world
            .faults
            .iter()
            .position(|&(o, nth, _)| o == op && nth == n);
        let result = match fault {
            Some(i) => {
                let (_, _, errno) = world.faults.remove(i);
                Err(errno_error(op, format!("{args} (injected fault)"), errno))
            }
            None => f(&mut world, ns),
        };
        world.calls.push(FakeCall {
            netns: ns,
            op,
            args,
            ok: result.is_ok(),
        });
        result
    }
}

impl World {
    fn new_namespace(&mut self, lo_up: bool) -> usize {
        let mut ns = Namespace {
            next_index: 1,
            ..Default::default()
        };
        let uid = self.uid();
        let lo = ns.insert(uid, "lo", None, Some([0; 6]));
        lo.loopback = true;
        lo.mtu = 65536;
        // The kernel never generates a link-local address on loopback.
        lo.addr_gen_disabled = true;
        let lo_index = lo.index;
        if lo_up {
            ns.set_up(lo_index);
        }
        self.namespaces.push(ns);
        self.namespaces.len() - 1
    }

    fn namespace_for(&mut self, key: (u64, u64)) -> usize {
        if let Some(&ns) = self.by_file.get(&key) {
            return ns;
        }
        let ns = self.new_namespace(false);
        self.by_file.insert(key, ns);
        ns
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    fn ns(&self, ns: usize) -> &Namespace {
        &self.namespaces[ns]
    }

    fn ns_mut(&mut self, ns: usize) -> &mut Namespace {
        &mut self.namespaces[ns]
    }

    fn find_uid(&self, uid: u64) -> Option<(usize, u32)> {
        self.namespaces
            .iter()
            .enumerate()
            .find_map(|(i, ns)| ns.links.iter().find(|l| l.uid == uid).map(|l| (i, l.index)))
    }

    /// Removes a link and what hangs off it (addresses, routes); returns it.
    fn take_link(&mut self, ns: usize, index: u32) -> Option<Link> {
        let n = self.ns_mut(ns);
        let pos = n.links.iter().position(|l| l.index == index)?;
        let link = n.links.remove(pos);
        n.addresses.retain(|(i, _)| *i != index);
        n.routes.retain(|r| r.oif != index);
        n.addresses6.retain(|(i, _)| *i != index);
        n.routes6.retain(|r| r.oif != index);
        Some(link)
    }
}

impl Namespace {
    fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    fn by_index_mut(&mut self, index: u32) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.index == index)
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index += 1;
            if self.by_index(i).is_none() {
                return i;
            }
        }
    }

    fn insert(
        &mut self,
        uid: u64,
        name: &str,
        kind: Option<String>,
        mac: Option<[u8; 6]>,
    ) -> &mut Link {
        let index = self.alloc_index();
        // Locally administered unicast, unique within the world (like a random MAC).
        let [_, _, _, _, u0, u1, u2, u3] = uid.to_be_bytes();
        let mac = mac.unwrap_or([0x02, 0xfa, u0, u1, u2, u3]);
        self.links.push(Link {
            uid,
            index,
            name: name.to_owned(),
            mac,
            kind,
            up: false,
            alias: None,
            peer: None,
            loopback: false,
            addr_gen_disabled: false,
            ipv6_link_local: false,
            mtu: 1500,
            clsact: false,
            filter: None,
            filter_classid: None,
        });
        let last = self.links.len() - 1;
        &mut self.links[last]
    }

    /// The main table as the kernel would list it: explicit routes plus the connected
    /// route of every address shorter than /32 on an up link.
    fn all_routes(&self) -> Vec<RouteSpec> {
        let mut routes: Vec<RouteSpec> = self
            .addresses
            .iter()
            .filter(|(index, net)| {
                net.prefix_len() < 32 && self.by_index(*index).is_some_and(|l| l.up && !l.loopback)
            })
            .map(|(index, net)| RouteSpec {
                dst: net.trunc(),
                oif: *index,
                gateway: None,
                scope_link: true,
                onlink: false,
            })
            .collect();
        routes.extend(self.routes.iter().cloned());
        routes
    }

    /// IPv6 addresses as the kernel would list them: the explicit ones, and the
    /// EUI-64 link-local address of a link that generated one.
    fn all_addresses6(&self) -> Vec<(u32, Ipv6Net)> {
        let mut out: Vec<(u32, Ipv6Net)> = self
            .links
            .iter()
            .filter(|l| l.ipv6_link_local)
            .filter_map(|l| {
                let lla = crate::state::ident::MacAddr(l.mac).link_local();
                Ipv6Net::new(lla, 64).ok().map(|n| (l.index, n))
            })
            .collect();
        out.extend(self.addresses6.iter().copied());
        out
    }

    /// The IPv6 main table: explicit routes plus the prefix route of every address
    /// on an up link.
    fn all_routes6(&self) -> Vec<Route6Spec> {
        let mut routes: Vec<Route6Spec> = Vec::new();
        for (index, net) in self.all_addresses6() {
            if !self.by_index(index).is_some_and(|l| l.up && !l.loopback) {
                continue;
            }
            let route = Route6Spec {
                dst: net.trunc(),
                oif: index,
                gateway: None,
            };
            if !routes.contains(&route) {
                routes.push(route);
            }
        }
        routes.extend(self.routes6.iter().cloned());
        routes
    }

    /// IFF_UP, with the kernel's side effects: loopback gets 127.0.0.1/8 (creating
    /// the local table), others an IPv6 link-local unless generation is disabled.
    fn set_up(&mut self, index: u32) {
        let Some(link) = self.by_index_mut(index) else {
            return;
        };
        link.up = true;
        if !link.addr_gen_disabled {
            link.ipv6_link_local = true;
        }
        if link.loopback {
            let localhost = Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).unwrap_or_default();
            if !self.addresses.contains(&(index, localhost)) {
                self.addresses.push((index, localhost));
            }
            self.local_table = true;
        }
    }

    fn link_exists(&self, op: &'static str, index: u32) -> Result<(), NetlinkError> {
        match self.by_index(index) {
            Some(_) => Ok(()),
            None => Err(NetlinkError::NotFound {
                op,
                what: format!("link index {index}"),
            }),
        }
    }
}

impl Link {
    fn info(&self) -> LinkInfo {
        LinkInfo {
            index: self.index,
            name: self.name.clone(),
            mac: Some(self.mac),
            kind: self.kind.clone(),
            up: self.up,
            alias: self.alias.clone(),
            mtu: self.mtu,
        }
    }
}

impl Netlink for FakeNetlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let op = "link_by_name";
        self.call(op, format!("{name:?}"), |w, ns| {
            // The kernel validates IFLA_IFNAME's length even for a lookup (ERANGE);
            // other invalid names are simply not found.
            if name.len() > MAX_IFNAME_LEN {
                return Err(errno_error(op, format!("link name {name:?}"), libc::ERANGE));
            }
            Ok(w.ns(ns).by_name(name).map(Link::info))
        })
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        self.call("link_by_index", index.to_string(), |w, ns| {
            Ok(w.ns(ns).by_index(index).map(Link::info))
        })
    }

    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        self.call("links", String::new(), |w, ns| {
            Ok(w.ns(ns).links.iter().map(Link::info).collect())
        })
    }

    fn add_veth(&mut self, name: &str, peer: &str) -> Result<u32, NetlinkError> {
        let op = "add_veth";
        self.call(op, format!("{name:?}, {peer:?}"), |w, ns| {
            validate_name(op, name)?;
            validate_name(op, peer)?;
            for n in [name, peer] {
                if w.ns(ns).by_name(n).is_some() {
                    return Err(NetlinkError::Exists {
                        op,
                        what: format!("link {n:?}"),
                    });
                }
            }
            if name == peer {
                // The kernel registers the peer first; the second register fails.
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {peer:?}"),
                });
            }
            let (uid_a, uid_b) = (w.uid(), w.uid());
            let n = w.ns_mut(ns);
            // Like the kernel, the peer is registered (and numbered) first.
            n.insert(uid_b, peer, Some("veth".into()), None).peer = Some(uid_a);
            let link = n.insert(uid_a, name, Some("veth".into()), None);
            link.peer = Some(uid_b);
            Ok(link.index)
        })
    }

    fn add_veth_into(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<u32, NetlinkError> {
        let op = "add_veth_into";
        let args = format!(
            "{name:?}, {}, mtu {mtu:?}, {peer:?}, fd {peer_netns:?}",
            fmt_mac(&mac)
        );
        self.call(op, args, |w, ns| {
            validate_name(op, name)?;
            validate_name(op, peer)?;
            let key = file_identity(peer_netns).map_err(|source| NetlinkError::Kernel {
                op,
                what: "peer netns fd".into(),
                source,
            })?;
            let target = w.namespace_for(key);
            // The kernel registers the peer first, then this end.
            if w.ns(target).by_name(peer).is_some() || (target == ns && name == peer) {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {peer:?}"),
                });
            }
            if w.ns(ns).by_name(name).is_some() {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {name:?}"),
                });
            }
            // is_valid_ether_addr(): not multicast, not all-zero.
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(errno_error(
                    op,
                    format!("address {}", fmt_mac(&mac)),
                    libc::EADDRNOTAVAIL,
                ));
            }
            // The veth's limits (ETH_MIN_MTU, ETH_MAX_MTU).
            if mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
                return Err(errno_error(op, format!("mtu {mtu:?}"), libc::EINVAL));
            }
            let (uid_a, uid_b) = (w.uid(), w.uid());
            let pod_end = w
                .ns_mut(target)
                .insert(uid_b, peer, Some("veth".into()), None);
            pod_end.peer = Some(uid_a);
            if let Some(m) = mtu {
                pod_end.mtu = m;
            }
            let link = w
                .ns_mut(ns)
                .insert(uid_a, name, Some("veth".into()), Some(mac));
            link.peer = Some(uid_b);
            if let Some(m) = mtu {
                link.mtu = m;
            }
            Ok(link.index)
        })
    }

    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = "del_link";
        self.call(op, index.to_string(), |w, ns| {
            let n = w.ns(ns);
            n.link_exists(op, index)?;
            if n.by_index(index).is_some_and(|l| l.kind.is_none()) {
                // lo and other links without rtnl_link_ops cannot be deleted.
                return Err(errno_error(
                    op,
                    format!("link index {index}"),
                    libc::EOPNOTSUPP,
                ));
            }
            let Some(link) = w.take_link(ns, index) else {
                return Ok(());
            };
            // Deleting one end of a veth pair deletes the other, wherever it is.
            if let Some((peer_ns, peer_index)) = link.peer.and_then(|uid| w.find_uid(uid)) {
                w.take_link(peer_ns, peer_index);
            }
            Ok(())
        })
    }

    fn move_link_to_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        let op = "move_link_to_netns";
        self.call(op, format!("{index}, fd {netns:?}"), |w, ns| {
            let what = || format!("link index {index}");
            w.ns(ns).link_exists(op, index)?;
            let key = file_identity(netns).map_err(|source| NetlinkError::Kernel {
                op,
                what: what(),
                source,
            })?;
            let target = w.namespace_for(key);
            if target == ns {
                return Ok(());
            }
            let Some(name) = w.ns(ns).by_index(index).map(|l| l.name.clone()) else {
                return Err(NetlinkError::NotFound { op, what: what() });
            };
            if w.ns(ns).by_index(index).is_some_and(|l| l.kind.is_none()) {
                // NETIF_F_NETNS_LOCAL: lo cannot leave its namespace.
                return Err(errno_error(op, what(), libc::EINVAL));
            }
            if w.ns(target).by_name(&name).is_some() {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {name:?} in the target namespace"),
                });
            }
            let Some(mut link) = w.take_link(ns, index) else {
                return Err(NetlinkError::NotFound { op, what: what() });
            };
            // The device is closed on the way, and keeps its index if it is free there.
            link.up = false;
            let t = w.ns_mut(target);
            if t.by_index(link.index).is_some() {
                link.index = t.alloc_index();
            }
            t.links.push(link);
            Ok(())
        })
    }

    fn rename_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let op = "rename_link";
        self.call(op, format!("{index}, {name:?}"), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            validate_name(op, name)?;
            if let Some(other) = n.by_name(name) {
                if other.index == index {
                    return Ok(());
                }
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {name:?}"),
                });
            }
            // Since Linux 6.2 an up link may be renamed, so no EBUSY here.
            if let Some(link) = n.by_index_mut(index) {
                link.name = name.to_owned();
            }
            Ok(())
        })
    }

    fn set_link_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let op = "set_link_mac";
        self.call(op, format!("{index}, {}", fmt_mac(&mac)), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            // is_valid_ether_addr(): not multicast, not all-zero.
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(errno_error(
                    op,
                    format!("link index {index} address {}", fmt_mac(&mac)),
                    libc::EADDRNOTAVAIL,
                ));
            }
            if let Some(link) = n.by_index_mut(index) {
                link.mac = mac;
            }
            Ok(())
        })
    }

    fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let op = "set_link_alias";
        self.call(op, format!("{index}, {alias:?}"), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            // IFALIASZ is 256 with the NUL.
            if alias.len() > 255 {
                return Err(errno_error(
                    op,
                    format!("alias of {} bytes", alias.len()),
                    libc::EINVAL,
                ));
            }
            if let Some(link) = n.by_index_mut(index) {
                link.alias = (!alias.is_empty()).then(|| alias.to_owned());
            }
            Ok(())
        })
    }

    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = "set_link_up";
        self.call(op, index.to_string(), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            n.set_up(index);
            Ok(())
        })
    }

    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let op = "set_link_mtu";
        self.call(op, format!("{index}, {mtu}"), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            // ETH_MIN_MTU..ETH_MAX_MTU of veth/vxlan.
            if !(68..=65535).contains(&mtu) {
                return Err(errno_error(
                    op,
                    format!("link index {index} mtu {mtu}"),
                    libc::EINVAL,
                ));
            }
            if let Some(link) = n.by_index_mut(index) {
                link.mtu = mtu;
            }
            Ok(())
        })
    }

    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32, NetlinkError> {
        let op = "add_vxlan";
        self.call(op, format!("{spec:?}"), |w, ns| {
            validate_name(op, &spec.name)?;
            let uid = w.uid();
            let n = w.ns_mut(ns);
            if n.by_name(&spec.name).is_some() {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("link {:?}", spec.name),
                });
            }
            let link = n.insert(uid, &spec.name, Some("vxlan".into()), None);
            link.mtu = spec.mtu;
            Ok(link.index)
        })
    }

    fn disable_ipv6_addr_gen(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = "disable_ipv6_addr_gen";
        self.call(op, index.to_string(), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            if let Some(link) = n.by_index_mut(index) {
                // Like the kernel: an address generated earlier stays.
                link.addr_gen_disabled = true;
            }
            Ok(())
        })
    }

    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let op = "add_address";
        self.call(op, format!("{index}, {addr}"), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            if n.addresses.contains(&(index, addr)) {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("{addr} on link index {index}"),
                });
            }
            n.addresses.push((index, addr));
            n.local_table = true;
            Ok(())
        })
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        self.call("addresses", format!("{index:?}"), |w, ns| {
            Ok(w.ns(ns)
                .addresses
                .iter()
                .filter(|(i, _)| index.is_none_or(|want| *i == want))
                .copied()
                .collect())
        })
    }

    fn add_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = "add_route";
        self.call(op, fmt_route(route), |w, ns| {
            let what = || fmt_route(route);
            let n = w.ns(ns);
            let einval = || Err(errno_error(op, what(), libc::EINVAL));
            if route.dst.trunc() != route.dst {
                // "Invalid prefix for given prefix length".
                return einval();
            }
            // The checks of fib_check_nh(), in its order.
            let dev = match (route.gateway, route.onlink) {
                // RTNH_F_ONLINK is only meaningful with a gateway.
                (None, true) => return einval(),
                (Some(_), true) if route.scope_link => return einval(),
                (_, _) => n.by_index(route.oif),
            };
            let Some(dev) = dev else {
                return Err(NetlinkError::NotFound { op, what: what() });
            };
            if let (Some(gw), false) = (route.gateway, route.onlink)
                && !gateway_reachable(n, gw, route.oif)
            {
                // "Nexthop has invalid gateway".
                return Err(errno_error(op, what(), libc::ENETUNREACH));
            }
            if !dev.up {
                // "Nexthop device is not up" / "Device for nexthop is not up".
                return Err(errno_error(op, what(), libc::ENETDOWN));
            }
            if route.gateway.is_some() && route.onlink && !n.local_table {
                // No local table yet: the gateway's address type is not unicast.
                return einval();
            }
            // NLM_F_EXCL: one route per destination in the table (same tos/metric).
            if n.all_routes().iter().any(|r| r.dst == route.dst) {
                return Err(NetlinkError::Exists { op, what: what() });
            }
            w.ns_mut(ns).routes.push(route.clone());
            Ok(())
        })
    }

    fn del_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = "del_route";
        self.call(op, fmt_route(route), |w, ns| {
            let n = w.ns_mut(ns);
            // Like `ip route del` (and RtNetlink): destination, interface and gateway
            // must match; scope, protocol and flags do not matter.
            let pos = n.routes.iter().position(|r| {
                r.dst == route.dst
                    && r.oif == route.oif
                    && (route.gateway.is_none() || r.gateway == route.gateway)
            });
            match pos {
                Some(p) => {
                    n.routes.remove(p);
                    Ok(())
                }
                None => Err(NetlinkError::NotFound {
                    op,
                    what: fmt_route(route),
                }),
            }
        })
    }

    fn routes(&mut self) -> Result<Vec<RouteSpec>, NetlinkError> {
        self.call("routes", String::new(), |w, ns| Ok(w.ns(ns).all_routes()))
    }

    fn add_address6(&mut self, index: u32, addr: Ipv6Net) -> Result<(), NetlinkError> {
        let op = "add_address6";
        self.call(op, format!("{index}, {addr}"), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            if n.all_addresses6().contains(&(index, addr)) {
                return Err(NetlinkError::Exists {
                    op,
                    what: format!("{addr} on link index {index}"),
                });
            }
            n.addresses6.push((index, addr));
            Ok(())
        })
    }

    fn addresses6(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Net)>, NetlinkError> {
        self.call("addresses6", format!("{index:?}"), |w, ns| {
            Ok(w.ns(ns)
                .all_addresses6()
                .into_iter()
                .filter(|(i, _)| index.is_none_or(|want| *i == want))
                .collect())
        })
    }

    fn usable_global_addresses6(
        &mut self,
        index: u32,
    ) -> Result<Vec<std::net::Ipv6Addr>, NetlinkError> {
        self.call("usable_global_addresses6", format!("{index}"), |w, ns| {
            Ok(w.ns(ns)
                .all_addresses6()
                .into_iter()
                .filter(|(i, n)| *i == index && !n.addr().is_unicast_link_local())
                .map(|(_, n)| n.addr())
                .collect())
        })
    }

    fn add_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError> {
        let op = "add_route6";
        self.call(op, fmt_route6(route), |w, ns| {
            let what = || fmt_route6(route);
            let n = w.ns(ns);
            if route.dst.trunc() != route.dst {
                return Err(errno_error(op, what(), libc::EINVAL));
            }
            let Some(dev) = n.by_index(route.oif) else {
                return Err(NetlinkError::NotFound { op, what: what() });
            };
            // ip6_route_check_nh(): a link-local gateway is on the given device as it
            // is; any other must be covered by a gatewayless route through it.
            if let Some(gw) = route.gateway
                && !gw.is_unicast_link_local()
                && !n
                    .all_routes6()
                    .iter()
                    .any(|r| r.oif == route.oif && r.gateway.is_none() && r.dst.contains(&gw))
            {
                return Err(errno_error(op, what(), libc::EHOSTUNREACH));
            }
            if !dev.up {
                return Err(errno_error(op, what(), libc::ENETDOWN));
            }
            // NLM_F_EXCL with the same metric: one route per destination and device.
            if n.all_routes6()
                .iter()
                .any(|r| r.dst == route.dst && r.oif == route.oif)
            {
                return Err(NetlinkError::Exists { op, what: what() });
            }
            w.ns_mut(ns).routes6.push(route.clone());
            Ok(())
        })
    }

    fn del_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError> {
        let op = "del_route6";
        self.call(op, fmt_route6(route), |w, ns| {
            let n = w.ns_mut(ns);
            let pos = n.routes6.iter().position(|r| {
                r.dst == route.dst
                    && r.oif == route.oif
                    && (route.gateway.is_none() || r.gateway == route.gateway)
            });
            match pos {
                Some(p) => {
                    n.routes6.remove(p);
                    Ok(())
                }
                None => Err(NetlinkError::NotFound {
                    op,
                    what: fmt_route6(route),
                }),
            }
        })
    }

    fn routes6(&mut self) -> Result<Vec<Route6Spec>, NetlinkError> {
        self.call("routes6", String::new(), |w, ns| Ok(w.ns(ns).all_routes6()))
    }

    fn neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, NetlinkError> {
        self.call("neighbour", format!("{ip} dev {index}"), |w, ns| {
            let n = w.ns(ns);
            n.link_exists("neighbour", index)?;
            Ok(n.neighbours
                .iter()
                .find(|(i, a, _)| *i == index && *a == ip)
                .map(|(_, _, mac)| *mac))
        })
    }

    fn probe_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        // Nobody answers ARP in the fake: the entry stays as seeded (if at all).
        self.call("probe_neighbour", format!("{ip} dev {index}"), |w, ns| {
            w.ns(ns).link_exists("probe_neighbour", index)
        })
    }

    fn add_clsact(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = "add_clsact";
        self.call(op, index.to_string(), |w, ns| {
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            if let Some(link) = n.by_index_mut(index) {
                link.clsact = true;
            }
            Ok(())
        })
    }

    fn set_bpf_filter(
        &mut self,
        index: u32,
        prog: BorrowedFd<'_>,
        name: &str,
        classid: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let op = "set_bpf_filter";
        self.call(op, format!("{index}, {name}"), |w, ns| {
            let id = file_identity(prog)
                .map_err(|_| errno_error(op, "program fd".into(), libc::EBADF))?
                .1 as u32;
            let n = w.ns_mut(ns);
            n.link_exists(op, index)?;
            let Some(link) = n.by_index_mut(index) else {
                return Ok(());
            };
            // The kernel: no clsact, no ingress hook to put a filter on ("parent
            // qdisc doesn't exist"); another classifier at the priority, a kind
            // that does not match.
            if !link.clsact || link.filter.as_ref().is_some_and(|(k, _)| k != "bpf") {
                return Err(errno_error(op, format!("link index {index}"), libc::EINVAL));
            }
            link.filter = Some(("bpf".into(), Some(id)));
            link.filter_classid = classid;
            Ok(())
        })
    }

    fn del_filter(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = "del_filter";
        self.call(op, index.to_string(), |w, ns| {
            if let Some(link) = w.ns_mut(ns).by_index_mut(index) {
                link.filter = None;
                link.filter_classid = None;
            }
            Ok(())
        })
    }

    fn ingress_filters(&mut self, indexes: &[u32]) -> Result<Vec<Option<TcFilter>>, NetlinkError> {
        self.call("ingress_filters", format!("{indexes:?}"), |w, ns| {
            let n = w.ns(ns);
            Ok(indexes
                .iter()
                .map(|&i| {
                    let link = n.by_index(i).filter(|l| l.clsact)?;
                    let (kind, id) = link.filter.clone()?;
                    Some(TcFilter {
                        program_name: id.map(|_| "from_pod".into()),
                        direct_action: id.is_some(),
                        kind,
                        program_id: id,
                        classid: link.filter_classid,
                    })
                })
                .collect())
        })
    }
}

/// Whether the kernel would accept `gw` as a gateway on `oif` without `onlink`: some
/// directly connected (gatewayless, scope link) route through `oif` covers it.
fn gateway_reachable(n: &Namespace, gw: Ipv4Addr, oif: u32) -> bool {
    n.all_routes()
        .iter()
        .any(|r| r.oif == oif && r.gateway.is_none() && r.scope_link && r.dst.contains(&gw))
}

/// The kernel's checks of a new interface name: the IFLA_IFNAME policy (at most
/// IFNAMSIZ - 1 bytes, else ERANGE) and dev_valid_name() (else EINVAL).
fn validate_name(op: &'static str, name: &str) -> Result<(), NetlinkError> {
    if name.len() > MAX_IFNAME_LEN {
        return Err(errno_error(op, format!("link name {name:?}"), libc::ERANGE));
    }
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(errno_error(op, format!("link name {name:?}"), libc::EINVAL));
    }
    Ok(())
}

/// The same errno mapping as the real client.
fn errno_error(op: &'static str, what: String, errno: i32) -> NetlinkError {
    NetlinkError::from_errno(op, what, errno)
}

fn file_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ns_file() -> File {
        // Each temporary file is a distinct inode: a distinct fake namespace.
        tempfile_in_tmp()
    }

    fn tempfile_in_tmp() -> File {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vethbpf-fake-ns-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&path).unwrap();
        // The open descriptor keeps the inode alive and unique.
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn new_world_has_lo() {
        let mut nl = FakeNetlink::new();
        let links = nl.links().unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].name, "lo");
        assert_eq!(links[0].index, 1);
        assert!(links[0].up);
        assert_eq!(links[0].kind, None);
        // An up lo has 127.0.0.1/8, whose prefix route is not in the main table.
        assert_eq!(nl.addresses(None).unwrap(), vec![(1, net("127.0.0.1/8"))]);
        assert!(nl.routes().unwrap().is_empty());
    }

    #[test]
    fn onlink_gateway_needs_a_local_table() {
        let host = FakeNetlink::new();
        let file = ns_file();
        let mut pod = host.namespace_for_fd(file.as_fd()).unwrap();
        let a = pod.add_veth("a", "b").unwrap();
        pod.set_link_up(a).unwrap();
        let default = RouteSpec {
            dst: net("0.0.0.0/0"),
            oif: a,
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
            scope_link: false,
            onlink: true,
        };
        // A fresh namespace without any IPv4 address: the kernel says EINVAL.
        assert!(matches!(
            pod.add_route(&default),
            Err(NetlinkError::Kernel { .. })
        ));
        pod.add_address(a, net("10.244.0.2/32")).unwrap();
        pod.add_route(&default).unwrap();
        // onlink with scope link is EINVAL too ("Nexthop has invalid scope").
        let mut scoped = default.clone();
        scoped.dst = net("10.0.0.0/8");
        scoped.scope_link = true;
        assert!(matches!(
            pod.add_route(&scoped),
            Err(NetlinkError::Kernel { .. })
        ));
    }

    #[test]
    fn veth_pair_created_down_and_paired() {
        let mut nl = FakeNetlink::new();
        let idx = nl.add_veth("vb-a", "tmp-a").unwrap();
        let host = nl.link_by_name("vb-a").unwrap().unwrap();
        let peer = nl.link_by_name("tmp-a").unwrap().unwrap();
        assert_eq!(host.index, idx);
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert!(!host.up && !peer.up);
        assert_ne!(host.mac, peer.mac);
        assert_eq!(
            nl.link_state(idx).unwrap().peer,
            Some((nl.netns_id(), peer.index))
        );
        assert_eq!(nl.link_by_index(idx).unwrap(), Some(host));
        assert_eq!(nl.link_by_index(999).unwrap(), None);
        assert_eq!(nl.link_by_name("nope").unwrap(), None);
    }

    #[test]
    fn duplicate_and_invalid_names() {
        let mut nl = FakeNetlink::new();
        nl.add_veth("a", "b").unwrap();
        assert!(matches!(
            nl.add_veth("a", "c"),
            Err(NetlinkError::Exists { op: "add_veth", .. })
        ));
        assert!(matches!(
            nl.add_veth("c", "b"),
            Err(NetlinkError::Exists { .. })
        ));
        assert!(matches!(
            nl.add_veth("x", "x"),
            Err(NetlinkError::Exists { .. })
        ));
        // 16 bytes: one more than the kernel accepts.
        let long = "a123456789012345";
        assert_eq!(long.len(), 16);
        // The kernel's IFLA_IFNAME policy answers ERANGE (checked against the
        // kernel in rt.rs's tests), not EINVAL.
        match nl.add_veth(long, "p") {
            Err(NetlinkError::Kernel { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ERANGE))
            }
            other => panic!("expected ERANGE, got {other:?}"),
        }
        nl.add_veth("a12345678901234", "p").unwrap(); // exactly 15 is fine
        for bad in ["", ".", "..", "a/b", "a b", "a:b"] {
            assert!(
                matches!(nl.add_veth(bad, "q"), Err(NetlinkError::Kernel { .. })),
                "{bad:?} accepted"
            );
        }
        // A failed creation leaves nothing behind.
        assert!(nl.link_by_name("q").unwrap().is_none());
    }

    #[test]
    fn deleting_one_side_deletes_the_other() {
        let mut nl = FakeNetlink::new();
        let a = nl.add_veth("a", "b").unwrap();
        let b = nl.link_by_name("b").unwrap().unwrap().index;
        nl.del_link(b).unwrap();
        assert!(nl.link_by_index(a).unwrap().is_none());
        assert!(matches!(
            nl.del_link(a),
            Err(NetlinkError::NotFound { op: "del_link", .. })
        ));
        match nl.del_link(1) {
            Err(NetlinkError::Kernel { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EOPNOTSUPP))
            }
            other => panic!("deleting lo: {other:?}"),
        }
    }

    #[test]
    fn move_rename_configure_in_pod_namespace() {
        let mut host = FakeNetlink::new();
        let file = ns_file();
        let mut pod = host.namespace_for_fd(file.as_fd()).unwrap();
        assert_ne!(pod.netns_id(), host.netns_id());
        // A fresh namespace has lo, down.
        let lo = pod.link_by_name("lo").unwrap().unwrap();
        assert!(!lo.up);

        let host_idx = host.add_veth("vb-1", "tmp-1").unwrap();
        let peer_idx = host.link_by_name("tmp-1").unwrap().unwrap().index;
        host.set_link_up(peer_idx).unwrap();
        host.add_address(peer_idx, net("10.0.0.1/24")).unwrap();
        host.move_link_to_netns(peer_idx, file.as_fd()).unwrap();
        assert!(host.link_by_name("tmp-1").unwrap().is_none());
        assert!(host.addresses(Some(peer_idx)).unwrap().is_empty());

        let moved = pod.link_by_name("tmp-1").unwrap().unwrap();
        assert!(!moved.up, "a moved link is down");
        assert!(
            pod.addresses(None).unwrap().is_empty(),
            "addresses do not move"
        );
        pod.rename_link(moved.index, "eth0").unwrap();
        pod.set_link_mac(moved.index, [0x02, 0, 0, 0, 0, 9])
            .unwrap();
        pod.set_link_up(moved.index).unwrap();
        pod.add_address(moved.index, net("10.244.0.2/32")).unwrap();
        let gw = RouteSpec {
            dst: net("169.254.1.1/32"),
            oif: moved.index,
            gateway: None,
            scope_link: true,
            onlink: false,
        };
        let default = RouteSpec {
            dst: net("0.0.0.0/0"),
            oif: moved.index,
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
            scope_link: false,
            onlink: true,
        };
        pod.add_route(&gw).unwrap();
        pod.add_route(&default).unwrap();
        assert_eq!(pod.routes().unwrap(), vec![gw.clone(), default.clone()]);
        assert_eq!(
            pod.addresses(Some(moved.index)).unwrap(),
            vec![(moved.index, net("10.244.0.2/32"))]
        );
        let eth0 = pod.link_by_name("eth0").unwrap().unwrap();
        assert_eq!(eth0.mac, Some([0x02, 0, 0, 0, 0, 9]));
        assert!(eth0.up);

        // The same file designates the same namespace.
        let again = host.namespace_for_fd(file.as_fd()).unwrap();
        assert_eq!(again.netns_id(), pod.netns_id());

        // Deleting the host side removes the pod side and its routes.
        host.del_link(host_idx).unwrap();
        assert!(pod.link_by_name("eth0").unwrap().is_none());
        assert!(pod.routes().unwrap().is_empty());
    }

    #[test]
    fn move_into_namespace_with_same_name_fails() {
        let mut host = FakeNetlink::new();
        let file = ns_file();
        let pod = host.namespace_for_fd(file.as_fd()).unwrap();
        pod.seed_link("eth0", Some("dummy")).unwrap();
        host.add_veth("vb-1", "eth0").unwrap();
        let peer = host.link_by_name("eth0").unwrap().unwrap().index;
        assert!(matches!(
            host.move_link_to_netns(peer, file.as_fd()),
            Err(NetlinkError::Exists { .. })
        ));
        assert!(host.link_by_index(peer).unwrap().is_some(), "nothing moved");
        // The index is kept where free, reallocated where taken.
        let other = ns_file();
        host.move_link_to_netns(peer, other.as_fd()).unwrap();
        let mut other_ns = host.namespace_for_fd(other.as_fd()).unwrap();
        assert_eq!(other_ns.link_by_name("eth0").unwrap().unwrap().index, peer);
    }

    #[test]
    fn rename_and_mac_errors() {
        let mut nl = FakeNetlink::new();
        let a = nl.add_veth("a", "b").unwrap();
        assert!(matches!(
            nl.rename_link(a, "b"),
            Err(NetlinkError::Exists { .. })
        ));
        nl.rename_link(a, "a").unwrap();
        assert!(matches!(
            nl.rename_link(77, "z"),
            Err(NetlinkError::NotFound { .. })
        ));
        assert!(matches!(
            nl.rename_link(a, "this-is-too-long0"),
            Err(NetlinkError::Kernel { .. })
        ));
        match nl.set_link_mac(a, [0x01, 0, 0, 0, 0, 1]) {
            Err(NetlinkError::Kernel { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EADDRNOTAVAIL))
            }
            other => panic!("multicast mac accepted: {other:?}"),
        }
        assert!(matches!(
            nl.set_link_mac(9, [2, 0, 0, 0, 0, 1]),
            Err(NetlinkError::NotFound { .. })
        ));
    }

    #[test]
    fn ipv6_addr_gen_must_precede_up() {
        let mut nl = FakeNetlink::new();
        let a = nl.add_veth("a", "b").unwrap();
        let b = nl.link_by_name("b").unwrap().unwrap().index;
        nl.disable_ipv6_addr_gen(a).unwrap();
        nl.set_link_up(a).unwrap();
        nl.set_link_up(b).unwrap();
        nl.disable_ipv6_addr_gen(b).unwrap(); // too late
        let sa = nl.link_state(a).unwrap();
        let sb = nl.link_state(b).unwrap();
        assert!(sa.ipv6_addr_gen_disabled && !sa.ipv6_link_local);
        assert!(sb.ipv6_addr_gen_disabled && sb.ipv6_link_local);
        assert!(matches!(
            nl.disable_ipv6_addr_gen(42),
            Err(NetlinkError::NotFound { .. })
        ));
    }

    #[test]
    fn addresses_and_connected_routes() {
        let mut nl = FakeNetlink::new();
        let a = nl.add_veth("a", "b").unwrap();
        nl.add_address(a, net("10.1.0.5/24")).unwrap();
        assert!(matches!(
            nl.add_address(a, net("10.1.0.5/24")),
            Err(NetlinkError::Exists { .. })
        ));
        assert!(matches!(
            nl.add_address(99, net("10.1.0.5/24")),
            Err(NetlinkError::NotFound { .. })
        ));
        // Down link: no connected route yet.
        assert!(nl.routes().unwrap().is_empty());
        nl.set_link_up(a).unwrap();
        assert_eq!(
            nl.routes().unwrap(),
            vec![RouteSpec {
                dst: net("10.1.0.0/24"),
                oif: a,
                gateway: None,
                scope_link: true,
                onlink: false,
            }]
        );
        // A gateway inside the connected prefix needs no onlink.
        nl.add_route(&RouteSpec {
            dst: net("10.9.0.0/16"),
            oif: a,
            gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
            scope_link: false,
            onlink: false,
        })
        .unwrap();
    }

    #[test]
    fn route_errors_like_the_kernel() {
        let mut nl = FakeNetlink::new();
        let a = nl.add_veth("a", "b").unwrap();
        let r = |dst: &str, gateway: Option<Ipv4Addr>, onlink: bool| RouteSpec {
            dst: net(dst),
            oif: a,
            gateway,
            scope_link: gateway.is_none(),
            onlink,
        };
        let host_route = r("10.244.0.2/32", None, false);
        let errno = |res: Result<(), NetlinkError>| match res {
            Err(NetlinkError::Kernel { source, .. }) => source.raw_os_error(),
            other => panic!("expected a kernel error, got {other:?}"),
        };
        assert_eq!(errno(nl.add_route(&host_route)), Some(libc::ENETDOWN));
        nl.set_link_up(a).unwrap();
        nl.add_route(&host_route).unwrap();
        assert!(matches!(
            nl.add_route(&host_route),
            Err(NetlinkError::Exists { .. })
        ));
        assert_eq!(
            errno(nl.add_route(&r("10.0.0.1/24", None, false))),
            Some(libc::EINVAL)
        );
        assert_eq!(
            errno(nl.add_route(&r("10.3.0.0/24", None, true))),
            Some(libc::EINVAL)
        );
        let gw = Some(Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(
            errno(nl.add_route(&r("0.0.0.0/0", gw, false))),
            Some(libc::ENETUNREACH)
        );
        let mut missing = host_route.clone();
        missing.oif = 1234;
        assert!(matches!(
            nl.add_route(&missing),
            Err(NetlinkError::NotFound { .. })
        ));

        nl.del_route(&host_route).unwrap();
        assert!(matches!(
            nl.del_route(&host_route),
            Err(NetlinkError::NotFound {
                op: "del_route",
                ..
            })
        ));
        assert!(nl.routes().unwrap().is_empty());
    }

    #[test]
    fn fault_injection_hits_the_nth_call_only() {
        let mut nl = FakeNetlink::new();
        nl.fail_at("add_veth", 2);
        nl.add_veth("a", "b").unwrap();
        match nl.add_veth("c", "d") {
            Err(NetlinkError::Kernel { op, source, .. }) => {
                assert_eq!(op, "add_veth");
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("expected the injected fault, got {other:?}"),
        }
        // No effect, and only once.
        assert!(nl.link_by_name("c").unwrap().is_none());
        nl.add_veth("c", "d").unwrap();

        // Counted from the moment of the call, with a chosen errno.
        nl.fail_at_with("add_veth", 1, libc::EEXIST);
        assert!(matches!(
            nl.add_veth("e", "f"),
            Err(NetlinkError::Exists { .. })
        ));

        let calls = nl.calls();
        let add_veth: Vec<bool> = calls
            .iter()
            .filter(|c| c.op == "add_veth")
            .map(|c| c.ok)
            .collect();
        assert_eq!(add_veth, vec![true, false, true, false]);
        assert_eq!(nl.mutations(), vec!["add_veth", "add_veth"]);
        nl.clear_calls();
        assert!(nl.calls().is_empty());
    }

    #[test]
    fn faults_count_across_namespaces() {
        let host = FakeNetlink::new();
        let file = ns_file();
        let mut pod = host.namespace_for_fd(file.as_fd()).unwrap();
        let mut host2 = host.clone();
        host.fail_at("set_link_up", 2);
        host2.set_link_up(1).unwrap();
        assert!(pod.set_link_up(1).is_err());
        let calls = host.calls();
        assert_eq!(calls[1].netns, pod.netns_id());
    }

    #[test]
    #[should_panic(expected = "unknown netlink op")]
    fn fail_at_rejects_typos() {
        FakeNetlink::new().fail_at("add_link", 1);
    }
}
