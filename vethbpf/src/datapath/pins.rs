//! Where the pinned objects live under one bpffs dir.
//!
//! ```text
//! <bpffs>/progs/<program>            each program (from_pod)
//! <bpffs>/maps/<MAP>                 ROUTES, ENDPOINTS, CONFIG, STATS
//! <bpffs>/links/<host veth>          from_pod's TCX link on one endpoint's host veth
//! <bpffs>/links/<program>/<ifname>   another program's TCX link on an interface
//!                                    (from_uplink on the uplink, from_tunnel on the
//!                                    VXLAN device; '.' in a name pinned as ':')
//! ```

use std::path::{Path, PathBuf};

use vethbpf_common::PROG_FROM_POD;

/// An interface name as a pin name: bpffs refuses '.' in names (EPERM), interface
/// names may hold one (`eth0.100`, `flannel.1`) but never a ':', so '.' becomes ':'.
pub(crate) fn pin_name(ifname: &str) -> String {
    ifname.replace('.', ":")
}

/// The interface name a pin name stands for (see [`pin_name`]).
pub(crate) fn ifname_of_pin(pin: &str) -> String {
    pin.replace(':', ".")
}

/// Paths of the pinned objects under one bpffs dir.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// The pins under the bpffs dir `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub(crate) fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    /// The pinned program `name`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }
    pub(crate) fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    /// Where `program`'s links are pinned, one file per interface. from_pod's, one
    /// per endpoint, are directly in links/ (where they have always been); every
    /// other program has a directory of its own, so that listing one program's
    /// links never finds another's.
    pub(crate) fn links_dir(&self, program: &str) -> PathBuf {
        let links = self.root.join("links");
        if program == PROG_FROM_POD {
            links
        } else {
            links.join(program)
        }
    }
    /// The pinned TCX link of `program` on `ifname`.
    pub(crate) fn link(&self, program: &str, ifname: &str) -> PathBuf {
        self.links_dir(program).join(pin_name(ifname))
    }
    /// Whether `up` has pinned the datapath here.
    pub fn is_loaded(&self) -> bool {
        self.program(PROG_FROM_POD).exists()
    }
}
