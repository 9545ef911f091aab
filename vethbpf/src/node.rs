//! `up`, `down` and `status`: the node-wide lifecycle of the pinned datapath.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::info;
use vethbpf_common::{ALL_MAPS, Config, PROG_FROM_POD, ipv4_to_map};

use crate::datapath::maps::{Maps, MapsError};
use crate::datapath::{self, BpfError, Pins};
use crate::endpoint::{self, EndpointError, Env};
use crate::error::ErrorKind;
use crate::kernel::bpffs::{self, BpffsError};
use crate::state::ident::MacAddr;
use crate::state::{Locked, NodeConfig, StateDir, StateError};

/// Why `up`, `down` or `status` was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the gateway {gateway} lies inside the pod CIDR {cidr}; choose a gateway outside it")]
    GatewayInCidr { gateway: Ipv4Addr, cidr: Ipv4Net },
    #[error(
        "the node is up with pod CIDR {current} and has {endpoints} endpoint(s); delete them (or `vethbpf down`) before changing it to {requested}"
    )]
    CidrChange {
        current: Ipv4Net,
        requested: Ipv4Net,
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
}

impl NodeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::GatewayInCidr { .. } => ErrorKind::Usage,
            NodeError::CidrChange { .. }
            | NodeError::GatewayChange { .. }
            | NodeError::BpffsMismatch { .. } => ErrorKind::Conflict,
            NodeError::Bpf(e) => e.kind(),
            NodeError::Maps(e) => e.kind(),
            NodeError::Endpoint(e) => e.kind(),
            NodeError::Bpffs(_) | NodeError::State(_) => ErrorKind::Other,
        }
    }
}

/// What `up` is asked for.
#[derive(Clone, Debug)]
pub struct UpRequest {
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bpffs_dir: PathBuf,
    /// Upgrade the loaded program to this build's, atomically on every link.
    pub replace: bool,
}

/// What `up` did.
#[derive(Clone, Debug, Serialize)]
pub struct UpReport {
    /// `loaded` (fresh), `reloaded` (pins were missing), `replaced` (program
    /// upgraded in place), `reconfigured`, or `unchanged`.
    pub action: &'static str,
    pub config: NodeConfig,
    pub program_id: Option<u32>,
    /// With `replaced`: how many attachments (TCX links, or netlink filters in
    /// `config.attach_mode` netlink) were switched to the new program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<usize>,
}

fn kernel_config(node: &NodeConfig) -> Config {
    Config {
        gateway_ip: ipv4_to_map(node.gateway.octets()),
        flags: 0,
        gateway_mac: node.gateway_mac.0,
        _pad: [0; 2],
    }
}

/// Loads and pins the datapath (or checks that it is there). Running it again with
/// the same settings changes nothing.
pub fn up(locked: &mut Locked, req: &UpRequest, object: &[u8]) -> Result<UpReport, NodeError> {
    // Before anything is mounted or read: a binary without the datapath can do no `up`.
    datapath::check_object(object)?;
    bpffs::check_lasting(&req.bpffs_dir)?;
    if req.pod_cidr.contains(&req.gateway) {
        return Err(NodeError::GatewayInCidr {
            gateway: req.gateway,
            cidr: req.pod_cidr,
        });
    }
    let endpoints = locked.state.endpoints.len();
    if let Some(current) = locked.state.node.clone() {
        if current.bpffs_dir != req.bpffs_dir {
            return Err(NodeError::BpffsMismatch {
                recorded: current.bpffs_dir,
                requested: req.bpffs_dir.clone(),
            });
        }
        if current.pod_cidr != req.pod_cidr && endpoints > 0 {
            return Err(NodeError::CidrChange {
                current: current.pod_cidr,
                requested: req.pod_cidr,
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
        let pins = Pins::new(&current.bpffs_dir);
        let mut action = "unchanged";
        let mut replaced = None;
        let mut bpffs_mount = current.bpffs_mount.clone();
        if !pins.is_loaded() {
            // The bpffs lost our pins (a reboot, a manual rm): load again.
            if let Some(m) = bpffs::ensure(pins.root())? {
                bpffs_mount = Some(m);
            }
            datapath::load_and_pin(&pins, object)?;
            action = "reloaded";
        } else if req.replace {
            let host_veths: Vec<String> = locked
                .state
                .endpoints
                .values()
                .map(|e| e.host_veth.clone())
                .collect();
            let (info, swapped) =
                datapath::replace(&pins, object, current.attach_mode, &host_veths)?;
            info!(
                program_id = info.id(),
                swapped,
                mode = current.attach_mode.name(),
                "program replaced"
            );
            replaced = Some(swapped);
            action = "replaced";
        }
        let config = NodeConfig {
            pod_cidr: req.pod_cidr,
            gateway: req.gateway,
            bpffs_mount,
            ..current.clone()
        };
        let mut maps = Maps::open(&pins)?;
        if config != current || action != "unchanged" {
            maps.set_config(&kernel_config(&config))?;
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

    let pins = Pins::new(&req.bpffs_dir);
    let mounted = bpffs::ensure(pins.root())?;
    let config = NodeConfig {
        pod_cidr: req.pod_cidr,
        gateway: req.gateway,
        gateway_mac: MacAddr::GATEWAY,
        bpffs_dir: req.bpffs_dir.clone(),
        bpffs_mount: mounted.clone(),
        attach_mode: datapath::attach_mode(),
    };
    let loaded = (|| {
        let info = datapath::load_and_pin(&pins, object)?;
        Maps::open(&pins)?.set_config(&kernel_config(&config))?;
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
        endpoint::del(env, &mut locked, &name)?;
        removed.push(name);
    }
    datapath::remove_all(&Pins::new(&node.bpffs_dir), node.bpffs_mount.as_deref())?;
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
    pub entries: usize,
    pub pinned: PathBuf,
}

/// An endpoint's attachment, as `status` shows it (ids only for pinned TCX links).
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentStatus {
    pub endpoint: String,
    pub host_veth: String,
    pub mode: &'static str,
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
    let programs = vec![ProgramStatus {
        id: info.id(),
        // The raw bytes: `name_as_str` runs aya's kernel feature probes.
        name: String::from_utf8_lossy(info.name()).into_owned(),
        tag: format!("{:016x}", info.tag()),
        verified_instructions: info.verified_instruction_count(),
        pinned: pins.program(PROG_FROM_POD),
    }];
    let maps = Maps::open(&pins)?;
    let counts = maps.entry_counts();
    let maps = ALL_MAPS
        .iter()
        .map(|name| MapStatus {
            name,
            entries: counts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or(0),
            pinned: pins.map(name),
        })
        .collect();
    let attachments = locked
        .state
        .endpoints
        .values()
        .map(|e| {
            let ids = datapath::link_ids(&pins, PROG_FROM_POD, &e.host_veth);
            AttachmentStatus {
                endpoint: e.name.clone(),
                host_veth: e.host_veth.clone(),
                mode: node.attach_mode.name(),
                link_id: ids.map(|(l, _)| l),
                program_id: ids.map(|(_, p)| p),
            }
        })
        .collect();
    Ok(Status {
        up: true,
        endpoints: locked.state.endpoints.len(),
        node: Some(node),
        programs,
        maps,
        attachments,
    })
}
