//! The proxy's memory budget: what the agent's connections make the supervisor hold, across
//! the whole proxy, is bounded, and when it is spent the newest connections give way.
//!
//! A request head is held until it ends, a TLS session keeps its records, a body passes
//! through a transfer buffer: the agent chooses how many connections hold how much. 4,000
//! connections each sending 60 KB of a head that never ends once grew the supervisor past
//! 300 MB, in the memory cgroup it shares with the agent, and kept a well-behaved client
//! waiting for seconds. So every such buffer is charged ([`Charge`]) to its connection's
//! [`Account`], and the accounts share one [`Budget`]:
//!
//! - A connection's first [`FLOOR`] bytes are its own: an ordinary request head fits, so a
//!   client that connects during a flood is still served. The connection cap bounds their sum
//!   (4,096 connections: 16 MiB).
//! - Beyond that, connections draw on the budget (`OPENSHELL_PROXY_BUFFER_BUDGET_MIB`).
//! - A charge that does not fit makes the connections drawing on the budget that are newer than
//!   the one asking give way, newest first, until it fits; if it still does not fit, the one
//!   asking is refused (it is then the newest of those drawing). Connections are aged by when
//!   they were accepted: those there first (an agent's long-lived, well-behaved connections to
//!   its model API) keep what they need, and a flood defeats only itself.
//!
//! A refused charge is an [`OverBudget`] error (an `io::Error` of kind `OutOfMemory` on the
//! byte paths): where a request waits for an answer, the proxy answers 503 and closes. A
//! connection made to give way is *evicted*: its drawn bytes count as free at once (they are
//! released when its task next runs, which the eviction wakes), every later charge of it is
//! refused, and [`Account::evicted`] completes, which each connection's task watches (answering
//! 503 too when it was waiting for a head). So at any moment the buffers are bounded by the
//! budget, the connections' floors, and the buffers of evicted connections on their way out.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use crate::log::RateLimit;

/// Bytes of each connection's buffers that never draw on the budget: an ordinary request head
/// fits (a CONNECT is a few hundred bytes; a browser-sized forward head with cookies, a few
/// KiB).
pub const FLOOR: usize = 4 * 1024;

/// The default budget when the pod sets no memory limit.
pub const DEFAULT: usize = 64 << 20;
/// The smallest default budget, however small the pod.
const SMALLEST_DEFAULT: usize = 4 << 20;
/// With a memory limit, the default budget is at most this fraction of it: the supervisor
/// stays far below what would make its memory the pod's problem (the agent's processes are the
/// OOM killer's first choice; this keeps the supervisor from being what fills the pod).
const LIMIT_SHARE: u64 = 8;

/// The default budget for a pod whose memory cgroup has `limit` (bytes), if any: an eighth of
/// it, between 4 and 64 MiB.
pub fn default_for(limit: Option<u64>) -> usize {
    match limit {
        None => DEFAULT,
        Some(limit) => usize::try_from(limit / LIMIT_SHARE)
            .unwrap_or(usize::MAX)
            .clamp(SMALLEST_DEFAULT, DEFAULT),
    }
}

/// A charge the budget could not take.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the proxy's buffer budget ({} MiB) is spent; the newest connections are refused", .total >> 20)]
pub struct OverBudget {
    /// The budget, in bytes.
    pub total: usize,
}

impl OverBudget {
    /// The refusal for a connection of `account` (evicted, or refused a charge).
    pub fn of(account: &Account) -> OverBudget {
        OverBudget {
            total: account.budget.total,
        }
    }
}

impl From<OverBudget> for io::Error {
    fn from(e: OverBudget) -> io::Error {
        io::Error::new(io::ErrorKind::OutOfMemory, e)
    }
}

/// The bytes connections may hold beyond their floors, shared by the whole proxy.
#[derive(Debug)]
pub struct Budget {
    total: usize,
    state: Mutex<State>,
    /// Ages handed to new accounts: larger is newer.
    next_age: AtomicU64,
    /// Woken whenever drawn bytes are given back.
    released: Notify,
    /// Refusals and evictions are operational lines, bounded like the rest.
    limiter: RateLimit,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes drawn by every account, evicted ones included until they release them.
    drawn: usize,
    /// The part of `drawn` held by evicted accounts: on its way back.
    leaving: usize,
    /// Accounts drawing on the budget and not evicted, by age: the newest are the last.
    drawing: BTreeMap<u64, Arc<Entry>>,
}

/// One connection's numbers. `held` changes only under the budget's lock.
#[derive(Debug)]
struct Entry {
    age: u64,
    held: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl Entry {
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed) as usize
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// What holding `held` bytes draws on the budget.
fn draw(held: usize) -> usize {
    held.saturating_sub(FLOOR)
}

/// How long a connection waits for newer ones, made to give way, to release their bytes
/// (they are woken at once; this only bounds a wait that should never be long).
const GIVE_WAY: Duration = Duration::from_secs(1);

/// What an attempt to grow a charge came to.
#[derive(Debug, PartialEq, Eq)]
enum Growth {
    /// Charged.
    Grown,
    /// Newer connections are giving way: try again once they released their bytes.
    Waiting,
    /// It cannot fit, even with every newer connection gone.
    Refused,
}

impl Budget {
    /// A budget of `total` bytes beyond the connections' floors.
    pub fn new(total: usize) -> Arc<Budget> {
        Arc::new(Budget {
            total,
            state: Mutex::default(),
            next_age: AtomicU64::new(0),
            released: Notify::new(),
            limiter: RateLimit::lines(5, Duration::from_secs(10), "proxy buffer budget spent"),
        })
    }

    /// An account for a connection accepted now (newer than every account opened before).
    pub fn open(self: &Arc<Budget>) -> Account {
        Account {
            budget: Arc::clone(self),
            entry: Arc::new(Entry {
                age: self.next_age.fetch_add(1, Ordering::Relaxed),
                held: AtomicU64::new(0),
                evicted: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    /// Bytes drawn on the budget now (evicted connections' included until they are gone).
    pub fn drawn(&self) -> usize {
        self.lock().drawn
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what `entry` holds to `after` bytes, taken however much is drawn already.
    fn set(&self, state: &mut State, entry: &Arc<Entry>, after: usize) {
        let (before, now) = (draw(entry.held()), draw(after));
        state.drawn = state.drawn + now - before;
        if entry.is_evicted() {
            state.leaving = state.leaving + now - before;
        } else if now > 0 {
            state.drawing.insert(entry.age, Arc::clone(entry));
        } else {
            state.drawing.remove(&entry.age);
        }
        entry.held.store(after as u64, Ordering::Relaxed);
        if now < before {
            self.released.notify_waiters();
        }
    }

    /// Changes what `entry` holds by `from` → `to` bytes of one charge, whatever the budget
    /// says: shrinking, or bytes that exist already changing hands.
    fn force(&self, entry: &Arc<Entry>, from: usize, to: usize) {
        let mut state = self.lock();
        let after = entry.held() - from + to;
        self.set(&mut state, entry, after);
    }

    /// Tries to grow what `entry` holds by `from` → `to` bytes of one charge. When it does
    /// not fit, newer accounts give way, newest first, as many as it takes (none when even
    /// all of them would not make room).
    fn grow(&self, entry: &Arc<Entry>, from: usize, to: usize) -> Growth {
        let mut state = self.lock();
        if entry.is_evicted() {
            return Growth::Refused;
        }
        let after = entry.held() - from + to;
        let need = draw(after) - draw(entry.held());
        if state.drawn + need <= self.total {
            self.set(&mut state, entry, after);
            return Growth::Grown;
        }
        // What stays once everything on its way back is gone, and the newer accounts that
        // must go too.
        let mut staying = state.drawn - state.leaving;
        let mut victims = Vec::new();
        for (&age, victim) in state.drawing.iter().rev() {
            if staying + need <= self.total || age <= entry.age {
                break;
            }
            staying -= draw(victim.held());
            victims.push(age);
        }
        let refused = staying + need > self.total;
        if !refused {
            for age in &victims {
                if let Some(victim) = state.drawing.remove(age) {
                    state.leaving += draw(victim.held());
                    victim.evicted.store(true, Ordering::Release);
                    victim.wake.notify_waiters();
                }
            }
        }
        let evicted = if refused { 0 } else { victims.len() };
        if (refused || evicted > 0) && self.limiter.allow() {
            let mib = self.total >> 20;
            let what = match evicted {
                0 => "the newest connection refused (503)".to_owned(),
                n => format!("{n} newer connections closed (503) for an older one"),
            };
            tracing::warn!(
                layer = "proxy",
                event = "over_budget",
                budget_mib = mib,
                evicted,
                refused,
                "proxy buffer budget ({mib} MiB) spent: {what}"
            );
        }
        match refused {
            true => Growth::Refused,
            false => Growth::Waiting,
        }
    }
}

/// One connection's share of the budget: what its buffers hold, and whether it was made to
/// give way. Clones are the same account (both directions of a connection charge it).
#[derive(Debug, Clone)]
pub struct Account {
    budget: Arc<Budget>,
    entry: Arc<Entry>,
}

impl Account {
    /// A charge of nothing yet, to grow with a buffer.
    pub fn charge(&self) -> Charge {
        Charge {
            account: self.clone(),
            bytes: 0,
        }
    }

    /// A charge of `bytes` (e.g. a TLS session's state), refused when it does not fit.
    pub async fn hold(&self, bytes: usize) -> Result<Charge, OverBudget> {
        let mut charge = self.charge();
        charge.resize(bytes).await?;
        Ok(charge)
    }

    /// A charge for `bytes` that exist already (a buffer handed over from another charge,
    /// which the giver releases): taken even when it does not fit.
    pub fn adopt(&self, bytes: usize) -> Charge {
        let mut charge = self.charge();
        charge.adopt(bytes);
        charge
    }

    /// What this connection's buffers hold now.
    pub fn held(&self) -> usize {
        self.entry.held()
    }

    /// Whether the connection was made to give way to an older one.
    pub fn is_evicted(&self) -> bool {
        self.entry.is_evicted()
    }

    /// Completes when the connection is made to give way to an older one.
    pub async fn evicted(&self) {
        let notified = self.entry.wake.notified();
        tokio::pin!(notified);
        loop {
            // Registered before the flag is read: an eviction in between still wakes it.
            notified.as_mut().enable();
            if self.is_evicted() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.entry.wake.notified());
        }
    }

    /// Runs `work` until it completes (`Some`) or the connection is evicted (`None`; `work`
    /// is dropped with every buffer it holds). `work` is polled first, so that one that
    /// answers its eviction itself (a 503 for a head it was reading) can do so.
    pub async fn until_evicted<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = work => Some(out),
            () = self.evicted() => None,
        }
    }
}

/// Bytes one buffer holds, charged to its connection's account; released when dropped.
#[derive(Debug)]
pub struct Charge {
    account: Account,
    bytes: usize,
}

impl Charge {
    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The connection's account.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Charges `bytes` instead. Shrinking always succeeds. Growth succeeds when it fits; when
    /// it does not, newer connections give way and this waits (briefly) for them to release
    /// their bytes; when even that would not make room, it is refused and nothing changes.
    pub async fn resize(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes <= self.bytes {
            self.adopt(bytes);
            return Ok(());
        }
        let (budget, entry) = (&self.account.budget, &self.account.entry);
        let deadline = tokio::time::Instant::now() + GIVE_WAY;
        loop {
            let released = budget.released.notified();
            tokio::pin!(released);
            // Registered before trying: a release in between still wakes it.
            released.as_mut().enable();
            match budget.grow(entry, self.bytes, bytes) {
                Growth::Grown => {
                    self.bytes = bytes;
                    return Ok(());
                }
                Growth::Refused => return Err(OverBudget::of(&self.account)),
                Growth::Waiting => {}
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(OverBudget::of(&self.account));
            }
        }
    }

    /// Charges `bytes` instead, even beyond the budget: for bytes that exist already.
    pub fn adopt(&mut self, bytes: usize) {
        if bytes != self.bytes {
            let account = &self.account;
            account.budget.force(&account.entry, self.bytes, bytes);
            self.bytes = bytes;
        }
    }

    /// Releases everything.
    pub fn release(&mut self) {
        self.adopt(0);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// One side's read buffer: bytes read but not yet consumed (a head being assembled, body
/// bytes that came with it, pipelined requests), its memory charged to the connection.
#[derive(Debug)]
pub struct Buffered {
    /// The unconsumed bytes.
    pub bytes: Vec<u8>,
    charge: Charge,
}

/// Spare room below which a read first grows the buffer.
const LEAST_READ: usize = 1024;

impl Buffered {
    /// An empty buffer charged to `account`.
    pub fn new(account: &Account) -> Buffered {
        Buffered {
            bytes: Vec::new(),
            charge: account.charge(),
        }
    }

    /// Bytes read earlier (and released by whoever read them), now charged to `account`.
    pub fn adopt(bytes: Vec<u8>, account: &Account) -> Buffered {
        let charge = account.adopt(bytes.capacity());
        Buffered { bytes, charge }
    }

    /// The connection's account.
    pub fn account(&self) -> &Account {
        self.charge.account()
    }

    /// Makes room for a read: the first one gets the connection's floor, each later growth
    /// quadruples the buffer (a 64 KiB head grows 4 → 16 → 64 KiB: few steps, so that few
    /// freed blocks are left behind by connections growing side by side). The growth is
    /// charged first, and refused over the budget.
    pub async fn make_room(&mut self) -> Result<(), OverBudget> {
        let (len, capacity) = (self.bytes.len(), self.bytes.capacity());
        if capacity - len >= LEAST_READ {
            return Ok(());
        }
        let target = (capacity * 4).max(len + LEAST_READ).max(FLOOR);
        self.charge.resize(target).await?;
        self.bytes.reserve_exact(target - len);
        // The allocator may give a little more: what is held is charged.
        self.charge.adopt(self.bytes.capacity());
        Ok(())
    }

    /// Reads more from `src`; 0 at end of stream. Over the budget: an error of kind
    /// `OutOfMemory`.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> io::Result<usize> {
        self.make_room().await?;
        src.read_buf(&mut self.bytes).await
    }

    /// Drops the first `n` bytes; gives the memory back when nothing is left (an idle
    /// keep-alive connection keeps at most its floor).
    pub fn consume(&mut self, n: usize) {
        self.bytes.drain(..n);
        if self.bytes.is_empty() && self.bytes.capacity() > FLOOR {
            self.bytes = Vec::new();
            self.charge.release();
        }
    }

    /// Drops every byte and gives the memory back.
    pub fn clear(&mut self) {
        self.bytes = Vec::new();
        self.charge.release();
    }

    /// Hands the unconsumed bytes over, in a vector of their own size (uncharged: the taker
    /// charges them), and gives the buffer's memory back.
    pub fn take(&mut self) -> Vec<u8> {
        let bytes = self.bytes.to_vec();
        self.clear();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn the_default_is_an_eighth_of_the_pods_limit_between_4_and_64_mib() {
        for (limit, expected) in [
            (None, 64 << 20),
            (Some(8u64 << 30), 64 << 20),
            (Some(512 << 20), 64 << 20),
            (Some(200 << 20), 25 << 20),
            (Some(16 << 20), 4 << 20),
        ] {
            assert_eq!(default_for(limit), expected, "limit {limit:?}");
        }
    }

    #[tokio::test]
    async fn the_floor_never_draws_and_never_fails() {
        let budget = Budget::new(0);
        let accounts: Vec<Account> = (0..100).map(|_| budget.open()).collect();
        let mut charges = Vec::new();
        for account in &accounts {
            charges.push(account.hold(FLOOR).await.expect("within the floor"));
        }
        assert_eq!(budget.drawn(), 0);
        assert!(
            accounts[0].hold(1).await.is_err(),
            "beyond the floor, a budget of 0 refuses"
        );
        drop(charges);
        assert!(accounts.iter().all(|a| a.held() == 0));
    }

    #[tokio::test]
    async fn growth_beyond_the_floor_draws_and_shrinking_gives_back() {
        let budget = Budget::new(100 * KIB);
        let account = budget.open();
        let mut head = account.hold(FLOOR).await.expect("floor");
        let mut scratch = account.hold(10 * KIB).await.expect("fits");
        assert_eq!(budget.drawn(), 10 * KIB);
        head.resize(64 * KIB).await.expect("fits");
        assert_eq!(account.held(), 74 * KIB);
        assert_eq!(budget.drawn(), 74 * KIB - FLOOR);
        scratch.resize(0).await.expect("shrinking");
        assert_eq!(budget.drawn(), 64 * KIB - FLOOR);
        drop(head);
        assert_eq!((budget.drawn(), account.held()), (0, 0));
    }

    /// `n` accounts, each holding `draw` bytes beyond its floor, their charges kept in
    /// tasks that drop them when evicted (as a connection's task does).
    async fn connections(budget: &Arc<Budget>, n: usize, draw: usize) -> Vec<Account> {
        let mut accounts = Vec::new();
        for _ in 0..n {
            let account = budget.open();
            let charge = account.hold(FLOOR + draw).await.expect("fits");
            let watching = account.clone();
            tokio::spawn(async move {
                watching.evicted().await;
                drop(charge);
            });
            accounts.push(account);
        }
        accounts
    }

    /// Over the budget, the newest connections give way to an older one, newest first, and
    /// only as many as needed, once they are gone; a connection newer than every other one
    /// drawing is refused, and nobody gives way for it.
    #[tokio::test]
    async fn the_newest_give_way() {
        let budget = Budget::new(300 * KIB);
        let accounts = connections(&budget, 3, 100 * KIB).await;
        assert_eq!(budget.drawn(), 300 * KIB);
        let newest = budget.open();
        assert!(newest.hold(FLOOR + KIB).await.is_err());
        assert!(accounts.iter().all(|a| !a.is_evicted()));
        assert_eq!(newest.held(), 0);
        // The oldest asks for 150 KiB more: the two newer ones give way (one would not do).
        let more = accounts[0]
            .hold(150 * KIB)
            .await
            .expect("the newer ones gave way");
        let evicted: Vec<bool> = accounts.iter().map(Account::is_evicted).collect();
        assert_eq!(evicted, [false, true, true]);
        assert_eq!(budget.drawn(), 250 * KIB, "what the evicted held is gone");
        assert_eq!(accounts[1].held(), 0);
        // An evicted account's later growth is refused.
        assert!(accounts[1].hold(FLOOR + KIB).await.is_err());
        drop(more);
        assert_eq!(budget.drawn(), 100 * KIB);
    }

    /// Nothing newer to give way: the asking connection is refused, the older ones keep
    /// theirs.
    #[tokio::test]
    async fn only_newer_connections_give_way() {
        let budget = Budget::new(100 * KIB);
        let old = connections(&budget, 1, 100 * KIB).await;
        let new = budget.open();
        assert!(new.hold(FLOOR + KIB).await.is_err());
        assert!(!old[0].is_evicted());
        assert_eq!(budget.drawn(), 100 * KIB);
    }

    /// A connection that would not fit even with every newer one gone makes nobody give
    /// way.
    #[tokio::test]
    async fn nobody_gives_way_in_vain() {
        let budget = Budget::new(200 * KIB);
        let accounts = connections(&budget, 2, 100 * KIB).await;
        assert!(accounts[0].hold(150 * KIB).await.is_err());
        assert!(!accounts[1].is_evicted());
        assert_eq!(budget.drawn(), 200 * KIB);
    }

    /// Bytes of a connection made to give way count until it releases them: a connection
    /// that does not (yet) leaves the older one refused after a bounded wait, never over
    /// the budget.
    #[tokio::test]
    async fn evicted_bytes_count_until_released() {
        let budget = Budget::new(100 * KIB);
        let (old, new) = (budget.open(), budget.open());
        let stuck = new.hold(FLOOR + 100 * KIB).await.expect("fits");
        let started = std::time::Instant::now();
        assert!(old.hold(FLOOR + KIB).await.is_err());
        assert!(new.is_evicted());
        assert!(started.elapsed() >= GIVE_WAY);
        assert_eq!(budget.drawn(), 100 * KIB);
        drop(stuck);
        assert_eq!(budget.drawn(), 0);
        assert!(old.hold(FLOOR + 100 * KIB).await.is_ok());
    }

    #[tokio::test]
    async fn adopted_bytes_are_counted_even_over_the_budget() {
        let budget = Budget::new(10 * KIB);
        let account = budget.open();
        let adopted = account.adopt(FLOOR + 20 * KIB);
        assert_eq!(budget.drawn(), 20 * KIB);
        assert!(account.hold(1).await.is_err());
        drop(adopted);
        assert_eq!(budget.drawn(), 0);
    }

    #[tokio::test]
    async fn an_eviction_ends_the_connections_work() {
        let budget = Budget::new(10 * KIB);
        let old = budget.open();
        let new = connections(&budget, 1, 10 * KIB).await.remove(0);
        let waiting = tokio::spawn({
            let new = new.clone();
            async move { new.until_evicted(std::future::pending::<()>()).await }
        });
        tokio::task::yield_now().await;
        let _older = old
            .hold(FLOOR + 10 * KIB)
            .await
            .expect("the newer one gave way");
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
        // Evicted before anyone waits: completes at once.
        assert_eq!(new.until_evicted(std::future::pending::<()>()).await, None);
    }

    /// A head grows in a few steps, each charged; consumed, its memory goes back beyond the
    /// floor.
    #[tokio::test]
    async fn a_buffer_is_charged_as_it_grows() {
        let budget = Budget::new(64 * KIB);
        let account = budget.open();
        let mut head = Buffered::new(&account);
        let mut src: &[u8] = &[b'a'; 60 * 1024];
        let mut steps = Vec::new();
        while head.fill(&mut src).await.expect("within the budget") > 0 {
            steps.push(head.bytes.capacity());
        }
        steps.dedup();
        assert_eq!(steps, [4 * KIB, 16 * KIB, 64 * KIB]);
        assert_eq!(account.held(), 64 * KIB);
        head.consume(head.bytes.len());
        assert_eq!((account.held(), head.bytes.capacity()), (0, 0));
        // Over the budget: refused as an out-of-memory error, nothing read.
        let mut other = Buffered::new(&budget.open());
        let _big = account.hold(FLOOR + 64 * KIB).await.expect("fits");
        let mut src: &[u8] = &[b'a'; 8 * 1024];
        assert_eq!(other.fill(&mut src).await.expect("the floor").min(1), 1);
        let refused = other.fill(&mut src).await.expect_err("beyond the floor");
        assert_eq!(refused.kind(), io::ErrorKind::OutOfMemory);
    }
}
