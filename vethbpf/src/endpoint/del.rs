//! `endpoint del`.

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::warn;
use vethbpf_common::{ROUTE_KIND_LOCAL, Route};

use super::journal::{settle, settle_deletion};
use super::remove::{delete_host_veth, remove_after_veth};
use super::{EndpointError, Env};
use crate::fault;
use crate::state::{EndpointRecord, Found, Intent, Locked, LogEntry};

/// Deletes an endpoint: route entry first (nobody is sent to it any more), then the
/// veth (the pod loses its interface and the program its hook), then the pins, map
/// entries, the namespace if vethbpf made it, and the record.
///
/// The del journals itself in a deletion file of its own and deletes the veth with
/// the state lock released (see `state/deletions.rs`), so that concurrent dels
/// overlap in the kernel's part, as other plugins' do. (That part is ~1 ms since the
/// kernel's wait for freeing the veth is left to a detached process:
/// `kernel/netlink/unlist.rs`.) The record
/// stays in the state until the commit, so its name, addresses and index are not
/// given out meanwhile.
///
/// A failure before the veth is deleted puts the route entry back: the endpoint is
/// as it was. From the veth's deletion on there is no going back, so a failure
/// leaves the journal and the next command (or `reconcile`) finishes the delete.
pub fn del(
    env: &mut Env<'_>,
    locked: &mut Locked,
    name: &str,
) -> Result<EndpointRecord, EndpointError> {
    del_with(env, locked, name, Lock::Release)
}

/// [`del`] holding the state lock throughout, for `down`: it deletes every
/// endpoint and the node, one step for every other command (a del of one of its
/// endpoints runs before it, or after it and finds the node down).
pub fn del_holding_lock(
    env: &mut Env<'_>,
    locked: &mut Locked,
    name: &str,
) -> Result<EndpointRecord, EndpointError> {
    del_with(env, locked, name, Lock::Hold)
}

/// Whether a del lets the state lock go while the kernel deletes the veth.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    Release,
    Hold,
}

fn del_with(
    env: &mut Env<'_>,
    locked: &mut Locked,
    name: &str,
    lock: Lock,
) -> Result<EndpointRecord, EndpointError> {
    let rec = loop {
        // `endpoint del NAME` run again after a del of NAME died: finishing that
        // one is the answer.
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
        let mut running = None;
        for found in locked.deletions()? {
            match found {
                Found::Dead(dead) if dead.rec.name == name => {
                    let rec = dead.rec.clone();
                    settle_deletion(env, locked, dead)?;
                    return Ok(rec);
                }
                Found::Dead(dead) => {
                    settle_deletion(env, locked, dead)?;
                }
                Found::Live { name: n, file } if n == name => running = Some(file),
                Found::Live { .. } => {}
            }
        }
        // A del of the same endpoint is running: wait for it, then look again
        // (it is gone, or that del failed and it is still there).
        if let Some(file) = running {
            locked.wait_while_unlocked(file)?;
            continue;
        }
        break locked.state.endpoints.get(name).cloned().ok_or_else(|| {
            EndpointError::NotFound {
                name: name.to_string(),
            }
        })?;
    };
    fault::point("del.intent")?;
    let deletion = locked.begin_deletion(&rec)?;
    let undo = |locked: &Locked, deletion| {
        if let Err(end) = locked.end_deletion(deletion) {
            warn!(error = %end, "cannot clear the journal");
        }
    };
    if let Err(e) = fault::point("del.route-map")
        .map_err(EndpointError::from)
        .and_then(|()| del_route_entries(env, &rec))
    {
        undo(locked, deletion);
        return Err(e);
    }
    let interrupted = |source| EndpointError::DelInterrupted {
        name: name.to_string(),
        source: Box::new(source),
    };
    // Taking the lock again can only fail to wait (a CNI call's time is up):
    // this del's journal is then finished by the next command.
    let deleted = match lock {
        Lock::Release => locked
            .unlocked(|| delete_host_veth(env, &rec))
            .map_err(|e| interrupted(e.into()))?,
        Lock::Hold => delete_host_veth(env, &rec),
    };
    if let Err(e) = deleted {
        if let Err(undo) = put_route_entries(env, &rec) {
            warn!(error = %undo, "cannot restore the route entries");
        }
        undo(locked, deletion);
        return Err(e);
    }
    remove_after_veth(env, &rec).map_err(interrupted)?;
    fault::point("del.commit").map_err(|e| interrupted(e.into()))?;
    // On failure the kernel side is gone and the record stays until the journal
    // is replayed.
    locked
        .commit(LogEntry::Del(name.to_string()))
        .map_err(|e| interrupted(e.into()))?;
    if let Err(e) = fault::point("del.done")
        .map_err(EndpointError::from)
        .and_then(|()| Ok(locked.end_deletion(deletion)?))
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
