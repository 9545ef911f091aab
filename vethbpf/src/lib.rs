//! vethbpf: connects network namespaces on one node with veth pairs and tc eBPF
//! programs (ARP responder, LPM routes, `bpf_redirect_peer`), with no bridge, no
//! iptables and no addresses on host-side veths.
//!
//! The layers, each using only those below it (the `vethbpf` binary's command line,
//! `src/cli/`, sits on top and nothing here imports it):
//!
//! - [`cni`]: the CNI plugin (ADD, DEL, CHECK, STATUS, GC) over the same calls as
//!   the command line
//! - [`cluster`]: several nodes: `up`'s cluster part, remote nodes, etcd leases and
//!   the agent
//! - [`node`] (`up`, `down`, `status`) and [`reconcile`]: the node's lifecycle
//! - [`endpoint`]: `endpoint add/del/list`, journalled, each step undone on failure
//! - [`state`]: the state directory (lock, atomic writes, journal), IPAM, names
//! - [`egress`]: pod egress: the uplink and NAT settings (kept in the state), the
//!   uplink program's attachment, the NAT table (`nat list`, `nat flush`, the flows
//!   of a deleted endpoint)
//! - [`datapath`]: the embedded eBPF object: load, pin, replace, attach, maps
//! - [`kernel`]: rtnetlink, network namespaces, the bpf file system
//! - [`defaults`], [`error`] (what kind of failure an error is) and [`fault`]
//!   (test-only fault points) are leaves any layer uses
//!
//! The library's API is what the binary and the integration tests use; the rest is
//! crate-private, and the fakes the unit tests run on exist only in test builds.

// The command line (the binary's src/cli) uses these; a package has one dependency
// list for its library and its binary.
use anyhow as _;
use clap as _;

pub mod cluster;
pub mod cni;
pub mod datapath;
pub mod defaults;
pub mod egress;
pub mod endpoint;
pub mod error;
pub mod fault;
pub mod kernel;
pub mod node;
pub mod reconcile;
pub mod state;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vethbpf.bpf.o"));

/// The kind of the first error of the library's in `err`'s chain (outermost
/// first), or `None` if none of them is the library's.
pub fn error_kind(err: &(dyn std::error::Error + 'static)) -> Option<error::ErrorKind> {
    let mut next = Some(err);
    while let Some(e) = next {
        let kind = if let Some(e) = e.downcast_ref::<cluster::ClusterError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<cluster::join::JoinError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<cluster::agent::AgentError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<node::NodeError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<reconcile::ReconcileError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<endpoint::EndpointError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<state::ipam::IpamError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<state::ident::NameError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<datapath::BpfError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<datapath::maps::MapsError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<kernel::netns::NetnsError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<kernel::netlink::NetlinkError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<egress::EgressError>() {
            Some(e.kind())
        } else if let Some(e) = e.downcast_ref::<egress::table::TableError>() {
            Some(e.kind())
        } else if e.is::<state::StateError>() || e.is::<kernel::bpffs::BpffsError>() {
            Some(error::ErrorKind::Other)
        } else {
            None
        };
        if kind.is_some() {
            return kind;
        }
        next = e.source();
    }
    None
}
