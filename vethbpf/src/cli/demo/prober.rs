//! Small connectivity probes that run from inside a network namespace: one ICMP
//! echo ([`icmp_echo`]) and one TCP echo exchange ([`tcp_exchange`]).
//!
//! A socket belongs to the network namespace of the thread that created it, for its
//! whole life. So each probe creates its sockets on a [`netns::run_in`] thread that
//! has entered the right namespace, returns them, and uses them from ordinary
//! threads afterwards. Every wait is bounded by the caller's timeout, and every
//! thread a probe starts is joined before it returns.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde::Serialize;

use vethbpf::kernel::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what}: nothing within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "echoed data differs from what was sent at byte {offset}: sent {sent:#04x}, got {got:#04x}"
    )]
    Mismatch { offset: usize, sent: u8, got: u8 },
    #[error("the peer closed the connection after {got} of {expected} bytes")]
    Short { expected: usize, got: usize },
    #[error("the peer sent more than the {expected} bytes it was sent")]
    Excess { expected: usize },
    #[error("a probe thread panicked: {0}")]
    Panicked(String),
}

impl ProbeError {
    fn socket(op: &'static str, source: impl Into<io::Error>) -> Self {
        Self::Socket {
            op,
            source: source.into(),
        }
    }
}

/// Maps an I/O error of a socket with a read/write timeout: the kernel reports an
/// expired `SO_RCVTIMEO`/`SO_SNDTIMEO` as EAGAIN, which here means "timed out".
fn io_err(op: &'static str, after: Duration) -> impl FnOnce(io::Error) -> ProbeError {
    move |e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ProbeError::Timeout { what: op, after }
        }
        _ => ProbeError::socket(op, e),
    }
}

/// One overall time limit, handed out piecewise to each blocking call.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    fn after(total: Duration) -> Self {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    /// The time left, never zero (a zero socket timeout would mean "forever").
    fn remaining(&self, what: &'static str) -> Result<Duration, ProbeError> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ProbeError::Timeout {
                what,
                after: self.total,
            })
        } else {
            Ok(left)
        }
    }

    /// Sets `SO_RCVTIMEO` on `fd` to the time left. Linux honours it for
    /// `recvfrom` and `accept` alike (EAGAIN on expiry), so no poll loop is needed.
    fn arm_receive(&self, fd: &impl AsFd, what: &'static str) -> Result<(), ProbeError> {
        let left = self.remaining(what)?;
        // Rounded up: a zero timeval would mean "no timeout".
        let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
        setsockopt(fd, sockopt::ReceiveTimeout, &TimeVal::microseconds(micros))
            .map_err(|e| ProbeError::socket("set SO_RCVTIMEO", e))
    }
}

// ---- ICMP ----

/// The answer to one ICMP echo request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EchoReply {
    /// From sending the request to receiving the matching reply.
    pub rtt: Duration,
    /// The TTL of the reply's IP header as it arrived: the sender's initial TTL
    /// (64 on Linux) minus one for every hop that routed it, the eBPF fast path
    /// included.
    pub ttl: u8,
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_HEADER: usize = 8;
const PAYLOAD_LEN: usize = 48;

/// Sequence numbers, unique within this process; with the pid as the identifier
/// they tell our replies apart from other pings in the same namespace.
static SEQUENCE: AtomicU16 = AtomicU16::new(1);

/// The RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Truncation is the point: the folded sum fits in 16 bits.
    !(sum as u16)
}

/// An echo request with a checksum (raw ICMP sockets send it as given).
fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(ICMP_HEADER + payload.len());
    pkt.extend_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0]);
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// If `pkt` (as a raw socket receives it: IPv4 header, then ICMP) is the echo reply
/// from `src` to our request, returns its TTL.
fn match_reply(pkt: &[u8], src: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Option<u8> {
    let first = *pkt.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || pkt.len() < ihl + ICMP_HEADER {
        return None;
    }
    let ttl = pkt[8];
    let from = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let icmp = &pkt[ihl..];
    let ok = from == src
        && pkt[9] == libc::IPPROTO_ICMP as u8
        && icmp[0] == ICMP_ECHO_REPLY
        && icmp[1] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && &icmp[ICMP_HEADER..] == payload;
    ok.then_some(ttl)
}

/// Sends one ICMP echo request to `dst` from inside the namespace `netns` and waits
/// up to `timeout` for the matching reply. Replies from elsewhere, to other
/// requests, or of other ICMP types are ignored. Needs CAP_NET_RAW.
pub fn icmp_echo(netns: &Path, dst: Ipv4Addr, timeout: Duration) -> Result<EchoReply, ProbeError> {
    let deadline = Deadline::after(timeout);
    // Created on a thread inside the namespace; it stays there after the thread ends.
    let sock: OwnedFd = netns::run_in(netns, || {
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .map_err(|e| ProbeError::socket("raw ICMP socket", e))
    })??;

    // The low 16 bits of the pid: what ping(8) uses as its identifier too.
    let id = (std::process::id() & 0xffff) as u16;
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..8].copy_from_slice(b"vethbpf!");
    for (i, b) in payload.iter_mut().enumerate().skip(8) {
        *b = (i as u8) ^ (seq as u8);
    }
    let request = echo_request(id, seq, &payload);

    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let sent_at = Instant::now();
    sendto(sock.as_raw_fd(), &request, &to, MsgFlags::empty())
        .map_err(|e| ProbeError::socket("send ICMP echo request", e))?;

    let mut buf = [0u8; 1500];
    loop {
        deadline.arm_receive(&sock, "waiting for the ICMP echo reply")?;
        let n = match recvfrom::<SockaddrIn>(sock.as_raw_fd(), &mut buf) {
            Ok((n, _)) => n,
            // EAGAIN: SO_RCVTIMEO expired; the next `arm_receive` reports the
            // timeout. EINTR: a signal (e.g. Ctrl-C that the demo handles).
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(ProbeError::socket("receive ICMP", e)),
        };
        if let Some(ttl) = match_reply(&buf[..n], dst, id, seq, &payload) {
            return Ok(EchoReply {
                rtt: sent_at.elapsed(),
                ttl,
            });
        }
        tracing::trace!(len = n, "ignoring an ICMP packet that is not our reply");
    }
}

// ---- TCP ----

/// What one [`tcp_exchange`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TcpReport {
    /// Bytes sent by the client and echoed back intact by the server.
    pub bytes: usize,
    /// From the start of the connect to the last echoed byte verified.
    pub elapsed: Duration,
    /// The server's listening address.
    pub server: SocketAddrV4,
    /// The client's address as the server saw it (no NAT on the way: the client's
    /// own address).
    pub client: SocketAddrV4,
}

/// The test pattern: byte `i` of the stream. Not periodic in any small power of
/// two, so a chunk repeated or lost shows as a mismatch.
fn pattern(i: usize) -> u8 {
    (i ^ (i >> 8) ^ (i >> 17)).wrapping_mul(31) as u8
}

fn join<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    handle.join().unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(ProbeError::Panicked(msg))
    })
}

/// The server side: accept one connection, echo everything until the client shuts
/// its sending side, then close. Returns the client's address.
fn serve_echo(listener: &TcpListener, deadline: Deadline) -> Result<SocketAddrV4, ProbeError> {
    let (mut conn, peer) = loop {
        deadline.arm_receive(listener, "waiting for the TCP connection")?;
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => return Err(ProbeError::socket("accept", e)),
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        conn.set_read_timeout(Some(deadline.remaining("server read")?))
            .map_err(|e| ProbeError::socket("set read timeout", e))?;
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("server read", deadline.total)(e)),
        };
        conn.set_write_timeout(Some(deadline.remaining("server write")?))
            .map_err(|e| ProbeError::socket("set write timeout", e))?;
        conn.write_all(&buf[..n])
            .map_err(io_err("server write", deadline.total))?;
    }
    match peer {
        SocketAddr::V4(a) => Ok(a),
        // Cannot happen for a listener bound to an IPv4 address.
        SocketAddr::V6(a) => Err(ProbeError::socket(
            "accept",
            io::Error::other(format!("unexpected IPv6 peer {a}")),
        )),
    }
}

/// Sends `bytes` of the pattern and shuts the sending side.
fn send_pattern(mut conn: &TcpStream, bytes: usize, deadline: Deadline) -> Result<(), ProbeError> {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        for (j, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + j);
        }
        conn.set_write_timeout(Some(deadline.remaining("client write")?))
            .map_err(|e| ProbeError::socket("set write timeout", e))?;
        conn.write_all(&chunk[..n])
            .map_err(io_err("client write", deadline.total))?;
        sent += n;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| ProbeError::socket("shutdown", e))
}

/// Reads the echo back, checks every byte, and expects the server to close after
/// exactly `bytes`.
fn receive_pattern(
    mut conn: &TcpStream,
    bytes: usize,
    deadline: Deadline,
) -> Result<(), ProbeError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        conn.set_read_timeout(Some(deadline.remaining("client read")?))
            .map_err(|e| ProbeError::socket("set read timeout", e))?;
        let n = match conn.read(&mut buf) {
            Ok(0) if got == bytes => return Ok(()),
            Ok(0) => {
                return Err(ProbeError::Short {
                    expected: bytes,
                    got,
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("client read", deadline.total)(e)),
        };
        if got + n > bytes {
            return Err(ProbeError::Excess { expected: bytes });
        }
        if let Some((j, &b)) = buf[..n]
            .iter()
            .enumerate()
            .find(|&(j, &b)| b != pattern(got + j))
        {
            return Err(ProbeError::Mismatch {
                offset: got + j,
                sent: pattern(got + j),
                got: b,
            });
        }
        got += n;
    }
}

/// Echoes `bytes` bytes over one TCP connection: a listener on `server_ip` (an
/// ephemeral port) inside `server_netns`, a client connecting from inside
/// `client_netns`. The client sends a known pattern, the server echoes it, the
/// client verifies every byte. The whole exchange is bounded by `timeout`.
pub fn tcp_exchange(
    server_netns: &Path,
    server_ip: Ipv4Addr,
    client_netns: &Path,
    bytes: usize,
    timeout: Duration,
) -> Result<TcpReport, ProbeError> {
    let deadline = Deadline::after(timeout);
    let listener = netns::run_in(server_netns, || {
        TcpListener::bind(SocketAddrV4::new(server_ip, 0))
            .map_err(|e| ProbeError::socket("listen", e))
    })??;
    let server = match listener.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        Ok(SocketAddr::V6(a)) => {
            return Err(ProbeError::socket(
                "listen",
                io::Error::other(format!("unexpected IPv6 address {a}")),
            ));
        }
        Err(e) => return Err(ProbeError::socket("listener address", e)),
    };

    std::thread::scope(|s| {
        let server_thread = std::thread::Builder::new()
            .name("probe-tcp-server".into())
            .spawn_scoped(s, || serve_echo(&listener, deadline))
            .map_err(|e| ProbeError::socket("start the server thread", e))?;

        let started = Instant::now();
        let client = (|| -> Result<Duration, ProbeError> {
            let connect_timeout = deadline.remaining("connect")?;
            let conn = netns::run_in(client_netns, || {
                TcpStream::connect_timeout(&SocketAddr::V4(server), connect_timeout)
                    .map_err(io_err("connect", deadline.total))
            })??;
            let writer = std::thread::Builder::new()
                .name("probe-tcp-client".into())
                .spawn_scoped(s, {
                    // A second descriptor of the same socket: the writer owns it,
                    // so it does not borrow from this closure.
                    let conn = conn
                        .try_clone()
                        .map_err(|e| ProbeError::socket("duplicate the socket", e))?;
                    move || send_pattern(&conn, bytes, deadline)
                })
                .map_err(|e| ProbeError::socket("start the client thread", e))?;
            let received = receive_pattern(&conn, bytes, deadline);
            if received.is_err() {
                // Unblocks the writer (and, through the closed connection, the
                // server) right away instead of at the deadline.
                let _ = conn.shutdown(Shutdown::Both);
            }
            let sent = join(writer);
            received?;
            sent?;
            Ok(started.elapsed())
        })();
        // If the client never connected, the server gives up at the deadline; its
        // error is then only a consequence, so the client's error is the one to
        // report.
        let served = join(server_thread);
        let elapsed = client?;
        let client_addr = served?;
        Ok(TcpReport {
            bytes,
            elapsed,
            server,
            client: client_addr,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testing::TestNetns;
    use ipnet::Ipv4Net;
    use std::os::fd::AsFd;
    use vethbpf::kernel::netlink::{Netlink, RtNetlink};

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2; checksum = !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // A packet with its checksum filled in sums to zero.
        let pkt = echo_request(0x1234, 7, b"odd");
        assert_eq!(checksum(&pkt), 0);
    }

    fn reply_packet(src: Ipv4Addr, ttl: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, 1, 0, 0];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&[10, 0, 0, 1]);
        let mut icmp = echo_request(id, seq, payload);
        icmp[0] = ICMP_ECHO_REPLY;
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn only_the_matching_reply_matches() {
        let src = Ipv4Addr::new(10, 244, 0, 2);
        let p = b"payload";
        assert_eq!(
            match_reply(&reply_packet(src, 63, 9, 3, p), src, 9, 3, p),
            Some(63)
        );
        let other = Ipv4Addr::new(10, 244, 0, 3);
        assert_eq!(
            match_reply(&reply_packet(other, 63, 9, 3, p), src, 9, 3, p),
            None
        );
        assert_eq!(
            match_reply(&reply_packet(src, 63, 8, 3, p), src, 9, 3, p),
            None
        );
        assert_eq!(
            match_reply(&reply_packet(src, 63, 9, 4, p), src, 9, 3, p),
            None
        );
        assert_eq!(
            match_reply(&reply_packet(src, 63, 9, 3, b"other!!"), src, 9, 3, p),
            None
        );
        // Our own request, seen on a local destination, is not a reply.
        let mut req = reply_packet(src, 64, 9, 3, p);
        req[20] = ICMP_ECHO_REQUEST;
        assert_eq!(match_reply(&req, src, 9, 3, p), None);
        // Truncated and non-IPv4 input.
        assert_eq!(match_reply(&[], src, 9, 3, p), None);
        assert_eq!(match_reply(&[0x45; 10], src, 9, 3, p), None);
        assert_eq!(match_reply(&[0x65; 40], src, 9, 3, p), None);
    }

    #[test]
    fn pattern_is_not_short_periodic() {
        let a: Vec<u8> = (0..65536).map(pattern).collect();
        for period in [1, 2, 256, 1024, 4096, 16384] {
            assert_ne!(a[..period * 2], a[period..period * 3], "period {period}");
        }
    }

    fn lo_up(ns: &TestNetns) {
        netns::with_netlink_in(&ns.path, |nl: &mut RtNetlink| {
            let lo = nl.link_by_name("lo")?.expect("lo exists");
            nl.set_link_up(lo.index)?;
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
    }

    /// Two namespaces joined by a veth pair: 10.77.0.1/24 in `a`, 10.77.0.2/24 in `b`.
    fn linked_pair() -> (TestNetns, TestNetns) {
        let a = TestNetns::new("prb");
        let b = TestNetns::new("prb");
        lo_up(&a);
        lo_up(&b);
        let b_fd = netns::open(&b.path).unwrap();
        netns::with_netlink_in(&a.path, |nl: &mut RtNetlink| {
            let idx = nl.add_veth("pa", "pb")?;
            let peer = nl.link_by_name("pb")?.expect("peer exists");
            nl.move_link_to_netns(peer.index, b_fd.as_fd())?;
            nl.add_address(idx, "10.77.0.1/24".parse::<Ipv4Net>()?)?;
            nl.set_link_up(idx)?;
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
        netns::with_netlink_in(&b.path, |nl: &mut RtNetlink| {
            let pb = nl.link_by_name("pb")?.expect("pb moved here");
            nl.add_address(pb.index, "10.77.0.2/24".parse::<Ipv4Net>()?)?;
            nl.set_link_up(pb.index)?;
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
        (a, b)
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn icmp_and_tcp_across_namespaces() {
        let (a, b) = linked_pair();
        let t = Duration::from_secs(3);
        // One hop, nothing routes in between: the peer's initial TTL.
        let r = icmp_echo(&a.path, B, t).unwrap();
        assert_eq!(r.ttl, 64);
        assert!(r.rtt < t);
        let r = icmp_echo(&b.path, A, t).unwrap();
        assert_eq!(r.ttl, 64);

        // The listener really lives in `b`: its address exists only there.
        let rep = tcp_exchange(&b.path, B, &a.path, 200_000, t).unwrap();
        assert_eq!(rep.bytes, 200_000);
        assert_eq!(*rep.server.ip(), B);
        assert_eq!(*rep.client.ip(), A);
        let rep = tcp_exchange(&a.path, A, &b.path, 0, t).unwrap();
        assert_eq!(rep.bytes, 0);
    }

    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn unanswered_ping_times_out() {
        let (a, _b) = linked_pair();
        // On the link's subnet, but nobody has it: ARP goes unanswered.
        let t = Duration::from_millis(300);
        let start = Instant::now();
        match icmp_echo(&a.path, Ipv4Addr::new(10, 77, 0, 9), t) {
            Err(ProbeError::Timeout { after, .. }) => assert_eq!(after, t),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn tcp_to_an_unreachable_listener_fails_in_time() {
        let (a, b) = linked_pair();
        // A listener address that does not exist in the server namespace.
        assert!(matches!(
            tcp_exchange(&b.path, A, &a.path, 10, Duration::from_secs(1)),
            Err(ProbeError::Socket { op: "listen", .. })
        ));
        // A server that exists but the client namespace has no route to it: the
        // connect fails at once (no route) or at the deadline, and the server
        // thread is joined either way.
        let lonely = TestNetns::new("prb");
        lo_up(&lonely);
        let start = Instant::now();
        let r = tcp_exchange(&b.path, B, &lonely.path, 10, Duration::from_millis(500));
        assert!(r.is_err(), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
