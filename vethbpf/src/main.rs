//! The `vethbpf` binary: the command line (`cli/`) on top of the library, or the
//! CNI plugin when a container runtime runs it as one.

// The library (src/lib.rs) uses the package's dependencies; this entry point needs few.
#![expect(unused_crate_dependencies, reason = "used by the library")]

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

mod cli;

fn main() -> ExitCode {
    // A container runtime runs plugins with CNI_COMMAND set (and no arguments).
    // Before the SIGPIPE change below: a delegated plugin that exits without
    // reading its stdin must not kill the plugin.
    if vethbpf::cni::invoked_as_plugin() {
        return vethbpf::cni::main();
    }
    // Die quietly on a closed stdout (`vethbpf endpoint list | head`) like other
    // command-line tools, instead of panicking in println!.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let (cli, bpffs_explicit) = cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .init();
    let out = cli.output;
    match cli::run(cli, bpffs_explicit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(&e, out),
    }
}
