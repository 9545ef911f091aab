//! The command line's own refusals, and how every failure leaves the program: an
//! exit status per kind of failure ([`ErrorKind`]) and, with `-o json`, a JSON
//! object on stderr instead of the `error: ...` line.

use std::path::PathBuf;
use std::process::ExitCode;

use vethbpf::error::ErrorKind;

use super::output::Output;

/// Refusals of the command line itself (the library's errors say their own kind).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("vethbpf must run as root: it creates namespaces, links and eBPF objects (try sudo)")]
    NotRoot,
    #[error("the node is not up (no state in {}): run `vethbpf up` first", .0.display())]
    NoState(PathBuf),
    #[error("the node is not up: run `vethbpf up` first")]
    NotUp,
    #[error(
        "nothing is pinned at {} (no {}): give the --bpffs-dir the node was brought up with, or run `vethbpf up`",
        dir.display(),
        program.display()
    )]
    NothingPinned { dir: PathBuf, program: PathBuf },
    #[error(
        "the state file {} is readable; run `vethbpf reconcile` without --from-kernel",
        .0.display()
    )]
    StateReadable(PathBuf),
}

impl RunError {
    fn kind(&self) -> ErrorKind {
        match self {
            RunError::NotRoot => ErrorKind::Other,
            RunError::NoState(_) | RunError::NotUp | RunError::NothingPinned { .. } => {
                ErrorKind::NotUp
            }
            RunError::StateReadable(_) => ErrorKind::Conflict,
        }
    }
}

/// The kind of a failure: the command line's own refusal, else the first of the
/// library's errors in the chain, else [`ErrorKind::Other`].
fn kind_of(e: &anyhow::Error) -> ErrorKind {
    if let Some(r) = e.chain().find_map(|c| c.downcast_ref::<RunError>()) {
        return r.kind();
    }
    let root: &(dyn std::error::Error + 'static) = e.as_ref();
    vethbpf::error_kind(root).unwrap_or(ErrorKind::Other)
}

/// Prints a failure as `out` asks and returns its exit status.
pub(crate) fn fail(e: &anyhow::Error, out: Output) -> ExitCode {
    let kind = kind_of(e);
    report(&format!("{e:#}"), kind, out);
    ExitCode::from(kind.exit_code())
}

fn report(message: &str, kind: ErrorKind, out: Output) {
    match out {
        Output::Json => eprintln!(
            "{}",
            serde_json::json!({
                "error": message,
                "code": kind.exit_code(),
                "kind": kind.name(),
            })
        ),
        Output::Table => eprintln!("error: {message}"),
    }
}

/// Leaves on a command line the parser rejected: as clap does (usage on stderr,
/// status 2), or as a JSON object when `-o json` was asked for. Help and version
/// requests are clap's to print.
pub(crate) fn exit_on_parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind as Clap;
    if !matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) && json_requested() {
        let rendered = e.render().to_string();
        // The first paragraph; the usage summary after it is for people.
        let message = rendered.split("\n\n").next().unwrap_or_default();
        report(
            message.trim().trim_start_matches("error: "),
            ErrorKind::Usage,
            Output::Json,
        );
        std::process::exit(i32::from(ErrorKind::Usage.exit_code()));
    }
    e.exit()
}

/// Whether the raw arguments ask for JSON output (`-o json`, `-ojson`,
/// `--output json`, `--output=json`): what the parser would have read had it not
/// stopped.
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().any(|(i, a)| {
        let next = || args.get(i + 1).is_some_and(|v| v == "json");
        match a.as_str() {
            "-o" | "--output" => next(),
            "-ojson" | "--output=json" => true,
            _ => false,
        }
    })
}
