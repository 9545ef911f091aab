//! The protocol parameters of one call: `CNI_COMMAND` and the other `CNI_*`
//! environment variables, checked per command.

use std::path::PathBuf;

use super::error::CniError;
use super::types;

/// A CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
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
pub(crate) struct Params {
    pub(crate) command: Command,
    pub(crate) container_id: Option<String>,
    pub(crate) netns: Option<String>,
    pub(crate) ifname: Option<String>,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs.
    pub(crate) args: Vec<(String, String)>,
    pub(crate) path: Vec<PathBuf>,
}

/// Container IDs: an alphanumeric first character, then alphanumerics, `_`, `.`
/// and `-` (SPEC.md, section 2).
fn valid_container_id(id: &str) -> bool {
    types::valid_network_name(id)
}

impl Params {
    /// Reads and checks the parameters; `get` is the environment. A missing or
    /// invalid variable that the command needs is code 4, naming the variables.
    pub(crate) fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Params, CniError> {
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

    /// `IP=` of `CNI_ARGS` (what `podman run --ip` and Kubernetes' static IPs use):
    /// one address, or one per family separated by commas (as host-local reads it).
    pub(crate) fn requested_ips(&self) -> Result<Vec<std::net::IpAddr>, CniError> {
        match self.args.iter().find(|(k, _)| k == "IP") {
            None => Ok(Vec::new()),
            Some((_, v)) => v
                .split(',')
                .map(|a| {
                    a.trim().parse().map_err(|_| CniError::Env {
                        msg: format!("CNI_ARGS IP={v}: {a:?} is not an IP address"),
                    })
                })
                .collect(),
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
        assert_eq!(
            p.requested_ips().unwrap(),
            vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(p.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }
}
