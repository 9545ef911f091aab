//! `up`, `down` and `status`: the node-wide lifecycle of the pinned datapath.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::programs::ProgramInfo;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use tracing::info;
use vethbpf_common::{
    Config, NAT_MAX_FLOWS_DEFAULT, PROG_FROM_POD, PROG_FROM_UPLINK, ROUTE_KIND_POD_CIDR, Route,
    Verdict, ipv4_to_map,
};

use crate::datapath::fill::map_fill;
use crate::datapath::maps::{Maps, MapsError};
use crate::datapath::pods::{self, AttachState};
use crate::datapath::{self, AttachMode, BpfError, Pins};
use crate::egress::table::TableError;
use crate::egress::{self, Egress, EgressCounters, EgressError, EgressRequest, EgressStatus};
use crate::endpoint::{self, EndpointError, Env};
use crate::error::ErrorKind;
use crate::kernel::bpffs::{self, BpffsError};
use crate::kernel::netlink::{Netlink, NetlinkError, RtNetlink};
use crate::state::ident::MacAddr;
use crate::state::{Locked, NodeConfig, StateDir, StateError};

/// Why `up`, `down` or `status` was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the gateway {gateway} lies inside the pod CIDR {cidr}; choose a gateway outside it")]
    GatewayInCidr { gateway: Ipv4Addr, cidr: Ipv4Net },
    #[error("no pod CIDR given; give one per family (IPv4, IPv6 or both)")]
    NoPodCidr,
    #[error("two {family} pod CIDRs given ({first} and {second}); give at most one per family")]
    TwoCidrsOfAFamily {
        family: &'static str,
        first: IpNet,
        second: IpNet,
    },
    #[error(
        "the IPv6 pod CIDR {cidr} is {what}; give a global or unique local prefix (e.g. fd00:10:244::/64)"
    )]
    BadPodCidr6 { cidr: Ipv6Net, what: &'static str },
    #[error(
        "the node is up with pod CIDR {current} and has {endpoints} endpoint(s); delete them (or `vethbpf down`) before changing it to {requested}"
    )]
    CidrChange {
        current: String,
        requested: String,
        endpoints: usize,
    },
    #[error(
        "the node is up with gateway {current} and has {endpoints} endpoint(s); delete them (or `vethbpf down`) before changing it to {requested}"
    )]
    GatewayChange {
        current: Ipv4Addr,
        requested: Ipv4Addr,
        endpoints: usize,
    },
    #[error(
        "the node was brought up with --bpffs-dir {recorded}, not {requested}; use the same directory or `vethbpf down` first"
    )]
    BpffsMismatch {
        recorded: PathBuf,
        requested: PathBuf,
    },
    #[error(
        "the node is up with --pod-attach {current}; pods cannot change how they are attached on a node that is up: `vethbpf down` first, or leave --pod-attach out"
    )]
    PodAttachChange {
        current: &'static str,
        requested: &'static str,
    },
    #[error(
        "--pod-attach tcx needs TCX links, which this kernel does not have (Linux 6.6+); use --pod-attach tc"
    )]
    NoTcx,
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Nat(#[from] TableError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl NodeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::GatewayInCidr { .. }
            | NodeError::NoPodCidr
            | NodeError::TwoCidrsOfAFamily { .. }
            | NodeError::BadPodCidr6 { .. }
            | NodeError::NoTcx => ErrorKind::Usage,
            NodeError::CidrChange { .. }
            | NodeError::PodAttachChange { .. }
            | NodeError::GatewayChange { .. }
            | NodeError::BpffsMismatch { .. } => ErrorKind::Conflict,
            NodeError::Bpf(e) => e.kind(),
            NodeError::Maps(e) => e.kind(),
            NodeError::Endpoint(e) => e.kind(),
            NodeError::Egress(e) => e.kind(),
            NodeError::Nat(e) => e.kind(),
            NodeError::Netlink(e) => e.kind(),
            NodeError::Bpffs(_) | NodeError::State(_) => ErrorKind::Other,
        }
    }
}

/// What `up` is asked for.
#[derive(Clone, Debug)]
pub struct UpRequest {
    /// The IPv4 pod CIDR, if pods get IPv4.
    pub pod_cidr: Option<Ipv4Net>,
    /// The IPv6 pod CIDR, if pods get IPv6. At least one of the two.
    pub pod_cidr6: Option<Ipv6Net>,
    pub gateway: Ipv4Addr,
    pub bpffs_dir: PathBuf,
    /// Upgrade the loaded program to this build's, atomically on every link.
    pub replace: bool,
    /// How pods' host veths get `from_pod` (`--pod-attach`); `None`: what the node
    /// has if it is up, else [`AttachMode::Tc`].
    pub pod_attach: Option<AttachMode>,
    /// Pod egress (uplink, masquerade, NAT), as given on the command line.
    pub egress: EgressRequest,
}

/// What `up` did.
#[derive(Clone, Debug, Serialize)]
pub struct UpReport {
    /// `loaded` (fresh), `reloaded` (pins were missing), `replaced` (program
    /// upgraded in place), `reconfigured`, or `unchanged`.
    pub action: &'static str,
    pub config: NodeConfig,
    pub program_id: Option<u32>,
    /// With `replaced`: how many attachments (TCX links, cls_bpf filters) were
    /// switched to the new programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<usize>,
}

/// The NAT table's flow limit: the node's, or the default (its maps exist either
/// way).
fn nat_flows(e: Option<&Egress>) -> u32 {
    e.map_or(NAT_MAX_FLOWS_DEFAULT, |e| e.max_flows)
}

fn kernel_config(node: &NodeConfig) -> Config {
    Config {
        gateway_ip: ipv4_to_map(node.gateway.octets()),
        flags: 0,
        gateway_mac: node.gateway_mac.0,
        _pad: [0; 2],
    }
}

/// The `ROUTES` entry of the IPv4 pod CIDR itself (kind `ROUTE_KIND_POD_CIDR`): an
/// address in it that no endpoint's /32 covers is no pod's, and the datapath drops
/// what a pod sends there (`drop_unknown_destination`) instead of handing it to the
/// node stack. Replaces the entry of the `old` CIDR; none for a node without IPv4.
fn set_pod_cidr_route(
    maps: &mut Maps,
    old: Option<Ipv4Net>,
    cidr: Option<Ipv4Net>,
) -> Result<(), MapsError> {
    if let Some(old) = old.filter(|old| Some(*old) != cidr) {
        maps.del_route(old)?;
    }
    let Some(cidr) = cidr else {
        return Ok(());
    };
    maps.put_route(
        cidr,
        &Route {
            kind: ROUTE_KIND_POD_CIDR,
            ifindex: 0,
            endpoint_id: 0,
            mac: [0; 6],
            _pad: [0; 2],
        },
    )
}

/// The pod CIDRs of a node, as messages show them.
pub fn fmt_cidrs(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> String {
    match (v4, v6) {
        (Some(a), Some(b)) => format!("{a} and {b}"),
        (Some(a), None) => a.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => "none".into(),
    }
}

/// Pod CIDRs as given on a command line, at most one per family, as `(IPv4, IPv6)`;
/// host bits are cleared.
pub fn split_cidrs(cidrs: &[IpNet]) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), NodeError> {
    let (mut v4, mut v6): (Option<Ipv4Net>, Option<Ipv6Net>) = (None, None);
    for cidr in cidrs {
        let (family, first) = match cidr.trunc() {
            IpNet::V4(c) => ("IPv4", v4.replace(c).map(IpNet::V4)),
            IpNet::V6(c) => ("IPv6", v6.replace(c).map(IpNet::V6)),
        };
        if let Some(first) = first {
            return Err(NodeError::TwoCidrsOfAFamily {
                family,
                first,
                second: *cidr,
            });
        }
    }
    Ok((v4, v6))
}

/// What `up` refuses in the pod CIDRs before it changes anything.
fn check_cidrs(req: &UpRequest) -> Result<(), NodeError> {
    if req.pod_cidr.is_none() && req.pod_cidr6.is_none() {
        return Err(NodeError::NoPodCidr);
    }
    if let Some(cidr) = req.pod_cidr
        && cidr.contains(&req.gateway)
    {
        return Err(NodeError::GatewayInCidr {
            gateway: req.gateway,
            cidr,
        });
    }
    if let Some(cidr) = req.pod_cidr6 {
        // Pods' addresses must be routable unicast ones: link-local is the gateway's
        // scope; the others are not unicast at all.
        let overlaps = |other: Ipv6Net| cidr.contains(&other.network()) || other.contains(&cidr);
        let what = if overlaps(Ipv6Net::new_assert(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
        )) {
            Some("link-local")
        } else if overlaps(Ipv6Net::new_assert(
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
        )) {
            Some("multicast")
        } else if cidr.contains(&Ipv6Addr::LOCALHOST) || cidr.contains(&Ipv6Addr::UNSPECIFIED) {
            Some("the loopback or unspecified address")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(NodeError::BadPodCidr6 { cidr, what });
        }
    }
    Ok(())
}

/// Loads and pins the datapath (or checks that it is there). Running it again with
/// the same settings changes nothing (but the list of node addresses pods reach
/// without egress, read again). `nl` is rtnetlink in the node's namespace (the
/// uplink, its address, the node's addresses).
pub fn up(
    locked: &mut Locked,
    req: &UpRequest,
    object: &[u8],
    nl: &mut dyn Netlink,
) -> Result<UpReport, NodeError> {
    // Before anything is mounted or read: a binary without the datapath can do no `up`.
    datapath::check_object(object)?;
    bpffs::check_lasting(&req.bpffs_dir)?;
    check_cidrs(req)?;
    let endpoints = locked.state.endpoints.len();
    if let Some(current) = locked.state.node.clone() {
        if current.bpffs_dir != req.bpffs_dir {
            return Err(NodeError::BpffsMismatch {
                recorded: current.bpffs_dir,
                requested: req.bpffs_dir.clone(),
            });
        }
        if (current.pod_cidr, current.pod_cidr6) != (req.pod_cidr, req.pod_cidr6) && endpoints > 0 {
            return Err(NodeError::CidrChange {
                current: fmt_cidrs(current.pod_cidr, current.pod_cidr6),
                requested: fmt_cidrs(req.pod_cidr, req.pod_cidr6),
                endpoints,
            });
        }
        if current.gateway != req.gateway && endpoints > 0 {
            return Err(NodeError::GatewayChange {
                current: current.gateway,
                requested: req.gateway,
                endpoints,
            });
        }
        if let Some(requested) = req.pod_attach
            && requested != current.pod_attach
        {
            return Err(NodeError::PodAttachChange {
                current: current.pod_attach.name(),
                requested: requested.name(),
            });
        }
        // Before anything changes: egress keeps its settings, or this is refused.
        let egress = egress::keep(nl, current.egress.as_ref(), &req.egress)?;
        let nat_flows = nat_flows(egress.as_ref());
        let pins = Pins::new(&current.bpffs_dir);
        let mut action = "unchanged";
        let mut replaced = None;
        let mut bpffs_mount = current.bpffs_mount.clone();
        if !pins.is_loaded() {
            // The bpffs lost our pins (a reboot, a manual rm): load again.
            if let Some(m) = bpffs::ensure(pins.root())? {
                bpffs_mount = Some(m);
            }
            datapath::load_and_pin(&pins, object, nat_flows)?;
            action = "reloaded";
        } else if req.replace {
            let host_veths: Vec<(String, u32)> = locked
                .state
                .endpoints
                .values()
                .map(|e| (e.host_veth.clone(), e.id))
                .collect();
            let uplink = egress.as_ref().map(|e| e.uplink.as_str());
            let (info, swapped) = datapath::replace(
                &pins,
                object,
                datapath::Modes {
                    pods: current.pod_attach,
                    node: current.attach_mode,
                },
                &host_veths,
                uplink,
                nat_flows,
            )?;
            info!(
                program_id = info.id(),
                swapped,
                pods = current.pod_attach.name(),
                node = current.attach_mode.name(),
                "program replaced"
            );
            replaced = Some(swapped);
            action = "replaced";
        }
        let config = NodeConfig {
            pod_cidr: req.pod_cidr,
            pod_cidr6: req.pod_cidr6,
            gateway: req.gateway,
            bpffs_mount,
            egress,
            ..current.clone()
        };
        let mut maps = Maps::open(&pins)?;
        if replaced.is_some() {
            // Pods of a datapath from before ENDPOINT_SLOTS get theirs (their
            // filters got their classids in the swap).
            let filled = maps.fill_slots()?;
            if filled > 0 {
                info!(filled, "endpoint slots filled");
            }
        }
        // Idempotent: refreshes the node's addresses, re-attaches a lost uplink link.
        egress::apply(
            &pins,
            nl,
            config.pod_cidr,
            config.pod_cidr6,
            config.egress.as_ref(),
            config.attach_mode,
        )?;
        if config != current || action != "unchanged" {
            maps.set_config(&kernel_config(&config))?;
            set_pod_cidr_route(&mut maps, current.pod_cidr, config.pod_cidr)?;
            locked.state.node = Some(config.clone());
            locked.save()?;
            if action == "unchanged" {
                action = "reconfigured";
            }
        }
        let program_id = datapath::program_info(&pins).ok().map(|p| p.id());
        return Ok(UpReport {
            action,
            config,
            program_id,
            replaced,
        });
    }

    // Before anything is made: the uplink and NAT settings, or a clear refusal.
    let node_attach = datapath::attach_mode();
    let pod_attach = req.pod_attach.unwrap_or(AttachMode::Tc);
    if pod_attach == AttachMode::Tcx && node_attach != AttachMode::Tcx {
        return Err(NodeError::NoTcx);
    }
    let egress = egress::resolve(nl, &req.egress, req.pod_cidr, req.pod_cidr6)?;
    let pins = Pins::new(&req.bpffs_dir);
    let mounted = bpffs::ensure(pins.root())?;
    let config = NodeConfig {
        pod_cidr: req.pod_cidr,
        pod_cidr6: req.pod_cidr6,
        gateway: req.gateway,
        gateway_mac: MacAddr::GATEWAY,
        bpffs_dir: req.bpffs_dir.clone(),
        bpffs_mount: mounted.clone(),
        attach_mode: node_attach,
        pod_attach,
        egress,
    };
    let loaded = (|| {
        let info = datapath::load_and_pin(&pins, object, nat_flows(config.egress.as_ref()))?;
        let mut maps = Maps::open(&pins)?;
        maps.set_config(&kernel_config(&config))?;
        set_pod_cidr_route(&mut maps, None, config.pod_cidr)?;
        egress::apply(
            &pins,
            nl,
            config.pod_cidr,
            config.pod_cidr6,
            config.egress.as_ref(),
            config.attach_mode,
        )?;
        locked.state.node = Some(config.clone());
        locked.save()?;
        Ok::<_, NodeError>(info)
    })();
    match loaded {
        Ok(info) => {
            info!(program_id = info.id(), dir = %pins.root().display(), "datapath loaded");
            Ok(UpReport {
                action: "loaded",
                config,
                program_id: Some(info.id()),
                replaced: None,
            })
        }
        Err(e) => {
            locked.state.node = None;
            if let Some(eg) = &config.egress {
                let _ = egress::detach_uplink(&pins, &eg.uplink, config.attach_mode);
            }
            let _ = datapath::remove_all(&pins, mounted.as_deref());
            Err(e)
        }
    }
}

/// What `down` removed.
#[derive(Clone, Debug, Serialize)]
pub struct DownReport {
    pub was_up: bool,
    pub endpoints_removed: Vec<String>,
}

/// Deletes every endpoint and every pinned object; removes the state.
pub fn down(
    env: &mut Env<'_>,
    state_dir: &StateDir,
    mut locked: Locked,
) -> Result<DownReport, NodeError> {
    let Some(node) = locked.state.node.clone() else {
        return down_not_up(state_dir, locked);
    };
    bpffs::check_lasting(&node.bpffs_dir)?;
    // An add that died halfway has no record, so the loop below would miss it.
    endpoint::finish_pending(env, &mut locked)?;
    let mut removed = Vec::new();
    let names: Vec<String> = locked.state.endpoints.keys().cloned().collect();
    for name in names {
        endpoint::del_holding_lock(env, &mut locked, &name)?;
        removed.push(name);
    }
    let pins = Pins::new(&node.bpffs_dir);
    if let Some(eg) = &node.egress {
        egress::detach_uplink(&pins, &eg.uplink, node.attach_mode)?;
    }
    datapath::remove_all(&pins, node.bpffs_mount.as_deref())?;
    state_dir.remove(locked)?;
    Ok(DownReport {
        was_up: true,
        endpoints_removed: removed,
    })
}

/// `down` on a node that is not up: nothing pinned, no endpoints; only a leftover
/// state file, if any, to remove.
pub fn down_not_up(state_dir: &StateDir, locked: Locked) -> Result<DownReport, NodeError> {
    state_dir.remove(locked)?;
    Ok(DownReport {
        was_up: false,
        endpoints_removed: vec![],
    })
}

/// The pinned program, as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramStatus {
    pub id: u32,
    pub name: String,
    pub tag: String,
    pub verified_instructions: Option<u32>,
    pub pinned: PathBuf,
}

/// A pinned map and its number of entries, as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    /// The kernel's map type (hash, lpm_trie, array, ...).
    pub kind: &'static str,
    /// Entries now (arrays: their size; a ring buffer: 0).
    pub entries: usize,
    /// Capacity (bytes for a ring buffer).
    pub max_entries: u32,
    pub pinned: PathBuf,
}

/// An endpoint's attachment, as `status` shows it, read from the kernel: the
/// program it runs (and the TCX link's id), and whether that is the pinned one.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentStatus {
    pub endpoint: String,
    pub host_veth: String,
    /// `tcx` or `tc` (the node's `pod_attach`).
    pub mode: &'static str,
    /// `ok` (runs the pinned program), `missing`, `stale` (another program),
    /// `foreign` (someone else's filter in vethbpf's place); `vethbpf reconcile`
    /// repairs all but `ok`.
    pub state: AttachState,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// What `status` shows: the node config, programs, maps and attachments.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub up: bool,
    pub node: Option<NodeConfig>,
    pub endpoints: usize,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub attachments: Vec<AttachmentStatus>,
    /// Pod egress: settings, the uplink attachment, the NAT table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressStatus>,
}

impl Status {
    /// The status of a node that is not up.
    pub fn not_up() -> Self {
        Status {
            up: false,
            node: None,
            endpoints: 0,
            programs: vec![],
            maps: vec![],
            attachments: vec![],
            egress: None,
        }
    }
}

/// The node's status, read from the state and the pins.
pub fn status(locked: &Locked) -> Result<Status, NodeError> {
    let Some(node) = locked.state.node.clone() else {
        return Ok(Status::not_up());
    };
    let pins = Pins::new(&node.bpffs_dir);
    let info = datapath::program_info(&pins)?;
    let mut programs = vec![ProgramStatus {
        id: info.id(),
        // The raw bytes: `name_as_str` runs aya's kernel feature probes.
        name: String::from_utf8_lossy(info.name()).into_owned(),
        tag: format!("{:016x}", info.tag()),
        verified_instructions: info.verified_instruction_count(),
        pinned: pins.program(PROG_FROM_POD),
    }];
    let uplink_prog = pins.program(PROG_FROM_UPLINK);
    if let Ok(info) = ProgramInfo::from_pin(&uplink_prog) {
        programs.push(ProgramStatus {
            id: info.id(),
            name: String::from_utf8_lossy(info.name()).into_owned(),
            tag: format!("{:016x}", info.tag()),
            verified_instructions: info.verified_instruction_count(),
            pinned: uplink_prog,
        });
    }
    let maps = Maps::open(&pins)?;
    // New flows the NAT refused and the node's own packets on the uplink, over the
    // node's counters (id 0) and every pod's; only a node with egress has any.
    let mut counters = EgressCounters::default();
    if node.egress.is_some() {
        let ids = || std::iter::once(0).chain(locked.state.endpoints.values().map(|e| e.id));
        counters.nat_table_full = maps.packets_of(Verdict::NatTableFull, ids())?;
        counters.nat_no_port = maps.packets_of(Verdict::DropNatNoPort, ids())?;
        counters.uplink_passed = maps.packets_of(Verdict::UplinkPass, ids())?;
    }
    let egress = egress::status(
        &pins,
        node.egress.as_ref(),
        node.pod_cidr6,
        node.attach_mode,
        counters,
    )?;
    let maps = map_fill(&pins)?
        .into_iter()
        .map(|m| MapStatus {
            name: m.name,
            kind: m.kind,
            entries: m.entries.unwrap_or(0) as usize,
            max_entries: m.max_entries,
            pinned: pins.map(m.name),
        })
        .collect();
    let hosts: Vec<(&str, u32)> = locked
        .state
        .endpoints
        .values()
        .map(|e| (e.host_veth.as_str(), e.host_ifindex))
        .collect();
    let found = if hosts.is_empty() {
        Vec::new()
    } else {
        let mut nl = RtNetlink::connect()?;
        pods::read(&pins, node.pod_attach, &mut nl, info.id(), &hosts)?
    };
    let attachments = locked
        .state
        .endpoints
        .values()
        .zip(found)
        .map(|(e, a)| AttachmentStatus {
            endpoint: e.name.clone(),
            host_veth: e.host_veth.clone(),
            mode: node.pod_attach.name(),
            state: a.state,
            link_id: a.link_id,
            program_id: a.program_id,
        })
        .collect();
    Ok(Status {
        up: true,
        endpoints: locked.state.endpoints.len(),
        node: Some(node),
        programs,
        maps,
        attachments,
        egress: Some(egress),
    })
}
