//! `vethbpf metrics --listen ADDR:PORT`: serves `/metrics` (tiny_http) until stopped;
//! every scrape reads the maps afresh.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tiny_http::{Header, Method, Response, Server};

use super::ObserveError;
use super::metrics::{CONTENT_TYPE, render};
use crate::state::StateDir;

/// How long one wait for a request lasts, so that a stop request is seen soon.
const WAIT: Duration = Duration::from_millis(200);

/// Serves the metrics of the node in `state_dir` on `addr` until `stop` is set.
/// `ready` is told the address bound (the port, if 0 was asked for).
pub fn serve(
    addr: SocketAddr,
    state_dir: &StateDir,
    stop: &AtomicBool,
    ready: &mut dyn FnMut(SocketAddr),
) -> Result<(), ObserveError> {
    let server = Server::http(addr).map_err(|source| ObserveError::Listen {
        addr,
        message: source.to_string(),
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    // Constant ASCII: from_bytes refuses only what is not.
    let content_type =
        Header::from_bytes("Content-Type", CONTENT_TYPE).map_err(|()| ObserveError::Encode)?;
    ready(bound);
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(WAIT) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ObserveError::Output(e)),
        };
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let response = match (request.method(), path.as_str()) {
            (Method::Get | Method::Head, "/metrics") => match render(state_dir) {
                Ok(text) => Response::from_string(text).with_header(content_type.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics scrape failed");
                    Response::from_string(format!("vethbpf: {e}\n")).with_status_code(503)
                }
            },
            (Method::Get | Method::Head, "/") => {
                Response::from_string("vethbpf node metrics: /metrics (Prometheus text format)\n")
            }
            (Method::Get | Method::Head, _) => {
                Response::from_string("not found: the metrics are at /metrics\n")
                    .with_status_code(404)
            }
            _ => Response::from_string("only GET and HEAD\n").with_status_code(405),
        };
        if let Err(e) = request.respond(response) {
            // The scraper went away mid-answer: its problem, not the server's.
            tracing::debug!(error = %e, "metrics: answer not delivered");
        }
    }
    Ok(())
}
