//! Rate limits on noisy log sources, with exact accounting of what they hold back.
//!
//! A sandboxed process looping on a refused call must not be able to flood the pod's log, so a
//! source logs at most `burst` lines per `period`. But a refusal that is neither logged nor
//! counted is one an operator never learns about: every line a limiter holds back is counted,
//! and the counts are flushed as summary lines on a timer (the log writer's tick, about once a
//! second), when the limiter goes away, and at exit ([`crate::log::finish`]), not only when the
//! source happens to log again.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::ACCOUNTING_TARGET;

/// Every limiter alive, so that one timer can flush them all.
static LIMITERS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Bounds how many lines a noisy source can log: `burst` lines per `period`. The lines held
/// back are counted and reported by [`flush_summaries`].
#[derive(Debug)]
pub struct RateLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    burst: u32,
    period: Duration,
    held: Held,
    state: Mutex<Counts>,
}

/// What a limiter holds back, which says how its summary is reported.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// Denial lines: summarised as `denials_suppressed`, which the denial accounting adds up.
    Denials,
    /// Operational lines of the named source (not refusals of anything the agent tried):
    /// summarised as `lines_suppressed`, so that they never count as denials.
    Lines(&'static str),
}

#[derive(Debug)]
struct Counts {
    window_start: Instant,
    logged: u32,
    /// Held back and not yet reported in a summary.
    unreported: u64,
}

impl RateLimit {
    /// A limiter allowing `burst` lines per `period`, whose held-back lines count as denials.
    pub fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit::holding(burst, period, Held::Denials)
    }

    /// A limiter for operational lines of `source` (e.g. `accept failed`), which are not
    /// denials: what it holds back is summarised as `lines_suppressed`, naming the source.
    pub fn lines(burst: u32, period: Duration, source: &'static str) -> RateLimit {
        RateLimit::holding(burst, period, Held::Lines(source))
    }

    fn holding(burst: u32, period: Duration, held: Held) -> RateLimit {
        let inner = Arc::new(Inner {
            burst,
            period,
            held,
            state: Mutex::new(Counts {
                window_start: Instant::now(),
                logged: 0,
                unreported: 0,
            }),
        });
        let mut all = LIMITERS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|l| l.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        RateLimit { inner }
    }

    /// True when the caller may log now; otherwise the line is counted for the next summary.
    pub fn allow(&self) -> bool {
        let mut counts = self.inner.lock();
        if counts.window_start.elapsed() >= self.inner.period {
            counts.window_start = Instant::now();
            counts.logged = 0;
        }
        if counts.logged < self.inner.burst {
            counts.logged += 1;
            true
        } else {
            counts.unreported += 1;
            false
        }
    }

    /// Logs the summary of what this limiter held back since the last one, if anything.
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) {
        let count = std::mem::take(&mut self.lock().unreported);
        if count == 0 {
            return;
        }
        match self.held {
            Held::Denials => tracing::warn!(
                target: ACCOUNTING_TARGET,
                event = "denials_suppressed",
                count,
                "{count} more denials were not logged (at most {} per {:?} are)",
                self.burst,
                self.period
            ),
            Held::Lines(source) => tracing::warn!(
                target: ACCOUNTING_TARGET,
                event = "lines_suppressed",
                source,
                count,
                "{count} more {source:?} lines were not logged (at most {} per {:?} are)",
                self.burst,
                self.period
            ),
        }
    }
}

impl Drop for Inner {
    /// A limiter that goes away (its source ended: the seccomp listener closed, the proxy
    /// stopped) reports its last count; the timer will not find it any more.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Logs the summary of every limiter that held lines back since its last summary.
pub fn flush_summaries() {
    let live: Vec<Arc<Inner>> = {
        let mut all = LIMITERS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|l| l.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    for limiter in live {
        limiter.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_either_allowed_or_counted_until_flushed() {
        let limit = RateLimit::new(3, Duration::from_secs(3600));
        let allowed = (0..10).filter(|_| limit.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(limit.inner.lock().unreported, 7);
        limit.flush();
        assert_eq!(limit.inner.lock().unreported, 0);
        // The window is not reset by a flush: the burst stays spent.
        assert!(!limit.allow());
        assert_eq!(limit.inner.lock().unreported, 1);
    }

    #[test]
    fn a_new_window_allows_a_new_burst_and_keeps_the_count() {
        let limit = RateLimit::new(2, Duration::from_millis(20));
        assert!(limit.allow() && limit.allow() && !limit.allow());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limit.allow() && limit.allow() && !limit.allow());
        assert_eq!(limit.inner.lock().unreported, 2);
    }

    /// The summary lines a limiter's flush writes, as JSON objects.
    fn summaries(limit: &RateLimit) -> Vec<serde_json::Value> {
        let captured = super::super::Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || limit.flush());
        captured
            .text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Held-back operational lines (an accept that failed, a connection over the memory
    /// budget) are summarised apart: counted as denials, they would make the denial accounting
    /// report refusals the agent never made.
    #[test]
    fn operational_lines_are_not_summarised_as_denials() {
        let denials = RateLimit::new(1, Duration::from_secs(3600));
        let lines = RateLimit::lines(1, Duration::from_secs(3600), "accept failed");
        for limit in [&denials, &lines] {
            assert_eq!((0..4).filter(|_| limit.allow()).count(), 1);
        }
        let denied = summaries(&denials);
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0]["event"], "denials_suppressed");
        assert_eq!(denied[0]["count"], 3);
        let held = summaries(&lines);
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0]["event"], "lines_suppressed");
        assert_eq!(held[0]["source"], "accept failed");
        assert_eq!(held[0]["count"], 3);
    }

    #[test]
    fn dropped_limiters_leave_the_registry() {
        let limit = RateLimit::new(1, Duration::from_secs(1));
        let weak = Arc::downgrade(&limit.inner);
        drop(limit);
        let _next = RateLimit::new(1, Duration::from_secs(1));
        let all = LIMITERS.lock().unwrap_or_else(|p| p.into_inner());
        assert!(all.iter().all(|l| !Weak::ptr_eq(l, &weak)));
    }
}
