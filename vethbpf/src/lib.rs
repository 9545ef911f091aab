//! vethbpf: connects network namespaces on one node with veth pairs and tc eBPF
//! programs (ARP responder, LPM routes, `bpf_redirect_peer`), with no bridge, no
//! iptables and no addresses on host-side veths.
//!
//! Modules, one responsibility each:
//! - [`netlink`]: link/address/route operations (trait + rtnetlink + fake)
//! - [`netns`]: named network namespaces and running code inside one
//! - [`bpf`]: loading, pinning and attaching the embedded eBPF object
//! - [`maps`]: typed access to the pinned maps
//! - [`state`]: the state directory (node config, endpoints), locked and atomic
//! - [`ipam`]: address allocation from the pod CIDR
//! - [`ident`]: names and MAC addresses, validated
//! - [`endpoint`]: `endpoint add/del/list`, each step undone on failure
//! - [`node`]: `up`, `down`, `status`
//! - [`reconcile`]: finding and repairing what a crash or an outside hand left behind
//! - [`cluster`]: other nodes: remote nodes, the cluster set-up, the etcd agent
//! - [`fault`]: test-only fault injection (the `fault-injection` feature)
//! - [`probe`]: ICMP and TCP probes run from inside a namespace (for `demo`)
//! - [`demo`], [`cli`], [`output`]: the command line

pub mod bpf;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod demo;
pub mod endpoint;
pub mod fault;
pub mod ident;
pub mod ipam;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod output;
pub mod probe;
pub mod reconcile;
pub mod state;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vethbpf.bpf.o"));
