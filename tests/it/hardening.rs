//! rawfs under misuse and abuse, through the real `rawfs` binary: a second mount on a mount
//! point, a trace file on a slow disk, dropped events, contradictory fault options, signals,
//! closed pipes, a stopped daemon, unsafe runtime directories, many idle connections, odd
//! sizes. Each test names the behaviour a careful tool has.

use std::ffi::OsStr;
use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::lifecycle::{
    QUICK, Scene, alive, assert_fails_with, assert_success, is_mounted, os, stderr, stdout,
    wait_until,
};

/// The mount entries at exactly `path` in /proc/self/mountinfo.
fn mounts_at(path: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let want = path.to_str().expect("UTF-8 path");
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Item 1: a mount point is mounted once.

#[test]
fn a_second_mount_on_a_mount_point_is_refused_and_one_umount_ends_everything() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    fs::write(s.mp.join("kept"), b"first").unwrap();
    let slash = format!("{}/", s.mp.display());
    let link = s.base.join("link");
    std::os::unix::fs::symlink(&s.mp, &link).unwrap();
    for spelling in [s.mp.as_os_str(), os(&slash), link.as_os_str()] {
        for daemon in [true, false] {
            let mut args = vec![os("mount")];
            if daemon {
                args.push(os("--daemon"));
            }
            args.push(spelling);
            let out = s.run(&args);
            assert_fails_with(&out, 1, &["already a rawfs mount", "rawfs umount"]);
        }
    }
    assert_eq!(mounts_at(&s.mp), 1, "one mount on {}", s.mp.display());
    assert_eq!(fs::read(s.mp.join("kept")).unwrap(), b"first");
    assert_eq!(
        s.recorded_pid(&s.mp),
        Some(pid),
        "the pid file names the first daemon"
    );

    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    assert_eq!(mounts_at(&s.mp), 0);
    assert!(!alive(pid), "daemon {pid} outlived its mount");
}

#[test]
fn mounts_started_at_once_on_one_directory_leave_exactly_one() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            s.rawfs()
                .args([os("mount"), os("--daemon"), s.mp.as_os_str()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rawfs mount")
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "one mount succeeds");
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(stderr(o).contains("already a rawfs mount"), "{}", stderr(o));
    }
    assert_eq!(mounts_at(&s.mp), 1);
    let pid = s.recorded_pid(&s.mp).expect("pid file");
    assert_success(&s.run(&[os("umount"), s.mp.as_os_str()]), "rawfs umount");
    assert!(!alive(pid));
}

#[test]
fn a_daemon_whose_socket_file_was_removed_still_exits_at_umount() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    let sock = s.pid_file(&s.mp).with_extension("sock");
    fs::remove_file(&sock).expect("remove the control socket file");
    let start = Instant::now();
    let out = s.run(&[os("umount"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "umount took {:?}",
        start.elapsed()
    );
    assert!(!alive(pid), "daemon {pid} outlived its mount");
}

// ---------------------------------------------------------------------------------------------
// Items 2 and 3: the trace file is complete when umount returns, and marks what it misses.

/// A rawfs mount whose writes to `/t.jsonl` each wait `delay_ms`: a slow disk for a trace file.
fn slow_disk(s: &mut Scene, delay_ms: u64) -> std::path::PathBuf {
    let disk = s.mountpoint("disk");
    s.daemon(&disk, &[]);
    let out = s.run(&[
        os("fault"),
        os("add"),
        disk.as_os_str(),
        os("--op"),
        os("write"),
        os("--path"),
        os("/t.jsonl"),
        os("--delay"),
        os(&delay_ms.to_string()),
    ]);
    assert_success(&out, "rawfs fault add --delay");
    disk.join("t.jsonl")
}

/// Every line of a JSON Lines file, parsed; fails on a torn or malformed line.
fn parse_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).expect("read trace");
    assert!(text.ends_with('\n'), "trace ends in a half line: ...{}", {
        let t = &text[text.len().saturating_sub(80)..];
        t.to_string()
    });
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect()
}

#[test]
fn the_trace_file_is_complete_when_umount_returns_even_on_a_slow_disk() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let trace = slow_disk(&mut s, 20);
    let mp = s.mp.clone();
    s.daemon(&mp, &["--trace", trace.to_str().unwrap()]);
    // 3,000 single-byte writes: about 700 kB of trace, written 8 kB per 20 ms.
    common::sh(&mp, "dd if=/dev/zero of=f bs=1 count=3000 2>/dev/null");
    // A follower holds the daemon's recorder, as a user watching the trace would.
    let mut follow = s.rawfs();
    follow
        .args([os("trace"), os("--follow"), mp.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    s.spawn(follow);
    std::thread::sleep(Duration::from_millis(300));

    let out = s.run(&[os("umount"), mp.as_os_str()]);
    assert_success(&out, "rawfs umount");
    let size = fs::metadata(&trace).unwrap().len();
    let lines = parse_lines(&trace);
    let writes = lines.iter().filter(|l| l["op"] == "write").count();
    assert_eq!(writes, 3000, "every write is in the trace file");
    let last = lines
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .unwrap();
    assert_eq!(
        lines.len() as u64,
        last + 1,
        "header and events #1 to #{last}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fs::metadata(&trace).unwrap().len(),
        size,
        "the file grew after umount"
    );
}

#[test]
fn dropped_events_leave_gap_records_that_every_reader_of_the_file_reports() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let trace = slow_disk(&mut s, 20);
    let mp = s.mp.clone();
    s.daemon(
        &mp,
        &[
            "--trace",
            trace.to_str().unwrap(),
            "--trace-overflow",
            "drop",
            "--threads",
            "1",
        ],
    );
    common::sh(&mp, "dd if=/dev/zero of=f bs=1 count=20000 2>/dev/null");
    assert_success(&s.run(&[os("umount"), mp.as_os_str()]), "rawfs umount");

    let lines = parse_lines(&trace);
    let gaps: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("gap")).collect();
    let missing: u64 = gaps.iter().map(|g| g["dropped"].as_u64().unwrap()).sum();
    assert!(
        missing > 0,
        "the writer fell behind: some events were dropped"
    );
    let events: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    let last = events
        .iter()
        .copied()
        .chain(gaps.iter().map(|g| g["last_seq"].as_u64().unwrap()))
        .max()
        .unwrap();
    assert_eq!(
        events.len() as u64 + missing,
        last,
        "every request is in the file or counted in a gap"
    );
    for g in &gaps {
        let (a, b) = (
            g["first_seq"].as_u64().unwrap(),
            g["last_seq"].as_u64().unwrap(),
        );
        assert!(
            a <= b && !events.contains(&a) && !events.contains(&b),
            "{g}"
        );
    }

    let needle = format!("missing {missing} events");
    for cmd in ["trace", "check"] {
        let out = s.run(&[os(cmd), os("--file"), trace.as_os_str()]);
        assert!(
            stderr(&out).contains(&needle),
            "rawfs {cmd} --file says nothing of the gaps: {}",
            stderr(&out)
        );
    }
    // The library reader sees them too.
    let read =
        rawfs::trace::format::read_jsonl_with_gaps(BufReader::new(fs::File::open(&trace).unwrap()))
            .unwrap();
    assert_eq!(read.missing(), missing);
}

// ---------------------------------------------------------------------------------------------
// Item 4: fault options that would be ignored are refused.

#[test]
fn fault_options_that_would_be_ignored_or_contradict_are_refused() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    s.daemon(&s.mp, &[]);
    let mp = s.mp.to_str().unwrap();
    let rule = r#"{"action": {"errno": "EACCES"}}"#;
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--json", rule, "--op", "read", "--path", "/f"],
            &["--json", "--op, --path", "ignored"],
        ),
        (&["--json", rule, "--times", "2"], &["--json", "--times"]),
        (
            &["--errno", "EIO", "--delay-after"],
            &["--delay-after", "--delay", "--errno"],
        ),
        (
            &["--errno", "EIO", "--corrupt-at", "3"],
            &["--corrupt-at", "--corrupt"],
        ),
        (
            &["--short", "1", "--corrupt-len", "3"],
            &["--corrupt-len", "--short"],
        ),
        (
            &["--hold", "--content", "x"],
            &["--content", "--competitor", "--hold"],
        ),
        (&["--errno", "EIO", "--delay", "5"], &["--errno", "--delay"]),
        (
            &[
                "--json",
                r#"{"action": {"errno": "EIO", "delay": {"ms": 5}}}"#,
            ],
            &["\"action\" names 2", "delay, errno"],
        ),
        (
            &[
                "--json",
                r#"{"when": {"nth": 1, "times": 2}, "action": {"errno": "EIO"}}"#,
            ],
            &["\"when\" names 2"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["fault", "add", mp];
        args.extend_from_slice(extra);
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = s.run(&args);
        assert!(!out.status.success(), "{extra:?} was accepted");
        for n in *needles {
            assert!(
                stderr(&out).contains(n),
                "{extra:?}: {:?} not in {}",
                n,
                stderr(&out)
            );
        }
    }
    let out = s.run(&[os("fault"), os("list"), os("--json"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs fault list");
    assert_eq!(stdout(&out), "", "no rule was added");
    // The mount still answers everyone.
    let ls = Command::new("ls").arg(&s.mp).output().unwrap();
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    // The same options where they belong are accepted.
    let out = s.run(&[
        os("fault"),
        os("add"),
        s.mp.as_os_str(),
        os("--corrupt"),
        os("flip"),
        os("--corrupt-at"),
        os("2"),
        os("--op"),
        os("read"),
    ]);
    assert_success(&out, "--corrupt with --corrupt-at");
    wait_until(QUICK, "the mount is still there", || is_mounted(&s.mp));
}

// ---------------------------------------------------------------------------------------------
// Item 5: the runtime directory is private, and nothing in it is followed.

#[test]
fn a_runtime_directory_others_can_write_or_own_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scene::new();
    let shared = s.base.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let run = |rt: &Path, args: &[&OsStr]| {
        let mut c = Command::new(common::rawfs_bin());
        c.args(args).env("RAWFS_RUNTIME_DIR", rt);
        crate::lifecycle::output_within(c, QUICK)
    };
    for args in [
        vec![os("mount"), os("--daemon"), s.mp.as_os_str()],
        vec![os("status"), s.mp.as_os_str()],
    ] {
        let out = run(&shared, &args);
        assert_fails_with(&out, 1, &["writable by others", shared.to_str().unwrap()]);
    }
    assert!(!is_mounted(&s.mp));
    assert_eq!(
        fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing created there"
    );

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = s.base.join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let out = run(&theirs, &[os("mount"), os("--daemon"), s.mp.as_os_str()]);
        assert_fails_with(&out, 1, &["owned by uid 65534"]);
        assert!(!is_mounted(&s.mp));
    }
}

#[test]
fn a_symlink_planted_in_the_runtime_directory_is_not_followed() {
    let s = Scene::new();
    let victim = s.base.join("victim");
    let log = s.pid_file(&s.mp).with_extension("log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let out = s.run(&[os("mount"), os("--daemon"), s.mp.as_os_str()]);
    assert_fails_with(&out, 1, &["symlink", log.to_str().unwrap()]);
    assert!(!victim.exists(), "rawfs wrote through a planted symlink");
    assert!(!is_mounted(&s.mp));
}

// ---------------------------------------------------------------------------------------------
// Item 6: connections are bounded and their memory goes back.

fn vm_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

#[test]
fn a_flood_of_control_connections_is_bounded_and_leaves_no_memory_behind() {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream;
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    let sock = s.pid_file(&s.mp).with_extension("sock");
    // The daemon starts some of its threads after it says it is ready: count them once they
    // are all there (a request served and a status answered, and no change for 100 ms).
    fs::metadata(&s.mp).expect("stat the mount");
    assert_success(&s.run(&[os("status"), s.mp.as_os_str()]), "rawfs status");
    let mut threads_before = threads(pid);
    let mut stable = 0;
    wait_until(QUICK, "the daemon's threads settle", || {
        std::thread::sleep(Duration::from_millis(10));
        let now = threads(pid);
        stable = if now == threads_before { stable + 1 } else { 0 };
        threads_before = now;
        stable >= 10
    });
    let rss_before = vm_rss_kib(pid);
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let mut c = UnixStream::connect(&sock).expect("connect");
        // A refused connection may be closed before the request is written: its answer
        // is read below all the same.
        let _ = c.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n");
        conns.push(c);
    }
    let mut refused = 0;
    for c in &conns {
        let mut line = String::new();
        // A refused connection's request may be left unread: then the close can reset it.
        let read = std::io::BufReader::new(c).read_line(&mut line);
        if line.contains("too many connections") || read.is_err() {
            refused += 1;
        } else {
            assert!(line.contains("\"ok\":true"), "{line}");
        }
    }
    let busy = threads(pid);
    assert!(refused >= 1000 - 64, "only {refused} of 1000 refused");
    assert!(
        busy <= threads_before + 64,
        "{busy} threads with 1000 connections (before: {threads_before})"
    );
    drop(conns);
    wait_until(QUICK, "the connection threads end", || {
        threads(pid) <= threads_before
    });
    let out = s.run(&[os("status"), s.mp.as_os_str()]);
    assert_success(&out, "rawfs status after the flood");
    let rss_after = vm_rss_kib(pid);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS {rss_before} KiB before the flood, {rss_after} KiB after"
    );
}

// ---------------------------------------------------------------------------------------------
// Items 7, 8, 9: signals, closed pipes, a stopped daemon.

#[test]
fn run_passes_stop_signals_on_unmounts_and_exits_128_plus_n() {
    use std::os::unix::process::ExitStatusExt;
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
    ] {
        let mp_file = s.base.join(format!("mp-{name}"));
        let got = s.base.join(format!("got-{name}"));
        let script = format!(
            "trap 'echo {name} > {got}; exit 0' {name}; echo \"$RAWFS_MOUNT\" > {mp}; \
             while :; do sleep 0.05; done",
            got = got.display(),
            mp = mp_file.display()
        );
        let mut cmd = s.rawfs();
        cmd.args(["run", "--trace-format", "none", "--", "sh", "-c", &script]);
        let i = s.spawn(cmd);
        wait_until(QUICK, "the command runs", || {
            fs::read_to_string(&mp_file).is_ok_and(|t| t.ends_with('\n'))
        });
        let mp = fs::read_to_string(&mp_file).unwrap().trim().to_string();
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(s.children[i].id() as libc::pid_t, sig) };
        let status = s.wait_child(i, QUICK);
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "rawfs run got SIG{name}: {status:?}"
        );
        assert_eq!(status.signal(), None);
        assert_eq!(
            fs::read_to_string(&got).unwrap(),
            format!("{name}\n"),
            "CMD got it"
        );
        assert!(!Path::new(&mp).exists(), "mount point {mp} left behind");
    }
}

#[test]
fn umount_clears_and_removes_the_mount_point_of_a_killed_rawfs_run() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    let info = s.base.join("info");
    let script = format!(
        "echo \"$RAWFS_MOUNT $$\" > {}; exec sleep 30",
        info.display()
    );
    let mut cmd = s.rawfs();
    cmd.args(["run", "--trace-format", "none", "--", "sh", "-c", &script]);
    let i = s.spawn(cmd);
    wait_until(QUICK, "the command runs", || {
        fs::read_to_string(&info).is_ok_and(|t| t.ends_with('\n'))
    });
    let text = fs::read_to_string(&info).unwrap();
    let (mp, sleep) = text.trim().split_once(' ').unwrap();
    let mp = std::path::PathBuf::from(mp);
    s.mountpoints.push(mp.clone());
    s.children[i].kill().unwrap();
    s.wait_child(i, QUICK);
    // SAFETY: kill has no memory effects; `sleep` is the command, a child of the killed run.
    unsafe { libc::kill(sleep.parse().unwrap(), libc::SIGKILL) };
    wait_until(QUICK, "the mount is stale", || {
        fs::metadata(&mp).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    });
    let out = s.run(&[os("umount"), mp.as_os_str()]);
    assert_success(&out, "rawfs umount of a killed run's mount");
    assert!(!is_mounted(&mp));
    assert!(!mp.exists(), "{} left behind", mp.display());
    assert!(
        stderr(&out).contains("removed the temporary mount point"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_says_a_relative_command_path_is_looked_up_in_the_mount() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let out = s.run(&[
        os("run"),
        os("--trace-format"),
        os("none"),
        os("--"),
        os("./test.sh"),
    ]);
    assert_fails_with(&out, 127, &["./test.sh", "absolute path", "$PWD/test.sh"]);
}

/// `rawfs ARGS` with its standard output a pipe whose reader has already gone.
fn into_closed_pipe(s: &Scene, args: &[&OsStr]) -> Command {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut c = s.rawfs();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped());
    c
}

#[test]
fn commands_writing_to_a_closed_pipe_end_quietly() {
    use std::os::unix::process::ExitStatusExt;
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    s.daemon(&s.mp, &[]);
    fs::write(s.mp.join("f"), b"x").unwrap();
    let mp = s.mp.as_os_str();
    assert_success(
        &s.run(&[
            os("fault"),
            os("add"),
            mp,
            os("--op"),
            os("mknod"),
            os("--errno"),
            os("EIO"),
        ]),
        "fault add",
    );
    for args in [
        vec![os("status"), mp],
        vec![os("status"), os("--json"), mp],
        vec![os("fault"), os("list"), mp],
        vec![os("trace"), mp],
        vec![os("check"), os("--json"), mp],
    ] {
        let mut child = into_closed_pipe(&s, &args).spawn().expect("spawn rawfs");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(err, "", "rawfs {args:?} into a closed pipe");
        // Killed by SIGPIPE as coreutils are; or, if a process forked by another test held
        // the reading end for a moment, its ordinary exit (check: 1 for its warnings).
        assert!(
            status.signal() == Some(libc::SIGPIPE) || matches!(status.code(), Some(0 | 1)),
            "rawfs {args:?}: {status:?}"
        );
    }
}

#[test]
fn trace_follow_on_an_idle_mount_notices_a_closed_pipe() {
    if !common::fuse_or_skip() {
        return;
    }
    let mut s = Scene::new();
    s.daemon(&s.mp, &[]);
    let args = [
        os("trace"),
        os("--follow"),
        os("--op"),
        os("mknod"),
        s.mp.as_os_str(),
    ];
    let cmd = into_closed_pipe(&s, &args);
    let i = s.spawn(cmd);
    let start = Instant::now();
    s.wait_child(i, Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn commands_say_a_stopped_daemon_does_not_answer() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &[]);
    /// Continues the daemon even if an assertion fails, so that the scene can clean up.
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
        }
    }
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let cont = Cont(pid);
    let mp = s.mp.as_os_str();
    for args in [
        vec![os("status"), mp],
        vec![os("fault"), os("list"), mp],
        vec![os("trace"), mp],
    ] {
        let mut c = s.rawfs();
        c.args(&args).env("RAWFS_TIMEOUT", "0.5");
        let start = Instant::now();
        let out = crate::lifecycle::output_within(c, QUICK);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_fails_with(
            &out,
            1,
            &["does not answer", &format!("pid {pid}"), "stopped"],
        );
    }
    let mut c = s.rawfs();
    c.args([os("status"), mp]).env("RAWFS_TIMEOUT", "soon");
    let out = crate::lifecycle::output_within(c, QUICK);
    assert_fails_with(&out, 1, &["RAWFS_TIMEOUT", "soon"]);
    drop(cont);
    assert_success(&s.run(&[os("status"), mp]), "status once continued");
}

// ---------------------------------------------------------------------------------------------
// Item 14: the test scripts wait for the package manager's lock and keep cargo's PATH advice
// out of their output. The package manager and cargo are stand-ins on PATH: the scripts' own
// logic runs, without a network or a real install.

/// A directory of executable stand-ins, put first on PATH.
fn shims(dir: &Path, scripts: &[(&str, &str)]) -> String {
    use std::os::unix::fs::PermissionsExt;
    for (name, body) in scripts {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn install_test_deps_waits_while_another_process_holds_the_package_lock() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let path = shims(
        dir.path(),
        &[
            ("id", "echo 0"),
            ("dpkg-query", "exit 1"),
            (
                "apt-get",
                &format!(
                    "echo \"$*\" >> {calls}\n\
                     n=$(wc -l < {calls})\n\
                     if [ \"$n\" -le 2 ]; then\n\
                       echo 'E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)' >&2\n\
                       exit 100\n\
                     fi",
                    calls = calls.display()
                ),
            ),
        ],
    );
    let out = Command::new("bash")
        .arg(repo().join("scripts/install-test-deps.sh"))
        .env("PATH", path)
        .env("LOCK_RETRY_SECONDS", "0.1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("holds the package manager's lock"), "{err}");
    let calls = fs::read_to_string(&calls).unwrap();
    assert!(calls.lines().count() >= 3, "{calls}");
    assert!(calls.contains("DPkg::Lock::Timeout"), "{calls}");

    // A failure that is not about the lock is not retried.
    let dir = tempfile::tempdir().unwrap();
    let path = shims(
        dir.path(),
        &[
            ("id", "echo 0"),
            ("dpkg-query", "exit 1"),
            (
                "apt-get",
                "echo 'E: Unable to locate package fuse3' >&2; exit 100",
            ),
        ],
    );
    let out = Command::new("bash")
        .arg(repo().join("scripts/install-test-deps.sh"))
        .env("PATH", path)
        .env("LOCK_RETRY_SECONDS", "0.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("waiting"), "{}", stderr(&out));
}

#[test]
fn building_a_test_tool_keeps_cargos_path_advice_out_of_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = shims(
        dir.path(),
        &[(
            "cargo",
            "echo '   Installed package `fsx v1.0.0` (executable `fsx`)' >&2\n\
             echo 'warning: be sure to add `/x/target/tools/bin` to your PATH to be able to run the installed binaries' >&2",
        )],
    );
    let script = format!(
        "source {}; TOOLS_ROOT={}; build_tool fsx 1.0.0",
        repo().join("scripts/test-lib.sh").display(),
        dir.path().join("tools").display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Installed package"), "{err}");
    assert!(!err.contains("to your PATH"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = shims(
        dir.path(),
        &[("cargo", "echo 'error: no such crate' >&2; exit 101")],
    );
    let script = format!(
        "set -euo pipefail; source {}; TOOLS_ROOT={}; build_tool fsx 1.0.0",
        repo().join("scripts/test-lib.sh").display(),
        dir.path().join("tools").display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cargo install fsx 1.0.0 failed"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: sizes round up to whole pages, as tmpfs does, and too large a size is refused.

fn statfs_bytes(p: &Path) -> u64 {
    let c = common::cpath(p);
    // SAFETY: statfs is plain data; c is a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0, "statfs");
    st.f_blocks * st.f_bsize as u64
}

#[test]
fn a_size_below_a_page_holds_one_page_and_one_above_16_eib_is_refused() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    for size in ["1k", "1023", "4096", "4097"] {
        s.daemon(&s.mp, &["--size", size]);
        let want = rawfs::units::parse_size(size).unwrap().div_ceil(4096) * 4096;
        assert_eq!(statfs_bytes(&s.mp), want, "--size {size}");
        fs::write(s.mp.join("small"), b"fits in a page").expect("write under --size");
        let err = fs::write(s.mp.join("big"), vec![1u8; want as usize + 1]).unwrap_err();
        assert_eq!(common::code(&err), libc::ENOSPC, "--size {size}: {err}");
        assert_success(&s.run(&[os("umount"), s.mp.as_os_str()]), "rawfs umount");
    }
    for size in ["18446744073709551616", "16777216T"] {
        let out = s.run(&[
            os("mount"),
            os("--daemon"),
            os("--size"),
            os(size),
            s.mp.as_os_str(),
        ]);
        assert_fails_with(&out, 2, &[size, "too large"]);
    }
    assert!(!is_mounted(&s.mp));
}

// ---------------------------------------------------------------------------------------------
// Item 15: smaller things a user meets.

#[test]
fn the_live_trace_header_is_the_daemons_and_status_shows_rules_and_holds() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let trace = s.base.join("t.jsonl");
    s.daemon(&s.mp, &["--trace", trace.to_str().unwrap()]);
    let mp = s.mp.as_os_str();
    let header = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_str(stdout(out).lines().next().unwrap()).unwrap()
    };
    let first = s.run(&[os("trace"), os("--format"), os("jsonl"), mp]);
    std::thread::sleep(Duration::from_millis(20));
    let second = s.run(&[os("trace"), os("--format"), os("jsonl"), mp]);
    let (a, b) = (header(&first), header(&second));
    assert_eq!(a, b, "the header changes from call to call");
    // The daemon's own header, as in its trace file.
    let file: serde_json::Value =
        serde_json::from_str(fs::read_to_string(&trace).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(a["started_unix_ns"], file["started_unix_ns"]);
    assert_eq!(a["rawfs_version"], file["rawfs_version"]);

    assert_success(
        &s.run(&[
            os("fault"),
            os("add"),
            mp,
            os("--op"),
            os("mknod"),
            os("--errno"),
            os("EIO"),
        ]),
        "fault add",
    );
    let out = s.run(&[os("status"), mp]);
    assert_success(&out, "rawfs status");
    let text = stdout(&out);
    assert!(text.contains("rules:      1"), "{text}");
    assert!(text.contains("rule 1: matched 0, fired 0"), "{text}");
    assert!(text.contains("\"errno\":\"EIO\""), "{text}");
    assert!(text.contains("held:       0 requests"), "{text}");
    let out = s.run(&[os("fault"), os("clear"), mp]);
    assert_eq!(stderr(&out), "removed 1 rule\n");
}

// ---------------------------------------------------------------------------------------------
// Item 12: one scan of a directory lists each name at most once, while names come and go.

/// Lists `dir` with readdir until `stop`, returning (scans, scans that listed a name twice,
/// an example).
fn scan_for_duplicates(
    dir: &Path,
    stop: &std::sync::atomic::AtomicBool,
) -> (u64, u64, Option<String>) {
    use std::collections::HashSet;
    let (mut scans, mut bad, mut example) = (0, 0, None);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut seen = HashSet::new();
        let mut twice = None;
        for e in fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name();
            if !seen.insert(name.clone()) {
                twice = Some(name);
            }
        }
        scans += 1;
        if let Some(name) = twice {
            bad += 1;
            example.get_or_insert(format!("{name:?}"));
        }
    }
    (scans, bad, example)
}

#[test]
fn one_readdir_scan_lists_each_name_at_most_once_under_create_rename_unlink() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(m) = common::mount() else {
        return;
    };
    let dir = m.join("d");
    fs::create_dir(&dir).unwrap();
    // Enough names that a scan takes several readdir requests, so that it is resumed from
    // an offset while the names change.
    for i in 0..400 {
        fs::write(dir.join(format!("stable-{i:03}")), b"").unwrap();
    }
    let stop = AtomicBool::new(false);
    let (scans, bad, example) = std::thread::scope(|s| {
        for t in 0..2 {
            let (dir, stop) = (&dir, &stop);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = (
                        dir.join(format!("c{t}-{}", i % 8)),
                        dir.join(format!("r{t}-{}", i % 8)),
                    );
                    let _ = fs::write(&a, b"");
                    let _ = fs::rename(&a, &b);
                    // Renamed over a name that may have been listed already.
                    let _ = fs::write(&a, b"");
                    let _ = fs::rename(&b, &a);
                    let _ = fs::remove_file(&a);
                    i += 1;
                }
            });
        }
        let lister = s.spawn(|| scan_for_duplicates(&dir, &stop));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        lister.join().unwrap()
    });
    assert!(scans > 20, "only {scans} scans");
    assert_eq!(
        bad, 0,
        "{bad} of {scans} scans listed a name twice (e.g. {example:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 10: file data freed by unlink goes back to the system.

#[test]
fn memory_of_deleted_files_goes_back_to_the_system() {
    if !common::fuse_or_skip() {
        return;
    }
    let s = Scene::new();
    let pid = s.daemon(&s.mp, &["--trace-capacity", "0"]);
    let base = vm_rss_kib(pid);
    common::sh(
        &s.mp,
        "for i in 1 2 3 4; do dd if=/dev/zero of=f$i bs=1M count=64 status=none; done",
    );
    let full = vm_rss_kib(pid);
    assert!(
        full > base + 200 * 1024,
        "256 MiB written: RSS {base} -> {full} KiB"
    );
    common::sh(&s.mp, "rm f1 f2 f3 f4");
    // The daemon looks every half second; give it a few.
    let start = Instant::now();
    // Most of it, not all: freed pages interleaved with live allocations stay mapped.
    let bound = base + 64 * 1024;
    while vm_rss_kib(pid) > bound && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = vm_rss_kib(pid);
    assert!(
        after <= bound,
        "RSS {base} KiB at start, {full} KiB with 256 MiB of files, {after} KiB after deleting them"
    );
}

/// renameat2(RENAME_WHITEOUT) in `dir`: a -> b, and with RENAME_NOREPLACE onto an existing
/// name. Returns what a program sees: each call's errno, and the old name's type, mode and
/// device number afterwards.
fn whiteout_steps(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fs::write(dir.join("a"), b"data").expect("write a");
    fs::write(dir.join("c"), b"c").expect("write c");
    fs::write(dir.join("d"), b"d").expect("write d");
    let rename = |from: &str, to: &str, flags: libc::c_uint| -> i32 {
        let (f, t) = (common::cpath(&dir.join(from)), common::cpath(&dir.join(to)));
        // SAFETY: valid C strings; renameat2 has no other preconditions.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        };
        if r == 0 { 0 } else { common::errno() }
    };
    let mut out = vec![format!(
        "whiteout a->b: {}",
        rename("a", "b", libc::RENAME_WHITEOUT)
    )];
    let md = fs::symlink_metadata(dir.join("a")).expect("the whiteout is there");
    out.push(format!(
        "a: char device {}, mode {:o}, rdev {}",
        md.file_type().is_char_device(),
        md.mode() & 0o7777,
        md.rdev()
    ));
    out.push(format!("b: {:?}", fs::read(dir.join("b")).expect("b")));
    out.push(format!(
        "whiteout|noreplace c->d: {}",
        rename("c", "d", libc::RENAME_WHITEOUT | libc::RENAME_NOREPLACE)
    ));
    out.push(format!(
        "whiteout|exchange c->d: {}",
        rename("c", "d", libc::RENAME_WHITEOUT | libc::RENAME_EXCHANGE)
    ));
    out
}

#[test]
fn rename_whiteout_leaves_a_whiteout_as_tmpfs_does() {
    let Some(m) = common::mount() else { return };
    let tmpfs = tempfile::tempdir_in("/dev/shm").expect("a directory on tmpfs");
    let want = whiteout_steps(tmpfs.path());
    assert_eq!(want[0], "whiteout a->b: 0", "tmpfs: {want:?}");
    assert_eq!(whiteout_steps(m.path()), want);
}
