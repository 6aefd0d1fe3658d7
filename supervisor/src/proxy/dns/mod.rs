//! Policy DNS inside the sandbox's network namespace.
//!
//! The pod's nameserver addresses (from the supervisor's `/etc/resolv.conf`) are added to the
//! sandbox's loopback ([`local`]) and the policy resolver ([`Resolver`]) listens on each, so
//! the agent's `resolv.conf`, search list and `ndots` work unchanged. It answers only names
//! some `network_policies` endpoint could allow, with the real addresses that pass the address
//! guard; everything else is REFUSED and never leaves the pod. What it answers is remembered
//! per sandbox ([`names`]), which is how the transparent path recognises a direct connection.
//! The wire format lives apart ([`wire`]), so that a fuzz target needs one entry.

pub mod config;
pub mod local;
pub mod names;
mod server;
pub mod wire;

pub use server::Resolver;
