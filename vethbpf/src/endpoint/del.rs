//! `endpoint del`.

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::warn;
use vethbpf_common::{ROUTE_KIND_LOCAL, Route};

use super::journal::settle;
use super::remove::{delete_host_veth, remove_after_veth};
use super::{EndpointError, Env};
use crate::fault;
use crate::state::{EndpointRecord, Intent, Locked, LogEntry};

/// Deletes an endpoint: route entry first (nobody is sent to it any more), then the
/// veth (the pod loses its interface and the program its hook), then the pins, map
/// entries, the namespace if vethbpf made it, and the record.
///
/// A failure before the veth is deleted puts the route entry back: the endpoint is
/// as it was. From the veth's deletion on there is no going back, so a failure
/// leaves the journal and the next command (or `reconcile`) finishes the delete.
pub fn del(
    env: &mut Env<'_>,
    locked: &mut Locked,
    name: &str,
) -> Result<EndpointRecord, EndpointError> {
    // `endpoint del NAME` run again after a del of NAME died: finishing that one is
    // the answer.
    match locked.pending()? {
        Some(Intent::Del(rec)) if rec.name == name => {
            settle(env, locked, Intent::Del(rec.clone()))?;
            return Ok(rec);
        }
        Some(intent) => {
            settle(env, locked, intent)?;
        }
        None => {}
    }
    let rec = locked
        .state
        .endpoints
        .get(name)
        .cloned()
        .ok_or_else(|| EndpointError::NotFound {
            name: name.to_string(),
        })?;
    fault::point("del.intent")?;
    locked.begin(&Intent::Del(rec.clone()))?;

    let reversible = (|| {
        fault::point("del.route-map")?;
        del_route_entries(env, &rec)?;
        if let Err(e) = delete_host_veth(env, &rec) {
            if let Err(undo) = put_route_entries(env, &rec) {
                warn!(error = %undo, "cannot restore the route entries");
            }
            return Err(e);
        }
        Ok(())
    })();
    if let Err(e) = reversible {
        if let Err(end) = locked.end() {
            warn!(error = %end, "cannot clear the journal");
        }
        return Err(e);
    }
    let interrupted = |source| EndpointError::DelInterrupted {
        name: name.to_string(),
        source: Box::new(source),
    };
    remove_after_veth(env, &rec).map_err(interrupted)?;
    fault::point("del.commit").map_err(|e| interrupted(e.into()))?;
    // On failure the kernel side is gone and the record stays until the journal
    // is replayed.
    locked
        .commit(LogEntry::Del(name.to_string()))
        .map_err(|e| interrupted(e.into()))?;
    if let Err(e) = fault::point("del.done")
        .map_err(EndpointError::from)
        .and_then(|()| Ok(locked.end()?))
    {
        warn!(error = %e, "cannot clear the journal; the next command will");
    }
    Ok(rec)
}

/// Takes away the route entries (one per family) that send traffic to `rec`.
pub(crate) fn del_route_entries(
    env: &mut Env<'_>,
    rec: &EndpointRecord,
) -> Result<(), EndpointError> {
    if let Some(ip) = rec.ip {
        env.dp.del_route(Ipv4Net::from(ip))?;
    }
    if let Some(ip6) = rec.ip6 {
        env.dp.del_route6(Ipv6Net::from(ip6))?;
    }
    Ok(())
}

/// Puts back the route entries of `rec` (a del that could not delete the veth).
fn put_route_entries(env: &mut Env<'_>, rec: &EndpointRecord) -> Result<(), EndpointError> {
    if let Some(ip) = rec.ip {
        env.dp.put_route(Ipv4Net::from(ip), &route_of(rec))?;
    }
    if let Some(ip6) = rec.ip6 {
        env.dp.put_route6(Ipv6Net::from(ip6), &route_of(rec))?;
    }
    Ok(())
}

/// The route entry that sends traffic to `rec`.
pub(crate) fn route_of(rec: &EndpointRecord) -> Route {
    Route {
        kind: ROUTE_KIND_LOCAL,
        ifindex: rec.host_ifindex,
        endpoint_id: rec.id,
        mac: rec.pod_mac.0,
        _pad: [0; 2],
    }
}
