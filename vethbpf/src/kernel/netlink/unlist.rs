//! Deleting a link without waiting for the kernel to free it.
//!
//! An `RTM_DELLINK` of a veth takes 10-45 ms on these machines, and almost all of
//! it comes after the link is gone: the kernel unlists both ends, detaches their
//! programs and qdiscs, flushes their routes and neighbours and announces the
//! deletion (`RTM_DELLINK` to `RTNLGRP_LINK`) within ~1 ms, then, still inside the
//! caller's `sendmsg`, waits in `netdev_run_todo` for an RCU barrier and the last
//! references before it frees the memory. Nobody can see or reuse anything of the
//! link during that wait, but every pod deletion used to sit through it.
//!
//! So the request is sent by a detached grandchild process, and the caller returns
//! as soon as the kernel announces the deletion (or refuses it): the barrier is
//! waited for by a process nobody waits for. The grandchild keeps only its netlink
//! socket and the pipe it reports on (no state lock, no stdout a CNI runtime reads
//! to EOF), does nothing but raw system calls on buffers built before the fork (it
//! may come from a multi-threaded process), and exits when the kernel answers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How a detached deletion ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unlisted {
    /// The link is gone from its namespace.
    Gone,
    /// The kernel refused the deletion with this errno.
    Refused(i32),
}

/// Longest wait for the kernel's answer. A deletion that waits for an RCU barrier
/// takes tens of ms; the unlisting itself is a few.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The sequence number of the one request on the grandchild's socket.
const SEQ: u32 = 1;

/// `struct nlmsghdr`: length, type, flags, sequence, port.
const NLMSG_HDRLEN: usize = 16;

/// Deletes link `index` of the calling thread's network namespace and returns once
/// the kernel has unlisted it (or refused). `Err` means nothing was asked of the
/// kernel, or the answer could not be read; the caller may fall back to a plain
/// request.
pub(super) fn del_link(index: u32) -> io::Result<Unlisted> {
    // Both sockets in this thread's namespace, the watch subscribed before anything
    // is sent so that it cannot miss the announcement.
    let mut watch = Socket::new(NETLINK_ROUTE)?;
    watch.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
    let mut request = Socket::new(NETLINK_ROUTE)?;
    request.bind_auto()?;
    request.connect(&SocketAddr::new(0, 0))?;
    request.set_cap_ack(true)?;

    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(msg));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = SEQ;
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);

    let (report, report_tx) = pipe()?;
    spawn_detached(request.as_raw_fd(), report_tx.as_raw_fd(), &bytes)?;
    // The grandchild has its own copies; closing ours lets `report` see EOF if it
    // dies without answering.
    drop(report_tx);
    drop(request);
    wait(&mut watch, &report, index)
}

/// A pipe, both ends close-on-exec (nothing here execs; it keeps them out of
/// anything else the process may run).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks a child that forks the grandchild and exits at once (reaped here, so no
/// zombie is left whatever the caller does about `SIGCHLD`); the grandchild, an
/// orphan from birth, sends `request` on `sock`, writes the kernel's errno (0:
/// done) to `report` and exits.
fn spawn_detached(sock: RawFd, report: RawFd, request: &[u8]) -> io::Result<()> {
    // SAFETY: after fork the children run only `grandchild` and `_exit`, which make
    // raw system calls on memory that exists in both (async-signal-safe), so a lock
    // another thread held at the fork cannot block them.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: as above; this process only forks once more and exits.
        unsafe {
            let grandchild = libc::fork();
            if grandchild == 0 {
                grandchild_main(sock, report, request);
            }
            libc::_exit(if grandchild < 0 { 1 } else { 0 });
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int; `child` is our own child.
        if unsafe { libc::waitpid(child, &mut status, 0) } == child {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            // Reaped already (a process that ignores SIGCHLD): whether the grandchild
            // runs shows on the pipe, which ends without an answer if it does not.
            Some(libc::ECHILD) => return Ok(()),
            _ => return Err(err),
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "could not fork the process that deletes the link",
        ))
    }
}

/// The grandchild: nothing but raw system calls, then `_exit`.
///
/// # Safety
/// Only to be called in a freshly forked child, which it ends.
unsafe fn grandchild_main(sock: RawFd, report: RawFd, request: &[u8]) -> ! {
    // Every other descriptor goes first: the parent's state lock (an flock, held as
    // long as any copy is open), the del journal's lock, a CNI runtime's stdout pipe.
    let (lo, hi) = (sock.min(report) as u32, sock.max(report) as u32);
    // SAFETY: closing descriptors this process does not use; ranges may be empty.
    unsafe {
        if lo > 0 {
            libc::close_range(0, lo - 1, 0);
        }
        if hi > lo + 1 {
            libc::close_range(lo + 1, hi - 1, 0);
        }
        libc::close_range(hi + 1, u32::MAX, 0);
        // A parent that returned on the announcement has closed the pipe: the
        // report then fails with EPIPE instead of killing this process.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let errno = send_and_read_ack(sock, request);
    let bytes = errno.to_ne_bytes();
    // SAFETY: writing 4 bytes from a local array; the result does not matter: a
    // parent that is gone needs no report.
    unsafe {
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// Sends the request and returns the errno of its ack (0: done).
fn send_and_read_ack(sock: RawFd, request: &[u8]) -> i32 {
    loop {
        // SAFETY: `request` is a valid buffer of its length.
        let n = unsafe { libc::send(sock, request.as_ptr().cast(), request.len(), 0) };
        if n >= 0 {
            break;
        }
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return errno;
        }
    }
    // An ack with capped payload is 36 bytes; extended acks add a few attributes.
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is a valid, writable buffer of its length.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if errno == libc::EINTR {
                continue;
            }
            return errno;
        }
        if let Some(errno) = ack_errno(&buf[..n as usize]) {
            return errno;
        }
    }
}

/// The errno of the ack to [`SEQ`] in a datagram (0: done), if it holds one.
fn ack_errno(datagram: &[u8]) -> Option<i32> {
    messages(datagram).find_map(|(kind, seq, payload)| {
        (kind == libc::NLMSG_ERROR as u16 && seq == SEQ && payload.len() >= 4)
            .then(|| -i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]))
    })
}

/// Whether a datagram announces the deletion of link `index`.
fn announces_deletion(datagram: &[u8], index: u32) -> bool {
    messages(datagram).any(|(kind, _, payload)| {
        // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change.
        kind == libc::RTM_DELLINK
            && payload.len() >= 8
            && u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) == index
    })
}

/// The netlink messages of a datagram: (type, sequence number, payload).
fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((kind, seq, payload))
    })
}

/// Waits for whichever comes first: the kernel announcing the deletion on `watch`,
/// or the grandchild's report of the kernel's answer on `report`.
fn wait(watch: &mut Socket, report: &OwnedFd, index: u32) -> io::Result<Unlisted> {
    let deadline = Instant::now() + TIMEOUT;
    let mut watching = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if watching { watch.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer to the deletion of link index {index} in {TIMEOUT:?}"),
            ));
        }
        // SAFETY: `fds` is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis().min(60_000) as i32) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if fds[0].revents != 0 {
            let mut bytes = [0u8; 4];
            // SAFETY: reading at most 4 bytes into a local array.
            let got = unsafe { libc::read(report.as_raw_fd(), bytes.as_mut_ptr().cast(), 4) };
            return match got {
                4 => match i32::from_ne_bytes(bytes) {
                    0 => Ok(Unlisted::Gone),
                    errno => Ok(Unlisted::Refused(errno)),
                },
                _ => Err(io::Error::other(
                    "the process deleting the link ended without an answer",
                )),
            };
        }
        if fds[1].revents != 0 {
            match watch.recv(&mut &mut buf[..], 0) {
                Ok(len) if announces_deletion(&buf[..len], index) => return Ok(Unlisted::Gone),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS (announcements were dropped, ours may be among them) or
                // worse: the grandchild's report still comes, after the barrier.
                Err(_) => watching = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize((m.len() + 3) & !3, 0);
        m
    }

    fn ifinfomsg(index: u32) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        p
    }

    #[test]
    fn a_deletion_is_recognised_only_for_its_link() {
        let mut d = message(libc::RTM_NEWLINK, 0, &ifinfomsg(7));
        d.extend(message(libc::RTM_DELLINK, 0, &ifinfomsg(8)));
        assert!(!announces_deletion(&d, 7), "a new link is no deletion");
        assert!(announces_deletion(&d, 8));
        assert!(!announces_deletion(&d, 9));
        assert!(!announces_deletion(&d[..d.len() - 4], 8), "truncated");
    }

    #[test]
    fn the_ack_to_our_request_carries_the_errno() {
        let err = |code: i32| {
            let mut p = code.to_ne_bytes().to_vec();
            p.extend_from_slice(&[0; 16]);
            p
        };
        assert_eq!(ack_errno(&message(2, SEQ, &err(0))), Some(0));
        assert_eq!(
            ack_errno(&message(2, SEQ, &err(-libc::ENODEV))),
            Some(libc::ENODEV)
        );
        assert_eq!(ack_errno(&message(2, SEQ + 1, &err(-1))), None, "not ours");
        assert_eq!(ack_errno(&message(libc::RTM_DELLINK, SEQ, &err(0))), None);
    }
}
