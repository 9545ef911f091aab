//! Endpoints ("pods"): `endpoint add`, `endpoint del` and `endpoint list`, each
//! journalled, and the settling of one that died halfway.
//!
//! The kernel is reached through three small traits ([`Netlink`] for the node
//! namespace, [`Namespaces`] for pod namespaces, [`Datapath`] for the pinned eBPF
//! objects) so that the logic, rollback included, is unit-tested with fakes.
//!
//! [`Netlink`]: crate::kernel::netlink::Netlink

mod add;
mod del;
mod env;
mod error;
mod journal;
mod kernel;
mod pod;
mod remove;
mod tag;
mod view;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use add::{AddRequest, add, add_tagged};
pub use del::del;
pub(crate) use del::route_of;
pub use env::{Datapath, Env, Namespaces};
pub use error::EndpointError;
pub use journal::{Recovered, finish_pending};
pub use kernel::{GoneDatapath, KernelNamespaces, PinnedDatapath};
pub use pod::{PodConfig, configure_pod_side};
pub use remove::remove_endpoint;
pub use tag::KernelTag;
pub use view::{Count, CounterView, EndpointView, list};
