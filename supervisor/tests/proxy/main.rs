//! The egress proxy end to end, as root, against real namespaces: each test builds its own
//! pod and test-host network namespaces (see `support`), runs real servers on the test host
//! and runs the real supervisor with a real client inside the sandbox.
// Test support code: failing loudly, with a message, is the point of every check here.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod budget;
mod bypass;
mod clients;
mod clients_direct;
mod credentials;
mod decisions;
mod fixtures;
mod identity;
mod l7;
mod l7_clients;
mod load;
mod support;
mod tcp_endpoints;
mod transparent;
