//! Who connected each socket, recorded at the `connect()` system call.
//!
//! With the transparent path on, every TCP connection the agent makes to a local service (the
//! proxy, the policy resolver over TCP) is made by the supervisor on the agent's behalf while
//! the calling thread waits in `connect()` (see `transparent`), and every DNS datagram to
//! the resolver passes the seccomp filter first. At that moment the caller is known for
//! certain: it is the thread in the system call. Its chain (the process, its exe, and the
//! ancestors lineage.rs credits) is recorded under the socket's local address, which is how
//! the proxy and the resolver see the peer.
//!
//! The proxy then credits a request to the process that connected the socket, not to whoever
//! holds it when the request arrives: lending a socket (parking it in an SCM_RIGHTS message
//! while an allowed binary that inherited it sends the CONNECT) gains nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::canonical_ip;
use crate::proxy::decision::Process;

/// Most sockets remembered; a record normally lives as long as its connection.
const MAX_RECORDS: usize = 65_536;
/// When full, records older than this go first.
const STALE: Duration = Duration::from_secs(600);

/// The records of one sandbox.
#[derive(Debug, Default)]
pub struct Records {
    table: Mutex<HashMap<SocketAddr, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    chain: Vec<Process>,
    at: Instant,
}

fn key(local: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(local.ip()), local.port())
}

impl Records {
    /// Records that the socket bound to `local` was connected by `chain` (the caller first).
    pub fn record(&self, local: SocketAddr, chain: Vec<Process>) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_RECORDS && !table.contains_key(&key(local)) {
            make_room(&mut table);
        }
        table.insert(
            key(local),
            Entry {
                chain,
                at: Instant::now(),
            },
        );
    }

    /// Who connected the socket whose address is `local` (as its peer sees it).
    pub fn get(&self, local: SocketAddr) -> Option<Vec<Process>> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.get(&key(local)).map(|e| e.chain.clone())
    }

    /// Forgets the record for `local` when it was made before `since` (a connection that
    /// ended; a newer record belongs to a new connection that reused the port).
    pub fn forget(&self, local: SocketAddr, since: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.get(&key(local)).is_some_and(|e| e.at <= since) {
            table.remove(&key(local));
        }
    }
}

/// Drops stale records; if none are, the oldest quarter.
fn make_room(table: &mut HashMap<SocketAddr, Entry>) {
    let before = table.len();
    table.retain(|_, e| e.at.elapsed() < STALE);
    if table.len() < before {
        return;
    }
    let mut ages: Vec<Instant> = table.values().map(|e| e.at).collect();
    ages.sort_unstable();
    let cut = ages[ages.len() / 4];
    table.retain(|_, e| e.at > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(exe: &str) -> Vec<Process> {
        vec![Process {
            pid: 7,
            start: 1,
            exe: exe.to_owned(),
        }]
    }

    #[test]
    fn records_by_local_address_mapped_or_not() {
        let records = Records::default();
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        records.record(mapped, chain("/usr/bin/curl"));
        assert_eq!(records.get(v4).unwrap()[0].exe, "/usr/bin/curl");
        let accepted = Instant::now();
        // The port is reused by a newer connection before the old one is forgotten.
        records.record(v4, chain("/usr/bin/git"));
        records.forget(v4, accepted);
        assert_eq!(records.get(v4).unwrap()[0].exe, "/usr/bin/git");
        records.forget(v4, Instant::now());
        assert!(records.get(v4).is_none());
    }
}
