//! Fakes of the endpoint traits, and a node made of them, for unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use vethbpf_common::{
    EndpointInfo, EndpointInfo6, EndpointSlot, ROUTE_KIND_LOCAL, Route, endpoint_addr_index,
    ipv4_to_map,
};

use super::*;
use crate::datapath::AttachMode;
use crate::datapath::maps::MapsError;
use crate::kernel::netlink::{FakeNetlink, Netlink};
use crate::kernel::netns::NetnsError;
use crate::state::ident::MacAddr;
use crate::state::{EndpointRecord, Locked, NodeConfig, State, StateDir};

/// `ENDPOINT_ADDRS`'s index of `ip`.
pub(crate) fn addr_index(ip: Ipv4Addr) -> u32 {
    endpoint_addr_index(ipv4_to_map(ip.octets()))
}

/// Namespaces as plain files in a temp dir; the fake netlink world tells them
/// apart by file identity.
pub(crate) struct FakeNamespaces {
    pub(crate) dir: PathBuf,
    pub(crate) node: FakeNetlink,
    pub(crate) fail_create: bool,
}

impl FakeNamespaces {
    pub(crate) fn handle(&self, netns: &Path) -> FakeNetlink {
        let f = File::open(netns).unwrap();
        self.node.namespace_for_fd(f.as_fd()).unwrap()
    }
}

impl Namespaces for FakeNamespaces {
    fn named_exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
    fn check_create(&self, _name: &str) -> Result<(), EndpointError> {
        Ok(())
    }
    fn create(&mut self, name: &str) -> Result<PathBuf, EndpointError> {
        if self.fail_create {
            return Err(NetnsError::AlreadyExists(self.dir.join(name)).into());
        }
        let p = self.dir.join(name);
        fs::write(&p, b"").unwrap();
        Ok(p)
    }
    fn delete(&mut self, name: &str) -> Result<(), EndpointError> {
        let p = self.dir.join(name);
        fs::remove_file(&p).map_err(|_| NetnsError::NotFound(p))?;
        Ok(())
    }
    fn resolve(&self, spec: &str) -> Result<PathBuf, EndpointError> {
        let p = self.dir.join(spec);
        if p.exists() {
            Ok(p)
        } else {
            Err(NetnsError::NotFound(p).into())
        }
    }
    fn open(&self, netns: &Path) -> Result<OwnedFd, EndpointError> {
        let f = File::open(netns).map_err(|_| NetnsError::NotFound(netns.to_path_buf()))?;
        Ok(OwnedFd::from(f))
    }
    fn netlink_in(&mut self, netns: &Path) -> Result<Box<dyn Netlink>, EndpointError> {
        Ok(Box::new(self.handle(netns)))
    }
}

/// The fake's pinned program: a file whose descriptor stands for the program (the
/// fake netlink takes its inode number for the program id, as [`pod_program`]
/// does). Equal to any other: it is no part of what tests compare.
///
/// [`pod_program`]: Datapath::pod_program
#[derive(Default, Debug, Clone)]
pub(crate) struct FakeProgram(Option<Arc<OwnedFd>>);

impl PartialEq for FakeProgram {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for FakeProgram {}

#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) struct FakeDatapath {
    /// How pods attach: TCX links (`attached`) or tc filters (in the fake netlink).
    pub(crate) pod_attach: AttachMode,
    pub(crate) program: FakeProgram,
    /// Host veths with a pinned TCX link.
    pub(crate) attached: BTreeSet<String>,
    /// Host veths whose TCX link runs another program than the pinned one.
    pub(crate) stale: BTreeSet<String>,
    pub(crate) endpoints: BTreeMap<u32, EndpointInfo>,
    pub(crate) routes: BTreeMap<Ipv4Net, Route>,
    pub(crate) endpoints6: BTreeMap<u32, EndpointInfo6>,
    pub(crate) routes6: BTreeMap<Ipv6Net, Route>,
    /// ENDPOINT_SLOTS (by endpoint id) and ENDPOINT_ADDRS (by address index), kept
    /// as the kernel datapath keeps them.
    pub(crate) slots: BTreeMap<u32, EndpointSlot>,
    pub(crate) addrs: BTreeMap<u32, u32>,
    /// Datapath op that fails (name) on its first call.
    pub(crate) fail: Option<&'static str>,
}

impl Default for FakeDatapath {
    fn default() -> Self {
        FakeDatapath {
            pod_attach: AttachMode::Tcx,
            program: FakeProgram::default(),
            attached: BTreeSet::new(),
            stale: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            routes: BTreeMap::new(),
            endpoints6: BTreeMap::new(),
            routes6: BTreeMap::new(),
            slots: BTreeMap::new(),
            addrs: BTreeMap::new(),
            fail: None,
        }
    }
}

impl FakeDatapath {
    /// The pinned program's id (see [`FakeProgram`]).
    pub(crate) fn program_id(&mut self) -> u32 {
        self.pod_program().map(|p| p.id).unwrap_or_default()
    }

    fn check(&self, op: &'static str) -> Result<(), EndpointError> {
        if self.fail == Some(op) {
            return Err(MapsError::Op {
                map: "FAKE",
                op,
                source: Box::new(aya::maps::MapError::KeyNotFound),
            }
            .into());
        }
        Ok(())
    }
}

impl Datapath for FakeDatapath {
    fn pod_attach(&self) -> AttachMode {
        self.pod_attach
    }
    fn pod_program(&mut self) -> Result<PodProgram<'_>, EndpointError> {
        self.check("pod_program")?;
        if self.program.0.is_none() {
            self.program.0 = Some(Arc::new(OwnedFd::from(
                File::open(std::env::current_exe().unwrap()).unwrap(),
            )));
        }
        let Some(fd) = self.program.0.as_deref() else {
            unreachable!("opened above")
        };
        let id = nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino as u32;
        Ok(PodProgram { fd: fd.as_fd(), id })
    }
    fn attach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        self.check("attach")?;
        self.attached.insert(host_veth.into());
        Ok(())
    }
    fn detach(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        self.attached.remove(host_veth);
        self.stale.remove(host_veth);
        Ok(())
    }
    fn relink(&mut self, host_veth: &str) -> Result<(), EndpointError> {
        self.check("relink")?;
        self.stale.remove(host_veth);
        Ok(())
    }
    fn put_endpoint(&mut self, i: u32, info: &EndpointInfo) -> Result<(), EndpointError> {
        self.check("put_endpoint")?;
        self.endpoints.insert(i, *info);
        self.slots.insert(
            info.id,
            EndpointSlot {
                ifindex: i,
                info: *info,
            },
        );
        Ok(())
    }
    fn del_endpoint(&mut self, i: u32) -> Result<(), EndpointError> {
        if let Some(info) = self.endpoints.remove(&i)
            && self.slots.get(&info.id).is_some_and(|s| s.ifindex == i)
        {
            self.slots.remove(&info.id);
        }
        Ok(())
    }
    fn put_route(&mut self, net: Ipv4Net, r: &Route) -> Result<(), EndpointError> {
        self.check("put_route")?;
        self.routes.insert(net, *r);
        if net.prefix_len() == 32 && r.kind == ROUTE_KIND_LOCAL {
            self.addrs.insert(addr_index(net.addr()), r.endpoint_id);
        }
        Ok(())
    }
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), EndpointError> {
        if let Some(r) = self.routes.remove(&net)
            && net.prefix_len() == 32
            && r.kind == ROUTE_KIND_LOCAL
            && self.addrs.get(&addr_index(net.addr())) == Some(&r.endpoint_id)
        {
            self.addrs.remove(&addr_index(net.addr()));
        }
        Ok(())
    }
    fn reset_counters(&mut self, _id: u32) -> Result<(), EndpointError> {
        self.check("reset_counters")
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, EndpointError> {
        Ok(self.routes.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn endpoint_entries(&self) -> Result<Vec<(u32, EndpointInfo)>, EndpointError> {
        Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn slot(&self, id: u32) -> Option<EndpointSlot> {
        Some(self.slots.get(&id).copied().unwrap_or_default())
    }
    fn addr_entry(&self, ip: Ipv4Addr) -> Option<u32> {
        Some(self.addrs.get(&addr_index(ip)).copied().unwrap_or(0))
    }
    fn put_endpoint6(&mut self, i: u32, info: &EndpointInfo6) -> Result<(), EndpointError> {
        self.check("put_endpoint6")?;
        self.endpoints6.insert(i, *info);
        Ok(())
    }
    fn del_endpoint6(&mut self, i: u32) -> Result<(), EndpointError> {
        self.endpoints6.remove(&i);
        Ok(())
    }
    fn put_route6(&mut self, net: Ipv6Net, r: &Route) -> Result<(), EndpointError> {
        self.check("put_route6")?;
        self.routes6.insert(net, *r);
        Ok(())
    }
    fn del_route6(&mut self, net: Ipv6Net) -> Result<(), EndpointError> {
        self.routes6.remove(&net);
        Ok(())
    }
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, EndpointError> {
        Ok(self.routes6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn endpoint6_entries(&self) -> Result<Vec<(u32, EndpointInfo6)>, EndpointError> {
        Ok(self.endpoints6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn links(&self) -> Vec<(String, Option<u32>)> {
        let pinned = self
            .program
            .0
            .as_ref()
            .and_then(|fd| nix::sys::stat::fstat(fd.as_fd()).ok())
            .map(|st| st.st_ino as u32);
        self.attached
            .iter()
            .map(|h| {
                let runs = if self.stale.contains(h) {
                    Some(0)
                } else {
                    pinned
                };
                (h.clone(), runs)
            })
            .collect()
    }
}

pub(crate) struct World {
    pub(crate) dir: PathBuf,
    pub(crate) node: FakeNetlink,
    pub(crate) ns: FakeNamespaces,
    pub(crate) dp: FakeDatapath,
    pub(crate) state: StateDir,
}

impl World {
    /// A node with the default IPv4 pod CIDR.
    pub(crate) fn new(tag: &str) -> World {
        Self::with_cidrs(tag, Some("10.244.0.0/24"), None)
    }

    /// A node whose pods get tc filters (`up --pod-attach tc`, the default).
    pub(crate) fn tc(tag: &str) -> World {
        let mut w = Self::new(tag);
        w.dp.pod_attach = AttachMode::Tc;
        w
    }

    /// What holds vethbpf's filter place on the host veth `index`.
    pub(crate) fn filter(&mut self, index: u32) -> Option<crate::kernel::netlink::TcFilter> {
        self.node.ingress_filters(&[index]).unwrap().pop().flatten()
    }

    /// A dual-stack node (10.244.0.0/24 and fd00:10:244::/64).
    pub(crate) fn dual(tag: &str) -> World {
        Self::with_cidrs(tag, Some("10.244.0.0/24"), Some("fd00:10:244::/64"))
    }

    pub(crate) fn with_cidrs(tag: &str, v4: Option<&str>, v6: Option<&str>) -> World {
        let dir = std::env::temp_dir().join(format!(
            "vethbpf-endpoint-test-{}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("netns")).unwrap();
        let node = FakeNetlink::new();
        let state = StateDir::new(dir.join("state"));
        let mut l = state.lock().unwrap();
        l.state.node = Some(NodeConfig {
            pod_cidr: v4.map(|c| c.parse().unwrap()),
            pod_cidr6: v6.map(|c| c.parse().unwrap()),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            gateway_mac: MacAddr::GATEWAY,
            bpffs_dir: dir.join("bpffs"),
            bpffs_mount: None,
            attach_mode: AttachMode::Tcx,
            pod_attach: AttachMode::Tcx,
            egress: None,
        });
        l.save().unwrap();
        World {
            ns: FakeNamespaces {
                dir: dir.join("netns"),
                node: node.clone(),
                fail_create: false,
            },
            dir,
            node,
            dp: FakeDatapath::default(),
            state,
        }
    }

    pub(crate) fn add(&mut self, name: &str) -> Result<EndpointRecord, EndpointError> {
        self.add_with(name, &[])
    }

    /// `add` asking for the addresses `ips`.
    pub(crate) fn add_with(
        &mut self,
        name: &str,
        ips: &[&str],
    ) -> Result<EndpointRecord, EndpointError> {
        let mut locked = self.state.lock().unwrap();
        let mut env = Env {
            node: &mut self.node,
            ns: &mut self.ns,
            dp: &mut self.dp,
        };
        add(
            &mut env,
            &mut locked,
            &AddRequest {
                name: name.into(),
                ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                netns: None,
                ifname: "eth0".into(),
            },
        )
    }

    pub(crate) fn del(&mut self, name: &str) -> Result<EndpointRecord, EndpointError> {
        let mut locked = self.state.lock().unwrap();
        let mut env = Env {
            node: &mut self.node,
            ns: &mut self.ns,
            dp: &mut self.dp,
        };
        del(&mut env, &mut locked, name)
    }

    /// Everything the node holds: links, namespaces, datapath, state.
    pub(crate) fn snapshot(&mut self) -> (Vec<String>, Vec<String>, FakeDatapath, State) {
        let links = self
            .node
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        let mut netns: Vec<String> = fs::read_dir(&self.ns.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        netns.sort();
        let state = self.state.lock().unwrap().state.clone();
        let mut dp = self.dp.clone();
        dp.fail = None;
        (links, netns, dp, state)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl World {
    /// Runs `f` with the world's kernel and the locked state.
    pub(crate) fn with<T>(&mut self, f: impl FnOnce(&mut Env<'_>, &mut Locked) -> T) -> T {
        let mut locked = self.state.lock().unwrap();
        let mut env = Env {
            node: &mut self.node,
            ns: &mut self.ns,
            dp: &mut self.dp,
        };
        f(&mut env, &mut locked)
    }
}
