//! [`RtNetlink`]: the real [`Netlink`] client.
//!
//! Messages come from netlink-packet-route (built with rtnetlink's message
//! builders where it has one); they travel over a blocking socket of our own
//! (`socket.rs`), so a call is a `send` and the `recv`s of its answers on the
//! calling thread: no runtime, no helper thread, nothing that could run in (or out
//! of) the wrong namespace. [`Netlink::apply`] sends all its changes at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, LinkAttribute, LinkExtentMask,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::socket::{Answer, NlSocket, Request};
use super::tc;
use super::unlist::{self, Unlisted};
use super::{Change, LinkInfo, Netlink, NetlinkError, Route6Spec, RouteSpec, TcFilter, VxlanSpec};

/// A synchronous rtnetlink client bound to the network namespace of the thread
/// that called [`RtNetlink::connect`].
pub struct RtNetlink {
    socket: NlSocket,
    /// The namespace the socket was opened in (`/proc/thread-self/ns/net`'s device
    /// and inode), if it could be read: a detached deletion (`unlist.rs`) opens its
    /// sockets on the calling thread, so it is used only where that is the same one.
    netns: Option<(u64, u64)>,
}

/// The calling thread's network namespace, as device and inode.
fn thread_netns() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl std::fmt::Debug for RtNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtNetlink").finish_non_exhaustive()
    }
}

/// A request of one of the client's operations, with what to call it in errors.
struct Op {
    op: &'static str,
    what: String,
    request: Request,
}

/// What a request is called in errors.
struct Label {
    op: &'static str,
    what: String,
}

impl Label {
    fn error(self, errno: i32) -> NetlinkError {
        NetlinkError::from_errno(self.op, self.what, errno)
    }
}

/// `RTM_NEWLINK` without `NLM_F_CREATE`: changes an existing link (`ip link set`).
fn change_link(op: &'static str, what: String, message: LinkMessage) -> Op {
    Op {
        op,
        what,
        request: Request {
            message: RouteNetlinkMessage::NewLink(message),
            flags: 0,
        },
    }
}

/// The request of one [`Change`].
fn change_op(change: &Change<'_>) -> Op {
    match *change {
        Change::Clsact(index) => Op {
            op: "add clsact qdisc",
            what: format!("link index {index}"),
            request: tc::add_clsact(index),
        },
        Change::BpfFilter(index, prog, name, classid) => Op {
            op: "attach cls_bpf filter",
            what: format!("{name} on tc ingress of link index {index}"),
            request: tc::set_bpf_filter(index, prog, name, classid),
        },
        Change::LinkUp(index) => change_link(
            "set link up",
            format!("link index {index}"),
            LinkUnspec::new_with_index(index).up().build(),
        ),
        Change::Alias(index, alias) => change_link(
            "set link alias",
            format!("link index {index} alias {alias:?}"),
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
                .build(),
        ),
        // `ip link set DEV addrgenmode none`: IFLA_AF_SPEC { AF_INET6 {
        // IFLA_INET6_ADDR_GEN_MODE = IN6_ADDR_GEN_MODE_NONE } }. The kernel only
        // generates the link-local address when the link comes up, so this must
        // precede `set_link_up`; an address generated earlier stays.
        Change::NoIpv6AddrGen(index) => change_link(
            "disable IPv6 address generation",
            format!("link index {index}"),
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]))
                .build(),
        ),
        Change::AddAddress(index, addr) => Op {
            op: "add address",
            what: format!("{addr} on link index {index}"),
            request: Request {
                message: RouteNetlinkMessage::NewAddress(
                    AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(index)
                        .address(addr.addr(), addr.prefix_len())
                        .build(),
                ),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            },
        },
        Change::AddAddress6(index, addr) => {
            let mut message = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(addr.addr(), addr.prefix_len())
                .build();
            // `ip -6 addr add ... nodad`: the 8-bit header flag for old kernels, the
            // 32-bit IFA_FLAGS attribute for new ones (the kernel reads the latter).
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            Op {
                op: "add address",
                what: format!("{addr} on link index {index}"),
                request: Request {
                    message: RouteNetlinkMessage::NewAddress(message),
                    flags: NLM_F_CREATE | NLM_F_EXCL,
                },
            }
        }
        Change::AddRoute6(route) => {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(RouteHeader::RT_TABLE_MAIN.into())
                .protocol(RouteProtocol::Static)
                .kind(RouteType::Unicast)
                .destination_prefix(route.dst.addr(), route.dst.prefix_len())
                .output_interface(route.oif);
            if let Some(gw) = route.gateway {
                builder = builder.gateway(gw);
            }
            Op {
                op: "add route",
                what: fmt_route6(route),
                request: Request {
                    message: RouteNetlinkMessage::NewRoute(builder.build()),
                    flags: NLM_F_CREATE | NLM_F_EXCL,
                },
            }
        }
        Change::AddRoute(route) => {
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
                // rtm_flags RTNH_F_ONLINK: for a single-nexthop route the kernel
                // takes the nexthop flags from the header.
                builder = builder.onlink();
            }
            Op {
                op: "add route",
                what: fmt_route(route),
                request: Request {
                    message: RouteNetlinkMessage::NewRoute(builder.build()),
                    flags: NLM_F_CREATE | NLM_F_EXCL,
                },
            }
        }
    }
}

/// `RTM_GETLINK` of one link, by name or index, without its statistics.
fn get_link(name: Option<&str>, index: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(name) = name {
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    }
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    Request {
        message: RouteNetlinkMessage::GetLink(msg),
        flags: 0,
    }
}

impl RtNetlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    /// The socket stays in that namespace, whichever thread uses the client later.
    pub fn connect() -> Result<Self, NetlinkError> {
        Ok(RtNetlink {
            socket: NlSocket::open().map_err(NetlinkError::Connect)?,
            netns: thread_netns(),
        })
    }

    /// Sends `ops` in one batch; the kernel's answer to each, with its label.
    fn run(&mut self, ops: Vec<Op>) -> Result<Vec<(Label, Answer)>, NetlinkError> {
        let mut labels = Vec::with_capacity(ops.len());
        let mut requests = Vec::with_capacity(ops.len());
        for Op { op, what, request } in ops {
            labels.push(Label { op, what });
            requests.push(request);
        }
        let first = labels.first().map_or("netlink", |l| l.op);
        let answers = self
            .socket
            .transact(requests)
            .map_err(|source| NetlinkError::Kernel {
                op: first,
                what: "netlink socket".into(),
                source,
            })?;
        Ok(labels.into_iter().zip(answers).collect())
    }

    /// One request; the messages the kernel answered it with.
    fn one(&mut self, op: Op) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        match self.run(vec![op])?.pop() {
            Some((label, answer)) => answer.map_err(|errno| label.error(errno)),
            None => Err(NetlinkError::Protocol {
                op: "netlink",
                detail: "no answer".into(),
            }),
        }
    }

    fn link(
        &mut self,
        op: &'static str,
        what: String,
        request: Request,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        match self.one(Op { op, what, request }) {
            Ok(messages) => messages
                .iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(link_info(op, l)),
                    _ => None,
                })
                .transpose(),
            // A lookup of a missing link is an answer, not an error.
            Err(NetlinkError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All IPv6 addresses of a link; tests use it to check address generation.
    #[cfg(test)]
    pub(crate) fn ipv6_addresses(
        &mut self,
        index: u32,
    ) -> Result<Vec<std::net::Ipv6Addr>, NetlinkError> {
        Ok(self
            .address_dump("list IPv6 addresses", AddressFamily::Inet6, Some(index))?
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// The routes of the family `request` names, as the kernel dumps them (every
    /// table: filtered by the callers); the one dump both route listings share.
    fn route_dump(
        &mut self,
        op: &'static str,
        what: &str,
        request: RouteMessage,
    ) -> Result<Vec<RouteMessage>, NetlinkError> {
        let messages = self.one(Op {
            op,
            what: what.into(),
            request: Request {
                message: RouteNetlinkMessage::GetRoute(request),
                flags: NLM_F_DUMP,
            },
        })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// The addresses of family `family` (on link `index`, or every link), as the
    /// kernel dumps them: the one dump the address listings share.
    fn address_dump(
        &mut self,
        op: &'static str,
        family: AddressFamily,
        index: Option<u32>,
    ) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family;
        let messages = self.one(Op {
            op,
            what: match index {
                Some(i) => format!("link index {i}"),
                None => "all links".into(),
            },
            request: Request {
                message: RouteNetlinkMessage::GetAddress(msg),
                flags: NLM_F_DUMP,
            },
        })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.family == family && index.is_none_or(|i| a.header.index == i) =>
                {
                    Some(a)
                }
                _ => None,
            })
            .collect())
    }
}

impl Netlink for RtNetlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        self.link(
            "get link",
            format!("link {name:?}"),
            get_link(Some(name), 0),
        )
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        self.link(
            "get link",
            format!("link index {index}"),
            get_link(None, index),
        )
    }

    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let op = "list links";
        let mut request = get_link(None, 0);
        request.flags = NLM_F_DUMP;
        let messages = self.one(Op {
            op,
            what: "all links".into(),
            request,
        })?;
        messages
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(op, l)),
                _ => None,
            })
            .collect()
    }

    fn add_veth(&mut self, name: &str, peer: &str) -> Result<u32, NetlinkError> {
        let op = "add veth";
        let what = format!("veth {name:?} <-> {peer:?}");
        // RTM_NEWLINK does not answer with the new index; ask for it by name in the
        // same batch. Nothing else renames a link we just made under our own name.
        let mut answers = self
            .run(vec![
                Op {
                    op,
                    what: what.clone(),
                    request: Request {
                        message: RouteNetlinkMessage::NewLink(LinkVeth::new(name, peer).build()),
                        flags: NLM_F_CREATE | NLM_F_EXCL,
                    },
                },
                Op {
                    op,
                    what: what.clone(),
                    request: get_link(Some(name), 0),
                },
            ])?
            .into_iter();
        if let Some((label, Err(errno))) = answers.next() {
            return Err(label.error(errno));
        }
        let index = answers
            .next()
            .and_then(|(_, a)| a.ok())
            .and_then(|messages| {
                messages.iter().find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                    _ => None,
                })
            });
        index.ok_or_else(|| NetlinkError::Protocol {
            op,
            detail: format!("{what} was created but {name:?} cannot be found"),
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
        let op = "add veth";
        let what = format!(
            "veth {name:?} <-> {peer:?} in netns fd {}",
            peer_netns.as_raw_fd()
        );
        // IFLA_NET_NS_FD in the peer's message: the kernel creates the peer in that
        // namespace and resolves the fd while handling the request.
        let mut peer_link = LinkUnspec::new_with_name(peer);
        let mut host = LinkVeth::new(name, "").address(mac.to_vec());
        if let Some(mtu) = mtu {
            // Both ends alike, set as they are made.
            peer_link = peer_link.mtu(mtu);
            host = host.mtu(mtu);
        }
        let mut peer_msg = peer_link.build();
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let message = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        // NLM_F_ECHO: the kernel (6.2+) sends the new link back, index included.
        let answer = self.one(Op {
            op,
            what: what.clone(),
            request: Request {
                message: RouteNetlinkMessage::NewLink(message),
                flags: NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            },
        })?;
        let echoed = answer.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l)
                if l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) =>
            {
                Some(l.header.index)
            }
            _ => None,
        });
        match echoed {
            Some(index) => Ok(index),
            // An older kernel does not echo: ask by name.
            None => match self.link_by_name(name)? {
                Some(link) => Ok(link.index),
                None => Err(NetlinkError::Protocol {
                    op,
                    detail: format!("{what} was created but {name:?} cannot be found"),
                }),
            },
        }
    }

    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        // Returns once the link is gone, not once the kernel has freed it (10-45 ms
        // later): `unlist.rs`. Where that cannot be used, the plain request below.
        if self.netns.is_some() && self.netns == thread_netns() {
            // A veth's peer is unlisted with it but announced a little later: a
            // deletion of the peer right after the first returned would see that
            // announcement and take it for its own. Unlisted means not found.
            if self.link_by_index(index)?.is_none() {
                return Err(NetlinkError::NotFound {
                    op: "delete link",
                    what: format!("link index {index}"),
                });
            }
            match unlist::del_link(index) {
                Ok(Unlisted::Gone) => return Ok(()),
                Ok(Unlisted::Refused(errno)) => {
                    return Err(NetlinkError::from_errno(
                        "delete link",
                        format!("link index {index}"),
                        errno,
                    ));
                }
                Err(e) => {
                    tracing::debug!(index, error = %e, "detached link deletion failed; deleting in place");
                    if self.link_by_index(index)?.is_none() {
                        return Ok(());
                    }
                }
            }
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.one(Op {
            op: "delete link",
            what: format!("link index {index}"),
            request: Request {
                message: RouteNetlinkMessage::DelLink(msg),
                flags: 0,
            },
        })
        .map(drop)
    }

    fn move_link_to_netns(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        // IFLA_NET_NS_FD: the kernel resolves the fd while handling the request,
        // before this returns, so borrowing it for this call is enough.
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.one(change_link(
            "move link to netns",
            format!("link index {index} -> netns fd {}", netns.as_raw_fd()),
            message,
        ))
        .map(drop)
    }

    fn rename_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).name(name).build();
        self.one(change_link(
            "rename link",
            format!("link index {index} -> {name:?}"),
            message,
        ))
        .map(drop)
    }

    fn set_link_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.one(change_link(
            "set link mac",
            format!("link index {index} address {}", fmt_mac(&mac)),
            message,
        ))
        .map(drop)
    }

    fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        self.apply(&[Change::Alias(index, alias)])
    }

    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.apply(&[Change::LinkUp(index)])
    }

    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.one(change_link(
            "set link mtu",
            format!("link index {index} mtu {mtu}"),
            message,
        ))
        .map(drop)
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
        self.one(Op {
            op,
            what: what(),
            request: Request {
                message: RouteNetlinkMessage::NewLink(message),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            },
        })?;
        match self.link_by_name(&spec.name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::Protocol {
                op,
                detail: format!("{} was created but cannot be found", what()),
            }),
        }
    }

    fn disable_ipv6_addr_gen(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.apply(&[Change::NoIpv6AddrGen(index)])
    }

    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        self.apply(&[Change::AddAddress(index, addr)])
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let op = "list addresses";
        let mut out = Vec::new();
        for m in &self.address_dump(op, AddressFamily::Inet, index)? {
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
        self.apply(&[Change::AddRoute(route)])
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
        self.one(Op {
            op: "delete route",
            what: fmt_route(route),
            request: Request {
                message: RouteNetlinkMessage::DelRoute(builder.build()),
                flags: 0,
            },
        })
        .map(drop)
    }

    fn routes(&mut self) -> Result<Vec<RouteSpec>, NetlinkError> {
        let op = "list routes";
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the header filters of a
        // dump, so this is every IPv4 route of every table; filter here.
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut out = Vec::new();
        for m in &self.route_dump(op, "IPv4 main table", dump)? {
            if let Some(spec) = route_spec(op, m)? {
                out.push(spec);
            }
        }
        Ok(out)
    }

    fn add_address6(&mut self, index: u32, addr: Ipv6Net) -> Result<(), NetlinkError> {
        self.apply(&[Change::AddAddress6(index, addr)])
    }

    fn usable_global_addresses6(&mut self, index: u32) -> Result<Vec<Ipv6Addr>, NetlinkError> {
        let op = "list IPv6 addresses";
        // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit for IPv6.
        let unusable = AddressFlags::Secondary
            | AddressFlags::Deprecated
            | AddressFlags::Tentative
            | AddressFlags::Dadfailed;
        let mut out = Vec::new();
        let dump = self.address_dump(op, AddressFamily::Inet6, Some(index))?;
        for m in dump
            .iter()
            .filter(|m| m.header.scope == AddressScope::Universe)
        {
            // IFA_FLAGS (32 bits) when the kernel sends it, else the header's 8.
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()))
                });
            if flags.intersects(unusable) {
                continue;
            }
            if let Some(ip) = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            }) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn addresses6(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Net)>, NetlinkError> {
        let op = "list IPv6 addresses";
        let mut out = Vec::new();
        for m in &self.address_dump(op, AddressFamily::Inet6, index)? {
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
        self.apply(&[Change::AddRoute6(route)])
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
        self.one(Op {
            op: "delete route",
            what: fmt_route6(route),
            request: Request {
                message: RouteNetlinkMessage::DelRoute(builder.build()),
                flags: 0,
            },
        })
        .map(drop)
    }

    fn routes6(&mut self) -> Result<Vec<Route6Spec>, NetlinkError> {
        let op = "list IPv6 routes";
        let dump = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut out = Vec::new();
        for m in &self.route_dump(op, "IPv6 main table", dump)? {
            if let Some(spec) = route6_spec(op, m)? {
                out.push(spec);
            }
        }
        Ok(out)
    }

    fn neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        let messages = self.one(Op {
            op: "list neighbours",
            what: format!("link index {index}"),
            request: Request {
                message: RouteNetlinkMessage::GetNeighbour(msg),
                flags: NLM_F_DUMP,
            },
        })?;
        let usable = |state: &NeighbourState| {
            matches!(
                state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            )
        };
        Ok(messages.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n)
                if n.header.ifindex == index && usable(&n.header.state) =>
            {
                let dst = n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if *d == ip)
                });
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(&l[..]).ok(),
                    _ => None,
                });
                if dst { mac } else { None }
            }
            _ => None,
        }))
    }

    fn probe_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        // No state: NTF_USE makes the kernel send a probe (neigh_event_send) instead
        // of setting one; a new entry starts as NUD_NONE and is garbage-collected
        // like any other.
        msg.header.state = NeighbourState::None;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.one(Op {
            op: "probe neighbour",
            what: format!("{ip} dev {index}"),
            request: Request {
                message: RouteNetlinkMessage::NewNeighbour(msg),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            },
        })
        .map(|_| ())
    }

    fn add_clsact(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.apply(&[Change::Clsact(index)])
    }

    fn set_bpf_filter(
        &mut self,
        index: u32,
        prog: BorrowedFd<'_>,
        name: &str,
        classid: Option<u32>,
    ) -> Result<(), NetlinkError> {
        self.apply(&[Change::BpfFilter(index, prog, name, classid)])
    }

    fn del_filter(&mut self, index: u32) -> Result<(), NetlinkError> {
        match self.one(Op {
            op: "delete tc filter",
            what: format!("tc ingress of link index {index}"),
            request: tc::del_filter(index),
        }) {
            // Nothing at that priority (ENOENT), or no clsact qdisc (EINVAL).
            Ok(_) | Err(NetlinkError::NotFound { .. }) => Ok(()),
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn ingress_filters(&mut self, indexes: &[u32]) -> Result<Vec<Option<TcFilter>>, NetlinkError> {
        let ops = indexes
            .iter()
            .map(|&index| Op {
                op: "get tc filter",
                what: format!("tc ingress of link index {index}"),
                request: tc::get_filter(index),
            })
            .collect();
        let found: Vec<Option<TcFilter>> = self
            .run(ops)?
            .into_iter()
            .map(|(label, answer)| match answer {
                Ok(messages) => Ok(tc::filter_of(&messages)),
                // No filter at that place or handle (ENOENT), no clsact qdisc
                // (EINVAL: "parent qdisc doesn't exist"), no such link (ENODEV).
                Err(libc::ENOENT | libc::EINVAL | libc::ENODEV) => Ok(None),
                Err(errno) => Err(label.error(errno)),
            })
            .collect::<Result<_, NetlinkError>>()?;
        // Where vethbpf's filter is not, someone else's may hold its priority under
        // another handle (a u32 filter's are never 1): a dump of those links'
        // ingress tells. Only a broken attachment costs a dump.
        indexes
            .iter()
            .zip(found)
            .map(|(&index, f)| match f {
                Some(f) => Ok(Some(f)),
                None => match self.one(Op {
                    op: "list tc filters",
                    what: format!("tc ingress of link index {index}"),
                    request: tc::dump_filters(index),
                }) {
                    Ok(messages) => Ok(tc::at_our_priority(&messages)),
                    Err(NetlinkError::NotFound { .. }) => Ok(None),
                    Err(NetlinkError::Kernel { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                },
            })
            .collect()
    }

    fn apply(&mut self, changes: &[Change<'_>]) -> Result<(), NetlinkError> {
        let ops = changes.iter().map(change_op).collect();
        let mut first = None;
        for ((label, answer), change) in self.run(ops)?.into_iter().zip(changes) {
            match (answer, change) {
                (Ok(_), _) => {}
                // EAFNOSUPPORT: IPv6 is disabled on this kernel (ipv6.disable=1) or
                // this device, so no address will ever be generated: the goal holds.
                (Err(libc::EAFNOSUPPORT), Change::NoIpv6AddrGen(index)) => {
                    tracing::debug!(
                        index,
                        "IPv6 is not available on the link; nothing to disable"
                    );
                }
                (Err(errno), _) => {
                    first.get_or_insert(label.error(errno));
                }
            }
        }
        first.map_or(Ok(()), Err)
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
            std::thread::sleep((timeout / 10).min(Duration::from_millis(50)));
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

    /// `del_link` returns once the link is gone (the kernel frees it afterwards, in a
    /// detached process: `unlist.rs`), and that process keeps none of the caller's
    /// descriptors: not a lock (an flock is held while any copy of its descriptor is
    /// open: a del that dies must not look alive to the next command through its
    /// journal's lock) and not a pipe (a CNI runtime reads the plugin's stdout to its
    /// end).
    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn a_deleted_link_is_gone_at_return_and_the_deleter_keeps_no_descriptor() {
        use nix::fcntl::{Flock, FlockArg};
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

        let node = TestNetns::new("nl-unl");
        let pod = TestNetns::new("nl-unl-pod");
        let pod_fd = netns::open(&pod.path).unwrap();
        let lock_path = std::env::temp_dir().join(format!("vethbpf-unl-{}", std::process::id()));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _cleanup = Remove(lock_path.clone());
        for round in 0..5 {
            // Held as a process that dies holds it: released by closing, not unlocked.
            let lock = File::create(&lock_path).unwrap();
            // SAFETY: flock on a descriptor we own.
            assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
            let (out_r, out_w) = nix::unistd::pipe().unwrap();
            with_netlink_in(&node.path, |nl| -> TestResult<()> {
                let host = nl.add_veth_into("vb-unl0", [0xee; 6], None, "eth9", pod_fd.as_fd())?;
                nl.del_link(host)?;
                assert_eq!(nl.link_by_index(host)?, None, "round {round}");
                assert_eq!(nl.link_by_name("vb-unl0")?, None);
                assert!(matches!(
                    nl.del_link(host),
                    Err(NetlinkError::NotFound { .. })
                ));
                // Both ends here: the peer, unlisted with the first and announced
                // just after it, is not found (not "deleted" a second time).
                // (A race: tried 20 times a round.)
                for _ in 0..20 {
                    let a = nl.add_veth("vb-unl1", "vb-unl2")?;
                    let b = nl.link_by_name("vb-unl2")?.unwrap().index;
                    nl.del_link(a)?;
                    assert!(
                        matches!(nl.del_link(b), Err(NetlinkError::NotFound { .. })),
                        "round {round}: the peer was deleted twice"
                    );
                }
                Ok(())
            })
            .unwrap();
            // Both ends went: the pod's end, in the pod, too.
            let left = with_netlink_in(&pod.path, |nl| -> TestResult<_> {
                Ok(nl.link_by_name("eth9")?)
            })
            .unwrap();
            assert_eq!(left, None);
            // The kernel's freeing (10 ms and more) is still under way in the deleting
            // process; our copies going must be the last ones. Checked for 5 ms: any
            // other test thread of this process may fork meanwhile, and its child holds
            // every descriptor until it execs or closes them (well under that); the
            // deleting process would hold them for its whole wait.
            drop(lock);
            let lock_free = || {
                let again = File::open(&lock_path).unwrap();
                Flock::lock(again, FlockArg::LockExclusiveNonblock).is_ok()
            };
            assert!(
                eventually(Duration::from_millis(5), lock_free),
                "round {round}: the lock is still held by a copy of its descriptor"
            );
            drop(out_w);
            let hung_up = || {
                let mut fds = [PollFd::new(out_r.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::ZERO).unwrap();
                fds[0].revents().unwrap().contains(PollFlags::POLLHUP)
            };
            assert!(
                eventually(Duration::from_millis(5), hung_up),
                "round {round}: a copy of the pipe's write end is still open"
            );
        }
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
        // The pair made with its peer elsewhere, and what it refuses.
        let mac = [2, 0, 0, 0, 0, 9];
        let c = nl.add_veth_into("c1", mac, Some(1400), "d1", elsewhere);
        log("into", outcome(c.as_ref().map(drop).map_err(clone_err)));
        let c = c.unwrap_or(0);
        log(
            "into mac, mtu",
            format!(
                "{:?}",
                nl.link_by_index(c).map(|l| l.map(|l| (l.mac, l.mtu)))
            ),
        );
        log(
            "into mtu too small",
            outcome(nl.add_veth_into("c6", mac, Some(67), "d6", elsewhere)),
        );
        log(
            "into peer not here",
            format!("{:?}", nl.link_by_name("d1").map(|l| l.is_some())),
        );
        log(
            "into dup peer",
            outcome(nl.add_veth_into("c2", mac, None, "d1", elsewhere)),
        );
        log(
            "into dup name",
            outcome(nl.add_veth_into("c1", mac, None, "d3", elsewhere)),
        );
        log(
            "into multicast mac",
            outcome(nl.add_veth_into("c4", [1, 0, 0, 0, 0, 1], None, "d4", elsewhere)),
        );
        log(
            "into 16 bytes",
            outcome(nl.add_veth_into("c5", mac, None, "d123456789012345", elsewhere)),
        );
        // A batch goes on after a failure, and answers with the first one.
        let bad = route("10.0.0.1/24", c, None, false);
        log(
            "batch",
            outcome(nl.apply(&[
                Change::NoIpv6AddrGen(c),
                Change::AddRoute(&bad),
                Change::Alias(c, "after the failure"),
                Change::LinkUp(9999),
            ])),
        );
        log(
            "batch went on",
            format!("{:?}", nl.link_by_index(c).map(|l| l.and_then(|l| l.alias))),
        );
        log("del into", outcome(nl.del_link(c)));
        log("del", outcome(nl.del_link(a)));
        log("del again", outcome(nl.del_link(a)));
        log("left", format!("{:?}", nl.links().map(|l| l.len())));
        out
    }

    fn clone_err(e: &NetlinkError) -> NetlinkError {
        match e {
            NetlinkError::Exists { op, what } => NetlinkError::Exists {
                op,
                what: what.clone(),
            },
            NetlinkError::NotFound { op, what } => NetlinkError::NotFound {
                op,
                what: what.clone(),
            },
            NetlinkError::Kernel { op, what, source } => NetlinkError::Kernel {
                op,
                what: what.clone(),
                source: std::io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(0)),
            },
            other => NetlinkError::Protocol {
                op: "clone",
                detail: other.to_string(),
            },
        }
    }

    /// The pair made in one request with its peer in another namespace, the index
    /// echoed back, and a batch of changes that depend on each other's order.
    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn veth_into_a_namespace_and_batches() {
        let node = TestNetns::new("nl-into-node");
        let pod = TestNetns::new("nl-into-pod");
        let pod_fd = netns::open(&pod.path).unwrap();
        let gw_mac = [0xee; 6];
        let mut node_nl = netns::netlink_in::<anyhow::Error>(&node.path).unwrap();
        let mut pod_nl = netns::netlink_in::<anyhow::Error>(&pod.path).unwrap();
        let host = node_nl
            .add_veth_into("vb-into0", gw_mac, Some(1450), "eth7", pod_fd.as_fd())
            .unwrap();
        let link = node_nl.link_by_name("vb-into0").unwrap().unwrap();
        assert_eq!(link.index, host, "the echoed index is the link's");
        assert_eq!(link.mac, Some(gw_mac));
        assert_eq!(link.mtu, 1450);
        assert!(!link.up);
        assert_eq!(node_nl.link_by_name("eth7").unwrap(), None);
        let eth7 = pod_nl.link_by_name("eth7").unwrap().unwrap();
        assert_eq!(eth7.kind.as_deref(), Some("veth"));
        assert_eq!(eth7.mtu, 1450, "both ends get the MTU");
        assert!(!eth7.up);

        // Pod side in one batch: lo, the link, the address, then the routes that
        // need it (the onlink default route fails without the address).
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let gw_route = RouteSpec {
            dst: net("169.254.1.1/32"),
            oif: eth7.index,
            gateway: None,
            scope_link: true,
            onlink: false,
        };
        let default = RouteSpec {
            dst: net("0.0.0.0/0"),
            oif: eth7.index,
            gateway: Some(gw),
            scope_link: false,
            onlink: true,
        };
        pod_nl
            .apply(&[
                Change::LinkUp(1),
                Change::LinkUp(eth7.index),
                Change::AddAddress(eth7.index, net("10.244.0.7/32")),
                Change::AddRoute(&gw_route),
                Change::AddRoute(&default),
            ])
            .unwrap();
        assert!(pod_nl.link_by_index(1).unwrap().unwrap().up);
        assert!(pod_nl.link_by_index(eth7.index).unwrap().unwrap().up);
        assert_eq!(
            pod_nl.addresses(Some(eth7.index)).unwrap(),
            vec![(eth7.index, net("10.244.0.7/32"))]
        );
        let mut routes = pod_nl.routes().unwrap();
        routes.sort_by_key(|r| r.dst.prefix_len());
        assert_eq!(routes, vec![default, gw_route]);

        // Host side: alias and no IPv6 address generation, then up and the route.
        node_nl
            .apply(&[
                Change::NoIpv6AddrGen(host),
                Change::Alias(host, "vethbpf:test"),
            ])
            .unwrap();
        let node_route = RouteSpec {
            dst: net("10.244.0.7/32"),
            oif: host,
            gateway: None,
            scope_link: true,
            onlink: false,
        };
        node_nl
            .apply(&[Change::LinkUp(host), Change::AddRoute(&node_route)])
            .unwrap();
        let link = node_nl.link_by_index(host).unwrap().unwrap();
        assert!(link.up);
        assert_eq!(link.alias.as_deref(), Some("vethbpf:test"));
        assert_eq!(node_nl.routes().unwrap(), vec![node_route]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            node_nl.ipv6_addresses(host).unwrap(),
            Vec::<std::net::Ipv6Addr>::new()
        );
        // 3000 routes in one batch (one datagram of ~130 KB), and a dump that takes
        // many datagrams to come back.
        let many: Vec<RouteSpec> = (0..3000u32)
            .map(|i| RouteSpec {
                dst: Ipv4Net::new(Ipv4Addr::from(0x0a80_0000 + i), 32).unwrap(),
                oif: host,
                gateway: None,
                scope_link: true,
                onlink: false,
            })
            .collect();
        let changes: Vec<Change<'_>> = many.iter().map(Change::AddRoute).collect();
        node_nl.apply(&changes).unwrap();
        assert_eq!(node_nl.routes().unwrap().len(), 3001);
        node_nl.del_link(host).unwrap();
        assert_eq!(pod_nl.link_by_name("eth7").unwrap(), None);
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
