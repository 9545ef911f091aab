//! Datapath measurements between pod A (client) and pod B (server) of one contender:
//! sockperf TCP ping-pong latency (over IPv6 the same ping-pong from a Rust client
//! and server: Debian's sockperf 3.7 has no IPv6), iperf3 throughput with CPU
//! accounting, and a TCP connect/accept rate from a Rust client and server on
//! namespace threads.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use super::{
    report::DpSample,
    sys::{self, in_ns},
    topo::{CONNECT_PORT, Contender, IPERF_PORT, PINGPONG_PORT, SOCKPERF_PORT},
};

/// One round of contender `c`: ping-pong latency, 1- and 4-stream throughput and
/// the connect rate. A failed measurement is recorded in the sample's `errors` and
/// the round goes on: one flaky figure should not cost the whole run. Only an
/// interrupt (Ctrl-C) is an error.
pub fn sample(c: &Contender, round: u32, secs: u32, connect_secs: u32) -> Result<DpSample> {
    sys::check_interrupt()?;
    let mut errors = Vec::new();
    let mut note = |what: &str, e: anyhow::Error| errors.push(format!("{what}: {e:#}"));
    let latency = latency(c, secs).map_err(|e| note("latency", e)).ok();
    let tput_1 = throughput(c, secs, 1).map_err(|e| note("1-stream", e)).ok();
    let tput_4 = throughput(c, secs, 4).map_err(|e| note("4-stream", e)).ok();
    let connect = connect_rate(c, connect_secs)
        .map_err(|e| note("connect", e))
        .ok();
    sys::check_interrupt()?;
    Ok(DpSample {
        round,
        contender: c.name,
        latency,
        tput_1,
        tput_4,
        connect,
        errors,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Round-trip time percentiles of one run, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub avg_us: f64,
    pub observations: u64,
    /// `sockperf` (IPv4) or `pingpong` (IPv6, [`pingpong`]).
    pub tool: &'static str,
}

/// sockperf TCP ping-pong (14-byte messages, one outstanding) for `secs` seconds,
/// round-trip times (`--full-rtt`). sockperf spends its first 400 ms warming up.
/// Client and server each on a CPU of their own ([`sys::latency_cpus`]).
pub fn latency(c: &Contender, secs: u32) -> Result<Latency> {
    if c.server_ip.is_ipv6() {
        return pingpong(c, secs);
    }
    let cpu = sys::latency_cpus().map(|(client, _)| client);
    let mut cmd = sys::in_ns_on_cpu(&c.client_ns, cpu, "sockperf");
    cmd.args([
        "pp",
        "--tcp",
        "-i",
        &c.server_ip.to_string(),
        "-p",
        &SOCKPERF_PORT.to_string(),
    ])
    .args(["-t", &secs.to_string(), "--full-rtt"]);
    let out = sys::run_limited(&mut cmd, Duration::from_secs(u64::from(secs) + 20))?;
    parse_sockperf(&out).with_context(|| format!("parsing sockperf output:\n{out}"))
}

fn parse_sockperf(out: &str) -> Result<Latency> {
    let clean = strip_ansi(out);
    let after_eq = |line: &str| -> Option<f64> { line.rsplit('=').next()?.trim().parse().ok() };
    let (mut p50, mut p99, mut avg, mut obs) = (None, None, None, None);
    for line in clean.lines() {
        if line.contains("percentile 50.000") {
            p50 = after_eq(line);
        } else if line.contains("percentile 99.000") {
            p99 = after_eq(line);
        } else if let Some(rest) = line.split("avg-rtt=").nth(1) {
            avg = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.split("Total ").nth(1) {
            obs = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    Ok(Latency {
        p50_us: p50.context("no 50th percentile")?,
        p99_us: p99.context("no 99th percentile")?,
        avg_us: avg.context("no avg-rtt")?,
        observations: obs.unwrap_or(0),
        tool: "sockperf",
    })
}

/// Message size of the ping-pong, as sockperf's default.
const PINGPONG_MSG: usize = 14;
/// Not measured at the start, as sockperf's warm-up.
const PINGPONG_WARMUP: Duration = Duration::from_millis(400);

/// sockperf's TCP ping-pong, done by a Rust client in pod A and server in pod B
/// (threads `setns`'d into their pods): one 14-byte message outstanding, Nagle
/// off, round-trip times of every exchange after a 400 ms warm-up.
pub fn pingpong(c: &Contender, secs: u32) -> Result<Latency> {
    let addr = SocketAddr::from((c.server_ip, PINGPONG_PORT));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let cpus = sys::latency_cpus();
    let server = sys::in_netns_thread(&c.server_ns, move || {
        sys::pin_thread(cpus.map(|(_, server)| server))?;
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        let _ = ready_tx.send(());
        if !readable(&listener, 5000)? {
            bail!("no ping-pong client within 5 s");
        }
        let (mut s, _) = listener.accept().context("accept")?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; PINGPONG_MSG];
        // Until the client closes (EOF ends read_exact with an error).
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).context("echo")?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("ping-pong server did not start"))?;
    let client = sys::in_netns_thread(&c.client_ns, move || {
        sys::pin_thread(cpus.map(|(client, _)| client))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let msg = [0x5au8; PINGPONG_MSG];
        let mut buf = [0u8; PINGPONG_MSG];
        let mut rtts: Vec<u32> = Vec::with_capacity(1 << 20);
        let start = Instant::now();
        let end = PINGPONG_WARMUP + Duration::from_secs(u64::from(secs));
        while start.elapsed() < end && !sys::interrupted() {
            let t = Instant::now();
            s.write_all(&msg).context("ping")?;
            s.read_exact(&mut buf).context("pong")?;
            if start.elapsed() > PINGPONG_WARMUP {
                rtts.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            }
        }
        Ok(rtts)
    });
    let rtts = client.and_then(|h| h.join().map_err(|_| anyhow!("client thread panicked"))?);
    let server_res = server
        .join()
        .map_err(|_| anyhow!("server thread panicked"))?;
    let mut rtts = rtts?;
    server_res?;
    sys::check_interrupt()?;
    if rtts.is_empty() {
        bail!("no ping-pong exchange completed");
    }
    rtts.sort_unstable();
    let pct = |p: f64| f64::from(rtts[((rtts.len() - 1) as f64 * p) as usize]) / 1e3;
    Ok(Latency {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        avg_us: rtts.iter().map(|r| f64::from(*r)).sum::<f64>() / rtts.len() as f64 / 1e3,
        observations: rtts.len() as u64,
        tool: "pingpong",
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // Skip to the end of the CSI sequence (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Machine-wide CPU time from /proc/stat, seconds.
#[derive(Clone, Copy, Debug, Default)]
struct CpuTimes {
    busy: f64,
    softirq: f64,
}

fn cpu_times() -> Result<CpuTimes> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        bail!("short cpu line in /proc/stat: {line}");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // user nice system idle iowait irq softirq [steal ...]: busy is everything the
    // CPUs did for this machine except idle and iowait (steal is another guest's).
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok(CpuTimes {
        busy: busy / hz,
        softirq: v[6] / hz,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub streams: u32,
    /// Receiver-side goodput, Gbit/s.
    pub gbps: f64,
    pub retransmits: u64,
    /// Machine-wide busy CPU seconds (all cores, /proc/stat user+nice+system+irq+
    /// softirq) per gigabit received, both over the iperf3 client's lifetime.
    pub cpu_s_per_gbit: f64,
    /// Bits the server's interface received over that same lifetime, Gbit.
    pub received_gbit: f64,
    /// The softirq part of `cpu_s_per_gbit`.
    pub softirq_s_per_gbit: f64,
    /// iperf3's own getrusage figures (user+system of its processes), percent of one CPU.
    pub iperf_cpu_sender_pct: f64,
    pub iperf_cpu_receiver_pct: f64,
}

/// The TCP congestion control every throughput run asks for (`iperf3 -C`), and
/// checks it got. These machines default to BBR, which without an fq qdisc paces
/// from TCP's own timer: it held every path, the node itself included, at 42-49
/// Gbit/s where cubic moved 62-79 (egress paths by hand, fifth session), so the
/// figures measured BBR's pacing, not the path. Cubic is also what most nodes run
/// (the kernel's default).
pub const CONGESTION: &str = "cubic";

/// iperf3 TCP for `secs` seconds (after a 1 s omitted warm-up) with `streams`
/// parallel streams. Client and server are bound to the CPUs the latency runs
/// on (iperf3's `-A client,server`; iperf3 3.12 runs all streams in one thread):
/// left to the scheduler, a run puts them on one CPU or on two, and node to
/// node on these 2-vCPU machines gave 36 Gbit/s on one and 42 on two.
pub fn throughput(c: &Contender, secs: u32, streams: u32) -> Result<Throughput> {
    let mut cmd = in_ns(&c.client_ns, "iperf3");
    cmd.args([
        "-c",
        &c.server_ip.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-J",
        "-O",
        "1",
    ])
    .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
    .args(["-C", CONGESTION]);
    if let Some((client, server)) = sys::latency_cpus() {
        cmd.args(["-A", &format!("{client},{server}")]);
    }
    // CPU time and received bits over one and the same interval: the client's whole
    // lifetime (connect, the omitted warm-up second, the test, teardown).
    let rx_before = rx_bytes(c)?;
    let before = cpu_times()?;
    let out = sys::run_limited(&mut cmd, Duration::from_secs(u64::from(secs) + 30))?;
    let after = cpu_times()?;
    let rx_after = rx_bytes(c)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 JSON: {out}"))?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3: {err}");
    }
    let end = &v["end"];
    let cc = end["sender_tcp_congestion"].as_str().unwrap_or("unknown");
    if cc != CONGESTION {
        bail!("iperf3 ran with congestion control {cc}, not {CONGESTION}");
    }
    let recv = &end["sum_received"];
    let bytes = recv["bytes"]
        .as_f64()
        .context("no end.sum_received.bytes")?;
    let seconds = recv["seconds"]
        .as_f64()
        .context("no end.sum_received.seconds")?;
    if seconds <= 0.0 || bytes <= 0.0 {
        bail!("iperf3 moved no data");
    }
    let gbps = bytes * 8.0 / seconds / 1e9;
    let received_gbit = rx_after.saturating_sub(rx_before) as f64 * 8.0 / 1e9;
    if received_gbit <= 0.0 {
        bail!("the server's interface counted no bytes received");
    }
    let cpu = &end["cpu_utilization_percent"];
    Ok(Throughput {
        streams,
        gbps,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_s_per_gbit: (after.busy - before.busy) / received_gbit,
        softirq_s_per_gbit: (after.softirq - before.softirq) / received_gbit,
        received_gbit,
        iperf_cpu_sender_pct: cpu["host_total"].as_f64().unwrap_or(f64::NAN),
        iperf_cpu_receiver_pct: cpu["remote_total"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Bytes received so far by the server's interface (frames, headers included): its
/// `eth0`, or `lo` for the loopback contender, where the client's ACKs cross it too
/// (a few hundredths of a percent of a bulk transfer).
fn rx_bytes(c: &Contender) -> Result<u64> {
    let dev = if c.client_ns == c.server_ns {
        "lo"
    } else {
        "eth0"
    };
    let out = sys::run(in_ns(&c.server_ns, "ip").args(["-s", "-j", "link", "show", "dev", dev]))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -s -j link show: {out}"))?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .with_context(|| format!("no rx bytes of {dev} in {}: {out}", c.server_ns))
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectRate {
    /// Completed transactions per second: connect, accept, 1-byte reply, close.
    pub per_sec: f64,
    pub completed: u64,
    pub accepted: u64,
    pub errors: u64,
}

/// TCP connect/accept rate: one client thread in pod A, one server thread in pod B,
/// each `setns`'d into its pod. The client connects, the server accepts, writes one
/// byte and closes first (so TIME_WAIT lands on the server and the client never runs
/// out of ephemeral ports), the client reads the byte and the FIN and closes.
pub fn connect_rate(c: &Contender, secs: u32) -> Result<ConnectRate> {
    let addr = SocketAddr::from((c.server_ip, CONNECT_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let server = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        sys::in_netns_thread(&c.server_ns, move || {
            let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            let _ = ready_tx.send(());
            while !stop.load(Ordering::Relaxed) {
                // Block in poll (not a sleep loop, whose wake-up delay would be
                // measured) with a timeout, so the stop flag is seen with no client.
                if !readable(&listener, 100)? {
                    continue;
                }
                let (mut s, _) = listener.accept().context("accept")?;
                // A reset connection is the client's problem, counted there.
                let _ = s.write_all(b"x");
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?
    };
    // The client must not start before the listener exists.
    ready_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| {
        stop.store(true, Ordering::Relaxed);
        anyhow!("connect-rate server did not start")
    })?;
    let client = sys::in_netns_thread(&c.client_ns, move || {
        let (mut done, mut errors) = (0u64, 0u64);
        let start = Instant::now();
        let limit = Duration::from_secs(u64::from(secs));
        let mut buf = [0u8; 8];
        while start.elapsed() < limit && !sys::interrupted() {
            let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.set_nodelay(true)?;
                let n = s.read(&mut buf)?;
                let eof = s.read(&mut buf)?;
                if n == 1 && eof == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::other("unexpected reply"))
                }
            });
            match ok {
                Ok(()) => done += 1,
                Err(_) => errors += 1,
            }
            if errors > 1000 {
                break;
            }
        }
        Ok((done, errors, start.elapsed()))
    });
    let client_res =
        client.and_then(|h| h.join().map_err(|_| anyhow!("client thread panicked"))?);
    stop.store(true, Ordering::Relaxed);
    let server_res = server
        .join()
        .map_err(|_| anyhow!("server thread panicked"))?;
    let (done, errors, elapsed) = client_res?;
    server_res?;
    sys::check_interrupt()?;
    if done == 0 {
        bail!("no connection completed ({errors} errors)");
    }
    Ok(ConnectRate {
        per_sec: done as f64 / elapsed.as_secs_f64(),
        completed: done,
        accepted: accepted.load(Ordering::Relaxed),
        errors,
    })
}

/// poll(2) for readability with a timeout in milliseconds.
fn readable(l: &TcpListener, timeout_ms: i32) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e).context("poll");
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf_percentiles() {
        let out = "sockperf: \u{1b}[2;35m====> avg-rtt=31.543 (std-dev=15.257)\u{1b}[0m\n\
                   sockperf: \u{1b}[2;35mTotal 17409 observations\u{1b}[0m; each percentile contains 174.09 observations\n\
                   sockperf: ---> percentile 99.000 =   59.952\n\
                   sockperf: ---> percentile 50.000 =   29.485\n";
        let l = parse_sockperf(out).unwrap();
        assert_eq!(l.p50_us, 29.485);
        assert_eq!(l.p99_us, 59.952);
        assert_eq!(l.avg_us, 31.543);
        assert_eq!(l.observations, 17409);
    }
}
