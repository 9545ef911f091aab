//! Printing results: aligned tables for people, JSON (one document on stdout) for
//! scripts. Progress and logs go to stderr, never here.

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use vethbpf::datapath::AttachMode;
use vethbpf::datapath::pods::AttachState;
use vethbpf::egress::table::Flow;
use vethbpf::egress::{Egress, EgressStatus};
use vethbpf::endpoint::EndpointView;
use vethbpf::node::{self, DownReport, Status, UpReport};
use vethbpf::observe::record::{EventRecord, Record};
use vethbpf::reconcile::Report;

/// How results are printed (`--output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows under a header with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    // One write for the whole table: stdout is line-buffered, and a thousand
    // endpoints would be a thousand writes.
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    print!("{out}");
}

pub fn up(out: Output, r: &UpReport) -> Result<()> {
    if out == Output::Json {
        return json(r);
    }
    let what = match r.action {
        "loaded" => "datapath loaded".to_string(),
        "reloaded" => "datapath pins were missing: loaded again".to_string(),
        "replaced" => format!(
            "program replaced on {} attachment(s) (pods: {}; node: {}); maps kept",
            r.replaced.unwrap_or_default(),
            swap_kind(r.config.pod_attach),
            swap_kind(r.config.attach_mode),
        ),
        "reconfigured" => "node config updated".to_string(),
        _ => "node is already up; nothing changed".to_string(),
    };
    println!("{what}");
    table(
        &["POD CIDR", "GATEWAY", "GATEWAY MAC", "BPFFS", "PROGRAM ID"],
        &[vec![
            node::fmt_cidrs(r.config.pod_cidr, r.config.pod_cidr6),
            gateways(&r.config),
            r.config.gateway_mac.to_string(),
            r.config.bpffs_dir.display().to_string(),
            r.program_id.map(|i| i.to_string()).unwrap_or_default(),
        ]],
    );
    println!("egress: {}", egress_line(r.config.egress.as_ref()));
    Ok(())
}

/// How `up --replace` swaps the program of an attachment of this kind.
fn swap_kind(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tcx => "TCX links, atomically",
        AttachMode::Tc => "cls_bpf filters, in place",
    }
}

fn egress_line(e: Option<&Egress>) -> String {
    match e {
        Some(_) => vethbpf::egress::describe(e),
        None => {
            "off (no default route and no --uplink: pods reach the node and each other only)".into()
        }
    }
}

pub fn endpoint(out: Output, e: &EndpointView) -> Result<()> {
    if out == Output::Json {
        return json(e);
    }
    endpoint_table(std::slice::from_ref(e), false);
    Ok(())
}

pub fn endpoints(out: Output, list: &[EndpointView]) -> Result<()> {
    if out == Output::Json {
        return json(list);
    }
    endpoint_table(list, true);
    Ok(())
}

/// The pods' gateways of a node: IPv4, and IPv6 where pods get it.
fn gateways(node: &vethbpf::state::NodeConfig) -> String {
    match node.pod_cidr6 {
        Some(_) => format!("{} {}", node.gateway, node.gateway6()),
        None => node.gateway.to_string(),
    }
}

fn endpoint_table(list: &[EndpointView], counters: bool) {
    // The IPv6 columns only where an endpoint has IPv6: an IPv4 node's table is as
    // it always was.
    let v6 = list.iter().any(|e| e.ip6.is_some());
    let mut header = vec!["NAME", "IP"];
    if v6 {
        header.push("IPV6");
    }
    header.extend(["POD MAC", "HOST VETH", "NETNS"]);
    if counters {
        header.extend(["FORWARDED", "ARP"]);
        if v6 {
            header.push("NA");
        }
        header.extend([
            "ECHO",
            "PASSED",
            "EGRESS",
            "REPLIES",
            "NODES OUT/IN",
            "DROPPED",
        ]);
    }
    let or_dash = |a: Option<String>| a.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let mut row = vec![e.name.clone(), or_dash(e.ip.map(|ip| ip.to_string()))];
            if v6 {
                row.push(or_dash(e.ip6.map(|ip| ip.to_string())));
            }
            row.extend([
                e.pod_mac.to_string(),
                e.host_veth.clone(),
                e.netns.display().to_string(),
            ]);
            if let Some(c) = e.counters.as_ref().filter(|_| counters) {
                let drops: Vec<String> = c
                    .drops
                    .iter()
                    .filter(|(_, n)| n.packets > 0)
                    .map(|(k, n)| format!("{k}={}", n.packets))
                    .collect();
                row.extend([
                    format!("{}p/{}B", c.forwarded.packets, c.forwarded.bytes),
                    c.arp_replies.packets.to_string(),
                ]);
                if v6 {
                    row.push(c.na_replies.packets.to_string());
                }
                row.extend([
                    c.echo_replies.packets.to_string(),
                    format!("{}p/{}B", c.passed.packets, c.passed.bytes),
                    format!(
                        "{}p/{}B",
                        c.masqueraded.packets + c.egress.packets,
                        c.masqueraded.bytes + c.egress.bytes
                    ),
                    format!(
                        "{}p/{}B",
                        c.rev_nat.packets + c.rev_nat_icmp.packets,
                        c.rev_nat.bytes + c.rev_nat_icmp.bytes
                    ),
                    format!("{}p/{}p", c.to_nodes.packets, c.from_nodes.packets),
                    if drops.is_empty() {
                        "0".into()
                    } else {
                        drops.join(",")
                    },
                ]);
            }
            row
        })
        .collect();
    table(&header, &rows);
}

pub fn deleted(out: Output, name: &str) -> Result<()> {
    if out == Output::Json {
        return json(&serde_json::json!({ "deleted": name }));
    }
    println!("endpoint {name} deleted");
    Ok(())
}

pub fn down(out: Output, r: &DownReport) -> Result<()> {
    if out == Output::Json {
        return json(r);
    }
    if r.was_up {
        println!(
            "node is down: removed {} endpoint(s) and every pinned object",
            r.endpoints_removed.len()
        );
    } else {
        println!("node was not up; nothing to do");
    }
    Ok(())
}

pub fn status(out: Output, s: &Status) -> Result<()> {
    if out == Output::Json {
        return json(s);
    }
    let Some(node) = &s.node else {
        println!("node is not up (run `vethbpf up`)");
        return Ok(());
    };
    println!(
        "node: up  pod CIDR {}  gateway {} ({})  bpffs {}  pod attach {}  node attach {}  endpoints {}",
        node::fmt_cidrs(node.pod_cidr, node.pod_cidr6),
        gateways(node),
        node.gateway_mac,
        node.bpffs_dir.display(),
        node.pod_attach.name(),
        node.attach_mode.name(),
        s.endpoints
    );
    println!();
    table(
        &["PROGRAM", "ID", "TAG", "INSNS", "PINNED"],
        &s.programs
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.id.to_string(),
                    p.tag.clone(),
                    p.verified_instructions
                        .map(|i| i.to_string())
                        .unwrap_or_default(),
                    p.pinned.display().to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    table(
        &["MAP", "TYPE", "ENTRIES", "MAX", "PINNED"],
        &s.maps
            .iter()
            .map(|m| {
                vec![
                    m.name.to_string(),
                    m.kind.to_string(),
                    if m.kind == "ringbuf" {
                        "-".to_string()
                    } else {
                        m.entries.to_string()
                    },
                    m.max_entries.to_string(),
                    m.pinned.display().to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    if let Some(e) = &s.egress {
        egress_status(e);
    }
    table(
        &[
            "ENDPOINT",
            "HOST VETH",
            "MODE",
            "STATE",
            "LINK ID",
            "PROGRAM ID",
        ],
        &s.attachments
            .iter()
            .map(|a| {
                let id = |v: Option<u32>| v.map(|i| i.to_string()).unwrap_or("-".into());
                vec![
                    a.endpoint.clone(),
                    a.host_veth.clone(),
                    a.mode.to_string(),
                    a.state.name().to_string(),
                    id(a.link_id),
                    id(a.program_id),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let broken = s
        .attachments
        .iter()
        .filter(|a| a.state != AttachState::Ok)
        .count();
    if broken > 0 {
        println!(
            "{broken} endpoint(s) do not run the pinned program (STATE): `vethbpf reconcile` repairs them"
        );
    }
    Ok(())
}

fn egress_status(e: &EgressStatus) {
    println!("egress: {}", egress_line(e.settings.as_ref()));
    if let Some(a) = &e.attachment {
        let id = |v: Option<u32>| v.map(|i| i.to_string()).unwrap_or("-".into());
        println!(
            "  from_uplink on {} ({}): link {}, program {}",
            a.uplink,
            a.mode,
            id(a.link_id),
            id(a.program_id)
        );
    }
    if e.enabled {
        println!(
            "  NAT table: {} of {} flows{}, {} entries (capacity {}), {} collections freed {} entries",
            e.flows,
            e.max_flows,
            if e.table_full { " (FULL)" } else { "" },
            e.entries,
            e.capacity.map(|c| c.to_string()).unwrap_or("-".into()),
            e.gc_runs,
            e.gc_deleted
        );
        println!(
            "  new flows dropped: {} table full (nat_table_full), {} no free port (drop_nat_no_port)",
            e.nat_table_full_drops, e.nat_no_port_drops
        );
    }
    if let Some(note) = &e.note {
        println!("  note: {note}");
    }
    println!();
}

/// One flow of `nat list`, with the endpoint that opened it.
#[derive(Serialize)]
pub struct FlowView<'a> {
    pub endpoint: Option<&'a str>,
    #[serde(flatten)]
    pub flow: &'a Flow,
}

pub fn nat_list(out: Output, flows: &[FlowView<'_>]) -> Result<()> {
    if out == Output::Json {
        return json(flows);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|v| {
            let f = v.flow;
            vec![
                v.endpoint.unwrap_or("-").to_string(),
                f.protocol.to_string(),
                f.pod.to_string(),
                f.node.to_string(),
                f.remote.to_string(),
                if f.expired {
                    format!("{} (expired)", f.state)
                } else {
                    f.state.to_string()
                },
                format!("{}s", f.age_secs),
                format!("{}s", f.idle_secs),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT", "PROTO", "POD", "NODE", "REMOTE", "STATE", "AGE", "IDLE",
        ],
        &rows,
    );
    Ok(())
}

pub fn nat_flushed(out: Output, flows: usize) -> Result<()> {
    if out == Output::Json {
        return json(&serde_json::json!({ "flushed_flows": flows }));
    }
    println!("NAT table flushed: {flows} flow(s) removed");
    Ok(())
}

pub fn reconcile(out: Output, r: &Report) -> Result<()> {
    if out == Output::Json {
        return json(r);
    }
    if !r.changed() {
        println!("state, maps, links and routes agree; nothing to do");
        return Ok(());
    }
    let mut rows = Vec::new();
    for p in &r.pending {
        rows.push(vec![
            format!("interrupted {}", p.op),
            p.name.clone(),
            p.outcome.to_string(),
        ]);
    }
    if r.discarded_journal {
        rows.push(vec![
            "unreadable journal".into(),
            String::new(),
            "removed".into(),
        ]);
    }
    for name in &r.rebuilt {
        rows.push(vec![
            "endpoint".into(),
            name.clone(),
            "rebuilt from the kernel".into(),
        ]);
    }
    for f in &r.repaired {
        rows.push(vec![f.what.clone(), f.endpoint.clone(), "put back".into()]);
    }
    for f in &r.removed_endpoints {
        rows.push(vec![
            "endpoint".into(),
            f.endpoint.clone(),
            format!("removed: {}", f.what),
        ]);
    }
    let orphans: [(&str, Vec<String>); 4] = [
        ("link", r.removed_links.clone()),
        (
            "route map entry",
            r.removed_route_entries
                .iter()
                .map(|n| n.to_string())
                .collect(),
        ),
        (
            "endpoint map entry",
            r.removed_endpoint_entries
                .iter()
                .map(|i| format!("ifindex {i}"))
                .collect(),
        ),
        ("pinned link", r.removed_pins.clone()),
    ];
    for (what, names) in orphans {
        for name in names {
            rows.push(vec![
                what.into(),
                name,
                "removed: no endpoint owns it".into(),
            ]);
        }
    }
    if let Some(what) = &r.uplink {
        rows.push(vec!["egress".into(), String::new(), what.clone()]);
    }
    table(&["WHAT", "NAME", "ACTION"], &rows);
    Ok(())
}

/// The time of day of an RFC 3339 timestamp (`03:47:12.345`): monitor lines are
/// read as they come.
fn time_of_day(rfc3339: &str) -> &str {
    rfc3339
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or(rfc3339)
}

fn event_line(e: &EventRecord) -> String {
    let who = match (&e.endpoint, &e.interface) {
        (Some(name), _) => name.clone(),
        (None, Some(ifname)) => format!("{ifname} (ifindex {}, no endpoint)", e.ifindex),
        (None, None) => format!("ifindex {} (no endpoint)", e.ifindex),
    };
    let to = e
        .destination_endpoint
        .as_deref()
        .map(|d| format!(" -> {d}"))
        .unwrap_or_default();
    let node = e
        .node
        .as_deref()
        .map(|n| format!(" [node {n}]"))
        .unwrap_or_default();
    let segs = if e.segs > 1 {
        format!(" ({} segments)", e.segs)
    } else {
        String::new()
    };
    format!(
        "{} {:<5} {who}{to}{node} {} ({}): {} len {}{segs}",
        time_of_day(&e.time),
        e.kind,
        e.verdict,
        e.reason,
        e.packet.summary(),
        e.len
    )
}

/// Writes one monitor record: a line for people, or one JSON object per line.
/// Flushed at once, so a pipe sees each event as it happens.
pub fn record(out: Output, r: &Record) -> std::io::Result<()> {
    use std::io::Write;
    let line = match (out, r) {
        (Output::Json, r) => serde_json::to_string(r).map_err(std::io::Error::other)?,
        (Output::Table, Record::Event(e)) => event_line(e),
        (Output::Table, Record::Lost(l)) => format!(
            "{} lost  {} event(s): the ring buffer was full ({} lost since the monitor started)",
            time_of_day(&l.time),
            l.lost,
            l.lost_total
        ),
        (Output::Table, Record::Log(l)) => {
            format!("{} log   {}: {}", time_of_day(&l.time), l.level, l.message)
        }
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}
