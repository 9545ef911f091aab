//! Taking an endpoint's kernel objects away: what `del` does after its checks, and
//! what settling an interrupted `del` and `reconcile` do.

use super::del::del_route_entries;
use super::{EndpointError, Env};
use crate::fault;
use crate::kernel::netlink::NetlinkError;
use crate::kernel::netns::NetnsError;
use crate::state::EndpointRecord;

/// Deletes the host veth (and with it the pod side and the node's /32 route).
pub(super) fn delete_host_veth(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
) -> Result<(), EndpointError> {
    fault::point("del.link")?;
    // Look the link up by name: after a crash the recorded index may belong to
    // something else.
    if let Some(link) = env.node.link_by_name(&rec.host_veth)? {
        match env.node.del_link(link.index) {
            Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What `del` removes once the veth is gone; each part already gone is fine.
pub(super) fn remove_after_veth(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
) -> Result<(), EndpointError> {
    fault::point("del.detach")?;
    env.dp.detach(&rec.host_veth)?;
    fault::point("del.endpoint-map")?;
    env.dp.del_endpoint(rec.host_ifindex)?;
    env.dp.del_endpoint6(rec.host_ifindex)?;
    if rec.netns_created {
        fault::point("del.netns")?;
        match env.ns.delete(&rec.name) {
            Ok(()) | Err(EndpointError::Netns(NetnsError::NotFound(_))) => {}
            Err(e) => return Err(e),
        }
    }
    fault::point("del.counters")?;
    env.dp.reset_counters(rec.id)?;
    Ok(())
}

/// The kernel side of `del`, without the state record. Idempotent: parts already
/// gone are fine, so it also finishes a `del` that was interrupted.
pub(crate) fn remove_endpoint(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
) -> Result<(), EndpointError> {
    del_route_entries(env, rec)?;
    delete_host_veth(env, rec)?;
    remove_after_veth(env, rec)
}
