//! The egress proxy: the agent's only way out of its network namespace.

pub mod decision;
pub mod http;
pub mod ssrf;
