//! The bpf file system that pins live on: telling whether a directory is on one,
//! mounting one where `up` needs it, and unmounting what `up` mounted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::BPF_FS_MAGIC;

use super::{mountns, netns};

/// The conventional bpffs mount point; a bpffs dir below it (the default,
/// /sys/fs/bpf/vethbpf) cannot be made on sysfs, so the bpffs is mounted here first.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Why a bpf file system could not be made ready or removed.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
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
        "vethbpf is running in a mount namespace of its own, not the host's (`ip netns exec` makes one, with a /sys of its own): a bpffs mounted or pins made at {} would vanish when this command exits, so it changes nothing. Run vethbpf in the node's network namespace only: `nsenter --net=/run/netns/{} vethbpf ...`; or give --bpffs-dir a directory on a bpffs mounted in the host's mount namespace",
        dir.display(),
        netns.as_deref().unwrap_or("NODE")
    )]
    PrivateMounts {
        dir: PathBuf,
        /// The name of the network namespace vethbpf runs in, if it has one.
        netns: Option<String>,
    },
}

/// Checks that a bpffs mounted, or pins made, at `dir` outlive this process and are
/// where the next command looks: in the host's mount namespace (see
/// `kernel/mountns.rs`).
///
/// `ip netns exec` runs a command in a mount namespace of its own, with a fresh
/// /sys: a bpffs mounted there, and the pins on it, vanish when the command exits,
/// taking the datapath with them. From such a namespace, `dir` is only fine if it
/// (or, not made yet, its nearest existing parent) is on a bpffs that the host sees
/// at the same path: pins then land on the host's bpffs.
pub fn check_lasting(dir: &Path) -> Result<(), BpffsError> {
    let Some(host) = mountns::host_reference() else {
        return Ok(());
    };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let seen_by_host = mountns::seen_by(host, existing);
    let shared = is_bpffs(existing)
        && matches!(
            (mountns::file_id(existing), mountns::file_id(&seen_by_host)),
            (Ok(a), Ok(b)) if a == b
        );
    if shared {
        return Ok(());
    }
    Err(BpffsError::PrivateMounts {
        dir,
        netns: netns::own_name(),
    })
}

/// Whether `path` is on a bpf file system.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn mount(at: &Path) -> Result<(), BpffsError> {
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| BpffsError::Mount {
        path: at.to_path_buf(),
        source,
    })
}

/// Makes `dir` exist on a bpf file system, mounting one if needed: on /sys/fs/bpf
/// when `dir` is below it and nothing is mounted there, else on `dir` itself.
/// Returns the mount point it made, for `down` to unmount.
pub fn ensure(dir: &Path) -> Result<Option<PathBuf>, BpffsError> {
    let sys = Path::new(SYS_FS_BPF);
    let mut mounted = None;
    if !dir.exists() && dir.starts_with(sys) && sys.is_dir() && !is_bpffs(sys) {
        mount(sys)?;
        mounted = Some(sys.to_path_buf());
    }
    if let Err(source) = fs::create_dir_all(dir) {
        if let Some(m) = &mounted {
            let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        }
        return Err(BpffsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        });
    }
    if mounted.is_none() && !is_bpffs(dir) {
        mount(dir)?;
        mounted = Some(dir.to_path_buf());
    }
    Ok(mounted)
}

/// `dir` if a bpffs is mounted right on it (not on a parent): what `up` records as
/// its mount when it mounted one there. Used to rebuild a lost state file.
pub(crate) fn mounted_on(dir: &Path) -> Option<PathBuf> {
    let on_parent = dir.parent().is_some_and(is_bpffs);
    (is_bpffs(dir) && !on_parent).then(|| dir.to_path_buf())
}

/// Unmounts the bpffs on `at` if nothing but the kernel's preloaded files is left
/// on it (other pins, a user's own, keep it mounted).
pub(crate) fn unmount_if_empty(at: &Path) -> Result<(), BpffsError> {
    if !is_empty_dir(at) {
        return Ok(());
    }
    match nix::mount::umount2(at, MntFlags::MNT_DETACH) {
        // EINVAL: nothing mounted there any more (someone unmounted it).
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(source) => Err(BpffsError::Unmount {
            path: at.to_path_buf(),
            source,
        }),
    }
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
