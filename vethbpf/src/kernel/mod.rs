//! Kernel access below everything else: rtnetlink, network namespaces, and the
//! bpf file system.

pub mod bpffs;
pub mod netlink;
pub mod netns;
