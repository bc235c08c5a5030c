//! The `rawfs` binary from the outside: mounting in the foreground and as a daemon, stopping
//! by signal and by `rawfs umount`, stale and busy mounts, `rawfs run`, and the messages of
//! every refused request.
//!
//! Each test has its own temporary directory holding its mount points and a private runtime
//! directory (RAWFS_RUNTIME_DIR), and a guard that, even when the test fails, kills what it
//! started, lazily unmounts what is still mounted, and removes the directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common;

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The source ("rawfs" for ours) of the mount at exactly `path` in this mountinfo text.
fn mount_source_in(info: &str, path: &Path) -> Option<String> {
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (unescape(fields.get(4)?) == path.as_os_str().as_bytes())
            .then(|| fields.get(sep + 2).map(|s| s.to_string()))
            .flatten()
    })
}

/// The source of the mount at `path`, if something is mounted there.
pub(crate) fn mount_source(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mount_source_in(&info, path)
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    mount_source(path).is_some()
}

/// True if `pid` is a running process; a zombie (exited, not yet reaped) counts as gone.
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

pub(crate) fn errno_of_stat(path: &Path) -> Option<i32> {
    fs::metadata(path).err().map(|e| common::code(&e))
}

/// Polls `cond` every 10 ms until it holds, failing after `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with captured output, killing it and failing after `limit`.
pub(crate) fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for command"),
        Err(_) => {
            // SAFETY: the child has not been reaped (its waiter is still blocked).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{shown} did not finish within {limit:?}");
        }
    }
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub(crate) fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// A failure with exit status `code` whose stderr contains every one of `needles`.
#[track_caller]
pub(crate) fn assert_fails_with(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stdout: {} stderr: {err}",
        stdout(out)
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

pub(crate) const QUICK: Duration = Duration::from_secs(30);

/// One test's directory, mount points and processes, cleaned up on drop.
pub(crate) struct Scene {
    pub(crate) base: PathBuf,
    /// The default mount point, `base/mnt` (an empty directory).
    pub(crate) mp: PathBuf,
    pub(crate) runtime: PathBuf,
    pub(crate) mountpoints: Vec<PathBuf>,
    pub(crate) children: Vec<Child>,
    // Last: removed after the drop above has unmounted everything.
    _dir: tempfile::TempDir,
}

impl Scene {
    pub(crate) fn new() -> Scene {
        let dir = tempfile::Builder::new()
            .prefix("rawfs-life-")
            .tempdir()
            .expect("temp dir");
        let base = dir.path().canonicalize().expect("canonical temp dir");
        let runtime = base.join("run");
        fs::create_dir(&runtime).expect("runtime dir");
        let mut s = Scene {
            mp: PathBuf::new(),
            base,
            runtime,
            mountpoints: Vec::new(),
            children: Vec::new(),
            _dir: dir,
        };
        s.mp = s.mountpoint("mnt");
        s
    }

    /// A new empty directory `base/name`, unmounted on drop if something is mounted there.
    pub(crate) fn mountpoint(&mut self, name: &str) -> PathBuf {
        let p = self.base.join(name);
        fs::create_dir(&p).expect("mount point");
        self.mountpoints.push(p.clone());
        p
    }

    /// `rawfs` with this scene's runtime directory.
    pub(crate) fn rawfs(&self) -> Command {
        let mut c = Command::new(common::rawfs_bin());
        c.env("RAWFS_RUNTIME_DIR", &self.runtime);
        c
    }

    /// Runs `rawfs ARGS...` to completion.
    pub(crate) fn run(&self, args: &[&OsStr]) -> Output {
        let mut c = self.rawfs();
        c.args(args);
        output_within(c, QUICK)
    }

    /// `rawfs mount --daemon MP`, asserting success; returns the daemon's pid.
    pub(crate) fn daemon(&self, mp: &Path, extra: &[&str]) -> u32 {
        let mut args: Vec<&OsStr> = vec!["mount".as_ref(), "--daemon".as_ref()];
        args.extend(extra.iter().map(|a| OsStr::new(*a)));
        args.push(mp.as_os_str());
        let out = self.run(&args);
        assert_success(&out, "rawfs mount --daemon");
        self.recorded_pid(mp)
            .unwrap_or_else(|| panic!("no pid file {}", self.pid_file(mp).display()))
    }

    /// Starts a long-running child (killed on drop); returns its index in `children`.
    pub(crate) fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd.spawn().expect("spawn");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits for child `i` to exit, failing after `limit`.
    pub(crate) fn wait_child(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(limit, "the child exits", || {
            status = self.children[i].try_wait().expect("try_wait");
            status.is_some()
        });
        status.unwrap()
    }

    /// The pid file the registry keeps for `mp`: the absolute path with `%` as `%25` and `/`
    /// as `%2F`, plus ".pid".
    pub(crate) fn pid_file(&self, mp: &Path) -> PathBuf {
        let escaped = mp
            .to_str()
            .expect("UTF-8 temp path")
            .replace('%', "%25")
            .replace('/', "%2F");
        self.runtime.join(format!("{escaped}.pid"))
    }

    pub(crate) fn recorded_pid(&self, mp: &Path) -> Option<u32> {
        fs::read_to_string(self.pid_file(mp))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for mp in &self.mountpoints {
            if is_mounted(mp) {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(mp)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // Daemons still recorded in the private runtime directory.
        for e in fs::read_dir(&self.runtime).into_iter().flatten().flatten() {
            if e.path().extension() != Some(OsStr::new("pid")) {
                continue;
            }
            if let Some(pid) = fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                // Only a daemon of this scene (its arguments name our directory), never a
                // process that happens to have reused a stale pid.
                let ours = cmdline(pid)
                    .iter()
                    .any(|a| Path::new(a).starts_with(&self.base));
                if alive(pid) && ours {
                    // SAFETY: kill has no memory effects.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}

pub(crate) fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// ---------------------------------------------------------------------------------------------
// Foreground mount and signals.

fn foreground_mount_ends_cleanly_on(signal: i32) {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let mut cmd = s.rawfs();
    cmd.arg("mount")
        .arg(&s.mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let i = s.spawn(cmd);
    let pid = s.children[i].id();
    let mp = s.mp.clone();
    // The mount shows in mountinfo a moment before the daemon records its pid.
    wait_until(QUICK, "the foreground mount answers", || {
        (is_mounted(&mp) && s.recorded_pid(&mp).is_some())
            || s.children[i].try_wait().unwrap().is_some()
    });
    assert!(alive(pid), "rawfs mount exited before mounting");
    assert_eq!(mount_source(&mp).as_deref(), Some("rawfs"));
    fs::write(mp.join("hello"), b"through the mount").expect("create a file in the mount");
    assert_eq!(fs::read(mp.join("hello")).unwrap(), b"through the mount");
    assert_eq!(s.recorded_pid(&mp), Some(pid), "pid file names the daemon");

    // SAFETY: kill has no memory effects; pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    let status = s.wait_child(i, QUICK);
    let mut err = String::new();
    let _ = s.children[i]
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after signal {signal}: {status}; {err}"
    );
    assert!(!is_mounted(&mp), "still mounted after signal {signal}");
    assert!(
        fs::read_dir(&mp).unwrap().next().is_none(),
        "the mount point is the empty directory again"
    );
    assert!(!s.pid_file(&mp).exists(), "pid file removed on exit");
}

#[test]
fn foreground_mount_unmounts_and_exits_0_on_sigterm() {
    foreground_mount_ends_cleanly_on(libc::SIGTERM);
}

#[test]
fn foreground_mount_unmounts_and_exits_0_on_sigint() {
    foreground_mount_ends_cleanly_on(libc::SIGINT);
}

// ---------------------------------------------------------------------------------------------
// Daemon mode and `rawfs umount`.

pub(crate) fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn daemon_returns_once_mounted_and_umount_waits_for_it_to_exit() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    // No waiting: the mount answers as soon as `rawfs mount --daemon` has returned.
    fs::write(s.mp.join("f"), b"data").expect("create a file right after mount --daemon");
    assert_eq!(fs::read(s.mp.join("f")).unwrap(), b"data");
    assert_eq!(mount_source(&s.mp).as_deref(), Some("rawfs"));
    assert!(alive(pid), "daemon {pid} is running");
    let args = cmdline(pid);
    assert!(args.iter().any(|a| a == "mount"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--cache"), "{args:?}");
    let log = s.pid_file(&s.mp).with_extension("log");
    assert!(log.exists(), "daemon log {} exists", log.display());

    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    assert!(!is_mounted(&s.mp), "still mounted after rawfs umount");
    assert!(
        !alive(pid),
        "daemon {pid} still running after rawfs umount returned"
    );
    assert!(!s.pid_file(&s.mp).exists(), "pid file removed");
    assert!(
        !s.mp.join("f").exists(),
        "the mount point is the plain directory again"
    );
}

/// The daemon exits as soon as its mount is gone, so `rawfs umount`, which waits for that
/// exit, returns promptly, and the trace file the daemon was asked to write is complete when
/// it does. The scene that used to take a second: the few requests before the unmount (one
/// lookup, then `rawfs umount`'s own look at the mount point) served by session threads that
/// then rest, while another, which never served a request, learns of the unmount.
#[test]
fn umount_returns_promptly_with_the_daemon_gone_and_its_trace_file_complete() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let trace = s.base.join("t.jsonl");
    let mut took = Vec::new();
    // A few rounds, judged by the fastest, so that a load spike on a shared machine does not
    // fail the test while a daemon that lingers (each round) still does.
    for round in 0..3 {
        let pid = s.daemon(&s.mp, &["--trace", trace.to_str().unwrap()]);
        let name = format!("round-{round}");
        assert!(!s.mp.join(&name).exists());
        let start = Instant::now();
        let out = s.run(&[os("umount"), s.mp.as_os_str()]);
        let returned = Instant::now();
        assert_success(&out, "rawfs umount");
        took.push(returned - start);
        while alive(pid) {
            assert!(
                returned.elapsed() < Duration::from_millis(500),
                "daemon {pid} still running 500 ms after rawfs umount returned"
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert!(!is_mounted(&s.mp));
        // Complete: every line whole, events numbered from 1 without a gap, the write there.
        let text = fs::read_to_string(&trace).unwrap();
        assert!(text.ends_with('\n'), "trace file ends mid-line: {text:?}");
        let events: Vec<serde_json::Value> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{text}");
        assert!(
            events
                .iter()
                .any(|e| e["op"] == "lookup" && e["path"] == format!("/{name}").as_str()),
            "no lookup of /{name} in the trace file: {text}"
        );
    }
    let fastest = took.iter().min().unwrap();
    assert!(
        *fastest < Duration::from_millis(500),
        "rawfs umount took {took:?}: the daemon lingers after its mount is gone"
    );
}

#[test]
fn daemon_passes_size_cache_and_threads_on() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &["--size", "64M", "--cache", "--threads", "2"]);
    let args = cmdline(pid);
    assert!(args.iter().any(|a| a == "--cache"), "{args:?}");
    let threads = args.iter().position(|a| a == "--threads");
    assert_eq!(threads.map(|i| args[i + 1].as_str()), Some("2"), "{args:?}");

    let c = common::cpath(&s.mp);
    // SAFETY: statfs is plain data; c is a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0, "statfs");
    assert_eq!(
        st.f_blocks as u64 * st.f_bsize as u64,
        64 << 20,
        "f_blocks {} * f_bsize {}",
        st.f_blocks,
        st.f_bsize
    );
    // The limit holds: 64 MiB fit, more does not.
    let big = vec![7u8; 1 << 20];
    let mut f = fs::File::create(s.mp.join("big")).unwrap();
    let mut written = 0usize;
    let err = loop {
        match std::io::Write::write(&mut f, &big) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(
            written <= 64 << 20,
            "wrote {written} bytes past a 64M limit"
        );
    };
    assert_eq!(common::code(&err), libc::ENOSPC, "{err}");
    drop(f);

    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    assert!(!is_mounted(&s.mp));
}

/// Nanoseconds on CPU of all of process `pid`'s threads (schedstat: exact, not in ticks).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).expect("daemon's threads") {
        let stat = fs::read_to_string(t.unwrap().path().join("schedstat")).unwrap_or_default();
        total += stat
            .split(' ')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn a_polling_reader_rests_once_requests_stop() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    // The longest poll there is; the reader yields while it polls (tested in src/fuse/reserve.rs).
    let pid = s.daemon(&s.mp, &["--poll-us", "100000"]);
    let args = cmdline(pid);
    let poll = args.iter().position(|a| a == "--poll-us");
    assert_eq!(
        poll.map(|i| args[i + 1].as_str()),
        Some("100000"),
        "{args:?}"
    );
    for i in 0..50 {
        fs::write(s.mp.join(format!("f{i}")), b"x").unwrap();
        fs::metadata(s.mp.join(format!("f{i}"))).unwrap();
    }
    // The window after the last request is over: the reader blocks until the next one.
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ns(pid);
    std::thread::sleep(Duration::from_millis(400));
    let idle = cpu_ns(pid) - before;
    assert!(
        idle < 20_000_000,
        "an idle mount used {idle} ns of CPU in 400 ms: the reader did not stop polling"
    );
    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
}

#[test]
fn killed_daemon_leaves_a_stale_mount_that_umount_clears() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_until(QUICK, "the killed daemon is gone", || !alive(pid));
    wait_until(QUICK, "the mount answers ENOTCONN", || {
        errno_of_stat(&s.mp) == Some(libc::ENOTCONN)
    });
    assert!(is_mounted(&s.mp), "a stale mount stays in the mount table");

    let hint = format!("rawfs umount {}", s.mp.display());
    for daemon in [false, true] {
        let mut args = vec![os("mount")];
        if daemon {
            args.push(os("--daemon"));
        }
        args.push(s.mp.as_os_str());
        let out = s.run(&args);
        assert_fails_with(&out, 1, &["stale", &hint]);
    }

    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount of a stale mount");
    assert!(!is_mounted(&s.mp), "stale mount still in mountinfo");
    assert!(
        fs::metadata(&s.mp).unwrap().is_dir(),
        "plain directory again"
    );

    // And the directory can be mounted again.
    let pid = s.daemon(&s.mp, &[]);
    fs::write(s.mp.join("again"), b"x").unwrap();
    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    assert!(!alive(pid));
}

#[test]
fn busy_mount_needs_lazy_and_the_daemon_exits_when_it_is_free() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    fs::write(s.mp.join("kept"), b"kept").unwrap();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60").current_dir(&s.mp);
    let i = s.spawn(sleeper);

    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_fails_with(&out, 1, &["busy", "--lazy"]);
    assert!(is_mounted(&s.mp), "a refused unmount leaves the mount");
    assert_eq!(
        fs::read(s.mp.join("kept")).unwrap(),
        b"kept",
        "still served"
    );

    let out = s.run(&[os("umount"), os("--lazy"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount --lazy of a busy mount");
    assert!(stderr(&out).contains("keeps serving"), "{}", stderr(&out));
    assert!(!is_mounted(&s.mp), "detached from the mount table");
    // The sleeper still has its working directory in the detached tree, served by the daemon.
    let cwd = fs::read_dir(format!("/proc/{}/cwd", s.children[i].id()))
        .expect("the busy process's cwd still answers")
        .map(|e| e.unwrap().file_name())
        .collect::<Vec<_>>();
    assert_eq!(cwd, vec![std::ffi::OsString::from("kept")]);

    s.children[i].kill().unwrap();
    s.wait_child(i, QUICK);
    wait_until(QUICK, "the daemon exits once the mount is free", || {
        !alive(pid)
    });
}

#[test]
fn mount_points_that_differ_after_a_dot_have_their_own_daemons() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let a = s.mountpoint("data.1");
    let b = s.mountpoint("data.2");
    let pa = s.daemon(&a, &[]);
    let pb = s.daemon(&b, &[]);
    assert_ne!(pa, pb, "each mount point records its own daemon");

    let out = s.run(&[os("umount"), a.as_os_str()]);
    assert_success(&out, "rawfs umount data.1");
    assert!(!alive(pa), "data.1's daemon exited");
    assert!(alive(pb), "data.2's daemon is untouched");
    assert!(is_mounted(&b));
    assert_eq!(s.recorded_pid(&b), Some(pb));

    let out = s.run(&[os("umount"), b.as_os_str()]);
    assert_success(&out, "rawfs umount data.2");
    assert!(!alive(pb));
    assert!(!is_mounted(&b));
}

/// `rawfs umount` must not wait for a daemon that has exited but that nobody reaps (a
/// zombie: the daemon's parent exits at once, and some containers' init never reaps).
#[test]
fn umount_does_not_wait_for_an_unreaped_daemon() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    // A subreaper that never reaps: orphaned daemons become its zombies.
    const PY: &str = r#"
import ctypes, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
rawfs, mp = sys.argv[1], sys.argv[2]
r = subprocess.run([rawfs, "mount", "--daemon", mp], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
start = time.monotonic()
r = subprocess.run([rawfs, "umount", mp], capture_output=True, text=True)
print(r.returncode, round(time.monotonic() - start, 2), r.stderr.strip(), sep="|")
"#;
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(PY)
        .arg(common::rawfs_bin())
        .arg(&s.mp)
        .env("RAWFS_RUNTIME_DIR", &s.runtime);
    let out = output_within(c, QUICK);
    assert_success(&out, "python subreaper");
    let report = stdout(&out);
    let fields: Vec<&str> = report.trim().splitn(3, '|').collect();
    assert_eq!(fields[0], "0", "rawfs umount: {report}");
    let secs: f64 = fields[1].parse().unwrap();
    assert!(secs < 5.0, "rawfs umount took {secs} s: {report}");
    assert!(!is_mounted(&s.mp));
}

// ---------------------------------------------------------------------------------------------
// Refused requests and their messages (no mount needed).

#[test]
fn mount_explains_a_missing_non_empty_or_non_directory_mount_point() {
    let s = Scene::new();
    let missing = s.base.join("missing");
    let full = s.base.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"").unwrap();
    let file = s.base.join("file");
    fs::write(&file, b"").unwrap();
    for daemon in [false, true] {
        for (mp, why) in [
            (&missing, "does not exist"),
            (&full, "not empty"),
            (&file, "not a directory"),
        ] {
            let mut args = vec![os("mount")];
            if daemon {
                args.push(os("--daemon"));
            }
            args.push(mp.as_os_str());
            let out = s.run(&args);
            assert_fails_with(&out, 1, &[why, mp.to_str().unwrap()]);
            assert!(!is_mounted(mp));
        }
    }
    assert!(!missing.exists(), "a missing mount point is not created");
}

#[test]
fn bad_size_and_zero_threads_are_rejected_before_mounting() {
    let s = Scene::new();
    let mp = s.mp.as_os_str();
    for args in [
        vec![os("mount"), os("--size"), os("12Q"), mp],
        vec![os("mount"), os("--daemon"), os("--size"), os("12Q"), mp],
        vec![os("run"), os("--size"), os("12Q"), os("--"), os("true")],
    ] {
        let out = s.run(&args);
        assert_fails_with(&out, 2, &["12Q", "unit", "K, M, G or T"]);
    }
    for args in [
        vec![os("mount"), os("--threads"), os("0"), mp],
        vec![os("mount"), os("--daemon"), os("--threads"), os("0"), mp],
        vec![os("run"), os("--threads"), os("0"), os("--"), os("true")],
    ] {
        let out = s.run(&args);
        assert_fails_with(&out, 2, &["--threads"]);
    }
    for bad in ["100001", "fast", "1.5"] {
        let out = s.run(&[os("mount"), os("--poll-us"), os(bad), mp]);
        assert_fails_with(&out, 2, &["--poll-us", bad]);
    }
    assert!(!is_mounted(&s.mp));
}

#[test]
fn umount_refuses_what_is_not_a_rawfs_mount() {
    let s = Scene::new();
    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_fails_with(&out, 1, &["not a rawfs mount", s.mp.to_str().unwrap()]);
    let missing = s.base.join("missing");
    let out = s.run(&[os("umount"), missing.as_os_str()]);
    assert_fails_with(&out, 1, &["not a rawfs mount"]);

    // Another file system's mount is left alone (needs the right to mount a tmpfs).
    let c = common::cpath(&s.mp);
    // SAFETY: all pointers are valid NUL-terminated strings.
    let mounted = unsafe {
        libc::mount(
            c"rawfs-test-tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    } == 0;
    if mounted {
        let out = s.run(&[os("umount"), s.mp.as_os_str()]);
        assert_fails_with(&out, 1, &["not a rawfs mount"]);
        assert_eq!(mount_source(&s.mp).as_deref(), Some("rawfs-test-tmpfs"));
        // SAFETY: c is a valid path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let s = Scene::new();
    for args in [vec![os("run")], vec![os("run"), os("--")]] {
        let out = s.run(&args);
        assert_fails_with(&out, 2, &["Usage", "CMD"]);
    }
}

// ---------------------------------------------------------------------------------------------
// `rawfs run`.

#[test]
fn run_gives_the_command_a_fresh_mount_as_its_working_directory() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let out = s.run(&[
        os("run"),
        os("--"),
        os("sh"),
        os("-c"),
        os(r#"echo hi > f && cat f && test "$RAWFS_MOUNT" = "$PWD""#),
    ]);
    assert_success(&out, "rawfs run");
    assert_eq!(stdout(&out), "hi\n");

    // The working directory is a rawfs mount, and nothing of it is left afterwards.
    let here = s.base.join("where");
    let info = s.base.join("mountinfo");
    let script = format!(
        "pwd > '{}' && cat /proc/self/mountinfo > '{}' && test -z \"$(ls -A)\"",
        here.display(),
        info.display()
    );
    let out = s.run(&[os("run"), os("--"), os("sh"), os("-c"), os(&script)]);
    assert_success(&out, "rawfs run (where)");
    let mp = PathBuf::from(fs::read_to_string(&here).unwrap().trim_end());
    assert!(mp.is_absolute(), "{}", mp.display());
    let info = fs::read_to_string(&info).unwrap();
    assert_eq!(
        mount_source_in(&info, &mp).as_deref(),
        Some("rawfs"),
        "the command ran in a rawfs mount"
    );
    assert!(!is_mounted(&mp), "{} still mounted after run", mp.display());
    assert!(!mp.exists(), "{} left behind after run", mp.display());
}

#[test]
fn run_exits_with_the_commands_status() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let sh = |script: &str| s.run(&[os("run"), os("--"), os("sh"), os("-c"), os(script)]);
    assert_eq!(sh("exit 7").status.code(), Some(7));
    assert_eq!(sh("exit 0").status.code(), Some(0));
    for (sig, name) in [
        (libc::SIGKILL, "KILL"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
    ] {
        let out = sh(&format!("kill -{name} $$; echo survived SIG{name}"));
        assert_eq!(
            out.status.code(),
            Some(128 + sig),
            "a command killed by SIG{name}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let out = s.run(&[os("run"), os("--"), os("/nonexistent")]);
    assert_fails_with(&out, 127, &["/nonexistent"]);
}

#[test]
fn run_passes_the_size_limit_on() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let out = s.run(&[
        os("run"),
        os("--size"),
        os("1M"),
        os("--"),
        os("sh"),
        os("-c"),
        os("head -c 1048576 /dev/zero > fits && ! head -c 4096 /dev/zero > more"),
    ]);
    assert_success(&out, "rawfs run --size 1M");
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
}

#[test]
fn dropping_a_guard_on_a_busy_mount_returns_within_seconds_and_leaves_no_mount() {
    let m = crate::mount_or_skip!();
    let mountpoint = m.path().to_path_buf();
    // A process keeps its working directory and an open file in the mount.
    std::fs::write(m.join("held"), b"x").expect("write");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 3<held; exec sleep 30")
        .current_dir(&mountpoint)
        .spawn()
        .expect("spawn sh");
    let fd3 = PathBuf::from(format!("/proc/{}/fd/3", child.id()));
    wait_until(Duration::from_secs(5), "the child to open the file", || {
        fs::read_link(&fd3).is_ok_and(|p| p.ends_with("held"))
    });
    let start = Instant::now();
    drop(m);
    let took = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        took < Duration::from_secs(10),
        "dropping the guard took {took:?}"
    );
    assert!(
        !is_mounted(&mountpoint),
        "{} is still mounted",
        mountpoint.display()
    );
}
