//! `install`: puts the `vethbpf` binary where container runtimes look for CNI
//! plugins (/opt/cni/bin for containerd, CRI-O and the kubelet's conventions;
//! /usr/lib/cni for Debian's podman) and writes an example network configuration.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::ebpf;
use crate::util::{self, run, step};

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Directories to install the plugin binary into (as `vethbpf`).
    #[arg(long = "bin-dir", value_name = "DIR", default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    bin_dirs: Vec<PathBuf>,
    /// Directory for the example network configuration.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Write it as `10-<network>.conflist`, which runtimes load, instead of
    /// `<network>.conflist.example`, which they ignore.
    #[arg(long)]
    activate: bool,
    /// The network's name in the example.
    #[arg(long, default_value = "vethbpf")]
    network: String,
    /// The node's pod CIDR in the example.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    /// cniVersion of the example (Debian's podman 4.3 reads 1.0.0 at most).
    #[arg(long, default_value = "1.0.0")]
    cni_version: String,
    /// Install this binary instead of building one (`cargo build --release`).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// The example configuration: one vethbpf plugin with its node settings spelled
/// out (the defaults, shared with the `vethbpf` command line).
pub fn example_conflist(network: &str, pod_cidr: &str, cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "name": network,
        "plugins": [{
            "type": "vethbpf",
            "podCidr": pod_cidr,
            "gateway": "169.254.1.1",
            "stateDir": "/var/lib/vethbpf",
            "bpffsDir": "/sys/fs/bpf/vethbpf",
        }],
    })
}

/// Copies `from` to `dir/vethbpf` through a temporary file and a rename, so that a
/// runtime executing the plugin meanwhile sees the old or the new binary.
fn install_binary(from: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join("vethbpf");
    let tmp = dir.join(".vethbpf.tmp");
    fs::copy(from, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(dest)
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            ebpf::build_ebpf()?;
            let root = util::workspace_root()?;
            run(ebpf::require_object(&mut Command::new(util::cargo()))
                .current_dir(&root)
                .args(["build", "--release", "-p", "vethbpf"]))
            .context("building vethbpf")?;
            root.join("target/release/vethbpf")
        }
    };
    if !binary.is_file() {
        bail!("{} is not a file", binary.display());
    }
    for dir in &args.bin_dirs {
        let dest = install_binary(&binary, dir)?;
        step(format!("installed {}", dest.display()));
    }
    fs::create_dir_all(&args.conf_dir)
        .with_context(|| format!("creating {}", args.conf_dir.display()))?;
    let name = if args.activate {
        format!("10-{}.conflist", args.network)
    } else {
        format!("{}.conflist.example", args.network)
    };
    let conf = args.conf_dir.join(name);
    let text = serde_json::to_string_pretty(&example_conflist(
        &args.network,
        &args.pod_cidr,
        &args.cni_version,
    ))?;
    fs::write(&conf, text + "\n").with_context(|| format!("writing {}", conf.display()))?;
    step(format!("wrote {}", conf.display()));
    if !args.activate {
        step(format!(
            "runtimes ignore *.example: copy it to {}/10-{}.conflist (or rerun with --activate) to use it",
            args.conf_dir.display(),
            args.network
        ));
    }
    Ok(())
}
