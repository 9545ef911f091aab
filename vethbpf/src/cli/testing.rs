//! Test helpers of the binary's own unit tests (the demo and its prober).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vethbpf::kernel::netns::{create_named, delete_named};

/// A named namespace for one test, removed on drop (also when the test panics).
pub(crate) struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    /// `vbt-<tag>-<pid>-<n>`: unique across parallel tests and concurrent runs.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "vbt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = create_named(&name).unwrap();
        Self { name, path }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = delete_named(&self.name) {
            // A second panic while unwinding would abort and hide the first.
            if std::thread::panicking() {
                eprintln!("cannot delete test netns {}: {e}", self.name);
            } else {
                panic!("cannot delete test netns {}: {e}", self.name);
            }
        }
    }
}
