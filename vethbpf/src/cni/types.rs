//! The CNI protocol's data: versions, the request configuration, results and
//! errors, with the field names of the CNI specification (SPEC.md, spec 1.1.0, and
//! 0.4.0 where it differs).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::CniError;

/// The spec versions this plugin speaks, oldest first.
pub(crate) const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The version used for output when the request names none we can use.
pub(crate) const LATEST_VERSION: &str = "1.1.0";

/// A spec version, `MAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub(crate) fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// Checks a requested `cniVersion`: missing means 0.1.0 (as libcni reads it), which
/// this plugin does not support.
pub(crate) fn check_version(requested: Option<&str>) -> Result<String, CniError> {
    let requested = requested.unwrap_or("0.1.0");
    if Version::parse(requested).is_none() {
        return Err(CniError::Decode(format!(
            "cniVersion {requested:?} is not a version (expected MAJOR.MINOR.PATCH)"
        )));
    }
    if SUPPORTED_VERSIONS.contains(&requested) {
        Ok(requested.to_string())
    } else {
        Err(CniError::Version {
            msg: format!(
                "cniVersion {requested} is not supported; vethbpf supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        })
    }
}

/// One attachment in a GC request's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub(crate) container_id: String,
    pub(crate) ifname: String,
}

/// The request configuration (one plugin object with `cniVersion`, `name` and the
/// runtime's additions), validated.
#[derive(Clone, Debug)]
pub(crate) struct NetConf {
    pub(crate) cni_version: String,
    pub(crate) name: String,
    /// `stateDir`: the state directory shared with the CLI.
    pub(crate) state_dir: Option<PathBuf>,
    /// `bpffsDir`: where the datapath is pinned.
    pub(crate) bpffs_dir: Option<PathBuf>,
    /// `podCidr`: the built-in allocator's IPv4 range, given to `up`.
    pub(crate) pod_cidr: Option<Ipv4Net>,
    /// `podCidr6`: its IPv6 range. With only this one, pods are IPv6-only; with
    /// neither, the node's (or the default IPv4 one).
    pub(crate) pod_cidr6: Option<Ipv6Net>,
    /// `gateway`: the pods' link-local gateway, given to `up`.
    pub(crate) gateway: Option<Ipv4Addr>,
    /// `ipam.type`: a delegated IPAM plugin, found through `CNI_PATH`.
    pub(crate) ipam_type: Option<String>,
    /// `dns`, passed into the result.
    pub(crate) dns: Dns,
    /// `prevResult` (CHECK, DEL, chained ADD).
    pub(crate) prev_result: Option<Value>,
    /// `runtimeConfig.ips` (the `ips` capability): requested addresses, at most one
    /// per family.
    pub(crate) runtime_ips: Vec<IpAddr>,
    /// `cni.dev/valid-attachments` (GC).
    pub(crate) valid_attachments: Option<Vec<ValidAttachment>>,
    /// The configuration exactly as received, for delegated plugins.
    pub(crate) raw: Value,
}

fn field<'a, T: Deserialize<'a>>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| CniError::Config(format!("field {key:?}: {e}"))),
    }
}

fn parsed<T: std::str::FromStr>(
    obj: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<T>, CniError> {
    match field::<String>(obj, key)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| CniError::Config(format!("field {key:?}: {s:?} is not {what}"))),
    }
}

/// Network names: an alphanumeric first character, then alphanumerics, `_`, `.`
/// and `-` (SPEC.md, section 1).
pub(crate) fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NetConf {
    /// Decodes stdin: not JSON (or not an object) is code 6, an unsupported
    /// version code 1, wrong or missing fields code 7.
    pub(crate) fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        let Value::Object(obj) = &raw else {
            return Err(CniError::Decode(
                "the network configuration is not a JSON object".into(),
            ));
        };
        let version = match obj.get("cniVersion") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(CniError::Decode(format!(
                    "cniVersion must be a string, not {other}"
                )));
            }
        };
        let cni_version = check_version(version)?;
        let name: String = field(obj, "name")?
            .ok_or_else(|| CniError::Config("missing network name (\"name\")".into()))?;
        if !valid_network_name(&name) {
            return Err(CniError::Config(format!(
                "network name {name:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            )));
        }
        // The runtime chose this plugin by its `type`; it only has to be a string.
        field::<String>(obj, "type")?;
        let ipam_type = match obj.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(ipam)) => match field::<String>(ipam, "type")? {
                Some(t) if t.is_empty() => None,
                Some(t) if t.contains('/') || t == "." || t == ".." => {
                    return Err(CniError::Config(format!(
                        "ipam.type {t:?} must be a plugin file name"
                    )));
                }
                t => t,
            },
            Some(other) => {
                return Err(CniError::Config(format!(
                    "field \"ipam\" must be an object, not {other}"
                )));
            }
        };
        let mut runtime_ips = Vec::new();
        if let Some(Value::Object(rc)) = obj.get("runtimeConfig") {
            for s in field::<Vec<String>>(rc, "ips")?.unwrap_or_default() {
                match s.split('/').next().unwrap_or(&s).parse::<IpAddr>() {
                    Ok(ip) => runtime_ips.push(ip),
                    Err(_) => {
                        return Err(CniError::Config(format!(
                            "runtimeConfig.ips: {s:?} is not an IP address"
                        )));
                    }
                }
            }
        }
        let pod_cidr: Option<Ipv4Net> = parsed(obj, "podCidr", "an IPv4 CIDR")?;
        let pod_cidr6: Option<Ipv6Net> = parsed(obj, "podCidr6", "an IPv6 CIDR")?;
        Ok(NetConf {
            cni_version,
            name,
            state_dir: field(obj, "stateDir")?,
            bpffs_dir: field(obj, "bpffsDir")?,
            pod_cidr: pod_cidr.map(|c| c.trunc()),
            pod_cidr6: pod_cidr6.map(|c| c.trunc()),
            gateway: parsed(obj, "gateway", "an IPv4 address")?,
            ipam_type,
            dns: field(obj, "dns")?.unwrap_or_default(),
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            runtime_ips,
            valid_attachments: field(obj, "cni.dev/valid-attachments")?,
            raw: raw.clone(),
        })
    }

    pub(crate) fn version(&self) -> Version {
        Version::parse(&self.cni_version).unwrap_or(Version(0, 0, 0))
    }
}

/// `dns` of a configuration or result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) options: Vec<String>,
}

impl Dns {
    pub(crate) fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// `interfaces[]` of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Interface {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sandbox: Option<String>,
    /// Fields this plugin does not interpret (`mtu`, `socketPath`, `pciID`, ...),
    /// kept when a result passes through.
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

/// `ips[]` of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IpConfig {
    /// 0.4.0 only: `"4"` or `"6"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    pub(crate) address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) gateway: Option<String>,
    /// Index into `interfaces` (absent in IPAM results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interface: Option<usize>,
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

/// `routes[]` of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RouteEntry {
    pub(crate) dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) gw: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

/// An ADD result (and what CHECK and DEL get back as `prevResult`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub(crate) cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) interfaces: Vec<Interface>,
    #[serde(default)]
    pub(crate) ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RouteEntry>,
    #[serde(default)]
    pub(crate) dns: Dns,
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl CniResult {
    pub(crate) fn from_value(v: &Value) -> Result<CniResult, CniError> {
        CniResult::deserialize(v).map_err(|e| CniError::Decode(format!("prevResult: {e}")))
    }

    /// The result in the shape of `version`: 0.4.0 has `ips[].version`, 1.0.0 and
    /// later do not.
    pub(crate) fn for_version(mut self, version: &str) -> CniResult {
        let old = Version::parse(version).is_some_and(|v| v < Version(1, 0, 0));
        for ip in &mut self.ips {
            ip.version = if old {
                Some(if ip.address.contains(':') { "6" } else { "4" }.to_string())
            } else {
                None
            };
        }
        self.cni_version = version.to_string();
        self
    }
}

/// VERSION's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub(crate) cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub(crate) supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(Version::parse("1.0.0") > Version::parse("0.4.0"));
        assert!(Version::parse("1.1.0") > Version::parse("1.0.0"));
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(check_version(Some("1.0.0")).unwrap(), "1.0.0");
        assert!(matches!(
            check_version(Some("0.3.1")),
            Err(CniError::Version { .. })
        ));
        assert!(matches!(check_version(None), Err(CniError::Version { .. })));
        assert!(matches!(check_version(Some("x")), Err(CniError::Decode(_))));
    }

    #[test]
    fn conf_parsing_codes() {
        let ok = br#"{"cniVersion":"1.0.0","name":"n","type":"vethbpf","podCidr":"10.9.0.7/24",
            "ipam":{"type":"host-local","subnet":"10.9.0.0/24"},"runtimeConfig":{"ips":["10.9.0.5/24","fd00::1/64"]}}"#;
        let c = NetConf::parse(ok).unwrap();
        assert_eq!(c.pod_cidr, Some("10.9.0.0/24".parse().unwrap()));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(
            c.runtime_ips,
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 5)),
                "fd00::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(c.pod_cidr6, None);
        let dual = br#"{"cniVersion":"1.0.0","name":"n","podCidr6":"fd00:10:244::5/64"}"#;
        assert_eq!(
            NetConf::parse(dual).unwrap().pod_cidr6,
            Some("fd00:10:244::/64".parse().unwrap())
        );
        let code = |s: &[u8]| NetConf::parse(s).unwrap_err().code();
        assert_eq!(code(b"{not json"), 6);
        assert_eq!(code(b"[1]"), 6);
        assert_eq!(code(br#"{"cniVersion":"9.9.9","name":"n"}"#), 1);
        assert_eq!(code(br#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(code(br#"{"cniVersion":"1.0.0","name":"-bad"}"#), 7);
        assert_eq!(
            code(br#"{"cniVersion":"1.0.0","name":"n","podCidr":"x"}"#),
            7
        );
        assert_eq!(code(br#"{"cniVersion":"1.0.0","name":"n","gateway":7}"#), 7);
        assert_eq!(
            code(br#"{"cniVersion":"1.0.0","name":"n","podCidr6":"10.0.0.0/8"}"#),
            7
        );
        assert_eq!(
            code(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"../x"}}"#),
            7
        );
    }

    #[test]
    fn result_shapes_per_version() {
        let r = CniResult {
            cni_version: String::new(),
            interfaces: vec![],
            ips: vec![IpConfig {
                version: None,
                address: "10.0.0.1/32".into(),
                gateway: None,
                interface: Some(1),
                extra: Map::new(),
            }],
            routes: vec![],
            dns: Dns::default(),
            extra: Map::new(),
        };
        let old = serde_json::to_value(r.clone().for_version("0.4.0")).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["dns"], serde_json::json!({}));
        let new = serde_json::to_value(r.for_version("1.0.0")).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.0.0");
    }
}
