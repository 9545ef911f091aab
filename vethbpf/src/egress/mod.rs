//! Pod egress: the node's uplink, the masquerade address and NAT settings `up`
//! chooses and records, the uplink program's attachment, and the NAT table
//! (`nat list`, `nat flush`, the flows of a deleted endpoint).
//!
//! - [`ports`]: NAT ports and the node's own ephemeral ports, kept apart
//! - [`uplink`]: which interface and address egress uses
//! - [`table`]: the egress maps: configuration, excluded destinations, NAT entries

use std::io::Read;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use vethbpf_common::{EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig, NAT_MAX_FLOWS_DEFAULT};

pub mod ports;
pub mod table;
pub mod uplink;

pub use ports::PortRange;
use table::Table;

use aya::programs::tc::{SchedClassifier, TcAttachType};
use vethbpf_common::PROG_FROM_UPLINK;

use crate::datapath::{self, AttachMode, BpfError, Pins};
use crate::error::ErrorKind;
use crate::kernel::netlink::{Netlink, NetlinkError};

/// The largest flow limit `--nat-max-flows` takes (the NAT map preallocates two
/// entries of about 100 bytes per flow).
pub const MAX_FLOWS_LIMIT: u32 = 1 << 22;

/// What `up` is asked for on the command line. On a fresh node, what is not given
/// takes its default; on a node that is up, what is given must match what it has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRequest {
    /// The uplink (default: the device of the IPv4 default route).
    pub uplink: Option<String>,
    /// Destinations never masqueraded (default: the pod CIDR).
    pub cluster_cidr: Option<Ipv4Net>,
    /// Route pod traffic out with the pods' own addresses.
    pub no_masquerade: bool,
    /// NAT ports (default: those above the node's ephemeral range).
    pub nat_ports: Option<PortRange>,
    /// Flow limit of the NAT table.
    pub max_flows: Option<u32>,
}

impl EgressRequest {
    /// Whether any egress option was given.
    pub fn is_empty(&self) -> bool {
        *self == EgressRequest::default()
    }
}

/// The node's egress, as `up` set it up; kept in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    pub uplink: String,
    pub uplink_ifindex: u32,
    /// The uplink's primary IPv4 address: the masquerade source.
    pub nat_addr: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    pub masquerade: bool,
    pub nat_ports: PortRange,
    pub max_flows: u32,
    /// Keys the NAT's port choice (see the datapath's `nat` module); random per node.
    pub hash_seed: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the uplink {0} does not exist in this network namespace")]
    NoSuchUplink(String),
    #[error("{0} cannot be the uplink: pod egress leaves through a real interface")]
    BadUplink(String),
    #[error(
        "egress options were given, but this node has no IPv4 default route to find its uplink by; give --uplink IFACE"
    )]
    NoUplink,
    #[error("egress options were given, but this node has no IPv4 pod CIDR (egress is IPv4 only)")]
    NoIpv4PodCidr,
    #[error(
        "the uplink {0} has no IPv4 address to masquerade pods behind; add one, or give --uplink"
    )]
    NoAddress(String),
    #[error("the cluster CIDR {cluster} must contain the pod CIDR {pod}")]
    ClusterCidr { cluster: Ipv4Net, pod: Ipv4Net },
    #[error("--nat-max-flows {0}: give 1 to {MAX_FLOWS_LIMIT}")]
    MaxFlows(u32),
    #[error(transparent)]
    Ports(#[from] ports::PortsError),
    #[error(
        "the node is up with egress {current}; `up` asked for {requested}. Use the same settings, or `vethbpf down` first"
    )]
    Change { current: String, requested: String },
    #[error(
        "the node's uplink {uplink} now has address {now}, not {recorded} it masquerades with: `vethbpf down` and `vethbpf up` again"
    )]
    AddressChanged {
        uplink: String,
        recorded: Ipv4Addr,
        now: String,
    },
    #[error("cannot read random bytes for the NAT's port hash: {0}")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Table(#[from] table::TableError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

impl EgressError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EgressError::NoSuchUplink(_) => ErrorKind::NotFound,
            EgressError::BadUplink(_)
            | EgressError::NoUplink
            | EgressError::NoIpv4PodCidr
            | EgressError::ClusterCidr { .. }
            | EgressError::MaxFlows(_) => ErrorKind::Usage,
            EgressError::Ports(e) => e.kind(),
            EgressError::NoAddress(_)
            | EgressError::Change { .. }
            | EgressError::AddressChanged { .. } => ErrorKind::Conflict,
            EgressError::Netlink(e) => e.kind(),
            EgressError::Table(e) => e.kind(),
            EgressError::Bpf(e) => e.kind(),
            EgressError::Random(_) => ErrorKind::Other,
        }
    }
}

/// A short description of egress settings, for messages and `status`.
pub fn describe(e: Option<&Egress>) -> String {
    match e {
        None => "off".into(),
        Some(e) => format!(
            "via {} ({}), {}, cluster CIDR {}, NAT ports {}, max {} flows",
            e.uplink,
            e.nat_addr,
            if e.masquerade {
                "masquerade"
            } else {
                "no masquerade"
            },
            e.cluster_cidr,
            e.nat_ports,
            e.max_flows
        ),
    }
}

fn random_seed() -> Result<u32, EgressError> {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(EgressError::Random)?;
    Ok(u32::from_ne_bytes(b))
}

/// The egress a fresh node gets for `req`: `None` when no uplink is given and the
/// node has no default route (pods then reach the node and each other only).
pub fn resolve(
    nl: &mut dyn Netlink,
    req: &EgressRequest,
    pod_cidr: Option<Ipv4Net>,
) -> Result<Option<Egress>, EgressError> {
    // Egress is IPv4 only: an IPv6-only node has none (and refuses options for it).
    let Some(pod_cidr) = pod_cidr else {
        if !req.is_empty() {
            return Err(EgressError::NoIpv4PodCidr);
        }
        return Ok(None);
    };
    let Some(up) = uplink::find(nl, req.uplink.as_deref())? else {
        if !req.is_empty() {
            return Err(EgressError::NoUplink);
        }
        return Ok(None);
    };
    let cluster_cidr = req.cluster_cidr.map_or(pod_cidr, |c| c.trunc());
    if !cluster_cidr.contains(&pod_cidr) {
        return Err(EgressError::ClusterCidr {
            cluster: cluster_cidr,
            pod: pod_cidr,
        });
    }
    let max_flows = req.max_flows.unwrap_or(NAT_MAX_FLOWS_DEFAULT);
    if max_flows == 0 || max_flows > MAX_FLOWS_LIMIT {
        return Err(EgressError::MaxFlows(max_flows));
    }
    let nat_ports = ports::nat_range(req.nat_ports, ports::local_range()?)?;
    Ok(Some(Egress {
        uplink: up.name,
        uplink_ifindex: up.index,
        nat_addr: up.addr,
        cluster_cidr,
        masquerade: !req.no_masquerade,
        nat_ports,
        max_flows,
        hash_seed: random_seed()?,
    }))
}

/// On a node that is up with `current`: the egress it keeps, if `req` asks for
/// nothing different; the uplink must still have the address it masquerades with.
pub fn keep(
    nl: &mut dyn Netlink,
    current: Option<&Egress>,
    req: &EgressRequest,
) -> Result<Option<Egress>, EgressError> {
    let change = |requested: String| EgressError::Change {
        current: describe(current),
        requested,
    };
    let Some(cur) = current else {
        if req.is_empty() {
            return Ok(None);
        }
        return Err(change(format!("{req:?}")));
    };
    let differs = req.uplink.as_ref().is_some_and(|u| *u != cur.uplink)
        || req
            .cluster_cidr
            .is_some_and(|c| c.trunc() != cur.cluster_cidr)
        || (req.no_masquerade && cur.masquerade)
        || req.nat_ports.is_some_and(|p| p != cur.nat_ports)
        || req.max_flows.is_some_and(|m| m != cur.max_flows);
    if differs {
        let requested = Egress {
            uplink: req.uplink.clone().unwrap_or_else(|| cur.uplink.clone()),
            cluster_cidr: req.cluster_cidr.map_or(cur.cluster_cidr, |c| c.trunc()),
            masquerade: cur.masquerade && !req.no_masquerade,
            nat_ports: req.nat_ports.unwrap_or(cur.nat_ports),
            max_flows: req.max_flows.unwrap_or(cur.max_flows),
            ..cur.clone()
        };
        return Err(change(describe(Some(&requested))));
    }
    if cur.masquerade {
        let now = uplink::addresses(nl, &cur.uplink)?;
        if !now.contains(&cur.nat_addr) {
            return Err(EgressError::AddressChanged {
                uplink: cur.uplink.clone(),
                recorded: cur.nat_addr,
                now: if now.is_empty() {
                    "none".into()
                } else {
                    now.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
    }
    Ok(Some(cur.clone()))
}

/// Puts egress `e` into the kernel: the skip list first (the node's addresses as
/// they are now: a pod's packet to one must never be masqueraded), then the
/// `EGRESS` configuration, then `from_uplink` on the uplink if it is not there.
/// Running it again changes nothing but a changed address list.
pub(crate) fn apply(
    pins: &Pins,
    nl: &mut dyn Netlink,
    pod_cidr: Option<Ipv4Net>,
    e: Option<&Egress>,
    mode: AttachMode,
) -> Result<(), EgressError> {
    let mut table = Table::open(pins)?;
    // An IPv6-only node has no IPv4 egress (`resolve` gave it none): egress off.
    let Some(pod_cidr) = pod_cidr else {
        table.set_config(&kernel_config(None, Ipv4Net::default()))?;
        return Ok(());
    };
    table.sync_skip(&skip_entries(nl, pod_cidr, e)?)?;
    table.set_config(&kernel_config(e, pod_cidr))?;
    if let Some(e) = e {
        attach_uplink(pins, &e.uplink, mode)?;
    }
    Ok(())
}

/// Attaches the pinned `from_uplink` to tc ingress of `uplink`, unless it is: a
/// pinned TCX link, or in netlink mode vethbpf's filter, whose program is swapped in
/// place.
fn attach_uplink(pins: &Pins, uplink: &str, mode: AttachMode) -> Result<(), EgressError> {
    match mode {
        AttachMode::Tcx => {
            if datapath::link_ids(pins, PROG_FROM_UPLINK, uplink).is_none() {
                // A dead pin (the uplink was recreated) is replaced.
                datapath::detach(pins, PROG_FROM_UPLINK, uplink)?;
                datapath::attach(pins, PROG_FROM_UPLINK, uplink, mode)?;
            }
        }
        AttachMode::Tc => {
            let path = pins.program(PROG_FROM_UPLINK);
            let mut prog =
                SchedClassifier::from_pin(&path).map_err(|source| BpfError::OpenProgram {
                    path,
                    source: Box::new(source),
                })?;
            if datapath::replace_filter(&mut prog, uplink).is_err() {
                datapath::attach(pins, PROG_FROM_UPLINK, uplink, mode)?;
            }
        }
    }
    Ok(())
}

/// `reconcile`'s check of egress `e`: the uplink still there (its interface index
/// followed if it was re-created), the `EGRESS` configuration and the skip list as
/// they should be, `from_uplink` attached to it (TCX: the pinned link's program is
/// among those the uplink runs). Returns what it fixed, and the egress as it is now
/// (for the state file); `None` when all was well.
pub(crate) fn reconcile_uplink(
    pins: &Pins,
    nl: &mut dyn Netlink,
    e: &Egress,
    pod_cidr: Ipv4Net,
    mode: AttachMode,
) -> Result<Option<(String, Egress)>, EgressError> {
    let Some(link) = nl.link_by_name(&e.uplink)? else {
        return Ok(Some((
            format!(
                "the uplink {} is gone: pod egress stops until it is back (then `vethbpf reconcile`)",
                e.uplink
            ),
            e.clone(),
        )));
    };
    let mut now = e.clone();
    let mut fixes = Vec::new();
    if link.index != e.uplink_ifindex {
        now.uplink_ifindex = link.index;
        fixes.push("interface index followed (the uplink was re-created)");
    }
    let mut table = Table::open(pins)?;
    if table.sync_skip(&skip_entries(nl, pod_cidr, Some(&now))?)? {
        fixes.push("node addresses updated in EGRESS_SKIP");
    }
    let want = kernel_config(Some(&now), pod_cidr);
    if table.config()? != want {
        table.set_config(&want)?;
        fixes.push("EGRESS configuration written again");
    }
    let attached = match mode {
        AttachMode::Tcx => {
            datapath::link_ids(pins, PROG_FROM_UPLINK, &e.uplink).is_some_and(|(_, prog)| {
                SchedClassifier::query_tcx(&e.uplink, TcAttachType::Ingress)
                    .is_ok_and(|(_, progs)| progs.iter().any(|p| p.id() == prog))
            })
        }
        // A filter has no pin to check against; `attach_uplink` swaps its program
        // in place, or adds it.
        AttachMode::Tc => false,
    };
    if !attached {
        if mode == AttachMode::Tcx {
            datapath::detach(pins, PROG_FROM_UPLINK, &e.uplink)?;
            fixes.push("from_uplink attached again");
        }
        attach_uplink(pins, &e.uplink, mode)?;
    }
    Ok((!fixes.is_empty()).then(|| (format!("uplink {}: {}", e.uplink, fixes.join(", ")), now)))
}

/// Takes `from_uplink` off the uplink (`down`, and undoing a failed `up`).
pub(crate) fn detach_uplink(
    pins: &Pins,
    uplink: &str,
    mode: AttachMode,
) -> Result<(), EgressError> {
    match mode {
        AttachMode::Tcx => datapath::detach(pins, PROG_FROM_UPLINK, uplink)?,
        AttachMode::Tc => datapath::detach_filter(uplink)?,
    }
    Ok(())
}

/// The egress a node's pins say it has (for `reconcile --from-kernel`): the
/// `EGRESS` map holds all of it but the uplink's name, which the interface index
/// gives while the uplink exists.
pub fn from_pins(pins: &Pins, nl: &mut dyn Netlink) -> Result<Option<Egress>, EgressError> {
    if !pins.map(vethbpf_common::MAP_EGRESS).exists() {
        return Ok(None);
    }
    let k = Table::open(pins)?.config()?;
    if k.flags & EGRESS_F_ENABLED == 0 {
        return Ok(None);
    }
    let Some(link) = nl.link_by_index(k.uplink_ifindex)? else {
        tracing::warn!(
            ifindex = k.uplink_ifindex,
            "the uplink is gone: egress left off"
        );
        return Ok(None);
    };
    let addr = |v: u32| Ipv4Addr::from(vethbpf_common::ipv4_from_map(v));
    let net = |a: u32, m: u32| Ipv4Net::with_netmask(addr(a), addr(m)).ok();
    let Some(cluster_cidr) = net(k.cluster_net, k.cluster_mask) else {
        return Ok(None);
    };
    Ok(Some(Egress {
        uplink: link.name,
        uplink_ifindex: k.uplink_ifindex,
        nat_addr: addr(k.nat_addr),
        cluster_cidr,
        masquerade: k.flags & EGRESS_F_MASQUERADE != 0,
        nat_ports: PortRange {
            first: k.port_min,
            last: k.port_max,
        },
        max_flows: k.max_flows,
        hash_seed: k.hash_seed,
    }))
}

/// `from_uplink` on the uplink, as `status` shows it (ids only for a TCX link).
#[derive(Clone, Debug, Serialize)]
pub struct UplinkAttachment {
    pub uplink: String,
    pub mode: &'static str,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// Egress as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EgressStatus {
    pub enabled: bool,
    /// Why it is off, or what needs attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Egress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<UplinkAttachment>,
    /// Flows as the datapath last counted them, against the limit.
    pub flows: u64,
    pub max_flows: u32,
    /// At the limit: new flows are dropped (`nat_table_full`) until flows expire or
    /// `vethbpf nat flush`.
    pub table_full: bool,
    /// Entries of the NAT map (two per flow) and its capacity.
    pub entries: usize,
    pub capacity: Option<u32>,
    pub gc_runs: u64,
    pub gc_deleted: u64,
    /// New flows dropped because the table was full, and for want of a free port.
    pub nat_table_full_drops: u64,
    pub nat_no_port_drops: u64,
    /// Packets `from_uplink` handed to the node stack (the node's own traffic).
    pub uplink_passed: u64,
    /// The node's ephemeral ports now (they must stay clear of the NAT's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ports: Option<PortRange>,
}

/// Counters `status` shows with egress, summed over the node and its pods.
#[derive(Clone, Copy, Debug, Default)]
pub struct EgressCounters {
    pub nat_table_full: u64,
    pub nat_no_port: u64,
    pub uplink_passed: u64,
}

/// The egress part of `status`.
pub fn status(
    pins: &Pins,
    e: Option<&Egress>,
    mode: AttachMode,
    counters: EgressCounters,
) -> Result<EgressStatus, EgressError> {
    let local_ports = ports::local_range().ok();
    let mut st = EgressStatus {
        enabled: e.is_some(),
        note: None,
        settings: e.cloned(),
        attachment: None,
        flows: 0,
        max_flows: e.map_or(0, |e| e.max_flows),
        table_full: false,
        entries: 0,
        capacity: None,
        gc_runs: 0,
        gc_deleted: 0,
        nat_table_full_drops: counters.nat_table_full,
        nat_no_port_drops: counters.nat_no_port,
        uplink_passed: counters.uplink_passed,
        local_ports,
    };
    let Some(e) = e else {
        st.note = Some(
            "off: the node had no IPv4 default route at `up` and no --uplink was given".into(),
        );
        return Ok(st);
    };
    let ids = datapath::link_ids(pins, PROG_FROM_UPLINK, &e.uplink);
    st.attachment = Some(UplinkAttachment {
        uplink: e.uplink.clone(),
        mode: mode.name(),
        link_id: ids.map(|(l, _)| l),
        program_id: ids.map(|(_, p)| p),
    });
    if pins.map(vethbpf_common::MAP_NAT).exists() {
        let table = Table::open(pins)?;
        let nat = table.state()?;
        st.flows = nat.flows;
        st.gc_runs = nat.gc_runs;
        st.gc_deleted = nat.gc_deleted;
        st.entries = table.entry_count();
        st.capacity = table.capacity();
    }
    st.table_full = st.flows >= u64::from(e.max_flows);
    let mut notes = Vec::new();
    if st.table_full {
        notes.push(format!(
            "the NAT table is full ({} flows): new flows are dropped (nat_table_full) until flows expire or `vethbpf nat flush`",
            st.flows
        ));
    }
    if mode == AttachMode::Tcx && ids.is_none() {
        notes.push(format!(
            "from_uplink is not attached to {}: `vethbpf reconcile` attaches it",
            e.uplink
        ));
    }
    if let Some(local) = local_ports
        && local.overlaps(e.nat_ports)
    {
        notes.push(format!(
            "the node's ephemeral ports {local} (net.ipv4.ip_local_port_range) now overlap the NAT ports {}: narrow the sysctl again",
            e.nat_ports
        ));
    }
    if !notes.is_empty() {
        st.note = Some(notes.join("; "));
    }
    Ok(st)
}

/// What `EGRESS_SKIP` must hold: every address of the node and the broadcast
/// address of its subnet (the node stack's, never egress), the pod CIDR and the
/// cluster CIDR (never masqueraded; routed by other means).
pub fn skip_entries(
    nl: &mut dyn Netlink,
    pod_cidr: Ipv4Net,
    e: Option<&Egress>,
) -> Result<Vec<(Ipv4Net, u32)>, EgressError> {
    use vethbpf_common::{SKIP_CLUSTER, SKIP_NODE_ADDRESS};
    let host = |a: Ipv4Addr| Ipv4Net::new(a, 32).unwrap_or_default();
    let mut out = Vec::new();
    for (_, net) in nl.addresses(None)? {
        out.push((host(net.addr()), SKIP_NODE_ADDRESS));
        if net.prefix_len() <= 30 {
            out.push((host(net.broadcast()), SKIP_NODE_ADDRESS));
        }
    }
    out.push((pod_cidr, SKIP_CLUSTER));
    if let Some(e) = e {
        out.push((e.cluster_cidr, SKIP_CLUSTER));
    }
    out.sort();
    out.dedup_by_key(|(n, _)| *n);
    Ok(out)
}

/// The `EGRESS` map value for a node with pod CIDR `pod_cidr` and egress `e`.
pub fn kernel_config(e: Option<&Egress>, pod_cidr: Ipv4Net) -> EgressConfig {
    let map = |a: Ipv4Addr| vethbpf_common::ipv4_to_map(a.octets());
    let Some(e) = e else {
        return EgressConfig::default();
    };
    EgressConfig {
        flags: EGRESS_F_ENABLED | if e.masquerade { EGRESS_F_MASQUERADE } else { 0 },
        nat_addr: map(e.nat_addr),
        uplink_ifindex: e.uplink_ifindex,
        max_flows: e.max_flows,
        port_min: e.nat_ports.first,
        port_max: e.nat_ports.last,
        pod_net: map(pod_cidr.network()),
        pod_mask: map(pod_cidr.netmask()),
        cluster_net: map(e.cluster_cidr.network()),
        cluster_mask: map(e.cluster_cidr.netmask()),
        hash_seed: e.hash_seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::{FakeNetlink, RouteSpec};

    fn node_with_uplink() -> FakeNetlink {
        let mut nl = FakeNetlink::default();
        let i = nl.add_veth("up0", "peer0").unwrap();
        nl.set_link_up(i).unwrap();
        nl.add_address(i, "172.30.0.2/24".parse().unwrap()).unwrap();
        nl.add_route(&RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            oif: i,
            gateway: Some("172.30.0.1".parse().unwrap()),
            scope_link: false,
            onlink: false,
        })
        .unwrap();
        nl
    }

    fn pod() -> Ipv4Net {
        "10.244.0.0/24".parse().unwrap()
    }

    #[test]
    fn the_default_route_gives_the_uplink_and_its_address() {
        let mut nl = node_with_uplink();
        let e = resolve(&mut nl, &EgressRequest::default(), Some(pod()))
            .unwrap()
            .expect("egress on");
        assert_eq!(e.uplink, "up0");
        assert_eq!(e.nat_addr, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(e.cluster_cidr, pod());
        assert!(e.masquerade);
        assert_eq!(e.max_flows, NAT_MAX_FLOWS_DEFAULT);
        let local = ports::local_range().unwrap();
        assert!(!e.nat_ports.overlaps(local));
        let k = kernel_config(Some(&e), pod());
        assert_eq!(k.flags, EGRESS_F_ENABLED | EGRESS_F_MASQUERADE);
        assert_eq!(k.nat_addr, vethbpf_common::ipv4_to_map([172, 30, 0, 2]));
        assert_eq!(k.pod_mask, vethbpf_common::ipv4_to_map([255, 255, 255, 0]));
    }

    #[test]
    fn no_default_route_means_no_egress_unless_asked() {
        let mut nl = FakeNetlink::default();
        assert_eq!(
            resolve(&mut nl, &EgressRequest::default(), Some(pod())).unwrap(),
            None
        );
        let req = EgressRequest {
            no_masquerade: true,
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod())),
            Err(EgressError::NoUplink)
        ));
        let req = EgressRequest {
            uplink: Some("eth9".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod())),
            Err(EgressError::NoSuchUplink(u)) if u == "eth9"
        ));
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut nl = node_with_uplink();
        let cases = [
            EgressRequest {
                cluster_cidr: Some("10.245.0.0/16".parse().unwrap()),
                ..Default::default()
            },
            EgressRequest {
                max_flows: Some(0),
                ..Default::default()
            },
            EgressRequest {
                nat_ports: Some(PortRange {
                    first: 32768,
                    last: 40000,
                }),
                ..Default::default()
            },
        ];
        for req in cases {
            assert!(resolve(&mut nl, &req, Some(pod())).is_err(), "{req:?}");
        }
        let i = nl.add_veth("bare", "bare-peer").unwrap();
        let _ = i;
        let req = EgressRequest {
            uplink: Some("bare".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod())),
            Err(EgressError::NoAddress(u)) if u == "bare"
        ));
    }

    #[test]
    fn node_addresses_broadcasts_and_cidrs_are_skipped() {
        use vethbpf_common::{SKIP_CLUSTER, SKIP_NODE_ADDRESS};
        let mut nl = node_with_uplink();
        let lo = nl.link_by_name("lo").unwrap().map(|l| l.index);
        if let Some(lo) = lo {
            nl.add_address(lo, "192.0.2.1/32".parse().unwrap()).unwrap();
        }
        let e = resolve(
            &mut nl,
            &EgressRequest {
                cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
                ..Default::default()
            },
            Some(pod()),
        )
        .unwrap();
        let skip = skip_entries(&mut nl, pod(), e.as_ref()).unwrap();
        let has = |n: &str, why| skip.contains(&(n.parse().unwrap(), why));
        assert!(has("172.30.0.2/32", SKIP_NODE_ADDRESS), "{skip:?}");
        assert!(has("172.30.0.255/32", SKIP_NODE_ADDRESS), "{skip:?}");
        assert!(has("10.244.0.0/24", SKIP_CLUSTER), "{skip:?}");
        assert!(has("10.0.0.0/8", SKIP_CLUSTER), "{skip:?}");
        if lo.is_some() {
            assert!(has("192.0.2.1/32", SKIP_NODE_ADDRESS), "{skip:?}");
        }
    }

    #[test]
    fn a_node_keeps_its_egress_and_refuses_other_settings() {
        let mut nl = node_with_uplink();
        let e = resolve(&mut nl, &EgressRequest::default(), Some(pod()))
            .unwrap()
            .unwrap();
        assert_eq!(
            keep(&mut nl, Some(&e), &EgressRequest::default()).unwrap(),
            Some(e.clone())
        );
        let same = EgressRequest {
            uplink: Some("up0".into()),
            nat_ports: Some(e.nat_ports),
            ..Default::default()
        };
        assert_eq!(keep(&mut nl, Some(&e), &same).unwrap(), Some(e.clone()));
        for other in [
            EgressRequest {
                no_masquerade: true,
                ..Default::default()
            },
            EgressRequest {
                max_flows: Some(7),
                ..Default::default()
            },
            EgressRequest {
                uplink: Some("eth1".into()),
                ..Default::default()
            },
        ] {
            let err = keep(&mut nl, Some(&e), &other).unwrap_err();
            assert!(
                matches!(err, EgressError::Change { .. }),
                "{other:?}: {err}"
            );
            assert!(err.to_string().contains("vethbpf down"), "{err}");
        }
        // Egress off stays off; asking for it on such a node is a change too.
        assert_eq!(
            keep(&mut nl, None, &EgressRequest::default()).unwrap(),
            None
        );
        assert!(keep(&mut nl, None, &same).is_err());
        // The uplink lost the address it masquerades with.
        let mut moved = e.clone();
        moved.nat_addr = Ipv4Addr::new(172, 30, 0, 9);
        assert!(matches!(
            keep(&mut nl, Some(&moved), &EgressRequest::default()),
            Err(EgressError::AddressChanged { .. })
        ));
    }
}
