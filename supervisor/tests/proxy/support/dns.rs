//! The test host's nameserver: answers A and AAAA from a table a test can change while it
//! runs (a name rebinding to another address), and records every query it receives, so that
//! a test can prove which names never left the sandbox.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use openshell_sandbox::proxy::dns::wire::{self, Address, Rcode, TYPE_A, TYPE_AAAA};

use super::net::{Net, Side};

type Table = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// The running server; stopped on drop.
#[derive(Debug)]
pub struct Nameserver {
    table: Table,
    queries: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// TTL of every answer: short, so that a rebinding shows at once.
pub const TTL: u32 = 1;

impl Nameserver {
    /// Listens on `address`:53 (UDP) inside `side`.
    pub fn start(net: &Net, side: Side, address: IpAddr) -> Nameserver {
        let socket = net.enter(side, || {
            UdpSocket::bind(SocketAddr::new(address, 53)).expect("bind the test nameserver")
        });
        // Woken now and then to see whether it should stop.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let table = Table::default();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, queries, stop) = (table.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &table, &queries, &stop))
        };
        Nameserver {
            table,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Makes `name` resolve to `addresses` (empty: NXDOMAIN).
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        self.table
            .lock()
            .expect("table")
            .insert(name.to_owned(), addresses.to_vec());
    }

    /// The names asked so far (any type), in order.
    pub fn asked(&self) -> Vec<String> {
        self.queries
            .lock()
            .expect("queries")
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    socket: &UdpSocket,
    table: &Table,
    queries: &Mutex<Vec<(String, u16)>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = wire::parse_query(&buf[..n]) else {
            continue;
        };
        queries
            .lock()
            .expect("queries")
            .push((query.name.clone(), query.qtype));
        let known = table.lock().expect("table").get(&query.name).cloned();
        let (rcode, addresses) = match known {
            None => (Rcode::NxDomain, Vec::new()),
            Some(list) => (
                Rcode::NoError,
                list.into_iter()
                    .filter(|ip| match query.qtype {
                        TYPE_A => ip.is_ipv4(),
                        TYPE_AAAA => ip.is_ipv6(),
                        _ => false,
                    })
                    .map(|ip| Address { ip, ttl: TTL })
                    .collect(),
            ),
        };
        let reply = wire::answer(&query, rcode, &addresses, query.udp_limit);
        let _ = socket.send_to(&reply, peer);
    }
}
