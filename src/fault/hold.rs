//! Held requests: a request a `hold` rule fired on waits here until the control socket
//! releases it (by hold id, by rule, or all), so a test can order two processes' requests
//! exactly. Clearing the rule, or unmounting, releases what it holds.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A waiting request, as `fault holds` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Hold id, for `release`.
    pub hold: u64,
    /// The rule that holds it.
    pub rule: u64,
    /// The request's trace sequence number (0 if recording is off).
    pub seq: u64,
    /// Operation name.
    pub op: String,
    /// Path, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Caller's process id.
    pub pid: u32,
    /// Caller's command name.
    pub comm: String,
    /// Milliseconds it has waited.
    pub waited_ms: u64,
}

#[derive(Debug)]
struct Entry {
    info: Held,
    since: Instant,
    released: bool,
}

/// Every held request of a mount.
#[derive(Debug, Default)]
pub struct Holds {
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<u64, Entry>,
    /// Set at unmount: nothing is held any more.
    closed: bool,
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the calling request until it is released; returns how long it waited.
    pub fn hold(&self, mut info: Held) -> Duration {
        let start = Instant::now();
        let mut s = self.lock();
        if s.closed {
            return Duration::ZERO;
        }
        s.next += 1;
        let id = s.next;
        info.hold = id;
        s.waiting.insert(
            id,
            Entry {
                info,
                since: start,
                released: false,
            },
        );
        self.changed.notify_all();
        while !s.closed && s.waiting.get(&id).is_some_and(|e| !e.released) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting.remove(&id);
        start.elapsed()
    }

    /// The requests waiting now, oldest first.
    pub fn list(&self) -> Vec<Held> {
        self.lock()
            .waiting
            .values()
            .filter(|e| !e.released)
            .map(|e| Held {
                waited_ms: e.since.elapsed().as_millis() as u64,
                ..e.info.clone()
            })
            .collect()
    }

    /// Waits until at least `n` requests are held, or `timeout` passes; returns the list.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Held> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            let held = s.waiting.values().filter(|e| !e.released).count();
            let now = Instant::now();
            if held >= n || now >= deadline || s.closed {
                drop(s);
                return self.list();
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn release_where(&self, pred: impl Fn(&Held) -> bool) -> Vec<u64> {
        let mut s = self.lock();
        let mut released = Vec::new();
        for (id, e) in s.waiting.iter_mut() {
            if !e.released && pred(&e.info) {
                e.released = true;
                released.push(*id);
            }
        }
        drop(s);
        self.changed.notify_all();
        released
    }

    /// Releases one held request; false if no such hold is waiting.
    pub fn release(&self, hold: u64) -> bool {
        !self.release_where(|h| h.hold == hold).is_empty()
    }

    /// Releases every request held by `rule`; returns their hold ids.
    pub fn release_rule(&self, rule: u64) -> Vec<u64> {
        self.release_where(|h| h.rule == rule)
    }

    /// Releases everything held.
    pub fn release_all(&self) -> Vec<u64> {
        self.release_where(|_| true)
    }

    /// Releases everything and holds nothing from now on (unmount).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn info(rule: u64) -> Held {
        Held {
            hold: 0,
            rule,
            seq: 1,
            op: "write".into(),
            path: None,
            pid: 1,
            comm: "t".into(),
            waited_ms: 0,
        }
    }

    #[test]
    fn held_requests_wait_until_released_in_the_chosen_order() {
        let holds = Arc::new(Holds::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |rule: u64| {
            let (h, o) = (holds.clone(), order.clone());
            std::thread::spawn(move || {
                h.hold(info(rule));
                o.lock().unwrap().push(rule);
            })
        };
        let a = spawn(1);
        holds.wait_for(1, Duration::from_secs(5));
        let b = spawn(2);
        let list = holds.wait_for(2, Duration::from_secs(5));
        assert_eq!(list.len(), 2);
        assert!(holds.release(list[1].hold));
        b.join().unwrap();
        assert_eq!(holds.release_rule(1).len(), 1);
        a.join().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![2, 1]);
        assert!(!holds.release(99));
        holds.close();
        assert_eq!(holds.hold(info(3)), Duration::ZERO);
    }
}
