//! Hand-made frames from inside a pod: an AF_PACKET socket opened in a namespace sends
//! them out of an interface exactly as given (tags, bad checksums and all), and a
//! [`Sniffer`] in another namespace collects what arrives there.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{eth, ones_sum};

/// Every protocol (linux/if_ether.h).
const ETH_P_ALL: u16 = 0x0003;
/// `sockaddr_ll.sll_pkttype` of a frame the socket's own host sent.
const PACKET_OUTGOING: u8 = 4;

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Opens the socket inside `netns` (a path such as /run/netns/NAME), bound to
    /// `dev`. A receiving socket gets every frame of the interface, with a short
    /// receive timeout; a sending one gets none.
    pub fn open(netns: &Path, dev: &str, receive: bool) -> PacketSocket {
        let dev = std::ffi::CString::new(dev).expect("interface name");
        let fd = vethbpf::kernel::netns::run_in(netns, move || -> io::Result<OwnedFd> {
            let protocol = if receive { ETH_P_ALL } else { 0 };
            // SAFETY: plain syscalls with valid arguments; the fd is owned right away.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(protocol.to_be()),
                );
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                if receive {
                    let tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 50_000,
                    };
                    if libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast(),
                        size_of::<libc::timeval>() as u32,
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                let ifindex = libc::if_nametoindex(dev.as_ptr());
                if ifindex == 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = protocol.to_be();
                sll.sll_ifindex = ifindex as i32;
                if libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(fd)
            }
        });
        let fd = fd.unwrap_or_else(|e| panic!("entering {}: {e}", netns.display()));
        PacketSocket(fd.unwrap_or_else(|e| panic!("AF_PACKET socket in {}: {e}", netns.display())))
    }

    /// Sends `frame` as it is; panics unless all of it went out.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send of a {}-byte frame: {}",
            frame.len(),
            io::Error::last_os_error()
        );
    }
}

/// Collects every frame arriving at one interface of a namespace (not those it sends).
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Vec<u8>>, String>>,
}

impl Sniffer {
    /// Starts watching; the socket is bound when this returns.
    pub fn start(netns: &Path, dev: &str) -> Sniffer {
        let socket = PacketSocket::open(netns, dev, true);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::SeqCst) {
                // SAFETY: valid buffers and lengths.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut sl = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: as above.
                let n = unsafe {
                    libc::recvfrom(
                        socket.0.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut sll).cast(),
                        &mut sl,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                        // Reported by finish(), not a panic on a detached thread.
                        _ => return Err(e.to_string()),
                    }
                }
                if sll.sll_pkttype != PACKET_OUTGOING {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            Ok(frames)
        });
        Sniffer { stop, thread }
    }

    /// Waits a moment for frames in flight, stops, and returns what arrived.
    pub fn finish(self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("sniffer thread")
            .unwrap_or_else(|e| panic!("the sniffer failed: {e}"))
    }
}

/// An Ethernet/IPv4/UDP frame with a correct IPv4 header checksum and no UDP
/// checksum (allowed over IPv4).
pub fn ipv4_udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    eth(dst_mac, src_mac, 0x0800, &ipv4_udp(src, dst, payload))
}

/// The IPv4/UDP packet of [`ipv4_udp_frame`], without the Ethernet header.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = Vec::with_capacity(20 + udp_len);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let check = !ones_sum(&p);
    p[10..12].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&9u16.to_be_bytes()); // discard
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Whether `needle` occurs in `frame`.
pub fn contains(frame: &[u8], needle: &[u8]) -> bool {
    frame.windows(needle.len()).any(|w| w == needle)
}
