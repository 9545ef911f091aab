//! The tc messages of [`super::RtNetlink`]: the clsact qdisc and the one cls_bpf
//! filter vethbpf puts on tc ingress of an interface (`tc qdisc replace dev X
//! clsact`, `tc filter replace dev X ingress pref 1 handle 1 bpf da fd N`), and
//! reading that filter back (`tc filter get ...`): the program id it runs.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::socket::Request;
use super::{TC_FILTER_HANDLE, TC_FILTER_PRIORITY, TcFilter};

/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// tc ingress of a clsact qdisc (`ffff:fff2`).
const INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};

/// The header of vethbpf's filter on tc ingress of link `index`: its priority and
/// protocol in `tcm_info` (`TC_H_MAKE(prio << 16, htons(proto))`), its handle.
fn filter_header(index: u32) -> TcHeader {
    TcHeader {
        family: AddressFamily::Unspec,
        index: index as i32,
        handle: TcHandle::from(TC_FILTER_HANDLE),
        parent: INGRESS,
        info: (u32::from(TC_FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be()),
    }
}

/// `tc qdisc replace dev X clsact`: makes the clsact qdisc, or keeps the one that
/// is there (NLM_F_REPLACE without options changes nothing of it).
pub(super) fn add_clsact(index: u32) -> Request {
    let mut message = TcMessage::default();
    message.header = TcHeader {
        family: AddressFamily::Unspec,
        index: index as i32,
        handle: TcHandle {
            major: 0xffff,
            minor: 0,
        },
        parent: TcHandle::CLSACT,
        info: 0,
    };
    message
        .attributes
        .push(TcAttribute::Kind("clsact".to_string()));
    Request {
        message: RouteNetlinkMessage::NewQueueDiscipline(message),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
    }
}

/// `tc filter replace dev X ingress pref 1 handle 1 bpf direct-action fd PROG name
/// NAME [classid ID]`: makes vethbpf's filter, or swaps the program of the one there
/// in place (cls_bpf replaces a filter's program atomically: no packet sees none).
/// cls_bpf hands the classid to the program in `skb->tc_classid` before each run; a
/// replacement without one sets it to 0.
pub(super) fn set_bpf_filter(
    index: u32,
    prog: BorrowedFd<'_>,
    name: &str,
    classid: Option<u32>,
) -> Request {
    let mut message = TcMessage::default();
    message.header = filter_header(index);
    let mut options = vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ];
    if let Some(classid) = classid {
        options.push(TcOption::Bpf(TcFilterBpfOption::ClassId(TcHandle::from(
            classid,
        ))));
    }
    message.attributes = vec![
        TcAttribute::Kind("bpf".to_string()),
        TcAttribute::Options(options),
    ];
    Request {
        message: RouteNetlinkMessage::NewTrafficFilter(message),
        // No NLM_F_EXCL: a filter at this place is changed, not refused.
        flags: NLM_F_CREATE,
    }
}

/// `tc filter del dev X ingress pref 1`: whatever holds vethbpf's priority.
pub(super) fn del_filter(index: u32) -> Request {
    let mut message = TcMessage::default();
    message.header = filter_header(index);
    // Handle 0: the whole priority, whatever filters it holds.
    message.header.handle = TcHandle::UNSPEC;
    Request {
        message: RouteNetlinkMessage::DelTrafficFilter(message),
        flags: 0,
    }
}

/// `tc filter get dev X ingress pref 1 handle 1 protocol all`: one filter, asked
/// for by its place. Not a dump: gets go many to a datagram, a dump goes alone.
pub(super) fn get_filter(index: u32) -> Request {
    let mut message = TcMessage::default();
    message.header = filter_header(index);
    Request {
        message: RouteNetlinkMessage::GetTrafficFilter(message),
        flags: 0,
    }
}

/// `tc filter show dev X ingress`: every filter on tc ingress of link `index` (a
/// dump, so one to a datagram: only asked for where `get_filter` found nothing).
pub(super) fn dump_filters(index: u32) -> Request {
    let mut message = TcMessage::default();
    message.header.index = index as i32;
    message.header.parent = INGRESS;
    Request {
        message: RouteNetlinkMessage::GetTrafficFilter(message),
        flags: NLM_F_DUMP,
    }
}

/// The first filter at vethbpf's priority among `messages` (a dump's).
pub(super) fn at_our_priority(messages: &[RouteNetlinkMessage]) -> Option<TcFilter> {
    messages.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewTrafficFilter(f)
            if f.header.info >> 16 == u32::from(TC_FILTER_PRIORITY) =>
        {
            filter_of(std::slice::from_ref(m))
        }
        _ => None,
    })
}

/// The filter in a `get_filter` answer.
pub(super) fn filter_of(messages: &[RouteNetlinkMessage]) -> Option<TcFilter> {
    messages.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewTrafficFilter(f) => {
            let mut filter = TcFilter::default();
            for a in &f.attributes {
                match a {
                    TcAttribute::Kind(k) => filter.kind = k.clone(),
                    TcAttribute::Options(opts) => {
                        for o in opts {
                            match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => {
                                    filter.program_id = Some(*id);
                                }
                                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                    filter.program_name = Some(n.clone());
                                }
                                TcOption::Bpf(TcFilterBpfOption::Flags(fl)) => {
                                    filter.direct_action = fl.contains(TcBpfFlags::DirectAction);
                                }
                                TcOption::Bpf(TcFilterBpfOption::ClassId(c)) => {
                                    filter.classid = Some(u32::from(*c));
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(filter)
        }
        _ => None,
    })
}
