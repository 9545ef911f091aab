//! The real kernel behind the endpoint traits.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use vethbpf_common::{
    EndpointInfo, EndpointInfo6, EndpointSlot, PROG_FROM_POD, Route, ipv4_to_map,
};

use super::{Datapath, EndpointError, Env, Namespaces, PodProgram};
use crate::datapath::maps::{EndpointCounters, Maps};
use crate::datapath::{self, AttachMode, PinnedProgram, Pins};
use crate::egress::table::Table;
use crate::kernel::bpffs;
use crate::kernel::netlink::{Netlink, RtNetlink};
use crate::kernel::netns;
use crate::state::NodeConfig;

/// Runs `f` with the real kernel behind the endpoint traits: rtnetlink in the
/// calling thread's network namespace (the node's), named namespaces under
/// /run/netns, and the node's pinned datapath.
pub fn with_kernel<T, E>(
    node: &NodeConfig,
    f: impl FnOnce(&mut Env<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<EndpointError>,
{
    let mut dp = PinnedDatapath::open(node)?;
    with_datapath(&mut dp, f)
}

/// [`with_kernel`] for a node whose pins are gone (someone unmounted its bpffs):
/// every map entry and attachment went with them, so `down` can still remove
/// links, namespaces and state.
pub fn with_kernel_without_pins<T, E>(f: impl FnOnce(&mut Env<'_>) -> Result<T, E>) -> Result<T, E>
where
    E: From<EndpointError>,
{
    with_datapath(&mut GoneDatapath, f)
}

fn with_datapath<T, E>(
    dp: &mut dyn Datapath,
    f: impl FnOnce(&mut Env<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<EndpointError>,
{
    let mut nl = RtNetlink::connect().map_err(EndpointError::from)?;
    let mut ns = KernelNamespaces;
    let mut env = Env {
        node: &mut nl,
        ns: &mut ns,
        dp,
    };
    f(&mut env)
}

/// Pod namespaces through [`crate::kernel::netns`].
pub(crate) struct KernelNamespaces;

impl Namespaces for KernelNamespaces {
    fn named_exists(&self, name: &str) -> bool {
        netns::named_path(name).exists()
    }
    fn check_create(&self, name: &str) -> Result<(), EndpointError> {
        Ok(netns::check_create_lasting(name)?)
    }
    fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError> {
        Ok(netns::create_named(name)?)
    }
    fn delete(&mut self, name: &str) -> Result<(), EndpointError> {
        Ok(netns::delete_named(name)?)
    }
    fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError> {
        Ok(netns::resolve(spec)?)
    }
    fn open(&self, netns: &Path) -> Result<OwnedFd, EndpointError> {
        Ok(netns::open(netns)?)
    }
    fn netlink_in(&mut self, netns: &Path) -> Result<Box<dyn Netlink>, EndpointError> {
        Ok(Box::new(netns::netlink_in::<EndpointError>(netns)?))
    }
}

/// The pinned program and maps of a node that is up.
pub(crate) struct PinnedDatapath {
    pins: Pins,
    maps: Maps,
    mode: AttachMode,
    /// `from_pod`, opened the first time a filter needs it.
    program: Option<PinnedProgram>,
}

impl PinnedDatapath {
    /// The counters of endpoint ids `0..=max_id`, indexed by id.
    pub(crate) fn counters_upto(
        &self,
        max_id: u32,
    ) -> Result<Vec<EndpointCounters>, EndpointError> {
        Ok(self.maps.counters_upto(max_id)?)
    }

    pub(crate) fn open(node: &NodeConfig) -> Result<Self, EndpointError> {
        bpffs::check_lasting(&node.bpffs_dir)?;
        let pins = Pins::new(&node.bpffs_dir);
        let maps = Maps::open(&pins)?;
        Ok(PinnedDatapath {
            pins,
            maps,
            mode: node.pod_attach,
            program: None,
        })
    }
}

impl Datapath for PinnedDatapath {
    fn pod_attach(&self) -> AttachMode {
        self.mode
    }
    fn pod_program(&mut self) -> Result<PodProgram<'_>, EndpointError> {
        let program = match &mut self.program {
            Some(p) => p,
            slot => slot.insert(PinnedProgram::open(&self.pins, PROG_FROM_POD)?),
        };
        Ok(PodProgram {
            fd: program.fd(),
            id: program.id(),
        })
    }
    fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        Ok(datapath::attach(
            &self.pins,
            PROG_FROM_POD,
            host_veth,
            AttachMode::Tcx,
        )?)
    }
    fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        Ok(datapath::detach(&self.pins, PROG_FROM_POD, host_veth)?)
    }
    fn relink(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        Ok(datapath::relink(&self.pins, PROG_FROM_POD, host_veth)?)
    }
    fn put_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), EndpointError> {
        Ok(self.maps.put_endpoint(ifindex, info)?)
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), EndpointError> {
        self.maps.del_endpoint(ifindex)?;
        // The endpoint's NAT flows go with it: its interface index may be given to
        // another pod, which must not inherit them.
        Table::remove_endpoint_flows_at(&self.pins, ifindex)?;
        Ok(())
    }
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), EndpointError> {
        Ok(self.maps.put_route(net, route)?)
    }
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError> {
        Ok(self.maps.del_route(net)?)
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), EndpointError> {
        Ok(self.maps.reset_counters(id)?)
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
        Ok(self.maps.routes())
    }
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
        Ok(self.maps.endpoints())
    }
    fn slot(&self, id: u32) -> Option<EndpointSlot> {
        self.maps.slot(id)
    }
    fn addr_entry(&self, ip: Ipv4Addr) -> Option<u32> {
        self.maps.addr_entry(ipv4_to_map(ip.octets()))
    }
    fn put_endpoint6(&mut self, ifindex: u32, info: &EndpointInfo6) -> Result<(), EndpointError> {
        Ok(self.maps.put_endpoint6(ifindex, info)?)
    }
    fn del_endpoint6(&mut self, ifindex: u32) -> Result<(), EndpointError> {
        Ok(self.maps.del_endpoint6(ifindex)?)
    }
    fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), EndpointError> {
        Ok(self.maps.put_route6(net, route)?)
    }
    fn del_route6(&mut self, net: Ipv6Net) -> Result<(), EndpointError> {
        Ok(self.maps.del_route6(net)?)
    }
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, EndpointError> {
        Ok(self.maps.routes6())
    }
    fn endpoint6_entries(&self) -> Result<Vec<(u32, EndpointInfo6)>, EndpointError> {
        Ok(self.maps.endpoints6())
    }
    fn links(&self) -> Vec<(String, Option<u32>)> {
        datapath::pinned_links(&self.pins, PROG_FROM_POD)
            .into_iter()
            .map(|host| {
                let program = datapath::link_ids(&self.pins, PROG_FROM_POD, &host).map(|(_, p)| p);
                (host, program)
            })
            .collect()
    }
}

/// The datapath of a node whose pins are gone (its bpffs was unmounted): every map
/// entry and attachment went with them, so removing one is done already. Lets
/// `down` clean up links, namespaces and state all the same.
pub(crate) struct GoneDatapath;

impl Datapath for GoneDatapath {
    fn pod_attach(&self) -> AttachMode {
        AttachMode::Tc
    }
    fn pod_program(&mut self) -> Result<PodProgram<'_>, EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn attach(&mut self, _host_veth: &str) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn detach(&mut self, _host_veth: &str) -> Result<(), EndpointError> {
        Ok(())
    }
    fn relink(&mut self, _host_veth: &str) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn put_endpoint(&mut self, _ifindex: u32, _info: &EndpointInfo) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_endpoint(&mut self, _ifindex: u32) -> Result<(), EndpointError> {
        Ok(())
    }
    fn put_route(&mut self, _net: Ipv4Net, _route: &Route) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_route(&mut self, _net: Ipv4Net) -> Result<(), EndpointError> {
        Ok(())
    }
    fn reset_counters(&mut self, _id: u32) -> Result<(), EndpointError> {
        Ok(())
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
        Ok(Vec::new())
    }
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
        Ok(Vec::new())
    }
    fn slot(&self, _id: u32) -> Option<EndpointSlot> {
        None
    }
    fn addr_entry(&self, _ip: Ipv4Addr) -> Option<u32> {
        None
    }
    fn put_endpoint6(&mut self, _ifindex: u32, _info: &EndpointInfo6) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_endpoint6(&mut self, _ifindex: u32) -> Result<(), EndpointError> {
        Ok(())
    }
    fn put_route6(&mut self, _net: Ipv6Net, _route: &Route) -> Result<(), EndpointError> {
        Err(EndpointError::NotUp)
    }
    fn del_route6(&mut self, _net: Ipv6Net) -> Result<(), EndpointError> {
        Ok(())
    }
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, EndpointError> {
        Ok(Vec::new())
    }
    fn endpoint6_entries(&self) -> Result<Vec<(u32, EndpointInfo6)>, EndpointError> {
        Ok(Vec::new())
    }
    fn links(&self) -> Vec<(String, Option<u32>)> {
        Vec::new()
    }
}
