//! `vethbpf monitor`: claim the datapath's event stream, read it until stopped, give
//! it back. One monitor at a time: the ring buffer has one reader position, so a
//! second reader would steal the first one's events.
//!
//! While a monitor runs, the `MONITOR` entry holds its pid, the event kinds it wants
//! and a lease deadline it renews every second. Stopping (Ctrl-C, SIGTERM, a closed
//! output) writes the entry back to zero; a monitor killed outright leaves it, and
//! the datapath stops emitting when the lease runs out (`MONITOR_LEASE_NS`), and the
//! next monitor may take over at once (the old pid is gone).

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vethbpf_common::{EVENT_DROP, EVENT_TRACE, MONITOR_LEASE_NS, Monitor, kind_bit};

use super::ObserveError;
use super::log::ProgramLog;
use super::names::Names;
use super::record::{EventRecord, LostRecord, Record};
use crate::datapath::events::{EventRing, Listener, RawEvent};
use crate::datapath::{Pins, program_info};
use crate::kernel::clock::monotonic_ns;
use crate::state::{Locked, StateDir};

/// What to monitor.
#[derive(Clone, Debug)]
pub struct MonitorRequest {
    pub drops: bool,
    pub traces: bool,
    /// Only events from or to this endpoint.
    pub endpoint: Option<String>,
    /// Only events from or to this remote node (its pod CIDR or its address).
    pub node: Option<String>,
    /// Also the program's diagnostics (aya-log).
    pub log: bool,
}

/// How often the lease is renewed, lost events counted and the pins checked.
const TICK: Duration = Duration::from_secs(1);
/// How long one wait for events lasts, so that a stop request is seen soon.
const POLL_MS: u16 = 200;
/// Records handled between two checks of the stop flag.
const BATCH: usize = 4096;

/// Whether the `MONITOR` entry belongs to a monitor that is listening now: it
/// wants events, its lease runs, and its process lives (a SIGKILLed monitor's entry
/// stays until the lease ends, but nobody reads the ring any more).
pub fn listening(entry: &Monitor) -> bool {
    entry.kinds != 0
        && entry.pid != 0
        && entry.deadline_ns > monotonic_ns()
        && process_alive(entry.pid)
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The `MONITOR` entry this process wrote; written back to zero when dropped (if it
/// is still ours).
struct Claim {
    listener: Listener,
    entry: Monitor,
}

impl Claim {
    fn renew(&mut self) -> Result<(), ObserveError> {
        self.entry.deadline_ns = monotonic_ns() + MONITOR_LEASE_NS;
        Ok(self.listener.set(&self.entry)?)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        match self.listener.get() {
            Ok(now) if now.pid == self.entry.pid => {
                if let Err(e) = self.listener.set(&Monitor::default()) {
                    tracing::warn!(error = %e, "monitor: cannot clear the listener entry; it lapses by itself within 10 s");
                }
            }
            _ => {}
        }
    }
}

/// A running monitor.
pub struct Session {
    req: MonitorRequest,
    pins: Pins,
    ring: EventRing,
    claim: Claim,
    names: Names,
    log: Option<ProgramLog>,
    start_ns: u64,
    lost_base: u64,
    lost_seen: u64,
    /// Lost in event maps followed before the current ones.
    lost_earlier: u64,
    /// Records of another build's layout, skipped.
    foreign: u64,
}

impl Session {
    /// Claims the event stream of the node in `locked` (the state lock is held only
    /// for this, so that two monitors starting at once cannot both claim it).
    pub fn start(
        locked: Locked,
        state_dir: &StateDir,
        req: MonitorRequest,
    ) -> Result<Session, ObserveError> {
        let node = locked.state.node.clone().ok_or(ObserveError::NotUp)?;
        let pins = Pins::new(&node.bpffs_dir);
        if !pins.is_loaded() {
            return Err(ObserveError::NotUp);
        }
        if let Some(name) = &req.endpoint
            && !locked.state.endpoints.contains_key(name)
        {
            return Err(ObserveError::UnknownEndpoint(name.clone()));
        }
        let ring = EventRing::open(&pins)?;
        let mut listener = Listener::open(&pins)?;
        let current = listener.get()?;
        let pid = std::process::id();
        if current.pid != pid && listening(&current) {
            return Err(ObserveError::Busy { pid: current.pid });
        }
        let now = monotonic_ns();
        let mut kinds = 0;
        if req.drops {
            kinds |= kind_bit(EVENT_DROP);
        }
        if req.traces {
            kinds |= kind_bit(EVENT_TRACE);
        }
        let entry = Monitor {
            deadline_ns: now + MONITOR_LEASE_NS,
            kinds,
            // Differs from the last session's, so every flow is news again.
            session: ((now >> 10) as u32 ^ current.session.rotate_left(7)) | 1,
            pid,
            _pad: 0,
        };
        let lost_base = listener.lost()?;
        listener.set(&entry)?;
        let claim = Claim { listener, entry };
        let log = if req.log {
            let id = program_info(&pins)?.id();
            Some(ProgramLog::attach(id).map_err(|source| ObserveError::Log { id, source })?)
        } else {
            None
        };
        let names = Names::load(state_dir)?;
        if let Some(name) = &req.node
            && !names.has_node(name)
        {
            return Err(ObserveError::UnknownNode(name.clone()));
        }
        drop(locked);
        Ok(Session {
            req,
            pins,
            ring,
            claim,
            names,
            log,
            start_ns: now,
            lost_base,
            lost_seen: lost_base,
            lost_earlier: 0,
            foreign: 0,
        })
    }

    /// Reads and reports events until `stop` is set, the output fails (a closed
    /// pipe ends the monitor quietly) or the datapath goes away.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        out: &mut dyn FnMut(&Record) -> io::Result<()>,
    ) -> Result<(), ObserveError> {
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.wait()?;
            self.read_events(out)?;
            if let Some(log) = &mut self.log {
                for line in log.drain() {
                    out(&Record::Log(line)).map_err(ObserveError::Output)?;
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick(out)?;
            }
        }
        // Whatever arrived before the stop, and the last losses.
        self.read_events(out)?;
        self.report_lost(out)
    }

    /// Waits until the ring (or the log) has records, or a short timeout.
    fn wait(&self) -> Result<(), ObserveError> {
        let mut fds = vec![PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        if let Some(log) = &self.log {
            fds.push(PollFd::new(log.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(ObserveError::Poll(e)),
        }
    }

    fn read_events(
        &mut self,
        out: &mut dyn FnMut(&Record) -> io::Result<()>,
    ) -> Result<(), ObserveError> {
        for _ in 0..BATCH {
            let Some(raw) = self.ring.next_event() else {
                return Ok(());
            };
            let ev = match raw {
                RawEvent::Event(ev) => ev,
                RawEvent::Foreign { len, version } => {
                    self.foreign += 1;
                    if self.foreign == 1 {
                        tracing::warn!(
                            len,
                            ?version,
                            "monitor: skipping events of another vethbpf build (run the monitor of the build that is loaded)"
                        );
                    }
                    continue;
                }
            };
            // Left in the ring by an earlier monitor that was killed.
            if ev.time_ns < self.start_ns {
                continue;
            }
            let wanted = match ev.kind {
                EVENT_DROP => self.req.drops,
                EVENT_TRACE => self.req.traces,
                _ => false,
            };
            if !wanted {
                continue;
            }
            let rec = EventRecord::new(&ev, &mut self.names);
            if let Some(name) = &self.req.endpoint
                && !rec.involves(name)
            {
                continue;
            }
            if let Some(name) = &self.req.node
                && rec.node.as_deref() != Some(name.as_str())
            {
                continue;
            }
            out(&Record::Event(Box::new(rec))).map_err(ObserveError::Output)?;
        }
        Ok(())
    }

    /// Once a second: renew the lease, report losses, notice a datapath that went
    /// away or a program that was replaced (its log is another ring).
    fn tick(&mut self, out: &mut dyn FnMut(&Record) -> io::Result<()>) -> Result<(), ObserveError> {
        if !self.pins.is_loaded() {
            return Err(ObserveError::Gone);
        }
        // `up --replace` made the event maps new (an upgrade whose maps differ): the
        // datapath now writes to those; move over, claim included.
        if !self.ring.is_pinned(&self.pins) || !self.claim.listener.is_pinned(&self.pins) {
            tracing::info!("monitor: the event maps were replaced; following them");
            self.ring = EventRing::open(&self.pins)?;
            let mut listener = Listener::open(&self.pins)?;
            listener.set(&self.claim.entry)?;
            self.lost_earlier += self.lost_seen - self.lost_base;
            self.lost_base = listener.lost()?;
            self.lost_seen = self.lost_base;
            // The old entry's maps are no longer the datapath's: nothing to clear.
            let old = std::mem::replace(&mut self.claim.listener, listener);
            drop(old);
        }
        self.claim.renew()?;
        self.report_lost(out)?;
        if let Some(log) = &mut self.log {
            let id = program_info(&self.pins)?.id();
            if id != log.program_id() {
                *log = ProgramLog::attach(id).map_err(|source| ObserveError::Log { id, source })?;
            }
        }
        Ok(())
    }

    fn report_lost(
        &mut self,
        out: &mut dyn FnMut(&Record) -> io::Result<()>,
    ) -> Result<(), ObserveError> {
        let lost = self.claim.listener.lost()?;
        if lost > self.lost_seen {
            let rec = LostRecord::new(
                lost - self.lost_seen,
                self.lost_earlier + lost - self.lost_base,
            );
            self.lost_seen = lost;
            out(&Record::Lost(rec)).map_err(ObserveError::Output)?;
        }
        Ok(())
    }
}
