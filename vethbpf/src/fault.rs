//! Fault injection for tests: `VETHBPF_FAULT=<point>` makes the step at `<point>`
//! fail as if the kernel had refused it, `VETHBPF_FAULT=<point>:crash` kills the
//! process there with SIGKILL (a crash at an exact point of an operation), and
//! `VETHBPF_FAULT=<point>:stop` stops it there with SIGSTOP until it gets SIGCONT
//! (an operation held at an exact point while the test looks around).
//!
//! The hook exists only in builds with the `fault-injection` feature, which the
//! integration tests enable; in every other build `point` is an empty inline
//! function and the variable is ignored. The same feature lets tests force the
//! attach mode (`VETHBPF_TEST_ATTACH_MODE`).

/// Every fault point, in the order `endpoint add` and `endpoint del` reach them.
/// The tests iterate over these, so a new step gets tested by being listed here.
pub const ADD_POINTS: &[&str] = &[
    "add.intent",
    "add.netns",
    "add.veth",
    "add.ipv6",
    "add.pod",
    "add.counters",
    "add.endpoint-map",
    "add.endpoint6-map",
    "add.attach",
    "add.link-up",
    "add.route-map",
    "add.commit",
    "add.done",
];

/// Every fault point of `endpoint del`, in the order it reaches them.
pub const DEL_POINTS: &[&str] = &[
    "del.intent",
    "del.route-map",
    "del.link",
    "del.detach",
    "del.endpoint-map",
    "del.netns",
    "del.counters",
    "del.commit",
    "del.done",
];

/// `node add` and `node del` (remote nodes), in order.
pub const NODE_ADD_POINTS: &[&str] = &[
    "node-add.intent",
    "node-add.counters",
    "node-add.node-map",
    "node-add.address-route",
    "node-add.cidr-route",
    "node-add.commit",
    "node-add.done",
];

pub const NODE_DEL_POINTS: &[&str] = &[
    "node-del.intent",
    "node-del.cidr-route",
    "node-del.address-route",
    "node-del.node-map",
    "node-del.commit",
    "node-del.done",
];

/// A step refused by `VETHBPF_FAULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at {point} (VETHBPF_FAULT)")]
pub struct Injected {
    pub point: &'static str,
}

#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &'static str) -> Result<(), Injected> {
    let Some(spec) = std::env::var_os("VETHBPF_FAULT") else {
        return Ok(());
    };
    let spec = spec.to_string_lossy();
    let (target, action) = spec.split_once(':').unwrap_or((&spec, "fail"));
    if target != name {
        return Ok(());
    }
    if action == "stop" {
        // Stopped like a process the scheduler never runs again until SIGCONT: a
        // test can then look at everything else while this step is pending, and
        // go on (SIGCONT, and the step runs normally) or kill it.
        tracing::warn!(point = name, "injected stop");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
        return Ok(());
    }
    if action == "crash" {
        tracing::warn!(point = name, "injected crash");
        // SIGKILL, not abort or exit: nothing runs after it, as with the OOM killer
        // or a runtime's kill -9.
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    Err(Injected { point: name })
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) -> Result<(), Injected> {
    Ok(())
}

/// `VETHBPF_TEST_ATTACH_MODE` (`tc` or `tcx`; `netlink` is `tc`), which makes
/// `up` attach the node's own programs (uplink, VXLAN device) as asked instead of
/// as the kernel allows, and makes `up` believe the kernel has no TCX when `tc`:
/// the clsact fallback is tested on kernels that have TCX. Only in test builds,
/// like the fault points.
#[cfg(feature = "fault-injection")]
pub(crate) fn forced_attach_mode() -> Option<&'static str> {
    match std::env::var("VETHBPF_TEST_ATTACH_MODE").ok()?.as_str() {
        "tc" | "netlink" => Some("tc"),
        "tcx" => Some("tcx"),
        _ => None,
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn forced_attach_mode() -> Option<&'static str> {
    None
}
