//! The transport under [`super::RtNetlink`]: one blocking NETLINK_ROUTE socket, no
//! runtime and no thread. Requests go out in batches (several messages in one
//! `send`) and each answer is matched to its request by sequence number.
//!
//! The kernel handles the messages of one datagram in order, each exactly as if
//! it had come alone, and answers each one: a batch costs one round trip instead
//! of one per message. It is not a transaction: a message that fails does not
//! stop the ones after it.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// One request: a message and its `NLM_F_*` flags beyond `NLM_F_REQUEST` and
/// `NLM_F_ACK`, which every request gets but dumps (they end with `NLMSG_DONE`)
/// and gets of one tc filter (answered by the filter or an error: an ack would be
/// a second datagram to read for each of a thousand host veths).
pub(super) struct Request {
    pub(super) message: RouteNetlinkMessage,
    pub(super) flags: u16,
}

/// The kernel's answer to one request: the messages it sent back for it (a reply,
/// a dump's entries, an `NLM_F_ECHO`), or the errno it refused it with.
pub(super) type Answer = Result<Vec<RouteNetlinkMessage>, i32>;

/// Receive buffer: a dump's datagrams are at most 32 KiB.
const RX_BUF: usize = 64 * 1024;

/// Requests per datagram. The kernel handles a whole datagram before we read any
/// answer, and every answer takes ~1 KiB of the socket's receive buffer (~200 KiB
/// by default): more at once would end in ENOBUFS.
const BATCH_MAX: usize = 64;

pub(super) struct NlSocket {
    socket: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

/// Netlink messages start at 4-byte boundaries.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

impl NlSocket {
    /// A socket in the calling thread's network namespace, which it keeps for its
    /// whole life, whichever thread uses it later.
    pub(super) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Acks then carry only the header of the request they answer, not all of it.
        socket.set_cap_ack(true)?;
        Ok(NlSocket {
            socket,
            seq: 0,
            tx: Vec::with_capacity(1024),
            rx: vec![0; RX_BUF],
        })
    }

    /// Sends `requests` (in one datagram, up to [`BATCH_MAX`] of them) and waits for
    /// the answer to each, in order. At most one of them may be a dump: the kernel
    /// runs one dump per socket at a time.
    pub(super) fn transact(&mut self, requests: Vec<Request>) -> io::Result<Vec<Answer>> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<Request> = requests.by_ref().take(BATCH_MAX).collect();
            answers.extend(self.transact_one(chunk)?);
        }
        Ok(answers)
    }

    /// One datagram of requests and their answers.
    fn transact_one(&mut self, requests: Vec<Request>) -> io::Result<Vec<Answer>> {
        let first = self.seq.wrapping_add(1);
        let count = requests.len();
        let mut dumps = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(count);
        self.tx.clear();
        for (i, request) in requests.into_iter().enumerate() {
            let dump = request.flags & NLM_F_DUMP == NLM_F_DUMP;
            let reply =
                !dump && matches!(request.message, RouteNetlinkMessage::GetTrafficFilter(_));
            let mut msg = NetlinkMessage::from(request.message);
            msg.header.flags =
                request.flags | NLM_F_REQUEST | if dump || reply { 0 } else { NLM_F_ACK };
            msg.header.sequence_number = first.wrapping_add(i as u32);
            msg.finalize();
            let start = self.tx.len();
            let len = msg.buffer_len();
            self.tx.resize(start + align(len), 0);
            msg.serialize(&mut self.tx[start..start + len]);
            dumps.push(dump);
            replies.push(reply);
        }
        self.seq = first.wrapping_add(count as u32);
        debug_assert!(
            dumps.iter().filter(|d| **d).count() <= 1,
            "two dumps in one batch"
        );
        loop {
            match self.socket.send(&self.tx, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }

        let mut got: Vec<Vec<RouteNetlinkMessage>> = (0..count).map(|_| Vec::new()).collect();
        let mut answers: Vec<Option<Answer>> = (0..count).map(|_| None).collect();
        let mut pending = count;
        while pending > 0 {
            let n = loop {
                // MSG_TRUNC: the datagram's real length, to notice a truncated one.
                match self.socket.recv(&mut &mut self.rx[..], libc::MSG_TRUNC) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n > self.rx.len() {
                return Err(io::Error::other(format!(
                    "a netlink reply of {n} bytes does not fit the {RX_BUF}-byte buffer"
                )));
            }
            let mut off = 0;
            while off < n {
                let buf = &self.rx[off..n];
                let len = NetlinkBuffer::new_checked(buf)
                    .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?
                    .length() as usize;
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
                    .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
                off += align(len).max(len);
                let i = msg.header.sequence_number.wrapping_sub(first) as usize;
                // Not ours (a late answer to an earlier call cannot happen: every
                // call waits for all its answers), or answered already.
                if i >= count || answers[i].is_some() {
                    continue;
                }
                let done = match msg.payload {
                    // A get without an ack: its one message is the whole answer.
                    NetlinkPayload::InnerMessage(m) if replies[i] => Some(Ok(vec![m])),
                    NetlinkPayload::InnerMessage(m) => {
                        got[i].push(m);
                        None
                    }
                    NetlinkPayload::Error(e) => Some(match e.code {
                        None => Ok(std::mem::take(&mut got[i])),
                        Some(code) => Err(-code.get()),
                    }),
                    NetlinkPayload::Done(d) if dumps[i] => Some(if d.code < 0 {
                        Err(-d.code)
                    } else {
                        Ok(std::mem::take(&mut got[i]))
                    }),
                    NetlinkPayload::Overrun(_) => {
                        return Err(io::Error::other("netlink reply overrun"));
                    }
                    _ => None,
                };
                if let Some(answer) = done {
                    answers[i] = Some(answer);
                    pending -= 1;
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }
}
