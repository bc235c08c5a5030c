//! Errors, logging, signals, external commands and small readers of /proc.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why the run stopped.
#[derive(Debug)]
pub enum Error {
    /// A bad command line (exit status 2).
    Usage(String),
    /// A failure (exit status 1).
    Failed(String),
    /// SIGINT, SIGTERM or SIGHUP came (exit status 128 + the signal).
    Signal(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Failed(m) => f.write_str(m),
            Error::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Failed(_) => 1,
            Error::Signal(s) => 128 + s,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A failure with this message; a signal that came meanwhile wins, so that an interrupted
/// command reads as the interruption rather than as its own failure.
pub fn fail(msg: impl Into<String>) -> Error {
    match interrupted() {
        Some(s) => Error::Signal(s),
        None => Error::Failed(msg.into()),
    }
}

/// `Err(fail(msg))`.
pub fn bail<T>(msg: impl Into<String>) -> Result<T> {
    Err(fail(msg))
}

// ---- logging -------------------------------------------------------------------------------

/// Broken-down time of `t` (seconds since the epoch): UTC, or local time.
fn broken_down(t: libc::time_t, utc: bool) -> libc::tm {
    // SAFETY: tm is plain data; gmtime_r/localtime_r fill it from a valid time_t.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if utc {
            libc::gmtime_r(&t, &mut tm);
        } else {
            libc::localtime_r(&t, &mut tm);
        }
        tm
    }
}

/// Seconds since the epoch.
pub fn epoch_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The time now as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_timestamp() -> String {
    let tm = broken_down(epoch_secs(), true);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Prints `[bench HH:MM:SS] msg` (local time) to stderr.
pub fn log(msg: impl AsRef<str>) {
    let tm = broken_down(epoch_secs(), false);
    eprintln!(
        "[bench {:02}:{:02}:{:02}] {}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        msg.as_ref()
    );
}

// ---- signals -------------------------------------------------------------------------------

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe. The first signal is kept.
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP: they only set a flag, which the run checks between
/// steps (see [`check_signal`]), so that it stops and its guards unmount everything.
/// Interrupted system calls restart; an external command in the foreground process group
/// gets the signal from the terminal too and ends.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a handler that only stores to an atomic; sigaction with a zeroed mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that came, if any.
pub fn interrupted() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(Error::Signal)` once a signal came.
pub fn check_signal() -> Result<()> {
    match interrupted() {
        Some(s) => Err(Error::Signal(s)),
        None => Ok(()),
    }
}

/// Sleeps, but returns early with an error when a signal comes.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_signal()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// ---- external commands ---------------------------------------------------------------------

/// A command line for messages: the program and its arguments, space separated.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn()
        .map_err(|e| fail(format!("{}: cannot start: {e}", describe(cmd))))
}

fn check_status(cmd: &Command, status: ExitStatus) -> Result<()> {
    check_signal()?;
    if status.success() {
        Ok(())
    } else {
        bail(format!("{} failed ({status})", describe(cmd)))
    }
}

/// Runs a command with its stdout sent to stderr (the report owns stdout); an error names
/// the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.stdin(Stdio::null()).stdout(std::io::stderr());
    let status = spawn(cmd)?
        .wait()
        .map_err(|e| fail(format!("{}: {e}", describe(cmd))))?;
    check_status(cmd, status)
}

/// Runs a command with its stdout and stderr discarded; true if it succeeded.
pub fn run_quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command and returns its stdout (stderr passes through); an error names the command.
pub fn output(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| fail(format!("{}: cannot start: {e}", describe(cmd))))?;
    check_status(cmd, out.status)?;
    String::from_utf8(out.stdout)
        .map_err(|_| fail(format!("{}: output is not UTF-8", describe(cmd))))
}

/// Runs a command with stdout discarded, killing it (SIGTERM, then SIGKILL) if it takes
/// longer than `limit`; true if it succeeded in time.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> bool {
    cmd.stdin(Stdio::null()).stdout(std::io::stderr());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            _ => {
                log(format!("{} timed out", describe(cmd)));
                terminate(&mut child);
                return false;
            }
        }
    }
}

/// Waits up to `limit` for a child to exit; true if it did.
pub fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(100)),
            Ok(None) => return false,
        }
    }
}

/// SIGTERM, up to 5 s, then SIGKILL; reaps the child.
pub fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on the pid of a child not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if !wait_exit(child, Duration::from_secs(5)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

// ---- files and /proc -----------------------------------------------------------------------

/// A path as a C string.
pub fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| fail(format!("{}: a NUL in the path", p.display())))
}

/// Undoes the octal escapes of /proc/self/mounts (`\040` for a space, ...).
fn unescape_mount_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The file system type of the mount at `dir` (the last one mounted there), if any.
pub fn mount_type(dir: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let want = dir.as_os_str().as_bytes();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (unescape_mount_field(at) == want).then(|| kind.to_string())
        })
        .next_back()
}

/// Whether something is mounted at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    mount_type(dir).is_some()
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// VmRSS of a process, in KiB.
pub fn vmrss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| fail(format!("/proc/{pid}/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| fail(format!("/proc/{pid}/status: no VmRSS")))
}

/// User and system time of all the threads of a process, in clock ticks (/proc/PID/stat
/// fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let mut s = String::new();
    fs::File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| fail(format!("{path}: {e}")))?;
    // The fields after the command name, which ends with the last ')': state is field 3.
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (num(11), num(12)) {
        (Some(u), Some(s)) => Ok((u, s)),
        _ => bail(format!("{path}: no utime/stime fields")),
    }
}

/// Clock ticks per second (getconf CLK_TCK).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// CPUs this process may run on (nproc).
pub fn ncpu() -> usize {
    // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set) as usize
        } else {
            thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// The kernel release (uname -r).
pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed utsname; release is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The guest's halt polling: how long an idle virtual CPU polls before it halts.
const HALT_POLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// The cpuidle driver ("" if none) and, with the haltpoll driver, its guest_halt_poll_ns.
pub fn cpuidle() -> (String, Option<u64>) {
    let driver = fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver")
        .map(|d| d.trim().to_string())
        .unwrap_or_default();
    let ns = fs::read_to_string(HALT_POLL)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    (driver, ns)
}

/// guest_halt_poll_ns set for a run; the old value comes back on drop.
pub struct HaltPoll {
    old: u64,
}

impl HaltPoll {
    /// Sets guest_halt_poll_ns to `ns`.
    pub fn set(ns: u64) -> Result<HaltPoll> {
        let (_, Some(old)) = cpuidle() else {
            return bail(format!(
                "--halt-poll-ns: {HALT_POLL} does not exist (not a guest with the haltpoll \
                 cpuidle driver)"
            ));
        };
        fs::write(HALT_POLL, ns.to_string())
            .map_err(|e| fail(format!("--halt-poll-ns: write {HALT_POLL}: {e}")))?;
        log(format!("guest_halt_poll_ns {old} -> {ns} for the run"));
        Ok(HaltPoll { old })
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        match fs::write(HALT_POLL, self.old.to_string()) {
            Ok(()) => log(format!("guest_halt_poll_ns back to {}", self.old)),
            Err(e) => log(format!("cannot restore {HALT_POLL} to {}: {e}", self.old)),
        }
    }
}

/// The first "model name" of /proc/cpuinfo, or "".
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(": ")
                .map(|(_, m)| m.to_string())
        })
        .unwrap_or_default()
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Raises the open file limit to at least `want` (soft and hard, as `ulimit -n` does), or
/// the soft limit to the hard one if that fails; returns the soft limit in force.
pub fn raise_nofile(want: libc::rlim_t) -> libc::rlim_t {
    // SAFETY: getrlimit/setrlimit on a valid rlimit.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(rl.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) != 0 {
                let hard = libc::rlimit {
                    rlim_cur: rl.rlim_max,
                    rlim_max: rl.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &hard);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
        rl.rlim_cur
    }
}

/// The first line of a command's stdout, or `None` if it cannot run or fails.
pub fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// The lines of a command's stdout (none if it cannot run or fails).
pub fn stdout_lines(cmd: &mut Command) -> Vec<String> {
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `mkdir -p`, with an error naming the directory.
pub fn mkdir_p(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| fail(format!("mkdir -p {}: {e}", dir.display())))
}

/// Removes a file if it is there (`rm -f`).
pub fn rm_f(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail(format!("rm -f {}: {e}", path.display())),
    }
}

/// Splits a string of arguments on whitespace, as the shell splits an unquoted variable.
pub fn words(s: &str) -> Vec<&OsStr> {
    s.split_whitespace().map(OsStr::new).collect()
}
