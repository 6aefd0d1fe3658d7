//! What this sandbox resolved: address → names, so that a direct connection to an address can
//! be matched against the policy by the names that led the agent there.
//!
//! Entries come from the policy resolver's answers (kept for the answer's TTL, but at least
//! [`MIN_KEEP`]: clients connect some time after the lookup, CDNs answer with TTLs of 0 to
//! 5 s, and runtimes such as the JVM cache answers themselves) and from the hosts file (kept
//! for the sandbox's life). Only addresses that passed the address guard for some endpoint
//! of the name are ever remembered. The table is bounded: when full, expired entries go
//! first, then the ones closest to expiry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::canonical_ip;

/// Shortest time an answer is remembered.
pub const MIN_KEEP: Duration = Duration::from_secs(60);
/// Longest time an answer is remembered (a week-long TTL is not a reason to keep it that long).
const MAX_KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most (address, name) pairs remembered.
const MAX_ENTRIES: usize = 16_384;

/// The memory of one sandbox.
#[derive(Debug, Default)]
pub struct Names {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_ip: HashMap<IpAddr, Vec<Known>>,
    entries: usize,
}

#[derive(Debug, Clone)]
struct Known {
    name: String,
    /// `None`: from the hosts file, for good.
    until: Option<Instant>,
}

impl Names {
    /// Remembers that `name` resolved to `ip`, for `ttl` seconds (bounded as described above).
    pub fn remember(&self, name: &str, ip: IpAddr, ttl: u32) {
        let keep = Duration::from_secs(u64::from(ttl)).clamp(MIN_KEEP, MAX_KEEP);
        self.insert(name, ip, Some(Instant::now() + keep));
    }

    /// Remembers a hosts-file name for the sandbox's life.
    pub fn remember_static(&self, name: &str, ip: IpAddr) {
        self.insert(name, ip, None);
    }

    fn insert(&self, name: &str, ip: IpAddr, until: Option<Instant>) {
        let ip = canonical_ip(ip);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = table
            .by_ip
            .get_mut(&ip)
            .and_then(|names| names.iter_mut().find(|k| k.name == name))
        {
            known.until = match (known.until, until) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
            return;
        }
        if table.entries >= MAX_ENTRIES {
            table.make_room();
        }
        table.by_ip.entry(ip).or_default().push(Known {
            name: name.to_owned(),
            until,
        });
        table.entries += 1;
    }

    /// The names that resolved to `ip` and are still remembered.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table
            .by_ip
            .get(&canonical_ip(ip))
            .map(|names| {
                names
                    .iter()
                    .filter(|k| k.until.is_none_or(|t| t > now))
                    .map(|k| k.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Table {
    /// Drops expired entries; if none were, the one closest to expiry (never a static one,
    /// which the hosts file bounds).
    fn make_room(&mut self) {
        let now = Instant::now();
        let before = self.entries;
        self.by_ip.retain(|_, names| {
            names.retain(|k| k.until.is_none_or(|t| t > now));
            !names.is_empty()
        });
        self.entries = self.by_ip.values().map(Vec::len).sum();
        if self.entries < before {
            return;
        }
        // Compared by reference: only the name that goes is copied, not every name.
        let soonest = self
            .by_ip
            .iter()
            .flat_map(|(ip, names)| names.iter().map(move |k| (k.until, *ip, k.name.as_str())))
            .filter_map(|(until, ip, name)| Some((until?, ip, name)))
            .min()
            .map(|(_, ip, name)| (ip, name.to_owned()));
        if let Some((ip, name)) = soonest
            && let Some(names) = self.by_ip.get_mut(&ip)
        {
            names.retain(|k| k.name != name);
            if names.is_empty() {
                self.by_ip.remove(&ip);
            }
            self.entries -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_names_per_address_mapped_or_not() {
        let names = Names::default();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        names.remember("a.example", ip, 0);
        names.remember("b.example", ip, 3600);
        names.remember("a.example", ip, 10);
        names.remember_static("db.internal", "10.0.0.5".parse().unwrap());
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(names.names_for(mapped), ["a.example", "b.example"]);
        assert_eq!(
            names.names_for("10.0.0.5".parse().unwrap()),
            ["db.internal"]
        );
        assert!(names.names_for("203.0.113.8".parse().unwrap()).is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let names = Names::default();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xcb00_0000u32 + i));
            names.remember(&format!("n{i}.example"), ip, 100 + i);
        }
        let table = names.table.lock().unwrap();
        assert_eq!(table.entries, MAX_ENTRIES);
        // The ones closest to expiry went first.
        assert!(
            !table
                .by_ip
                .contains_key(&IpAddr::from(std::net::Ipv4Addr::from(0xcb00_0000u32)))
        );
    }
}
