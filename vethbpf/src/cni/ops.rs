//! The CNI commands on top of the library: `up` on first use, `endpoint::add_tagged`
//! and `endpoint::del` under the state lock, CHECK against `prevResult` and the
//! kernel, STATUS, GC, and IPAM delegation.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use vethbpf_common::{ROUTE_KIND_LOCAL, Route, ipv4_to_map};

use super::delegate::{CallEnv, Delegate};
use super::error::CniError;
use super::params::Params;
use super::types::NetConf;
use super::types::{
    CniResult, Dns, Interface, IpConfig, LATEST_VERSION, RouteEntry, SUPPORTED_VERSIONS,
};
use crate::datapath::maps::Maps;
use crate::datapath::pods::{self, AttachState};
use crate::datapath::{self, Pins};
use crate::defaults;
use crate::egress::EgressRequest;
use crate::endpoint::{self, AddRequest, EndpointError};
use crate::kernel::netlink::{Netlink, Route6Spec, RouteSpec, RtNetlink};
use crate::node::{self, UpRequest};
use crate::state::ident::{self, MacAddr};
use crate::state::{CniAttachment, EndpointRecord, Locked, NodeConfig, STATE_FILE, StateDir};

/// How long a call waits for another vethbpf command to release the state lock
/// before answering "try again later" (code 11).
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Logging goes to stderr (stdout is the protocol's): warnings by default,
/// `RUST_LOG` for more.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}

/// VERSION: stdin may be empty or `{"cniVersion": ...}`.
pub(crate) fn version(stdin: &[u8]) -> Result<Value, CniError> {
    let requested = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(serde_json::json!({
        "cniVersion": requested.unwrap_or_else(|| LATEST_VERSION.to_string()),
        "supportedVersions": SUPPORTED_VERSIONS,
    }))
}

/// The endpoint name of an attachment: `CONTAINERID-IFNAME` when that is a valid
/// endpoint name (1-63 of `[A-Za-z0-9_.-]`), else the first 12 characters of the
/// container ID, the interface name's allowed characters and a 64-bit hash of both
/// (container IDs of podman, containerd and CRI-O are 64 hex digits).
pub(crate) fn endpoint_name(container_id: &str, ifname: &str) -> String {
    let plain = format!("{container_id}-{ifname}");
    if ident::validate_endpoint_name(&plain).is_ok() {
        return plain;
    }
    let allowed = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let cid: String = container_id.chars().filter(allowed).take(12).collect();
    let ifn: String = ifname.chars().filter(allowed).take(15).collect();
    // FNV-1a over both, separated by a byte neither can contain.
    let hash = container_id
        .bytes()
        .chain([0])
        .chain(ifname.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{cid}-{ifn}-{hash:016x}")
}

fn state_dir(conf: &NetConf) -> PathBuf {
    conf.state_dir
        .clone()
        .or_else(|| std::env::var_os("VETHBPF_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR))
}

fn default_bpffs_dir() -> PathBuf {
    std::env::var_os("VETHBPF_BPFFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(defaults::BPFFS_DIR))
}

fn is_up(dir: &Path) -> bool {
    dir.join(STATE_FILE).exists()
}

fn lock(dir: &Path) -> Result<Locked, CniError> {
    Ok(StateDir::new(dir).lock_timeout(LOCK_TIMEOUT)?)
}

/// `lock` for ADD and DEL, which do not wait for other containers' deletions in
/// progress (see `state/deletions.rs`).
fn lock_for_endpoint_change(dir: &Path) -> Result<Locked, CniError> {
    Ok(StateDir::new(dir).lock_for_endpoint_change(Some(LOCK_TIMEOUT))?)
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
    v.as_deref().ok_or_else(|| CniError::Env {
        msg: format!("required environment variable {name} is missing"),
    })
}

/// The attachment ADD and CHECK act on: container id, interface name, namespace.
fn required_attachment(p: &Params) -> Result<(&str, &str, &str), CniError> {
    Ok((
        required(&p.container_id, "CNI_CONTAINERID")?,
        required(&p.ifname, "CNI_IFNAME")?,
        required(&p.netns, "CNI_NETNS")?,
    ))
}

/// `up` with the configuration's settings (the node's own where the configuration
/// names none), unless the node is up with them already.
fn ensure_up(locked: &mut Locked, conf: &NetConf) -> Result<NodeConfig, CniError> {
    let current = locked.state.node.clone();
    let default_cidr: Ipv4Net = defaults::POD_CIDR
        .parse()
        .map_err(|_| CniError::Config(format!("bad default pod CIDR {}", defaults::POD_CIDR)))?;
    let default_gw: Ipv4Addr = defaults::GATEWAY
        .parse()
        .map_err(|_| CniError::Config(format!("bad default gateway {}", defaults::GATEWAY)))?;
    // The configuration's CIDRs if it names any (only podCidr6: IPv6-only), else the
    // node's, else the default IPv4 one.
    let (pod_cidr, pod_cidr6) = match (conf.pod_cidr, conf.pod_cidr6, &current) {
        (None, None, Some(n)) => (n.pod_cidr, n.pod_cidr6),
        (None, None, None) => (Some(default_cidr), None),
        (v4, v6, _) => (v4, v6),
    };
    let req = UpRequest {
        pod_cidr,
        pod_cidr6,
        gateway: conf
            .gateway
            .or(current.as_ref().map(|n| n.gateway))
            .unwrap_or(default_gw),
        bpffs_dir: conf
            .bpffs_dir
            .clone()
            .or(current.as_ref().map(|n| n.bpffs_dir.clone()))
            .unwrap_or_else(default_bpffs_dir),
        replace: false,
        // A new node's pods get tc filters; a node that is up keeps its own.
        pod_attach: None,
        // The node's egress, or on the first use the defaults (the default
        // route's device, when there is one).
        egress: EgressRequest::default(),
    };
    if let Some(n) = &current
        && n.pod_cidr == req.pod_cidr
        && n.pod_cidr6 == req.pod_cidr6
        && n.gateway == req.gateway
        && n.bpffs_dir == req.bpffs_dir
        && Pins::new(&n.bpffs_dir).is_loaded()
    {
        return Ok(n.clone());
    }
    let mut nl = RtNetlink::connect()?;
    let report = node::up(locked, &req, crate::EBPF_OBJECT, &mut nl)?;
    tracing::info!(
        action = report.action,
        "vethbpf up (first use by the CNI plugin)"
    );
    Ok(report.config)
}

/// The node's config with its datapath loaded (reloaded if the pins are gone),
/// without applying the configuration's settings: DEL and GC must work even if the
/// configuration changed since ADD.
fn loaded_node(locked: &mut Locked) -> Result<Option<NodeConfig>, CniError> {
    let Some(n) = locked.state.node.clone() else {
        return Ok(None);
    };
    if Pins::new(&n.bpffs_dir).is_loaded() {
        return Ok(Some(n));
    }
    let req = UpRequest {
        pod_cidr: n.pod_cidr,
        pod_cidr6: n.pod_cidr6,
        gateway: n.gateway,
        bpffs_dir: n.bpffs_dir.clone(),
        replace: false,
        // A new node's pods get tc filters; a node that is up keeps its own.
        pod_attach: None,
        egress: EgressRequest::default(),
    };
    let mut nl = RtNetlink::connect()?;
    Ok(Some(
        node::up(locked, &req, crate::EBPF_OBJECT, &mut nl)?.config,
    ))
}

/// The endpoint of attachment `(container_id, ifname)`, if vethbpf has one.
fn attachment(locked: &Locked, container_id: &str, ifname: &str) -> Option<EndpointRecord> {
    locked
        .state
        .endpoints
        .get(&endpoint_name(container_id, ifname))
        .filter(|r| {
            r.cni
                .as_ref()
                .is_some_and(|c| c.container_id == container_id && c.ifname == ifname)
        })
        .cloned()
}

fn delegate(p: &Params, conf: &NetConf) -> Result<Option<Delegate>, CniError> {
    conf.ipam_type
        .as_deref()
        .map(|t| Delegate::new(t, &p.path, &conf.raw, &conf.cni_version))
        .transpose()
}

/// ADD: the endpoint, and the result.
pub(crate) fn add(p: &Params, conf: &NetConf) -> Result<Value, CniError> {
    let (cid, ifname, netns) = required_attachment(p)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()?;
    let requested_ips = match p.requested_ips()? {
        ips if !ips.is_empty() => ips,
        _ => conf.runtime_ips.clone(),
    };
    // Refused before anything is made (the state dir included).
    if let (Some(cidr), Some(gw)) = (conf.pod_cidr, conf.gateway)
        && cidr.contains(&gw)
    {
        return Err(CniError::Config(format!(
            "the gateway {gw} lies inside podCidr {cidr}; choose a gateway outside it"
        )));
    }

    let mut locked = lock_for_endpoint_change(&state_dir(conf))?;
    let node = ensure_up(&mut locked, conf)?;
    let name = endpoint_name(cid, ifname);
    if locked.state.endpoints.contains_key(&name) {
        return Err(EndpointError::Duplicate { name }.into());
    }
    let delegate = delegate(p, conf)?;
    let (ips, ipam_dns) = match &delegate {
        Some(d) => {
            let (ips, result) = d.add()?;
            (ips, result.dns)
        }
        None => (requested_ips, Dns::default()),
    };
    let req = AddRequest {
        name,
        ips,
        netns: Some(netns.to_string()),
        ifname: ifname.to_string(),
    };
    let tag = CniAttachment {
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        network: conf.name.clone(),
        ipam: conf.ipam_type.clone(),
    };
    let added = endpoint::with_kernel(&node, |env| {
        Ok(endpoint::add_tagged(env, &mut locked, &req, Some(tag))?)
    });
    let rec = match added {
        Ok(rec) => rec,
        Err(e) => {
            // The delegated allocation must not outlive the failed ADD.
            if let Some(d) = &delegate
                && let Err(del) = d.call("DEL", &CallEnv::default())
            {
                tracing::warn!(error = %del, "IPAM DEL after a failed ADD failed");
            }
            return Err(e);
        }
    };
    let dns = if ipam_dns.is_empty() {
        conf.dns.clone()
    } else {
        ipam_dns
    };
    let result = build_result(prev, &rec, &node, netns, dns).for_version(&conf.cni_version);
    serde_json::to_value(result).map_err(|e| CniError::Decode(e.to_string()))
}

fn build_result(
    prev: Option<CniResult>,
    rec: &EndpointRecord,
    node: &NodeConfig,
    netns: &str,
    dns: Dns,
) -> CniResult {
    let mut r = prev.unwrap_or(CniResult {
        cni_version: String::new(),
        interfaces: vec![],
        ips: vec![],
        routes: vec![],
        dns: Dns::default(),
        extra: Map::new(),
    });
    let base = r.interfaces.len();
    r.interfaces.push(Interface {
        name: rec.host_veth.clone(),
        mac: Some(node.gateway_mac.to_string()),
        sandbox: None,
        extra: Map::new(),
    });
    r.interfaces.push(Interface {
        name: rec.ifname.clone(),
        mac: Some(rec.pod_mac.to_string()),
        sandbox: Some(netns.to_string()),
        extra: Map::new(),
    });
    if let Some(ip) = rec.ip {
        r.ips.push(IpConfig {
            version: None,
            address: format!("{ip}/32"),
            gateway: Some(node.gateway.to_string()),
            interface: Some(base + 1),
            extra: Map::new(),
        });
    }
    if let Some(ip6) = rec.ip6 {
        r.ips.push(IpConfig {
            version: None,
            address: format!("{ip6}/128"),
            gateway: Some(node.gateway6().to_string()),
            interface: Some(base + 1),
            extra: Map::new(),
        });
    }
    if rec.ip.is_some() {
        r.routes.push(RouteEntry {
            dst: "0.0.0.0/0".into(),
            gw: Some(node.gateway.to_string()),
            extra: Map::new(),
        });
    }
    if rec.ip6.is_some() {
        r.routes.push(RouteEntry {
            dst: "::/0".into(),
            gw: Some(node.gateway6().to_string()),
            extra: Map::new(),
        });
    }
    if !dns.is_empty() {
        r.dns = dns;
    }
    r
}

/// DEL: idempotent; an unknown attachment, a namespace or link already gone, or a
/// node that was never up are all success. The IPAM plugin gets its DEL in every
/// case.
pub(crate) fn del(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    let cid = required(&p.container_id, "CNI_CONTAINERID")?;
    let ifname = required(&p.ifname, "CNI_IFNAME")?;
    let dir = state_dir(conf);
    // Before the first ADD there is no state dir, and DEL must not make one.
    if is_up(&dir) {
        let mut locked = lock_for_endpoint_change(&dir)?;
        if let Some(rec) = attachment(&locked, cid, ifname)
            && let Some(node) = loaded_node(&mut locked)?
        {
            endpoint::with_kernel(&node, |env| {
                match endpoint::del(env, &mut locked, &rec.name) {
                    // A DEL of the same attachment ran at the same time and
                    // finished first.
                    Ok(_) | Err(EndpointError::NotFound { .. }) => Ok::<_, CniError>(()),
                    Err(e) => Err(e.into()),
                }
            })?;
        }
    }
    if let Some(d) = delegate(p, conf)? {
        d.call("DEL", &CallEnv::default())?;
    }
    Ok(())
}

/// What CHECK reads inside the pod.
struct PodView {
    link: Option<crate::kernel::netlink::LinkInfo>,
    addrs: Vec<Ipv4Net>,
    routes: Vec<RouteSpec>,
    addrs6: Vec<Ipv6Net>,
    routes6: Vec<Route6Spec>,
}

fn parse_mac(s: Option<&str>) -> Option<MacAddr> {
    s.and_then(|m| m.to_ascii_lowercase().parse().ok())
}

/// CHECK: `prevResult` against the endpoint record, then the pod side, the host
/// side, the attachment and the map entries against both. Every difference is
/// reported, not only the first.
pub(crate) fn check(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname, netns) = required_attachment(p)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::Config("CHECK needs prevResult (the result of ADD)".into()))?;
    let prev = CniResult::from_value(prev)?;
    let dir = state_dir(conf);
    if !is_up(&dir) {
        return Err(CniError::Check(vec![format!(
            "the node is not up (no state in {})",
            dir.display()
        )]));
    }
    let locked = lock(&dir)?;
    let node = locked
        .state
        .node
        .clone()
        .ok_or_else(|| CniError::Check(vec!["the node is not up".into()]))?;
    let rec = attachment(&locked, cid, ifname).ok_or_else(|| {
        CniError::Check(vec![format!(
            "vethbpf has no endpoint for container {cid} interface {ifname}"
        )])
    })?;
    let mut bad = Vec::new();

    // prevResult against the record.
    let expected_ip = rec.ip.map(Ipv4Net::from);
    let expected_ip6 = rec.ip6.map(Ipv6Net::from);
    let expected: Vec<IpNet> = expected_ip
        .map(IpNet::from)
        .into_iter()
        .chain(expected_ip6.map(IpNet::from))
        .collect();
    match prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns))
    {
        None => bad.push(format!(
            "prevResult has no interface {ifname} with sandbox {netns}"
        )),
        Some(index) => {
            if parse_mac(prev.interfaces[index].mac.as_deref()) != Some(rec.pod_mac) {
                bad.push(format!(
                    "prevResult gives {ifname} the MAC {:?}, the endpoint has {}",
                    prev.interfaces[index].mac, rec.pod_mac
                ));
            }
            let ips: Vec<&IpConfig> = prev
                .ips
                .iter()
                .filter(|ip| ip.interface == Some(index))
                .collect();
            if ips.is_empty() {
                bad.push(format!("prevResult has no address on {ifname}"));
            }
            for ip in ips {
                if !ip
                    .address
                    .parse::<IpNet>()
                    .is_ok_and(|a| expected.contains(&a))
                {
                    bad.push(format!(
                        "prevResult address {} is not one of the endpoint's ({})",
                        ip.address,
                        expected
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    if !prev
        .interfaces
        .iter()
        .any(|i| i.name == rec.host_veth && i.sandbox.as_deref().unwrap_or("").is_empty())
    {
        bad.push(format!(
            "prevResult has no host interface {}",
            rec.host_veth
        ));
    }
    if rec.netns != Path::new(netns) {
        bad.push(format!(
            "the endpoint is in {}, not in CNI_NETNS {netns}",
            rec.netns.display()
        ));
    }

    // Inside the pod.
    let want_ifname = rec.ifname.clone();
    let pod = crate::kernel::netns::with_netlink_in(&rec.netns, move |nl| {
        let link = nl.link_by_name(&want_ifname)?;
        let (addrs, routes, addrs6, routes6) = match &link {
            Some(l) => (
                nl.addresses(Some(l.index))?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect(),
                nl.routes()?,
                nl.addresses6(Some(l.index))?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect(),
                nl.routes6()?,
            ),
            None => (vec![], vec![], vec![], vec![]),
        };
        Ok::<_, CniError>(PodView {
            link,
            addrs,
            routes,
            addrs6,
            routes6,
        })
    });
    match pod {
        Err(e) => bad.push(format!("cannot look into {}: {e}", rec.netns.display())),
        Ok(PodView { link: None, .. }) => bad.push(format!(
            "there is no interface {} in {}",
            rec.ifname,
            rec.netns.display()
        )),
        Ok(PodView {
            link: Some(link),
            addrs,
            routes,
            addrs6,
            routes6,
        }) => {
            if !link.up {
                bad.push(format!("{} is down in the pod", rec.ifname));
            }
            if link.mac != Some(rec.pod_mac.0) {
                bad.push(format!(
                    "{} has the MAC {:?}, expected {}",
                    rec.ifname,
                    link.mac.map(MacAddr),
                    rec.pod_mac
                ));
            }
            let has = |dst: Ipv4Net, via: Option<Ipv4Addr>| {
                routes.iter().any(|r| {
                    r.dst == dst && r.oif == link.index && (via.is_none() || r.gateway == via)
                })
            };
            let has6 = |dst: Ipv6Net, via: Option<Ipv6Addr>| {
                routes6.iter().any(|r| {
                    r.dst == dst && r.oif == link.index && (via.is_none() || r.gateway == via)
                })
            };
            if let Some(expected_ip) = expected_ip {
                if !addrs.contains(&expected_ip) {
                    bad.push(format!("{} lacks the address {expected_ip}", rec.ifname));
                }
                let gw = Ipv4Net::from(node.gateway);
                if !routes
                    .iter()
                    .any(|r| r.dst == gw && r.oif == link.index && r.gateway.is_none())
                {
                    bad.push(format!(
                        "the pod has no route to the gateway {}",
                        node.gateway
                    ));
                }
                if !has(Ipv4Net::default(), Some(node.gateway)) {
                    bad.push(format!("the pod has no default route via {}", node.gateway));
                }
            }
            if let Some(expected_ip6) = expected_ip6 {
                let gw6 = node.gateway6();
                for want in [expected_ip6, Ipv6Net::new_assert(rec.link_local(), 64)] {
                    if !addrs6.contains(&want) {
                        bad.push(format!("{} lacks the address {want}", rec.ifname));
                    }
                }
                if !has6(Ipv6Net::from(gw6), None) {
                    bad.push(format!("the pod has no route to the gateway {gw6}"));
                }
                if !has6(Ipv6Net::default(), Some(gw6)) {
                    bad.push(format!("the pod has no default route via {gw6}"));
                }
            }
            for route in &prev.routes {
                let via = route.gw.as_deref().and_then(|g| g.parse().ok());
                let present = match (route.dst.parse::<IpNet>(), via) {
                    (Ok(IpNet::V4(dst)), None) => has(dst, None),
                    (Ok(IpNet::V4(dst)), Some(std::net::IpAddr::V4(gw))) => has(dst, Some(gw)),
                    (Ok(IpNet::V6(dst)), None) => has6(dst, None),
                    (Ok(IpNet::V6(dst)), Some(std::net::IpAddr::V6(gw))) => has6(dst, Some(gw)),
                    _ => false,
                };
                if !present {
                    bad.push(format!(
                        "the pod lacks the route {} of prevResult",
                        route.dst
                    ));
                }
            }
        }
    }

    // The node side.
    let mut nl = RtNetlink::connect()?;
    match nl.link_by_name(&rec.host_veth)? {
        None => bad.push(format!("the host veth {} is gone", rec.host_veth)),
        Some(host) => {
            if host.index != rec.host_ifindex {
                bad.push(format!(
                    "the host veth {} has index {}, the datapath knows {}",
                    rec.host_veth, host.index, rec.host_ifindex
                ));
            }
            if host.mac != Some(node.gateway_mac.0) {
                bad.push(format!(
                    "the host veth {} lost the gateway MAC",
                    rec.host_veth
                ));
            }
            if !host.up {
                bad.push(format!("the host veth {} is down", rec.host_veth));
            }
            if let Some(expected_ip) = expected_ip
                && !nl
                    .routes()?
                    .into_iter()
                    .any(|r| r.dst == expected_ip && r.oif == host.index && r.gateway.is_none())
            {
                bad.push(format!(
                    "the node has no route {expected_ip} dev {}",
                    rec.host_veth
                ));
            }
            if let Some(expected_ip6) = expected_ip6 {
                if !nl
                    .routes6()?
                    .into_iter()
                    .any(|r| r.dst == expected_ip6 && r.oif == host.index && r.gateway.is_none())
                {
                    bad.push(format!(
                        "the node has no route {expected_ip6} dev {}",
                        rec.host_veth
                    ));
                }
                let gw6 = Ipv6Net::new_assert(node.gateway6(), 64);
                if !nl
                    .addresses6(Some(host.index))?
                    .contains(&(host.index, gw6))
                {
                    bad.push(format!(
                        "the host veth {} lacks the gateway address {gw6}",
                        rec.host_veth
                    ));
                }
            }
        }
    }

    // The datapath: program, attachment, map entries.
    let pins = Pins::new(&node.bpffs_dir);
    if !pins.is_loaded() {
        bad.push(format!(
            "the datapath is not loaded in {}",
            node.bpffs_dir.display()
        ));
    } else {
        match datapath::program_info(&pins) {
            Err(e) => bad.push(format!("cannot open the pinned program: {e}")),
            Ok(prog) => {
                let found = pods::read(
                    &pins,
                    node.pod_attach,
                    &mut nl,
                    prog.id(),
                    &[(rec.host_veth.as_str(), rec.host_ifindex)],
                )?;
                if let Some(a) = found.first()
                    && a.state != AttachState::Ok
                {
                    bad.push(format!(
                        "the {} attachment of {} is {} (runs program {:?}, the pinned one is {})",
                        node.pod_attach.name(),
                        rec.host_veth,
                        a.state.name(),
                        a.program_id,
                        prog.id()
                    ));
                }
            }
        }
        match Maps::open(&pins) {
            Err(e) => bad.push(format!("cannot open the maps: {e}")),
            Ok(maps) => {
                let ip = rec.ip.map_or(0, |ip| ipv4_to_map(ip.octets()));
                match maps.endpoint(rec.host_ifindex) {
                    Some(e) if e.ip == ip && e.id == rec.id && e.mac == rec.pod_mac.0 => {}
                    other => bad.push(format!(
                        "ENDPOINTS[{}] is {other:?}, expected ip {:?}, id {}, mac {}",
                        rec.host_ifindex, rec.ip, rec.id, rec.pod_mac
                    )),
                }
                let ours = |r: &Route| {
                    r.kind == ROUTE_KIND_LOCAL
                        && r.ifindex == rec.host_ifindex
                        && r.endpoint_id == rec.id
                        && r.mac == rec.pod_mac.0
                };
                if let Some(expected_ip) = expected_ip {
                    match maps.route(expected_ip) {
                        Some(r) if ours(&r) => {}
                        other => bad.push(format!(
                            "ROUTES[{expected_ip}] is {other:?}, expected the local endpoint {} on ifindex {}",
                            rec.id, rec.host_ifindex
                        )),
                    }
                }
                if let Some(ip6) = rec.ip6 {
                    let net = Ipv6Net::from(ip6);
                    match maps.route6(net) {
                        Some(r) if ours(&r) => {}
                        other => bad.push(format!(
                            "ROUTES6[{net}] is {other:?}, expected the local endpoint {} on ifindex {}",
                            rec.id, rec.host_ifindex
                        )),
                    }
                    match maps.endpoint6(rec.host_ifindex) {
                        Some(e)
                            if e.ip == ip6.octets()
                                && e.link_local == rec.link_local().octets() => {}
                        other => bad.push(format!(
                            "ENDPOINTS6[{}] is {other:?}, expected {ip6} and {}",
                            rec.host_ifindex,
                            rec.link_local()
                        )),
                    }
                }
            }
        }
    }
    drop(locked);

    if let Some(d) = delegate(p, conf)? {
        d.call("CHECK", &CallEnv::default())?;
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CniError::Check(bad))
    }
}

/// STATUS (1.1.0): ready when the node is up (or can be brought up: root) and the
/// built-in allocator has a free address; the IPAM plugin's STATUS when it speaks
/// 1.1.0.
pub(crate) fn status(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    if let Some(d) = delegate(p, conf)?
        && d.speaks(&conf.cni_version)
    {
        d.call("STATUS", &CallEnv::default())?;
    }
    let dir = state_dir(conf);
    if is_up(&dir) {
        let locked = lock(&dir)?;
        if let Some(node) = &locked.state.node {
            let endpoints = locked.state.endpoints.len();
            let wanted = (conf.pod_cidr, conf.pod_cidr6);
            if wanted != (None, None) && wanted != (node.pod_cidr, node.pod_cidr6) && endpoints > 0
            {
                return Err(CniError::NotAvailable(format!(
                    "the node is up with pod CIDR(s) {} and {endpoints} endpoint(s); this network wants {}",
                    node::fmt_cidrs(node.pod_cidr, node.pod_cidr6),
                    node::fmt_cidrs(wanted.0, wanted.1)
                )));
            }
            if conf.ipam_type.is_none() {
                let records = || locked.state.endpoints.values();
                if let Some(cidr) = node.pod_cidr {
                    let used = records().filter_map(|e| e.ip);
                    crate::state::ipam::allocate(cidr, node.gateway, used)
                        .map_err(|e| CniError::NotAvailable(e.to_string()))?;
                }
                if let Some(cidr) = node.pod_cidr6 {
                    let used = records().filter_map(|e| e.ip6);
                    crate::state::ipam::allocate6(cidr, used)
                        .map_err(|e| CniError::NotAvailable(e.to_string()))?;
                }
            }
            // Lost pins (a reboot) are reloaded by the next ADD.
            return Ok(());
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(CniError::NotAvailable(
            "the node is not up and bringing it up needs root".into(),
        ));
    }
    Ok(())
}

/// GC (1.1.0): removes the endpoints this network's attachments made that are not
/// in `cni.dev/valid-attachments` (and their delegated allocations), then passes GC
/// on to the IPAM plugin if it speaks 1.1.0. Goes on past errors and reports them
/// all.
pub(crate) fn gc(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::Config("GC needs \"cni.dev/valid-attachments\"".into()))?;
    let mut errors = Vec::new();
    let delegate = delegate(p, conf)?;
    let dir = state_dir(conf);
    if is_up(&dir) {
        let mut locked = lock(&dir)?;
        let stale: Vec<EndpointRecord> = locked
            .state
            .endpoints
            .values()
            .filter(|r| {
                r.cni.as_ref().is_some_and(|c| {
                    c.network == conf.name
                        && !valid
                            .iter()
                            .any(|v| v.container_id == c.container_id && v.ifname == c.ifname)
                })
            })
            .cloned()
            .collect();
        if !stale.is_empty()
            && let Some(node) = loaded_node(&mut locked)?
        {
            endpoint::with_kernel(&node, |env| {
                for rec in &stale {
                    tracing::info!(endpoint = %rec.name, "GC: removing a stale attachment");
                    match endpoint::del(env, &mut locked, &rec.name) {
                        // A DEL finished it while this del waited for the lock.
                        Ok(_) | Err(EndpointError::NotFound { .. }) => {}
                        Err(e) => errors.push(format!("endpoint {}: {e}", rec.name)),
                    }
                    if let (Some(d), Some(c)) = (&delegate, &rec.cni)
                        && c.ipam.is_some()
                    {
                        let call = CallEnv {
                            container_id: Some(&c.container_id),
                            ifname: Some(&c.ifname),
                            netns: None,
                        };
                        if let Err(e) = d.call("DEL", &call) {
                            errors.push(format!("IPAM DEL of {}: {e}", rec.name));
                        }
                    }
                }
                Ok::<_, CniError>(())
            })?;
        }
    }
    if let Some(d) = &delegate
        && d.speaks(&conf.cni_version)
        && let Err(e) = d.call("GC", &CallEnv::default())
    {
        errors.push(format!("IPAM GC: {e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Gc(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_valid_and_distinct() {
        assert_eq!(endpoint_name("ctr1", "eth0"), "ctr1-eth0");
        let long = "a".repeat(64);
        let n = endpoint_name(&long, "eth0");
        assert!(ident::validate_endpoint_name(&n).is_ok(), "{n}");
        assert!(n.starts_with("aaaaaaaaaaaa-eth0-"), "{n}");
        assert_ne!(n, endpoint_name(&long, "eth1"));
        assert_ne!(n, endpoint_name(&"a".repeat(63), "eth0"));
        // An interface name with characters an endpoint name cannot have.
        let odd = endpoint_name("ctr1", "e@th0");
        assert!(ident::validate_endpoint_name(&odd).is_ok(), "{odd}");
        assert_ne!(odd, endpoint_name("ctr1", "eth0"));
    }

    #[test]
    fn version_answers_with_the_requested_version() {
        let v = version(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version(b"").unwrap()["cniVersion"], "1.1.0");
        assert_eq!(version(b"{").unwrap_err().code(), 6);
    }
}
