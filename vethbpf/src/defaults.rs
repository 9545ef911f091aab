//! Defaults shared by the command line and the CNI plugin.

/// Where programs, maps and links are pinned.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/vethbpf";
/// Where the node config, the endpoint records and the journal are kept.
pub const STATE_DIR: &str = "/var/lib/vethbpf";
/// The pod CIDR of `vethbpf up` without `--pod-cidr`.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The pods' link-local gateway.
pub const GATEWAY: &str = "169.254.1.1";
