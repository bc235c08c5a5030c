//! The recorder: takes one event per request from the session threads and keeps it.
//!
//! The request path only numbers the event (one atomic counter), fills plain fields and
//! encodes it ([`super::record`]) at the end of its thread's lane: a byte buffer behind a
//! lock that only that thread and, every few milliseconds, the collector take. The collector
//! thread ("rawfs-trace") swaps each lane's buffer for an empty one (the two are reused, so
//! the memory the request path writes stays in cache), merges the lanes' records in sequence
//! order into the in-memory buffer (the newest `capacity` events, still encoded) and, when a
//! trace file is set, writes them as JSON lines. If a lane is full, the overflow policy
//! decides: `Wait` (the request waits for the collector; nothing is lost) or `Drop` (the
//! event is dropped and counted). Events evicted from the full buffer are counted too; both
//! counts are reported with every read of the buffer. Records are decoded only for readers.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::error;
use rustc_hash::FxHashMap;

use super::clock::Clock;
use super::event::{Event, FORMAT_VERSION, Gap, Header, Op};
use super::format;
use super::record;
use super::who::{Who, WhoCache};
use crate::Errno;

/// Lanes per recorder; session threads are spread over them.
const LANES: usize = 16;
/// Events a lane holds before the overflow policy applies.
const LANE_CAPACITY: usize = 4096;
/// Records per chunk of the buffer.
const CHUNK: usize = 1024;
/// How long a read of the buffer waits for the requests answered before it to be stored:
/// normally well under a millisecond; this bounds the wait if a request thread is stuck
/// between answering and handing its event over.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do when the collector falls behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The request waits until the collector has room: no event is lost.
    #[default]
    Wait,
    /// The event is dropped and counted.
    Drop,
}

/// How a mount records its trace.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Events kept in memory (the newest ones); 0 turns recording off.
    pub capacity: usize,
    /// Also write every event to this file, as JSON Lines.
    pub file: Option<PathBuf>,
    /// What to do when the collector falls behind.
    pub overflow: Overflow,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            capacity: 100_000,
            file: None,
            overflow: Overflow::Wait,
        }
    }
}

/// Counters that say whether the buffer holds everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Events recorded since the mount started.
    pub recorded: u64,
    /// Events dropped because the collector fell behind (overflow policy `drop`).
    pub dropped: u64,
    /// Events pushed out of the full in-memory buffer (still in the trace file, if any).
    pub evicted: u64,
    /// Events removed by a clear.
    pub cleared: u64,
    /// Events that could not be written to the trace file.
    pub write_errors: u64,
}

/// The in-memory buffer, shared by the collector and the readers.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<StoreInner>,
    changed: Condvar,
    /// Wakes an idle collector when a reader wants everything now.
    kick: Condvar,
    /// Sequence numbers handed out so far (the request counter).
    numbered: AtomicU64,
    /// Wall-clock start of the recording, in nanoseconds since the epoch.
    started_unix_ns: u128,
    /// The lanes the session threads write to, for [`Store::sync`] to see what is on its way.
    lanes: Arc<Lanes>,
}

#[derive(Debug)]
struct StoreInner {
    /// The records in the order they were stored.
    records: Chunks,
    capacity: usize,
    counts: Counts,
    /// The collector has exited: no event will arrive any more.
    closed: bool,
    /// Events dropped since the trace file last said so.
    gap: Option<Gap>,
    /// A reader asked the collector to drain now.
    kicked: bool,
    /// Records taken from each lane and stored (or written to the trace file), since the
    /// start: compared with [`Lane::written`] by [`Store::sync`].
    stored: Vec<u64>,
}

/// Encoded records in chunks of up to [`CHUNK`], each chunk holding records with consecutive
/// storage indices. The oldest records are dropped from the front, a chunk at a time once all
/// of its records are gone.
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Chunk>,
    /// Records of the front chunk already evicted.
    skip: usize,
    /// Records held (not counting the evicted ones still in the front chunk).
    len: usize,
    /// Storage index of the next record.
    next_index: u64,
    /// An emptied chunk kept for reuse, so that a full buffer allocates nothing.
    spare: Option<Chunk>,
}

#[derive(Debug, Default)]
struct Chunk {
    /// Storage index of the chunk's first record.
    first: u64,
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<u32>,
}

impl Chunk {
    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }
}

impl Chunks {
    /// Appends `record` with storage index `index` (at least any stored before).
    fn push(&mut self, index: u64, record: &[u8]) {
        let fits = self.chunks.back().is_some_and(|c| {
            c.ends.len() < CHUNK
                && c.first + c.ends.len() as u64 == index
                && c.bytes.len() + record.len() <= u32::MAX as usize
        });
        if !fits {
            let mut c = self.spare.take().unwrap_or_default();
            c.first = index;
            self.chunks.push_back(c);
        }
        if let Some(c) = self.chunks.back_mut() {
            c.bytes.extend_from_slice(record);
            c.ends.push(c.bytes.len() as u32);
        }
        self.len += 1;
        self.next_index = index + 1;
    }

    /// Drops the oldest record.
    fn pop_front(&mut self) {
        let Some(front) = self.chunks.front() else {
            return;
        };
        self.skip += 1;
        self.len -= 1;
        if self.skip >= front.ends.len() {
            self.skip = 0;
            if let Some(mut c) = self.chunks.pop_front() {
                c.bytes.clear();
                c.ends.clear();
                self.spare = Some(c);
            }
        }
    }

    /// Every record with its storage index, oldest first.
    fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks.iter().enumerate().flat_map(move |(n, c)| {
            let from = if n == 0 { self.skip } else { 0 };
            (from..c.ends.len()).map(move |i| (c.first + i as u64, c.get(i)))
        })
    }

    /// Keeps only the records for which `keep` holds; storage indices stay as they were.
    fn retain(&mut self, keep: impl Fn(&[u8]) -> bool) {
        let old = std::mem::take(self);
        self.next_index = old.next_index;
        for (index, r) in old.iter() {
            if keep(r) {
                self.push(index, r);
            }
        }
        self.next_index = old.next_index;
    }
}

impl Store {
    fn new(capacity: usize, started_unix_ns: u128, lanes: Arc<Lanes>) -> Store {
        Store {
            inner: Mutex::new(StoreInner {
                records: Chunks::default(),
                capacity,
                counts: Counts::default(),
                closed: false,
                gap: None,
                kicked: false,
                stored: vec![0; lanes.lanes.len()],
            }),
            changed: Condvar::new(),
            kick: Condvar::new(),
            numbered: AtomicU64::new(0),
            started_unix_ns,
            lanes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every request answered before the call is stored (or dropped, overflow
    /// policy `drop`), or `timeout` passes; true if it is. Requests not answered yet (held by a
    /// fault rule, delayed, or still running) are not waited for. [`Store::since`] calls it,
    /// so that a reader sees what a program did just before it asked.
    ///
    /// A request is answered between [`Recorder::stop`], which puts its sequence number in
    /// its lane's `answering` list, and [`Recorder::finish`], which writes its record to the
    /// lane (counting it in `written`) and takes the number off the list under the same
    /// lock. So: first wait until the numbers on the lists now have left them (microseconds:
    /// the answer is being written to the kernel), then until the collector has stored as
    /// many records of each lane as had been written to it.
    pub fn sync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let lanes = &self.lanes.lanes;
        let mut answering: Vec<(usize, u64)> = Vec::new();
        for (i, lane) in lanes.iter().enumerate() {
            answering.extend(lane.lock().answering.iter().map(|&seq| (i, seq)));
        }
        let mut spins = 0u32;
        while !answering.is_empty() {
            answering.retain(|&(i, seq)| lanes[i].lock().answering.contains(&seq));
            if answering.is_empty() || self.lock().closed {
                break;
            }
            if Instant::now() >= deadline {
                return false;
            }
            spins += 1;
            if spins < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // Taken after the lists emptied (through their locks), so these counts include the
        // records of the requests that were on them.
        let written: Vec<u64> = lanes
            .iter()
            .map(|l| l.written.load(Ordering::Acquire))
            .collect();
        let done = |s: &StoreInner| s.closed || s.stored.iter().zip(&written).all(|(s, w)| s >= w);
        if done(&self.lock()) {
            return true;
        }
        self.wake_collector();
        self.wait_until(deadline.saturating_duration_since(Instant::now()), done)
    }

    /// Waits until `done` holds for the store, or `timeout` passes. True if it holds.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&StoreInner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !done(&s) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Asks the collector to take in the lanes now.
    fn wake_collector(&self) {
        let mut s = self.lock();
        s.kicked = true;
        self.kick.notify_all();
    }

    /// Sleeps up to `poll`, or until a reader kicks.
    fn idle(&self, poll: Duration) {
        let s = self.lock();
        let mut s = if s.kicked {
            s
        } else {
            self.kick
                .wait_timeout(s, poll)
                .unwrap_or_else(|e| e.into_inner())
                .0
        };
        s.kicked = false;
    }

    /// When recording started (`ts_ns` counts from here), in nanoseconds since the epoch.
    pub fn started_unix_ns(&self) -> u128 {
        self.started_unix_ns
    }

    /// Every buffered event with `seq > after`, in sequence order, and the counters. Every
    /// request answered before the call is in it (see [`Store::sync`]).
    pub fn since(&self, after: u64) -> (Vec<Event>, Counts) {
        let (events, counts, _) = self.since_with_index(after);
        (events, counts)
    }

    /// Like [`Store::since`], and also the storage index to follow from with
    /// [`Store::wait_stored_after`].
    pub fn since_with_index(&self, after: u64) -> (Vec<Event>, Counts, u64) {
        if !self.sync(SYNC_TIMEOUT) {
            log::warn!(
                "trace read: requests answered before it still not stored after {SYNC_TIMEOUT:?}"
            );
        }
        let s = self.lock();
        let mut out: Vec<Event> = s
            .records
            .iter()
            .filter(|(_, r)| record::seq(r) > after)
            .filter_map(|(_, r)| readable(r))
            .collect();
        out.sort_by_key(|e| e.seq);
        (out, s.counts, s.records.next_index)
    }

    /// The events stored from storage index `from` on, in storage (completion) order,
    /// waiting up to `timeout` for one; also the index to continue from and whether the store
    /// is closed. Following by storage index, unlike by sequence number, never skips a slow
    /// request that completes after later-numbered ones.
    pub fn wait_stored_after(&self, from: u64, timeout: Duration) -> (Vec<Event>, u64, bool) {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if s.records.next_index > from || s.closed {
                let out = s
                    .records
                    .iter()
                    .filter(|(i, _)| *i >= from)
                    .filter_map(|(_, r)| readable(r));
                return (out.collect(), s.records.next_index, s.closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return (Vec::new(), from, false);
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Removes the buffered events with `seq <= upto` (the trace file keeps everything);
    /// returns how many were removed.
    pub fn clear(&self, upto: u64) -> u64 {
        let mut s = self.lock();
        let before = s.records.len;
        s.records.retain(|r| record::seq(r) > upto);
        let n = (before - s.records.len) as u64;
        s.counts.cleared += n;
        n
    }

    /// The counters.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Number of events buffered now.
    pub fn len(&self) -> usize {
        self.lock().records.len
    }

    /// True if no event is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the collector has stored every event and exited (after unmount), or
    /// `timeout` passes. True if it has.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.closed)
    }

    /// Stores the records taken from the lanes (emptying them), merged in sequence order,
    /// evicting the oldest beyond capacity. `from_lanes[i]` records came from lane `i`.
    fn push_lanes(&self, taken: &mut [LaneBuf], from_lanes: &[usize]) {
        let mut s = self.lock();
        let s = &mut *s;
        for (stored, n) in s.stored.iter_mut().zip(from_lanes) {
            *stored += *n as u64;
        }
        merge(taken, |r| {
            if s.records.len >= s.capacity {
                s.records.pop_front();
                s.counts.evicted += 1;
            }
            let index = s.records.next_index;
            s.records.push(index, r);
            s.counts.recorded += 1;
        });
        self.changed.notify_all();
    }
}

/// Hands the records of `lanes` to `each` (emptying the lanes), lowest sequence number first
/// among the lanes' heads. A lane is in completion order, which is nearly sequence order.
fn merge(lanes: &mut [LaneBuf], mut each: impl FnMut(&[u8])) {
    let mut queues: Vec<_> = lanes
        .iter()
        .filter(|q| q.count > 0)
        .map(|q| record::records(&q.bytes).peekable())
        .collect();
    while let Some(q) = queues
        .iter_mut()
        .filter_map(|q| Some((record::seq(q.peek()?), q)))
        .min_by_key(|(seq, _)| *seq)
        .map(|(_, q)| q)
    {
        if let Some(r) = q.next() {
            each(r);
        }
    }
    drop(queues);
    for q in lanes {
        q.bytes.clear();
        q.count = 0;
    }
}

/// A stored record as readers get it: decoded, with its flags decoded too (done here, off the
/// request path). A record that does not decode is logged and left out.
fn readable(r: &[u8]) -> Option<Event> {
    let Some(mut e) = record::decode(r) else {
        error!("trace record {} does not decode; left out", record::seq(r));
        return None;
    };
    if e.flags_str.is_none() {
        super::decorate(&mut e);
    }
    Some(e)
}

/// Numbers, fills and hands over events; owned by the FUSE adapter.
#[derive(Debug)]
pub struct Recorder {
    clock: Arc<Clock>,
    who: WhoCache,
    lanes: Arc<Lanes>,
    overflow: Overflow,
    dropped: AtomicU64,
    store: Arc<Store>,
    collector: Option<JoinHandle<()>>,
    /// Who opened each live file handle: the kernel sends some requests on a handle (release,
    /// and writeback) on its own, with no caller, and those are credited to the opener.
    openers: Vec<Mutex<FxHashMap<u64, Who>>>,
    /// A thread of this process whose requests are its own business, not recorded (0: none).
    own_thread: AtomicU32,
}

const OPENER_SHARDS: usize = 16;

/// Where session threads leave events for the collector: one lane per thread (threads share
/// a lane only beyond [`LANES`] threads), so a request's lock is practically never contended.
#[derive(Debug)]
struct Lanes {
    lanes: Box<[Lane]>,
    /// The recorder is being dropped: the collector takes in what is left and exits.
    closing: AtomicBool,
}

/// One lane, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane {
    events: Mutex<LaneState>,
    /// Signalled when the collector has emptied a full lane (overflow policy `wait`).
    room: Condvar,
    /// A request waits on `room`.
    waiting: AtomicBool,
    /// Where the lane's next record will probably be written: a hint for [`Lane::prefetch`],
    /// never dereferenced.
    next: AtomicUsize,
    /// Records written to the lane since the start (under the `events` lock).
    written: AtomicU64,
}

/// What a lane's lock guards.
#[derive(Debug, Default)]
struct LaneState {
    /// The records written to the lane, which the collector swaps for an empty buffer.
    buf: LaneBuf,
    /// Sequence numbers of the requests being answered, from [`Recorder::stop`] until
    /// [`Recorder::finish`] has written their record (or dropped it). Under the same lock
    /// as the records, so that a request leaves the list in the same step as its record
    /// enters the lane: one lock per finish.
    answering: Vec<u64>,
}

impl LaneState {
    fn answered(&mut self, seq: u64) {
        if let Some(i) = self.answering.iter().position(|&s| s == seq) {
            self.answering.swap_remove(i);
        }
    }
}

/// Records a lane holds, one after another.
#[derive(Debug, Default)]
struct LaneBuf {
    bytes: Vec<u8>,
    count: usize,
}

impl Lane {
    /// Asks the CPU to fetch, for writing, the lines the next record will touch (the lock and
    /// the end of the buffer): they were last read by the collector on another CPU, and
    /// fetching them while the request runs keeps the wait off the request's path.
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            let end = self.next.load(Ordering::Relaxed);
            for p in [self as *const Lane as usize, end, end + 64] {
                // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(p as *const i8) };
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lane of the calling thread: threads are numbered in the order they first record.
fn lane_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) % LANES);
        }
        i.get()
    })
}

/// An event being built for one request.
#[derive(Debug)]
pub struct Pending {
    /// The event; the adapter fills the operation's fields.
    pub event: Event,
    /// The error the request failed with, recorded as the event's `errno` (kept as a number
    /// until the event is read).
    pub errno: Option<Errno>,
    /// When the request began, on the recorder's clock, until [`Recorder::stop`] turns it
    /// into the duration.
    start: Option<u64>,
    /// The lane whose `answering` list has this request, from [`Recorder::stop`] until
    /// [`Recorder::finish`].
    answering: Option<usize>,
}

impl Pending {
    /// An event that is not recorded (recording off), still built so that fault rules can
    /// match it.
    pub fn unrecorded(event: Event) -> Pending {
        Pending {
            event,
            errno: None,
            start: None,
            answering: None,
        }
    }
}

impl Recorder {
    /// Starts recording with `config` for a mount on `mountpoint`. Fails only if the trace
    /// file cannot be created.
    pub fn start(config: &TraceConfig, mountpoint: &Path) -> io::Result<Recorder> {
        let clock = Arc::new(Clock::start());
        if clock.uses_counter() {
            log::info!("request times from the time-stamp counter");
        }
        // The wall-clock time at which the clock read 0.
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(clock.epoch().elapsed());
        let lanes = Arc::new(Lanes {
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
            closing: AtomicBool::new(false),
        });
        let store = Arc::new(Store::new(
            config.capacity.max(1),
            started.as_nanos(),
            lanes.clone(),
        ));
        let mut file = match &config.file {
            Some(p) => Some(BufWriter::new(File::create(p).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create trace file {}: {e}", p.display()),
                )
            })?)),
            None => None,
        };
        if let Some(f) = &mut file {
            let header = Header {
                rawfs_trace: FORMAT_VERSION,
                rawfs_version: env!("CARGO_PKG_VERSION").to_string(),
                mountpoint: mountpoint.display().to_string(),
                started_unix_ns: started.as_nanos(),
            };
            format::write_header(f, &header)?;
            f.flush()?;
        }
        let (collector_lanes, collector_store) = (lanes.clone(), store.clone());
        let collector_clock = clock.clone();
        let collector = std::thread::Builder::new()
            .name("rawfs-trace".into())
            .spawn(move || collect(&collector_lanes, &collector_store, &collector_clock, file))?;
        Ok(Recorder {
            clock,
            who: WhoCache::default(),
            lanes,
            overflow: config.overflow,
            dropped: AtomicU64::new(0),
            store,
            collector: Some(collector),
            openers: (0..OPENER_SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            own_thread: AtomicU32::new(0),
        })
    }

    /// Leaves the requests of thread `tid` (of the process that mounted, 0 for none) out of
    /// the trace, until called again: the process's own setup, such as the chdir into the
    /// mount that a command it starts inherits.
    pub fn leave_out_thread(&self, tid: u32) {
        self.own_thread.store(tid, Ordering::Release);
    }

    /// Whether requests of thread `tid` are left out ([`Recorder::leave_out_thread`]).
    pub fn leaves_out(&self, tid: u32) -> bool {
        tid != 0 && self.own_thread.load(Ordering::Relaxed) == tid
    }

    /// The buffer readers use.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Requests served so far (numbered events).
    pub fn requests(&self) -> u64 {
        self.store.numbered.load(Ordering::Relaxed)
    }

    /// Starts the event of a request from thread `tid`.
    pub fn begin(&self, op: Op, tid: u32, uid: u32, gid: u32) -> Pending {
        let mut slot = None;
        self.begin_in(&mut slot, op, tid, uid, gid);
        slot.unwrap_or_else(|| unreachable!())
    }

    /// [`Recorder::begin`] into `slot`, where the event is built in place: an event is
    /// several hundred bytes, and the request path should not copy it around.
    pub fn begin_in<'a>(
        &self,
        slot: &'a mut Option<Pending>,
        op: Op,
        tid: u32,
        uid: u32,
        gid: u32,
    ) -> &'a mut Pending {
        let start = self.clock.now();
        let seq = self.store.numbered.fetch_add(1, Ordering::AcqRel) + 1;
        self.lanes.lanes[lane_index()].prefetch();
        let p = slot.insert(Pending {
            event: Event::default(),
            errno: None,
            start: Some(start),
            answering: None,
        });
        let e = &mut p.event;
        let who = self.who.lookup_at(tid, start);
        (e.seq, e.tid, e.pid, e.comm, e.uid, e.gid, e.op) =
            (seq, tid, who.pid, who.comm, uid, gid, op);
        e.ts_ns = start;
        p
    }

    /// Ends the request's duration now, if it was not ended before.
    ///
    /// This also notes who opened the handle the request returned, and credits a request the
    /// kernel sends on its own to the opener: call it before the kernel gets the answer, as
    /// the kernel may send the next request on the handle (a release after a create) as soon
    /// as it has it.
    ///
    /// From here until [`Recorder::finish`], the request counts as answered: a reader's
    /// [`Store::sync`] waits for its event.
    pub fn stop(&self, p: &mut Pending) {
        if self.end(p) {
            let lane = lane_index();
            self.lanes.lanes[lane].lock().answering.push(p.event.seq);
            p.answering = Some(lane);
        }
    }

    /// Ends the request's duration if it was not ended before; true if it was ended now.
    fn end(&self, p: &mut Pending) -> bool {
        let Some(start) = p.start.take() else {
            return false;
        };
        p.event.dur_ns = self.clock.now().saturating_sub(start);
        self.credit_opener(&mut p.event, p.errno.is_none());
        true
    }

    /// Completes an event and hands it to the collector. It is stopped here unless
    /// [`Recorder::stop`] stopped it before.
    pub fn finish(&self, p: &mut Pending) {
        self.end(p);
        let here = lane_index();
        let written = self.hand_over(here, p);
        // Off the answering list once the record is in the lane (and counted in `written`),
        // or dropped; under the lock it was written under, if that is the list's lane.
        let seq = p.event.seq;
        match (p.answering.take(), written) {
            (Some(lane), Some(mut q)) if lane == here => q.answered(seq),
            (Some(lane), q) => {
                drop(q);
                self.lanes.lanes[lane].lock().answered(seq);
            }
            (None, _) => {}
        }
    }

    /// Writes the event's record to lane `here` (the calling thread's) and returns the
    /// lane's lock, still held; or drops the event (overflow policy `drop`, lane full).
    fn hand_over(&self, here: usize, p: &Pending) -> Option<MutexGuard<'_, LaneState>> {
        let lane = &self.lanes.lanes[here];
        let mut q = lane.lock();
        if q.buf.count >= LANE_CAPACITY {
            match self.overflow {
                Overflow::Drop => {
                    drop(q);
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // Two dropping threads may get here in either order.
                    let mut s = self.store.lock();
                    s.counts.dropped = s.counts.dropped.max(dropped);
                    let seq = p.event.seq;
                    let gap = s.gap.get_or_insert(Gap {
                        dropped: 0,
                        first_seq: seq,
                        last_seq: seq,
                    });
                    gap.dropped += 1;
                    gap.first_seq = gap.first_seq.min(seq);
                    gap.last_seq = gap.last_seq.max(seq);
                    return None;
                }
                Overflow::Wait => {
                    drop(q);
                    self.store.wake_collector();
                    q = lane.lock();
                    while q.buf.count >= LANE_CAPACITY
                        && !self.lanes.closing.load(Ordering::Acquire)
                    {
                        lane.waiting.store(true, Ordering::Release);
                        q = lane
                            .room
                            .wait_timeout(q, Duration::from_millis(10))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            }
        }
        record::encode(&p.event, p.errno, &mut q.buf.bytes);
        q.buf.count += 1;
        lane.written.fetch_add(1, Ordering::Release);
        let end = q.buf.bytes.as_ptr() as usize + q.buf.bytes.len();
        lane.next.store(end, Ordering::Relaxed);
        Some(q)
    }
}

impl Recorder {
    /// Stops recording once the requests have ended (at unmount): the collector takes in what
    /// is left, writes it to the trace file and flushes it, then exits. Waits up to `limit`
    /// for that; false if the writer is still behind then (a slow disk).
    pub fn close(&self, limit: Duration) -> bool {
        self.lanes.closing.store(true, Ordering::Release);
        self.store.wake_collector();
        self.store.wait_closed(limit)
    }

    fn openers(&self, fh: u64) -> MutexGuard<'_, FxHashMap<u64, Who>> {
        self.openers[fh as usize % OPENER_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers who opened a handle, and credits requests the kernel makes on its own
    /// (tid 0) on that handle to the opener.
    fn credit_opener(&self, e: &mut Event, ok: bool) {
        if let (Some(fh), true) = (e.out_fh, ok) {
            self.openers(fh).insert(
                fh,
                Who {
                    pid: e.pid,
                    comm: e.comm.clone(),
                },
            );
        }
        let Some(fh) = e.fh else { return };
        let closing = matches!(e.op, Op::Release | Op::Releasedir);
        if e.tid != 0 && !closing {
            return;
        }
        let mut map = self.openers(fh);
        let who = if closing {
            map.remove(&fh)
        } else {
            map.get(&fh).cloned()
        };
        if let (Some(who), 0) = (who, e.tid) {
            e.pid = who.pid;
            e.comm = who.comm;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The collector takes in what is left, flushes and exits.
        self.lanes.closing.store(true, Ordering::Release);
        self.store.wake_collector();
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
    }
}

/// The collector polls the lanes instead of being woken per event, so that a request never
/// pays for a wake-up (a context switch on the request path).
fn collect(lanes: &Lanes, store: &Store, clock: &Clock, mut file: Option<BufWriter<File>>) {
    // Waking every 5 ms under load cost a stat loop about 10% (20 interleaved rounds of
    // 30000 stats: median 18.6k/s against 20.7k/s at 50 ms): on two CPUs the wake-up lands
    // where the program or a polling reader runs. Readers kick it when they need events.
    const POLL: Duration = Duration::from_millis(50);
    // What was taken from each lane; swapped back in next time, so both stay allocated.
    let mut taken: Vec<LaneBuf> = (0..lanes.lanes.len()).map(|_| LaneBuf::default()).collect();
    let mut sorted = LaneBuf::default();
    // Records taken from each lane this round.
    let mut counts = vec![0usize; lanes.lanes.len()];
    loop {
        clock.refine();
        let closing = lanes.closing.load(Ordering::Acquire);
        let mut any = false;
        let mut backlog = false;
        for ((lane, mine), n) in lanes.lanes.iter().zip(taken.iter_mut()).zip(&mut counts) {
            let mut q = lane.lock();
            *n = q.buf.count;
            if q.buf.count == 0 {
                continue;
            }
            std::mem::swap(&mut q.buf, mine);
            drop(q);
            any = true;
            backlog |= mine.count >= LANE_CAPACITY / 2;
            if lane.waiting.swap(false, Ordering::AcqRel) {
                lane.room.notify_all();
            }
        }
        if !any {
            if closing {
                break;
            }
            // Idle: make what was written visible, then wait.
            flush(&mut file, store);
            store.idle(POLL);
            continue;
        }
        if let Some(f) = &mut file {
            merge(&mut taken, |r| {
                sorted.bytes.extend_from_slice(r);
                sorted.count += 1;
            });
            for r in record::records(&sorted.bytes) {
                let written = match record::decode(r) {
                    Some(e) => format::write_event(f, &e),
                    None => Err(io::Error::other("a record does not decode")),
                };
                if let Err(err) = written {
                    error!("trace file write failed: {err}");
                    store.lock().counts.write_errors += 1;
                }
            }
            store.push_lanes(std::slice::from_mut(&mut sorted), &counts);
            // The file says where it misses events, after those written before the drops
            // were seen: a reader of the file alone must know it is incomplete.
            let gap = store.lock().gap.take();
            if let Some(gap) = gap {
                if let Err(err) = format::write_gap(f, &gap) {
                    error!("trace file write failed: {err}");
                    store.lock().counts.write_errors += 1;
                }
            }
        } else {
            store.push_lanes(&mut taken, &counts);
        }
        // Under a steady load, taking events as they trickle in would keep this thread
        // spinning on a core the requests need: wait for them to gather instead, unless
        // there is a backlog or the recorder is closing.
        if !backlog && !closing {
            store.idle(POLL);
        }
    }
    flush(&mut file, store);
    store.lock().closed = true;
    store.changed.notify_all();
}

fn flush(file: &mut Option<BufWriter<File>>, store: &Store) {
    if let Some(f) = file {
        if let Err(err) = f.flush() {
            error!("trace file flush failed: {err}");
            store.lock().counts.write_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(capacity: usize, overflow: Overflow) -> Recorder {
        let config = TraceConfig {
            capacity,
            file: None,
            overflow,
        };
        Recorder::start(&config, Path::new("/mnt")).unwrap()
    }

    /// Records `per_thread` events from each of `threads` threads as fast as they can.
    fn flood(rec: &Recorder, threads: usize, per_thread: u64) {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for i in 0..per_thread {
                        let mut p = rec.begin(Op::Getattr, 0, t as u32, 0);
                        p.event.ino = Some(i);
                        rec.finish(&mut p);
                    }
                });
            }
        });
        assert!(rec.store().sync(Duration::from_secs(10)));
    }

    #[test]
    fn overflow_wait_keeps_every_event_of_many_threads_in_sequence_order() {
        let rec = recorder(1_000_000, Overflow::Wait);
        // More events per thread than a lane holds, faster than the collector polls.
        let (threads, per_thread) = (4, 3 * LANE_CAPACITY as u64);
        flood(&rec, threads, per_thread);
        let total = threads as u64 * per_thread;
        let (events, counts) = rec.store().since(0);
        assert_eq!((counts.recorded, counts.dropped), (total, 0));
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        // Each thread's events arrive in its own order.
        for t in 0..threads as u32 {
            let inos: Vec<u64> = events
                .iter()
                .filter(|e| e.uid == t)
                .filter_map(|e| e.ino)
                .collect();
            assert_eq!(inos, (0..per_thread).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn overflow_drop_counts_every_event_it_does_not_keep() {
        let rec = recorder(1_000_000, Overflow::Drop);
        let n = 8 * LANE_CAPACITY as u64;
        flood(&rec, 1, n);
        let (events, counts) = rec.store().since(0);
        assert_eq!(counts.recorded + counts.dropped, n);
        assert_eq!(events.len() as u64, counts.recorded);
        let mut seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len() as u64, counts.recorded);
        assert!(seqs.iter().all(|s| (1..=n).contains(s)));
    }

    #[test]
    fn a_release_stopped_before_the_create_is_handed_over_is_still_credited_to_the_opener() {
        // The kernel may send the release as soon as it has the create's answer, which goes
        // out after `stop` and before `finish`.
        let rec = recorder(100, Overflow::Wait);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let mut create = rec.begin(Op::Create, tid, 0, 0);
        create.event.out_fh = Some(5);
        rec.stop(&mut create);
        let mut release = rec.begin(Op::Release, 0, 0, 0);
        release.event.fh = Some(5);
        rec.stop(&mut release);
        assert_eq!(release.event.pid, std::process::id());
        assert_eq!(release.event.comm, create.event.comm);
        rec.finish(&mut release);
        rec.finish(&mut create);
        assert!(rec.store().sync(Duration::from_secs(10)));
        let (events, _) = rec.store().since(0);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn sync_waits_for_a_request_being_answered_and_not_for_one_not_answered_yet() {
        let rec = recorder(100, Overflow::Wait);
        // Not answered yet (held by a rule, say): a read does not wait for it.
        let mut held = rec.begin(Op::Read, 0, 0, 0);
        let t = Instant::now();
        assert!(rec.store().sync(Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Answered (stopped) but not handed over yet: a read waits for it.
        let mut answered = rec.begin(Op::Lookup, 0, 0, 0);
        rec.stop(&mut answered);
        let seq = answered.event.seq;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                rec.finish(&mut answered);
            });
            let (events, _) = rec.store().since(0);
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [seq]);
        });
        rec.finish(&mut held);
        let (events, _) = rec.store().since(0);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn chunks_evict_from_the_front_and_keep_storage_indices_through_a_retain() {
        let mut c = Chunks::default();
        let mut bytes = Vec::new();
        for seq in 1..=(2 * CHUNK as u64 + 10) {
            bytes.clear();
            let e = Event {
                seq,
                ..Event::default()
            };
            record::encode(&e, None, &mut bytes);
            c.push(seq - 1, &bytes);
            if c.len > CHUNK + 5 {
                c.pop_front();
            }
        }
        let seqs = |c: &Chunks| {
            c.iter()
                .map(|(i, r)| (i, record::seq(r)))
                .collect::<Vec<_>>()
        };
        let all = seqs(&c);
        assert_eq!(all.len(), CHUNK + 5);
        assert_eq!(all.first(), Some(&(CHUNK as u64 + 5, CHUNK as u64 + 6)));
        assert_eq!(
            all.last(),
            Some(&(2 * CHUNK as u64 + 9, 2 * CHUNK as u64 + 10))
        );
        // The front chunk went whole once all its records were evicted.
        assert_eq!(c.chunks.len(), 2);
        c.retain(|r| record::seq(r) % 2 == 0);
        let even = seqs(&c);
        assert_eq!(
            even,
            all.into_iter()
                .filter(|(_, s)| s % 2 == 0)
                .collect::<Vec<_>>()
        );
        assert_eq!((c.len, c.next_index), (even.len(), 2 * CHUNK as u64 + 10));
    }

    #[test]
    fn a_full_buffer_keeps_the_newest_events_and_counts_the_evicted() {
        let rec = recorder(100, Overflow::Wait);
        flood(&rec, 1, 1000);
        let (events, counts) = rec.store().since(0);
        assert_eq!((counts.recorded, counts.evicted), (1000, 900));
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (901..=1000).collect::<Vec<_>>());
    }
}
