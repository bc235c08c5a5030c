//! Cutting the power of a mount: the tree becomes its durable state, the crash is recorded in
//! the trace, processes with files open may be killed first, and the kernel's caches are told
//! what changed behind its back (through fuser's notifier), so that the next access sees the
//! crashed tree in `--cache` mode too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use log::{info, warn};

use crate::fs::durable::{CrashOptions, Keep, Losses};
use crate::fs::snapshot::Snapshot;
use crate::fs::{Fs, Stale};
use crate::fuse::names::Names;
use crate::trace::recorder::Recorder;
use crate::trace::{Event, Op};

/// How long a crash asked through the control socket waits for the kernel to take the
/// invalidations (a request held by a fault rule can keep a directory locked).
const INVALIDATE_WAIT: Duration = Duration::from_secs(5);

/// The power switch of one mount.
#[derive(Debug)]
pub struct Power {
    fs: Arc<Fs>,
    names: Arc<Names>,
    recorder: Option<Arc<Recorder>>,
    mountpoint: PathBuf,
    notifier: OnceLock<Notifier>,
    /// One crash at a time.
    lock: Mutex<()>,
    /// With state recording on (`rawfs explore`), the tree after every request that changed
    /// it or its durable state.
    states: Option<Mutex<States>>,
}

/// The tree after each request that changed it, for exploring crash states.
#[derive(Debug, Default)]
pub struct States {
    /// (sequence number of the request, the tree and its durable state after it), in order.
    pub points: Vec<(u64, Snapshot)>,
    last_generation: Option<u64>,
}

/// Who cut the power, for the trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cause {
    /// The request that fired a crash rule (its process and thread), if any.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The fault rule, if a rule fired.
    pub rule: Option<u64>,
}

impl Power {
    /// The switch for `fs` mounted on `mountpoint`, recording crashes into `recorder`; the
    /// kernel forgets `names` it holds after a crash.
    pub fn new(
        fs: Arc<Fs>,
        names: Arc<Names>,
        recorder: Option<Arc<Recorder>>,
        mountpoint: &Path,
    ) -> Power {
        Power {
            fs,
            names,
            recorder,
            mountpoint: mountpoint.to_path_buf(),
            notifier: OnceLock::new(),
            lock: Mutex::new(()),
            states: None,
        }
    }

    /// Also keeps the tree after every request that changes it (see [`Power::after_request`]).
    pub fn recording_states(mut self) -> Power {
        let mut states = States::default();
        states.points.push((0, self.fs.snapshot()));
        states.last_generation = Some(self.fs.generation());
        self.states = Some(Mutex::new(states));
        self
    }

    /// True if states are recorded: the adapter then calls [`Power::after_request`].
    pub fn records_states(&self) -> bool {
        self.states.is_some()
    }

    /// Called after request `seq` was answered: keeps the tree if the request changed it. Exact
    /// only if requests are served one at a time (one session thread).
    pub fn after_request(&self, seq: u64) {
        let Some(states) = &self.states else { return };
        let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.fs.generation();
        if st.last_generation != Some(generation) {
            st.last_generation = Some(generation);
            st.points.push((seq, self.fs.snapshot()));
        }
    }

    /// The recorded states so far (empty unless recording states).
    pub fn take_states(&self) -> Vec<(u64, Snapshot)> {
        match &self.states {
            Some(s) => std::mem::take(&mut s.lock().unwrap_or_else(|e| e.into_inner()).points),
            None => Vec::new(),
        }
    }

    /// Gives the switch the session's notifier, once the session exists.
    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Cuts the power. With `kill`, every process with a file open on the mount is killed
    /// first. With `wait`, returns only once the kernel has taken the invalidations (never
    /// from a request thread: the kernel may hold a lock the invalidation needs until the
    /// request's answer is through).
    pub fn crash(&self, opts: CrashOptions, kill: bool, cause: Cause, wait: bool) -> Losses {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let killed = if kill {
            kill_openers(&self.mountpoint, wait)
        } else {
            Vec::new()
        };
        let start = Instant::now();
        let crashed = self.fs.crash(opts);
        // A directory the crash took search permission from may have names cached below it.
        // The invalidations below cover every name too, but from a thread of their own: this
        // takes effect before the crash returns, also for a crash rule, which cannot wait.
        self.names.forget_all();
        let took = start.elapsed();
        info!(
            "crash of {}: {} files and {} names lost, {} processes killed, in {took:?}",
            self.mountpoint.display(),
            crashed.losses.files.len(),
            crashed.losses.names.len(),
            killed.len()
        );
        self.record(&crashed.losses, opts, &killed, cause, took);
        let done = self.invalidate(crashed.stale);
        if wait && done.recv_timeout(INVALIDATE_WAIT).is_err() {
            warn!("the kernel did not take the crash's cache invalidations within 5 s");
        }
        crashed.losses
    }

    fn record(&self, l: &Losses, opts: CrashOptions, killed: &[u32], cause: Cause, took: Duration) {
        let Some(rec) = &self.recorder else {
            return;
        };
        let mut p = rec.begin(Op::Crash, cause.tid, 0, 0);
        let e: &mut Event = &mut p.event;
        if cause.tid == 0 {
            (e.pid, e.comm) = (0, Default::default());
        }
        e.rule = cause.rule;
        e.path = Some(crate::text::PathText::from_names(&[]));
        e.fault = Some(summary(l, opts, killed));
        e.dur_ns = took.as_nanos() as u64;
        rec.finish(&mut p);
    }

    /// Sends the invalidations from a thread of their own; the receiver hears when they are
    /// all sent.
    fn invalidate(&self, stale: Stale) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let Some(n) = self.notifier.get().cloned() else {
            let _ = tx.send(());
            return rx;
        };
        let spawned = std::thread::Builder::new()
            .name("rawfs-invalidate".into())
            .spawn(move || {
                send_invalidations(&n, &stale.inodes, &stale.entries);
                let _ = tx.send(());
            });
        if let Err(e) = spawned {
            warn!("cannot start the invalidation thread: {e}");
        }
        rx
    }
}

fn send_invalidations(n: &Notifier, inodes: &[u64], entries: &[(u64, OsString)]) {
    for (parent, name) in entries {
        // ENOENT (nothing cached) is no error; a dead connection ends the loop.
        if let Err(e) = n.inval_entry(INodeNo(*parent), name) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                warn!("invalidating an entry after the crash failed: {e}");
                return;
            }
        }
    }
    for &ino in inodes {
        if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                warn!("invalidating inode {ino} after the crash failed: {e}");
                return;
            }
        }
    }
}

/// The crash event's note: the options, then what was lost.
fn summary(l: &Losses, opts: CrashOptions, killed: &[u32]) -> String {
    let mut s = match opts.keep {
        Keep::None => "keep none".to_string(),
        Keep::Random => format!("keep random seed {}", opts.seed),
    };
    if let Some(t) = opts.torn {
        s.push_str(&format!(" torn {t}"));
    }
    if !killed.is_empty() {
        let pids: Vec<String> = killed.iter().map(u32::to_string).collect();
        s.push_str(&format!(", killed {}", pids.join(" ")));
    }
    if l.is_empty() {
        s.push_str(": nothing lost");
        return s;
    }
    let mut parts = Vec::new();
    for f in &l.files {
        let path = f.path.as_deref().unwrap_or("?");
        let lost: u64 = f.lost.iter().map(|r| r.1).sum();
        let mut what = Vec::new();
        if lost > 0 {
            what.push(format!("{lost} bytes"));
        }
        if !f.torn.is_empty() {
            what.push(format!("{} torn writes", f.torn.len()));
        }
        if f.size != f.size_after {
            what.push(format!("size {} -> {}", f.size, f.size_after));
        }
        if f.attrs {
            what.push("attributes".into());
        }
        parts.push(format!("{path} ({})", what.join(", ")));
    }
    for n in &l.names {
        let live = n.live.as_deref().unwrap_or("none");
        let after = n.after.as_deref().unwrap_or("none");
        parts.push(format!("{} ({live} -> {after})", n.path));
    }
    s.push_str(": lost ");
    s.push_str(&parts.join("; "));
    s
}

/// SIGKILLs every process (but this one) with a file open under `mountpoint` and, with
/// `wait`, waits briefly for them to die (not from a request thread: a process waiting for
/// that request's answer dies only once it has it). Returns their pids.
fn kill_openers(mountpoint: &Path, wait: bool) -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open_here = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.starts_with(mountpoint));
        if open_here {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while wait
        && Instant::now() < deadline
        && killed
            .iter()
            .any(|&pid| crate::registry::process_alive(pid) && !is_zombie(pid))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
