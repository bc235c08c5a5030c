//! The command line: parses arguments into a validated configuration, then runs one command.

mod crash;
mod explore;
mod faults;
mod inspect;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use log::warn;

use crate::fuse::CacheMode;
use crate::fuse::reserve::Serving;
use crate::harness::TempMount;
use crate::mount::{self, MountConfig, Mounted};
use crate::registry::{self, Entry};
use crate::trace::recorder::{Overflow, TraceConfig};
use crate::units::parse_size;

/// rawfs: an in-memory file system over FUSE for testing raw I/O semantics.
///
/// Every stat, read and write reaches rawfs (the kernel keeps only names, unless --cache), so
/// what a program does to its files is exactly what rawfs sees.
#[derive(Parser, Debug)]
#[command(name = "rawfs", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount an empty in-memory file system on MOUNTPOINT.
    ///
    /// Runs in the foreground until SIGINT or SIGTERM (or `rawfs umount`), then unmounts.
    /// With --daemon, returns as soon as the mount answers and keeps serving in the
    /// background; its log goes to the runtime directory (see `rawfs umount --help`).
    Mount {
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Return once mounted and keep serving in the background.
        #[arg(long)]
        daemon: bool,
        #[command(flatten)]
        opts: MountArgs,
        /// Write "ready" or "error: REASON" on stdout once mounted (used by --daemon).
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
    /// Unmount a rawfs mount and wait for its daemon to exit.
    ///
    /// Works on a stale mount left by a daemon that died (the kernel answers "Transport
    /// endpoint is not connected" there); on the mount of a `rawfs run` that was killed, it
    /// also removes the temporary mount point directory.
    #[command(alias = "unmount")]
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// If the mount is busy, detach it now and let the kernel finish when it is free.
        #[arg(long, short = 'l')]
        lazy: bool,
    },
    /// Run CMD with a fresh rawfs mount as its working directory, then unmount.
    ///
    /// The mount point is also in $RAWFS_MOUNT. CMD runs in the mount, so a relative path to
    /// a script (`./test.sh`) does not reach it: give "$PWD/test.sh". Exits with CMD's status
    /// (128+N if a signal N killed it). SIGINT, SIGTERM and SIGHUP sent to rawfs run are
    /// passed on to CMD; rawfs run then unmounts and exits with 128+N.
    Run {
        /// After CMD ends, keep the mount until Ctrl-C or `rawfs umount`, to look around.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        opts: MountArgs,
        /// Where to print CMD's trace when it ends (default: standard error).
        #[arg(long, value_name = "FILE")]
        trace_output: Option<PathBuf>,
        /// How to print CMD's trace: text, jsonl, chrome, or none.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        trace_format: RunTraceFormat,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Print the requests a mount has served (or a saved trace), filtered.
    ///
    /// Events come in sequence order. With --follow, keeps printing new ones as they happen
    /// until the mount ends or the output is closed.
    Trace {
        #[command(flatten)]
        source: inspect::Source,
        /// Output format.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        format: inspect::TraceFormat,
        /// Keep printing new requests as they happen.
        #[arg(long, short = 'f')]
        follow: bool,
        /// After printing, remove the printed range of events from the mount's buffer, so
        /// that the next `rawfs trace` starts after them.
        #[arg(long)]
        clear: bool,
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Look for risky I/O patterns in a trace: check-then-create races, short reads not
    /// retried, renames and creates not made durable.
    ///
    /// Exits 0 when no warning was found, 1 when one was, 2 when the check could not run
    /// (no daemon answers, unreadable file, unknown check name). Informational findings
    /// (exclusive-create) are printed but do not count.
    Check {
        #[command(flatten)]
        source: inspect::Source,
        #[command(flatten)]
        select: inspect::Selection,
        /// One JSON object per finding instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inject faults into a running mount: add, list, remove rules; list and release held
    /// requests.
    Fault {
        #[command(subcommand)]
        cmd: faults::FaultCmd,
    },
    /// Cut the power: the mount's tree becomes what a disk would hold (unsynced changes
    /// lost, as the mount's --model says), every open file fails with EIO, and the mount
    /// goes on serving for the program's recovery. Also: what a crash would lose
    /// (--dry-run), or a crash image written to a directory (--to).
    Crash(crash::CrashArgs),
    /// Find crash bugs: run WORKLOAD once on a fresh mount, then check every crash state it
    /// could have left (under --model) with CHECKER, run in each state's directory.
    ///
    /// Exits 0 when every state passes, 1 when some fail, 2 for a usage error or a workload
    /// that failed. docs/explore.md walks through examples.
    Explore(explore::ExploreArgs),
    /// Show a mount's daemon: uptime, requests served, trace counters, tree size.
    Status {
        /// The mount point.
        mountpoint: PathBuf,
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// How `rawfs run` prints the command's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RunTraceFormat {
    /// One strace-like line per request.
    Text,
    /// JSON Lines.
    Jsonl,
    /// Chrome trace-event JSON.
    Chrome,
    /// Do not print the trace.
    None,
}

#[derive(Args, Debug, Clone)]
struct MountArgs {
    /// Limit file data to this size: writes beyond it fail with ENOSPC. Accepts a number of
    /// bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 64M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    size: Option<u64>,
    /// Let the kernel cache: page cache for file data and 1 s TTLs for attributes (names in
    /// directories anyone may search are kept in both modes, docs/behaviour.md). Faster, but
    /// reads and writes reach rawfs page by page or not at all, and cached stats are not seen.
    #[arg(long)]
    cache: bool,
    /// Threads serving requests.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Of those, the threads waiting for requests while no request is delayed or held (the
    /// others wait for such requests). Default: 1, polling, which answers a single caller
    /// fastest; or 2, blocking, on a virtual machine whose idle CPUs halt at once
    /// (docs/mounting.md). More serve several callers on more CPUs at once.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    readers: Option<u16>,
    /// Microseconds a reader polls for the next request after answering one, before it
    /// blocks; 0: it blocks at once. Polling saves waking a thread on an idle CPU, which on a
    /// virtual machine costs more than the request; it costs CPU time only while requests
    /// come. Default: 50, or 0 on a virtual machine whose idle CPUs halt at once.
    #[arg(long, value_name = "US",
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    poll_us: Option<u32>,
    /// Also write every request to FILE as it happens, as JSON Lines (see docs/trace.md).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Requests kept in memory for `rawfs trace` (the newest ones); 0 turns recording off.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    trace_capacity: usize,
    /// When the trace writer falls behind: `wait` (requests wait, nothing is lost) or
    /// `drop` (events are dropped and counted).
    #[arg(long, value_name = "POLICY", default_value = "wait", value_parser = parse_overflow)]
    trace_overflow: Overflow,
    /// Fault rules in force from the start: a JSON file holding a rule or an array of rules
    /// (docs/faults.md).
    #[arg(long, value_name = "FILE", value_parser = parse_faults_file)]
    faults: Option<FaultsFile>,
    /// Persistence model for crash simulation: what fsync makes durable and in which order
    /// unsynced changes may reach the disk: `strict` (only what POSIX promises) or
    /// `ext4-ordered` (docs/crash.md).
    #[arg(long, value_name = "MODEL", default_value = "strict")]
    model: crate::fs::durable::Model,
}

/// A rules file, read and checked while the arguments are parsed.
#[derive(Clone, Debug)]
struct FaultsFile {
    path: PathBuf,
    rules: Vec<crate::fault::Rule>,
}

fn parse_faults_file(s: &str) -> Result<FaultsFile, String> {
    let path = std::path::absolute(s).map_err(|e| e.to_string())?;
    let rules = crate::fault::load_rules(&path)?;
    for (i, r) in rules.iter().enumerate() {
        r.clone()
            .compile(0)
            .map_err(|e| format!("rule {}: {e}", i + 1))?;
    }
    Ok(FaultsFile { path, rules })
}

impl MountArgs {
    /// Combinations of options that cannot work together.
    fn check(&self) -> Result<(), String> {
        if self.trace.is_some() && self.trace_capacity == 0 {
            return Err("--trace FILE needs recording on; drop --trace-capacity 0".into());
        }
        if let Some(readers) = self.readers.filter(|&r| r > self.threads) {
            return Err(format!(
                "--readers {readers} is more than --threads {}: readers are some of the threads",
                self.threads
            ));
        }
        Ok(())
    }
}

fn parse_overflow(s: &str) -> Result<Overflow, String> {
    match s {
        "wait" => Ok(Overflow::Wait),
        "drop" => Ok(Overflow::Drop),
        other => Err(format!(
            "unknown overflow policy {other:?} (use wait or drop)"
        )),
    }
}

impl MountArgs {
    fn config(&self) -> MountConfig {
        let serving = Serving::for_this_machine(self.threads.into());
        MountConfig {
            cache: if self.cache {
                CacheMode::Cached
            } else {
                CacheMode::Direct
            },
            size: self.size,
            threads: self.threads.into(),
            readers: self.readers.map_or(serving.readers, usize::from),
            poll: self
                .poll_us
                .map_or(serving.poll, |us| Duration::from_micros(us.into())),
            trace: TraceConfig {
                capacity: self.trace_capacity,
                file: self
                    .trace
                    .as_ref()
                    .map(|p| std::path::absolute(p).unwrap_or(p.clone())),
                overflow: self.trace_overflow,
            },
            faults: self
                .faults
                .as_ref()
                .map(|f| f.rules.clone())
                .unwrap_or_default(),
            model: self.model,
            record_states: false,
        }
    }

    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--threads".into(), self.threads.to_string().into()];
        if let Some(r) = self.readers {
            a.push("--readers".into());
            a.push(r.to_string().into());
        }
        if let Some(us) = self.poll_us {
            a.push("--poll-us".into());
            a.push(us.to_string().into());
        }
        if let Some(s) = self.size {
            a.push("--size".into());
            a.push(s.to_string().into());
        }
        if self.cache {
            a.push("--cache".into());
        }
        if let Some(t) = &self.trace {
            a.push("--trace".into());
            a.push(std::path::absolute(t).unwrap_or(t.clone()).into());
        }
        if let Some(f) = &self.faults {
            a.push("--faults".into());
            a.push(f.path.clone().into());
        }
        a.push("--model".into());
        a.push(self.model.name().into());
        a.push("--trace-capacity".into());
        a.push(self.trace_capacity.to_string().into());
        a.push("--trace-overflow".into());
        a.push(
            if self.trace_overflow == Overflow::Drop {
                "drop"
            } else {
                "wait"
            }
            .into(),
        );
        a
    }
}

/// Entry point of the `rawfs` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // fuser reports a reply to a request the kernel gave up on (the caller was killed or
        // the mount went away) as an error; that is an ordinary race here.
        Cmd::Mount { .. } => "rawfs=info,fuser=off",
        _ => "warn,fuser=off",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    quiet_closed_stdout();
    let opts = match &cli.command {
        Cmd::Mount { opts, .. } | Cmd::Run { opts, .. } => Some(opts),
        _ => None,
    };
    if let Some(Err(e)) = opts.map(|o| o.check()) {
        return fail(e);
    }
    match cli.command {
        Cmd::Mount {
            mountpoint,
            daemon: true,
            opts,
            ..
        } => spawn_daemon(&mountpoint, &opts),
        Cmd::Mount {
            mountpoint,
            daemon: false,
            opts,
            notify_ready,
        } => serve(&mountpoint, &opts.config(), notify_ready),
        Cmd::Umount { mountpoint, lazy } => umount(&mountpoint, lazy),
        Cmd::Run {
            keep,
            opts,
            trace_output,
            trace_format,
            command,
        } => {
            let report = Report {
                format: trace_format,
                output: trace_output,
            };
            run(&opts.config(), keep, &report, &command)
        }
        Cmd::Trace {
            source,
            format,
            follow,
            clear,
            output,
        } => inspect::trace(&source, format, follow, clear, output.as_deref()).unwrap_or_else(fail),
        Cmd::Check {
            source,
            select,
            json,
        } => inspect::check(&source, &select, json),
        Cmd::Fault { cmd } => faults::run(cmd).unwrap_or_else(fail),
        Cmd::Crash(args) => crash::run(&args).unwrap_or_else(fail),
        Cmd::Explore(args) => explore::run(&args),
        Cmd::Status { mountpoint, json } => inspect::status(&mountpoint, json).unwrap_or_else(fail),
    }
}

/// Ends the command quietly because its standard output was closed (`rawfs status | head
/// -1`): by the SIGPIPE a write would have brought, as coreutils end, with no message.
pub(crate) fn stdout_closed() -> ! {
    // SAFETY: restoring a default disposition and raising a signal have no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// `println!` for command output: a closed standard output ends the command quietly
/// ([`stdout_closed`]) instead of panicking; another write error ends it with the reason.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one line of command output (see [`outln`]).
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            stdout_closed();
        }
        eprintln!("rawfs: writing the output: {e}");
        std::process::exit(1);
    }
}

/// A `println!` elsewhere that meets a closed standard output panics with "failed printing
/// to stdout": end quietly then too, not with a panic message and a backtrace.
fn quiet_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            stdout_closed();
        }
        default(info)
    }));
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rawfs: {msg}");
    ExitCode::FAILURE
}

/// Blocks the stop signals in this thread and every thread it starts later, so that they
/// are taken only by [`wait_for_stop`].
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Sent by the daemon to itself when its session ends (an unmount from outside), so that
/// [`wait_for_stop`] returns at once instead of at its next look.
const SESSION_ENDED: libc::c_int = libc::SIGUSR1;

/// Waits until a stop signal arrives or the session ends on its own (external unmount).
fn wait_for_stop(set: &libc::sigset_t, mounted: &Mounted) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while mounted.is_alive() {
        // SAFETY: set is initialised, timeout is valid, siginfo may be null.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
        if sig == SESSION_ENDED {
            return;
        }
        if sig > 0 {
            log::info!("signal {sig}: unmounting");
            return;
        }
    }
}

fn serve(mountpoint: &Path, config: &MountConfig, notify_ready: bool) -> ExitCode {
    let mut set = block_stop_signals();
    // Blocked in every thread like the stop signals, before any starts.
    // SAFETY: set is initialised.
    unsafe {
        libc::sigaddset(&mut set, SESSION_ENDED);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mounted = match Mounted::mount(mountpoint, config) {
        Ok(m) => m,
        Err(e) if notify_ready => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => return fail(e),
    };
    let entry = Entry::for_mountpoint(mountpoint).ok();
    if let Some(entry) = &entry {
        if let Err(e) = entry.write_pid(std::process::id()) {
            warn!("cannot record the daemon pid: {e}");
        }
    }
    if notify_ready {
        println!("ready");
        let _ = std::io::stdout().flush();
        detach_stdout();
    }
    // SAFETY: kill has no memory-safety preconditions; the signal is blocked, so it only
    // wakes wait_for_stop.
    mounted.on_session_end(|| unsafe {
        libc::kill(libc::getpid(), SESSION_ENDED);
    });
    wait_for_stop(&set, &mounted);
    let result = mounted.unmount();
    if let Some(entry) = &entry {
        entry.remove();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("unmounting {}: {e}", mountpoint.display())),
    }
}

/// Points stdout at /dev/null, so that the parent's pipe closes and nothing blocks on it.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid; dup2 replaces fd 1 atomically.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn spawn_daemon(mountpoint: &Path, opts: &MountArgs) -> ExitCode {
    if let Err(e) = mount::preflight(mountpoint) {
        return fail(e);
    }
    let entry = match Entry::for_mountpoint(mountpoint) {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot use the runtime directory: {e}")),
    };
    let log = match entry.open_log() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open the daemon's log {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot find the rawfs executable: {e}")),
    };
    let mut child = match Command::new(exe)
        .arg("mount")
        .arg(mountpoint)
        .args(opts.to_args())
        .arg("--notify-ready")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the daemon: {e}")),
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next().and_then(Result::ok);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(line)) if line == "ready" => ExitCode::SUCCESS,
        Ok(Some(line)) => fail(line.strip_prefix("error: ").unwrap_or(&line)),
        Ok(None) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            fail(format!(
                "the daemon exited ({status}) before mounting; see {}",
                entry.log_file().display()
            ))
        }
        Err(_) => {
            let _ = child.kill();
            fail(format!(
                "the daemon did not mount within 30 s; see {}",
                entry.log_file().display()
            ))
        }
    }
}

fn umount(mountpoint: &Path, lazy: bool) -> ExitCode {
    let entry = Entry::for_mountpoint(mountpoint).ok();
    let pid = entry.as_ref().and_then(Entry::live_pid);
    let shown = mountpoint.display();
    if !mount::is_rawfs_mount(mountpoint) && !mount::is_stale(mountpoint) {
        if let Some(e) = &entry {
            e.remove();
        }
        return fail(format!("{shown} is not a rawfs mount"));
    }
    // Requests held by fault rules would keep their processes, and so the mount, busy.
    if let Ok(mut c) = crate::control::Client::connect(mountpoint) {
        // A daemon that does not answer (stopped) must not keep the unmount waiting.
        let _ = c.set_timeout(Some(Duration::from_secs(2)));
        let _ = c.request(&crate::control::Command::Release {
            hold: None,
            rule: None,
            all: true,
        });
    }
    if let Err(e) = mount::unmount_path(mountpoint, lazy) {
        return if e.raw_os_error() == Some(libc::EBUSY) {
            fail(format!(
                "{shown} is busy (a process has a file open or its working directory there); \
                 close them, or detach it now with `rawfs umount --lazy {shown}`"
            ))
        } else {
            fail(format!("cannot unmount {shown}: {e}"))
        };
    }
    if let Some(pid) = pid {
        // After a lazy detach of a busy mount the daemon serves the processes still using it
        // until they let go: that is what --lazy asks for, not a failure.
        let limit = Duration::from_secs(if lazy { 2 } else { 10 });
        let start = Instant::now();
        while registry::process_alive(pid) && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A daemon still finishing its trace file (a slow disk) is waited for, saying so:
        // returning now would hand over a file that is still growing.
        if !lazy && registry::process_alive(pid) && daemon_writes_trace(pid) {
            eprintln!("rawfs: daemon {pid} is still writing its trace file; waiting");
            while registry::process_alive(pid) && start.elapsed() < TRACE_WAIT {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if registry::process_alive(pid) && lazy {
            eprintln!(
                "rawfs: detached {shown}; daemon {pid} keeps serving the processes still \
                 using it and exits when they let go"
            );
            return ExitCode::SUCCESS;
        }
        if registry::process_alive(pid) {
            let trace = if daemon_writes_trace(pid) {
                "; its trace file may be incomplete"
            } else {
                ""
            };
            return fail(format!(
                "unmounted {shown}, but daemon {pid} has not exited{trace}"
            ));
        }
    }
    if let Some(e) = &entry {
        e.remove();
    }
    remove_if_temporary(mountpoint);
    ExitCode::SUCCESS
}

/// Removes a mount point `rawfs run` (or a `TempMount`) created and could not remove itself,
/// because it was killed: an empty `rawfs-mnt-*` directory right in the temp directory.
fn remove_if_temporary(mountpoint: &Path) {
    let Ok(abs) = registry::absolute(mountpoint) else {
        return;
    };
    let ours = abs.parent() == std::env::temp_dir().canonicalize().ok().as_deref()
        && abs
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("rawfs-mnt-"));
    if ours && std::fs::remove_dir(&abs).is_ok() {
        eprintln!("rawfs: removed the temporary mount point {}", abs.display());
    }
}

/// How long `rawfs umount` waits for a daemon finishing its trace file (the daemon itself
/// gives up at 120 s).
const TRACE_WAIT: Duration = Duration::from_secs(125);

/// True if daemon `pid` was started with `--trace FILE`.
fn daemon_writes_trace(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--trace"))
}

/// Where `rawfs run` prints the command's trace.
struct Report {
    format: RunTraceFormat,
    output: Option<PathBuf>,
}

impl Report {
    /// Prints the events of a finished run.
    fn print(
        &self,
        mountpoint: &Path,
        store: &crate::trace::recorder::Store,
    ) -> Result<(), String> {
        let fmt = match self.format {
            RunTraceFormat::None => return Ok(()),
            RunTraceFormat::Text => inspect::TraceFormat::Text,
            RunTraceFormat::Jsonl => inspect::TraceFormat::Jsonl,
            RunTraceFormat::Chrome => inspect::TraceFormat::Chrome,
        };
        if !store.wait_closed(Duration::from_secs(5)) {
            warn!("the trace may miss the last requests");
        }
        let (events, counts) = store.since(0);
        let header = crate::trace::Header {
            rawfs_trace: crate::trace::FORMAT_VERSION,
            rawfs_version: env!("CARGO_PKG_VERSION").to_string(),
            mountpoint: mountpoint.display().to_string(),
            started_unix_ns: store.started_unix_ns(),
        };
        let mut w: Box<dyn Write> = match &self.output {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| format!("cannot create {}: {e}", p.display()))?,
            )),
            None => Box::new(std::io::stderr().lock()),
        };
        inspect::print_events(&mut *w, fmt, Some(&header), &events).map_err(|e| e.to_string())?;
        if counts.dropped > 0 || counts.evicted > 0 {
            eprintln!(
                "rawfs: {} events dropped and {} evicted; raise --trace-capacity or use --trace FILE",
                counts.dropped, counts.evicted
            );
        }
        Ok(())
    }
}

fn run(config: &MountConfig, keep: bool, report: &Report, command: &[OsString]) -> ExitCode {
    let set = block_stop_signals();
    let tm = match TempMount::with_config(config) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).env("RAWFS_MOUNT", tm.path());
    // The stop signals are blocked here, and a child inherits the mask: unblock them in the
    // command, or SIGINT, SIGTERM and SIGHUP would not stop it.
    let unblock = set;
    // SAFETY: between fork and exec only pthread_sigmask runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
            Ok(())
        });
    }
    let (code, signalled) = match tm.spawn_inside(&mut cmd) {
        Ok(child) => wait_forwarding(child, &set),
        Err(e) => {
            let name = command[0].to_string_lossy();
            let hint = if Path::new(&command[0]).is_relative() && name.contains('/') {
                format!(
                    " (CMD runs in the new mount, an empty directory: give {name} as an \
                     absolute path, such as \"$PWD/{}\")",
                    name.trim_start_matches("./")
                )
            } else {
                String::new()
            };
            eprintln!("rawfs: cannot run {name}: {e}{hint}");
            (127, None)
        }
    };
    if keep && signalled.is_none() {
        // A Ctrl-C meant for the command is pending here too: it must not end the keep phase.
        drain_signals(&set);
        eprintln!(
            "rawfs: mount kept at {}; Ctrl-C or `rawfs umount {}` ends it",
            tm.path().display(),
            tm.path().display()
        );
        keep_serving(&set, &tm);
    }
    let store = tm.trace().cloned();
    let mountpoint = tm.path().to_path_buf();
    if let Err(e) = tm.unmount() {
        warn!("unmounting: {e}");
    }
    if let Some(store) = store {
        if let Err(e) = report.print(&mountpoint, &store) {
            eprintln!("rawfs: printing the trace: {e}");
        }
    }
    // Stopped by a signal, rawfs run ends as a process killed by it would be reported.
    let code = signalled.map_or(code, |sig| 128 + sig);
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Waits for the command, passing on the stop signals sent to rawfs run itself. Returns the
/// command's exit code (128+N if signal N killed it) and the stop signal rawfs run got, if any.
fn wait_forwarding(mut child: std::process::Child, set: &libc::sigset_t) -> (i32, Option<i32>) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut signalled = None;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                let code = match (s.code(), s.signal()) {
                    (Some(c), _) => c,
                    (None, Some(sig)) => 128 + sig,
                    _ => 1,
                };
                return (code, signalled);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("rawfs: waiting for the command: {e}");
                return (1, signalled);
            }
        }
        // SAFETY: siginfo_t is plain data; set and timeout are valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigtimedwait(set, &mut info, &timeout) };
        if sig > 0 {
            signalled = Some(sig);
            // A terminal's Ctrl-C reaches the whole foreground group, the command too: pass
            // on only what was sent to rawfs run alone (kill, a supervisor, a test runner).
            if info.si_code != libc::SI_KERNEL {
                // SAFETY: kill has no memory effects; the child is not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, sig) };
            }
        }
    }
}

/// Discards stop signals already pending.
fn drain_signals(set: &libc::sigset_t) {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set is initialised and zero is a valid timeout.
    while unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &zero) } > 0 {}
}

fn keep_serving(set: &libc::sigset_t, tm: &TempMount) {
    let entry = Entry::for_mountpoint(tm.path()).ok();
    if let Some(e) = &entry {
        let _ = e.write_pid(std::process::id());
    }
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while tm.is_alive() {
        // SAFETY: as in wait_for_stop.
        if unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) } > 0 {
            break;
        }
    }
    if let Some(e) = &entry {
        e.remove();
    }
}
