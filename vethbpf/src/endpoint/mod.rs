//! Endpoints ("pods"): `endpoint add`, `endpoint del` and `endpoint list`, each
//! journalled, and the settling of one that died halfway.
//!
//! The kernel is reached through three small traits ([`Netlink`] for the node
//! namespace, `Namespaces` for pod namespaces, `Datapath` for the pinned eBPF
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

pub(crate) use add::add_tagged;
pub use add::{AddRequest, add};
pub(crate) use del::route_of;
pub use del::{del, del_holding_lock};
pub use env::Env;
pub(crate) use env::{Datapath, Namespaces, PodProgram};
pub use error::EndpointError;
pub(crate) use journal::finish_pending;
pub use journal::{Recovered, settle_with_kernel};
pub(crate) use kernel::PinnedDatapath;
pub use kernel::{with_kernel, with_kernel_without_pins};
pub(crate) use pod::{PodConfig, configure_pod_side};
pub(crate) use remove::remove_endpoint;
pub(crate) use tag::KernelTag;
pub use view::{Count, CounterView, EndpointView, list};
