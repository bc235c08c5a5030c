//! Mounting and unmounting: checks that turn a failed mount into a clear reason, the running
//! session, and an unmount that never hangs (lazy detach and connection abort as fallbacks).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use log::{info, warn};

use crate::control::{Served, Server};
use crate::fault::{Faults, Rule};
use crate::fs::durable::Model;
use crate::fs::{Fs, FsOptions};
use crate::fuse::names::{self, Names};
use crate::fuse::power::Power;
use crate::fuse::reserve::Serving;
use crate::fuse::{CacheMode, RawFs};
use crate::trace::recorder::{Recorder, Store, TraceConfig};

/// What a mount looks like; the same from the CLI and from the library.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Kernel caching (default: none, every request reaches rawfs).
    pub cache: CacheMode,
    /// Most bytes of file data before writes fail with ENOSPC (default: no limit).
    pub size: Option<u64>,
    /// Threads serving requests.
    pub threads: usize,
    /// Of those, the threads that wait for the kernel's requests while no request is delayed
    /// or held; the others wait in reserve for such requests. Default: 1 (one thread answers
    /// a caller fastest; more serve several callers on more CPUs at once), or 2 on
    /// a virtual machine whose idle CPUs halt at once ([`Serving::for_this_machine`]).
    pub readers: usize,
    /// How long a reader polls for the next request after answering one before it blocks
    /// (zero: it blocks at once). Default: 50 µs, or zero where idle CPUs halt at once.
    /// Waking a thread on an idle CPU costs more than a request on a virtual machine;
    /// polling costs CPU time only while requests come.
    pub poll: Duration,
    /// What the trace keeps and where it writes.
    pub trace: TraceConfig,
    /// Fault rules in force from the start.
    pub faults: Vec<Rule>,
    /// What a sync makes durable, for crash simulation (docs/crash.md).
    pub model: Model,
    /// Keep the tree after every request that changes it, for `rawfs explore` (needs
    /// recording on and one thread, so that each state follows exactly one request).
    pub record_states: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        let threads = 4;
        let serving = Serving::for_this_machine(threads);
        MountConfig {
            cache: CacheMode::Direct,
            size: None,
            threads,
            readers: serving.readers,
            poll: serving.poll,
            trace: TraceConfig::default(),
            faults: Vec::new(),
            model: Model::default(),
            record_states: false,
        }
    }
}

/// Why a mount failed, phrased for the person who asked for it.
#[derive(Debug)]
pub struct MountError(String);

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MountError {}

impl MountError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> MountError {
        MountError(msg.into())
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn fusermount_available() -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("fusermount3").exists() || d.join("fusermount").exists())
}

/// True if `path` is a mount whose daemon is gone (the kernel answers ENOTCONN).
pub fn is_stale(path: &Path) -> bool {
    std::fs::metadata(path).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
}

/// Checks the mount point and the machine before mounting, so that each common failure gets
/// its own message instead of a bare errno.
pub fn preflight(mountpoint: &Path) -> Result<(), MountError> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError(format!(
                "{shown} is a stale mount left by a rawfs daemon that died; \
                 clear it with `rawfs umount {shown}` (or `umount -l {shown}`)"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError(format!("mount point {shown} does not exist")));
        }
        Err(e) => return Err(MountError(format!("cannot use mount point {shown}: {e}"))),
        Ok(m) if !m.is_dir() => {
            return Err(MountError(format!(
                "mount point {shown} is not a directory"
            )));
        }
        Ok(_) => {}
    }
    // A second mount stacked on the first would hide it: its daemon would keep serving a
    // mount nobody can reach, and the runtime files would name only the second one.
    if let Some((fstype, source)) = mounted_on(mountpoint) {
        return Err(MountError(if source == "rawfs" {
            format!(
                "{shown} is already a rawfs mount; unmount it first (`rawfs umount {shown}`) \
                 or choose another directory"
            )
        } else {
            format!(
                "{shown} is already a mount point ({fstype} from {source}); rawfs mounts only \
                 on a plain directory"
            )
        }));
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .map_err(|e| MountError(format!("cannot read mount point {shown}: {e}")))?;
    if entries.next().is_some() {
        return Err(MountError(format!(
            "mount point {shown} is not empty; rawfs mounts only on an empty directory"
        )));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError(
            "/dev/fuse does not exist: load the fuse module (`modprobe fuse`), or give the \
             container the device (`docker run --device /dev/fuse --cap-add SYS_ADMIN`)"
                .into(),
        ));
    }
    if !is_root() && !fusermount_available() {
        return Err(MountError(
            "not running as root and fusermount3 is not installed: install it \
             (Debian/Ubuntu: `apt-get install fuse3`) or run as root"
                .into(),
        ));
    }
    Ok(())
}

/// A mounted rawfs, served by background threads until unmounted or dropped.
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    fs: Arc<Fs>,
    recorder: Option<Arc<Recorder>>,
    faults: Arc<Faults>,
    power: Arc<Power>,
    control: Option<Server>,
    unmounter: Option<SessionUnmounter>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// The kernel's id for this connection (the minor device number of the mount).
    connection: Option<u32>,
    /// Gives freed file data back to the system; stopped at unmount.
    trimmer: Option<Trimmer>,
    /// Whether the session has ended, and what to call when it does.
    end: Arc<std::sync::Mutex<SessionEnd>>,
}

/// The end of a session, as the session thread reports it the moment `run` returns (before
/// the thread is finished): see [`Mounted::on_session_end`].
#[derive(Default)]
struct SessionEnd {
    ended: bool,
    hook: Option<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEnd")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SessionEnd {
    /// Marks the session ended and calls the hook, outside the lock.
    fn fire(end: &std::sync::Mutex<SessionEnd>) {
        let hook = {
            let mut e = end.lock().unwrap_or_else(|e| e.into_inner());
            e.ended = true;
            e.hook.take()
        };
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl Mounted {
    /// Mounts a fresh, empty tree on `mountpoint` and returns once the mount answers.
    pub fn mount(mountpoint: &Path, config: &MountConfig) -> Result<Mounted, MountError> {
        // Held until the mount is in place, so that a second mount started at the same time
        // finds it in its checks.
        let _setup = crate::registry::lock_mountpoint(mountpoint);
        preflight(mountpoint)?;
        let fs = Arc::new(Fs::new(FsOptions {
            size_limit: config.size,
            model: config.model,
            ..FsOptions::default()
        }));
        let mut options = vec![
            MountOption::FSName("rawfs".into()),
            MountOption::Subtype("rawfs".into()),
        ];
        // The tree checks permissions itself, on every request, with supplementary groups
        // and capabilities read from /proc when they decide (src/fs/perm.rs). With the
        // kernel's own checks (`default_permissions`) the kernel would first ask for the
        // attributes of every directory on a path, a getattr per directory per syscall at
        // zero timeouts. The kernel keeps names and skips the lookups of those it holds: the
        // tree then hands out names with a lifetime only where anyone may walk, and makes
        // the kernel forget them when that changes (src/fuse/names.rs), which needs Linux
        // 6.16; on older kernels the default mode keeps no names and --cache leaves search
        // permission to the kernel.
        let cached = config.cache == CacheMode::Cached;
        let names = Arc::new(Names::new(cached, names::kernel_forgets_names()));
        if names.kernel_checks() {
            options.push(MountOption::DefaultPermissions);
        }
        // Device nodes and setuid bits behave as on tmpfs.
        options.push(MountOption::Dev);
        options.push(MountOption::Suid);
        let mut fuse_config = Config::default();
        fuse_config.mount_options = options;
        // As root, other users may use the mount (tests that switch uids need it); an
        // unprivileged user would need user_allow_other in /etc/fuse.conf.
        fuse_config.acl = if is_root() {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        fuse_config.n_threads = Some(config.threads.max(1));
        let recorder = if config.trace.capacity > 0 {
            let abs = crate::registry::absolute(mountpoint).unwrap_or(mountpoint.to_path_buf());
            let r = Recorder::start(&config.trace, &abs).map_err(|e| MountError(e.to_string()))?;
            Some(Arc::new(r))
        } else {
            None
        };
        let faults = Arc::new(Faults::default());
        faults
            .add(config.faults.clone())
            .map_err(|e| MountError(format!("bad fault rule: {e}")))?;
        // Names the kernel keeps would let walks pass a new lookup rule by.
        let forget = names.clone();
        faults.on_lookup_rules(move || forget.forget_all());
        let unrecorded = Arc::new(AtomicU64::new(0));
        let abs = crate::registry::absolute(mountpoint).unwrap_or(mountpoint.to_path_buf());
        let mut power = Power::new(fs.clone(), names.clone(), recorder.clone(), &abs);
        if config.record_states {
            power = power.recording_states();
        }
        let power = Arc::new(power);
        let adapter = RawFs::new(
            fs.clone(),
            config.cache,
            names.clone(),
            recorder.clone(),
            faults.clone(),
            unrecorded.clone(),
            power.clone(),
        )
        .with_threads(config.threads.max(1), config.readers, config.poll);
        let reserve = adapter.reserve();
        let mut session = Session::new(adapter, mountpoint, &fuse_config).map_err(|e| {
            let shown = mountpoint.display();
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => MountError(format!(
                    "not permitted to mount on {shown}: {e}. Run as root, or install \
                     fusermount3 (Debian/Ubuntu package fuse3) so that users may mount"
                )),
                _ => MountError(format!("cannot mount on {shown}: {e}")),
            }
        })?;
        let device = std::os::fd::AsFd::as_fd(&session);
        reserve.set_device(std::os::fd::AsRawFd::as_raw_fd(&device));
        names.set_device(device);
        let unmounter = session.unmount_callable();
        power.set_notifier(session.notifier());
        let end = Arc::new(std::sync::Mutex::new(SessionEnd::default()));
        let end_seen = end.clone();
        let thread = std::thread::Builder::new()
            .name("rawfs-session".into())
            .spawn(move || {
                let result = session.run();
                SessionEnd::fire(&end_seen);
                result
            })
            .map_err(|e| MountError(format!("cannot start the session thread: {e}")))?;
        // From the mount table, not a stat of the mount point: that would be a request of
        // rawfs's own at the head of every trace.
        let connection = connection_of(&abs);
        let control = match Server::start(Served {
            fs: fs.clone(),
            recorder: recorder.clone(),
            faults: faults.clone(),
            unrecorded,
            power: power.clone(),
            mountpoint: abs,
            started: Instant::now(),
        }) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("no control socket for {}: {e}", mountpoint.display());
                None
            }
        };
        let serving = reserve.serving();
        info!(
            "mounted rawfs on {} ({:?}, {}, {} threads, {} reading, polling {} µs)",
            mountpoint.display(),
            config.cache,
            names.guard(),
            config.threads,
            serving.readers,
            serving.poll.as_micros()
        );
        let trimmer = Trimmer::start(&fs);
        Ok(Mounted {
            mountpoint: mountpoint.to_path_buf(),
            fs,
            recorder,
            faults,
            power,
            control,
            unmounter: Some(unmounter),
            thread: Some(thread),
            connection,
            trimmer,
            end,
        })
    }

    /// Calls `hook` once, as soon as the session ends (at once if it has): for a caller that
    /// waits for other things as well, and so cannot wait for the session alone.
    pub fn on_session_end(&self, hook: impl FnOnce() + Send + 'static) {
        let mut e = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if e.ended {
            drop(e);
            hook();
        } else {
            e.hook = Some(Box::new(hook));
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The tree being served.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// The recorder, unless recording is off (trace capacity 0).
    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    /// Starts `cmd` (with no working directory set) in the mount's root, as `rawfs run` does,
    /// so that the trace begins with the command's own requests. Changing into a directory of
    /// a mount is a request (the kernel asks whether search is allowed); a thread of this
    /// process with a working directory of its own makes it, left out of the trace, and the
    /// command inherits the directory. Where a thread cannot have a working directory of its
    /// own (`unshare(CLONE_FS)` refused), the command changes directory itself, and its trace
    /// begins with that `access`.
    pub fn spawn_inside(&self, cmd: &mut Command) -> io::Result<Child> {
        let (path, recorder) = (self.path(), self.recorder());
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare(CLONE_FS) only gives this thread its own working directory.
                if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                    return cmd.current_dir(path).spawn();
                }
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u32;
                recorder.inspect(|r| r.leave_out_thread(tid));
                let moved = std::env::set_current_dir(path);
                recorder.inspect(|r| r.leave_out_thread(0));
                moved?;
                let child = cmd.spawn();
                // Let go of the mount before the thread ends: a thread's last references
                // are dropped after a join has returned, and could hold up an unmount.
                let _ = std::env::set_current_dir("/");
                child
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread starting the command panicked")))
        })
    }

    /// The fault rules in force, to change while the mount runs.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The power switch: crash the mount (docs/crash.md).
    pub fn power(&self) -> &Arc<Power> {
        &self.power
    }

    /// The trace buffer, unless recording is off.
    pub fn trace(&self) -> Option<&Arc<Store>> {
        self.recorder.as_ref().map(|r| r.store())
    }

    /// False once the session has ended (for instance after an external `umount`).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Unmounts and waits for the session to end. A busy mount is detached lazily and its
    /// connection aborted, so this returns within a few seconds whatever holds the mount.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Followers of the trace see the end once the session is gone; new clients are refused.
        let control = self.control.take();
        drop(self.trimmer.take());
        // Held requests go on, so that nothing waits on a mount that is going away.
        self.faults.holds.close();
        let mut first_error = None;
        if let Some(mut u) = self.unmounter.take() {
            if let Err(e) = u.unmount() {
                if !thread.is_finished() {
                    warn!(
                        "unmount of {} failed ({e}); detaching lazily",
                        self.mountpoint.display()
                    );
                    if let Err(e) = lazy_unmount(&self.mountpoint) {
                        first_error = Some(e);
                    }
                }
            }
        }
        if !wait_for(&thread, Duration::from_secs(3)) {
            warn!(
                "session for {} still running; aborting its connection",
                self.mountpoint.display()
            );
            if let Some(id) = self.connection {
                abort_connection(id);
            }
            if !wait_for(&thread, Duration::from_secs(3)) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "session did not end",
                ));
            }
        }
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("session for {} ended with {e}", self.mountpoint.display()),
            Err(_) => warn!("session thread for {} panicked", self.mountpoint.display()),
        }
        // No request comes any more: finish the trace file before returning, since the
        // process may exit right after, while a control client still holds the recorder.
        if let Some(r) = &self.recorder {
            let start = Instant::now();
            while !r.close(TRACE_NOTICE) {
                if start.elapsed() >= TRACE_LIMIT {
                    log::error!(
                        "the trace writer did not finish within {} s: the trace file is \
                         incomplete",
                        TRACE_LIMIT.as_secs()
                    );
                    break;
                }
                warn!(
                    "still writing the trace file ({} s)",
                    start.elapsed().as_secs()
                );
            }
        }
        drop(control);
        info!("unmounted rawfs from {}", self.mountpoint.display());
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Watches how much file data the tree frees and, once [`TRIM_AFTER`] more was freed (files
/// removed or truncated), hands the freed memory back to the system. glibc
/// keeps freed memory in its arenas, and a test daemon lives for a whole test session: without
/// this, 2 GiB written and deleted stayed in the daemon for good.
#[derive(Debug)]
struct Trimmer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::Thread,
}

/// Bytes freed since the peak that make a trim worth its cost (it walks every free chunk).
const TRIM_AFTER: u64 = 32 << 20;
/// How often the trimmer looks.
const TRIM_POLL: Duration = Duration::from_millis(500);

impl Trimmer {
    fn start(fs: &Arc<Fs>) -> Option<Trimmer> {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return None;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (fs, flag) = (Arc::downgrade(fs), stop.clone());
        let handle = std::thread::Builder::new()
            .name("rawfs-trim".into())
            .stack_size(64 << 10)
            .spawn(move || {
                // What was freed: counted by the tree, or (a crash that drops data resets the
                // count of pages in use) seen as a fall from the highest use looked at.
                let (mut trimmed_at, mut peak) = (0, 0);
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    let Some((used, freed)) =
                        fs.upgrade().map(|f| (f.bytes_used(), f.bytes_freed()))
                    else {
                        return;
                    };
                    peak = peak.max(used);
                    if freed - trimmed_at >= TRIM_AFTER || peak - used >= TRIM_AFTER {
                        trim();
                        (trimmed_at, peak) = (freed, used);
                    }
                    std::thread::park_timeout(TRIM_POLL);
                }
            })
            .ok()?;
        Some(Trimmer {
            stop,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        // Not joined: it ends as soon as it wakes, and unmounting need not wait for that.
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.unpark();
    }
}

/// Returns free memory at the top of the heap and inside it (whole free pages) to the system.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often unmounting says it is still waiting for the trace writer, and how long it
/// waits at most: a trace file is finished unless its disk is stuck.
const TRACE_NOTICE: Duration = Duration::from_secs(5);
const TRACE_LIMIT: Duration = Duration::from_secs(120);

fn wait_for(thread: &JoinHandle<io::Result<()>>, limit: Duration) -> bool {
    let start = Instant::now();
    while !thread.is_finished() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Tells the kernel to fail every request of connection `id` (fusectl), which ends a session
/// that a lazy unmount left waiting for its last user.
fn abort_connection(id: u32) {
    let dir = Path::new("/sys/fs/fuse/connections");
    // The fusectl file system is not always mounted (containers): mount it for this, and
    // take it away again afterwards.
    let mounted_here = !dir.join(id.to_string()).exists() && is_root() && {
        let (src, target, fstype) = (c"none", c"/sys/fs/fuse/connections", c"fusectl");
        // SAFETY: all three are valid NUL-terminated strings; no data argument.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            warn!("cannot mount fusectl: {}", io::Error::last_os_error());
        }
        r == 0
    };
    let path = dir.join(id.to_string()).join("abort");
    if let Err(e) = std::fs::write(&path, "1") {
        warn!(
            "cannot abort FUSE connection {id} through {}: {e}",
            path.display()
        );
    }
    if mounted_here {
        let _ = umount2(dir, libc::MNT_DETACH);
    }
}

fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fusermount(path: &Path, lazy: bool) -> io::Result<()> {
    let bin =
        if Path::new("/bin/fusermount3").exists() || Path::new("/usr/bin/fusermount3").exists() {
            "fusermount3"
        } else {
            "fusermount"
        };
    let mut cmd = Command::new(bin);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(path).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{bin} -u failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Detaches the mount now; the kernel finishes it when the last user lets go.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    if is_root() {
        umount2(path, libc::MNT_DETACH)
    } else {
        fusermount(path, true)
    }
}

/// Unmounts `path` from outside the daemon (as `rawfs umount` does): a plain unmount first,
/// then, if the mount is stale or `lazy` is set and it is busy, a lazy one.
pub fn unmount_path(path: &Path, lazy: bool) -> io::Result<()> {
    let stale = is_stale(path);
    let plain = if is_root() {
        umount2(path, 0)
    } else {
        fusermount(path, false)
    };
    match plain {
        Ok(()) => Ok(()),
        Err(e) if stale || (lazy && e.raw_os_error() == Some(libc::EBUSY)) => lazy_unmount(path),
        Err(e) if !is_root() && (stale || lazy) => lazy_unmount(path).map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// True if `path` is the root of a rawfs mount (source "rawfs"), per /proc/self/mountinfo.
pub fn is_rawfs_mount(path: &Path) -> bool {
    crate::registry::absolute(path).is_ok_and(|abs| connection_of(&abs).is_some())
}

/// The kernel's id of the FUSE connection of the rawfs mount on `abs` (an absolute path with
/// its parent's symlinks resolved), if there is one: the minor device number of the last
/// such mount in /proc/self/mountinfo (the one on top).
fn connection_of(abs: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let ours = unescape_mountinfo(fields.get(4)?) == abs.as_os_str().as_bytes()
            && fields.get(sep + 1)?.starts_with("fuse")
            && *fields.get(sep + 2)? == "rawfs";
        let (_, minor) = fields.get(2)?.split_once(':')?;
        if ours { minor.parse().ok() } else { None }
    })
}

/// The file system type and source of the mount whose root is `path`, if `path` is a mount
/// point (the last such mount in /proc/self/mountinfo: the one on top).
fn mounted_on(path: &Path) -> Option<(String, String)> {
    // The directory exists here: resolve every symlink and `..`, as the kernel did when it
    // recorded the mount point.
    let abs = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let mp = fields.get(4)?;
        (unescape_mountinfo(mp) == abs.as_os_str().as_bytes()).then(|| {
            let field = |i: usize| fields.get(sep + i).map_or("?", |f| *f).to_string();
            (field(1), field(2))
        })
    })
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
