//! Fault injection seen by real programs on real mounts: python3, coreutils and libc calls
//! from this process meet each action (errno, short read, partial write, delay, competitor,
//! hold, kill, corrupt, enospc_after), each trigger (nth, after, times, seeded probability)
//! and each match criterion (pid, comm, flags, offset and size ranges); the trace marks what
//! fired (`rule`, `fault`); the `rawfs fault` commands, `mount --faults` and `run --faults`
//! work through the binary; and bad rules or bad protocol lines are refused, naming the
//! problem, without touching the rules already set.
//!
//! Facts these tests pin down (Linux 6.x, python 3.11, coreutils 9.1, dash):
//! - The kernel serializes direct-I/O writes to one file (inode lock): while a write is held,
//!   a second process's write to the same file waits in the kernel and never reaches rawfs.
//!   Two holds at once need two files.
//! - python's buffered `f.write` + `close` retries partial writes until everything is
//!   written; `os.write` and `os.read` return what the file system answered.
//! - A stat sends a getattr of the name (attributes are never kept), after a lookup if the
//!   kernel does not know the name yet: a rule on `getattr` of a path sees exactly one request
//!   per stat.
//!
//! Programs run from `/` with mount paths as arguments, so that nothing else (a pyenv shim
//! looking for `.python-version`) touches the mount.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rawfs::TempMount;
use rawfs::check::{Check, run_checks};
use rawfs::fault::{Rule, parse_rules};
use rawfs::trace::{Event, Op};
use serde_json::{Value, json};

use crate::common::{Daemon, Runtime, code, errno, s, text};
use crate::fuse_or_skip;
use crate::mount_or_skip;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Rules from JSON, as a user would write them.
fn rules(json: &str) -> Vec<Rule> {
    parse_rules(json).unwrap_or_else(|e| panic!("bad rule {json}: {e}"))
}

/// Adds one rule to the mount; returns its id.
fn add(m: &TempMount, json: &str) -> u64 {
    let ids = m
        .faults()
        .add(rules(json))
        .unwrap_or_else(|e| panic!("rule {json} refused: {e}"));
    assert_eq!(ids.len(), 1);
    ids[0]
}

/// Every event recorded so far (after the requests already answered are stored).
fn events(m: &TempMount) -> Vec<Event> {
    let st = m.trace().expect("recording is on");
    st.sync(Duration::from_secs(2));
    st.since(0).0
}

/// The events, one JSON object per line, for failure messages.
fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).expect("event serializes"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The events that are an `op` on `path`.
fn on<'a>(events: &'a [Event], op: Op, path: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.op == op && e.path.as_deref() == Some(path))
        .collect()
}

/// A python3 command running `program` from `/` with argv[1..] = `args`.
fn python_cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

/// Runs a python3 program, asserting it succeeds; returns its stdout.
fn py(program: &str, args: &[&str]) -> String {
    let out = python_cmd(program, args).output().expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A child process, killed and reaped if the test ends before it does.
struct Kid(Option<Child>);

impl Kid {
    fn spawn(mut cmd: Command) -> Kid {
        Kid(Some(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        ))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    fn running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    /// Waits for it (at most [`WAIT`]) and returns its output.
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + WAIT;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "child still running after {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.0
            .take()
            .expect("running")
            .wait_with_output()
            .expect("wait")
    }

    /// Like [`Kid::finish`], asserting that it succeeded; returns its stdout.
    fn finish_ok(self) -> String {
        let out = self.finish();
        assert!(
            out.status.success(),
            "child failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for Kid {
    /// Kills it and reaps it if it dies within a second: a process waiting on a held request
    /// cannot die before the request is answered (the mount's guard, dropped after this one,
    /// releases it), and waiting for it here would wait forever.
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let deadline = Instant::now() + Duration::from_secs(1);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reads one line from a child's stdout.
fn line(r: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("read a line from the child");
    l.trim_end().to_string()
}

/// read(2) into a 100-byte buffer: the bytes, or the errno.
fn read100(fd: i32) -> Result<Vec<u8>, i32> {
    let mut buf = [0u8; 100];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(buf[..n as usize].to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Actions

#[test]
fn errno_on_read_or_open_fails_python_and_a_libc_loop_and_the_trace_names_the_rule() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), b"hello").unwrap();
    fs::write(m.join("g"), b"hello").unwrap();
    let on_read = add(
        &m,
        r#"{"match":{"ops":["read"],"path":"/f"},"action":{"errno":"EIO"}}"#,
    );
    let on_open = add(
        &m,
        r#"{"match":{"ops":["open"],"path":"/g"},"action":{"errno":"EIO"}}"#,
    );
    let out = py(
        r#"
import sys
for p in sys.argv[1:]:
    try:
        print(len(open(p).read()))
    except OSError as e:
        print(e.errno)
"#,
        &[s(&m.join("f")), s(&m.join("g"))],
    );
    assert_eq!(out, "5\n5\n", "python sees EIO on both");

    // A libc read loop: read until end of file or an error.
    let f = File::open(m.join("f")).unwrap();
    let mut got = Vec::new();
    let failed = loop {
        match read100(f.as_raw_fd()) {
            Ok(b) if b.is_empty() => break None,
            Ok(b) => got.extend(b),
            Err(e) => break Some(e),
        }
    };
    drop(f);
    assert_eq!((got.len(), failed), (0, Some(libc::EIO)));
    let e = File::open(m.join("g")).unwrap_err();
    assert_eq!(code(&e), libc::EIO);

    let ev = events(&m);
    let reads = on(&ev, Op::Read, "/f");
    let opens = on(&ev, Op::Open, "/g");
    assert_eq!(reads.len(), 2, "one read each; trace:\n{}", dump(&ev));
    assert_eq!(opens.len(), 2, "one open each; trace:\n{}", dump(&ev));
    for (e, id) in reads
        .iter()
        .map(|e| (e, on_read))
        .chain(opens.iter().map(|e| (e, on_open)))
    {
        assert_eq!(e.errno.as_deref(), Some("EIO"), "{e:?}");
        assert_eq!(e.rule, Some(id), "{e:?}");
        assert_eq!(e.fault.as_deref(), Some("errno EIO"), "{e:?}");
    }
    assert!(reads.iter().any(|e| e.pid == std::process::id()));
    // The opens of /f and the reads of /g matched nothing.
    assert!(
        on(&ev, Op::Open, "/f")
            .iter()
            .all(|e| e.rule.is_none() && e.ok())
    );
    let list = m.faults().list();
    assert_eq!((list[0].matched, list[0].hits), (2, 2));
    assert_eq!((list[1].matched, list[1].hits), (2, 2));
}

#[test]
fn one_byte_reads_are_retried_by_a_python_loop_and_cut_a_loop_that_does_not_retry() {
    let m = mount_or_skip!();
    let abc = "abcdefghijklmnopqrstuvwxyz";
    fs::write(m.join("f"), abc).unwrap();
    let id = add(
        &m,
        r#"{"match":{"ops":["read"],"path":"/f"},"action":{"short":1}}"#,
    );
    let out = py(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
first = os.read(fd, 100)
data = first
while True:
    more = os.read(fd, 100)
    if not more:
        break
    data += more
print(os.getpid(), len(first), data.decode())
"#,
        &[s(&m.join("f"))],
    );
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        ["1", abc],
        "one byte at first, all with the retry loop"
    );
    let py_pid: u32 = fields[0].parse().unwrap();

    // The bug the fault reveals: a loop that takes a short read for the end of the file.
    let f = File::open(m.join("f")).unwrap();
    let mut got: Vec<u8> = Vec::new();
    loop {
        let b = read100(f.as_raw_fd()).expect("read");
        got.extend(&b);
        if b.len() < 100 {
            break;
        }
    }
    drop(f);
    assert_eq!(got, b"a", "the loop that does not retry gets one byte");

    let ev = events(&m);
    let reads = on(&ev, Op::Read, "/f");
    let by_py: Vec<_> = reads.iter().filter(|e| e.pid == py_pid).collect();
    assert_eq!(by_py.len(), 27, "26 one-byte reads and end of file");
    for (i, e) in by_py.iter().enumerate() {
        assert_eq!(e.rule, Some(id));
        assert_eq!(e.fault.as_deref(), Some("short 1"));
        assert_eq!(e.offset, Some(i as i64));
        assert_eq!(e.size, Some(100));
        assert_eq!(e.returned, Some(u64::from(i < 26)));
        // The last byte ends at end of file: not short.
        assert_eq!(e.short, i < 25, "{e:?}");
    }
    let mine: Vec<_> = reads
        .iter()
        .filter(|e| e.pid == std::process::id())
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one read by this process ({}); trace:\n{}",
        std::process::id(),
        dump(&ev)
    );
    assert!(mine[0].short && mine[0].returned == Some(1));

    // rawfs check points at this process's read, not at python's.
    let findings: Vec<_> = run_checks(&ev)
        .into_iter()
        .filter(|f| f.check == Check::ShortReadNotRetried)
        .collect();
    assert_eq!(findings.len(), 1, "{findings:?}\ntrace:\n{}", dump(&ev));
    assert!(findings[0].seqs.contains(&mine[0].seq), "{findings:?}");
}

#[test]
fn partial_writes_return_three_bytes_and_python_buffered_io_writes_the_rest() {
    let m = mount_or_skip!();
    let id = add(
        &m,
        r#"{"match":{"ops":["write"],"path":"/*"},"action":{"short":3}}"#,
    );
    let out = py(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
print(os.write(fd, b'abcdefgh'))
os.close(fd)
f = open(sys.argv[2], 'wb')
f.write(b'0123456789abcdefghij')
f.close()
"#,
        &[s(&m.join("raw")), s(&m.join("buffered"))],
    );
    assert_eq!(out, "3\n", "os.write returns the partial count");
    assert_eq!(fs::read(m.join("raw")).unwrap(), b"abc");
    assert_eq!(
        fs::read(m.join("buffered")).unwrap(),
        b"0123456789abcdefghij",
        "buffered write + close retried until everything was written"
    );
    let ev = events(&m);
    let writes = on(&ev, Op::Write, "/buffered");
    // (offset, size, returned, short) of each write: python asks again for what is left.
    let seen: Vec<(i64, u64, u64, bool)> = writes
        .iter()
        .map(|e| {
            let n = |v: Option<u64>| v.expect("size and returned");
            (e.offset.expect("offset"), n(e.size), n(e.returned), e.short)
        })
        .collect();
    let want: Vec<_> = (0..7)
        .map(|i| {
            let left = 20 - 3 * i;
            (3 * i as i64, left, left.min(3), left > 3)
        })
        .collect();
    assert_eq!(seen, want, "trace:\n{}", dump(&ev));
    assert!(
        writes
            .iter()
            .all(|e| e.rule == Some(id) && e.fault.as_deref() == Some("short 3"))
    );
}

#[test]
fn delay_makes_fsync_take_at_least_its_time_before_or_after_the_operation() {
    let m = mount_or_skip!();
    let f = File::create(m.join("slow")).unwrap();
    for (json, note) in [
        (
            r#"{"match":{"ops":["fsync"],"path":"/slow"},"action":{"delay":{"ms":200}}}"#,
            "delay 200ms",
        ),
        (
            r#"{"match":{"ops":["fsync"],"path":"/slow"},
                "action":{"delay":{"ms":200,"after":true}}}"#,
            "delay 200ms after",
        ),
    ] {
        let id = add(&m, json);
        let start = Instant::now();
        f.sync_all().unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{note}: fsync took {took:?}"
        );
        assert!(m.faults().remove(&[id]).is_empty());
        let ev = events(&m);
        let fsyncs: Vec<_> = on(&ev, Op::Fsync, "/slow")
            .into_iter()
            .filter(|e| e.rule == Some(id))
            .collect();
        assert_eq!(fsyncs.len(), 1, "trace:\n{}", dump(&ev));
        assert_eq!(fsyncs[0].fault.as_deref(), Some(note));
        assert!(fsyncs[0].ok());
        assert!(fsyncs[0].dur_ns >= 200_000_000, "{:?}", fsyncs[0]);
    }
    // Without the rule, fsync is quick again (a generous bound: no speed assertion).
    let start = Instant::now();
    f.sync_all().unwrap();
    assert!(start.elapsed() < Duration::from_millis(200));
}

#[test]
fn competitor_wins_the_exclusive_create_and_a_check_then_create_pidfile_takes_its_file() {
    let m = mount_or_skip!();
    let id = add(
        &m,
        r#"{"match":{"ops":["create"],"path":"/app.pid"},
            "action":{"competitor":{"content":"999 (the competitor)\n"}}}"#,
    );
    let pidfile = m.join("app.pid");
    let out = py(
        r#"
import os, sys
p = sys.argv[1]
print(os.getpid())
try:
    open(p, 'x')
    print('created')
except FileExistsError:
    print('EEXIST', open(p).read().strip())
os.unlink(p)
# The usual check-then-create pidfile routine.
if not os.path.exists(p):
    f = open(p, 'w')
    f.write(f'{os.getpid()}\n')
    f.close()
    print('took over')
"#,
        &[s(&pidfile)],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1..], ["EEXIST 999 (the competitor)", "took over"]);
    let pid = lines[0];
    assert_eq!(
        fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n"),
        "the routine silently truncated and overwrote the competitor's pidfile"
    );

    let ev = events(&m);
    let creates = on(&ev, Op::Create, "/app.pid");
    assert_eq!(creates.len(), 2, "trace:\n{}", dump(&ev));
    for e in &creates {
        assert_eq!(e.rule, Some(id));
        assert_eq!(e.fault.as_deref(), Some("competitor"));
    }
    assert!(creates[0].has_flags(libc::O_EXCL));
    assert_eq!(creates[0].errno.as_deref(), Some("EEXIST"));
    assert!(
        !creates[1].has_flags(libc::O_EXCL),
        "no O_EXCL filter: it fires too"
    );
    assert!(creates[1].ok());
    let list = m.faults().list();
    assert_eq!((list[0].matched, list[0].hits), (2, 2));

    let findings = run_checks(&ev);
    assert!(
        findings.iter().any(|f| {
            matches!(f.check, Check::CheckThenCreate | Check::LostRace)
                && f.seqs.contains(&creates[1].seq)
        }),
        "rawfs check should report the pidfile routine: {findings:#?}"
    );
}

#[test]
fn held_writes_complete_in_the_order_the_test_releases_them() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("data")).unwrap();
    let id = add(
        &m,
        r#"{"match":{"ops":["write"],"path":"/data/*"},"action":"hold"}"#,
    );
    // Each writes its own file (the kernel serializes writes to one file), then appends its
    // name to a shared log that no rule holds.
    let program = r#"
import os, sys
root, name = sys.argv[1], sys.argv[2]
fd = os.open(f'{root}/data/{name}', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, name.encode())
log = os.open(f'{root}/log', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(log, f'{name}\n'.encode())
"#;
    let mut a = Kid::spawn(python_cmd(program, &[s(m.path()), "A"]));
    let mut b = Kid::spawn(python_cmd(program, &[s(m.path()), "B"]));
    let held = m.faults().holds.wait_for(2, WAIT);
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|h| h.rule == id && h.op == "write"));
    let hold_of = |name: &str| {
        let path = format!("/data/{name}");
        held.iter()
            .find(|h| h.path.as_deref() == Some(path.as_str()))
            .unwrap_or_else(|| panic!("no hold for {path}: {held:?}"))
            .hold
    };
    let (hold_a, hold_b) = (hold_of("A"), hold_of("B"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(a.running() && b.running(), "both wait on their write");

    assert!(m.faults().holds.release(hold_b));
    b.finish_ok();
    let still: Vec<u64> = m.faults().holds.list().iter().map(|h| h.hold).collect();
    assert_eq!(still, [hold_a]);
    assert!(a.running(), "A is still held");
    assert!(m.faults().holds.release(hold_a));
    a.finish_ok();

    assert_eq!(fs::read_to_string(m.join("log")).unwrap(), "B\nA\n");
    assert_eq!(fs::read_to_string(m.join("data/A")).unwrap(), "A");
    let ev = events(&m);
    let end = |name: &str| {
        let w = on(&ev, Op::Write, &format!("/data/{name}"));
        assert_eq!(w.len(), 1, "trace:\n{}", dump(&ev));
        assert!(
            w[0].fault.as_deref().unwrap().starts_with("held "),
            "{:?}",
            w[0]
        );
        w[0].ts_ns + w[0].dur_ns
    };
    assert!(end("B") < end("A"), "B's write was answered first");
}

#[test]
fn kill_action_ends_python_with_sigterm_on_its_write() {
    let m = mount_or_skip!();
    let id = add(
        &m,
        r#"{"match":{"ops":["write"],"path":"/victim"},"action":{"kill":"TERM"}}"#,
    );
    let out = python_cmd(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
print('writing', flush=True)
os.write(fd, b'x')
print('survived')
"#,
        &[s(&m.join("victim"))],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTERM),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "writing\n");
    let ev = events(&m);
    let w = on(&ev, Op::Write, "/victim");
    assert_eq!(w.len(), 1, "trace:\n{}", dump(&ev));
    assert_eq!(w[0].rule, Some(id));
    assert_eq!(w[0].fault.as_deref(), Some("kill TERM"));
    assert_eq!(w[0].errno.as_deref(), Some("EINTR"));
    assert_eq!(fs::metadata(m.join("victim")).unwrap().len(), 0);
}

#[test]
fn corrupt_flips_bytes_read_and_zeroes_bytes_stored() {
    let m = mount_or_skip!();
    fs::write(m.join("c"), b"abcdefgh").unwrap();
    add(
        &m,
        r#"{"match":{"ops":["read"],"path":"/c"},
            "action":{"corrupt":{"how":"flip","at":2,"len":3}}}"#,
    );
    add(
        &m,
        r#"{"match":{"ops":["write"],"path":"/z"},
            "action":{"corrupt":{"how":"zero","at":1,"len":2}}}"#,
    );
    let out = py(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.read(fd, 100).hex())
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
print(os.write(fd, b'ABCD'))
"#,
        &[s(&m.join("c")), s(&m.join("z"))],
    );
    let flipped: Vec<u8> = b"abcdefgh"
        .iter()
        .enumerate()
        .map(|(i, b)| if (2..5).contains(&i) { !b } else { *b })
        .collect();
    let hex: String = flipped.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(out, format!("{hex}\n4\n"));
    let ev = events(&m);
    assert_eq!(
        on(&ev, Op::Read, "/c")[0].fault.as_deref(),
        Some("corrupt flip 2+3")
    );
    assert_eq!(
        on(&ev, Op::Write, "/z")[0].fault.as_deref(),
        Some("corrupt zero 1+2")
    );
    // Read back without the rules: the stored bytes were zeroed, the read ones never changed.
    assert_eq!(m.faults().clear(), 2);
    assert_eq!(fs::read(m.join("z")).unwrap(), b"A\0\0D");
    assert_eq!(fs::read(m.join("c")).unwrap(), b"abcdefgh");
}

#[test]
fn enospc_after_lets_ten_thousand_bytes_through_then_fails_with_a_partial_write_between() {
    let m = mount_or_skip!();
    let id = add(
        &m,
        r#"{"match":{"ops":["write"],"path":"/full"},"action":{"enospc_after":10000}}"#,
    );
    let out = py(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
for _ in range(16):
    try:
        print(os.write(fd, b'x' * 4096))
    except OSError as e:
        print(os.strerror(e.errno))
        break
"#,
        &[s(&m.join("full"))],
    );
    assert_eq!(out, "4096\n4096\n1808\nNo space left on device\n");
    assert_eq!(fs::metadata(m.join("full")).unwrap().len(), 10000);
    let ev = events(&m);
    let w = on(&ev, Op::Write, "/full");
    assert_eq!(w.len(), 4, "trace:\n{}", dump(&ev));
    assert!(w.iter().all(|e| e.rule == Some(id)));
    assert_eq!(w[1].fault.as_deref(), Some("enospc after 10000"));
    assert!(!w[1].short);
    assert!(w[2].short && w[2].returned == Some(1808));
    assert_eq!(w[3].errno.as_deref(), Some("ENOSPC"));
}

// ---------------------------------------------------------------------------------------------
// Triggers

/// Which of `n` stats of `name` fail (true) with the rule's errno.
fn stat_failures(m: &TempMount, name: &str, n: usize) -> Vec<bool> {
    (0..n)
        .map(|_| match fs::metadata(m.join(name)) {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(code(&e), libc::EIO, "{e}");
                true
            }
        })
        .collect()
}

#[test]
fn nth_after_and_times_fire_on_exactly_the_matches_they_name() {
    let m = mount_or_skip!();
    fs::write(m.join("t"), b"").unwrap();
    for (when, want, hits) in [
        (r#"{"nth":3}"#, [0, 0, 1, 0, 0, 0], 1),
        (r#"{"after":4}"#, [0, 0, 0, 0, 1, 1], 2),
        (r#"{"times":2}"#, [1, 1, 0, 0, 0, 0], 2),
        (r#""always""#, [1, 1, 1, 1, 1, 1], 6),
    ] {
        let id = add(
            &m,
            &format!(
                r#"{{"match":{{"ops":["getattr"],"path":"/t"}},"when":{when},
                    "action":{{"errno":"EIO"}}}}"#
            ),
        );
        let want: Vec<bool> = want.iter().map(|w| *w == 1).collect();
        assert_eq!(stat_failures(&m, "t", 6), want, "when {when}");
        let list = m.faults().list();
        assert_eq!((list[0].matched, list[0].hits), (6, hits), "when {when}");
        assert!(m.faults().remove(&[id]).is_empty());
    }
}

#[test]
fn the_first_rule_that_fires_wins_and_the_rules_after_it_do_not_count_the_request() {
    let m = mount_or_skip!();
    fs::write(m.join("t"), b"").unwrap();
    add(
        &m,
        r#"{"match":{"ops":["getattr"],"path":"/t"},"when":{"times":1},
            "action":{"errno":"EIO"}}"#,
    );
    add(
        &m,
        r#"{"match":{"ops":["getattr"],"path":"/t"},"action":{"errno":"EACCES"}}"#,
    );
    let errnos: Vec<i32> = (0..3)
        .map(|_| code(&fs::metadata(m.join("t")).unwrap_err()))
        .collect();
    assert_eq!(errnos, [libc::EIO, libc::EACCES, libc::EACCES]);
    let counts: Vec<(u64, u64)> = m
        .faults()
        .list()
        .iter()
        .map(|r| (r.matched, r.hits))
        .collect();
    assert_eq!(counts, [(3, 1), (2, 2)]);
}

/// The kernel keeps names and walks through them without a lookup. Adding a rule on lookups
/// makes it forget them, and names the rule may fire on are not kept while it is there, so
/// that every walk meets it; other names are kept again after one more lookup.
#[test]
fn a_lookup_rule_meets_every_walk_through_names_the_kernel_had_kept() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/f"), b"").unwrap();
    let walks = |m: &TempMount| {
        let evs = events(m);
        (
            on(&evs, Op::Lookup, "/d").len(),
            on(&evs, Op::Lookup, "/d/f").len(),
        )
    };
    let stat3 = || {
        for _ in 0..3 {
            fs::metadata(m.join("d/f")).unwrap();
        }
    };
    stat3();
    // The failed lookups before the mkdir and the create, and the first stat's lookup of f.
    assert_eq!(walks(&m), (1, 2), "{}", dump(&events(&m)));
    // A rule elsewhere: one more lookup of each name, then they are kept.
    add(
        &m,
        r#"{"match":{"ops":["lookup"],"path":"/elsewhere/*"},"action":{"errno":"EIO"}}"#,
    );
    stat3();
    assert_eq!(walks(&m), (2, 3), "{}", dump(&events(&m)));
    let id = add(
        &m,
        r#"{"match":{"ops":["lookup"],"path":"/d"},"action":{"errno":"EACCES"}}"#,
    );
    for _ in 0..3 {
        let e = fs::metadata(m.join("d/f")).unwrap_err();
        assert_eq!(code(&e), libc::EACCES, "{e}");
    }
    let hits: Vec<u64> = m.faults().list().iter().map(|r| r.hits).collect();
    assert_eq!(hits, [0, 3]);
    assert!(m.faults().remove(&[id]).is_empty());
    stat3();
    // Three failed lookups of d; after them one more lookup of each name, then they are
    // kept again.
    assert_eq!(walks(&m), (6, 4), "{}", dump(&events(&m)));
}

/// The hit pattern of 40 stats on a fresh mount under a probability rule.
fn probability_pattern(seed: u64) -> Option<Vec<bool>> {
    let m = crate::common::mount()?;
    fs::write(m.join("p"), b"").unwrap();
    add(
        &m,
        &format!(
            r#"{{"match":{{"ops":["getattr"],"path":"/p"}},
                "when":{{"probability":{{"p":0.5,"seed":{seed}}}}},"action":{{"errno":"EIO"}}}}"#
        ),
    );
    Some(stat_failures(&m, "p", 40))
}

#[test]
fn the_same_seed_gives_the_same_faults_on_another_mount_and_another_seed_others() {
    let Some(a) = probability_pattern(7) else {
        return;
    };
    let b = probability_pattern(7).unwrap();
    let c = probability_pattern(8).unwrap();
    assert_eq!(a, b, "same seed, same sequence of requests: same hits");
    assert_ne!(a, c, "another seed: other hits");
    let hits = a.iter().filter(|h| **h).count();
    assert!((5..=35).contains(&hits), "{hits} hits of 40 at p=0.5");
}

// ---------------------------------------------------------------------------------------------
// Match criteria
#[test]
fn pid_and_comm_select_which_process_fails() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), b"hello!!").unwrap();
    let program = r#"
import os, sys
print(os.getpid(), flush=True)
sys.stdin.readline()
try:
    print(len(os.read(os.open(sys.argv[1], os.O_RDONLY), 100)))
except OSError as e:
    print(os.strerror(e.errno))
"#;
    let start = || {
        let mut c = python_cmd(program, &[s(&m.join("f"))]);
        c.stdin(Stdio::piped());
        let mut k = Kid::spawn(c);
        let mut out = BufReader::new(k.child().stdout.take().unwrap());
        let pid = line(&mut out);
        (k, out, pid)
    };
    let (mut a, mut a_out, a_pid) = start();
    let (mut b, mut b_out, _) = start();
    let id = add(
        &m,
        &format!(r#"{{"match":{{"ops":["read"],"pid":{a_pid}}},"action":{{"errno":"EIO"}}}}"#),
    );
    for k in [&mut a, &mut b] {
        k.child().stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    assert_eq!(
        line(&mut a_out),
        "Input/output error",
        "the targeted child fails"
    );
    assert_eq!(line(&mut b_out), "7", "the other one reads");
    a.finish_ok();
    b.finish_ok();
    assert!(m.faults().remove(&[id]).is_empty());

    // By command name: cat fails, head does not.
    add(
        &m,
        r#"{"match":{"ops":["read"],"comm":"cat"},"action":{"errno":"EIO"}}"#,
    );
    let run = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let cat = run("cat", &[s(&m.join("f"))]);
    assert!(!cat.status.success());
    assert!(
        text(&cat.stderr).contains("Input/output error"),
        "{}",
        text(&cat.stderr)
    );
    let head = run("head", &["-c", "100", s(&m.join("f"))]);
    assert!(head.status.success(), "{}", text(&head.stderr));
    assert_eq!(head.stdout, b"hello!!");
}

#[test]
fn flags_offset_and_size_select_which_requests_fail() {
    let m = mount_or_skip!();
    // Only the exclusive create fails.
    add(
        &m,
        r#"{"match":{"ops":["create"],"flags":["O_EXCL"]},"action":{"errno":"EIO"}}"#,
    );
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("x"));
    assert_eq!(excl.map_err(|e| code(&e)).err(), Some(libc::EIO));
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join("y"))
        .expect("a create without O_EXCL is not matched");
    m.faults().clear();

    // Access modes compare as modes, and only the open flags of a request are looked at: not
    // fdatasync's flag (1, as O_WRONLY) nor anything of a stat (O_RDONLY is 0).
    add(
        &m,
        r#"{"match":{"flags":["O_WRONLY"]},"action":{"errno":"EIO"}}"#,
    );
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("y"))
        .expect("O_RDWR is not O_WRONLY");
    rw.sync_data().expect("fdatasync carries no open flags");
    let wr = OpenOptions::new().write(true).open(m.join("y"));
    assert_eq!(wr.map_err(|e| code(&e)).err(), Some(libc::EIO));
    m.faults().clear();
    add(
        &m,
        r#"{"match":{"flags":["O_RDONLY"]},"action":{"errno":"EIO"}}"#,
    );
    fs::metadata(m.join("y")).expect("a stat has no open flags");
    assert_eq!(
        File::open(m.join("y")).map_err(|e| code(&e)).err(),
        Some(libc::EIO)
    );
    rw.sync_data().unwrap();
    m.faults().clear();

    fs::write(m.join("o"), vec![7u8; 8192]).unwrap();
    let f = File::open(m.join("o")).unwrap();
    let read_at = |len: usize, at: u64| {
        let mut buf = vec![0u8; len];
        f.read_at(&mut buf, at).map_err(|e| code(&e))
    };
    add(
        &m,
        r#"{"match":{"ops":["read"],"offset":{"min":4096}},"action":{"errno":"EIO"}}"#,
    );
    assert_eq!(read_at(100, 0), Ok(100));
    assert_eq!(read_at(100, 4095), Ok(100));
    assert_eq!(read_at(100, 4096), Err(libc::EIO));
    assert_eq!(read_at(100, 8000), Err(libc::EIO));
    m.faults().clear();

    add(
        &m,
        r#"{"match":{"ops":["read"],"size":{"min":10,"max":20}},"action":{"errno":"EIO"}}"#,
    );
    assert_eq!(read_at(9, 0), Ok(9));
    assert_eq!(read_at(10, 0), Err(libc::EIO));
    assert_eq!(read_at(20, 0), Err(libc::EIO));
    assert_eq!(read_at(21, 0), Ok(21));
    let list = m.faults().list();
    assert_eq!((list[0].matched, list[0].hits), (2, 2));
}

// ---------------------------------------------------------------------------------------------
// Bad rules and bad protocol lines through the socket

/// A raw connection to a mount's control socket.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(m: &TempMount) -> Conn {
        let path = rawfs::control::socket_path(m.path()).expect("socket path");
        let writer = UnixStream::connect(&path).expect("connect to the control socket");
        writer.set_read_timeout(Some(WAIT)).unwrap();
        Conn {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    /// Sends one line (a newline is added) and returns the answer line, parsed.
    fn ask(&mut self, line: &str) -> Value {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
        let mut answer = String::new();
        self.reader.read_line(&mut answer).expect("an answer");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
    }

    fn ask_json(&mut self, v: Value) -> Value {
        self.ask(&v.to_string())
    }
}

/// The rules of a mount as `fault_list` answers them.
fn listed(c: &mut Conn) -> Value {
    let a = c.ask(r#"{"v":1,"cmd":"fault_list"}"#);
    assert_eq!(a["ok"], json!(true), "{a}");
    a["rules"].clone()
}

#[test]
fn bad_rules_and_bad_lines_on_the_socket_are_refused_and_leave_the_rules_alone() {
    let m = mount_or_skip!();
    let mut c = Conn::open(&m);
    let a = c.ask(
        r#"{"v":1,"cmd":"fault_add","rules":[{"match":{"ops":["read"]},"action":{"errno":"EIO"}}]}"#,
    );
    assert_eq!(a["ok"], json!(true), "{a}");
    assert_eq!(a["ids"], json!([1]));
    let before = listed(&mut c);
    assert_eq!(before.as_array().unwrap().len(), 1);

    let hold = json!("hold");
    for (rule, names) in [
        (
            json!({"match": {"ops": ["reed"]}, "action": {"errno": "EIO"}}),
            "unknown operation \"reed\"",
        ),
        (
            json!({"action": {"errno": "EBOGUS"}}),
            "unknown errno \"EBOGUS\"",
        ),
        (
            json!({"action": {"errno": "EIO"}, "colour": 1}),
            "unknown field `colour`",
        ),
        (
            json!({"match": {"path": "/a/[b"}, "action": hold}),
            "match.path",
        ),
        (
            json!({"match": {"size": {"min": 5, "max": 1}}, "action": hold}),
            "impossible range: min 5 > max 1",
        ),
        (
            json!({"when": {"probability": {"p": 2}}, "action": hold}),
            "between 0 and 1",
        ),
        (
            json!({"match": {"ops": ["read"]}, "action": {"short": 0}}),
            "action.short must be at least 1",
        ),
        (
            json!({"match": {"ops": ["open"]}, "action": {"short": 1}}),
            "applies to read or write",
        ),
    ] {
        let a = c.ask_json(json!({"v": 1, "cmd": "fault_add", "rules": [rule]}));
        assert_eq!(a["ok"], json!(false), "{rule} was accepted: {a}");
        let err = a["error"].as_str().unwrap_or_default();
        assert!(
            err.contains(names),
            "{rule}: error {err:?} should name {names:?}"
        );
    }
    // All or none: a good rule before a bad one is not added either.
    let a = c.ask_json(json!({"v": 1, "cmd": "fault_add", "rules": [
        {"action": "hold"}, {"action": {"errno": "ENOPE"}}]}));
    assert_eq!(a["ok"], json!(false));
    assert!(a["error"].as_str().unwrap().starts_with("rule 2: "), "{a}");
    // Lines that are not JSON, or too long, get an error; the connection goes on.
    let a = c.ask("this is not json");
    assert_eq!(a["ok"], json!(false));
    assert!(a["error"].as_str().unwrap().contains("not JSON"), "{a}");
    let a = c.ask(&"x".repeat(70 * 1024));
    assert_eq!(a["ok"], json!(false));
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("longer than 65536 bytes"),
        "{a}"
    );
    assert_eq!(listed(&mut c), before);

    // A client that goes away in the middle of a command, or while it waits for holds.
    let mut half = Conn::open(&m);
    half.writer
        .write_all(br#"{"v":1,"cmd":"fault_add","rules":[{"action":"ho"#)
        .unwrap();
    drop(half);
    let mut waiting = Conn::open(&m);
    waiting
        .writer
        .write_all(b"{\"v\":1,\"cmd\":\"holds\",\"wait_for\":3,\"timeout_ms\":60000}\n")
        .unwrap();
    drop(waiting);
    let start = Instant::now();
    let mut next = Conn::open(&m);
    assert_eq!(listed(&mut next), before);
    assert!(start.elapsed() < Duration::from_secs(2));
    // Refused rules used no ids: the next rule added is rule 2.
    let a = next
        .ask(r#"{"v":1,"cmd":"fault_add","rules":[{"match":{"ops":["mknod"]},"action":"hold"}]}"#);
    assert_eq!(a["ids"], json!([2]), "{a}");
    assert_eq!(m.faults().list().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// The CLI

impl Runtime {
    /// Runs `rawfs ARGS`, asserting it exits 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        text(&self.rawfs_ok(args).stdout)
    }

    /// Runs `rawfs ARGS`, asserting it fails; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.rawfs(args);
        assert!(
            !out.status.success(),
            "rawfs {args:?} should fail\nstdout: {}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// A file in the runtime directory holding `content`.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.path().join(name);
        fs::write(&p, content).unwrap();
        p
    }
}

impl Daemon {
    /// `rawfs fault SUB MP ARGS...`, asserting success; returns stdout.
    fn fault(&self, sub: &str, args: &[&str]) -> String {
        let mut all = vec!["fault", sub, self.mp()];
        all.extend_from_slice(args);
        self.rt.ok(&all)
    }

    /// The rules, one JSON object each, as `rawfs fault list --json` prints them.
    fn rules(&self) -> Vec<Value> {
        self.fault("list", &["--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON rule"))
            .collect()
    }
}

/// `sh -c SCRIPT` from `/`, in the background.
fn sh_kid(script: &str) -> Kid {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null());
    Kid::spawn(c)
}

#[test]
fn cli_adds_lists_with_counts_and_removes_rules() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    fs::write(d.join("f"), "hello\n").unwrap();
    let id = d.fault(
        "add",
        &[
            "--op", "open", "--path", "/f", "--errno", "EACCES", "--times", "1",
        ],
    );
    assert_eq!(id, "1\n");
    assert_eq!(
        fs::read(d.join("f")).map_err(|e| code(&e)).err(),
        Some(libc::EACCES)
    );
    assert_eq!(fs::read_to_string(d.join("f")).unwrap(), "hello\n");
    assert_eq!(
        d.fault("list", &[]),
        "rule 1: matched 2, fired 1: {\"action\":{\"errno\":\"EACCES\"},\
         \"match\":{\"ops\":[\"open\"],\"path\":\"/f\"},\"when\":{\"times\":1}}\n"
    );
    let rules = d.rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["id"], json!(1));
    assert_eq!(
        (&rules[0]["matched"], &rules[0]["hits"]),
        (&json!(2), &json!(1))
    );

    assert_eq!(
        d.fault(
            "add",
            &[
                "--json",
                r#"{"match":{"ops":["read"]},"action":{"short":1}}"#
            ]
        ),
        "2\n"
    );
    let file = d.rt.file(
        "rules.json",
        r#"[{"match":{"ops":["fsync"]},"action":{"delay":{"ms":1}}},
            {"match":{"ops":["create"],"flags":["O_EXCL"]},"action":{"competitor":{}}}]"#,
    );
    assert_eq!(d.fault("add", &["--file", s(&file)]), "3 4\n");
    d.fault("rm", &["1", "3"]);
    let ids: Vec<Value> = d.rules().iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!(2), json!(4)]);
    let err = d.rt.fails(&["fault", "rm", d.mp(), "9"]);
    assert!(err.contains("no rule with id [9]"), "{err}");
}

#[test]
fn cli_holds_waits_for_a_held_write_and_release_or_clear_lets_it_go() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    d.fault("add", &["--op", "write", "--path", "/h*", "--hold"]);

    let kid = sh_kid(&format!("echo one > {}", d.join("h1")));
    let held = d.fault("holds", &["--wait", "1"]);
    assert!(
        held.starts_with("hold 1: rule 1, #") && held.contains(r#" sh] write("/h1") waiting "#),
        "{held}"
    );
    let json_line = d.fault("holds", &["--json"]);
    let h: Value = serde_json::from_str(json_line.trim()).unwrap();
    assert_eq!(
        (&h["hold"], &h["op"], &h["comm"]),
        (&json!(1), &json!("write"), &json!("sh"))
    );
    assert_eq!(d.fault("release", &["1"]), "1\n");
    kid.finish_ok();
    assert_eq!(fs::read_to_string(d.join("h1")).unwrap(), "one\n");
    let err = d.rt.fails(&["fault", "release", d.mp(), "1"]);
    assert!(err.contains("no request is held with hold id 1"), "{err}");
    let err =
        d.rt.fails(&["fault", "holds", d.mp(), "--wait", "1", "--timeout", "100"]);
    assert!(err.contains("only 0 requests held after 100 ms"), "{err}");

    // clear removes the rule and lets what it held go on.
    let kid = sh_kid(&format!("echo two > {}", d.join("h2")));
    d.fault("holds", &["--wait", "1"]);
    let out = d.rt.rawfs(&["fault", "clear", d.mp()]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "removed 1 rule\n");
    kid.finish_ok();
    assert_eq!(fs::read_to_string(d.join("h2")).unwrap(), "two\n");
    assert!(d.rules().is_empty());
}

#[test]
fn cli_refuses_bad_rules_naming_the_problem_and_keeps_the_rules_set() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    d.fault("add", &["--op", "read", "--errno", "EIO"]);
    let before = d.rules();
    let mp = d.mp();
    for (args, names) in [
        (
            vec!["--op", "reed", "--errno", "EIO"],
            "unknown operation \"reed\"",
        ),
        (vec!["--errno", "EBOGUS"], "unknown errno \"EBOGUS\""),
        (
            vec!["--json", r#"{"action":{"errno":"EIO"},"colour":1}"#],
            "unknown field `colour`",
        ),
        (
            vec!["--path", "/a/[b", "--hold"],
            "match.path: bad path glob",
        ),
        (
            vec!["--size", "5..1", "--hold"],
            "impossible range: min 5 > max 1",
        ),
        (
            vec![
                "--json",
                r#"{"match":{"offset":{"min":5,"max":1}},"action":"hold"}"#,
            ],
            "match.offset: impossible range",
        ),
        (
            vec!["--probability", "2", "--hold"],
            "between 0 and 1, not 2",
        ),
        (
            vec!["--op", "read", "--short", "0"],
            "action.short must be at least 1",
        ),
        (vec!["--kill", "SIGFOO"], "unknown signal \"SIGFOO\""),
        (vec!["--json", "[1,"], "not JSON"),
        (
            vec!["--file", "/nonexistent/rules.json"],
            "cannot read /nonexistent/rules.json",
        ),
    ] {
        let mut all = vec!["fault", "add", mp];
        all.extend_from_slice(&args);
        let err = d.rt.fails(&all);
        assert!(
            err.contains(names),
            "{args:?}: stderr {err:?} should name {names:?}"
        );
    }
    assert_eq!(d.rules(), before);
    // Refused rules used no ids.
    assert_eq!(d.fault("add", &["--op", "mkdir", "--hold"]), "2\n");
}

#[test]
fn mount_and_run_apply_a_rules_file_from_the_start() {
    fuse_or_skip!();
    let rt = Runtime::new();
    let rules = rt.file(
        "rules.json",
        r#"[{"match":{"ops":["write"],"path":"/f"},"when":{"nth":2},"action":{"errno":"ENOSPC"}}]"#,
    );
    let program = "import os\n\
        fd = os.open('f', os.O_WRONLY | os.O_CREAT, 0o644)\n\
        for _ in range(3):\n    \
            try:\n        print(os.write(fd, b'ab'))\n    \
            except OSError as e:\n        print(os.strerror(e.errno))\n";
    let trace = rt.0.path().join("trace.jsonl");
    let out = rt
        .command(&[
            "run",
            "--faults",
            s(&rules),
            "--trace-format",
            "jsonl",
            "--trace-output",
            s(&trace),
            "--",
            "python3",
            "-c",
            program,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2\nNo space left on device\n2\n");
    let (_, ev) = rawfs::trace::format::read_jsonl(BufReader::new(File::open(&trace).unwrap()))
        .expect("the trace");
    let failed: Vec<_> = on(&ev, Op::Write, "/f")
        .into_iter()
        .filter(|e| e.rule == Some(1))
        .collect();
    assert_eq!(failed.len(), 1, "trace:\n{}", dump(&ev));
    assert_eq!(failed[0].fault.as_deref(), Some("errno ENOSPC"));

    // mount --faults: the daemon starts with the rules (ids from 1).
    let d = Daemon::start(&["--faults", s(&rules)]);
    let mut f = File::create(d.join("f")).unwrap();
    f.write_all(b"ab").unwrap();
    assert_eq!(
        f.write_all(b"ab").map_err(|e| code(&e)).err(),
        Some(libc::ENOSPC)
    );
    let listed = d.rules();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (&listed[0]["id"], &listed[0]["hits"]),
        (&json!(1), &json!(1))
    );

    // A bad rules file is refused before anything is mounted.
    let bad = rt.file("bad.json", r#"{"action":{"errno":"EWHAT"}}"#);
    let dir = tempfile::tempdir().unwrap();
    let err = rt.fails(&["mount", "--daemon", "--faults", s(&bad), s(dir.path())]);
    assert!(err.contains("unknown errno \"EWHAT\""), "{err}");
    assert!(!rawfs::mount::is_rawfs_mount(dir.path()));
    let err = rt.fails(&["run", "--faults", s(&bad), "--", "true"]);
    assert!(err.contains("unknown errno \"EWHAT\""), "{err}");
}

/// An errno on `release` or `forget` goes to the kernel, which ignores it: it has let go of
/// the handle and the inode whatever the answer, and so does the tree. (Before, the fault
/// kept the tree from closing the file, and an unlinked file's space was never freed.)
#[test]
fn an_errno_on_release_or_forget_is_recorded_and_the_file_is_let_go_all_the_same() {
    let m = mount_or_skip!();
    let id = add(
        &m,
        r#"{"match":{"ops":["release","forget"]},"action":{"errno":"EIO"}}"#,
    );
    let p = m.join("f");
    fs::write(&p, vec![7u8; 1 << 20]).unwrap();
    fs::remove_file(&p).unwrap();
    let deadline = Instant::now() + WAIT;
    while m.fs().bytes_used() != 0 {
        assert!(
            Instant::now() < deadline,
            "the unlinked file's space was never freed: {} bytes used",
            m.fs().bytes_used()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let all = events(&m);
    for op in [Op::Release, Op::Forget] {
        assert!(
            all.iter()
                .any(|e| e.op == op && e.rule == Some(id) && e.errno.as_deref() == Some("EIO")),
            "no {} answered EIO by the rule:\n{}",
            op.name(),
            dump(&all)
        );
    }
}
