//! Seeing what the datapath does: `vethbpf monitor` (drop and trace events from the
//! `EVENTS` ring buffer, the program's aya-log diagnostics) and `vethbpf metrics`
//! (counters, map fill and programs in the Prometheus text format).
//!
//! - [`monitor`]: claims the event stream, reads it, gives it back
//! - [`record`]: what the monitor reports, one record per line
//! - [`decode`]: a packet's first bytes into addresses, ports, flags, ARP fields
//! - [`names`]: endpoint names for ids, addresses and interfaces
//! - [`log`]: the program's diagnostics (aya-log), by program id
//! - [`metrics`]: the Prometheus text; [`serve`]: it over HTTP

pub mod decode;
mod error;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod record;
pub mod serve;

pub use error::ObserveError;
