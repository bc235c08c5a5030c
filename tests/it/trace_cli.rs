//! The trace commands through the real `rawfs` binary: `rawfs run` printing a program's
//! trace, `rawfs trace` on a daemon mount (filters, formats, `--follow`, `--clear`, `-o`) and
//! on a saved file, `rawfs check` and `rawfs status`.
//!
//! Each test has its own runtime directory (`RAWFS_RUNTIME_DIR`) and mount point, and a
//! [`Daemon`] guard that unmounts even when an assertion fails. Programs that act on a daemon
//! mount run from `/` with the mount's paths as arguments, so that nothing else (such as a
//! pyenv shim looking for `.python-version`) touches the mount.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rawfs::trace::format::read_jsonl;
use rawfs::trace::{Event, FORMAT_VERSION, Header, Op};
use serde_json::Value;

use crate::common::{Daemon, Runtime, s, text};
use crate::fuse_or_skip;

/// How long a test waits for a line from `rawfs trace --follow`.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers

impl Daemon {
    /// `rawfs trace MP ARGS`, asserting success; returns stdout.
    fn trace(&self, args: &[&str]) -> String {
        let mut all = vec!["trace", self.mp()];
        all.extend_from_slice(args);
        text(&self.rt.rawfs_ok(&all).stdout)
    }

    /// `rawfs trace MP --format jsonl ARGS`, parsed.
    fn events(&self, args: &[&str]) -> (Option<Header>, Vec<Event>) {
        let mut all = vec!["--format", "jsonl"];
        all.extend_from_slice(args);
        let out = self.trace(&all);
        read_jsonl(out.as_bytes()).unwrap_or_else(|e| panic!("bad JSON Lines ({e}):\n{out}"))
    }
}

/// A running `rawfs trace MP --follow ...`, its output lines read as they come; killed when
/// dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(d: &Daemon, args: &[&str]) -> Follower {
        let mut all = vec!["trace", d.mp(), "--follow"];
        all.extend_from_slice(args);
        let mut child =
            d.rt.command(&all)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn rawfs trace --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to [`WAIT`] for a line containing `what`.
    fn wait_for(&mut self, what: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.seen.iter().any(|l| l.contains(what)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line with {what} within {WAIT:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a python3 program from `/` with argv[1..] = `args`, asserting success; returns stdout.
fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The events, one JSON object per line, for failure messages.
fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).expect("event serializes"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is(e: &Event, op: Op, path: &str) -> bool {
    e.op == op && e.path.as_deref() == Some(path)
}

/// Reads a JSON Lines trace file.
fn read_file(path: &Path) -> (Option<Header>, Vec<Event>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    read_jsonl(BufReader::new(f)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// rawfs run

/// `rawfs run` of the shell `script`, its trace written as JSON Lines to `file`.
fn run_to_jsonl(rt: &Runtime, file: &Path, script: &str) -> std::process::Output {
    let output = s(file);
    rt.rawfs_ok(&[
        "run",
        "--trace-format",
        "jsonl",
        "--trace-output",
        output,
        "--",
        "sh",
        "-c",
        script,
    ])
}

#[test]
fn run_prints_a_text_trace_on_stderr_with_the_exclusive_create() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let out = rt.rawfs_ok(&["run", "--", "python3", "-c", "open('x', 'x')"]);
    assert_eq!(text(&out.stdout), "", "the trace goes to stderr");
    let stderr = text(&out.stderr);
    let creates: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" create(\"/x\", "))
        .collect();
    assert_eq!(creates.len(), 1, "one create of /x in:\n{stderr}");
    // `#12 [4242 python3] create("/x", O_WRONLY|O_CREAT|O_EXCL|O_LARGEFILE, 0644) = ...`
    let line = creates[0];
    assert!(line.starts_with('#'), "{line}");
    assert!(line.contains("O_WRONLY|O_CREAT|O_EXCL"), "{line}");
    assert!(
        !line.contains("O_CLOEXEC"),
        "the kernel strips O_CLOEXEC: {line}"
    );
    assert!(line.contains(" = ino "), "{line}");
}

#[test]
fn run_writes_a_jsonl_trace_with_a_header_to_trace_output() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let file = rt.0.path().join("t.jsonl");
    let out = run_to_jsonl(&rt, &file, "echo hi > f");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "",
        "nothing on stderr with --trace-output"
    );

    let raw = std::fs::read_to_string(&file).expect("trace file");
    let mut lines = raw.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header line")).unwrap();
    assert_eq!(header["rawfs_trace"], FORMAT_VERSION);
    assert!(
        header["mountpoint"]
            .as_str()
            .is_some_and(|m| m.starts_with('/'))
    );
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["seq"].is_u64() && v["op"].is_string(), "{line}");
    }

    let (header, events) = read_file(&file);
    assert_eq!(header.expect("header").rawfs_trace, FORMAT_VERSION);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "every request, in seq order"
    );
    assert!(events.iter().any(|e| is(e, Op::Create, "/f") && e.ok()));
    let write = events
        .iter()
        .find(|e| is(e, Op::Write, "/f"))
        .unwrap_or_else(|| panic!("no write of /f:\n{}", dump(&events)));
    assert_eq!((write.size, write.returned), (Some(3), Some(3)));
}

/// The command starts in the mount without changing into it itself: the `access` check of
/// that chdir is rawfs's own, and the trace begins with the command's first request.
#[test]
fn run_traces_the_command_from_its_first_request_not_the_change_into_the_mount() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let file = rt.0.path().join("t.jsonl");
    run_to_jsonl(&rt, &file, "pwd > where");
    let (_, events) = read_file(&file);
    let first = events.first().expect("some requests");
    assert_eq!(first.seq, 1);
    assert_eq!(first.comm.as_str(), "sh", "{}", dump(&events));
    let own: Vec<&Event> = events
        .iter()
        .filter(|e| e.comm.as_str() == "rawfs")
        .collect();
    assert!(own.is_empty(), "requests of rawfs itself: {own:?}");
    // The command did run in the mount's root.
    assert!(events.iter().any(|e| is(e, Op::Create, "/where") && e.ok()));
}

#[test]
fn run_with_trace_format_none_prints_nothing() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let out = rt.rawfs_ok(&[
        "run",
        "--trace-format",
        "none",
        "--",
        "sh",
        "-c",
        "echo hi > f; cat f",
    ]);
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "");
}

// ---------------------------------------------------------------------------------------------
// rawfs trace on a live mount

#[test]
fn trace_shows_a_programs_requests_as_soon_as_it_exits() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    let pid: u32 = python(
        "import os, sys\nprint(os.getpid())\nopen(sys.argv[1], 'w').write('12345')",
        &[&d.join("out")],
    )
    .trim()
    .parse()
    .expect("pid");
    // No sleep: the daemon waits for what it already answered to reach the buffer.
    let (header, events) = d.events(&["--path", "/out"]);
    let header = header.expect("a live trace has a header");
    assert_eq!(header.mountpoint, d.mp());
    let create = events
        .iter()
        .find(|e| is(e, Op::Create, "/out"))
        .unwrap_or_else(|| panic!("no create:\n{}", dump(&events)));
    assert_eq!(create.pid, pid);
    let write = events
        .iter()
        .find(|e| is(e, Op::Write, "/out"))
        .unwrap_or_else(|| panic!("no write:\n{}", dump(&events)));
    assert_eq!(write.returned, Some(5));
    assert!(events.iter().any(|e| is(e, Op::Flush, "/out")));
}

/// Checks that `rawfs trace --format jsonl FILTER...` keeps exactly the events of the whole
/// trace `all` that `pred` accepts (events that arrived after `all` was read are only checked
/// against `pred`); returns them.
fn check_filter(
    d: &Daemon,
    all: &[Event],
    args: &[&str],
    pred: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let (_, got) = d.events(args);
    let last = all.last().map_or(0, |e| e.seq);
    for e in &got {
        assert!(
            pred(e),
            "{args:?} kept an event it should not:\n{}",
            dump(std::slice::from_ref(e))
        );
    }
    let got_seqs: Vec<u64> = got.iter().map(|e| e.seq).filter(|&s| s <= last).collect();
    let want: Vec<u64> = all.iter().filter(|e| pred(e)).map(|e| e.seq).collect();
    assert_eq!(got_seqs, want, "{args:?} on:\n{}", dump(all));
    assert!(
        !want.is_empty(),
        "{args:?} should keep something of:\n{}",
        dump(all)
    );
    assert!(want.len() < all.len(), "{args:?} should drop something");
    got
}

#[test]
fn each_filter_keeps_exactly_the_matching_events() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    let pid: u32 = python(
        "import os, sys\n\
         mp = sys.argv[1]\n\
         print(os.getpid())\n\
         os.mkdir(mp + '/dir')\n\
         open(mp + '/dir/a.txt', 'w').write('hello')\n\
         open(mp + '/dir/a.txt').read()\n\
         os.path.exists(mp + '/dir/b.log')",
        &[d.mp()],
    )
    .trim()
    .parse()
    .expect("pid");
    let sh = Command::new("sh")
        .arg("-c")
        .arg("echo x > \"$1\"")
        .arg("sh")
        .arg(d.join("other"))
        .current_dir("/")
        .status()
        .expect("sh");
    assert!(sh.success());

    let (_, all) = d.events(&[]);
    assert!(all.len() > 10, "{}", dump(&all));

    check_filter(&d, &all, &["--op", "write,create"], |e| {
        matches!(e.op, Op::Write | Op::Create)
    });
    check_filter(&d, &all, &["--path", "/dir/*.txt"], |e| {
        e.path.as_deref() == Some("/dir/a.txt") || e.path2.as_deref() == Some("/dir/a.txt")
    });
    let mine = check_filter(&d, &all, &["--pid", &pid.to_string()], |e| e.pid == pid);
    assert!(mine.iter().any(|e| is(e, Op::Mkdir, "/dir")));
    let shs = check_filter(&d, &all, &["--comm", "sh"], |e| &*e.comm == "sh");
    assert!(
        shs.iter().any(|e| is(e, Op::Create, "/other")),
        "{}",
        dump(&shs)
    );
    let few = check_filter(&d, &all, &["--seq", "2..4"], |e| (2..=4).contains(&e.seq));
    assert_eq!(few.len(), 3, "{}", dump(&few));
    let failed = check_filter(&d, &all, &["--failed"], |e| e.errno.is_some());
    assert!(failed.iter().any(|e| is(e, Op::Lookup, "/dir/b.log")));
    // Criteria combine: each must match.
    let missing = check_filter(
        &d,
        &all,
        &["--op", "lookup", "--failed", "--path", "**/b.log"],
        |e| is(e, Op::Lookup, "/dir/b.log") && e.errno.as_deref() == Some("ENOENT"),
    );
    assert!(missing.iter().all(|e| e.pid == pid));

    // The text format applies the same filters.
    let lines = d.trace(&["--op", "mkdir"]);
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains(" mkdir(\"/dir\", "), "{lines}");
}

#[test]
fn bad_filter_values_are_refused_naming_the_value() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    for (args, named) in [
        (&["--op", "read,raed"][..], "\"raed\""),
        (&["--seq", "9..2"][..], "9..2"),
        (&["--seq", "x"][..], "\"x\""),
        (&["--path", "/a**"][..], "/a**"),
        (&["--pid", "abc"][..], "abc"),
    ] {
        let mut all = vec!["trace", d.mp()];
        all.extend_from_slice(args);
        let out = d.rt.rawfs(&all);
        let stderr = text(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: {}\n{stderr}",
            out.status
        );
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
}

#[test]
fn chrome_format_is_one_json_document_with_trace_events() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    std::fs::write(d.join("f"), "data").unwrap();
    let (_, all) = d.events(&[]);
    let file = d.rt.0.path().join("trace.json");
    let out = d.trace(&["--format", "chrome", "-o", s(&file)]);
    assert_eq!(out, "", "-o writes to the file, not stdout");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .expect("chrome output is one JSON document");
    let list = v["traceEvents"].as_array().expect("traceEvents");
    let complete: Vec<&Value> = list.iter().filter(|e| e["ph"] == "X").collect();
    assert!(complete.len() >= all.len(), "{v}");
    for e in &complete {
        for key in ["name", "ts", "dur", "pid", "tid"] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
        assert!(e["args"]["seq"].is_u64(), "{e}");
    }
    let create = complete
        .iter()
        .find(|e| e["name"] == "create" && e["args"]["path"] == "/f")
        .unwrap_or_else(|| panic!("no create of /f in {v}"));
    assert_eq!(create["pid"], std::process::id());
    assert!(
        list.iter()
            .any(|e| e["ph"] == "M" && e["name"] == "process_name"),
        "tracks are named"
    );
    // The release the kernel sends after close has no thread (tid 0): its track says so.
    let thread_names: Vec<&str> = list
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(
        thread_names
            .iter()
            .any(|n| n.ends_with("(sent by the kernel)"))
            && thread_names.iter().all(|n| !n.ends_with(" thread 0")),
        "{thread_names:?}"
    );
}

#[test]
fn follow_streams_events_that_happen_after_it_started() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    std::fs::write(d.join("followed-0"), "").unwrap();
    let mut f = Follower::start(&d, &["--path", "/followed-*"]);
    // The backlog first: once it is printed, the follower is connected and streaming.
    f.wait_for("create(\"/followed-0\"");
    std::fs::write(d.join("followed-1"), "").unwrap();
    f.wait_for("create(\"/followed-1\"");
    assert!(
        f.seen.iter().all(|l| l.contains("\"/followed-")),
        "{:?}",
        f.seen
    );
}

/// A request that finishes after later ones were already streamed must still be streamed:
/// `--follow` asks for events after the highest `seq` it has sent, so it misses it.
#[test]
fn follow_streams_a_slow_request_that_completes_after_later_ones() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    std::fs::write(d.join("slow"), "").unwrap();
    std::fs::write(d.join("marker"), "").unwrap();
    d.rt.rawfs_ok(&[
        "fault",
        "add",
        d.mp(),
        "--op",
        "getattr",
        "--path",
        "/slow",
        "--comm",
        "stat",
        "--delay",
        "500",
    ]);
    let mut f = Follower::start(&d, &["--path", "/{marker,slow,fast}"]);
    f.wait_for("create(\"/marker\"");
    let slow = d.join("slow");
    let stat = std::thread::spawn(move || {
        let out = Command::new("stat").arg(&slow).output().expect("stat");
        assert!(out.status.success());
    });
    std::thread::sleep(Duration::from_millis(100));
    // Arrives after the stat's getattr, answered long before it.
    std::fs::write(d.join("fast"), "").unwrap();
    f.wait_for("create(\"/fast\"");
    stat.join().unwrap();
    let (_, all) = d.events(&["--path", "/slow", "--op", "getattr", "--comm", "stat"]);
    assert!(!all.is_empty(), "the stat's getattr is in the buffer");
    for e in &all {
        f.wait_for(&format!("#{} ", e.seq));
    }
}

#[test]
fn clear_drops_what_was_printed_and_later_traces_show_only_newer_events() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    std::fs::write(d.join("before"), "1").unwrap();
    let (_, first) = d.events(&["--clear"]);
    assert!(first.iter().any(|e| is(e, Op::Create, "/before")));
    let upto = first.last().expect("events").seq;
    std::fs::write(d.join("after"), "2").unwrap();
    let (_, second) = d.events(&[]);
    assert!(second.iter().any(|e| is(e, Op::Create, "/after")));
    // The asynchronous release of /before may come after the clear: only older events go.
    assert!(
        second.iter().all(|e| e.seq > upto),
        "cleared up to #{upto}, still there:\n{}",
        dump(&second)
    );
    assert!(!second.iter().any(|e| is(e, Op::Create, "/before")));
    let status: Value =
        serde_json::from_slice(&d.rt.rawfs_ok(&["status", d.mp(), "--json"]).stdout).unwrap();
    assert_eq!(status["trace"]["cleared"], first.len() as u64, "{status}");
}

// ---------------------------------------------------------------------------------------------
// Saved traces

#[test]
fn trace_file_errors_name_the_file_and_the_line() {
    let rt = Runtime::new();
    let missing = rt.0.path().join("missing.jsonl");
    let out = rt.rawfs(&["trace", "--file", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(s(&missing)) && stderr.contains("cannot open"),
        "{stderr}"
    );

    let bad = rt.0.path().join("bad.jsonl");
    let header =
        r#"{"rawfs_trace":1,"rawfs_version":"0.1.0","mountpoint":"/m","started_unix_ns":0}"#;
    std::fs::write(&bad, format!("{header}\nthis is not JSON\n")).unwrap();
    for cmd in ["trace", "check"] {
        let out = rt.rawfs(&[cmd, "--file", s(&bad)]);
        // `rawfs check` is a gate: 1 means findings, 2 that it could not run.
        let code = if cmd == "check" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{cmd}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("bad.jsonl: line 2: not JSON"),
            "{cmd}: {stderr}"
        );
    }

    let out = rt.rawfs(&["trace", "--file", s(&bad), "--follow"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--follow needs a live mount"));
}

#[test]
fn trace_into_a_closed_pipe_ends_quietly() {
    let rt = Runtime::new();
    let file = rt.0.path().join("big.jsonl");
    // Far more than a pipe holds, so that the writer meets the closed end.
    let mut lines = String::new();
    for seq in 1..=5000 {
        let e = Event {
            seq,
            op: Op::Getattr,
            path: Some(format!("/some/longer/path/{seq}").into()),
            ..Event::default()
        };
        lines.push_str(&serde_json::to_string(&e).unwrap());
        lines.push('\n');
    }
    std::fs::write(&file, lines).unwrap();
    let mut child = rt
        .command(&["trace", "--file", s(&file)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rawfs trace");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("#1 "), "{first}");
    // The reader is gone now, as with `rawfs trace | head -n 1`.
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn mount_trace_file_holds_every_event_for_trace_file() {
    fuse_or_skip!();
    let rt_dir = tempfile::tempdir().unwrap();
    let file = rt_dir.path().join("mount.jsonl");
    let d = Daemon::start(&["--trace", s(&file)]);
    std::fs::write(d.join("traced"), "x").unwrap();
    d.rt.rawfs_ok(&["umount", d.mp()]);

    let (header, events) = read_file(&file);
    let header = header.expect("header");
    assert_eq!(header.rawfs_trace, FORMAT_VERSION);
    assert_eq!(header.mountpoint, d.mp());
    assert!(header.started_unix_ns > 0);
    assert!(events.iter().any(|e| is(e, Op::Create, "/traced")));

    let out =
        d.rt.rawfs_ok(&["trace", "--file", s(&file), "--op", "create"]);
    let lines = text(&out.stdout);
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("create(\"/traced\", "), "{lines}");
}

// ---------------------------------------------------------------------------------------------
// rawfs status, rawfs check

#[test]
fn status_json_counts_requests_and_names_the_mount_point() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    std::fs::write(d.join("f"), "x").unwrap();
    let out = d.rt.rawfs_ok(&["status", d.mp(), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["mountpoint"], d.mp(), "{v}");
    assert!(v["requests"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(
        v["trace"]["recorded"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{v}");
    let plain = text(&d.rt.rawfs_ok(&["status", d.mp()]).stdout);
    assert!(
        plain.contains(&format!("mountpoint: {}", d.mp())),
        "{plain}"
    );
    assert!(plain.contains("requests:"), "{plain}");
}

#[test]
fn check_warns_about_check_then_create_and_exits_1() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    python(
        "import os, sys\n\
         p = sys.argv[1]\n\
         if not os.path.exists(p):\n    open(p, 'w').write('{}')",
        &[&d.join("state")],
    );
    // The stat of exists() is a failed lookup of its own, before the one the kernel sends
    // right before the create (which the check does not count as the program's).
    let (_, events) = d.events(&["--path", "/state"]);
    let create = events
        .iter()
        .find(|e| is(e, Op::Create, "/state"))
        .unwrap_or_else(|| panic!("no create:\n{}", dump(&events)));
    assert!(!create.has_flags(libc::O_EXCL), "{create:?}");
    let lookups: Vec<&Event> = events
        .iter()
        .filter(|e| is(e, Op::Lookup, "/state") && e.seq < create.seq)
        .collect();
    assert_eq!(lookups.len(), 2, "{}", dump(&events));
    assert!(lookups.iter().all(|e| e.errno.as_deref() == Some("ENOENT")));

    let out = d.rt.rawfs(&["check", d.mp()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning[check-then-create]"))
        .unwrap_or_else(|| panic!("no check-then-create warning:\n{stdout}"));
    assert!(
        warning.contains(&format!("#{} #{}", lookups[0].seq, create.seq)),
        "{warning}"
    );
    assert!(warning.contains("/state"), "{warning}");
    assert!(
        text(&out.stderr).contains("warnings"),
        "a summary on stderr"
    );

    // --json: one object per finding; the same on a saved copy of the trace.
    let out = d.rt.rawfs(&["check", d.mp(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON finding"))
        .collect();
    let f = findings
        .iter()
        .find(|f| f["check"] == "check-then-create")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["seqs"], serde_json::json!([lookups[0].seq, create.seq]));

    let saved = d.rt.0.path().join("saved.jsonl");
    d.trace(&["--format", "jsonl", "-o", s(&saved)]);
    let out = d.rt.rawfs(&["check", "--file", s(&saved)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("warning[check-then-create]"));
}

#[test]
fn check_passes_an_exclusive_pidfile_made_durable() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let file = rt.0.path().join("pidfile.jsonl");
    let program = "import os\n\
                   fd = os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n\
                   os.write(fd, str(os.getpid()).encode())\n\
                   os.fsync(fd)\n\
                   os.close(fd)\n\
                   d = os.open('.', os.O_RDONLY)\n\
                   os.fsync(d)\n\
                   os.close(d)";
    rt.rawfs_ok(&[
        "run",
        "--trace-format",
        "jsonl",
        "--trace-output",
        s(&file),
        "--",
        "python3",
        "-c",
        program,
    ]);
    let (_, events) = read_file(&file);
    assert!(events.iter().any(|e| is(e, Op::Fsync, "/app.pid")));
    assert!(events.iter().any(|e| is(e, Op::Fsyncdir, "/")));

    let out = rt.rawfs(&["check", "--file", s(&file)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("warning"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("info[exclusive-create]") && l.contains("/app.pid")),
        "{stdout}"
    );
}

#[test]
fn trace_and_status_on_a_plain_directory_say_no_daemon_answers() {
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["trace", "status", "check"] {
        let out = rt.rawfs(&[cmd, s(dir.path())]);
        let code = if cmd == "check" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{cmd}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("no rawfs daemon answers"),
            "{cmd}: {stderr}"
        );
        assert!(stderr.contains(s(dir.path())), "{cmd}: {stderr}");
    }
}

#[test]
fn a_deeply_nested_mount_point_still_gets_a_control_socket() {
    fuse_or_skip!();
    let dir = tempfile::tempdir().expect("dir");
    let mut deep = dir.path().canonicalize().expect("canonical");
    for _ in 0..8 {
        deep.push("a-rather-long-name");
    }
    std::fs::create_dir_all(&deep).expect("mkdir");
    let d = Daemon::start_at(dir, deep, &[]);
    std::fs::write(d.join("f"), b"x").expect("write through the mount");
    let status = text(&d.rt.rawfs_ok(&["status", d.mp(), "--json"]).stdout);
    assert!(status.contains(d.mp()), "{status}");
    assert!(d.trace(&["--op", "create"]).contains("create(\"/f\""));
}
