//! The kernel as endpoint changes see it: three small traits, so that the logic,
//! rollback included, is unit-tested with fakes.

use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use vethbpf_common::{EndpointInfo, EndpointInfo6, EndpointSlot, Route};

use super::EndpointError;
use crate::datapath::AttachMode;
use crate::kernel::netlink::Netlink;

/// Pod namespaces: creating, deleting, resolving, and configuring the inside.
pub(crate) trait Namespaces {
    /// Whether a named namespace exists under /run/netns.
    fn named_exists(&self, name: &str) -> bool;
    /// Whether a namespace `name` made now would outlive this process (it would not
    /// be made from a mount namespace of our own, as under `ip netns exec`).
    fn check_create(&self, name: &str) -> Result<(), EndpointError>;
    fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError>;
    fn delete(&mut self, name: &str) -> Result<(), EndpointError>;
    /// `NAME` (under /run/netns) or a path; must exist and be a network namespace.
    fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError>;
    /// The namespace at `netns`, opened (for [`Netlink::add_veth_into`]).
    fn open(&self, netns: &Path) -> Result<OwnedFd, EndpointError>;
    /// A netlink client inside the namespace at `netns`, usable from this thread.
    fn netlink_in(&mut self, netns: &Path) -> Result<Box<dyn Netlink>, EndpointError>;
}

/// The pinned `from_pod` program, for a cls_bpf filter: a descriptor of it (what
/// netlink makes the filter with) and its id (what a filter that runs it reports).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PodProgram<'a> {
    pub(crate) fd: BorrowedFd<'a>,
    pub(crate) id: u32,
}

/// The pinned eBPF objects, as endpoint changes use them.
pub(crate) trait Datapath {
    /// How pods' host veths get `from_pod` on this node. With [`AttachMode::Tc`]
    /// the caller makes the filter through netlink with [`Datapath::pod_program`]
    /// (in the batch that sets the veth up); with [`AttachMode::Tcx`] it calls
    /// [`Datapath::attach`].
    fn pod_attach(&self) -> AttachMode;
    /// The pinned `from_pod` program, opened once per process.
    fn pod_program(&mut self) -> Result<PodProgram<'_>, EndpointError>;
    /// Attaches `from_pod` to the host veth with a TCX link, pinned.
    fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError>;
    /// Removes the host veth's pinned TCX link, if it has one (a tc filter goes
    /// with the veth and needs nothing).
    fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError>;
    /// Points the host veth's pinned TCX link at the pinned program.
    fn relink(&mut self, host_veth: &str) -> Result<(), EndpointError>;
    fn put_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), EndpointError>;
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), EndpointError>;
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), EndpointError>;
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError>;
    fn reset_counters(&mut self, id: u32) -> Result<(), EndpointError>;
    /// Every ROUTES entry (for `reconcile`).
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError>;
    /// Every ENDPOINTS entry, by host ifindex (for `reconcile`).
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError>;
    /// The `ENDPOINT_SLOTS` slot of endpoint id `id` (for `reconcile`).
    fn slot(&self, id: u32) -> Option<EndpointSlot>;
    /// The endpoint id `ENDPOINT_ADDRS` holds at the index of `ip`, 0 for none (for
    /// `reconcile`).
    fn addr_entry(&self, ip: Ipv4Addr) -> Option<u32>;
    fn put_endpoint6(&mut self, ifindex: u32, info: &EndpointInfo6) -> Result<(), EndpointError>;
    fn del_endpoint6(&mut self, ifindex: u32) -> Result<(), EndpointError>;
    fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), EndpointError>;
    fn del_route6(&mut self, net: Ipv6Net) -> Result<(), EndpointError>;
    /// Every ROUTES6 entry (for `reconcile`).
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, EndpointError>;
    /// Every ENDPOINTS6 entry, by host ifindex (for `reconcile`).
    fn endpoint6_entries(&self) -> Result<Vec<(u32, EndpointInfo6)>, EndpointError>;
    /// The host veths with a pinned TCX link of `from_pod` (whatever the node's
    /// mode: a pin no endpoint owns is removed), each with the id of the program
    /// the link runs (`None`: the link cannot be read).
    fn links(&self) -> Vec<(String, Option<u32>)>;
}

/// The kernel as `endpoint` commands see it.
pub struct Env<'a> {
    pub(crate) node: &'a mut dyn Netlink,
    pub(crate) ns: &'a mut dyn Namespaces,
    pub(crate) dp: &'a mut dyn Datapath,
}
