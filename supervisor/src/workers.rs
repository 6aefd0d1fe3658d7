//! The supervisor's threads for blocking work, every one of them created before the agent runs.
//!
//! The agent shares the pod's pids limit with the supervisor (podman's default is 2048, a
//! Kubernetes pod's is set by the node), and threads count against it. An agent that forks
//! until `fork` fails with EAGAIN leaves no room for a thread made on demand afterwards:
//! tokio's `spawn_blocking` then panics ("OS can't spawn worker thread"), which aborted the
//! supervisor and, with it, the whole sandbox without a final status line. So nothing here is
//! created on demand: [`start`] makes fixed pools before the sandbox is allowed to start the
//! agent (see `supervise.rs`), and a job that finds its pool's queue full is answered
//! [`Unavailable::Busy`] (the proxy's 503), never by waiting for a thread that cannot come.
//!
//! Two pools, so that slow name lookups (each may wait out a resolver timeout) can never hold
//! up caller identification, which every proxy request needs:
//! - `identify`: reading `/proc` to find a connection's caller, hashing a binary to pin it;
//! - `resolve`: `getaddrinfo` for the proxy's upstream names.
//!
//! The supervisor's code must not reach tokio's blocking pool at all (`spawn_blocking`,
//! `block_in_place`, `tokio::fs`, `tokio::net::lookup_host`): `clippy.toml` forbids them.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

/// Threads that identify callers and hash binaries (CPU and /proc bound: one per core here).
const IDENTIFY_THREADS: usize = 2;
/// Jobs waiting for an identification thread before new ones are refused.
const IDENTIFY_QUEUE: usize = 1024;
/// Threads that resolve names (mostly waiting on the resolver).
const RESOLVE_THREADS: usize = 4;
/// Lookups waiting for a resolver thread before new ones are refused.
const RESOLVE_QUEUE: usize = 256;

/// How many threads [`start`] creates.
pub const THREADS: usize = IDENTIFY_THREADS + RESOLVE_THREADS;

static POOLS: OnceLock<Pools> = OnceLock::new();

/// Why a job was not run.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// [`start`] was never called (only in-process tests get here).
    #[error("the supervisor's worker threads were not started")]
    NotStarted,
    /// The pool's queue is full.
    #[error("all {pool} threads are busy and {queued} jobs are waiting")]
    Busy {
        /// The pool.
        pool: &'static str,
        /// Its queue length.
        queued: usize,
    },
    /// The job ended without an answer (it panicked).
    #[error("a {0} job failed")]
    Lost(&'static str),
}

impl From<Unavailable> for io::Error {
    fn from(e: Unavailable) -> io::Error {
        io::Error::other(e)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads sharing one bounded queue.
struct Pool {
    name: &'static str,
    capacity: usize,
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Pool {
    fn new(name: &'static str, capacity: usize) -> Pool {
        Pool {
            name,
            capacity,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }
    }

    fn spawn_threads(&'static self, threads: usize) -> io::Result<()> {
        for n in 0..threads {
            std::thread::Builder::new()
                .name(format!("{}-{n}", self.name))
                .spawn(move || self.serve())?;
        }
        Ok(())
    }

    fn serve(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match queue.pop_front() {
                        Some(job) => break job,
                        None => {
                            queue = self.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
            };
            // A panicking job loses its answer (the caller sees `Lost`), not the thread.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
        }
    }

    /// Queues `job`; its answer comes on the returned channel.
    fn submit<R, F>(&self, job: F) -> Result<oneshot::Receiver<R>, Unavailable>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= self.capacity {
                return Err(Unavailable::Busy {
                    pool: self.name,
                    queued: queue.len(),
                });
            }
            queue.push_back(Box::new(move || {
                // The caller may have given up (its client left): nobody to tell.
                let _ = answer.send(job());
            }));
        }
        self.ready.notify_one();
        Ok(answered)
    }

    async fn run<R, F>(&self, job: F) -> Result<R, Unavailable>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let answered = self.submit(job)?;
        answered.await.map_err(|_| Unavailable::Lost(self.name))
    }
}

#[derive(Debug)]
struct Pools {
    identify: Pool,
    resolve: Pool,
}

/// Creates every worker thread. Called once, before the agent runs.
pub fn start() -> io::Result<()> {
    let pools = POOLS.get_or_init(|| Pools {
        identify: Pool::new("identify", IDENTIFY_QUEUE),
        resolve: Pool::new("resolve", RESOLVE_QUEUE),
    });
    pools.identify.spawn_threads(IDENTIFY_THREADS)?;
    pools.resolve.spawn_threads(RESOLVE_THREADS)
}

/// Runs `job` (caller identification, binary hashing) on an identification thread.
pub async fn identify<R, F>(job: F) -> Result<R, Unavailable>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    POOLS
        .get()
        .ok_or(Unavailable::NotStarted)?
        .identify
        .run(job)
        .await
}

/// Resolves `name` (an address literal or a host name) with the system resolver, on a
/// resolver thread.
pub async fn resolve(name: String, port: u16) -> Result<io::Result<Vec<SocketAddr>>, Unavailable> {
    let pools = POOLS.get().ok_or(Unavailable::NotStarted)?;
    pools
        .resolve
        .run(move || {
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn jobs_run_on_the_pools_threads_and_answer() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new("test", 8)));
        pool.spawn_threads(2).expect("threads");
        let answers = runtime().block_on(async {
            let mut answers = Vec::new();
            for n in 0..20u32 {
                answers.push(pool.run(move || n * 2).await.expect("answered"));
            }
            answers
        });
        assert_eq!(answers, (0..20).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_is_refused_at_once_not_waited_for() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new("test", 2)));
        pool.spawn_threads(1).expect("threads");
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let hold = || {
            let (gate, started) = (gate.clone(), started.clone());
            pool.submit(move || {
                started.fetch_add(1, Ordering::SeqCst);
                let (open, opened) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
            })
            .expect("room for it")
        };
        // One job holds the only thread; two more fill the queue.
        let mut held = vec![hold()];
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        held.extend([hold(), hold()]);
        let refused = pool.submit(|| ());
        assert!(
            matches!(refused, Err(Unavailable::Busy { queued: 2, .. })),
            "{refused:?}"
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let runtime = runtime();
        for answer in held {
            runtime.block_on(answer).expect("the held jobs ran");
        }
    }

    #[test]
    fn a_panicking_job_loses_its_answer_not_the_thread() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new("test", 8)));
        pool.spawn_threads(1).expect("threads");
        let runtime = runtime();
        let lost = runtime.block_on(pool.run(|| -> u32 { panic!("boom") }));
        assert!(matches!(lost, Err(Unavailable::Lost("test"))), "{lost:?}");
        assert_eq!(runtime.block_on(pool.run(|| 7)).expect("answered"), 7);
    }
}
