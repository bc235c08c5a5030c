//! Who sent a request: the process id and command name of the calling thread, read from
//! /proc once and then cached, so that the request path reads /proc only for a thread it has
//! not seen lately.
//!
//! An entry is dropped when the kernel's process connector reports that the thread called
//! `execve` or exited ([`super::exec_watch`], as root), and in any case after [`TTL`] (or
//! [`SHORT_TTL`] when no connector is available: then, for up to that long after an exec,
//! requests may still carry the old command name). The cache is sharded by thread id so
//! that session threads rarely share a lock.

use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::exec_watch::{self, ExecWatch};
use crate::text::Comm;

/// How long a cached process id and name are trusted while exec notices arrive.
pub const TTL: Duration = Duration::from_secs(1);
/// How long they are trusted without exec notices.
pub const SHORT_TTL: Duration = Duration::from_millis(20);
const SHARDS: usize = 16;
/// Shard size past which expired entries are swept.
const SWEEP_AT: usize = 1024;

/// A caller's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    /// Process id (thread group id); 0 if the thread was gone.
    pub pid: u32,
    /// Command name of the process; empty if unknown.
    pub comm: Comm,
}

#[derive(Debug)]
struct Entry {
    who: Who,
    /// When it was read from /proc, on the caller's clock.
    fetched: u64,
    epoch: (u64, u64),
}

/// Thread id to process cache.
#[derive(Debug)]
pub struct WhoCache {
    shards: Vec<Mutex<FxHashMap<u32, Entry>>>,
    watch: Option<&'static ExecWatch>,
    /// Unique in the process: a thread's memo belongs to one cache, and its times to that
    /// cache's clock (a later cache may get the same address and a clock that starts at 0).
    id: u64,
}

impl Default for WhoCache {
    fn default() -> Self {
        WhoCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            watch: exec_watch::watch(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }
}

impl WhoCache {
    /// How long an entry is trusted, in nanoseconds.
    fn ttl(&self) -> u64 {
        let ttl = if self.watch.is_some() { TTL } else { SHORT_TTL };
        ttl.as_nanos() as u64
    }

    /// The process of thread `tid` (0 means the kernel itself: no process).
    pub fn lookup(&self, tid: u32) -> Who {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = EPOCH.get_or_init(Instant::now);
        self.lookup_at(tid, epoch.elapsed().as_nanos() as u64)
    }

    /// [`WhoCache::lookup`], with the time of the request in nanoseconds, read once by the
    /// caller from a monotonic clock; a cache must always be given times from the same clock.
    pub fn lookup_at(&self, tid: u32, now: u64) -> Who {
        if tid == 0 {
            return Who {
                pid: 0,
                comm: Comm::default(),
            };
        }
        let ttl = self.ttl();
        // Taken before reading /proc: an exec during the read makes the entry stale.
        let generation = self.watch.map_or(0, |w| {
            w.catch_up();
            w.generation()
        });
        let id = self.id;
        // The last caller this thread served, if no thread has exec'd or exited since.
        let last = LAST.with(|l| match &*l.borrow() {
            Some(m)
                if (m.cache, m.tid, m.generation) == (id, tid, generation)
                    && now.saturating_sub(m.fetched) < ttl =>
            {
                Some(m.who.clone())
            }
            _ => None,
        });
        if let Some(who) = last {
            return who;
        }
        let remember = |who: &Who, fetched: u64| {
            LAST.with(|l| {
                *l.borrow_mut() = Some(Memo {
                    cache: id,
                    tid,
                    generation,
                    fetched,
                    who: who.clone(),
                })
            })
        };
        let epoch = self.watch.map_or((0, 0), |w| w.epoch(tid));
        let shard = &self.shards[tid as usize % SHARDS];
        {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(&tid) {
                if now.saturating_sub(e.fetched) < ttl && e.epoch == epoch {
                    remember(&e.who, e.fetched);
                    return e.who.clone();
                }
            }
        }
        let who = read_proc(tid).unwrap_or_else(|| Who {
            pid: 0,
            comm: Comm::default(),
        });
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, e| now.saturating_sub(e.fetched) < ttl);
        }
        map.insert(
            tid,
            Entry {
                who: who.clone(),
                fetched: now,
                epoch,
            },
        );
        remember(&who, now);
        who
    }
}

/// The last caller a session thread looked up: one thread mostly serves one caller at a
/// time, and this answers without a lock while no thread anywhere has exec'd or exited.
struct Memo {
    cache: u64,
    tid: u32,
    generation: u64,
    fetched: u64,
    who: Who,
}

thread_local! {
    static LAST: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

/// Reads the thread group id of `tid` and that process's command name.
fn read_proc(tid: u32) -> Option<Who> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let pid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(Who {
        pid,
        comm: Comm::from(comm.trim_end_matches('\n')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_from_one_of_its_threads() {
        let cache = WhoCache::default();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let who = cache.lookup(tid);
        assert_eq!(who.pid, std::process::id());
        let expected = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(&*who.comm, expected.trim_end());
        let other = std::thread::spawn(|| unsafe { libc::gettid() } as u32)
            .join()
            .unwrap();
        // The thread has exited: its tid is unknown now (or reused by another process). A
        // join returns when the thread clears its tid, a little before the kernel removes it
        // from /proc: wait for that.
        let task = format!("/proc/self/task/{other}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&task).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_ne!(cache.lookup(other).pid, std::process::id());
        assert_eq!(cache.lookup(0).pid, 0);
    }
}
