//! Attaching a pinned program to tc ingress of an interface, and finding and
//! removing those attachments. Generic over (program, interface): `from_pod` on
//! each endpoint's host veth is one user; a program on the uplink is another.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use aya::programs::links::Link as _;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    self, NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle,
};
use aya::programs::{LinkOrder, ProgramError, ProgramInfo};
use aya::util::KernelVersion;
use serde::{Deserialize, Serialize};

use super::{BpfError, Pins};
use crate::kernel::netlink::{TC_FILTER_HANDLE, TC_FILTER_PRIORITY};

/// How a program is attached to tc ingress of an interface.
///
/// Both run the same program with the same verdicts (direct action); they differ
/// in what an attachment costs and what is left to find it by. A TCX link
/// (`BPF_LINK_CREATE`, kernel 6.6+) is pinned, so `status` and `reconcile` read
/// its link and program ids from the pin and `up --replace` swaps its program with
/// `BPF_LINK_UPDATE`; but making one waits for an RCU grace period under the RTNL
/// lock, and deleting a device that has one waits for another (~11 ms each here).
/// A clsact qdisc with a cls_bpf filter (netlink, every kernel) is made in the
/// same netlink batch as the rest of the interface's set-up and goes with the
/// interface at no extra cost; it is found again by its fixed priority and handle
/// and its program swapped in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// a TCX link, pinned under the bpffs dir (kernel 6.6+)
    Tcx,
    /// a clsact qdisc and a cls_bpf filter (direct-action, priority 1, handle 1),
    /// made through netlink (any kernel)
    // `netlink` in the state files of earlier versions.
    #[serde(alias = "netlink")]
    Tc,
}

impl AttachMode {
    /// The name `status`, the state file and `up --pod-attach` use.
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        }
    }
}

/// What the kernel allows for the node's own attach points (the uplink, the VXLAN
/// device): TCX where it has it (6.6+), the clsact filter before. Test builds (the
/// `fault-injection` feature) take `VETHBPF_TEST_ATTACH_MODE` (`tc` or `tcx`)
/// first, so that the fallback is tested on a TCX kernel.
pub(crate) fn attach_mode() -> AttachMode {
    match crate::fault::forced_attach_mode() {
        Some("tc") => return AttachMode::Tc,
        Some("tcx") => return AttachMode::Tcx,
        _ => {}
    }
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(6, 6, 0) => AttachMode::Tc,
        _ => AttachMode::Tcx,
    }
}

/// Opens the pinned program `program`.
///
/// Not `SchedClassifier::from_pin`: that asks the program's name through
/// `ProgramInfo::name_as_str`, which makes aya 0.14 run its kernel feature probes
/// (~25 `bpf()` calls loading throwaway programs and BTF) in every process that
/// touches a pin. The name is ours already, so the program is opened from its info
/// (`BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD`, `BPF_PROG_GET_FD_BY_ID`): no probes.
pub(crate) fn open_program(pins: &Pins, program: &str) -> Result<SchedClassifier, BpfError> {
    let path = pins.program(program);
    let open_err = |source| BpfError::OpenProgram {
        path: path.clone(),
        source: Box::new(source),
    };
    let info = ProgramInfo::from_pin(&path).map_err(open_err)?;
    SchedClassifier::from_program_info(info, program.to_string().into()).map_err(open_err)
}

/// A pinned program opened as a bare descriptor (BPF_OBJ_GET) with its id: what a
/// cls_bpf filter is made with (netlink takes the descriptor) and checked against
/// (the kernel reports the id a filter runs). Two bpf() calls, no aya program.
#[derive(Debug)]
pub(crate) struct PinnedProgram {
    fd: OwnedFd,
    id: u32,
}

impl PinnedProgram {
    pub(crate) fn open(pins: &Pins, program: &str) -> Result<Self, BpfError> {
        let path = pins.program(program);
        let open = || {
            let fd = super::sys::obj_get(&path)?;
            let id = super::sys::prog_id(fd.as_fd())?;
            Ok::<_, std::io::Error>(PinnedProgram { fd, id })
        };
        open().map_err(|source| BpfError::OpenPinned { path, source })
    }
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

/// Points `program`'s pinned TCX link on `ifname` at the pinned program
/// (`BPF_LINK_UPDATE`: atomic, no packet sees the interface without a program).
pub(crate) fn relink(pins: &Pins, program: &str, ifname: &str) -> Result<(), BpfError> {
    let mut prog = open_program(pins, program)?;
    let path = pins.link(program, ifname);
    let link_err = |source| BpfError::Link {
        path: path.clone(),
        source,
    };
    let attach_err = |source| BpfError::Attach {
        program: program.to_string(),
        ifname: ifname.to_string(),
        source: Box::new(source),
    };
    let pinned = PinnedLink::from_pin(&path).map_err(link_err)?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
    let id = prog.attach_to_link(link).map_err(attach_err)?;
    // The pin keeps the link; our handle to it can go.
    let taken = prog.take_link(id).map_err(attach_err)?;
    let _fd: FdLink = taken.try_into().map_err(link_err)?;
    Ok(())
}

/// Attaches the pinned `program` to tc ingress of `ifname` (in the calling thread's
/// namespace). With TCX the link is pinned (see [`Pins::link`]). The link's id is
/// not asked for: a TCX link's info is read under the RTNL lock, which another
/// command's attach or delete may hold for a whole RCU grace period.
pub(crate) fn attach(
    pins: &Pins,
    program: &str,
    ifname: &str,
    mode: AttachMode,
) -> Result<(), BpfError> {
    let mut prog = open_program(pins, program)?;
    let attach_err = |source| BpfError::Attach {
        program: program.to_string(),
        ifname: ifname.to_string(),
        source: Box::new(source),
    };
    match mode {
        AttachMode::Tcx => {
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let path = pins.link(program, ifname);
            let fd_link: FdLink = link.try_into().map_err(|source| BpfError::Link {
                path: path.clone(),
                source,
            })?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|source| BpfError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            fd_link
                .pin(&path)
                .map_err(|source| BpfError::Pin { path, source })?;
            Ok(())
        }
        AttachMode::Tc => {
            // The clsact qdisc may exist already (EEXIST): that is fine.
            let _ = tc::qdisc_add_clsact(ifname);
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(filter_options()),
                )
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            // A netlink filter lives as long as the interface; dropping the link
            // object would detach it, so let it go without running its Drop.
            std::mem::forget(link);
            Ok(())
        }
    }
}

fn filter_options() -> NlOptions {
    NlOptions {
        priority: TC_FILTER_PRIORITY,
        handle: TcHandle::from(TC_FILTER_HANDLE),
        classid: None,
    }
}

/// Swaps the program of the cls_bpf filter vethbpf put on tc ingress of `ifname`
/// (a netlink attachment) for `prog`: one RTM_NEWTFILTER without NLM_F_CREATE,
/// which cls_bpf applies in place, so no packet sees the interface without a
/// program. `classid`: the filter's (a pod's endpoint id); cls_bpf makes a
/// replacement's classid anew, so it is given again.
pub(crate) fn replace_filter(
    prog: &mut SchedClassifier,
    ifname: &str,
    classid: Option<u32>,
) -> Result<(), BpfError> {
    // The name's raw bytes: `name_as_str` would run aya's feature probes.
    let program = prog
        .info()
        .ok()
        .map(|i| String::from_utf8_lossy(i.name()).into_owned())
        .unwrap_or_default();
    let attach_err = |source| BpfError::Attach {
        program: program.clone(),
        ifname: ifname.to_string(),
        source: Box::new(source),
    };
    let link = SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        TC_FILTER_PRIORITY,
        TcHandle::from(TC_FILTER_HANDLE),
        classid.map(TcHandle::from),
    )
    .map_err(|e| attach_err(e.into()))?;
    let id = prog.attach_to_link(link).map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    // As in `attach`: the filter lives as long as the interface.
    std::mem::forget(link);
    Ok(())
}

/// Removes the cls_bpf filter vethbpf put on tc ingress of `ifname` (a netlink
/// attachment on an interface that outlives vethbpf: the uplink). A filter that is
/// not there is fine.
pub(crate) fn detach_filter(ifname: &str) -> Result<(), BpfError> {
    let Ok(link) = SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        TC_FILTER_PRIORITY,
        TcHandle::from(TC_FILTER_HANDLE),
        None,
    ) else {
        return Ok(());
    };
    match link.detach() {
        Ok(()) => Ok(()),
        // ENOENT: no such filter (never attached, or removed by hand).
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(source) => Err(BpfError::Attach {
            program: "from_uplink".into(),
            ifname: ifname.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Removes `program`'s pinned TCX link on `ifname`: the program detaches from the
/// interface when the last reference goes. Missing pins are fine (already
/// detached).
pub(crate) fn detach(pins: &Pins, program: &str, ifname: &str) -> Result<(), BpfError> {
    let path = pins.link(program, ifname);
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(&path).map_err(|source| BpfError::Link {
        path: path.clone(),
        source,
    })?;
    let fd_link = link
        .unpin()
        .map_err(|source| BpfError::Remove { path, source })?;
    drop(fd_link);
    Ok(())
}

/// The interfaces that have a pinned link of `program`.
pub(crate) fn pinned_links(pins: &Pins, program: &str) -> Vec<String> {
    fs::read_dir(pins.links_dir(program))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                // Other programs' directories are not links.
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .map(|pin| super::pins::ifname_of_pin(&pin))
                .collect()
        })
        .unwrap_or_default()
}

/// The id of `program`'s pinned link on `ifname`, and of the program behind it.
pub(crate) fn link_ids(pins: &Pins, program: &str, ifname: &str) -> Option<(u32, u32)> {
    let link = PinnedLink::from_pin(pins.link(program, ifname)).ok()?;
    let fd: FdLink = link.into();
    let info = fd.info().ok()?;
    Some((info.id(), info.program_id()))
}
