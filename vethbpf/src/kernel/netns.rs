//! Named network namespaces (what `ip netns add/del` does) and running code inside
//! a network namespace.
//!
//! The network namespace is a property of a *thread*. Code that must run in a pod's
//! namespace runs on a dedicated std thread that calls `setns` and then exits
//! ([`run_in`]), so no thread that goes back to a pool ever changes namespace.
//! [`netlink_in`] opens a netlink socket on such a thread and hands it back: the
//! socket belongs to the pod's namespace for good, so the caller's own thread can
//! use it, without ever entering the namespace itself.

use std::any::Any;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use super::mountns;
use crate::error::ErrorKind;
use crate::kernel::netlink::{NetlinkError, RtNetlink};

/// Where named network namespaces are bind-mounted, as iproute2 does.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// The calling thread's network namespace. Not `/proc/self/ns/net`: that is the
/// main thread's, which is not necessarily ours.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a network namespace could not be made, found, opened or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "invalid network namespace name {0:?}: it must be non-empty, shorter than 256 bytes, \
         not \".\" or \"..\", and contain no '/' or NUL"
    )]
    InvalidName(String),
    #[error("network namespace {} already exists", .0.display())]
    AlreadyExists(PathBuf),
    #[error("network namespace {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("{} is not a network namespace: {reason}", path.display())]
    NotNetns { path: PathBuf, reason: &'static str },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a thread for network namespace {}: {source}", path.display())]
    Thread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("code running in network namespace {} panicked: {message}", path.display())]
    Panicked { path: PathBuf, message: String },
    #[error(
        "vethbpf is running in a mount namespace of its own, not the host's (`ip netns exec` makes one): the network namespace {name} it would make under {NETNS_RUN_DIR} would vanish when this command exits, so it changes nothing. Run vethbpf in the node's network namespace only: `nsenter --net=/run/netns/{} vethbpf ...`; or pass --netns an existing namespace",
        here.as_deref().unwrap_or("NODE")
    )]
    PrivateMounts {
        name: String,
        /// The name of the network namespace vethbpf runs in, if it has one.
        here: Option<String>,
    },
}

impl NetnsError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetnsError::InvalidName(_) | NetnsError::NotNetns { .. } => ErrorKind::Usage,
            NetnsError::AlreadyExists(_) => ErrorKind::Conflict,
            NetnsError::NotFound(_) => ErrorKind::NotFound,
            NetnsError::Io { .. }
            | NetnsError::Thread { .. }
            | NetnsError::Panicked { .. }
            | NetnsError::PrivateMounts { .. } => ErrorKind::Other,
        }
    }
}

impl NetnsError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// The path of the named namespace `name`: `/run/netns/NAME`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The name under /run/netns of the calling thread's network namespace, if it has
/// one (for messages that tell the user how to run a command in it).
pub(crate) fn own_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    let ours = id(fs::metadata(THREAD_NETNS).ok()?);
    fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| fs::metadata(e.path()).is_ok_and(|m| id(m) == ours))
        .and_then(|e| e.file_name().into_string().ok())
}

/// iproute2's rule for namespace names: they become a file name in /run/netns.
fn validate_name(name: &str) -> Result<(), NetnsError> {
    if name.is_empty()
        || name.len() >= 256
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// Checks that a namespace `name` made now outlives this process: the bind mount
/// that keeps it under /run/netns must reach the host's mount namespace (see
/// [`super::mountns`]), which from `ip netns exec` it does not.
pub(crate) fn check_create_lasting(name: &str) -> Result<(), NetnsError> {
    let Some(host) = mountns::host_reference() else {
        return Ok(());
    };
    if mountns::propagates_to(host, Path::new(NETNS_RUN_DIR)) {
        return Ok(());
    }
    Err(NetnsError::PrivateMounts {
        name: name.to_string(),
        here: own_name(),
    })
}

/// Creates the named network namespace `name`, like `ip netns add NAME`, and returns
/// its path. Nothing runs in the new namespace: it lives on because it is
/// bind-mounted on `/run/netns/NAME`.
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    validate_name(name)?;
    prepare_run_dir()?;

    let path = named_path(name);
    // O_EXCL: two creators of the same name cannot both think they own it.
    let file = nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::EEXIST => NetnsError::AlreadyExists(path.clone()),
        e => NetnsError::io("create", &path, e),
    })?;
    drop(file);

    if let Err(e) = bind_new_netns(&path) {
        // Undo: the mount, if it happened before a later failure, then the file.
        let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        if let Err(rm) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %rm, "cannot remove a half-created netns file");
        }
        return Err(e);
    }
    tracing::debug!(path = %path.display(), "created network namespace");
    Ok(path)
}

/// `mkdir -p /run/netns` and make it a shared mount point, exactly as iproute2's
/// netns_add does, so that unmounting a namespace in one mount namespace unmounts it
/// in all of them and the namespace can be freed.
fn prepare_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| NetnsError::io("create directory", dir, e))?;

    // Concurrent creators (threads or processes) must not bind-mount the directory
    // onto itself more than once each: that stacks mounts without bound (Debian bug
    // 949235). iproute2 serializes with flock on the directory and goes on without
    // the lock if it cannot be taken; so do we.
    let dir_file = File::open(dir).map_err(|e| NetnsError::io("open", dir, e))?;
    let _lock = match Flock::lock(dir_file, FlockArg::LockExclusive) {
        Ok(lock) => Some(lock),
        Err((_, errno)) => {
            tracing::warn!(dir = NETNS_RUN_DIR, %errno, "cannot lock the netns directory");
            None
        }
    };

    let mut made_mount = false;
    loop {
        match nix::mount::mount(
            Some(""),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Make it one (once), then retry.
            Err(Errno::EINVAL) if !made_mount => {
                nix::mount::mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| NetnsError::io("bind-mount onto itself", dir, e))?;
                made_mount = true;
            }
            Err(e) => return Err(NetnsError::io("make a shared mount", dir, e)),
        }
    }
}

/// On a throwaway thread: unshare the network namespace and bind-mount it on
/// `path`. The thread then exits, so nothing runs in the new namespace.
fn bind_new_netns(path: &Path) -> Result<(), NetnsError> {
    let work = || -> Result<(), NetnsError> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::io("unshare(CLONE_NEWNET) for", path, e))?;
        nix::mount::mount(
            Some(THREAD_NETNS),
            path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NetnsError::io("bind-mount the new namespace on", path, e))
    };
    on_thread(path, work)?
}

/// Deletes the named network namespace `name`, like `ip netns del NAME`: the mount
/// is detached (the namespace itself lives on while something still uses it) and
/// the file removed.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    validate_name(name)?;
    let path = named_path(name);
    if let Err(e) = fs::symlink_metadata(&path) {
        return Err(match e.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound(path),
            _ => NetnsError::io("stat", &path, e),
        });
    }
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point, e.g. left over by an interrupted `create`.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Err(NetnsError::NotFound(path)),
        Err(e) => return Err(NetnsError::io("unmount", &path, e)),
    }
    fs::remove_file(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NetnsError::NotFound(path.clone()),
        _ => NetnsError::io("remove", &path, e),
    })?;
    tracing::debug!(path = %path.display(), "deleted network namespace");
    Ok(())
}

/// Resolves a namespace argument: a bare name means `/run/netns/NAME`; anything
/// with a '/' is a path used as is (e.g. `/proc/PID/ns/net`, `/var/run/netns/x`).
/// The result exists and is a network namespace.
pub(crate) fn resolve(name_or_path: &str) -> Result<PathBuf, NetnsError> {
    let path = if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        validate_name(name_or_path)?;
        named_path(name_or_path)
    };
    open(&path)?;
    Ok(path)
}

/// Opens a network namespace file, checking that it is one: the descriptor can be
/// given to `setns` or [`crate::kernel::netlink::Netlink::move_link_to_netns`].
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NetnsError::NotFound(path.to_owned()),
        _ => NetnsError::io("open", path, e),
    })?;
    let fd = OwnedFd::from(file);
    check_netns(&fd, path)?;
    Ok(fd)
}

fn check_netns(fd: &OwnedFd, path: &Path) -> Result<(), NetnsError> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which
    // is open for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ret >= 0 {
        return if ret == libc::CLONE_NEWNET {
            Ok(())
        } else {
            Err(NetnsError::NotNetns {
                path: path.to_owned(),
                reason: "it is a namespace of another type",
            })
        };
    }
    // The ioctl fails (ENOTTY) on anything that is not an nsfs file, e.g. a
    // /run/netns file whose mount is gone; on kernels before 4.11 it also fails on
    // nsfs, so tell the two apart by file system (setns checks the type later).
    let statfs = nix::sys::statfs::fstatfs(fd).map_err(|e| NetnsError::io("statfs", path, e))?;
    if statfs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC {
        Ok(())
    } else {
        Err(NetnsError::NotNetns {
            path: path.to_owned(),
            reason: "not a namespace file (nothing is mounted on it?)",
        })
    }
}

/// Runs `f` on a new thread that has entered the network namespace `netns` (a path
/// as `resolve` or [`create_named`] return), and returns its result. The
/// thread exits afterwards. A panic in `f` is returned as
/// [`NetnsError::Panicked`], not propagated.
pub fn run_in<T, F>(netns: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = open(netns)?;
    on_thread(netns, move || {
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::io("setns into", netns, e))?;
        // The namespace is entered; the descriptor is no longer needed.
        drop(fd);
        Ok(f())
    })?
}

/// An [`RtNetlink`] whose socket is in `netns`: opened on a throwaway thread that
/// entered the namespace (see [`run_in`]), usable from any thread afterwards.
/// Errors of both kinds convert into the caller's error type.
pub fn netlink_in<E>(netns: &Path) -> Result<RtNetlink, E>
where
    E: From<NetnsError> + From<NetlinkError>,
{
    Ok(run_in(netns, RtNetlink::connect)??)
}

/// Opens an [`RtNetlink`] inside `netns` and runs `f` with it, on a dedicated thread
/// (see [`run_in`]). Errors of both kinds convert into the caller's error type.
pub fn with_netlink_in<T, E, F>(netns: &Path, f: F) -> Result<T, E>
where
    F: FnOnce(&mut RtNetlink) -> Result<T, E> + Send,
    T: Send,
    E: Send + From<NetnsError> + From<NetlinkError>,
{
    run_in(netns, || {
        let mut nl = RtNetlink::connect()?;
        f(&mut nl)
    })?
}

/// Runs `f` on a fresh, scoped std thread and joins it; a panic becomes an error.
fn on_thread<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("vethbpf-netns".into())
            .spawn_scoped(s, f)
            .map_err(|source| NetnsError::Thread {
                path: netns.to_owned(),
                source,
            })?;
        // Joined explicitly, so the scope does not re-raise the panic.
        handle.join().map_err(|payload| NetnsError::Panicked {
            path: netns.to_owned(),
            message: panic_message(payload.as_ref()),
        })
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The calling thread's network namespace.
    fn current_thread_netns() -> Result<OwnedFd, NetnsError> {
        File::open(THREAD_NETNS)
            .map(OwnedFd::from)
            .map_err(|e| NetnsError::io("open", THREAD_NETNS, e))
    }

    /// Whether two namespace descriptors refer to the same namespace (same nsfs inode).
    fn same_netns(a: impl AsFd, b: impl AsFd) -> Result<bool, NetnsError> {
        let id = |fd: &dyn AsFd| {
            nix::sys::stat::fstat(fd.as_fd())
                .map(|st| (st.st_dev, st.st_ino))
                .map_err(|e| NetnsError::io("stat", "namespace descriptor", e))
        };
        Ok(id(&a)? == id(&b)?)
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A named namespace for one test, removed on drop (also when the test panics).
    pub(crate) struct TestNetns {
        pub(crate) name: String,
        pub(crate) path: PathBuf,
    }

    impl TestNetns {
        /// `vbt-<tag>-<pid>-<n>`: unique across parallel tests and concurrent runs.
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "vbt-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = create_named(&name).unwrap();
            Self { name, path }
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            if let Err(e) = delete_named(&self.name) {
                // A second panic while unwinding would abort and hide the first.
                if std::thread::panicking() {
                    eprintln!("cannot delete test netns {}: {e}", self.name);
                } else {
                    panic!("cannot delete test netns {}: {e}", self.name);
                }
            }
        }
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(named_path("pod1"), PathBuf::from("/run/netns/pod1"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(matches!(
                validate_name(bad),
                Err(NetnsError::InvalidName(_))
            ));
        }
        assert!(matches!(resolve(".."), Err(NetnsError::InvalidName(_))));
        assert!(validate_name("vbt-x-1").is_ok());
    }

    #[test]
    fn resolve_rejects_missing_and_non_netns() {
        assert!(matches!(
            resolve("/nonexistent/vethbpf/netns"),
            Err(NetnsError::NotFound(_))
        ));
        assert!(matches!(
            resolve("vbt-certainly-missing-name"),
            Err(NetnsError::NotFound(_))
        ));
        // A regular file is not a namespace.
        assert!(matches!(
            resolve("/proc/self/status"),
            Err(NetnsError::NotNetns { .. })
        ));
        // A namespace of another type.
        assert!(matches!(
            resolve("/proc/thread-self/ns/uts"),
            Err(NetnsError::NotNetns { .. })
        ));
        // Our own network namespace is one.
        assert!(resolve("/proc/thread-self/ns/net").is_ok());
    }

    #[test]
    #[ignore = "needs root: creates and enters network namespaces"]
    fn create_resolve_run_delete() {
        let ns = TestNetns::new("ns");
        assert_eq!(resolve(&ns.name).unwrap(), ns.path);
        assert_eq!(resolve(ns.path.to_str().unwrap()).unwrap(), ns.path);

        // Creating it again is a specific error, and leaves the original intact.
        assert!(matches!(
            create_named(&ns.name),
            Err(NetnsError::AlreadyExists(_))
        ));
        assert!(resolve(&ns.name).is_ok());

        // Code in run_in is in the namespace; the caller is not moved.
        let before = current_thread_netns().unwrap();
        let target = open(&ns.path).unwrap();
        let inside = run_in(&ns.path, || {
            let here = current_thread_netns().unwrap();
            same_netns(&here, &target).unwrap()
        })
        .unwrap();
        assert!(inside);
        let after = current_thread_netns().unwrap();
        assert!(same_netns(&before, &after).unwrap());
        assert!(!same_netns(&after, &target).unwrap());

        // A fresh namespace has only lo, down.
        let links = with_netlink_in(&ns.path, |nl| {
            crate::kernel::netlink::Netlink::links(nl).map_err(anyhow::Error::from)
        })
        .unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].name, "lo");

        let (name, path) = (ns.name.clone(), ns.path.clone());
        drop(ns);
        assert!(!path.exists());
        assert!(matches!(delete_named(&name), Err(NetnsError::NotFound(_))));
        assert!(matches!(resolve(&name), Err(NetnsError::NotFound(_))));
        assert!(matches!(run_in(&path, || ()), Err(NetnsError::NotFound(_))));
    }

    #[test]
    #[ignore = "needs root: setns needs CAP_SYS_ADMIN, even into its own namespace"]
    fn panic_in_run_in_is_an_error() {
        // Our own namespace.
        let path = Path::new(THREAD_NETNS);
        match run_in(path, || -> u32 { panic!("boom in netns") }) {
            Err(NetnsError::Panicked { message, .. }) => assert_eq!(message, "boom in netns"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert_eq!(run_in(path, || 7).unwrap(), 7);
    }

    #[test]
    #[ignore = "needs root: creates network namespaces and unmounts one"]
    fn stale_file_is_not_a_netns_and_can_be_deleted() {
        // What an interrupted creation (or a reboot with a persistent /run) leaves:
        // a plain file in /run/netns.
        let ns = TestNetns::new("stale");
        nix::mount::umount2(&ns.path, MntFlags::MNT_DETACH).unwrap();
        assert!(matches!(
            resolve(&ns.name),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            run_in(&ns.path, || ()),
            Err(NetnsError::NotNetns { .. })
        ));
        // delete_named copes with it (the guard deletes it on drop).
    }

    #[test]
    #[ignore = "needs root: creates network namespaces"]
    fn parallel_creation_is_safe() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| TestNetns::new("par")))
            .collect();
        let all: Vec<TestNetns> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for ns in &all {
            assert!(resolve(&ns.name).is_ok());
        }
        // /run/netns is mounted on itself at most once per creator that found it
        // not to be a mount point (normally once in total).
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let run_dir_mounts = mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(NETNS_RUN_DIR))
            .count();
        assert!(
            run_dir_mounts <= 2,
            "{run_dir_mounts} mounts on {NETNS_RUN_DIR}"
        );
    }
}
