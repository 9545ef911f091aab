//! `up` with the cluster part: the node's own `up` (program, maps, config) and its
//! place in the cluster, checked together before anything changes, so that bad
//! input leaves the node as it was. Used by the `up` command and by the agent.

use tracing::warn;

use super::ClusterError;
use super::maps::PinnedNodeMaps;
use super::setup::{self, ClusterReport, ClusterRequest};
use crate::datapath::{self, Pins};
use crate::kernel::netlink::Netlink;
use crate::node::{self, NodeError, UpReport, UpRequest};
use crate::state::Locked;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl JoinError {
    /// What kind of failure this is (see [`crate::error`]).
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            JoinError::Node(e) => e.kind(),
            JoinError::Cluster(e) => e.kind(),
        }
    }
}

/// What `up` did: the node, and its cluster part if it has one.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JoinReport {
    #[serde(flatten)]
    pub node: UpReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

/// Brings the node up and, with `cluster` (or a cluster it is in already, to put
/// back what a reboot or an unmounted bpffs took), sets up its cluster part.
pub fn up(
    nl: &mut dyn Netlink,
    locked: &mut Locked,
    req: &UpRequest,
    cluster: Option<&ClusterRequest>,
    object: &[u8],
) -> Result<JoinReport, JoinError> {
    // Without flags, a node in a cluster stays in it as it is.
    let recorded = locked.state.cluster.as_ref().map(|c| ClusterRequest {
        cluster_cidr: c.cluster_cidr,
        cluster_cidr6: c.cluster_cidr6,
        overlay: c.overlay,
        uplink: Some(c.uplink.clone()),
    });
    let cluster = cluster.or(recorded.as_ref());
    let desired = match cluster {
        Some(c) => {
            let uplink = setup::find_uplink(nl, c.uplink.as_deref())?;
            let pod_cidr = req.pod_cidr.ok_or(ClusterError::NoIpv4PodCidr)?;
            Some(setup::plan(
                nl,
                locked,
                pod_cidr,
                req.pod_cidr6,
                c,
                &uplink,
            )?)
        }
        None => None,
    };
    let report = node::up(locked, req, object, nl)?;
    let node = locked.state.node.clone().ok_or(ClusterError::NotUp)?;
    let pins = Pins::new(&node.bpffs_dir);
    let Some(desired) = desired else {
        return Ok(JoinReport {
            node: report,
            cluster: None,
        });
    };
    let applied = PinnedNodeMaps::open(&pins)
        .map_err(ClusterError::from)
        .and_then(|mut maps| setup::apply(nl, &mut maps, &pins, node.attach_mode, locked, desired));
    match applied {
        Ok(cluster) => Ok(JoinReport {
            node: report,
            cluster: Some(cluster),
        }),
        Err(e) => {
            // A node loaded by this very call goes again: it had nothing before.
            if report.action == "loaded" {
                if let Err(undo) = datapath::remove_all(&pins, node.bpffs_mount.as_deref()) {
                    warn!(error = %undo, "undoing up");
                }
                locked.state.node = None;
                if let Err(undo) = locked.save() {
                    warn!(error = %undo, "undoing up");
                }
            }
            Err(e.into())
        }
    }
}
