//! [`RtNetlink`]: the real [`Netlink`] client, on rtnetlink.
//!
//! rtnetlink is asynchronous; vethbpf's netlink use is a handful of sequential
//! requests, often on a thread that has just entered a pod's namespace. So each
//! client owns a current-thread tokio runtime: the connection task is spawned on it
//! and every call `block_on`s its request on the calling thread. No worker thread
//! exists that could end up in (or out of) the wrong namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tokio::runtime::Runtime;

use super::{LinkInfo, Netlink, NetlinkError, Route6Spec, RouteSpec, VxlanSpec};

/// A synchronous rtnetlink client bound to the network namespace of the thread
/// that called [`RtNetlink::connect`].
pub struct RtNetlink {
    // Declared before `rt` so that it is dropped first: the request channel closes,
    // then the runtime (and the connection task on it) goes away.
    handle: Handle,
    rt: Runtime,
}

impl std::fmt::Debug for RtNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtNetlink").finish_non_exhaustive()
    }
}

impl RtNetlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    ///
    /// Every call blocks the calling thread on the client's own runtime, so the
    /// client must be used from plain threads, not from async code running on
    /// another tokio runtime (tokio refuses to nest `block_on` and panics).
    pub fn connect() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            // netlink-proto's tokio socket is an `AsyncFd`: it needs the IO driver.
            .enable_io()
            .build()
            .map_err(NetlinkError::Connect)?;
        // The socket is registered with the reactor when it is created, so this must
        // happen inside the runtime's context. socket(2) itself runs right here, on
        // the calling thread, which is what ties it to this thread's namespace.
        let (connection, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(NetlinkError::Connect)?
        };
        // A current-thread runtime only polls this task while some `block_on` runs,
        // which is exactly when a request is waiting for its answer.
        rt.spawn(connection);
        Ok(Self { handle, rt })
    }

    fn get_link(
        &mut self,
        op: &'static str,
        what: String,
        request: rtnetlink::LinkGetRequest,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        let result = self
            .rt
            .block_on(async { request.execute().try_next().await });
        match result {
            Ok(Some(msg)) => Ok(Some(link_info(op, &msg)?)),
            Ok(None) => Ok(None),
            // A lookup of a missing link is an answer, not an error.
            Err(e) => match map_err(op, what, e) {
                NetlinkError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// `RTM_NEWLINK` without `NLM_F_CREATE`: changes an existing link (`ip link set`).
    fn change_link(
        &mut self,
        op: &'static str,
        what: impl FnOnce() -> String,
        message: LinkMessage,
    ) -> Result<(), NetlinkError> {
        let request = self.handle.link().change(message);
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err(op, what(), e))
    }

    /// All IPv6 addresses of a link; tests use it to check address generation.
    #[cfg(test)]
    pub(crate) fn ipv6_addresses(
        &mut self,
        index: u32,
    ) -> Result<Vec<std::net::Ipv6Addr>, NetlinkError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<AddressMessage> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| map_err("list IPv6 addresses", format!("link {index}"), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet6)
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            })
            .collect())
    }
}

impl Netlink for RtNetlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let request = self.handle.link().get().match_name(name.to_owned());
        self.get_link("get link", format!("link {name:?}"), request)
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let request = self.handle.link().get().match_index(index);
        self.get_link("get link", format!("link index {index}"), request)
    }

    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let op = "list links";
        let request = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| map_err(op, "all links".into(), e))?;
        messages.iter().map(|m| link_info(op, m)).collect()
    }

    fn add_veth(&mut self, name: &str, peer: &str) -> Result<u32, NetlinkError> {
        let op = "add veth";
        let what = || format!("veth {name:?} <-> {peer:?}");
        let request = self.handle.link().add(LinkVeth::new(name, peer).build());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err(op, what(), e))?;
        // RTM_NEWLINK does not answer with the new index; ask for it by name. Nothing
        // else should rename a link we just created under our own unique name.
        match self.link_by_name(name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::Protocol {
                op,
                detail: format!("{} was created but {name:?} cannot be found", what()),
            }),
        }
    }

    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let request = self.handle.link().del(index);
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("delete link", format!("link index {index}"), e))
    }

    fn move_link_to_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        // IFLA_NET_NS_FD: the kernel resolves the fd while handling the request,
        // before `change_link` returns, so borrowing it for this call is enough.
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.change_link(
            "move link to netns",
            || format!("link index {index} -> netns fd {}", netns.as_raw_fd()),
            message,
        )
    }

    fn rename_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).name(name).build();
        self.change_link(
            "rename link",
            || format!("link index {index} -> {name:?}"),
            message,
        )
    }

    fn set_link_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.change_link(
            "set link mac",
            || format!("link index {index} address {}", fmt_mac(&mac)),
            message,
        )
    }

    fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.change_link(
            "set link alias",
            || format!("link index {index} alias {alias:?}"),
            message,
        )
    }

    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.change_link("set link up", || format!("link index {index}"), message)
    }

    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change_link(
            "set link mtu",
            || format!("link index {index} mtu {mtu}"),
            message,
        )
    }

    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32, NetlinkError> {
        let op = "add vxlan";
        let what = || format!("vxlan {:?} external dstport {}", spec.name, spec.port);
        // `ip link add NAME type vxlan external dstport PORT nolearning`: no VNI,
        // no remote, no FDB; every packet's tunnel key comes from the eBPF program.
        let message = LinkVxlan::new(&spec.name, 0)
            .collect_metadata(true)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .build();
        // LinkVxlan::new always sets IFLA_VXLAN_ID; an external device must not
        // have one (the kernel refuses VNI + external), so drop it again.
        let message = without_vxlan_id(message);
        let request = self.handle.link().add(message);
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err(op, what(), e))?;
        match self.link_by_name(&spec.name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::Protocol {
                op,
                detail: format!("{} was created but cannot be found", what()),
            }),
        }
    }

    fn disable_ipv6_addr_gen(&mut self, index: u32) -> Result<(), NetlinkError> {
        // `ip link set DEV addrgenmode none`: IFLA_AF_SPEC { AF_INET6 {
        // IFLA_INET6_ADDR_GEN_MODE = IN6_ADDR_GEN_MODE_NONE } }. The kernel only
        // generates the link-local address when the link comes up, so this must
        // precede `set_link_up`; an address generated earlier stays.
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        match self.change_link(
            "disable IPv6 address generation",
            || format!("link index {index}"),
            message,
        ) {
            // EAFNOSUPPORT: IPv6 is disabled on this kernel (ipv6.disable=1) or
            // this device, so no address will ever be generated: the goal holds.
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                tracing::debug!(
                    index,
                    "IPv6 is not available on the link; nothing to disable"
                );
                Ok(())
            }
            other => other,
        }
    }

    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let request = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("add address", format!("{addr} on link index {index}"), e))
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let op = "list addresses";
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages: Vec<AddressMessage> = self
            .rt
            .block_on(request.execute().try_collect())
            .map_err(|e| {
                let what = match index {
                    Some(i) => format!("link index {i}"),
                    None => "all links".into(),
                };
                map_err(op, what, e)
            })?;
        let mut out = Vec::new();
        for m in messages
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
        {
            // For IPv4, IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
            // peer's on point-to-point links and equal to IFA_LOCAL otherwise.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = local.or(address) else {
                continue;
            };
            let net =
                Ipv4Net::new(ip, m.header.prefix_len).map_err(|_| NetlinkError::Protocol {
                    op,
                    detail: format!("address {ip} with prefix length {}", m.header.prefix_len),
                })?;
            out.push((m.header.index, net));
        }
        Ok(out)
    }

    fn add_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(RouteHeader::RT_TABLE_MAIN.into())
            .protocol(RouteProtocol::Static)
            .kind(RouteType::Unicast)
            .scope(if route.scope_link {
                RouteScope::Link
            } else {
                RouteScope::Universe
            })
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(route.oif);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        if route.onlink {
            // rtm_flags RTNH_F_ONLINK: for a single-nexthop route the kernel takes
            // the nexthop flags from the header.
            builder = builder.onlink();
        }
        let request = self.handle.route().add(builder.build());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("add route", fmt_route(route), e))
    }

    fn del_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        // Like `ip route del`: protocol 0, type 0 and scope RT_SCOPE_NOWHERE match any
        // route with this destination, output interface and gateway, whoever added it.
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(RouteHeader::RT_TABLE_MAIN.into())
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .scope(RouteScope::NoWhere)
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(route.oif);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        let request = self.handle.route().del(builder.build());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("delete route", fmt_route(route), e))
    }

    fn routes(&mut self) -> Result<Vec<RouteSpec>, NetlinkError> {
        let op = "list routes";
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the header filters of a
        // dump, so this is every IPv4 route of every table; filter here.
        let request = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let messages: Vec<RouteMessage> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| map_err(op, "IPv4 main table".into(), e))?;
        let mut out = Vec::new();
        for m in &messages {
            if let Some(spec) = route_spec(op, m)? {
                out.push(spec);
            }
        }
        Ok(out)
    }

    fn add_address6(&mut self, index: u32, addr: Ipv6Net) -> Result<(), NetlinkError> {
        let mut request =
            self.handle
                .address()
                .add(index, IpAddr::V6(addr.addr()), addr.prefix_len());
        // `ip -6 addr add ... nodad`: the 8-bit header flag for old kernels, the
        // 32-bit IFA_FLAGS attribute for new ones (the kernel reads the latter).
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("add address", format!("{addr} on link index {index}"), e))
    }

    fn addresses6(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Net)>, NetlinkError> {
        let op = "list IPv6 addresses";
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages: Vec<AddressMessage> = self
            .rt
            .block_on(request.execute().try_collect())
            .map_err(|e| {
                let what = match index {
                    Some(i) => format!("link index {i}"),
                    None => "all links".into(),
                };
                map_err(op, what, e)
            })?;
        let mut out = Vec::new();
        for m in messages
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet6)
        {
            let Some(ip) = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            let net =
                Ipv6Net::new(ip, m.header.prefix_len).map_err(|_| NetlinkError::Protocol {
                    op,
                    detail: format!("address {ip} with prefix length {}", m.header.prefix_len),
                })?;
            out.push((m.header.index, net));
        }
        Ok(out)
    }

    fn add_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(RouteHeader::RT_TABLE_MAIN.into())
            .protocol(RouteProtocol::Static)
            .kind(RouteType::Unicast)
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(route.oif);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        let request = self.handle.route().add(builder.build());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("add route", fmt_route6(route), e))
    }

    fn del_route6(&mut self, route: &Route6Spec) -> Result<(), NetlinkError> {
        // As `del_route`: match destination, output interface and gateway only.
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(RouteHeader::RT_TABLE_MAIN.into())
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .scope(RouteScope::NoWhere)
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(route.oif);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        let request = self.handle.route().del(builder.build());
        self.rt
            .block_on(request.execute())
            .map_err(|e| map_err("delete route", fmt_route6(route), e))
    }

    fn routes6(&mut self) -> Result<Vec<Route6Spec>, NetlinkError> {
        let op = "list IPv6 routes";
        let request = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        let messages: Vec<RouteMessage> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| map_err(op, "IPv6 main table".into(), e))?;
        let mut out = Vec::new();
        for m in &messages {
            if let Some(spec) = route6_spec(op, m)? {
                out.push(spec);
            }
        }
        Ok(out)
    }
}

/// Maps an rtnetlink error to the typed variants: the errno decides.
fn map_err(op: &'static str, what: String, e: rtnetlink::Error) -> NetlinkError {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            let source: io::Error = msg.to_io();
            match source.raw_os_error() {
                Some(libc::EEXIST) => NetlinkError::Exists { op, what },
                Some(libc::ENODEV | libc::ENOENT | libc::ESRCH) => {
                    NetlinkError::NotFound { op, what }
                }
                _ => NetlinkError::Kernel { op, what, source },
            }
        }
        other => NetlinkError::Protocol {
            op,
            detail: format!("{what}: {other}"),
        },
    }
}

fn link_info(op: &'static str, m: &LinkMessage) -> Result<LinkInfo, NetlinkError> {
    let mut name = None;
    let mut mac = None;
    let mut kind = None;
    let mut alias = None;
    let mut mtu = 0;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
            // Only Ethernet-like addresses are of interest; lo has a 6-byte zero
            // address, tunnels may have 4- or 16-byte ones (left as None).
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| NetlinkError::Protocol {
        op,
        detail: format!("link index {} has no IFLA_IFNAME", m.header.index),
    })?;
    Ok(LinkInfo {
        index: m.header.index,
        name,
        mac,
        kind,
        up: m.header.flags.contains(LinkFlags::Up),
        alias,
        mtu,
    })
}

/// The message minus its `IFLA_VXLAN_ID` (see [`RtNetlink::add_vxlan`]).
fn without_vxlan_id(mut message: LinkMessage) -> LinkMessage {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan};
    for attr in &mut message.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let NlLinkInfo::Data(InfoData::Vxlan(data)) = info {
                    data.retain(|d| !matches!(d, InfoVxlan::Id(_)));
                }
            }
        }
    }
    message
}

/// Parses a dumped route back into a [`RouteSpec`]; `None` for routes that are not
/// main-table IPv4 unicast routes through one interface.
fn route_spec(op: &'static str, m: &RouteMessage) -> Result<Option<RouteSpec>, NetlinkError> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return Ok(None);
    }
    // Tables above 255 are carried in RTA_TABLE with the header saying RT_TABLE_UNSPEC.
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    let mut gateway = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            _ => {}
        }
    }
    // Multipath routes carry their interfaces in RTA_MULTIPATH; vethbpf makes none
    // and RouteSpec cannot describe them.
    let Some(oif) = oif else {
        tracing::trace!(?m, "skipping a route without a single output interface");
        return Ok(None);
    };
    let dst =
        Ipv4Net::new(dst, h.destination_prefix_length).map_err(|_| NetlinkError::Protocol {
            op,
            detail: format!(
                "route to {dst} with prefix length {}",
                h.destination_prefix_length
            ),
        })?;
    Ok(Some(RouteSpec {
        dst,
        oif,
        gateway,
        scope_link: h.scope == RouteScope::Link,
        onlink: h.flags.contains(RouteFlags::Onlink),
    }))
}

/// Parses a dumped route back into a [`Route6Spec`]; `None` for routes that are not
/// main-table IPv6 unicast routes through one interface.
fn route6_spec(op: &'static str, m: &RouteMessage) -> Result<Option<Route6Spec>, NetlinkError> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet6 || h.kind != RouteType::Unicast {
        return Ok(None);
    }
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut oif = None;
    let mut gateway = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = *ip,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(*ip),
            _ => {}
        }
    }
    let Some(oif) = oif else {
        return Ok(None);
    };
    let dst =
        Ipv6Net::new(dst, h.destination_prefix_length).map_err(|_| NetlinkError::Protocol {
            op,
            detail: format!(
                "route to {dst} with prefix length {}",
                h.destination_prefix_length
            ),
        })?;
    Ok(Some(Route6Spec { dst, oif, gateway }))
}

pub(super) fn fmt_route6(route: &Route6Spec) -> String {
    match route.gateway {
        Some(gw) => format!("{} via {gw} dev index {}", route.dst, route.oif),
        None => format!("{} dev index {}", route.dst, route.oif),
    }
}

pub(super) fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

pub(super) fn fmt_route(route: &RouteSpec) -> String {
    let mut s = format!("{} dev index {}", route.dst, route.oif);
    if let Some(gw) = route.gateway {
        s = format!("{} via {gw} dev index {}", route.dst, route.oif);
    }
    if route.scope_link {
        s.push_str(" scope link");
    }
    if route.onlink {
        s.push_str(" onlink");
    }
    s
}

/// Root tests: everything happens in namespaces these tests create (never in the
/// namespace the tests run in), with unique names, removed by guards.
#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::kernel::netlink::FakeNetlink;
    use crate::kernel::netns::tests::TestNetns;
    use crate::kernel::netns::{self, with_netlink_in};

    type TestResult<T> = Result<T, anyhow::Error>;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// Polls `f` until it returns true or `timeout` passes.
    fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if f() {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn pod_wiring_end_to_end() {
        let node = TestNetns::new("nl-node");
        let pod = TestNetns::new("nl-pod");
        let pod_fd = netns::open(&pod.path).unwrap();
        let gw_mac = [0xee; 6];
        let pod_mac = [0x02, 0x42, 0x0a, 0xf4, 0x00, 0x02];

        // Node side: create the pair, keep the host side address-free, move the peer.
        let (host_idx, peer_idx) = with_netlink_in(&node.path, |nl| -> TestResult<_> {
            let host_idx = nl.add_veth("vb-test0", "vbtmp0")?;
            let host = nl.link_by_index(host_idx)?.unwrap();
            assert_eq!(host.name, "vb-test0");
            assert_eq!(host.kind.as_deref(), Some("veth"));
            assert!(!host.up);
            let peer = nl.link_by_name("vbtmp0")?.unwrap();
            assert!(nl.links()?.iter().any(|l| l == &peer));

            nl.disable_ipv6_addr_gen(host_idx)?;
            nl.set_link_mac(host_idx, gw_mac)?;
            nl.move_link_to_netns(peer.index, pod_fd.as_fd())?;
            assert!(nl.link_by_name("vbtmp0")?.is_none());
            assert!(nl.link_by_index(peer.index)?.is_none());
            nl.set_link_up(host_idx)?;
            Ok((host_idx, peer.index))
        })
        .unwrap();

        // Pod side: eth0 with its address and the link-local gateway routes.
        let eth0_idx = with_netlink_in(&pod.path, |nl| -> TestResult<_> {
            let peer = nl.link_by_name("vbtmp0")?.unwrap();
            // The index survives the move when it is free in the target.
            assert_eq!(peer.index, peer_idx);
            nl.rename_link(peer.index, "eth0")?;
            nl.set_link_mac(peer.index, pod_mac)?;
            nl.set_link_up(peer.index)?;
            nl.add_address(peer.index, net("10.244.0.2/32"))?;
            let gw_route = RouteSpec {
                dst: net("169.254.1.1/32"),
                oif: peer.index,
                gateway: None,
                scope_link: true,
                onlink: false,
            };
            let default = RouteSpec {
                dst: net("0.0.0.0/0"),
                oif: peer.index,
                gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
                scope_link: false,
                onlink: true,
            };
            nl.add_route(&gw_route)?;
            nl.add_route(&default)?;

            let eth0 = nl.link_by_name("eth0")?.unwrap();
            assert_eq!(eth0.mac, Some(pod_mac));
            assert!(eth0.up);
            assert_eq!(
                nl.addresses(Some(eth0.index))?,
                vec![(eth0.index, net("10.244.0.2/32"))]
            );
            let mut routes = nl.routes()?;
            routes.sort_by_key(|r| r.dst.prefix_len());
            assert_eq!(routes, vec![default.clone(), gw_route.clone()]);

            // Deleting and re-reading a route; deleting it again is NotFound.
            nl.del_route(&default)?;
            assert_eq!(nl.routes()?, vec![gw_route.clone()]);
            assert!(matches!(
                nl.del_route(&default),
                Err(NetlinkError::NotFound {
                    op: "delete route",
                    ..
                })
            ));
            nl.add_route(&default)?;

            // eth0 did not get addr_gen_mode none: it must grow a link-local address
            // (the carrier is up, both ends being up), which shows the host-side
            // check below is meaningful.
            assert!(
                eventually(Duration::from_secs(5), || nl
                    .ipv6_addresses(eth0.index)
                    .is_ok_and(|a| a.iter().any(|ip| ip.is_unicast_link_local()))),
                "eth0 never got an IPv6 link-local address"
            );
            Ok(eth0.index)
        })
        .unwrap();
        assert_eq!(eth0_idx, peer_idx);

        with_netlink_in(&node.path, |nl| -> TestResult<()> {
            let host = nl.link_by_index(host_idx)?.unwrap();
            assert!(host.up);
            assert_eq!(host.mac, Some(gw_mac));
            // Give the kernel the same time it took on the pod side, then check.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                nl.ipv6_addresses(host_idx)?,
                Vec::<std::net::Ipv6Addr>::new()
            );
            assert_eq!(nl.addresses(Some(host_idx))?, vec![]);
            // Deleting the host side takes the pod side with it.
            nl.del_link(host_idx)?;
            assert!(nl.link_by_index(host_idx)?.is_none());
            Ok(())
        })
        .unwrap();
        let left = with_netlink_in(&pod.path, |nl| -> TestResult<_> {
            Ok((nl.link_by_name("eth0")?, nl.routes()?))
        })
        .unwrap();
        assert_eq!(left, (None, vec![]));
    }

    /// Runs the same sequence of calls (mostly mistakes) and describes each outcome,
    /// so that the kernel's answers and [`FakeNetlink`]'s can be compared.
    fn error_scenario(nl: &mut dyn Netlink, elsewhere: BorrowedFd<'_>) -> Vec<String> {
        fn outcome<T>(r: Result<T, NetlinkError>) -> String {
            match r {
                Ok(_) => "ok".into(),
                Err(NetlinkError::Exists { .. }) => "Exists".into(),
                Err(NetlinkError::NotFound { .. }) => "NotFound".into(),
                Err(NetlinkError::Kernel { source, .. }) => {
                    format!(
                        "Kernel({})",
                        Errno::from_raw(source.raw_os_error().unwrap_or(0))
                    )
                }
                Err(e) => format!("other: {e}"),
            }
        }
        use nix::errno::Errno;
        let mut out = Vec::new();
        let mut log = |step: &str, s: String| out.push(format!("{step}: {s}"));
        let a = nl.add_veth("a0", "b0").unwrap();
        let b = nl.link_by_name("b0").unwrap().unwrap().index;
        log("dup name", outcome(nl.add_veth("a0", "c0")));
        log("dup peer", outcome(nl.add_veth("c0", "b0")));
        log("same names", outcome(nl.add_veth("x0", "x0")));
        log("16 bytes", outcome(nl.add_veth("a123456789012345", "p0")));
        log("15 bytes", outcome(nl.add_veth("a12345678901234", "p1")));
        log("slash", outcome(nl.add_veth("bad/name", "p2")));
        log(
            "no leftovers",
            format!("{:?}", nl.link_by_name("p2").map(|l| l.is_some())),
        );
        log("del unknown", outcome(nl.del_link(9999)));
        log("del lo", outcome(nl.del_link(1)));
        log(
            "get unknown",
            format!("{:?}", nl.link_by_name("nope").map(|l| l.is_some())),
        );
        log("get too long", outcome(nl.link_by_name("a123456789012345")));
        log(
            "get invalid",
            format!("{:?}", nl.link_by_name("a/b").map(|l| l.is_some())),
        );
        log(
            "get unknown idx",
            format!("{:?}", nl.link_by_index(9999).map(|l| l.is_some())),
        );
        log("rename dup", outcome(nl.rename_link(a, "b0")));
        log("rename unknown", outcome(nl.rename_link(9999, "zz")));
        log(
            "rename too long",
            outcome(nl.rename_link(a, "a123456789012345")),
        );
        log(
            "mac multicast",
            outcome(nl.set_link_mac(a, [1, 0, 0, 0, 0, 1])),
        );
        log("mac zero", outcome(nl.set_link_mac(a, [0; 6])));
        log(
            "mac unknown",
            outcome(nl.set_link_mac(9999, [2, 0, 0, 0, 0, 1])),
        );
        let route = |dst: &str, oif: u32, gw: Option<Ipv4Addr>, onlink: bool| RouteSpec {
            dst: net(dst),
            oif,
            gateway: gw,
            scope_link: gw.is_none(),
            onlink,
        };
        let gw = Some(Ipv4Addr::new(169, 254, 1, 1));
        log(
            "route link down",
            outcome(nl.add_route(&route("10.9.0.0/24", a, None, false))),
        );
        log("up", outcome(nl.set_link_up(a)));
        log("up peer", outcome(nl.set_link_up(b)));
        log(
            "mac while up",
            outcome(nl.set_link_mac(a, [2, 0, 0, 0, 0, 7])),
        );
        log("rename while up", outcome(nl.rename_link(a, "a1")));
        log(
            "route",
            outcome(nl.add_route(&route("10.244.0.2/32", a, None, false))),
        );
        log(
            "route dup",
            outcome(nl.add_route(&route("10.244.0.2/32", a, None, false))),
        );
        log(
            "route host bits",
            outcome(nl.add_route(&route("10.0.0.1/24", a, None, false))),
        );
        log(
            "onlink no gw",
            outcome(nl.add_route(&route("10.3.0.0/24", a, None, true))),
        );
        log(
            "gw unreachable",
            outcome(nl.add_route(&route("0.0.0.0/0", a, gw, false))),
        );
        log(
            "gw onlink without any addr",
            outcome(nl.add_route(&route("0.0.0.0/0", a, gw, true))),
        );
        log(
            "route unknown oif",
            outcome(nl.add_route(&route("10.5.0.0/24", 9999, None, false))),
        );
        log(
            "del route",
            outcome(nl.del_route(&route("10.244.0.2/32", a, None, false))),
        );
        log(
            "del route again",
            outcome(nl.del_route(&route("10.244.0.2/32", a, None, false))),
        );
        log("addr", outcome(nl.add_address(a, net("10.1.0.5/24"))));
        log("addr dup", outcome(nl.add_address(a, net("10.1.0.5/24"))));
        // Now that the namespace has a local address (hence a local table):
        log(
            "gw onlink with addr",
            outcome(nl.add_route(&route("0.0.0.0/0", a, gw, true))),
        );
        let mut scoped = route("10.7.0.0/16", a, gw, true);
        scoped.scope_link = true;
        log("gw onlink scope link", outcome(nl.add_route(&scoped)));
        log(
            "addr unknown",
            outcome(nl.add_address(9999, net("10.1.0.6/24"))),
        );
        log("addrgen unknown", outcome(nl.disable_ipv6_addr_gen(9999)));
        log("up unknown", outcome(nl.set_link_up(9999)));
        let mut routes = nl.routes().unwrap_or_default();
        routes.sort_by_key(|r| (r.dst.prefix_len(), r.dst.addr()));
        log(
            "routes",
            format!("{routes:?}").replace(&format!("oif: {a},"), "oif: A,"),
        );
        log("move lo", outcome(nl.move_link_to_netns(1, elsewhere)));
        log("move", outcome(nl.move_link_to_netns(b, elsewhere)));
        log(
            "moved away",
            format!("{:?}", nl.link_by_index(b).map(|l| l.is_some())),
        );
        log("move gone", outcome(nl.move_link_to_netns(b, elsewhere)));
        log("del", outcome(nl.del_link(a)));
        log("del again", outcome(nl.del_link(a)));
        log("left", format!("{:?}", nl.links().map(|l| l.len())));
        out
    }

    #[test]
    #[ignore = "needs root: creates network namespaces and links"]
    fn errors_map_to_typed_variants_like_the_fake() {
        let ns = TestNetns::new("nl-err");
        let other = TestNetns::new("nl-err2");
        let other_fd = netns::open(&other.path).unwrap();
        let real = with_netlink_in(&ns.path, |nl| -> TestResult<_> {
            Ok(error_scenario(nl, other_fd.as_fd()))
        })
        .unwrap();

        let host = FakeNetlink::new();
        let ns_file = File::open(&ns.path).unwrap();
        let mut fake_ns = host.namespace_for_fd(ns_file.as_fd()).unwrap();
        let fake = error_scenario(&mut fake_ns, other_fd.as_fd());

        for (r, f) in real.iter().zip(&fake) {
            println!("kernel {r:60} fake {f}");
        }
        assert_eq!(real, fake);
        // Spot checks of the mapping itself.
        assert!(real.contains(&"dup name: Exists".to_string()));
        assert!(real.contains(&"del unknown: NotFound".to_string()));
        assert!(
            real.contains(&"16 bytes: Kernel(ERANGE: Math result not representable)".to_string())
        );
    }
}
