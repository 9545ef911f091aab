//! Shared helpers of the vethbpf integration tests (`tests/tests/*.rs`).
//!
//! The tests need root: they load eBPF programs and, except `testrun`, build network
//! namespaces and veth pairs of their own, which they remove even when they fail.
