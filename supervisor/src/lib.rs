//! `openshell-sandbox`: runs an AI coding agent inside its own namespaces, behind Landlock,
//! seccomp and a policy-enforcing egress proxy, and stays its parent to supervise it.
//!
//! One module per confinement step. Steps that act on the agent have a `prepare` half (before
//! fork: may allocate, open files, compile filters) and an `apply` half (after fork: plain
//! system calls only), and each `apply` reads back what it set.

pub mod account;
pub mod caps;
pub mod cgroup;
pub mod channel;
pub mod check;
pub mod child;
pub mod cli;
pub mod credentials;
pub mod filesystem;
pub mod init;
pub mod landlock;
pub mod lineage;
pub mod log;
pub mod memfd;
pub mod namespaces;
pub mod oom;
pub mod paths;
pub mod policy;
pub mod preflight;
pub mod procfs;
pub mod proxy;
pub mod sandbox;
pub mod seccomp;
pub mod supervise;
pub mod view;
pub mod workers;
