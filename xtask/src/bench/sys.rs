//! Processes, namespaces, sysctls, Ctrl-C and teardown guards for the benchmark.
//!
//! Everything the benchmark builds is registered in a [`Teardown`] the moment it
//! exists, so that an error, a panic or Ctrl-C anywhere later still removes it: the
//! guard undoes its steps in reverse order when dropped.

use std::{
    fs,
    io::{Read, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace, link-owning namespace and temp dir of this run:
/// `vbb-<pid>-`. The pid makes concurrent runs (and concurrent tests using other
/// prefixes) unable to collide.
pub fn prefix() -> String {
    format!("vbb-{}-", std::process::id())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: anything else is not async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT/SIGTERM into a flag that the run loop polls, so that Ctrl-C unwinds
/// through the `Teardown` guards instead of killing the process with namespaces,
/// links and mounts left behind.
pub fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    Ok(())
}

/// Teardowns in progress. While one runs, Ctrl-C no longer aborts commands: the
/// undo steps (`vethbpf down`, CNI DEL, ...) must finish.
static TEARING_DOWN: AtomicUsize = AtomicUsize::new(0);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst) && TEARING_DOWN.load(Ordering::SeqCst) == 0
}

/// Fails once Ctrl-C was pressed; called between steps so the run stops promptly.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

type Step = Box<dyn FnOnce() -> Result<()>>;

/// Undo steps, run in reverse order on drop (or on [`Teardown::run`]).
pub struct Teardown {
    label: String,
    steps: Vec<(String, Step)>,
}

impl Teardown {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            steps: Vec::new(),
        }
    }

    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() -> Result<()> + 'static) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Delete namespace `name` at teardown.
    pub fn netns(&mut self, name: &str) {
        let n = name.to_string();
        self.push(format!("delete netns {name}"), move || netns_del(&n));
    }

    /// Kill (by pid, SIGKILL) and reap a child at teardown.
    pub fn child(&mut self, what: &str, mut child: Child) {
        self.push(format!("stop {what} (pid {})", child.id()), move || {
            // The child may have exited already; kill then only fails with "invalid input".
            let _ = child.kill();
            child.wait().context("waiting for the child")?;
            Ok(())
        });
    }

    /// Run all steps now, newest first, reporting (not stopping at) failures.
    pub fn run(&mut self) {
        TEARING_DOWN.fetch_add(1, Ordering::SeqCst);
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                eprintln!("  teardown {}: {what}: {e:#}", self.label);
            }
        }
        TEARING_DOWN.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.run();
    }
}

/// Run a command to completion; error (with its stderr) unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] but returns the full output.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{desc}`"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Run a command with `input` on stdin and a time limit; returns stdout.
pub fn run_with_input(cmd: &mut Command, input: &[u8], limit: Duration) -> Result<String> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{desc}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .with_context(|| format!("writing stdin of `{desc}`"))?;
    }
    // Read both pipes while the child runs: one that writes more than a pipe
    // holds (64 KiB; `endpoint list` of 1000 endpoints does) would block forever
    // on a reader that waits for it to exit first.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                p.read_to_string(&mut text).ok();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_limited(&mut child, limit).with_context(|| format!("`{desc}`"))?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`{desc}` failed ({status}): {} {}",
            stdout.trim(),
            stderr.trim()
        );
    }
    Ok(stdout)
}

/// Run a command with a time limit, capturing stdout+stderr; error unless exit 0.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Result<String> {
    run_with_input(cmd, b"", limit)
}

/// Wait for a child for at most `limit`; kill it by pid when the limit passes or
/// on Ctrl-C. The wait is on a pidfd, which becomes readable the moment the child
/// exits: the control plane times single commands of a few ms, and polling
/// `try_wait` every few ms would add up to a poll interval to each.
fn wait_limited(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    let pidfd = if raw >= 0 {
        use std::os::fd::FromRawFd;
        // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as i32) })
    } else {
        None
    };
    loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            return Ok(status);
        }
        if Instant::now() >= end || interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            if interrupted() {
                bail!("interrupted");
            }
            bail!("did not finish within {limit:?}; killed pid {}", child.id());
        }
        match &pidfd {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // At most 100 ms, to look at Ctrl-C and the limit (a signal that
                // lands on another thread does not interrupt this poll).
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            // No pidfd (before Linux 5.3): poll the child.
            None => thread::sleep(Duration::from_millis(1)),
        }
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `nsenter --net=/run/netns/<ns> -- <program>`: runs a program in a namespace we
/// made without `ip netns exec`'s remount of /sys.
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    c
}

/// The CPUs latency is measured on: the ping-pong client on the first, its server
/// on the second, for every contender alike. Left to the scheduler, each run lands
/// the two on one CPU or on two, and the RTT differs by the cross-CPU wake-ups
/// (13 us on these VMs): a 5-round median then picks a mode by chance. `None` on a
/// machine with one CPU.
pub fn latency_cpus() -> Option<(usize, usize)> {
    let n = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (n >= 2).then_some((0, 1))
}

/// [`in_ns`], the program bound to `cpu` (`taskset`, inherited by what it starts).
pub fn in_ns_on_cpu(ns: &str, cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let Some(cpu) = cpu else {
        return in_ns(ns, program);
    };
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string(), "nsenter"])
        .arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    c
}

/// Binds the calling thread to `cpu` (for the in-process ping-pong).
pub fn pin_thread(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("binding a thread to CPU {cpu}"))
}

/// `ip [-n ns] args...`
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    run(c.args(args))
}

/// Create a namespace and bring its loopback up.
pub fn netns_add(name: &str) -> Result<()> {
    ip(None, &["netns", "add", name])?;
    ip(Some(name), &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Delete a namespace; a namespace that is already gone is not an error.
pub fn netns_del(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(None, &["netns", "del", name]).map(|_| ())
}

/// Run `f` on a new thread that has joined namespace `ns`. Only that thread changes
/// namespace: sockets it opens belong to `ns`, and no other thread is affected.
pub fn in_netns_thread<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    let path = netns_path(ns);
    let name = ns.to_string();
    thread::Builder::new()
        .name(format!("ns-{name}"))
        .spawn(move || {
            let file =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
            f()
        })
        .context("spawning a namespace thread")
}

/// Run `f` inside namespace `ns` (on a dedicated thread) and wait for it.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    in_netns_thread(ns, f)?
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Write sysctls (`net.ipv4.ip_forward` style keys) in namespace `ns`. /proc/sys/net
/// shows the namespace of the thread that opens the file, hence the setns thread.
pub fn sysctls(ns: &str, pairs: &[(&str, &str)]) -> Result<()> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    in_netns(ns, move || {
        for (k, v) in pairs {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            fs::write(&path, &v).with_context(|| format!("writing {v} to {path}"))?;
        }
        Ok(())
    })
}

/// Wait until a TCP server answers on `ip:port` from inside namespace `ns`.
pub fn wait_tcp(ns: &str, ip: IpAddr, port: u16, limit: Duration) -> Result<()> {
    in_netns(ns, move || {
        let end = Instant::now() + limit;
        let addr = std::net::SocketAddr::from((ip, port));
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= end => {
                    return Err(e).with_context(|| format!("nothing answers on {addr}"));
                }
                Err(_) => {
                    check_interrupt()?;
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })
}

/// Ping `ip` from namespace `ns` until it answers (proxy ARP and first-packet
/// resolution can take a moment), at most `tries` seconds.
pub fn ping(ns: &str, ip: IpAddr, tries: u32) -> Result<()> {
    let mut last = anyhow!("no attempt");
    for _ in 0..tries {
        check_interrupt()?;
        match run(in_ns(ns, "ping").args(["-c1", "-W1", &ip.to_string()])) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last).with_context(|| format!("{ip} unreachable from {ns}"))
}

/// Mount a bpffs at `dir` and register its unmount.
pub fn mount_bpffs(dir: &Path, td: &mut Teardown) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir))?;
    let d = dir.to_path_buf();
    td.push(format!("unmount {}", dir.display()), move || {
        run(Command::new("umount").arg(&d)).map(|_| ())
    });
    Ok(())
}

/// Remove namespaces that earlier benchmark runs left behind when they were killed
/// with SIGKILL (their pid no longer exists). Only `vbb-<pid>-` names are touched.
pub fn sweep_stale() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("vbb-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} of an earlier run (pid {pid} is gone)");
            if let Err(e) = netns_del(&name) {
                eprintln!("  {e:#}");
            }
        }
    }
}

/// Install Debian packages that are missing (checked with `dpkg -s`).
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing missing packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}
