//! What runs on tc ingress of each pod's host veth, read from the kernel: a pinned
//! TCX link and the program behind it, or the cls_bpf filter at vethbpf's place
//! and the program it runs (`TCA_BPF_ID`). `status`, `metrics` and the CNI CHECK
//! read it here; `reconcile` judges what it finds with the same functions and
//! repairs it.

use serde::Serialize;
use vethbpf_common::PROG_FROM_POD;

use super::attach::link_ids;
use super::{AttachMode, Pins};
use crate::kernel::netlink::{Netlink, NetlinkError, TcFilter};

/// How a pod's attachment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachState {
    /// vethbpf's attachment runs the pinned program.
    Ok,
    /// Nothing: no pinned TCX link, or no filter at vethbpf's place.
    Missing,
    /// vethbpf's attachment runs another program than the pinned one (an
    /// interrupted `up --replace`, someone's hand).
    Stale,
    /// A filter of another kind (not direct-action cls_bpf) holds vethbpf's place.
    Foreign,
}

impl AttachState {
    pub const fn name(self) -> &'static str {
        match self {
            AttachState::Ok => "ok",
            AttachState::Missing => "missing",
            AttachState::Stale => "stale",
            AttachState::Foreign => "foreign",
        }
    }
}

/// One pod's attachment as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodAttachment {
    pub state: AttachState,
    /// The TCX link's id (TCX only).
    pub link_id: Option<u32>,
    /// The program the attachment runs.
    pub program_id: Option<u32>,
}

/// How a TCX link that runs `program` (`None`: no pinned link; `Some(None)`: its
/// info cannot be read) stands against the `pinned` program.
pub(crate) fn link_state(program: Option<Option<u32>>, pinned: u32) -> AttachState {
    match program {
        None => AttachState::Missing,
        Some(Some(id)) if id == pinned => AttachState::Ok,
        Some(_) => AttachState::Stale,
    }
}

/// How what holds vethbpf's filter place stands against the `pinned` program.
pub(crate) fn filter_state(filter: Option<&TcFilter>, pinned: u32) -> AttachState {
    match filter {
        None => AttachState::Missing,
        Some(f) if f.kind != "bpf" || !f.direct_action => AttachState::Foreign,
        Some(f) if f.program_id == Some(pinned) => AttachState::Ok,
        Some(_) => AttachState::Stale,
    }
}

/// The attachment of `from_pod` on each host veth of `hosts` (name, index), in
/// that order, against the `pinned` program's id. TCX: from the pins (two bpf()
/// calls each); tc: one batch of filter gets through `nl`, in the node's namespace.
pub fn read(
    pins: &Pins,
    mode: AttachMode,
    nl: &mut dyn Netlink,
    pinned: u32,
    hosts: &[(&str, u32)],
) -> Result<Vec<PodAttachment>, NetlinkError> {
    Ok(match mode {
        AttachMode::Tcx => hosts
            .iter()
            .map(|(name, _)| {
                let ids = link_ids(pins, PROG_FROM_POD, name);
                // A pin whose link cannot be read is a link all the same.
                let exists = ids.is_some() || pins.link(PROG_FROM_POD, name).exists();
                PodAttachment {
                    state: link_state(exists.then_some(ids.map(|(_, p)| p)), pinned),
                    link_id: ids.map(|(l, _)| l),
                    program_id: ids.map(|(_, p)| p),
                }
            })
            .collect(),
        AttachMode::Tc => {
            let indexes: Vec<u32> = hosts.iter().map(|(_, i)| *i).collect();
            nl.ingress_filters(&indexes)?
                .into_iter()
                .map(|f| PodAttachment {
                    state: filter_state(f.as_ref(), pinned),
                    link_id: None,
                    program_id: f.and_then(|f| f.program_id),
                })
                .collect()
        }
    })
}
