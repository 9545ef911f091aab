//! Stopping long-running commands (`monitor`, `metrics --listen`) cleanly: SIGINT,
//! SIGTERM and SIGHUP set a flag the command checks, so it can undo what it set up
//! (the monitor's listener entry) before it exits. A closed stdout becomes an error
//! to handle (EPIPE) rather than a SIGPIPE death for the same reason.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handlers and returns the flag they set.
pub fn stop_flag() -> anyhow::Result<&'static AtomicBool> {
    // No SA_RESTART: a wait in poll() returns at once with EINTR.
    let stop = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            sigaction(sig, &stop)?;
        }
        sigaction(Signal::SIGPIPE, &ignore)?;
    }
    Ok(&STOP)
}
