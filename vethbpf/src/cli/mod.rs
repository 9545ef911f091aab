//! The command line: the edge of the program, used by `main` only. The library
//! below knows nothing of it.
//!
//! - [`args`]: the grammar (clap)
//! - [`run`]: commands to library calls, results to [`output`]
//! - [`output`]: tables for people, JSON for scripts
//! - [`error`]: exit statuses, and errors as JSON with `-o json`
//! - [`demo`]: the three-pod scenario in a throwaway namespace, with its prober
//! - [`cluster`]: `up`'s cluster flags, `node`, `agent`, and the cluster parts of
//!   `status`, `down` and `reconcile`

mod args;
mod cluster;
mod demo;
mod error;
mod output;
mod run;
#[cfg(test)]
mod testing;

pub use args::parse;
pub(crate) use error::fail;
pub use run::run;
