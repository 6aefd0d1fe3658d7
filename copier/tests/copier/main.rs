//! Integration tests: the real binary, real files, real mounts and real signals (run as root).
//!
//! One test binary with modules, so the shared helpers in `common` are compiled once and every
//! one of them is used.

// Test helpers outside #[test] functions are not recognised as test code by clippy; in a test
// binary a panic is exactly how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod common;
mod concurrent;
mod hostile;
mod install;
mod kill;
mod mounts;
