//! Subnet leases in etcd, Flannel's model: each node holds one pod subnet of the
//! cluster CIDR under `<prefix>/subnets/<subnet>` (value: node name and address,
//! and in a dual-stack cluster its IPv6 subnet, held under
//! `<prefix>/subnets6/<subnet>` with the same lease; agents that know no IPv6
//! read the same record and ignore the field),
//! attached to an etcd lease with a TTL that the holder keeps renewing; a holder that
//! stops renewing loses the key when the lease runs out, and every watcher sees it
//! go.
//!
//! Claims are etcd transactions, so two nodes never hold one subnet: a free subnet
//! is taken with "create if absent"; a node that restarts takes its own key back
//! with "if unchanged since I read it". `<prefix>/config` holds the cluster CIDR,
//! subnet length and overlay, written by the first agent and checked by the others.
//!
//! The registry runs on a thread of its own with a current-thread tokio runtime
//! (the netlink client must not run inside one), and reports to the agent through a
//! channel. It reconnects forever: etcd being away stops no traffic, and on return
//! the registry claims its subnet again and sends a fresh view.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::subnets::{self, Subnet, SubnetError};
use crate::state::Overlay;

/// What the registry needs to know.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub endpoints: Vec<String>,
    /// Key prefix of the cluster, e.g. `/vethbpf/network`.
    pub prefix: String,
    pub node_name: String,
    /// This node's address, published with its lease.
    pub address: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    pub subnet_len: u8,
    /// The IPv6 cluster CIDR of a dual-stack cluster: the node leases one
    /// /`subnet_len6` of it too.
    pub cluster_cidr6: Option<Ipv6Net>,
    pub subnet_len6: u8,
    pub overlay: Overlay,
    pub ttl_secs: i64,
    /// The subnet the node has now (kept across agent restarts when free or ours).
    pub prefer: Option<Ipv4Net>,
    /// Likewise, its IPv6 subnet.
    pub prefer6: Option<Ipv6Net>,
}

/// A lease as published: who holds the subnet and where to send its pods' packets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    pub node: String,
    pub address: Ipv4Addr,
    /// The node's IPv6 subnet in a dual-stack cluster (leased under
    /// `<prefix>/subnets6/`); agents that know no IPv6 ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
}

/// `<prefix>/config`: what every agent of the cluster must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub cluster_cidr: Ipv4Net,
    pub subnet_len: u8,
    pub overlay: Overlay,
    /// Dual-stack clusters only (an agent that knows no IPv6 ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_len6: Option<u8>,
}

impl NetworkConfig {
    /// Whether an agent configured as `self` may join a cluster configured as
    /// `found`: the IPv4 part the same, and the IPv6 part too if it has one (an
    /// IPv4-only node may be part of a dual-stack cluster; its pods have no IPv6).
    pub fn joins(&self, found: &NetworkConfig) -> bool {
        self.cluster_cidr == found.cluster_cidr
            && self.subnet_len == found.subnet_len
            && self.overlay == found.overlay
            && (self.cluster_cidr6.is_none()
                || (self.cluster_cidr6 == found.cluster_cidr6
                    && self.subnet_len6 == found.subnet_len6))
    }
}

/// What the registry tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// This node holds the subnet, and in a dual-stack cluster the IPv6 one (the
    /// first time, or again after losing them).
    Leased(Ipv4Net, Option<Ipv6Net>),
    /// Every lease of the cluster now, own included.
    Leases(BTreeMap<Ipv4Net, LeaseValue>),
    /// The cluster cannot be joined as configured; the agent stops.
    Fatal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error(
        "the cluster in etcd is {found:?}, this agent was started with {ours:?}; start every agent with the same --cluster-cidr, --subnet-len, --subnet-len6 and --overlay"
    )]
    ConfigMismatch {
        found: NetworkConfig,
        ours: NetworkConfig,
    },
    #[error("{key} in etcd is not valid JSON: {source}")]
    BadValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error("this node's lease ran out")]
    LeaseLost,
    #[error("the watch ended ({0})")]
    WatchEnded(String),
    #[error("no subnet could be claimed after {0} attempts (contention)")]
    Contention(u32),
    #[error("cannot start the registry's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl EtcdError {
    /// Errors that waiting does not cure.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            EtcdError::ConfigMismatch { .. } | EtcdError::Subnet(_) | EtcdError::BadValue { .. }
        )
    }
}

impl RegistryConfig {
    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix.trim_end_matches('/'))
    }
    fn subnets6_prefix(&self) -> String {
        format!("{}/subnets6/", self.prefix.trim_end_matches('/'))
    }
    fn subnet_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnets::key_name(subnet))
    }
    fn config_key(&self) -> String {
        format!("{}/config", self.prefix.trim_end_matches('/'))
    }
    fn network(&self) -> NetworkConfig {
        NetworkConfig {
            cluster_cidr: self.cluster_cidr,
            subnet_len: self.subnet_len,
            overlay: self.overlay,
            cluster_cidr6: self.cluster_cidr6,
            subnet_len6: self.cluster_cidr6.map(|_| self.subnet_len6),
        }
    }
    /// The lease value: this node, and its IPv6 subnet if it has one.
    fn value(&self, pod_cidr6: Option<Ipv6Net>) -> Vec<u8> {
        serde_json::to_vec(&LeaseValue {
            node: self.node_name.clone(),
            address: self.address,
            pod_cidr6,
        })
        .unwrap_or_default()
    }
}

/// The registry's thread; dropping it stops the thread (and leaves the lease to
/// run out, as a killed agent does).
pub struct Registry {
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the registry on its own thread (in the caller's network namespace); it
/// runs until the [`Registry`] is dropped, the receiver of `tx` is gone, or a fatal
/// error (reported as [`Update::Fatal`]).
pub fn spawn(cfg: RegistryConfig, tx: Sender<Update>) -> Registry {
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Update::Fatal(EtcdError::Runtime(e).to_string()));
                return;
            }
        };
        rt.block_on(async {
            tokio::select! {
                () = run(cfg, tx) => {}
                () = stopped.notified() => {}
            }
        });
    });
    Registry {
        stop,
        thread: Some(thread),
    }
}

/// Sessions, one per connection, with a growing pause between failed ones.
async fn run(cfg: RegistryConfig, tx: Sender<Update>) {
    let mut held = Held {
        subnet: cfg.prefer,
        subnet6: cfg.prefer6,
    };
    let mut announced: Option<(Ipv4Net, Option<Ipv6Net>)> = None;
    const FIRST_PAUSE: Duration = Duration::from_millis(200);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = tokio::time::Instant::now();
        let result = session(&cfg, &tx, &mut held, &mut announced).await;
        // A session that ran a while was a working connection: start over quickly.
        if started.elapsed() > Duration::from_secs(10) {
            pause = FIRST_PAUSE;
        }
        match result {
            Ok(()) => return,
            Err(e) if e.is_fatal() => {
                let _ = tx.send(Update::Fatal(e.to_string()));
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "etcd session ended");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The subnets this node held last (kept across sessions).
struct Held {
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
}

/// One connection: claim the subnet, then renew the lease and follow every lease
/// until something breaks. `Ok` only when the agent is gone.
async fn session(
    cfg: &RegistryConfig,
    tx: &Sender<Update>,
    held: &mut Held,
    announced: &mut Option<(Ipv4Net, Option<Ipv6Net>)>,
) -> Result<(), EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let mut client = Client::connect(&cfg.endpoints, Some(options)).await?;
    check_config(&mut client, cfg).await?;

    let lease = client.lease_grant(cfg.ttl_secs, None).await?.id();
    // The IPv6 subnet first: the IPv4 lease's value names it, and is what the
    // others watch.
    let subnet6 = match cfg.cluster_cidr6 {
        Some(cluster6) => {
            let claim6 = Claim {
                prefix: cfg.subnets6_prefix(),
                cluster: cluster6,
                len: cfg.subnet_len6,
                node: &cfg.node_name,
                value: cfg.value(None),
            };
            Some(claim(&mut client, &claim6, lease, held.subnet6).await?)
        }
        None => None,
    };
    held.subnet6 = subnet6;
    let claim4 = Claim {
        prefix: cfg.subnets_prefix(),
        cluster: cfg.cluster_cidr,
        len: cfg.subnet_len,
        node: &cfg.node_name,
        value: cfg.value(subnet6),
    };
    let subnet = claim(&mut client, &claim4, lease, held.subnet).await?;
    held.subnet = Some(subnet);
    if *announced != Some((subnet, subnet6)) {
        info!(%subnet, ?subnet6, lease, "leased");
        if tx.send(Update::Leased(subnet, subnet6)).is_err() {
            return Ok(());
        }
        *announced = Some((subnet, subnet6));
    }
    let own_key = cfg.subnet_key(subnet);
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await?;

    let prefix = cfg.subnets_prefix();
    let snapshot = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let mut leases: BTreeMap<String, LeaseValue> = BTreeMap::new();
    for kv in snapshot.kvs() {
        if let Some((key, value)) = parse_kv(kv) {
            leases.insert(key, value);
        }
    }
    if tx.send(Update::Leases(by_subnet(cfg, &leases))).is_err() {
        return Ok(());
    }
    let mut watch = client
        .watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let mut ticker = tokio::time::interval(Duration::from_secs((cfg.ttl_secs / 3).max(1) as u64));
    loop {
        tokio::select! {
            _ = ticker.tick() => keeper.keep_alive().await?,
            renewal = renewals.message() => match renewal? {
                Some(r) if r.ttl() > 0 => debug!(ttl = r.ttl(), "lease renewed"),
                _ => return Err(EtcdError::LeaseLost),
            },
            message = watch.message() => {
                let resp = message?.ok_or_else(|| EtcdError::WatchEnded("closed".into()))?;
                if resp.canceled() {
                    return Err(EtcdError::WatchEnded(resp.cancel_reason().to_string()));
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match event.event_type() {
                        EventType::Put => {
                            if let Some((key, value)) = parse_kv(kv) {
                                leases.insert(key, value);
                            }
                        }
                        EventType::Delete => {
                            leases.remove(&key);
                        }
                    }
                }
                if leases.get(&own_key).is_none_or(|v| v.node != cfg.node_name) {
                    // Our key went (lease ran out, or someone deleted it): claim again.
                    *announced = None;
                    return Err(EtcdError::LeaseLost);
                }
                if tx.send(Update::Leases(by_subnet(cfg, &leases))).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Writes the network config if there is none; refuses a different one.
async fn check_config(client: &mut Client, cfg: &RegistryConfig) -> Result<(), EtcdError> {
    let key = cfg.config_key();
    let ours = cfg.network();
    let value = serde_json::to_vec(&ours).unwrap_or_default();
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), value, None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = client.txn(txn).await?;
    if resp.succeeded() {
        info!(key, "wrote the cluster's network config");
        return Ok(());
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
        {
            let found: NetworkConfig =
                serde_json::from_slice(kv.value()).map_err(|source| EtcdError::BadValue {
                    key: key.clone(),
                    source,
                })?;
            if !ours.joins(&found) {
                return Err(EtcdError::ConfigMismatch { found, ours });
            }
        }
    }
    Ok(())
}

/// What a claim writes: the keys of one family, under `prefix`, and this node's
/// value.
struct Claim<'a, S> {
    prefix: String,
    cluster: S,
    len: u8,
    node: &'a str,
    value: Vec<u8>,
}

/// Claims a subnet for this node under `lease`: `want` (the one it has) if it is
/// free or its own, else one it holds already, else the first free one. Every
/// claim is a transaction; losing a race means reading again.
async fn claim<S: Subnet>(
    client: &mut Client,
    c: &Claim<'_, S>,
    lease: i64,
    want: Option<S>,
) -> Result<S, EtcdError> {
    const ATTEMPTS: u32 = 64;
    let key = |subnet: S| format!("{}{}", c.prefix, subnets::key_name(subnet));
    for _ in 0..ATTEMPTS {
        let resp = client
            .get(c.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut taken: BTreeMap<S, (Option<LeaseValue>, i64)> = BTreeMap::new();
        for kv in resp.kvs() {
            let Some(subnet) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(c.prefix.as_str()))
                .and_then(subnets::parse_key_name::<S>)
            else {
                continue;
            };
            let value = serde_json::from_slice::<LeaseValue>(kv.value()).ok();
            taken.insert(subnet, (value, kv.mod_revision()));
        }
        let mine = |v: &Option<LeaseValue>| v.as_ref().is_some_and(|v| v.node == c.node);
        let held: Vec<S> = taken
            .iter()
            .filter(|(_, (v, _))| mine(v))
            .map(|(s, _)| *s)
            .collect();
        let fits =
            |s: &S| c.cluster.overlaps(*s) && s.prefix() == c.len && c.len > c.cluster.prefix();
        let mut lost_race = false;
        for subnet in want.into_iter().chain(held).filter(fits) {
            let overlapping = taken.keys().any(|t| *t != subnet && t.overlaps(subnet));
            match taken.get(&subnet) {
                _ if overlapping => {}
                None => {
                    if create(client, &key(subnet), &c.value, lease).await? {
                        return Ok(subnet);
                    }
                    lost_race = true;
                    break;
                }
                Some((v, rev)) if mine(v) => {
                    if take_over(client, &key(subnet), &c.value, lease, *rev).await? {
                        return Ok(subnet);
                    }
                    lost_race = true;
                    break;
                }
                Some((v, _)) => warn!(
                    %subnet,
                    holder = v.as_ref().map_or("?", |v| v.node.as_str()),
                    "the subnet this node had is leased to another node"
                ),
            }
        }
        if lost_race {
            continue;
        }
        let keys: BTreeSet<S> = taken.keys().copied().collect();
        let subnet = subnets::first_free(c.cluster, c.len, &keys)?;
        if create(client, &key(subnet), &c.value, lease).await? {
            return Ok(subnet);
        }
    }
    Err(EtcdError::Contention(ATTEMPTS))
}

/// "Create if absent": the key must not exist.
async fn create(
    client: &mut Client,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<bool, EtcdError> {
    let txn = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(client.txn(txn).await?.succeeded())
}

/// "If unchanged since read": re-attaches this node's own key to its new lease.
async fn take_over(
    client: &mut Client,
    key: &str,
    value: &[u8],
    lease: i64,
    mod_revision: i64,
) -> Result<bool, EtcdError> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(client.txn(txn).await?.succeeded())
}

/// A lease key and value; `None` for keys or values that are not a lease (logged).
fn parse_kv(kv: &KeyValue) -> Option<(String, LeaseValue)> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match serde_json::from_slice(kv.value()) {
        Ok(v) => Some((key, v)),
        Err(e) => {
            warn!(key, error = %e, "ignoring a lease that is not valid JSON");
            None
        }
    }
}

fn by_subnet(
    cfg: &RegistryConfig,
    leases: &BTreeMap<String, LeaseValue>,
) -> BTreeMap<Ipv4Net, LeaseValue> {
    let prefix = cfg.subnets_prefix();
    leases
        .iter()
        .filter_map(|(k, v)| {
            let subnet = subnets::parse_key_name::<Ipv4Net>(k.strip_prefix(prefix.as_str())?)?;
            Some((subnet, v.clone()))
        })
        .collect()
}
