//! Session threads in reserve: while no request is blocked, `readers` session threads (by
//! default one) wait for the kernel's requests and the others wait here; a request about to
//! block (a delay or a hold rule, or a write waiting for unlinked files to be freed) calls
//! one back, so the mount keeps answering while up to `threads - readers` requests are
//! held.
//!
//! Why: every session thread reads the same /dev/fuse queue, and the kernel hands each request
//! to the reader that has waited longest. With four readers and one caller at a time, each
//! request wakes a different thread, often on the other CPU, with cold caches. One reader
//! takes the next request itself, on the CPU it ran on. Measured on 2 CPUs (interleaved
//! runs, metadata rounds of 1000 files, recording on): one thread served creates, stats and
//! unlinks 15-50% faster than four, at 20-30% less daemon CPU per request; two threads were
//! in between; cloned /dev/fuse descriptors per thread (fuser's `clone_fd`) changed nothing,
//! as all of them read the same kernel queue.
//!
//! Except where idle CPUs halt at once: there two threads read and none polls (see
//! [`Serving::for_this_machine`]).
//!
//! A parked thread has answered its request; it is not inside the kernel, so it is called
//! back explicitly: by a request about to block, or when a session thread ends (the session
//! is over, and the parked ones must go back to the kernel to learn it and exit). Only a
//! thread that has served a request can tell: so no thread parks before every session thread
//! has served one, and the reader that learns first of the session's end (an unmount) always
//! calls the parked ones back at once. This costs little: the first requests go round the
//! threads anyway, as the kernel hands each to the reader that has waited longest. A parked
//! thread also goes back to reading after [`PARK_LIMIT`] (it parks again after its next
//! request), should a thread end without telling (it cannot, short of the process dying).
//!
//! Polling: after answering, a reader polls the kernel's queue for up to `poll` (yielding the
//! CPU to any other runnable thread every few polls) before it goes back to a blocking read.
//! Why: on a virtual machine an idle CPU halts, and waking a halted CPU costs tens of
//! microseconds, more than serving the request. A program making one system call after
//! another sends its next request within a few microseconds of the answer; a reader that
//! is still polling takes it without being woken. Measured on 2 virtual CPUs (mdbench,
//! interleaved rounds of 1000 files, recording on): creates, stats and unlinks per second
//! 1.5-2x those of a reader that blocks at once. The cost is CPU: at most `poll` per request
//! that no other follows at once, and none while the mount is idle. On a busy CPU the poll
//! ends at the first yield that runs another thread: such a CPU does not halt, and a
//! polling reader would wait for its turn where a blocked one is woken at once.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest a thread stays parked without being called back.
pub const PARK_LIMIT: Duration = Duration::from_secs(1);

/// How long a reader polls by default where polling pays ([`Serving::for_this_machine`]).
pub const DEFAULT_POLL: Duration = Duration::from_micros(50);

/// How a mount's session threads wait for requests: how many read at once, and how long a
/// reader polls after answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Threads waiting for requests while none is blocked.
    pub readers: usize,
    /// How long a reader polls for the next request after answering one.
    pub poll: Duration,
}

impl Serving {
    /// What serves one caller fastest here, out of `threads` threads.
    ///
    /// Mostly one polling reader. But on a virtual machine whose idle CPUs halt at once (the
    /// guest's cpuidle driver is haltpoll, with `guest_halt_poll_ns` 0), a polling reader
    /// keeps its own CPU awake, so the program's next wake-up lands on the other, halted CPU
    /// after every request; there two readers that block serve best: while one answers, the
    /// other waits to be woken where the program runs. Measured on 2 such CPUs (mdbench,
    /// interleaved rounds of 1000 files, recording on), two blocking readers made creates,
    /// stats and unlinks 1.20x, 1.48x and 1.41x as fast as four (90 rounds), 1.05x, 1.87x
    /// and 1.80x as fast as three and 1.9x, 5.3x and 2.2x as fast as one (60 rounds each);
    /// four blocking readers had been 1.12-1.25x, 1.31-1.43x and 1.07-1.08x as fast as one
    /// polling reader (three runs). With idle CPUs polling 200 µs before they halt, one
    /// polling reader was 1.4x, 1.3x and 1.5x as fast as two blocking ones.
    pub fn for_this_machine(threads: usize) -> Serving {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let halts = halts_at_once(
            &read("/sys/devices/system/cpu/cpuidle/current_driver"),
            &read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
        );
        Serving::for_idle_cpus(threads, halts)
    }

    /// [`Serving::for_this_machine`], given whether idle CPUs halt at once.
    pub fn for_idle_cpus(threads: usize, halt_at_once: bool) -> Serving {
        if halt_at_once {
            Serving {
                readers: threads.clamp(1, 2),
                poll: Duration::ZERO,
            }
        } else {
            Serving {
                readers: 1,
                poll: DEFAULT_POLL,
            }
        }
    }
}

/// True if the cpuidle driver (`/sys/devices/system/cpu/cpuidle/current_driver`) and the
/// guest's halt polling (`/sys/module/haltpoll/parameters/guest_halt_poll_ns`) say that an
/// idle CPU halts at once.
fn halts_at_once(driver: &str, halt_poll_ns: &str) -> bool {
    driver.trim() == "haltpoll" && halt_poll_ns.trim() == "0"
}

/// The session threads of one mount.
#[derive(Debug)]
pub struct Reserve {
    state: Mutex<State>,
    wake: Condvar,
    /// Some thread may park: every thread has served a request, and more threads run than
    /// requests are blocked, plus the readers. Read without the lock after each request; set
    /// under it.
    surplus: AtomicBool,
    /// The longest a thread stays parked without being called back.
    park_limit: Duration,
    /// How long a reader polls for the next request after answering one; zero: not at all.
    poll: Duration,
    /// The session's /dev/fuse descriptor, -1 until [`Reserve::set_device`]. Only polled by
    /// session threads while they serve a request, when the session holds it open.
    device: AtomicI32,
}

#[derive(Debug)]
struct State {
    /// Threads not parked: serving a request, or waiting in the kernel for one.
    running: usize,
    /// Threads meant to wait for requests while none is blocked.
    readers: usize,
    /// Threads parked here.
    parked: usize,
    /// Parked threads called back that have not woken yet.
    called: usize,
    /// Requests blocked in a fault action.
    blocked: usize,
    /// A session thread has ended: the session is over, no thread parks any more.
    over: bool,
    /// The session's threads.
    threads: usize,
    /// Threads that have served a request, and so tell the parked ones when they end.
    served: usize,
}

impl State {
    fn surplus(&self) -> bool {
        !self.over && self.served >= self.threads && self.running > self.blocked + self.readers
    }
}

/// A blocked request, from [`Reserve::blocking`] until dropped.
#[must_use]
pub struct Blocked(Arc<Reserve>);

impl Drop for Blocked {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.blocked -= 1;
        self.0.surplus.store(s.surplus(), Ordering::Relaxed);
    }
}

/// Ends the session's reserve when a session thread exits (fuser ends its threads only when
/// the session is over).
struct ExitGuard(Arc<Reserve>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.over = true;
        s.running = s.running.saturating_sub(1);
        self.0.surplus.store(false, Ordering::Relaxed);
        self.0.wake.notify_all();
    }
}

thread_local! {
    static EXIT: RefCell<Option<ExitGuard>> = const { RefCell::new(None) };
}

impl Reserve {
    /// The reserve of a session of `threads` threads, all of them reading at first, of
    /// which `readers` go on reading while no request is blocked, polling for the next
    /// request for up to `poll` after answering one (see the module's documentation).
    pub fn new(threads: usize, readers: usize, poll: Duration) -> Arc<Reserve> {
        Self::with_limit(threads, readers, poll, PARK_LIMIT)
    }

    fn with_limit(
        threads: usize,
        readers: usize,
        poll: Duration,
        park_limit: Duration,
    ) -> Arc<Reserve> {
        let threads = threads.max(1);
        let readers = readers.clamp(1, threads);
        Arc::new(Reserve {
            state: Mutex::new(State {
                running: threads,
                readers,
                parked: 0,
                called: 0,
                blocked: 0,
                over: false,
                threads,
                served: 0,
            }),
            wake: Condvar::new(),
            surplus: AtomicBool::new(false),
            park_limit,
            poll,
            device: AtomicI32::new(-1),
        })
    }

    /// How the threads wait for requests: the readers as clamped to the threads, and the poll.
    pub fn serving(&self) -> Serving {
        Serving {
            readers: self.lock().readers,
            poll: self.poll,
        }
    }

    /// The session's /dev/fuse descriptor, which readers poll: it must stay open while the
    /// session's threads serve requests (the session holds it).
    pub fn set_device(&self, fd: RawFd) {
        self.device.store(fd, Ordering::Relaxed);
    }

    /// Polls the kernel's queue for the next request (see [`poll_device`]).
    fn poll_for_next(&self) -> Polled {
        let fd = self.device.load(Ordering::Relaxed);
        if self.poll.is_zero() || fd < 0 {
            return Polled::Off;
        }
        poll_device(fd, self.poll, true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a request blocks: calls a parked thread back if fewer than `readers` other
    /// threads would be left to read requests. The request counts as blocked until the guard
    /// is dropped.
    pub fn blocking(self: &Arc<Self>) -> Blocked {
        let mut s = self.lock();
        s.blocked += 1;
        let free = (s.running + s.called).saturating_sub(s.blocked);
        if free < s.readers && s.parked > s.called {
            s.called += 1;
            self.wake.notify_one();
        }
        self.surplus.store(s.surplus(), Ordering::Relaxed);
        Blocked(self.clone())
    }

    /// After a request has been answered and recorded: parks the calling session thread
    /// while more threads run than the blocked requests need, until called back; a thread
    /// that goes on reading polls for the next request first.
    pub fn after_request(self: &Arc<Self>) {
        // Every thread that serves a request tells the parked ones when it ends; only such a
        // thread may park, and only for its own session.
        let mine = EXIT.with(|g| {
            let mut g = g.borrow_mut();
            match &*g {
                Some(ExitGuard(r)) => Arc::ptr_eq(r, self),
                None => {
                    *g = Some(ExitGuard(self.clone()));
                    let mut s = self.lock();
                    s.served += 1;
                    self.surplus.store(s.surplus(), Ordering::Relaxed);
                    true
                }
            }
        });
        if !mine || !self.surplus.load(Ordering::Relaxed) {
            let _ = self.poll_for_next();
            return;
        }
        let mut s = self.lock();
        if !s.surplus() {
            drop(s);
            let _ = self.poll_for_next();
            return;
        }
        s.running -= 1;
        s.parked += 1;
        self.surplus.store(s.surplus(), Ordering::Relaxed);
        let deadline = Instant::now() + self.park_limit;
        while !s.over && s.called == 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .wake
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if s.called > 0 {
            s.called -= 1;
        }
        s.parked -= 1;
        s.running += 1;
        self.surplus.store(s.surplus(), Ordering::Relaxed);
    }
}

/// How a poll for the next request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polled {
    /// Polling is off, or the device is not known yet.
    Off,
    /// A request waits (or the connection ended).
    Ready,
    /// Nothing came within the poll.
    TimedOut,
    /// Another thread wanted the CPU.
    Contended,
}

/// A yield that gave the CPU to another thread for this long ends the poll.
const CONTENDED: Duration = Duration::from_micros(20);

/// Polls between two yields (and two looks at the clock). A poll of /dev/fuse costs about
/// 0.2 µs here, a yield as much again and so does each check whether the yield ran another
/// thread. A request that arrives while the poller is not in a poll waits for the next one:
/// with a yield and its two checks after every poll (0.8 µs a round), mdbench's creates,
/// stats and unlinks ran 4-5% slower (interleaved rounds, halt polling on); yielding every
/// 32 polls instead of 8 gained nothing more. A thread runnable on this CPU waits at most
/// a few microseconds for its turn.
const POLLS_PER_YIELD: u32 = 8;

/// Polls `fd` until it is readable (or in error), `window` has passed, or, with `yielding`,
/// another thread wants this CPU. Yields every few polls: when a yield hands the CPU to
/// another thread for a while, the CPU is busy and will not halt, so waking a blocked reader
/// is cheap, while a poller could wait a whole time slice for its turn.
fn poll_device(fd: RawFd, window: Duration, yielding: bool) -> Polled {
    let start = Instant::now();
    // The involuntary switches before the first yield: read once, and again only after a
    // yield that took long, so that the cheap path makes no system call but the poll.
    let mut switches = None;
    let mut polls = 0u32;
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        // A request, the connection's end (POLLERR) or a failed poll: stop polling, the
        // blocking read that follows learns which.
        if n != 0 {
            return Polled::Ready;
        }
        polls += 1;
        if polls % POLLS_PER_YIELD != 0 {
            std::hint::spin_loop();
            continue;
        }
        if start.elapsed() >= window {
            return Polled::TimedOut;
        }
        if !yielding {
            continue;
        }
        let before_yield = *switches.get_or_insert_with(involuntary_switches);
        let before = Instant::now();
        // SAFETY: no arguments; it cannot fail on Linux.
        unsafe { libc::sched_yield() };
        // A kernel thread's few microseconds do not count, time the host takes from a virtual
        // CPU is no switch.
        if before.elapsed() >= CONTENDED && involuntary_switches() != before_yield {
            return Polled::Contended;
        }
    }
}

/// The calling thread's involuntary context switches so far: a yield that ran another thread
/// counts one (time the host takes from a virtual CPU does not).
fn involuntary_switches() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_nivcsw
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn all_but_one_park_a_block_calls_one_back_and_the_end_of_a_thread_frees_them_all() {
        let r = Reserve::with_limit(3, 1, Duration::ZERO, Duration::from_secs(600));
        let stop = Arc::new(AtomicBool::new(false));
        let parked = |r: &Reserve| r.lock().parked;
        // Session threads serving requests one after another until told to stop.
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (r, stop) = (r.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        r.after_request();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        wait_until("two threads are parked", || parked(&r) == 2);
        assert_eq!(r.lock().running, 1);
        // A request blocks: one parked thread is called back and stays out.
        let b = r.blocking();
        wait_until("one thread is called back", || parked(&r) == 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!((parked(&r), r.lock().running), (1, 2));
        // Unblocked: one of the two running threads parks again.
        drop(b);
        wait_until("two threads are parked again", || parked(&r) == 2);
        // The session ends: the running thread's exit calls the parked ones back.
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let s = r.lock();
        assert!(s.over);
        assert_eq!((s.parked, s.called), (0, 0));
    }

    #[test]
    fn a_parked_thread_goes_back_to_reading_after_the_limit() {
        let r = Reserve::with_limit(2, 1, Duration::ZERO, Duration::from_millis(50));
        // This thread is the other session thread: it has served a request, and never ends.
        r.after_request();
        let parked = {
            let r = r.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                r.after_request();
                let s = r.lock();
                (t.elapsed(), s.parked, s.running, s.over)
            })
        };
        wait_until("the thread parks", || r.lock().parked == 1);
        // Nobody calls it back, and the other thread never ends.
        let (waited, parked, running, over) = parked.join().unwrap();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert_eq!((parked, running, over), (0, 2, false));
    }

    #[test]
    fn a_poll_ends_when_the_device_becomes_readable_or_the_time_is_up() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (rx, tx) = std::io::pipe().unwrap();
        // Off until the device is known, and when the poll is zero.
        let r = Reserve::new(1, 1, Duration::from_secs(5));
        assert_eq!(r.poll_for_next(), Polled::Off);
        let off = Reserve::new(1, 1, Duration::ZERO);
        off.set_device(rx.as_raw_fd());
        assert_eq!(off.poll_for_next(), Polled::Off);
        // Data written part way through a 5 s poll ends it: the poller saw it come.
        let writer = std::thread::spawn({
            let mut tx = tx.try_clone().unwrap();
            move || {
                std::thread::sleep(Duration::from_millis(5));
                tx.write_all(b"x").unwrap();
            }
        });
        let start = Instant::now();
        let polled = poll_device(rx.as_raw_fd(), Duration::from_secs(5), false);
        let took = start.elapsed();
        writer.join().unwrap();
        assert_eq!(polled, Polled::Ready);
        assert!(took < Duration::from_secs(5), "{took:?}");
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut &rx, &mut b).unwrap();
        // Nothing written: the poll ends when its time is up.
        let start = Instant::now();
        let polled = poll_device(rx.as_raw_fd(), Duration::from_millis(20), false);
        assert_eq!(polled, Polled::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(20));
        drop(tx);
    }

    /// Pins the calling thread to CPU 0.
    fn pin_to_cpu0() {
        // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(
                rc,
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn readers_block_where_idle_cpus_halt_at_once_and_one_polls_elsewhere() {
        assert!(halts_at_once("haltpoll\n", "0\n"));
        assert!(!halts_at_once("haltpoll\n", "200000\n"));
        assert!(!halts_at_once("intel_idle\n", ""));
        assert!(!halts_at_once("", ""));
        let halting = Serving::for_idle_cpus(4, true);
        assert_eq!((halting.readers, halting.poll), (2, Duration::ZERO));
        assert_eq!(Serving::for_idle_cpus(1, true).readers, 1);
        let polling = Serving::for_idle_cpus(4, false);
        assert_eq!((polling.readers, polling.poll), (1, DEFAULT_POLL));
        let here = Serving::for_this_machine(3);
        assert!(
            here == Serving::for_idle_cpus(3, true) || here == Serving::for_idle_cpus(3, false)
        );
    }

    #[test]
    fn a_poll_ends_when_another_thread_wants_the_cpu() {
        let (rx, _tx) = std::io::pipe().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // A busy thread and the poller on the same CPU: the poller's first yields run it.
        let busy = std::thread::spawn({
            let stop = stop.clone();
            move || {
                pin_to_cpu0();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        });
        let poller = std::thread::spawn({
            use std::os::fd::AsRawFd;
            let fd = rx.as_raw_fd();
            move || {
                pin_to_cpu0();
                let start = Instant::now();
                (
                    poll_device(fd, Duration::from_secs(10), true),
                    start.elapsed(),
                )
            }
        });
        let (polled, took) = poller.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert_eq!(polled, Polled::Contended, "after {took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn no_thread_parks_before_every_thread_has_served_and_any_end_calls_them_back() {
        let r = Reserve::with_limit(3, 1, Duration::ZERO, Duration::from_secs(600));
        // A session thread: serves one request, says how long that took, then stays (reading
        // in the kernel, as it were) until its sender is dropped, and ends.
        let serve_once = |r: &Arc<Reserve>| {
            let (r, (done_tx, done_rx), (end_tx, end_rx)) = (
                r.clone(),
                std::sync::mpsc::channel(),
                std::sync::mpsc::channel::<()>(),
            );
            let t = std::thread::spawn(move || {
                let start = Instant::now();
                r.after_request();
                done_tx.send(start.elapsed()).unwrap();
                let _ = end_rx.recv();
            });
            (t, done_rx, end_tx)
        };
        // Two of the three threads serve: the third could learn of the session's end (in the
        // kernel) and end without telling anyone, so neither parks.
        let (a, a_done, a_end) = serve_once(&r);
        a_done
            .recv_timeout(Duration::from_secs(10))
            .expect("no thread parks before every thread has served");
        let (b, b_done, b_end) = serve_once(&r);
        b_done
            .recv_timeout(Duration::from_secs(10))
            .expect("no thread parks before every thread has served");
        let s = r.lock();
        assert_eq!((s.parked, s.running, s.served), (0, 3, 2));
        drop(s);
        // Once the third has served too, it parks, being one more than the reader needed.
        let (c, c_done, c_end) = serve_once(&r);
        wait_until("the third thread parks", || r.lock().parked == 1);
        // The session ends: the first thread to learn it calls the parked one back at once,
        // long before the park limit.
        drop(a_end);
        a.join().unwrap();
        let waited = c_done.recv().unwrap();
        assert!(waited < Duration::from_secs(60), "{waited:?}");
        assert!(r.lock().over);
        drop((b_end, c_end));
        b.join().unwrap();
        c.join().unwrap();
    }

    #[test]
    fn a_single_thread_never_parks() {
        let r = Reserve::new(1, 1, Duration::ZERO);
        r.after_request();
        let b = r.blocking();
        drop(b);
        r.after_request();
        assert_eq!(r.lock().parked, 0);
    }

    #[test]
    fn as_many_readers_as_threads_never_park() {
        let r = Reserve::new(4, 4, Duration::ZERO);
        assert!(!r.surplus.load(Ordering::Relaxed));
        r.after_request();
        assert_eq!(r.lock().parked, 0);
    }
}
