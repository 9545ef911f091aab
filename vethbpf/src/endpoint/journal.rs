//! Settling the journal of an endpoint change that died halfway.

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use tracing::warn;

use super::remove::remove_endpoint;
use super::{EndpointError, Env, with_kernel};
use crate::kernel::netlink::NetlinkError;
use crate::kernel::netns::NetnsError;
use crate::state::{
    DeadDeletion, EndpointRecord, Found, Intent, Locked, LogEntry, PlannedEndpoint,
};

/// How the journal of an interrupted command was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// `add` or `del`.
    pub op: &'static str,
    pub name: String,
    /// `rolled back` (an add that had not committed), `completed` (a del, or an
    /// add that had committed before it died).
    pub outcome: &'static str,
}

/// Settles the journals commands that died halfway left behind: an add that did
/// not commit is rolled back, a del is finished (the one in `intent.json`, and
/// every deletion journal whose command is gone; a live deletion is its owner's).
/// Cheap when there is none (one failed `open`, one directory read), so every
/// command that changes endpoints calls it first.
pub(crate) fn finish_pending(
    env: &mut Env<'_>,
    locked: &mut Locked,
) -> Result<Vec<Recovered>, EndpointError> {
    let mut settled = Vec::new();
    if let Some(intent) = locked.pending()? {
        settled.push(settle(env, locked, intent)?);
    }
    for found in locked.deletions()? {
        if let Found::Dead(dead) = found {
            settled.push(settle_deletion(env, locked, dead)?);
        }
    }
    Ok(settled)
}

/// Settles the journals (see `finish_pending`) with the real kernel, opened only
/// when there is a journal to settle. Commands that do not change endpoints
/// themselves call it first.
pub fn settle_with_kernel(locked: &mut Locked) -> Result<Vec<Recovered>, EndpointError> {
    let dead = locked
        .deletions()?
        .iter()
        .any(|f| matches!(f, Found::Dead(_)));
    if locked.pending()?.is_none() && !dead {
        return Ok(Vec::new());
    }
    let node = locked.state.node.clone().ok_or(EndpointError::NotUp)?;
    with_kernel(&node, |env| finish_pending(env, locked))
}

/// Finishes a del whose command died, from its own journal (see
/// `state/deletions.rs`).
pub(super) fn settle_deletion(
    env: &mut Env<'_>,
    locked: &mut Locked,
    dead: Box<DeadDeletion>,
) -> Result<Recovered, EndpointError> {
    let recovered = finish_del(env, locked, dead.rec.clone())?;
    locked.end_dead_deletion(dead)?;
    Ok(logged(recovered))
}

/// Finishes the del of `rec` whose command died, from either journal: its kernel
/// objects go (each already gone is fine), then its record if it is still the one.
fn finish_del(
    env: &mut Env<'_>,
    locked: &mut Locked,
    rec: EndpointRecord,
) -> Result<Recovered, EndpointError> {
    remove_endpoint(env, &rec)?;
    if locked.state.endpoints.get(&rec.name) == Some(&rec) {
        locked.commit(LogEntry::Del(rec.name.clone()))?;
    }
    Ok(Recovered {
        op: "del",
        name: rec.name,
        outcome: "completed",
    })
}

/// Settles one journaled intent (see [`finish_pending`]) and clears the journal.
pub(super) fn settle(
    env: &mut Env<'_>,
    locked: &mut Locked,
    intent: Intent,
) -> Result<Recovered, EndpointError> {
    let recovered = match intent {
        Intent::Add(plan) => {
            let committed = locked.state.endpoints.get(&plan.name).is_some_and(|r| {
                r.host_veth == plan.host_veth && r.ip == plan.ip && r.ip6 == plan.ip6
            });
            if !committed {
                roll_back_add(env, locked, &plan)?;
            }
            Recovered {
                op: "add",
                name: plan.name,
                outcome: if committed {
                    "completed"
                } else {
                    "rolled back"
                },
            }
        }
        Intent::Del(rec) => finish_del(env, locked, rec)?,
    };
    locked.end()?;
    Ok(logged(recovered))
}

/// Removes whatever an uncommitted add made, found by the names it planned.
fn roll_back_add(
    env: &mut Env<'_>,
    locked: &Locked,
    plan: &PlannedEndpoint,
) -> Result<(), EndpointError> {
    let owned = |pred: &dyn Fn(&EndpointRecord) -> bool| locked.state.endpoints.values().any(pred);
    // The address was free when the add began, under the lock; an entry for it is
    // the add's.
    if let Some(ip) = plan.ip
        && !owned(&|r| r.ip == Some(ip))
    {
        env.dp.del_route(Ipv4Net::from(ip))?;
    }
    if let Some(ip6) = plan.ip6
        && !owned(&|r| r.ip6 == Some(ip6))
    {
        env.dp.del_route6(Ipv6Net::from(ip6))?;
    }
    for ifname in [&plan.host_veth, &plan.temp_peer] {
        if owned(&|r| &r.host_veth == ifname) {
            continue;
        }
        if let Some(link) = env.node.link_by_name(ifname)? {
            env.dp.del_endpoint(link.index)?;
            env.dp.del_endpoint6(link.index)?;
            match env.node.del_link(link.index) {
                Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !owned(&|r| r.host_veth == plan.host_veth) {
        env.dp.detach(&plan.host_veth)?;
    }
    if plan.create_netns && env.ns.named_exists(&plan.name) && !owned(&|r| r.name == plan.name) {
        match env.ns.delete(&plan.name) {
            Ok(()) | Err(EndpointError::Netns(NetnsError::NotFound(_))) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Says what settling a dead command's journal did, once, in the log.
fn logged(recovered: Recovered) -> Recovered {
    warn!(
        op = recovered.op,
        endpoint = %recovered.name,
        outcome = recovered.outcome,
        "settled a command that was interrupted"
    );
    recovered
}
