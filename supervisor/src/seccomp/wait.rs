//! Waiting on the agent's behalf, in the serving threads' descriptor table.
//!
//! A call the supervisor makes for the agent sometimes cannot end at once: a blocking
//! `connect()` to a distant server, a binary to hash before its first connection. The serving
//! threads never wait (one slow connection must not delay everyone else's calls); they hand
//! the rest to a [`Waiter`]: one thread watching an epoll set for connections to finish, and
//! two threads hashing binaries in turn.
//!
//! Not an async runtime: the serving threads have a descriptor table of their own (see
//! [`start_serving`](super::start_serving)), and tokio keeps process-wide descriptors of the
//! shared table for its signal handling, which this table does not have. Every thread here is
//! started from the first serving thread once its table is private, so it shares that table,
//! and blocks every signal (a handler run here,
//! tokio's included, would write to a descriptor number of the other table).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::Notice;

/// How often the waiter checks that each caller still waits (and whether to stop).
const STILL_WAITING: Duration = Duration::from_secs(1);
/// Threads hashing binaries seen for the first time, each in turn.
const HASHERS: usize = 2;

/// What runs once a watched socket is writable: the socket and the caller's notice.
type Then = Box<dyn FnOnce(OwnedFd, Notice) + Send>;
/// A job that may block (hashing a binary).
type Job = Box<dyn FnOnce() + Send>;

struct Watched {
    fd: OwnedFd,
    notice: Notice,
    then: Then,
}

/// The waiting threads of the serving threads' table.
pub struct Waiter {
    epoll: Epoll,
    watched: Mutex<HashMap<u64, Watched>>,
    next: AtomicU64,
    jobs: Mutex<Option<Sender<Job>>>,
    stop: AtomicBool,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}

/// The running waiter; [`Running::stop`] ends its threads.
#[derive(Debug)]
pub struct Running {
    waiter: Arc<Waiter>,
    threads: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The waiter of this thread's table, on the threads that may use it.
    static CURRENT: RefCell<Option<Arc<Waiter>>> = const { RefCell::new(None) };
}

/// The waiter of the calling thread's table: set on the serving threads and on the waiter's
/// own threads, `None` anywhere else.
pub fn current() -> Option<Arc<Waiter>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Makes `waiter` the calling thread's (a serving thread of the same table).
pub fn enter(waiter: &Arc<Waiter>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(waiter.clone()));
}

/// Blocks every signal on the calling thread and the threads it starts.
pub fn block_signals() {
    let _ = nix::sys::signal::SigSet::all().thread_block();
}

impl Waiter {
    /// Starts the waiting threads; call from a thread of the table they serve, with every
    /// signal blocked.
    pub fn start() -> std::io::Result<Running> {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let waiter = Arc::new(Waiter {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            watched: Mutex::default(),
            next: AtomicU64::new(0),
            jobs: Mutex::new(Some(sender)),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let watching = waiter.clone();
        threads.push(
            std::thread::Builder::new()
                .name("seccomp-wait".into())
                .spawn(move || {
                    enter(&watching);
                    watching.watch();
                })?,
        );
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..HASHERS {
            let (waiter, receiver) = (waiter.clone(), receiver.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("seccomp-hash".into())
                    .spawn(move || {
                        enter(&waiter);
                        work(&receiver);
                    })?,
            );
        }
        Ok(Running { waiter, threads })
    }

    /// Runs `then` with `fd` once it is writable (the connection attempt ended), on the
    /// waiter's thread, if the caller still waits for `notice` by then; otherwise drops both.
    pub fn when_writable(
        &self,
        fd: OwnedFd,
        notice: Notice,
        then: impl FnOnce(OwnedFd, Notice) + Send + 'static,
    ) {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let event = EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLONESHOT, key);
        // Registered under the lock, so that the waiter cannot see the event before the
        // entry exists.
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.epoll.add(fd.as_fd(), event) {
            drop(watched);
            return notice.fail(e as i32);
        }
        let then = Box::new(then);
        watched.insert(key, Watched { fd, notice, then });
    }

    /// Runs `job` on a hashing thread, in turn with the others.
    pub fn blocking(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Errno> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.as_ref().map(|s| s.send(Box::new(job))) {
            Some(Ok(())) => Ok(()),
            _ => Err(Errno::EAGAIN),
        }
    }

    fn watch(&self) {
        let mut events = [EpollEvent::empty(); 64];
        let mut swept = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = EpollTimeout::try_from(STILL_WAITING).unwrap_or(EpollTimeout::NONE);
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!("waiting for the agent's connections failed: {e}");
                    break;
                }
            };
            for event in &events[..ready] {
                if let Some(done) = self.take(event.data()) {
                    (done.then)(done.fd, done.notice);
                }
            }
            if swept.elapsed() >= STILL_WAITING {
                swept = Instant::now();
                self.sweep();
            }
        }
    }

    fn take(&self, key: u64) -> Option<Watched> {
        let watched = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)?;
        let _ = self.epoll.delete(watched.fd.as_fd());
        Some(watched)
    }

    /// Forgets the connections whose callers stopped waiting (interrupted, or gone).
    fn sweep(&self) {
        let gone: Vec<u64> = {
            let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            watched
                .iter()
                .filter(|(_, w)| !w.notice.valid())
                .map(|(key, _)| *key)
                .collect()
        };
        for key in gone {
            drop(self.take(key));
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

impl Running {
    /// The waiter.
    pub fn waiter(&self) -> &Arc<Waiter> {
        &self.waiter
    }

    /// Ends the threads (within a second) and drops what they held, on this thread.
    pub fn stop(self) {
        self.waiter.stop.store(true, Ordering::Relaxed);
        self.waiter
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for thread in self.threads {
            let _ = thread.join();
        }
        self.waiter
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
