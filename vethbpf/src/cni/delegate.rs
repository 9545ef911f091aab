//! Delegated plugins (SPEC.md section 4): an IPAM plugin named by `ipam.type`,
//! found in the directories of `CNI_PATH`, run with the same environment (but
//! `CNI_COMMAND`, and for GC the attachment) and the complete configuration on
//! stdin; its stderr is ours.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::error::CniError;
use super::types::{CniResult, SUPPORTED_VERSIONS, Version, VersionResult};

/// A delegated plugin, ready to run.
#[derive(Clone, Debug)]
pub(crate) struct Delegate {
    pub(crate) plugin: String,
    pub(crate) exe: PathBuf,
    /// The configuration it gets: ours, with `cniVersion` lowered to one it speaks
    /// if it does not speak ours.
    stdin: Vec<u8>,
    pub(crate) version: String,
}

/// Overrides of the inherited environment for one call.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallEnv<'a> {
    pub(crate) container_id: Option<&'a str>,
    pub(crate) ifname: Option<&'a str>,
    pub(crate) netns: Option<&'a str>,
}

fn delegate_err(plugin: &str, msg: impl Into<String>) -> CniError {
    CniError::DelegateExec {
        plugin: plugin.to_string(),
        msg: msg.into(),
    }
}

/// Looks `plugin` up in the `CNI_PATH` directories.
pub(crate) fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    cni_path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            let dirs: Vec<String> = cni_path.iter().map(|d| d.display().to_string()).collect();
            delegate_err(
                plugin,
                format!("not found in CNI_PATH [{}]", dirs.join(":")),
            )
        })
}

impl Delegate {
    /// Finds the plugin and agrees on a version: ours if it speaks it, else the
    /// newest it speaks that is older than ours (0.4.0 at least), so that e.g.
    /// Debian's host-local (spec 1.0.0 at most) serves a 1.1.0 network.
    pub(crate) fn new(
        plugin: &str,
        cni_path: &[PathBuf],
        conf: &Value,
        version: &str,
    ) -> Result<Self, CniError> {
        let exe = find(plugin, cni_path)?;
        let supported = plugin_versions(plugin, &exe, version)?;
        let ours = Version::parse(version).unwrap_or(Version(1, 1, 0));
        let chosen = if supported.iter().any(|v| v == version) {
            version.to_string()
        } else {
            supported
                .iter()
                .filter_map(|v| Version::parse(v).map(|p| (p, v)))
                .filter(|(p, _)| *p < ours && *p >= Version(0, 4, 0))
                .max()
                .map(|(_, v)| v.clone())
                .ok_or_else(|| CniError::Version {
                    msg: format!(
                        "IPAM plugin {plugin} supports [{}], none of which vethbpf can use for cniVersion {version} (vethbpf: {})",
                        supported.join(", "),
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                })?
        };
        let stdin = if chosen == version {
            serde_json::to_vec(conf)
        } else {
            tracing::info!(plugin, from = version, to = %chosen, "IPAM plugin runs with an older cniVersion");
            let mut c = conf.clone();
            if let Value::Object(o) = &mut c {
                o.insert("cniVersion".into(), Value::String(chosen.clone()));
            }
            serde_json::to_vec(&c)
        }
        .map_err(|e| delegate_err(plugin, format!("cannot encode its configuration: {e}")))?;
        Ok(Delegate {
            plugin: plugin.to_string(),
            exe,
            stdin,
            version: chosen,
        })
    }

    /// Whether it speaks `version` itself (STATUS and GC are 1.1.0 commands).
    pub(crate) fn speaks(&self, version: &str) -> bool {
        self.version == version
    }

    /// Runs one command; the parsed stdout on success (`None` when empty).
    pub(crate) fn call(&self, command: &str, env: &CallEnv<'_>) -> Result<Option<Value>, CniError> {
        exec(&self.plugin, &self.exe, command, &self.stdin, env)
    }

    /// ADD: the first address of each family it gives, and its result.
    pub(crate) fn add(&self) -> Result<(Vec<IpAddr>, CniResult), CniError> {
        let out = self
            .call("ADD", &CallEnv::default())?
            .ok_or_else(|| delegate_err(&self.plugin, "ADD printed no result"))?;
        let result = CniResult::from_value(&out)
            .map_err(|e| delegate_err(&self.plugin, format!("unreadable ADD result: {e}")))?;
        let addrs: Vec<IpAddr> = result
            .ips
            .iter()
            .filter_map(|ip| {
                ip.address
                    .split('/')
                    .next()
                    .and_then(|a| a.parse::<IpAddr>().ok())
            })
            .collect();
        let first_of = |v6: bool| addrs.iter().copied().find(|a| a.is_ipv6() == v6);
        let ips: Vec<IpAddr> = [first_of(false), first_of(true)]
            .into_iter()
            .flatten()
            .collect();
        if ips.is_empty() {
            return Err(delegate_err(
                &self.plugin,
                format!("ADD gave no address: {out}"),
            ));
        }
        Ok((ips, result))
    }
}

/// The versions a plugin reports through VERSION.
fn plugin_versions(plugin: &str, exe: &Path, version: &str) -> Result<Vec<String>, CniError> {
    let stdin = serde_json::json!({ "cniVersion": version }).to_string();
    let out = exec(
        plugin,
        exe,
        "VERSION",
        stdin.as_bytes(),
        &CallEnv::default(),
    )?
    .ok_or_else(|| delegate_err(plugin, "VERSION printed nothing"))?;
    let v: VersionResult = serde_json::from_value(out)
        .map_err(|e| delegate_err(plugin, format!("unreadable VERSION result: {e}")))?;
    Ok(v.supported_versions)
}

fn exec(
    plugin: &str,
    exe: &Path,
    command: &str,
    stdin: &[u8],
    env: &CallEnv<'_>,
) -> Result<Option<Value>, CniError> {
    let mut cmd = Command::new(exe);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in [
        ("CNI_CONTAINERID", env.container_id),
        ("CNI_IFNAME", env.ifname),
        ("CNI_NETNS", env.netns),
    ] {
        if let Some(v) = value {
            cmd.env(key, v);
        }
    }
    tracing::debug!(plugin, command, exe = %exe.display(), "running delegated plugin");
    let mut child = cmd
        .spawn()
        .map_err(|e| delegate_err(plugin, format!("cannot run {}: {e}", exe.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading everything is judged by its answer.
        let _ = pipe.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| delegate_err(plugin, format!("waiting for {}: {e}", exe.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if text.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| delegate_err(plugin, format!("{command} printed no JSON ({e}): {text}")));
    }
    // A CNI error object carries its own code, passed on to our caller.
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => Err(CniError::Delegated {
            plugin: plugin.to_string(),
            code: v["code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(999),
            msg: v["msg"].as_str().unwrap_or_default().to_string(),
            details: v["details"].as_str().unwrap_or_default().to_string(),
        }),
        _ => Err(delegate_err(
            plugin,
            format!("{command} failed ({}): {}", out.status, text.trim()),
        )),
    }
}
