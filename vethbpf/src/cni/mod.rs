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
//! Modules: `params` (the `CNI_*` variables), `types` (protocol data),
//! `delegate` (IPAM plugins through `CNI_PATH`), `ops` (the commands),
//! `error` (errors and their codes); this file dispatches one call.

mod delegate;
mod error;
mod ops;
mod params;
mod types;

use std::ffi::OsStr;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use error::CniError;
use params::{Command, Params};
use types::NetConf;

/// The name under which the binary acts as a plugin even without `CNI_COMMAND`
/// (then answering with the error for a missing `CNI_COMMAND`).
const PLUGIN_ALIAS: &str = "vethbpf-cni";

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
pub(crate) fn run(params: &Params, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
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

    fn params(vars: &[(&str, &str)]) -> Result<Params, CniError> {
        let m: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn status_and_gc_need_110() {
        let p = params(&[("CNI_COMMAND", "STATUS")]).unwrap();
        let e = run(&p, br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code(), 1);
    }
}
