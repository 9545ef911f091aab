//! Pod egress: the node's uplink, the masquerade address and NAT settings `up`
//! chooses and records, the uplink program's attachment, and the NAT table
//! (`nat list`, `nat flush`, the flows of a deleted endpoint).
//!
//! - [`ports`]: NAT ports and the node's own ephemeral ports, kept apart
//! - [`uplink`]: which interface and address egress uses
//! - [`table`]: the egress maps: configuration, excluded destinations, NAT entries

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig, EgressConfig6, NAT_MAX_FLOWS_DEFAULT,
    ipv6_to_map,
};

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
    /// The uplink (default: the device of the IPv4 default route, else of the IPv6
    /// one).
    pub uplink: Option<String>,
    /// Destinations never masqueraded (default: the pod CIDR).
    pub cluster_cidr: Option<Ipv4Net>,
    /// The same for IPv6 (default: the IPv6 pod CIDR).
    pub cluster_cidr6: Option<Ipv6Net>,
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
///
/// Either family may be off: IPv4 on a node without an IPv4 pod CIDR or an uplink
/// without an IPv4 address, IPv6 without an IPv6 pod CIDR or a usable global IPv6
/// address on the uplink. The uplink, ports, flow limit and seed are shared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    pub uplink: String,
    pub uplink_ifindex: u32,
    /// The uplink's primary IPv4 address: the masquerade source. `None`: no IPv4
    /// egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_addr: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<Ipv4Net>,
    /// IPv6 egress, if on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Egress6>,
    pub masquerade: bool,
    pub nat_ports: PortRange,
    pub max_flows: u32,
    /// Keys the NAT's port choice (see the datapath's `nat` module); random per node.
    pub hash_seed: u32,
}

/// IPv6 egress: the address pods are masqueraded behind and the destinations that
/// are never egress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress6 {
    /// The uplink's primary global IPv6 address (not temporary, not deprecated).
    pub nat_addr: Ipv6Addr,
    /// Never masqueraded: the IPv6 `--cluster-cidr`, or the IPv6 pod CIDR.
    pub cluster_cidr: Ipv6Net,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the uplink {0} does not exist in this network namespace")]
    NoSuchUplink(String),
    #[error("{0} cannot be the uplink: pod egress leaves through a real interface")]
    BadUplink(String),
    #[error(
        "egress options were given, but this node has no default route to find its uplink by; give --uplink IFACE"
    )]
    NoUplink,
    #[error(
        "--cluster-cidr is an IPv4 CIDR, and this node has no IPv4 pod CIDR (IPv6 egress never masquerades its own pod CIDR)"
    )]
    NoIpv4PodCidr,
    #[error(
        "the uplink {0} has no address to masquerade pods behind (IPv4, or a global IPv6 one that is neither temporary nor deprecated); add one, or give --uplink"
    )]
    NoAddress(String),
    #[error("the cluster CIDR {cluster} must contain the pod CIDR {pod}")]
    ClusterCidr { cluster: Ipv4Net, pod: Ipv4Net },
    #[error("the IPv6 cluster CIDR {cluster} must contain the IPv6 pod CIDR {pod}")]
    ClusterCidr6 { cluster: Ipv6Net, pod: Ipv6Net },
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
        recorded: IpAddr,
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
            | EgressError::ClusterCidr6 { .. }
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
        Some(e) => {
            let v6 = e.ipv6.as_ref();
            let addrs: Vec<String> = e
                .nat_addr
                .map(|a| a.to_string())
                .into_iter()
                .chain(v6.map(|v| v.nat_addr.to_string()))
                .collect();
            let cidrs: Vec<String> = e
                .cluster_cidr
                .map(|c| c.to_string())
                .into_iter()
                .chain(v6.map(|v| v.cluster_cidr.to_string()))
                .collect();
            format!(
                "via {} ({}), {}, cluster CIDR {}, NAT ports {}, max {} flows",
                e.uplink,
                addrs.join(", "),
                if e.masquerade {
                    "masquerade"
                } else {
                    "no masquerade"
                },
                cidrs.join(", "),
                e.nat_ports,
                e.max_flows
            )
        }
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
    pod_cidr6: Option<Ipv6Net>,
) -> Result<Option<Egress>, EgressError> {
    if req.cluster_cidr.is_some() && pod_cidr.is_none() {
        return Err(EgressError::NoIpv4PodCidr);
    }
    let Some(up) = uplink::find(nl, req.uplink.as_deref())? else {
        if !req.is_empty() {
            return Err(EgressError::NoUplink);
        }
        return Ok(None);
    };
    // Each family the node has pods of, where the uplink has an address of it.
    let nat_addr = pod_cidr.and(up.addr);
    let ipv6 = match pod_cidr6.zip(up.addr6) {
        Some((pod, addr)) => {
            let pod = pod.trunc();
            let cluster = req.cluster_cidr6.map_or(pod, |c| c.trunc());
            if !cluster.contains(&pod) {
                return Err(EgressError::ClusterCidr6 { cluster, pod });
            }
            Some(Egress6 {
                nat_addr: addr,
                cluster_cidr: cluster,
            })
        }
        None => None,
    };
    if nat_addr.is_none() && ipv6.is_none() {
        return Err(EgressError::NoAddress(up.name));
    }
    let cluster_cidr = match pod_cidr.filter(|_| nat_addr.is_some()) {
        Some(pod) => {
            let cluster = req.cluster_cidr.map_or(pod, |c| c.trunc());
            if !cluster.contains(&pod) {
                return Err(EgressError::ClusterCidr { cluster, pod });
            }
            Some(cluster)
        }
        None => None,
    };
    let max_flows = req.max_flows.unwrap_or(NAT_MAX_FLOWS_DEFAULT);
    if max_flows == 0 || max_flows > MAX_FLOWS_LIMIT {
        return Err(EgressError::MaxFlows(max_flows));
    }
    let nat_ports = ports::nat_range(req.nat_ports, ports::local_range()?)?;
    Ok(Some(Egress {
        uplink: up.name,
        uplink_ifindex: up.index,
        nat_addr,
        cluster_cidr,
        ipv6,
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
            .is_some_and(|c| Some(c.trunc()) != cur.cluster_cidr)
        || req
            .cluster_cidr6
            .is_some_and(|c| Some(c.trunc()) != cur.ipv6.as_ref().map(|v| v.cluster_cidr))
        || (req.no_masquerade && cur.masquerade)
        || req.nat_ports.is_some_and(|p| p != cur.nat_ports)
        || req.max_flows.is_some_and(|m| m != cur.max_flows);
    if differs {
        let requested = Egress {
            uplink: req.uplink.clone().unwrap_or_else(|| cur.uplink.clone()),
            cluster_cidr: req.cluster_cidr.map(|c| c.trunc()).or(cur.cluster_cidr),
            masquerade: cur.masquerade && !req.no_masquerade,
            nat_ports: req.nat_ports.unwrap_or(cur.nat_ports),
            max_flows: req.max_flows.unwrap_or(cur.max_flows),
            ..cur.clone()
        };
        return Err(change(describe(Some(&requested))));
    }
    if cur.masquerade {
        let mut now: Vec<IpAddr> = Vec::new();
        let mut missing = None;
        if let Some(a) = cur.nat_addr {
            now.extend(
                uplink::addresses(nl, &cur.uplink)?
                    .into_iter()
                    .map(IpAddr::V4),
            );
            if !now.contains(&IpAddr::V4(a)) {
                missing = Some(IpAddr::V4(a));
            }
        }
        if let Some(v6) = &cur.ipv6 {
            let have = uplink::addresses6(nl, &cur.uplink)?;
            now.extend(have.iter().copied().map(IpAddr::V6));
            if missing.is_none() && !have.contains(&v6.nat_addr) {
                missing = Some(IpAddr::V6(v6.nat_addr));
            }
        }
        if let Some(recorded) = missing {
            return Err(EgressError::AddressChanged {
                uplink: cur.uplink.clone(),
                recorded,
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
    pod_cidr6: Option<Ipv6Net>,
    e: Option<&Egress>,
    mode: AttachMode,
) -> Result<(), EgressError> {
    let mut table = Table::open(pins)?;
    sync_kernel(&mut table, nl, pod_cidr, pod_cidr6, e)?;
    if let Some(e) = e {
        attach_uplink(pins, &e.uplink, mode)?;
    }
    Ok(())
}

/// Writes both families' skip lists and configurations for egress `e`; whether it
/// changed anything. A family without egress gets an empty configuration (off).
fn sync_kernel(
    table: &mut Table,
    nl: &mut dyn Netlink,
    pod_cidr: Option<Ipv4Net>,
    pod_cidr6: Option<Ipv6Net>,
    e: Option<&Egress>,
) -> Result<bool, EgressError> {
    let mut changed = false;
    let want = match pod_cidr {
        Some(pod) => {
            changed |= table.sync_skip(&skip_entries(nl, pod, e)?)?;
            kernel_config(e, pod)
        }
        None => EgressConfig::default(),
    };
    if table.config()? != want {
        table.set_config(&want)?;
        changed = true;
    }
    if table.has_ipv6() {
        let want6 = match pod_cidr6 {
            Some(pod) => {
                changed |= table.sync_skip6(&skip_entries6(nl, pod, e)?)?;
                kernel_config6(e, pod)
            }
            None => EgressConfig6::default(),
        };
        if table.config6()? != want6 {
            table.set_config6(&want6)?;
            changed = true;
        }
    }
    Ok(changed)
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
            if datapath::replace_filter(&mut prog, uplink, None).is_err() {
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
    pod_cidr: Option<Ipv4Net>,
    pod_cidr6: Option<Ipv6Net>,
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
    if sync_kernel(&mut table, nl, pod_cidr, pod_cidr6, Some(&now))? {
        fixes.push("EGRESS configuration or node addresses written again");
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
    let table = Table::open(pins)?;
    // The shared settings are in whichever family's configuration is on.
    let k = match table.config()? {
        k if k.flags & EGRESS_F_ENABLED != 0 => k,
        _ => match table.config6() {
            // (Without its ENABLED bit: no IPv4 egress.)
            Ok(c) if c.flags & EGRESS_F_ENABLED != 0 => EgressConfig {
                flags: c.flags & EGRESS_F_MASQUERADE,
                uplink_ifindex: c.uplink_ifindex,
                max_flows: c.max_flows,
                port_min: c.port_min,
                port_max: c.port_max,
                hash_seed: c.hash_seed,
                ..EgressConfig::default()
            },
            _ => return Ok(None),
        },
    };
    let Some(link) = nl.link_by_index(k.uplink_ifindex)? else {
        tracing::warn!(
            ifindex = k.uplink_ifindex,
            "the uplink is gone: egress left off"
        );
        return Ok(None);
    };
    let addr = |v: u32| Ipv4Addr::from(vethbpf_common::ipv4_from_map(v));
    let net = |a: u32, m: u32| Ipv4Net::with_netmask(addr(a), addr(m)).ok();
    let v4 = k.flags & EGRESS_F_ENABLED != 0;
    let ipv6 = match table.config6() {
        Ok(c) if c.flags & EGRESS_F_ENABLED != 0 => {
            let a = |w: [u32; 4]| Ipv6Addr::from(vethbpf_common::ipv6_from_map(w));
            Ipv6Net::with_netmask(a(c.cluster_net), a(c.cluster_mask))
                .ok()
                .map(|cluster_cidr| Egress6 {
                    nat_addr: a(c.nat_addr),
                    cluster_cidr,
                })
        }
        _ => None,
    };
    Ok(Some(Egress {
        uplink: link.name,
        uplink_ifindex: k.uplink_ifindex,
        nat_addr: v4.then(|| addr(k.nat_addr)),
        cluster_cidr: if v4 {
            net(k.cluster_net, k.cluster_mask)
        } else {
            None
        },
        ipv6,
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
    pod_cidr6: Option<Ipv6Net>,
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
        st.note =
            Some("off: the node had no default route at `up` and no --uplink was given".into());
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
    if pod_cidr6.is_some() && e.ipv6.is_none() {
        notes.push(format!(
            "IPv6 egress is off: {} had no global IPv6 address (not temporary or deprecated) at `up`, or a vethbpf without IPv6 egress brought the node up (`vethbpf down` and `up` turn it on); IPv6 pods reach the node and each other only",
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
    if let Some(c) = e.and_then(|e| e.cluster_cidr) {
        out.push((c, SKIP_CLUSTER));
    }
    out.sort();
    out.dedup_by_key(|(n, _)| *n);
    Ok(out)
}

/// What `EGRESS_SKIP6` must hold: every IPv6 address of the node, the IPv6 pod CIDR
/// and cluster CIDR.
pub fn skip_entries6(
    nl: &mut dyn Netlink,
    pod_cidr6: Ipv6Net,
    e: Option<&Egress>,
) -> Result<Vec<(Ipv6Net, u32)>, EgressError> {
    use vethbpf_common::{SKIP_CLUSTER, SKIP_NODE_ADDRESS};
    let host = |a: Ipv6Addr| Ipv6Net::new(a, 128).unwrap_or_default();
    let mut out: Vec<(Ipv6Net, u32)> = nl
        .addresses6(None)?
        .into_iter()
        .map(|(_, net)| (host(net.addr()), SKIP_NODE_ADDRESS))
        .collect();
    out.push((pod_cidr6.trunc(), SKIP_CLUSTER));
    if let Some(v6) = e.and_then(|e| e.ipv6.as_ref()) {
        out.push((v6.cluster_cidr, SKIP_CLUSTER));
    }
    out.sort();
    out.dedup_by_key(|(n, _)| *n);
    Ok(out)
}

/// The `EGRESS` map value for a node with pod CIDR `pod_cidr` and egress `e` (off
/// without IPv4 egress).
pub fn kernel_config(e: Option<&Egress>, pod_cidr: Ipv4Net) -> EgressConfig {
    let map = |a: Ipv4Addr| vethbpf_common::ipv4_to_map(a.octets());
    let Some((e, nat_addr, cluster)) = e.and_then(|e| Some((e, e.nat_addr?, e.cluster_cidr?)))
    else {
        return EgressConfig::default();
    };
    EgressConfig {
        flags: EGRESS_F_ENABLED | if e.masquerade { EGRESS_F_MASQUERADE } else { 0 },
        nat_addr: map(nat_addr),
        uplink_ifindex: e.uplink_ifindex,
        max_flows: e.max_flows,
        port_min: e.nat_ports.first,
        port_max: e.nat_ports.last,
        pod_net: map(pod_cidr.network()),
        pod_mask: map(pod_cidr.netmask()),
        cluster_net: map(cluster.network()),
        cluster_mask: map(cluster.netmask()),
        hash_seed: e.hash_seed,
    }
}

/// The `EGRESS6` map value for a node with IPv6 pod CIDR `pod_cidr6` and egress `e`
/// (off without IPv6 egress).
pub fn kernel_config6(e: Option<&Egress>, pod_cidr6: Ipv6Net) -> EgressConfig6 {
    let map = |a: Ipv6Addr| ipv6_to_map(a.octets());
    let Some((e, v6)) = e.and_then(|e| Some((e, e.ipv6.as_ref()?))) else {
        return EgressConfig6::default();
    };
    EgressConfig6 {
        flags: EGRESS_F_ENABLED | if e.masquerade { EGRESS_F_MASQUERADE } else { 0 },
        uplink_ifindex: e.uplink_ifindex,
        max_flows: e.max_flows,
        port_min: e.nat_ports.first,
        port_max: e.nat_ports.last,
        hash_seed: e.hash_seed,
        _pad: 0,
        nat_addr: map(v6.nat_addr),
        pod_net: map(pod_cidr6.network()),
        pod_mask: map(pod_cidr6.netmask()),
        cluster_net: map(v6.cluster_cidr.network()),
        cluster_mask: map(v6.cluster_cidr.netmask()),
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
        let e = resolve(&mut nl, &EgressRequest::default(), Some(pod()), None)
            .unwrap()
            .expect("egress on");
        assert_eq!(e.uplink, "up0");
        assert_eq!(e.nat_addr, Some(Ipv4Addr::new(172, 30, 0, 2)));
        assert_eq!(e.ipv6, None, "no IPv6 pod CIDR");
        assert_eq!(e.cluster_cidr, Some(pod()));
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
            resolve(&mut nl, &EgressRequest::default(), Some(pod()), None).unwrap(),
            None
        );
        let req = EgressRequest {
            no_masquerade: true,
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod()), None),
            Err(EgressError::NoUplink)
        ));
        let req = EgressRequest {
            uplink: Some("eth9".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod()), None),
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
            assert!(
                resolve(&mut nl, &req, Some(pod()), None).is_err(),
                "{req:?}"
            );
        }
        let i = nl.add_veth("bare", "bare-peer").unwrap();
        let _ = i;
        let req = EgressRequest {
            uplink: Some("bare".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, Some(pod()), None),
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
            None,
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
        let e = resolve(&mut nl, &EgressRequest::default(), Some(pod()), None)
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
        moved.nat_addr = Some(Ipv4Addr::new(172, 30, 0, 9));
        assert!(matches!(
            keep(&mut nl, Some(&moved), &EgressRequest::default()),
            Err(EgressError::AddressChanged { .. })
        ));
    }

    fn node_with_ipv6_uplink() -> FakeNetlink {
        use crate::kernel::netlink::Route6Spec;
        let mut nl = FakeNetlink::default();
        let i = nl.add_veth("up0", "peer0").unwrap();
        nl.set_link_up(i).unwrap();
        nl.add_address6(i, "2001:db8:30::2/64".parse().unwrap())
            .unwrap();
        nl.add_route6(&Route6Spec {
            dst: "::/0".parse().unwrap(),
            oif: i,
            gateway: None,
        })
        .unwrap();
        nl
    }

    fn pod6() -> Ipv6Net {
        "fd00:10:244::/64".parse().unwrap()
    }

    #[test]
    fn an_ipv6_only_node_gets_ipv6_egress_by_its_ipv6_default_route() {
        let mut nl = node_with_ipv6_uplink();
        let e = resolve(&mut nl, &EgressRequest::default(), None, Some(pod6()))
            .unwrap()
            .expect("egress on");
        assert_eq!(e.uplink, "up0");
        assert_eq!(e.nat_addr, None);
        let v6 = e.ipv6.clone().expect("IPv6 egress");
        assert_eq!(v6.nat_addr, "2001:db8:30::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.cluster_cidr, pod6());
        assert!(describe(Some(&e)).contains("2001:db8:30::2"));
        assert_eq!(kernel_config(Some(&e), pod()), EgressConfig::default());
        let k = kernel_config6(Some(&e), pod6());
        assert_eq!(k.flags, EGRESS_F_ENABLED | EGRESS_F_MASQUERADE);
        assert_eq!(k.nat_addr, ipv6_to_map(v6.nat_addr.octets()));
        assert_eq!(k.port_min, e.nat_ports.first);
        // An IPv4 cluster CIDR makes no sense without IPv4 pods.
        let req = EgressRequest {
            cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&mut nl, &req, None, Some(pod6())),
            Err(EgressError::NoIpv4PodCidr)
        ));
        // The address went away: `up` on the node refuses, naming it.
        let mut moved = e.clone();
        moved.ipv6 = Some(Egress6 {
            nat_addr: "2001:db8:30::9".parse().unwrap(),
            cluster_cidr: pod6(),
        });
        assert!(matches!(
            keep(&mut nl, Some(&moved), &EgressRequest::default()),
            Err(EgressError::AddressChanged { .. })
        ));
        assert_eq!(
            keep(&mut nl, Some(&e), &EgressRequest::default()).unwrap(),
            Some(e)
        );
    }

    #[test]
    fn a_dual_stack_node_gets_both_families_and_ipv6_needs_a_global_address() {
        let mut nl = node_with_uplink();
        let up0 = nl.link_by_name("up0").unwrap().unwrap().index;
        // Only link-local IPv6 on the uplink: IPv4 egress alone.
        let e = resolve(
            &mut nl,
            &EgressRequest::default(),
            Some(pod()),
            Some(pod6()),
        )
        .unwrap()
        .unwrap();
        assert!(e.nat_addr.is_some());
        assert_eq!(e.ipv6, None);
        nl.add_address6(up0, "2001:db8:30::2/64".parse().unwrap())
            .unwrap();
        let e = resolve(
            &mut nl,
            &EgressRequest::default(),
            Some(pod()),
            Some(pod6()),
        )
        .unwrap()
        .unwrap();
        assert!(e.nat_addr.is_some());
        assert!(e.ipv6.is_some());
        let skip = skip_entries6(&mut nl, pod6(), Some(&e)).unwrap();
        assert!(skip.contains(&(
            "2001:db8:30::2/128".parse().unwrap(),
            vethbpf_common::SKIP_NODE_ADDRESS
        )));
        assert!(skip.contains(&(pod6(), vethbpf_common::SKIP_CLUSTER)));
    }
}
