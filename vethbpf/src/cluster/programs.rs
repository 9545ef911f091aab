//! `from_uplink` and `from_tunnel`: loaded from the embedded object (their maps
//! bound to the pins `up` made), pinned next to `from_pod`, attached with TCX links
//! pinned under `cluster-links/` (apart from the endpoints' `links/`, which
//! `reconcile` checks against endpoint records).
//!
//! ```text
//! <bpffs>/progs/from_uplink, progs/from_tunnel
//! <bpffs>/cluster-links/uplink   from_uplink on the uplink (direct routing)
//! <bpffs>/cluster-links/tunnel   from_tunnel on the VXLAN device
//! ```

use std::fs;
use std::io;
use std::path::PathBuf;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{
    self, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType,
};
use aya::programs::{LinkOrder, ProgramError};
use aya::{EbpfLoader, pin::PinError};
use vethbpf_common::{ALL_MAPS, PROG_FROM_TUNNEL, PROG_FROM_UPLINK};

use crate::bpf::Pins;
use crate::state::AttachMode;

/// The programs this module owns.
pub const PROGRAMS: [&str; 2] = [PROG_FROM_UPLINK, PROG_FROM_TUNNEL];

/// Where each attachment's link is pinned, and which program it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// `from_uplink` on the uplink.
    Uplink,
    /// `from_tunnel` on the VXLAN device.
    Tunnel,
}

impl Attachment {
    pub const ALL: [Attachment; 2] = [Attachment::Uplink, Attachment::Tunnel];

    pub const fn pin_name(self) -> &'static str {
        match self {
            Attachment::Uplink => "uplink",
            Attachment::Tunnel => "tunnel",
        }
    }

    pub const fn program(self) -> &'static str {
        match self {
            Attachment::Uplink => PROG_FROM_UPLINK,
            Attachment::Tunnel => PROG_FROM_TUNNEL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramsError {
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    Missing(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error(
        "the pinned program {path} cannot be opened ({source}); `vethbpf up` loads the datapath again"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach {name} to {ifname}: {source}")]
    Attach {
        name: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("link pin {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("cannot create or remove {path}: {source}")]
    Fs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn program_path(pins: &Pins, name: &str) -> PathBuf {
    pins.root().join("progs").join(name)
}

fn links_dir(pins: &Pins) -> PathBuf {
    pins.root().join("cluster-links")
}

pub fn link_path(pins: &Pins, a: Attachment) -> PathBuf {
    links_dir(pins).join(a.pin_name())
}

/// Whether both programs are pinned.
pub fn is_loaded(pins: &Pins) -> bool {
    PROGRAMS.iter().all(|p| program_path(pins, p).exists())
}

/// Whether `a`'s link is pinned (TCX).
pub fn is_attached(pins: &Pins, a: Attachment) -> bool {
    link_path(pins, a).exists()
}

/// Loads the object with its maps bound to the pins of `up`, and the two programs
/// through the verifier.
fn load(pins: &Pins, object: &[u8]) -> Result<aya::Ebpf, ProgramsError> {
    let map_paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(ProgramsError::Load)?;
    for name in PROGRAMS {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| ProgramsError::Program { name, source })?;
    }
    Ok(ebpf)
}

fn classifier<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, ProgramsError> {
    ebpf.program_mut(name)
        .ok_or(ProgramsError::Missing(name))?
        .try_into()
        .map_err(|source| ProgramsError::Program { name, source })
}

/// Pins `prog` at `path` through a temporary name, so that a reader sees the old or
/// the new program, never none.
fn pin_over(prog: &mut SchedClassifier, path: PathBuf) -> Result<(), ProgramsError> {
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("prog")
    ));
    let _ = fs::remove_file(&tmp);
    prog.pin(&tmp).map_err(|source| ProgramsError::Pin {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, &path).map_err(|source| ProgramsError::Fs { path, source })
}

/// Loads and pins both programs (replacing pinned ones; attachments are
/// [`replace`]'s business).
pub fn load_and_pin(pins: &Pins, object: &[u8]) -> Result<(), ProgramsError> {
    let mut ebpf = load(pins, object)?;
    for name in PROGRAMS {
        pin_over(classifier(&mut ebpf, name)?, program_path(pins, name))?;
    }
    Ok(())
}

/// Attaches `a`'s pinned program to tc ingress of `ifname` (in the calling
/// thread's namespace); with TCX the link is pinned.
pub fn attach(
    pins: &Pins,
    a: Attachment,
    ifname: &str,
    mode: AttachMode,
) -> Result<(), ProgramsError> {
    let name = a.program();
    let path = program_path(pins, name);
    let mut prog =
        SchedClassifier::from_pin(&path).map_err(|source| ProgramsError::Open { path, source })?;
    let attach_err = |source| ProgramsError::Attach {
        name,
        ifname: ifname.to_string(),
        source,
    };
    match mode {
        AttachMode::Tcx => {
            let dir = links_dir(pins);
            fs::create_dir_all(&dir).map_err(|source| ProgramsError::Fs { path: dir, source })?;
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let path = link_path(pins, a);
            let fd_link: FdLink = link.try_into().map_err(|source| ProgramsError::Link {
                path: path.clone(),
                source,
            })?;
            fd_link
                .pin(&path)
                .map_err(|source| ProgramsError::Pin { path, source })?;
        }
        AttachMode::Netlink => {
            // The clsact qdisc may exist already (EEXIST): fine.
            let _ = tc::qdisc_add_clsact(ifname);
            let id = prog
                .attach(ifname, TcAttachType::Ingress)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            // The filter lives as long as the interface (see bpf::attach).
            std::mem::forget(link);
        }
    }
    Ok(())
}

/// Removes `a`'s pinned link: the program detaches when the last reference goes.
/// A missing pin is fine.
pub fn detach(pins: &Pins, a: Attachment) -> Result<(), ProgramsError> {
    let path = link_path(pins, a);
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(&path).map_err(|source| ProgramsError::Link {
        path: path.clone(),
        source,
    })?;
    let fd_link = link
        .unpin()
        .map_err(|source| ProgramsError::Fs { path, source })?;
    drop(fd_link);
    Ok(())
}

/// Upgrades both programs in place, as `bpf::replace` does for `from_pod`: every
/// pinned link switches atomically (`BPF_LINK_UPDATE`), then the program pins.
/// Returns how many links now run the new programs.
pub fn replace(pins: &Pins, object: &[u8]) -> Result<usize, ProgramsError> {
    let mut ebpf = load(pins, object)?;
    let mut updated = 0;
    for a in Attachment::ALL {
        let path = link_path(pins, a);
        if !path.exists() {
            continue;
        }
        let link_err = |source| ProgramsError::Link {
            path: path.clone(),
            source,
        };
        let prog = classifier(&mut ebpf, a.program())?;
        let pinned = PinnedLink::from_pin(&path).map_err(link_err)?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|source| ProgramsError::Attach {
                name: a.program(),
                ifname: a.pin_name().to_string(),
                source,
            })?;
        // The pin keeps the link; our handle to it can go.
        let taken = prog
            .take_link(id)
            .map_err(|source| ProgramsError::Program {
                name: a.program(),
                source,
            })?;
        let _fd: FdLink = taken.try_into().map_err(link_err)?;
        updated += 1;
    }
    for name in PROGRAMS {
        pin_over(classifier(&mut ebpf, name)?, program_path(pins, name))?;
    }
    Ok(updated)
}

/// Ids of the link pinned for `a` and of its program.
pub fn link_ids(pins: &Pins, a: Attachment) -> Option<(u32, u32)> {
    let link = PinnedLink::from_pin(link_path(pins, a)).ok()?;
    let fd: FdLink = link.into();
    let info = fd.info().ok()?;
    Some((info.id(), info.program_id()))
}

/// Information about a pinned program of this module.
pub fn program_info(pins: &Pins, name: &'static str) -> Option<aya::programs::ProgramInfo> {
    aya::programs::ProgramInfo::from_pin(program_path(pins, name)).ok()
}

/// Detaches everything and removes the pins (before `bpf::remove_all`, which
/// removes the directories when they are empty).
pub fn remove_all(pins: &Pins) -> Result<(), ProgramsError> {
    for a in Attachment::ALL {
        detach(pins, a)?;
    }
    let dir = links_dir(pins);
    match fs::remove_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(ProgramsError::Fs {
                path: dir,
                source: e,
            });
        }
        _ => {}
    }
    for name in PROGRAMS {
        let path = program_path(pins, name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ProgramsError::Fs { path, source: e });
            }
            _ => {}
        }
    }
    Ok(())
}
