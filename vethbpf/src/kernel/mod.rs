//! Kernel access below everything else: rtnetlink, network namespaces, the bpf
//! file system, and the mount namespace we run in.

pub mod bpffs;
pub(crate) mod mountns;
pub mod netlink;
pub mod netns;
