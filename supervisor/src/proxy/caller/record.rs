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
    recorded: Recorded,
    at: Instant,
}

/// Who connected a socket, and which socket it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The caller first, then the ancestors credited with it.
    pub chain: Vec<Process>,
    /// The socket's inode, when the connection must be proven to come from it: without the
    /// TCP fence another socket can come to connect from the same address
    /// (`transparent::handoff` says how).
    pub socket: Option<u64>,
}

fn key(local: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(local.ip()), local.port())
}

impl Records {
    /// Records that the socket bound to `local` was connected by `chain` (the caller first),
    /// and, with `socket`, which socket that was.
    pub fn record(&self, local: SocketAddr, chain: Vec<Process>, socket: Option<u64>) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_RECORDS && !table.contains_key(&key(local)) {
            make_room(&mut table);
        }
        table.insert(
            key(local),
            Entry {
                recorded: Recorded { chain, socket },
                at: Instant::now(),
            },
        );
    }

    /// Who connected the socket whose address is `local` (as its peer sees it).
    pub fn get(&self, local: SocketAddr) -> Option<Recorded> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.get(&key(local)).map(|e| e.recorded.clone())
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
        records.record(mapped, chain("/usr/bin/curl"), Some(7));
        let recorded = records.get(v4).unwrap();
        assert_eq!(recorded.chain[0].exe, "/usr/bin/curl");
        assert_eq!(recorded.socket, Some(7));
        let accepted = Instant::now();
        // The port is reused by a newer connection before the old one is forgotten.
        records.record(v4, chain("/usr/bin/git"), None);
        records.forget(v4, accepted);
        assert_eq!(records.get(v4).unwrap().chain[0].exe, "/usr/bin/git");
        records.forget(v4, Instant::now());
        assert!(records.get(v4).is_none());
    }
}
