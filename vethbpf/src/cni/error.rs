//! The plugin's errors and the codes they are reported with.

use serde::Serialize;

use crate::endpoint::EndpointError;
use crate::kernel::netlink::NetlinkError;
use crate::kernel::netns::NetnsError;
use crate::node::NodeError;
use crate::state::StateError;

/// Plugin-specific error codes (100 and up; 0-99 are the specification's).
pub(crate) mod codes {
    /// A kernel, eBPF or state operation failed.
    pub(crate) const INTERNAL: u32 = 100;
    /// The interface (or the attachment) exists already.
    pub(crate) const EXISTS: u32 = 101;
    /// No address could be given (pod CIDR exhausted, address in use or outside it).
    pub(crate) const ADDRESS: u32 = 102;
    /// The network namespace cannot be used.
    pub(crate) const NETNS: u32 = 103;
    /// CHECK found the attachment different from `prevResult` or broken.
    pub(crate) const CHECK: u32 = 104;
    /// A delegated (IPAM) plugin could not be run or gave no usable answer.
    pub(crate) const DELEGATE: u32 = 105;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CniError {
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
    pub(crate) fn code(&self) -> u32 {
        match self {
            CniError::Version { .. } => 1,
            CniError::Env { .. } => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::Config(_) => 7,
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
    pub(crate) fn to_result(&self, cni_version: &str) -> ErrorResult {
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

/// The error object printed on stdout with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ErrorResult {
    #[serde(rename = "cniVersion")]
    pub(crate) cni_version: String,
    pub(crate) code: u32,
    pub(crate) msg: String,
    pub(crate) details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
