//! vethbpf as a CNI plugin: the `vethbpf` binary run with `CNI_COMMAND` set (or
//! invoked as `vethbpf-cni`) follows the CNI specification (SPEC.md of
//! containernetworking/cni): ADD, DEL, CHECK, VERSION, and for 1.1.0 STATUS and GC,
//! for `cniVersion` 0.4.0, 1.0.0 and 1.1.0.
//!
//! Each attachment `(CNI_CONTAINERID, CNI_IFNAME)` is one vethbpf endpoint, made with
//! the same code, state directory and pinned datapath as `vethbpf endpoint add`, in
//! the runtime's namespace CNI_NETNS; the endpoint record carries the attachment so
//! that DEL and GC find it. The node is brought `up` on first use.
//!
//! Modules: [`types`] (protocol data), [`delegate`] (IPAM plugins through
//! `CNI_PATH`), [`ops`] (the commands).

pub mod delegate;
pub mod ops;
pub mod types;

use std::ffi::OsStr;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::endpoint::EndpointError;
use crate::kernel::netlink::NetlinkError;
use crate::kernel::netns::NetnsError;
use crate::node::NodeError;
use crate::state::StateError;

pub use types::{CniResult, ErrorResult, NetConf, SUPPORTED_VERSIONS, VersionResult};

/// The name under which the binary acts as a plugin even without `CNI_COMMAND`
/// (then answering with the error for a missing `CNI_COMMAND`).
pub const PLUGIN_ALIAS: &str = "vethbpf-cni";

/// Plugin-specific error codes (100 and up; 0-99 are the specification's).
pub mod codes {
    /// A kernel, eBPF or state operation failed.
    pub const INTERNAL: u32 = 100;
    /// The interface (or the attachment) exists already.
    pub const EXISTS: u32 = 101;
    /// No address could be given (pod CIDR exhausted, address in use or outside it).
    pub const ADDRESS: u32 = 102;
    /// The network namespace cannot be used.
    pub const NETNS: u32 = 103;
    /// CHECK found the attachment different from `prevResult` or broken.
    pub const CHECK: u32 = 104;
    /// A delegated (IPAM) plugin could not be run or gave no usable answer.
    pub const DELEGATE: u32 = 105;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version: {msg}")]
    Version { msg: String },
    #[error("{msg}")]
    Env { msg: String },
    #[error("cannot read the network configuration from stdin: {0}")]
    Io(#[source] std::io::Error),
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("try again later: {0}")]
    TryAgain(String),
    #[error("vethbpf cannot serve ADD requests: {0}")]
    NotAvailable(String),
    #[error("CHECK failed: {}", .0.join("; "))]
    Check(Vec<String>),
    #[error("delegated plugin {plugin}: {msg}")]
    DelegateExec { plugin: String, msg: String },
    #[error("delegated plugin {plugin} failed (code {code}): {msg}")]
    Delegated {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("GC could not remove everything: {}", .0.join("; "))]
    Gc(Vec<String>),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl CniError {
    /// The error code of the CNI specification (or one of [`codes`]).
    pub fn code(&self) -> u32 {
        match self {
            CniError::Version { .. } => 1,
            CniError::Env { .. } => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::Config(_) => 7,
            CniError::TryAgain(_) => 11,
            CniError::NotAvailable(_) => 50,
            CniError::Check(_) => codes::CHECK,
            CniError::DelegateExec { .. } => codes::DELEGATE,
            CniError::Delegated { code, .. } => *code,
            CniError::Gc(_) => codes::INTERNAL,
            CniError::Endpoint(e) => endpoint_code(e),
            CniError::Node(e) => match e {
                NodeError::GatewayInCidr { .. }
                | NodeError::CidrChange { .. }
                | NodeError::GatewayChange { .. }
                | NodeError::BpffsMismatch { .. } => 7,
                NodeError::State(StateError::Busy { .. }) => 11,
                NodeError::Endpoint(e) => endpoint_code(e),
                _ => codes::INTERNAL,
            },
            CniError::State(StateError::Busy { .. }) => 11,
            CniError::State(_) | CniError::Netlink(_) => codes::INTERNAL,
            CniError::Netns(_) => codes::NETNS,
        }
    }

    /// The error object for stdout.
    pub fn to_result(&self, cni_version: &str) -> ErrorResult {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            details.push(s.to_string());
            source = s.source();
        }
        let details = match self {
            CniError::Delegated { details: d, .. } if !d.is_empty() => d.clone(),
            _ => details.join(": "),
        };
        ErrorResult {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details,
        }
    }
}

fn endpoint_code(e: &EndpointError) -> u32 {
    match e {
        EndpointError::Duplicate { .. }
        | EndpointError::HostVethExists { .. }
        | EndpointError::NetnsExists { .. }
        | EndpointError::IfnameExists { .. } => codes::EXISTS,
        EndpointError::Ipam(_) | EndpointError::TooMany => codes::ADDRESS,
        EndpointError::Netns(_) => codes::NETNS,
        EndpointError::State(StateError::Busy { .. }) => 11,
        EndpointError::Name(_) => 4,
        _ => codes::INTERNAL,
    }
}

/// A CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The protocol parameters (environment variables) of one call.
#[derive(Clone, Debug)]
pub struct Params {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

/// Container IDs: an alphanumeric first character, then alphanumerics, `_`, `.`
/// and `-` (SPEC.md, section 2).
fn valid_container_id(id: &str) -> bool {
    types::valid_network_name(id)
}

impl Params {
    /// Reads and checks the parameters; `get` is the environment. A missing or
    /// invalid variable that the command needs is code 4, naming the variables.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Params, CniError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match nonempty("CNI_COMMAND") {
            None => {
                return Err(CniError::Env {
                    msg: "required environment variable CNI_COMMAND is missing (vethbpf acts as a CNI plugin here; run `vethbpf --help` for the command line)".into(),
                });
            }
            Some(c) => Command::parse(&c).ok_or_else(|| CniError::Env {
                msg: format!(
                    "CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, STATUS, VERSION, GC"
                ),
            })?,
        };
        let p = Params {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            args: nonempty("CNI_ARGS")
                .map(|a| {
                    a.split(';')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            path: nonempty("CNI_PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| match *k {
                "CNI_CONTAINERID" => p.container_id.is_none(),
                "CNI_NETNS" => p.netns.is_none(),
                "CNI_IFNAME" => p.ifname.is_none(),
                "CNI_PATH" => p.path.is_empty(),
                _ => false,
            })
            .collect();
        if !missing.is_empty() {
            return Err(CniError::Env {
                msg: format!(
                    "required environment variables [{}] missing for {command:?}",
                    missing.join(",")
                ),
            });
        }
        if let Some(id) = &p.container_id
            && !valid_container_id(id)
        {
            return Err(CniError::Env {
                msg: format!(
                    "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
                ),
            });
        }
        if let Some(ifname) = &p.ifname {
            crate::state::ident::validate_ifname(ifname).map_err(|e| CniError::Env {
                msg: format!("CNI_IFNAME is invalid: {e}"),
            })?;
        }
        Ok(p)
    }

    /// `IP=` of `CNI_ARGS` (what `podman run --ip` and Kubernetes' static IPs use).
    pub fn requested_ip(&self) -> Result<Option<std::net::Ipv4Addr>, CniError> {
        match self.args.iter().find(|(k, _)| k == "IP") {
            None => Ok(None),
            Some((_, v)) => v.parse().map(Some).map_err(|_| CniError::Env {
                msg: format!("CNI_ARGS IP={v} is not an IPv4 address"),
            }),
        }
    }
}

/// Whether this process should act as a CNI plugin: `CNI_COMMAND` is set, or the
/// binary was invoked as `vethbpf-cni`.
pub fn invoked_as_plugin() -> bool {
    std::env::var_os("CNI_COMMAND").is_some()
        || std::env::args_os()
            .next()
            .as_deref()
            .and_then(|a| Path::new(a).file_name())
            == Some(OsStr::new(PLUGIN_ALIAS))
}

/// One call: parameters, stdin, the command. `Ok(Some(json))` goes to stdout.
pub fn run(params: &Params, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    if params.command == Command::Version {
        return Ok(Some(ops::version(stdin)?));
    }
    let conf = NetConf::parse(stdin)?;
    let v = conf.version();
    let needs_110 = matches!(params.command, Command::Status | Command::Gc);
    if needs_110 && v < types::Version(1, 1, 0) {
        return Err(CniError::Version {
            msg: format!(
                "cniVersion {} does not allow {:?} (it needs 1.1.0)",
                conf.cni_version, params.command
            ),
        });
    }
    match params.command {
        Command::Add => ops::add(params, &conf).map(Some),
        Command::Del => ops::del(params, &conf).map(|()| None),
        Command::Check => ops::check(params, &conf).map(|()| None),
        Command::Status => ops::status(params, &conf).map(|()| None),
        Command::Gc => ops::gc(params, &conf).map(|()| None),
        Command::Version => Ok(Some(ops::version(stdin)?)),
    }
}

/// The plugin's `main`: reads the environment and stdin, runs the command, prints
/// the result or the error object on stdout.
pub fn main() -> ExitCode {
    crate::cni::ops::init_logging();
    // Read stdin first (unless a person runs us at a terminal), so that even an
    // error about the environment carries the request's cniVersion.
    let mut stdin = Vec::new();
    let read = if std::io::stdin().is_terminal() {
        Ok(())
    } else {
        std::io::stdin()
            .read_to_end(&mut stdin)
            .map(drop)
            .map_err(CniError::Io)
    };
    let result = read
        .and_then(|()| Params::from_env(|k| std::env::var(k).ok()))
        .and_then(|params| run(&params, &stdin));
    let mut out = std::io::stdout().lock();
    match result {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| types::LATEST_VERSION.to_string());
            tracing::warn!(code = e.code(), error = %e, "CNI call failed");
            let text = serde_json::to_string(&e.to_result(&version))
                .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"\"}}", e.code()));
            let _ = writeln!(out, "{text}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn params(vars: &[(&str, &str)]) -> Result<Params, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn environment_is_checked_per_command() {
        assert_eq!(params(&[]).unwrap_err().code(), 4);
        assert_eq!(params(&[("CNI_COMMAND", "FROB")]).unwrap_err().code(), 4);
        let e = params(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_CONTAINERID,CNI_NETNS"), "{e}");
        assert!(
            params(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        assert!(params(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(params(&[("CNI_COMMAND", "GC")]).unwrap_err().code(), 4);
        let bad_id = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(params(&bad_id).unwrap_err().code(), 4);
        let bad_if = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "a/b"),
        ];
        assert_eq!(params(&bad_if).unwrap_err().code(), 4);
        let p = params(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.1.2.3"),
            ("CNI_PATH", "/a:/b"),
        ])
        .unwrap();
        assert_eq!(p.requested_ip().unwrap(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(p.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn status_and_gc_need_110() {
        let p = params(&[("CNI_COMMAND", "STATUS")]).unwrap();
        let e = run(&p, br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code(), 1);
    }

    #[test]
    fn error_object_has_the_spec_fields() {
        let e = CniError::Config("x".into()).to_result("1.0.0");
        let v = serde_json::to_value(e).unwrap();
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        assert_eq!(v["code"], 7);
    }
}
