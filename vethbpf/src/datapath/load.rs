//! Loading the embedded object, pinning its programs and maps, upgrading them in
//! place, and removing every pin again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::programs::ProgramInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, SchedClassifierLink};
use vethbpf_common::{
    ALL_MAPS, MAP_NAT, MAP_NAT6, PROG_FROM_POD, PROG_FROM_UPLINK, nat_map_capacity,
};

use super::attach::{AttachMode, detach, pinned_links, replace_filter};
use super::migrate::{self, Pending};
use super::{BpfError, PROGRAMS, Pins};
use crate::kernel::bpffs;

fn mkdirs(pins: &Pins) -> Result<(), BpfError> {
    for d in [
        pins.progs_dir(),
        pins.maps_dir(),
        pins.links_dir(PROG_FROM_POD),
    ] {
        fs::create_dir_all(&d).map_err(|source| BpfError::CreateDir { path: d, source })?;
    }
    Ok(())
}

/// Fails with [`BpfError::NoObject`] when `object` is the empty placeholder that
/// build.rs embeds in a build made before the eBPF object existed.
pub(crate) fn check_object(object: &[u8]) -> Result<(), BpfError> {
    if object.is_empty() {
        return Err(BpfError::NoObject);
    }
    Ok(())
}

/// Loads `object` with its maps bound to the pins under `pins` (created and pinned
/// if missing, reused if there and like this build's), and its programs through the
/// verifier. A pinned map unlike this build's gets a new map with its entries
/// (`migrate`): returned pending, for [`migrate::finish`] once nothing runs the old
/// programs. A NAT map made here holds `nat_flows` flows.
fn load_object(
    pins: &Pins,
    object: &[u8],
    nat_flows: u32,
) -> Result<(aya::Ebpf, Vec<Pending>), BpfError> {
    check_object(object)?;
    let nat_capacity = nat_map_capacity(nat_flows);
    let plan = migrate::plan(
        pins,
        object,
        &[(MAP_NAT, nat_capacity), (MAP_NAT6, nat_capacity)],
    )?;
    let map_paths: Vec<(&str, PathBuf)> = plan.bind.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_NAT, nat_capacity);
    loader.map_max_entries(MAP_NAT6, nat_capacity);
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut pending = plan.pending;
    let loaded = (|| {
        let mut ebpf = loader
            .load(object)
            .map_err(|e| BpfError::Load(Box::new(e)))?;
        for name in PROGRAMS {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| BpfError::Program {
                    program: name,
                    source: Box::new(source),
                })?;
        }
        for p in &mut pending {
            let map = ebpf.map(p.name()).ok_or(BpfError::MissingMap(p.name()))?;
            migrate::fill(p, map)?;
        }
        Ok(ebpf)
    })();
    match loaded {
        Ok(ebpf) => Ok((ebpf, pending)),
        Err(e) => {
            migrate::abandon(pending);
            Err(e)
        }
    }
}

/// Puts each new map in its old one's place.
fn finish_maps(pins: &Pins, pending: Vec<Pending>) -> Result<(), BpfError> {
    let mut rest = pending.into_iter();
    while let Some(p) = rest.next() {
        if let Err(e) = migrate::finish(p, pins) {
            migrate::abandon(rest.collect());
            return Err(e);
        }
    }
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| BpfError::Program {
            program: name,
            source: Box::new(source),
        })
}

/// Loads the embedded object and pins its programs and maps. Maps already pinned
/// (a previous `up`) are reused, so their entries survive; a NAT map made here
/// holds `nat_flows` flows. Returns the `from_pod` program.
pub(crate) fn load_and_pin(
    pins: &Pins,
    object: &[u8],
    nat_flows: u32,
) -> Result<ProgramInfo, BpfError> {
    mkdirs(pins)?;
    let (mut ebpf, pending) = load_object(pins, object, nat_flows)?;
    // Nothing runs these programs yet: the new maps can take their places now.
    finish_maps(pins, pending)?;
    for name in PROGRAMS {
        let prog = program(&mut ebpf, name)?;
        let path = pins.program(name);
        if path.exists() {
            fs::remove_file(&path).map_err(|source| BpfError::Remove {
                path: path.clone(),
                source,
            })?;
        }
        prog.pin(&path)
            .map_err(|source| BpfError::Pin { path, source })?;
    }
    program(&mut ebpf, PROG_FROM_POD)?
        .info()
        .map_err(|source| BpfError::Program {
            program: PROG_FROM_POD,
            source: Box::new(source),
        })
}

/// Upgrades the datapath in place: loads the embedded object (reusing the pinned
/// maps, so no entry or counter is lost), swaps the program of every attachment
/// atomically (traffic never sees a moment without a program): each pinned TCX
/// link with `BPF_LINK_UPDATE`, or in netlink mode the cls_bpf filter on each of
/// `endpoints` (host veths, with their endpoint ids: the filters' classids) and on
/// the `uplink` in place; then replaces the
/// program pins. Returns the new `from_pod` program and how many attachments now
/// run the new programs.
pub(crate) fn replace(
    pins: &Pins,
    object: &[u8],
    modes: Modes,
    endpoints: &[(String, u32)],
    uplink: Option<&str>,
    nat_flows: u32,
) -> Result<(ProgramInfo, usize), BpfError> {
    let (mut ebpf, pending) = load_object(pins, object, nat_flows)?;
    let uplinks: Vec<(String, Option<u32>)> =
        uplink.map(|u| (u.to_string(), None)).into_iter().collect();
    let endpoints: Vec<(String, Option<u32>)> = endpoints
        .iter()
        .map(|(ifname, id)| (ifname.clone(), Some(*id)))
        .collect();
    let mut updated = 0;
    for name in PROGRAMS {
        // cls_bpf filters leave no pins: from_pod's are on the endpoints' host veths,
        // from_uplink's on the uplink.
        let mode = if *name == PROG_FROM_POD {
            modes.pods
        } else {
            modes.node
        };
        let attached = match mode {
            AttachMode::Tcx => Attached::Links,
            AttachMode::Tc if *name == PROG_FROM_POD => Attached::Filters(&endpoints),
            AttachMode::Tc if *name == PROG_FROM_UPLINK => Attached::Filters(&uplinks),
            AttachMode::Tc => Attached::Filters(&[]),
        };
        let swapped =
            program(&mut ebpf, name).and_then(|prog| replace_program(pins, prog, name, attached));
        match swapped {
            Ok(n) => updated += n,
            Err(e) => {
                if !pending.is_empty() {
                    tracing::warn!(
                        "up --replace failed halfway with maps being made new: attachments switched so far use maps not pinned yet; `vethbpf up --replace` again finishes the upgrade"
                    );
                }
                migrate::abandon(pending);
                return Err(e);
            }
        }
    }
    // Every attachment runs the new programs: the new maps take the old ones' places,
    // with what the old programs counted meanwhile.
    finish_maps(pins, pending)?;
    let info = program(&mut ebpf, PROG_FROM_POD)?
        .info()
        .map_err(|source| BpfError::Program {
            program: PROG_FROM_POD,
            source: Box::new(source),
        })?;
    Ok((info, updated))
}

/// How a node attaches its programs: `from_pod` to pods' host veths, the others
/// to the node's own interfaces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Modes {
    pub(crate) pods: AttachMode,
    pub(crate) node: AttachMode,
}

/// Where a program runs: on its pinned TCX links, or on netlink filters of these
/// interfaces (with the filters' classids).
enum Attached<'a> {
    Links,
    Filters(&'a [(String, Option<u32>)]),
}

/// Swaps `prog` (freshly loaded) into every attachment of the program `name`, then
/// over its pin. Returns how many attachments it swapped.
fn replace_program(
    pins: &Pins,
    prog: &mut SchedClassifier,
    name: &'static str,
    attached: Attached<'_>,
) -> Result<usize, BpfError> {
    // Pin under a temporary name first (bpffs reserves '.' in names), so a failure
    // there changes nothing; renamed over the old pin at the end: a reader sees the
    // old or the new program, never none.
    let path = pins.program(name);
    let tmp = pins.progs_dir().join(format!("{name}_new"));
    let _ = fs::remove_file(&tmp);
    prog.pin(&tmp).map_err(|source| BpfError::Pin {
        path: tmp.clone(),
        source,
    })?;
    let swapped = match attached {
        Attached::Links => swap_links(pins, prog, name),
        Attached::Filters(ifnames) => ifnames
            .iter()
            .try_for_each(|(ifname, classid)| replace_filter(prog, ifname, *classid))
            .map(|()| ifnames.len()),
    };
    match swapped {
        Ok(updated) => {
            fs::rename(&tmp, &path).map_err(|source| BpfError::Remove {
                path: tmp.clone(),
                source,
            })?;
            Ok(updated)
        }
        Err(e) => {
            // Attachments swapped so far run the new (valid) program; the old pin
            // stays.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Swaps `prog` into every pinned TCX link of the program `name`.
fn swap_links(
    pins: &Pins,
    prog: &mut SchedClassifier,
    name: &'static str,
) -> Result<usize, BpfError> {
    let mut updated = 0;
    for ifname in pinned_links(pins, name) {
        let path = pins.link(name, &ifname);
        let link_err = |source| BpfError::Link {
            path: path.clone(),
            source,
        };
        let swapped = (|| {
            let pinned = PinnedLink::from_pin(&path).map_err(link_err)?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
            let id = prog
                .attach_to_link(link)
                .map_err(|source| BpfError::Attach {
                    program: name.to_string(),
                    ifname: ifname.clone(),
                    source: Box::new(source),
                })?;
            // The pin keeps the link; our handle to it can go.
            let taken = prog.take_link(id).map_err(|source| BpfError::Program {
                program: name,
                source: Box::new(source),
            })?;
            let _fd: FdLink = taken.try_into().map_err(link_err)?;
            Ok::<_, BpfError>(())
        })();
        swapped?;
        updated += 1;
    }
    Ok(updated)
}

/// Information about the pinned `from_pod` program.
pub fn program_info(pins: &Pins) -> Result<ProgramInfo, BpfError> {
    let path = pins.program(PROG_FROM_POD);
    ProgramInfo::from_pin(&path).map_err(|source| BpfError::OpenProgram {
        path,
        source: Box::new(source),
    })
}

/// Removes every pin and the directories `up` made, and unmounts the bpffs `up`
/// mounted (`mount`), unless other pins live on it.
pub(crate) fn remove_all(pins: &Pins, mount: Option<&Path>) -> Result<(), BpfError> {
    for name in PROGRAMS {
        for ifname in pinned_links(pins, name) {
            detach(pins, name, &ifname)?;
        }
        if *name != PROG_FROM_POD {
            let _ = fs::remove_dir(pins.links_dir(name));
        }
    }
    let rm = |p: PathBuf| match fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BpfError::Remove { path: p, source: e })
        }
        _ => Ok(()),
    };
    for name in PROGRAMS {
        rm(pins.program(name))?;
    }
    for m in ALL_MAPS {
        rm(pins.map(m))?;
        // A new map an interrupted upgrade left at its temporary pin.
        rm(pins.map(&format!("{m}_new")))?;
    }
    for d in [
        pins.progs_dir(),
        pins.maps_dir(),
        pins.links_dir(PROG_FROM_POD),
    ] {
        let _ = fs::remove_dir(d);
    }
    if mount == Some(pins.root()) {
        bpffs::unmount_if_empty(pins.root())?;
        let _ = fs::remove_dir(pins.root());
    } else {
        // Only removes an empty dir: a user's own pins stay.
        let _ = fs::remove_dir(pins.root());
        if let Some(m) = mount {
            bpffs::unmount_if_empty(m)?;
        }
    }
    Ok(())
}
