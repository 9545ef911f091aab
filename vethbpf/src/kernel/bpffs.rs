//! The bpf file system that pins live on: telling whether a directory is on one,
//! mounting one where `up` needs it, and unmounting what `up` mounted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::BPF_FS_MAGIC;

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
