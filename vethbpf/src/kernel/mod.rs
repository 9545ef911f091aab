//! Kernel access below everything else: rtnetlink, network namespaces.

pub mod netlink;
pub mod netns;
