//! Exec and exit notices from the kernel's process connector (netlink), so that the cached
//! command name of a thread is dropped the moment the thread calls `execve` (a shell's child
//! opens a redirection as `sh`, then writes as `cat`) or exits (its id may be reused).
//!
//! Listening needs CAP_NET_ADMIN (root). Without it, [`watch`] returns `None` and the cache
//! falls back to a short time-to-live.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

const SHARDS: usize = 16;
/// Notices older than this are forgotten: no cached entry lives that long with a watch.
const KEEP: Duration = Duration::from_secs(5);
const PRUNE_AT: usize = 4096;

// linux/connector.h, linux/cn_proc.h
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// Offset of `event_data` in `struct proc_event` (what, cpu, timestamp_ns).
const EVENT_DATA: usize = 16;

/// Numbers each exec or exit of a thread id; a cache entry taken under one number is stale
/// once the number changes.
#[derive(Debug)]
pub struct ExecWatch {
    shards: Vec<Mutex<FxHashMap<u32, (u64, Instant)>>>,
    counter: AtomicU64,
    /// Times notices were lost (the socket overflowed): every cached entry is then stale.
    lost: AtomicU64,
    /// The receiving thread runs with real-time priority: it takes in a notice the moment
    /// the kernel queues it, so requests need not read the socket themselves.
    prompt: AtomicBool,
    /// The receiving thread has taken a datagram from the socket and not yet recorded it.
    absorbing: AtomicBool,
    /// The netlink socket.
    fd: i32,
}

impl ExecWatch {
    fn new(fd: i32) -> ExecWatch {
        ExecWatch {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            counter: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            prompt: AtomicBool::new(false),
            absorbing: AtomicBool::new(false),
            fd,
        }
    }

    /// A number that changes whenever `tid` execs or exits (or notices were lost).
    pub fn epoch(&self, tid: u32) -> (u64, u64) {
        let shard = self.shards[tid as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (
            shard.get(&tid).map_or(0, |(n, _)| *n),
            self.lost.load(Ordering::Relaxed),
        )
    }

    /// Makes sure the notices the kernel queued so far are taken in, so that a cache entry
    /// checked against [`ExecWatch::epoch`] afterwards is current. The kernel queues an exec
    /// notice before the new program runs, so this makes the name right even for the
    /// program's very first request.
    ///
    /// When the receiving thread runs with real-time priority, the kernel wakes it and runs it
    /// as soon as a notice is queued, long before the exec'd program can send a request (it
    /// must first be loaded): then this only waits for a notice being recorded, and costs no
    /// system call. Otherwise it reads the queued notices itself, without waiting.
    pub fn catch_up(&self) {
        if !self.prompt.load(Ordering::Acquire) {
            self.read_queued();
        }
        let mut spins = 0u32;
        while self.absorbing.load(Ordering::Acquire) {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A number that changes whenever any thread execs or exits (or notices were lost): while
    /// it stays the same, every [`ExecWatch::epoch`] does too.
    pub fn generation(&self) -> u64 {
        self.counter.load(Ordering::Acquire) + self.lost.load(Ordering::Acquire)
    }

    /// Takes in the notices already queued, without waiting.
    fn read_queued(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is valid for its length; the socket lives as long as the process.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                return;
            }
            self.absorb(&buf[..n as usize]);
        }
    }

    /// Records the exec and exit notices of one datagram.
    fn absorb(&self, buf: &[u8]) {
        let mut at = 0usize;
        while at + NLMSG_HDR <= buf.len() {
            let Some(len) = get_u32(buf, at).map(|l| l as usize) else {
                break;
            };
            if len < NLMSG_HDR || at + len > buf.len() {
                break;
            }
            let ev = at + NLMSG_HDR + CN_MSG_HDR;
            let what = get_u32(buf, ev);
            if what == Some(PROC_EVENT_EXEC) || what == Some(PROC_EVENT_EXIT) {
                for off in [EVENT_DATA, EVENT_DATA + 4] {
                    if let Some(id) = get_u32(buf, ev + off) {
                        self.notice(id);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }

    fn notice(&self, tid: u32) {
        let n = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Instant::now();
        let mut shard = self.shards[tid as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= PRUNE_AT {
            shard.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        }
        shard.insert(tid, (n, now));
    }
}

static WATCH: OnceLock<Option<&'static ExecWatch>> = OnceLock::new();

/// The process-wide watch, started on first use; `None` if the kernel would not let this
/// process listen.
pub fn watch() -> Option<&'static ExecWatch> {
    *WATCH.get_or_init(|| match listen() {
        Ok(fd) => {
            let w: &'static ExecWatch = Box::leak(Box::new(ExecWatch::new(fd)));
            let spawned = std::thread::Builder::new()
                .name("rawfs-execwatch".into())
                .spawn(move || receive(fd, w));
            if spawned.is_err() {
                // SAFETY: fd is ours and nothing else uses it.
                unsafe { libc::close(fd) };
                return None;
            }
            Some(w)
        }
        Err(e) => {
            log::debug!("no process connector ({e}); command names may lag an exec by a few ms");
            None
        }
    })
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Subscribes to process events and waits for the kernel's acknowledgement.
fn listen() -> std::io::Result<i32> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain socket calls on a descriptor this function owns; every buffer passed is
    // valid for the length given.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        );
        if fd < 0 {
            return Err(err());
        }
        let fail = |fd: i32| {
            let e = err();
            libc::close(fd);
            Err(e)
        };
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::bind(fd, (&raw const addr).cast(), len) < 0 {
            return fail(fd);
        }
        let mut msg = [0u8; NLMSG_HDR + CN_MSG_HDR + 4];
        let total = msg.len() as u32;
        put_u32(&mut msg, 0, total);
        msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        put_u32(&mut msg, 12, std::process::id());
        put_u32(&mut msg, NLMSG_HDR, CN_IDX_PROC);
        put_u32(&mut msg, NLMSG_HDR + 4, CN_VAL_PROC);
        msg[NLMSG_HDR + 16..NLMSG_HDR + 18].copy_from_slice(&4u16.to_ne_bytes());
        put_u32(&mut msg, NLMSG_HDR + CN_MSG_HDR, PROC_CN_MCAST_LISTEN);
        if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return fail(fd);
        }
        // The kernel answers the subscription with an acknowledgement carrying an errno.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        };
        let tv_len = std::mem::size_of::<libc::timeval>() as u32;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            tv_len,
        );
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                return fail(fd);
            }
            let ev = NLMSG_HDR + CN_MSG_HDR;
            if get_u32(&buf, ev) == Some(PROC_EVENT_NONE) {
                // event_data.ack.err
                match get_u32(&buf, ev + EVENT_DATA) {
                    Some(0) => break,
                    Some(e) => {
                        libc::close(fd);
                        return Err(std::io::Error::from_raw_os_error(e as i32));
                    }
                    None => return fail(fd),
                }
            }
            if Instant::now() > deadline {
                libc::close(fd);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no acknowledgement",
                ));
            }
        }
        let none = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const none).cast(),
            tv_len,
        );
        Ok(fd)
    }
}

/// Takes in notices as they come. With real-time priority (root may set it), this thread
/// runs the moment a notice is queued, so requests need not read the socket themselves;
/// without it, it only keeps the socket from overflowing between requests.
fn receive(fd: i32, watch: &ExecWatch) {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets the scheduling policy of the calling thread; param is valid.
    let realtime =
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) } == 0;
    if !realtime {
        log::debug!("exec notices: no real-time priority; each request reads queued notices");
    }
    watch.prompt.store(realtime, Ordering::Release);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        // Requests wait while a datagram taken from the socket is not yet recorded.
        watch.absorbing.store(true, Ordering::Release);
        let failed = if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => false,
                // Notices were lost: everything cached may be stale.
                Some(libc::ENOBUFS) => {
                    watch.lost.fetch_add(1, Ordering::Relaxed);
                    false
                }
                _ => true,
            }
        } else {
            watch.absorb(&buf[..n as usize]);
            false
        };
        watch.absorbing.store(false, Ordering::Release);
        if failed {
            // Requests read the socket themselves from now on.
            watch.prompt.store(false, Ordering::Release);
            return;
        }
    }
}
