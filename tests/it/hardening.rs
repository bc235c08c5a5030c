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
