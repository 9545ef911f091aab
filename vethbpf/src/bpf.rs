//! Loading, pinning and attaching the embedded eBPF object.
//!
//! vethbpf is a command, not a daemon: `up` loads the program and pins it and its
//! maps under the bpffs dir; `endpoint add` opens the pinned program, attaches it to a
//! host veth with a TCX link and pins the link. Nothing depends on a vethbpf process
//! staying alive. Layout of the bpffs dir:
//!
//! ```text
//! <bpffs>/progs/from_pod        the tc program
//! <bpffs>/maps/<MAP>            ROUTES, ENDPOINTS, CONFIG, STATS
//! <bpffs>/links/<host veth>     one TCX link per endpoint
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    self, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType,
};
use aya::programs::{LinkOrder, ProgramError, ProgramInfo};
use aya::util::KernelVersion;
use aya::{EbpfLoader, pin::PinError};
use vethbpf_common::{ALL_MAPS, PROG_FROM_POD};

use crate::state::AttachMode;

/// `statfs` magic of a bpf file system.
const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount a bpf file system on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot unmount the bpf file system on {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "this vethbpf was built without the eBPF object (it was missing when vethbpf was compiled); run `cargo xtask build-ebpf`, then build vethbpf again"
    )]
    NoObject,
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {PROG_FROM_POD}")]
    MissingProgram,
    #[error("program {PROG_FROM_POD}: {0}")]
    Program(#[source] ProgramError),
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error(
        "the pinned program {path} cannot be opened ({source}); is the bpffs still mounted? `vethbpf up` loads the datapath again"
    )]
    OpenProgram {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach {PROG_FROM_POD} to {ifname}: {source}")]
    Attach {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("link pin {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Paths of the pinned objects under one bpffs dir.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn program(&self) -> PathBuf {
        self.root.join("progs").join(PROG_FROM_POD)
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, host_veth: &str) -> PathBuf {
        self.links_dir().join(host_veth)
    }
    /// Whether `up` has pinned the program here.
    pub fn is_loaded(&self) -> bool {
        self.program().exists()
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The conventional bpffs mount point; a bpffs dir below it (the default,
/// /sys/fs/bpf/vethbpf) cannot be made on sysfs, so the bpffs is mounted here first.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn mount_bpffs(at: &Path) -> Result<(), BpfError> {
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| BpfError::Mount {
        path: at.to_path_buf(),
        source,
    })
}

/// Makes `dir` exist on a bpf file system, mounting one if needed: on /sys/fs/bpf
/// when `dir` is below it and nothing is mounted there, else on `dir` itself.
/// Returns the mount point it made, for `down` to unmount.
pub fn ensure_bpffs(dir: &Path) -> Result<Option<PathBuf>, BpfError> {
    let sys = Path::new(SYS_FS_BPF);
    let mut mounted = None;
    if !dir.exists() && dir.starts_with(sys) && sys.is_dir() && !is_bpffs(sys) {
        mount_bpffs(sys)?;
        mounted = Some(sys.to_path_buf());
    }
    if let Err(source) = fs::create_dir_all(dir) {
        if let Some(m) = &mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        return Err(BpfError::CreateDir {
            path: dir.to_path_buf(),
            source,
        });
    }
    if mounted.is_none() && !is_bpffs(dir) {
        mount_bpffs(dir)?;
        mounted = Some(dir.to_path_buf());
    }
    Ok(mounted)
}

/// `dir` if a bpffs is mounted right on it (not on a parent): what `up` records as
/// its mount when it mounted one there. Used to rebuild a lost state file.
pub fn mounted_on(dir: &Path) -> Option<PathBuf> {
    let on_parent = dir.parent().is_some_and(is_bpffs);
    (is_bpffs(dir) && !on_parent).then(|| dir.to_path_buf())
}

/// Chooses TCX where the kernel has it (6.6+), the netlink clsact filter before.
pub fn attach_mode() -> AttachMode {
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(6, 6, 0) => AttachMode::Netlink,
        _ => AttachMode::Tcx,
    }
}

fn mkdirs(pins: &Pins) -> Result<(), BpfError> {
    for d in [
        pins.root.join("progs"),
        pins.root.join("maps"),
        pins.links_dir(),
    ] {
        fs::create_dir_all(&d).map_err(|source| BpfError::CreateDir { path: d, source })?;
    }
    Ok(())
}

/// Loads `object` with its maps bound to the pins under `pins` (created and pinned
/// if missing, reused if there), and its program through the verifier.
fn load_object(pins: &Pins, object: &[u8]) -> Result<aya::Ebpf, BpfError> {
    check_object(object)?;
    let map_paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(BpfError::Load)?;
    from_pod(&mut ebpf)?.load().map_err(BpfError::Program)?;
    Ok(ebpf)
}

/// Fails with [`BpfError::NoObject`] when `object` is the empty placeholder that
/// build.rs embeds in a build made before the eBPF object existed.
pub fn check_object(object: &[u8]) -> Result<(), BpfError> {
    if object.is_empty() {
        return Err(BpfError::NoObject);
    }
    Ok(())
}

fn from_pod(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    ebpf.program_mut(PROG_FROM_POD)
        .ok_or(BpfError::MissingProgram)?
        .try_into()
        .map_err(BpfError::Program)
}

/// Loads the embedded object and pins its program and maps. Maps already pinned
/// (a previous `up`) are reused, so their entries survive.
pub fn load_and_pin(pins: &Pins, object: &[u8]) -> Result<ProgramInfo, BpfError> {
    mkdirs(pins)?;
    let mut ebpf = load_object(pins, object)?;
    let prog = from_pod(&mut ebpf)?;
    let path = pins.program();
    if path.exists() {
        fs::remove_file(&path).map_err(|source| BpfError::Remove {
            path: path.clone(),
            source,
        })?;
    }
    prog.pin(&path)
        .map_err(|source| BpfError::Pin { path, source })?;
    prog.info().map_err(BpfError::Program)
}

/// Upgrades the datapath in place: loads the embedded object (reusing the pinned
/// maps, so no entry or counter is lost), swaps the program of every pinned TCX link
/// atomically with `BPF_LINK_UPDATE` (traffic never sees a moment without a
/// program), then replaces the program pin. Returns the new program and how many
/// links now run it.
pub fn replace(pins: &Pins, object: &[u8]) -> Result<(ProgramInfo, usize), BpfError> {
    let mut ebpf = load_object(pins, object)?;
    let prog = from_pod(&mut ebpf)?;
    // Pin under a temporary name first (bpffs reserves '.' in names), so a failure
    // there changes nothing; renamed over the old pin at the end: a reader sees the
    // old or the new program, never none.
    let path = pins.program();
    let tmp = pins.root.join("progs").join(format!("{PROG_FROM_POD}_new"));
    let _ = fs::remove_file(&tmp);
    prog.pin(&tmp).map_err(|source| BpfError::Pin {
        path: tmp.clone(),
        source,
    })?;
    let mut updated = 0;
    for host in pinned_links(pins) {
        let path = pins.link(&host);
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
                    ifname: host.clone(),
                    source,
                })?;
            // The pin keeps the link; our handle to it can go.
            let taken = prog.take_link(id).map_err(BpfError::Program)?;
            let _fd: FdLink = taken.try_into().map_err(link_err)?;
            Ok::<_, BpfError>(())
        })();
        if let Err(e) = swapped {
            // Links swapped so far run the new (valid) program; the old pin stays.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        updated += 1;
    }
    fs::rename(&tmp, &path).map_err(|source| BpfError::Remove {
        path: tmp.clone(),
        source,
    })?;
    Ok((prog.info().map_err(BpfError::Program)?, updated))
}

/// Information about the pinned program.
pub fn program_info(pins: &Pins) -> Result<ProgramInfo, BpfError> {
    ProgramInfo::from_pin(pins.program()).map_err(|source| BpfError::OpenProgram {
        path: pins.program(),
        source,
    })
}

/// Attaches the pinned program to tc ingress of `ifname` (in the calling thread's
/// namespace). With TCX the link is pinned at `links/<ifname>` and its id returned.
pub fn attach(pins: &Pins, ifname: &str, mode: AttachMode) -> Result<Option<u32>, BpfError> {
    let mut prog =
        SchedClassifier::from_pin(pins.program()).map_err(|source| BpfError::OpenProgram {
            path: pins.program(),
            source,
        })?;
    let attach_err = |source| BpfError::Attach {
        ifname: ifname.to_string(),
        source,
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
            let fd_link: FdLink = link.try_into().map_err(|source| BpfError::Link {
                path: pins.link(ifname),
                source,
            })?;
            let link_id = fd_link.info().ok().map(|i| i.id());
            let path = pins.link(ifname);
            fd_link
                .pin(&path)
                .map_err(|source| BpfError::Pin { path, source })?;
            Ok(link_id)
        }
        AttachMode::Netlink => {
            // The clsact qdisc may exist already (EEXIST): that is fine.
            let _ = tc::qdisc_add_clsact(ifname);
            let id = prog
                .attach(ifname, TcAttachType::Ingress)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            // A netlink filter lives as long as the interface; dropping the link
            // object would detach it, so let it go without running its Drop.
            std::mem::forget(link);
            Ok(None)
        }
    }
}

/// Removes an endpoint's pinned TCX link: the program detaches from the interface
/// when the last reference goes. Missing pins are fine (already detached).
pub fn detach(pins: &Pins, host_veth: &str) -> Result<(), BpfError> {
    let path = pins.link(host_veth);
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

/// The host veths that have a pinned link.
pub fn pinned_links(pins: &Pins) -> Vec<String> {
    fs::read_dir(pins.links_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Id of the program behind a pinned link, and the link's own id.
pub fn link_ids(pins: &Pins, host_veth: &str) -> Option<(u32, u32)> {
    let link = PinnedLink::from_pin(pins.link(host_veth)).ok()?;
    let fd: FdLink = link.into();
    let info = fd.info().ok()?;
    Some((info.id(), info.program_id()))
}

/// Removes every pin and the directories `up` made, and unmounts the bpffs `up`
/// mounted (`mount`), unless other pins live on it.
pub fn remove_all(pins: &Pins, mount: Option<&Path>) -> Result<(), BpfError> {
    for host in pinned_links(pins) {
        detach(pins, &host)?;
    }
    let rm = |p: PathBuf| match fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BpfError::Remove { path: p, source: e })
        }
        _ => Ok(()),
    };
    rm(pins.program())?;
    for m in ALL_MAPS {
        rm(pins.map(m))?;
    }
    for d in [
        pins.root.join("progs"),
        pins.root.join("maps"),
        pins.links_dir(),
    ] {
        let _ = fs::remove_dir(d);
    }
    let unmount = |at: &Path| match nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: nothing mounted there any more (someone unmounted it).
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(source) => Err(BpfError::Unmount {
            path: at.to_path_buf(),
            source,
        }),
    };
    if mount == Some(pins.root.as_path()) {
        if is_empty_dir(&pins.root) {
            unmount(&pins.root)?;
        }
        let _ = fs::remove_dir(&pins.root);
    } else {
        // Only removes an empty dir: a user's own pins stay.
        let _ = fs::remove_dir(&pins.root);
        if let Some(m) = mount
            && is_empty_dir(m)
        {
            unmount(m)?;
        }
    }
    Ok(())
}

/// Empty but for the iterator files the kernel preloads into every new bpffs.
fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .all(|e| matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug")))
        })
        .unwrap_or(false)
}
