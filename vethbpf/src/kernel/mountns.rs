//! The mount namespace vethbpf runs in, against the host's.
//!
//! What vethbpf mounts (a bpffs, the bind mounts that keep named network
//! namespaces) and pins must outlive the command and be where the next one looks:
//! in the host's mount namespace. `ip netns exec` runs a command in a mount
//! namespace of its own (a slave copy of the host's, with a fresh /sys) that dies
//! with it. These helpers tell whether we are in such a namespace and whether a
//! path or a mount is shared with the host's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Device and inode: what tells two paths to the same file apart from others.
pub(crate) fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// A process in the host's mount namespace when ours is another, or `None` when
/// ours is the host's (or there is no telling). The host's is pid 1's; where pid 1
/// cannot be looked at (some sandboxes deny it even to root), the nearest ancestor
/// in another mount namespace than ours stands for it: the one that started us in
/// ours (as `ip netns exec` does) lives outside it.
///
/// Found once per process (a command asks more than once, and where pid 1 cannot be
/// looked at, the walk reads a `/proc` file per ancestor): the answer cannot
/// change while we run.
pub(crate) fn host_reference() -> Option<u32> {
    static HOST: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *HOST.get_or_init(find_host_reference)
}

fn find_host_reference() -> Option<u32> {
    let ours = file_id(Path::new("/proc/self/ns/mnt")).ok()?;
    if let Ok(init) = file_id(Path::new("/proc/1/ns/mnt")) {
        return (init != ours).then_some(1);
    }
    let mut pid = parent_of(std::process::id());
    while let Some(p) = pid.filter(|p| *p > 1) {
        match file_id(Path::new(&format!("/proc/{p}/ns/mnt"))) {
            Ok(theirs) if theirs != ours => return Some(p),
            Ok(_) => pid = parent_of(p),
            Err(_) => break,
        }
    }
    tracing::debug!("no process outside this mount namespace among pid 1 and our ancestors");
    None
}

/// `path` (absolute) as the process `pid` sees it, through its root.
pub(crate) fn seen_by(pid: u32, path: &Path) -> PathBuf {
    Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether a mount made below `mount_point` here also appears in the mount
/// namespace of `pid`: the mount on `mount_point` is in the same shared peer group
/// in both. (A slave copy, what `ip netns exec` has, receives the host's mounts
/// but sends none back.)
pub(crate) fn propagates_to(pid: u32, mount_point: &Path) -> bool {
    let ours = peer_group(Path::new("/proc/self/mountinfo"), mount_point);
    let theirs = peer_group(Path::new(&format!("/proc/{pid}/mountinfo")), mount_point);
    ours.is_some() && ours == theirs
}

/// The `shared:N` peer group of the (topmost) mount on `mount_point` in a
/// mountinfo file.
fn peer_group(mountinfo: &Path, mount_point: &Path) -> Option<u64> {
    let text = fs::read_to_string(mountinfo).ok()?;
    let point = mount_point.to_str()?;
    text.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(point))?
        .split(" - ")
        .next()?
        .split(' ')
        .skip(6)
        .find_map(|f| f.strip_prefix("shared:")?.parse().ok())
}

/// The parent of `pid`, from /proc/PID/stat (the field after the command name,
/// which may itself contain spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_groups_are_read_from_mountinfo() {
        let dir = std::env::temp_dir().join(format!("vethbpf-mountinfo-{}", std::process::id()));
        fs::write(
            &dir,
            "45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n\
             70 50 254:0 /run/netns /x rw,relatime master:1 - ext4 /dev/vda rw\n\
             71 50 254:0 /run/netns /y rw,relatime shared:7 master:1 - ext4 /dev/vda rw\n\
             72 50 0:40 / /z rw - sysfs sysfs rw\n",
        )
        .unwrap();
        assert_eq!(peer_group(&dir, Path::new("/run/netns")), Some(1));
        assert_eq!(peer_group(&dir, Path::new("/x")), None);
        assert_eq!(peer_group(&dir, Path::new("/y")), Some(7));
        assert_eq!(peer_group(&dir, Path::new("/z")), None);
        assert_eq!(peer_group(&dir, Path::new("/absent")), None);
        fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn parent_of_this_process() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
