//! Kernel access below everything else: rtnetlink, network namespaces, the bpf
//! file system, the mount namespace we run in, and the datapath's clock.

pub mod bpffs;
pub mod clock;
pub(crate) mod mountns;
pub mod netlink;
pub mod netns;
