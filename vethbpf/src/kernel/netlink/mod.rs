//! A small netlink client: the link, address and route operations vethbpf needs,
//! behind a trait so that endpoint logic can be unit-tested with a fake (`fake.rs`,
//! test builds only) without root (youki's approach).
//!
//! A netlink socket belongs to the network namespace of the thread that opened it.
//! [`RtNetlink::connect`] therefore opens the socket in the *calling thread's*
//! namespace; to configure a pod, open it on a dedicated thread that has entered the
//! pod's namespace (see [`crate::kernel::netns::netlink_in`]): the socket stays in
//! that namespace whichever thread uses it afterwards. The client is synchronous
//! and has no thread or runtime of its own (`socket.rs`), and [`Netlink::apply`]
//! sends changes that do not depend on each other's answers in one round trip.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::ErrorKind;

#[cfg(test)]
mod fake;
mod rt;
mod socket;
mod tc;
mod unlist;

#[cfg(test)]
pub(crate) use fake::FakeNetlink;
pub use rt::RtNetlink;

/// A link as vethbpf sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND`, e.g. `"veth"`; `None` for links without one (lo).
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_IFALIAS`: vethbpf writes an endpoint's identity there (see
    /// [`crate::reconcile`]), so that it can be rebuilt from the kernel alone.
    pub alias: Option<String>,
    /// `IFLA_MTU`.
    pub mtu: u32,
}

/// A collect-metadata ("external") VXLAN device: one for every remote node, the
/// tunnel key of each packet says where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    /// UDP destination port (and the one it listens on).
    pub port: u16,
    pub mtu: u32,
}

/// An IPv4 route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    /// Output interface index.
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
    /// `scope link` (a directly reachable destination) rather than `scope global`.
    pub scope_link: bool,
    /// `onlink`: the gateway is reachable on `oif` even without a matching prefix.
    pub onlink: bool,
}

/// An IPv6 route in the main table (IPv6 routes have no scope; a link-local gateway
/// is reached on `oif` as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route6Spec {
    pub dst: Ipv6Net,
    /// Output interface index.
    pub oif: u32,
    pub gateway: Option<Ipv6Addr>,
}

/// vethbpf's cls_bpf filter on tc ingress of an interface is always at this
/// priority and handle (as Cilium's), protocol all: that is how it is found again,
/// and how `up --replace` and `reconcile` swap its program in place.
pub const TC_FILTER_PRIORITY: u16 = 1;
pub const TC_FILTER_HANDLE: u32 = 1;

/// What holds vethbpf's place on tc ingress of a link (see [`TC_FILTER_PRIORITY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcFilter {
    /// The classifier: `bpf` for cls_bpf (someone else's filter may be another).
    pub kind: String,
    /// The program a cls_bpf filter runs (`TCA_BPF_ID`).
    pub program_id: Option<u32>,
    /// Its name as the filter was given it (`TCA_BPF_NAME`).
    pub program_name: Option<String>,
    /// direct-action: the program's return code is the verdict.
    pub direct_action: bool,
    /// The filter's classid (`TCA_BPF_CLASSID`): on a pod's filter, its endpoint id.
    pub classid: Option<u32>,
}

/// A failed rtnetlink request; `Exists` and `NotFound` are the errnos callers
/// tell apart (EEXIST; ENOENT, ENODEV, ESRCH).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{op}: {what} already exists")]
    Exists { op: &'static str, what: String },
    #[error("{op}: {what} does not exist")]
    NotFound { op: &'static str, what: String },
    #[error("{op} ({what}) failed: {source}")]
    Kernel {
        op: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: unexpected reply from the kernel: {detail}")]
    Protocol { op: &'static str, detail: String },
}

impl NetlinkError {
    /// The error for a request the kernel refused with `errno`.
    pub(crate) fn from_errno(op: &'static str, what: String, errno: i32) -> Self {
        match errno {
            libc::EEXIST => NetlinkError::Exists { op, what },
            libc::ENODEV | libc::ENOENT | libc::ESRCH => NetlinkError::NotFound { op, what },
            _ => NetlinkError::Kernel {
                op,
                what,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// What kind of failure this is: something in the way is a conflict; the rest
    /// is the kernel's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetlinkError::Exists { .. } => ErrorKind::Conflict,
            NetlinkError::Connect(_)
            | NetlinkError::NotFound { .. }
            | NetlinkError::Kernel { .. }
            | NetlinkError::Protocol { .. } => ErrorKind::Other,
        }
    }
}

/// One change to a link, an address or a route, for [`Netlink::apply`].
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// [`Netlink::set_link_up`].
    LinkUp(u32),
    /// [`Netlink::set_link_alias`].
    Alias(u32, &'a str),
    /// [`Netlink::disable_ipv6_addr_gen`].
    NoIpv6AddrGen(u32),
    /// [`Netlink::add_address`].
    AddAddress(u32, Ipv4Net),
    /// [`Netlink::add_route`].
    AddRoute(&'a RouteSpec),
    /// [`Netlink::add_address6`].
    AddAddress6(u32, Ipv6Net),
    /// [`Netlink::add_route6`].
    AddRoute6(&'a Route6Spec),
    /// [`Netlink::add_clsact`].
    Clsact(u32),
    /// [`Netlink::set_bpf_filter`]: the link index, the program, its name, the
    /// classid.
    BpfFilter(u32, BorrowedFd<'a>, &'a str, Option<u32>),
}

/// The operations vethbpf performs through rtnetlink, in one network namespace.
pub trait Netlink {
    /// The link named `name` in this namespace, if any.
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError>;
    /// The link with index `index` in this namespace, if any.
    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError>;
    /// Every link in this namespace.
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError>;
    /// Creates a veth pair `name` <-> `peer`, both in this namespace and down.
    /// Returns the new link `name`'s index.
    fn add_veth(&mut self, name: &str, peer: &str) -> Result<u32, NetlinkError>;
    /// Creates a veth pair in one request: `name` in this namespace with the MAC
    /// `mac`, its peer `peer` in the namespace behind `peer_netns` (an open
    /// `/run/netns/..` or `/proc/../ns/net` file), both down and with the MTU `mtu`
    /// if given. Returns `name`'s index. Made where it belongs and named as it
    /// stays, the peer is never moved or renamed: each of those waits for an RCU
    /// grace period in the kernel.
    fn add_veth_into(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<u32, NetlinkError>;
    /// Deletes a link (a veth takes its peer with it). Returns once the link is gone
    /// from the namespace (name and index free, its routes, qdiscs and programs
    /// gone); the kernel may still be freeing it.
    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// Moves a link into the namespace behind `netns` (an open `/run/netns/..` or
    /// `/proc/../ns/net` file).
    fn move_link_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>)
    -> Result<(), NetlinkError>;
    /// Renames a link (it must be down).
    fn rename_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError>;
    /// Sets a link's MAC address.
    fn set_link_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError>;
    /// Sets `IFLA_IFALIAS` (at most 255 bytes).
    fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError>;
    /// Sets a link administratively up.
    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError>;
    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError>;
    /// Creates the VXLAN device of `spec` (down, no FDB learning); returns its index.
    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32, NetlinkError>;
    /// Stops the kernel from generating IPv6 link-local addresses on the link
    /// (`IFLA_INET6_ADDR_GEN_MODE` = none), so host-side veths carry no address at all.
    fn disable_ipv6_addr_gen(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// Adds an IPv4 address to a link.
    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError>;
    /// IPv4 addresses, of one link or of all links: `(ifindex, address/prefix)`.
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError>;
    /// Adds an IPv4 route to the main table.
    fn add_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError>;
    /// Deletes an IPv4 route from the main table.
    fn del_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError>;
    /// IPv4 unicast routes of the main table.
    fn routes(&mut self) -> Result<Vec<RouteSpec>, NetlinkError>;
    /// Adds an IPv6 address to a link, usable at once: `nodad` (no duplicate address
    /// detection: vethbpf hands out every address, and a pod's link is point to
    /// point).
    fn add_address6(&mut self, index: u32, addr: Ipv6Net) -> Result<(), NetlinkError>;
    /// IPv6 addresses, of one link or of all links: `(ifindex, address/prefix)`.
    fn addresses6(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Net)>, NetlinkError>;
    /// The global IPv6 addresses of link `index` a node may source traffic from: scope
    /// global, neither temporary (privacy), deprecated, tentative nor failed duplicate
    /// address detection; in the order the kernel lists them.
    fn usable_global_addresses6(&mut self, index: u32) -> Result<Vec<Ipv6Addr>, NetlinkError>;
    /// Adds an IPv6 route to the main table.
    fn add_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError>;
    /// Deletes an IPv6 route from the main table.
    fn del_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError>;
    /// IPv6 unicast routes of the main table.
    fn routes6(&mut self) -> Result<Vec<Route6Spec>, NetlinkError>;
    /// The link-layer address the kernel's neighbour table holds for the IPv4
    /// neighbour `ip` on link `index` (in any state that has one: reachable, stale,
    /// delay, probe, permanent); `None` if it has none.
    fn neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, NetlinkError>;
    /// Has the kernel resolve `ip` on link `index` (ARP), making the neighbour entry
    /// if it is missing: `ip neigh replace IP dev DEV use` (`NTF_USE`).
    fn probe_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError>;
    /// Gives the link a clsact qdisc, or keeps the one it has.
    fn add_clsact(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// Puts vethbpf's cls_bpf filter (direct-action, at [`TC_FILTER_PRIORITY`] and
    /// [`TC_FILTER_HANDLE`]) running `prog` on tc ingress of the link, which needs
    /// a clsact qdisc; a cls_bpf filter there already gets `prog` in place.
    /// `classid`: what the program reads as `skb->tc_classid` (a pod's endpoint id).
    fn set_bpf_filter(
        &mut self,
        index: u32,
        prog: BorrowedFd<'_>,
        name: &str,
        classid: Option<u32>,
    ) -> Result<(), NetlinkError>;
    /// Removes whatever filters hold [`TC_FILTER_PRIORITY`] on tc ingress of the
    /// link (someone else's filter in vethbpf's place). None there is fine.
    fn del_filter(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// What holds vethbpf's filter place on tc ingress of each link of `indexes`
    /// (in that order): `None` where nothing does, or the link has no clsact qdisc
    /// or is gone.
    fn ingress_filters(&mut self, indexes: &[u32]) -> Result<Vec<Option<TcFilter>>, NetlinkError>;

    /// Makes `changes`, in order; the real client sends them in one batch (one
    /// round trip). Like the kernel with a batch, every change is tried even after
    /// one fails, and the first failure is returned: the caller must be able to
    /// undo them all (deleting the link they are on does).
    fn apply(&mut self, changes: &[Change<'_>]) -> Result<(), NetlinkError> {
        let mut first = None;
        for change in changes {
            let result = match *change {
                Change::LinkUp(index) => self.set_link_up(index),
                Change::Alias(index, alias) => self.set_link_alias(index, alias),
                Change::NoIpv6AddrGen(index) => self.disable_ipv6_addr_gen(index),
                Change::AddAddress(index, addr) => self.add_address(index, addr),
                Change::AddRoute(route) => self.add_route(route),
                Change::AddAddress6(index, addr) => self.add_address6(index, addr),
                Change::AddRoute6(route) => self.add_route6(route),
                Change::Clsact(index) => self.add_clsact(index),
                Change::BpfFilter(index, prog, name, classid) => {
                    self.set_bpf_filter(index, prog, name, classid)
                }
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
