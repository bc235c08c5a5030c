//! The trace through a real mount: real programs (python3, coreutils, sh) and libc calls from
//! this process run against a `TempMount`, and each test asserts the exact events rawfs
//! recorded for them: operation, path, flags, mode, sizes, offsets, results, errnos and the
//! caller (pid, tid, comm).
//!
//! What the kernel sends decides what can be recorded; the facts these tests pin down (on
//! Linux 6.x, python 3.11, coreutils 9.1, dash):
//! - The kernel strips O_CLOEXEC before a file is opened (`build_open_flags`), so no CREATE or
//!   OPEN ever carries it, even though python and mkstemp pass it. It adds O_LARGEFILE to
//!   every open of a 64-bit process.
//! - O_CREAT|O_EXCL reaches rawfs only in CREATE. On a name that exists, the kernel answers
//!   EEXIST itself after a successful LOOKUP: no CREATE is sent.
//! - With `atomic_o_trunc`, O_TRUNC of an existing file arrives in OPEN and no SETATTR follows.
//! - With FOPEN_DIRECT_IO, a read(2) is one READ of the application's size: python's
//!   unbuffered `read(n)` asks for n bytes, its buffered reader for st_blksize (4096).
//! - Release (last close) is sent asynchronously after close(2) returns, with no caller
//!   (tid 0); rawfs credits it to the process that opened the handle.
//!
//! The recorder is asynchronous: an event is handed to the collector before the request is
//! answered, but the collector may store it a moment later. Tests therefore wait for the event
//! they expect ([`wait_for`]), or for a "fence" request issued after the workload ([`fence`]):
//! the collector stores events in the order they were handed over, so once the fence is stored,
//! every request the workload made synchronously is stored too, and an absent event is really
//! absent.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rawfs::trace::flags::O_LARGEFILE;
use rawfs::trace::recorder::{Store, TraceConfig};
use rawfs::trace::{Event, FORMAT_VERSION, Header, Op};
use rawfs::{MountConfig, TempMount};

use crate::common::{cpath, errno};
use crate::mount_or_skip;

/// How long a test waits for an event the collector has yet to store.
const WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The mount's trace buffer (recording is on in every mount but one test's).
fn store(m: &TempMount) -> Arc<Store> {
    m.trace().expect("recording is on").clone()
}

/// The events, one JSON object per line, for failure messages.
fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).expect("event serializes"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every stored event, once one of them satisfies `pred` (waiting up to [`WAIT`] for the
/// collector), with every request numbered before it; panics with the trace if none does.
fn wait_for(store: &Store, what: &str, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (events, _) = store.since(0);
        if events.iter().any(&pred) {
            // An event is stored after its request is answered: one numbered before the match
            // (a write answered just before the flush and release that follow it) may still
            // be on its way.
            assert!(store.sync(WAIT), "requests not stored within {WAIT:?}");
            return store.since(0).0;
        }
        if Instant::now() >= deadline {
            panic!(
                "no event for {what} within {WAIT:?}; trace:\n{}",
                dump(&events)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Issues a request after the workload (a lookup of a unique missing name) and waits until it
/// is stored: then every request made before it is stored too. Returns all stored events.
fn fence(m: &TempMount) -> Vec<Event> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(".fence-{}", N.fetch_add(1, Ordering::Relaxed));
    assert!(fs::symlink_metadata(m.join(&name)).is_err());
    let path = format!("/{name}");
    wait_for(&store(m), "the fence lookup", |e| {
        e.op == Op::Lookup && e.path.as_deref() == Some(&path)
    })
}

/// The one event matching `pred`; panics with the trace if there are none or several.
fn one<'a>(events: &'a [Event], what: &str, pred: impl Fn(&Event) -> bool) -> &'a Event {
    let found: Vec<&Event> = events.iter().filter(|e| pred(e)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {what}; trace:\n{}",
        dump(events)
    );
    found[0]
}

/// The events matching `pred`, in sequence order.
fn all(events: &[Event], pred: impl Fn(&Event) -> bool) -> Vec<&Event> {
    events.iter().filter(|e| pred(e)).collect()
}

/// True if `e` is an `op` on `path`.
fn is(e: &Event, op: Op, path: &str) -> bool {
    e.op == op && e.path.as_deref() == Some(path)
}

/// The access mode bits of an event's open flags.
fn accmode(e: &Event) -> i32 {
    e.flags.expect("open flags") & libc::O_ACCMODE
}

/// This process's umask, from /proc (reading it with umask(2) would change it for a moment
/// under the other tests' threads).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line.trim(), 8).expect("octal umask")
}

/// The calling thread's id.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// This process's command name.
fn own_comm() -> String {
    fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end()
        .to_string()
}

/// A python3 run: its own pid and command name, as it saw them, and the rest of its output.
struct Py {
    pid: u32,
    comm: String,
    out: String,
}

/// Runs `script` with python3 (argv[1..] = `args`), from `/` so that nothing but the script
/// touches the mount (a pyenv shim looks for `.python-version` in the working directory).
/// The script's first output line is python's own pid and /proc/self/comm: `python3` may be
/// a shim that execs the interpreter, and the trace must name the interpreter.
fn python(script: &str, args: &[&str]) -> Py {
    let program = format!(
        "import os, sys\nprint(os.getpid(), open('/proc/self/comm').read().strip(), flush=True)\n{script}"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (first, rest) = stdout.split_once('\n').expect("pid line");
    let (pid, comm) = first.split_once(' ').expect("pid and comm");
    Py {
        pid: pid.parse().expect("pid"),
        comm: comm.to_string(),
        out: rest.to_string(),
    }
}

/// Runs `program` with `args` from `/`, asserting it succeeds; returns its pid.
fn run(program: &str, args: &[&str]) -> u32 {
    let child = Command::new(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// A path as a &str, for command lines.
fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `len` bytes that differ from block to block, so a misplaced block shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Exclusive create

#[test]
fn python_open_x_records_one_exclusive_create_and_the_kernel_answers_the_second_eexist() {
    let m = mount_or_skip!();
    let st = store(&m);
    let p = m.join("x");

    let first = python("open(sys.argv[1], 'x').close()", &[s(&p)]);
    // The create and the open handle it returned: flush and (asynchronous) release use it.
    let events = wait_for(&st, "the release of /x", |e| is(e, Op::Release, "/x"));
    let create = one(&events, "create of /x", |e| is(e, Op::Create, "/x"));
    assert!(create.ok(), "{create:?}");
    let flags = create.flags.expect("create flags");
    assert_eq!(accmode(create), libc::O_WRONLY);
    assert!(create.has_flags(libc::O_CREAT | libc::O_EXCL | O_LARGEFILE));
    // python passes O_CLOEXEC, but the kernel keeps it in the descriptor table and strips it
    // from the file's flags before any file system sees them.
    assert_eq!(flags & libc::O_CLOEXEC, 0, "{create:?}");
    assert_eq!(
        create.flags_str.as_deref(),
        Some("O_WRONLY|O_CREAT|O_EXCL|O_LARGEFILE")
    );
    assert!(create.flags_str.as_deref().unwrap().contains("O_EXCL"));
    assert_eq!(create.mode, Some(libc::S_IFREG | (0o666 & !umask())));
    assert_eq!(create.ino, Some(1), "the parent is the root");
    let ino = fs::metadata(&p).unwrap().ino();
    assert_eq!(create.out_ino, Some(ino));
    let fh = create.out_fh.expect("create returns a file handle");
    assert_eq!(create.pid, first.pid);
    assert_eq!(create.tid, first.pid, "python's main thread");
    assert_eq!(&*create.comm, first.comm);
    assert!(create.comm.starts_with("python"), "{:?}", create.comm);
    // The lookup that found the name missing comes first; close is a flush then a release,
    // both on the handle create returned.
    let lookup = one(&events, "lookup of /x", |e| is(e, Op::Lookup, "/x"));
    assert_eq!(lookup.errno.as_deref(), Some("ENOENT"));
    assert!(lookup.seq < create.seq);
    let flush = one(&events, "flush of /x", |e| is(e, Op::Flush, "/x"));
    let release = one(&events, "release of /x", |e| is(e, Op::Release, "/x"));
    assert_eq!((flush.fh, release.fh), (Some(fh), Some(fh)));
    assert!(create.seq < flush.seq && flush.seq < release.seq);
    assert_eq!(
        (release.tid, release.pid),
        (0, first.pid),
        "credited to the opener"
    );
    let before = events.last().unwrap().seq;

    // The second exclusive open fails with EEXIST, decided by the kernel: it looks the name
    // up, finds it, and never sends CREATE, so rawfs sees a successful lookup and no flags.
    let second = python(
        "try:\n    open(sys.argv[1], 'x')\nexcept FileExistsError:\n    print('EEXIST')",
        &[s(&p)],
    );
    assert_eq!(second.out.trim(), "EEXIST");
    let events: Vec<Event> = fence(&m).into_iter().filter(|e| e.seq > before).collect();
    let lookup = one(&events, "second lookup of /x", |e| {
        is(e, Op::Lookup, "/x") && e.pid == second.pid
    });
    assert!(lookup.ok());
    assert_eq!(lookup.out_ino, Some(ino));
    assert!(
        all(&events, |e| e.op == Op::Create).is_empty(),
        "no second create:\n{}",
        dump(&events)
    );
    assert!(all(&events, |e| e.op == Op::Open).is_empty());
}

#[test]
fn os_open_excl_and_mkstemp_record_their_create_flags_and_modes() {
    let m = mount_or_skip!();
    let p = m.join("o");

    let run = python(
        "os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)",
        &[s(&p)],
    );
    let events = fence(&m);
    let create = one(&events, "create of /o", |e| is(e, Op::Create, "/o"));
    assert_eq!(
        create.flags,
        Some(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | O_LARGEFILE)
    );
    // os.open's default mode is 0777.
    assert_eq!(create.mode, Some(libc::S_IFREG | (0o777 & !umask())));
    assert_eq!(create.pid, run.pid);
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o777 & !umask());

    // mkstemp: O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC and mode 0600; O_CLOEXEC never
    // reaches the file system.
    let run = python(
        "import tempfile\nprint(tempfile.mkstemp(dir=sys.argv[1])[1])",
        &[s(m.path())],
    );
    let made = Path::new(run.out.trim());
    assert_eq!(made.parent(), Some(m.path()));
    let name = format!("/{}", made.file_name().unwrap().to_str().unwrap());
    let events = fence(&m);
    let create = one(&events, "create by mkstemp", |e| is(e, Op::Create, &name));
    assert_eq!(
        create.flags,
        Some(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | O_LARGEFILE)
    );
    assert_eq!(
        create.flags_str.as_deref(),
        Some("O_RDWR|O_CREAT|O_EXCL|O_LARGEFILE|O_NOFOLLOW")
    );
    assert_eq!(create.mode, Some(libc::S_IFREG | 0o600));
    assert_eq!((create.pid, &*create.comm), (run.pid, run.comm.as_str()));
    assert!(create.out_fh.is_some() && create.out_ino.is_some());
}

// ---------------------------------------------------------------------------------------------
// Read sizes

#[test]
fn unbuffered_python_read_asks_for_n_bytes_and_buffered_read_for_a_block() {
    let m = mount_or_skip!();
    let p = m.join("data");
    fs::write(&p, pattern(10_000)).unwrap();
    let blksize = fs::metadata(&p).unwrap().blksize();
    assert_eq!(blksize, 4096, "rawfs reports st_blksize 4096");

    // Unbuffered: read(123) is one read(2) of 123 bytes, and with FOPEN_DIRECT_IO one READ
    // of 123 bytes.
    let raw = python(
        "f = open(sys.argv[1], 'rb', buffering=0)\nprint(len(f.read(123)))",
        &[s(&p)],
    );
    assert_eq!(raw.out.trim(), "123");
    let events = fence(&m);
    let read = one(&events, "unbuffered read", |e| {
        e.op == Op::Read && e.pid == raw.pid
    });
    assert_eq!(read.path.as_deref(), Some("/data"));
    assert_eq!(
        (read.offset, read.size, read.returned),
        (Some(0), Some(123), Some(123))
    );
    assert_eq!(read.file_size, Some(10_000));
    assert!(!read.short);
    assert_eq!(read.flags, Some(libc::O_RDONLY | O_LARGEFILE));

    // Buffered: read(1) fills python's buffer first. open() sizes the buffer from st_blksize
    // (io.DEFAULT_BUFFER_SIZE, 8192, only when st_blksize is unusable), so the one READ asks
    // for 4096 bytes: the trace shows the library's request, not the application's.
    let buffered = python(
        "f = open(sys.argv[1], 'rb')\nprint(len(f.read(1)))",
        &[s(&p)],
    );
    assert_eq!(buffered.out.trim(), "1");
    let events = fence(&m);
    let read = one(&events, "buffered read", |e| {
        e.op == Op::Read && e.pid == buffered.pid
    });
    assert_eq!(
        (read.offset, read.size, read.returned),
        (Some(0), Some(blksize), Some(blksize))
    );
    assert_ne!(read.size, Some(1));
    // The buffered open also asks isatty(), an ioctl (TCGETS) rawfs refuses.
    let ioctl = one(&events, "isatty ioctl", |e| {
        e.op == Op::Ioctl && e.pid == buffered.pid
    });
    assert_eq!(ioctl.flags, Some(libc::TCGETS as i32));
    assert!(!ioctl.ok());
}

// ---------------------------------------------------------------------------------------------
// Appends, cp, mv, shell redirection

#[test]
fn appends_from_two_processes_carry_o_append_and_tile_the_file() {
    let m = mount_or_skip!();
    let p = m.join("log");
    fs::write(&p, b"").unwrap();
    let before = fence(&m).last().unwrap().seq;

    // Two shells append concurrently, three times each, with `>>` (a fresh open each time).
    let script = |chunk: &str| format!("for i in 1 2 3; do printf {chunk} >> {}; done", s(&p));
    let spawn = |chunk: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(script(chunk))
            .current_dir("/")
            .spawn()
            .expect("spawn sh")
    };
    let (mut a, mut b) = (spawn("AAAA"), spawn("BBBBBB"));
    let (pid_a, pid_b) = (a.id(), b.id());
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());

    let events: Vec<Event> = fence(&m).into_iter().filter(|e| e.seq > before).collect();
    // The file exists, so `>>` (O_WRONLY|O_CREAT|O_APPEND) arrives as OPEN without the create
    // bits, six times.
    let opens = all(&events, |e| is(e, Op::Open, "/log"));
    assert_eq!(opens.len(), 6, "{}", dump(&events));
    for o in &opens {
        assert_eq!(o.flags, Some(libc::O_WRONLY | libc::O_APPEND | O_LARGEFILE));
        assert_eq!(
            o.flags_str.as_deref(),
            Some("O_WRONLY|O_APPEND|O_LARGEFILE")
        );
    }
    assert!(all(&events, |e| e.op == Op::Create).is_empty());
    let mut writes = all(&events, |e| is(e, Op::Write, "/log"));
    assert_eq!(writes.len(), 6, "{}", dump(&events));
    for w in &writes {
        assert!(w.has_flags(libc::O_APPEND), "{w:?}");
        let want = if w.pid == pid_a {
            4
        } else {
            assert_eq!(w.pid, pid_b, "{w:?}");
            6
        };
        assert_eq!((w.size, w.returned), (Some(want), Some(want)), "{w:?}");
        assert!(w.ok() && !w.short);
    }
    assert_eq!(
        all(&events, |e| e.op == Op::Write && e.pid == pid_a).len(),
        3
    );
    // The kernel places each append at the end: sorted by offset the writes tile the file
    // with no gap or overlap, and the content is the chunks in that order.
    writes.sort_by_key(|w| w.offset);
    let mut end = 0u64;
    let mut expected = Vec::new();
    for w in &writes {
        assert_eq!(w.offset, Some(end as i64), "{}", dump(&events));
        end += w.size.unwrap();
        expected.extend_from_slice(if w.pid == pid_a { b"AAAA" } else { b"BBBBBB" });
    }
    assert_eq!(end, 30);
    assert_eq!(fs::read(&p).unwrap(), expected);
}

#[test]
fn cp_creates_the_destination_and_moves_every_byte() {
    let m = mount_or_skip!();
    let (src, dst) = (m.join("src"), m.join("dst"));
    let data = pattern(100_000);
    fs::write(&src, &data).unwrap();
    let src_ino = fs::metadata(&src).unwrap().ino();
    let before = fence(&m).last().unwrap().seq;

    let pid = run("cp", &[s(&src), s(&dst)]);
    let events: Vec<Event> = wait_for(&store(&m), "cp's release of /dst", |e| {
        is(e, Op::Release, "/dst")
    })
    .into_iter()
    .filter(|e| e.seq > before)
    .collect();
    let open = one(&events, "open of /src", |e| is(e, Op::Open, "/src"));
    assert_eq!(open.flags, Some(libc::O_RDONLY | O_LARGEFILE));
    // cp has seen that dst is missing, so it creates it exclusively (coreutils 9.1:
    // O_WRONLY|O_CREAT|O_EXCL), with the source's permissions.
    let create = one(&events, "create of /dst", |e| is(e, Op::Create, "/dst"));
    assert_eq!(accmode(create), libc::O_WRONLY);
    assert!(create.has_flags(libc::O_CREAT | libc::O_EXCL), "{create:?}");
    assert_eq!(create.mode, Some(libc::S_IFREG | (0o666 & !umask())));
    assert_eq!((create.pid, &*create.comm), (pid, "cp"));
    let (in_fh, out_fh) = (open.out_fh.unwrap(), create.out_fh.unwrap());
    let dst_ino = create.out_ino.unwrap();

    // The data moves by copy_file_range (coreutils 9.1 tries it first) or by read and write;
    // either way the requests cover the file once, in order, between the two handles.
    let copies = all(&events, |e| e.op == Op::CopyFileRange);
    let mut moved = 0u64;
    if !copies.is_empty() {
        for c in &copies {
            assert_eq!((c.ino, c.fh), (Some(src_ino), Some(in_fh)), "{c:?}");
            assert_eq!((c.ino2, c.fh2), (Some(dst_ino), Some(out_fh)), "{c:?}");
            assert_eq!(c.path2.as_deref(), Some("/dst"));
            assert_eq!(c.offset, Some(moved as i64), "{c:?}");
            moved += c.returned.expect("copied bytes");
        }
        assert!(all(&events, |e| e.op == Op::Write).is_empty());
    } else {
        for w in all(&events, |e| is(e, Op::Write, "/dst")) {
            assert_eq!(
                (w.fh, w.offset),
                (Some(out_fh), Some(moved as i64)),
                "{w:?}"
            );
            moved += w.returned.expect("written bytes");
        }
        let read: u64 = all(&events, |e| is(e, Op::Read, "/src"))
            .iter()
            .map(|r| r.returned.unwrap())
            .sum();
        assert_eq!(read, data.len() as u64);
    }
    assert_eq!(moved, data.len() as u64, "{}", dump(&events));
    assert_eq!(fs::read(&dst).unwrap(), data);

    // Onto an existing file cp opens it with O_TRUNC, which arrives in OPEN (atomic_o_trunc):
    // no create, no setattr.
    let pid = run("cp", &[s(&src), s(&dst)]);
    let events: Vec<Event> = fence(&m).into_iter().filter(|e| e.pid == pid).collect();
    let open = one(&events, "open of /dst", |e| is(e, Op::Open, "/dst"));
    assert_eq!(
        open.flags,
        Some(libc::O_WRONLY | libc::O_TRUNC | O_LARGEFILE)
    );
    assert!(all(&events, |e| e.op == Op::Create || e.op == Op::Setattr).is_empty());
    assert_eq!(fs::read(&dst).unwrap(), data);
}

#[test]
fn mv_records_a_rename_with_both_paths_the_moved_node_and_the_replaced_one() {
    let m = mount_or_skip!();
    fs::write(m.join("a"), b"a").unwrap();
    fs::write(m.join("c"), b"c").unwrap();
    let a_ino = fs::metadata(m.join("a")).unwrap().ino();
    let c_ino = fs::metadata(m.join("c")).unwrap().ino();

    // To a new name: coreutils 9.1 asks renameat2(RENAME_NOREPLACE) first.
    let pid = run("mv", &[s(&m.join("a")), s(&m.join("b"))]);
    let events = fence(&m);
    let rename = one(&events, "rename of /a", |e| e.op == Op::Rename);
    assert_eq!(rename.path.as_deref(), Some("/a"));
    assert_eq!(rename.path2.as_deref(), Some("/b"));
    assert_eq!((rename.ino, rename.ino2), (Some(1), Some(1)));
    assert_eq!(rename.node, Some(a_ino));
    assert_eq!(rename.out_ino, None, "nothing replaced");
    assert_eq!(rename.flags, Some(libc::RENAME_NOREPLACE as i32));
    assert_eq!(rename.flags_str.as_deref(), Some("RENAME_NOREPLACE"));
    assert_eq!((rename.pid, &*rename.comm), (pid, "mv"));
    assert!(rename.ok());
    let before = rename.seq;

    // Over an existing file: a plain rename that reports the inode it replaced.
    run("mv", &[s(&m.join("b")), s(&m.join("c"))]);
    let events: Vec<Event> = fence(&m).into_iter().filter(|e| e.seq > before).collect();
    let rename = one(&events, "rename of /b", |e| e.op == Op::Rename);
    assert_eq!(rename.path.as_deref(), Some("/b"));
    assert_eq!(rename.path2.as_deref(), Some("/c"));
    assert_eq!(rename.node, Some(a_ino));
    assert_eq!(rename.out_ino, Some(c_ino));
    assert_eq!(rename.flags, Some(0));
    assert_eq!(fs::metadata(m.join("c")).unwrap().ino(), a_ino);
}

#[test]
fn shell_redirection_creates_with_o_trunc_then_reopens_with_o_trunc_and_no_setattr() {
    let m = mount_or_skip!();
    let f = m.join("f");
    let script = format!("echo hi > {}", s(&f));

    let pid = run("sh", &["-c", &script]);
    let events = wait_for(&store(&m), "release of /f", |e| is(e, Op::Release, "/f"));
    let create = one(&events, "create of /f", |e| is(e, Op::Create, "/f"));
    assert_eq!(
        create.flags,
        Some(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | O_LARGEFILE)
    );
    assert_eq!(
        create.flags_str.as_deref(),
        Some("O_WRONLY|O_CREAT|O_TRUNC|O_LARGEFILE")
    );
    assert_eq!(create.mode, Some(libc::S_IFREG | (0o666 & !umask())));
    assert_eq!((create.pid, create.tid, &*create.comm), (pid, pid, "sh"));
    let write = one(&events, "write of /f", |e| is(e, Op::Write, "/f"));
    assert_eq!(
        (write.offset, write.size, write.returned),
        (Some(0), Some(3), Some(3))
    );
    assert_eq!(write.fh, create.out_fh);
    // Later requests on the handle carry its flags without the create bits.
    assert_eq!(write.flags, Some(libc::O_WRONLY | O_LARGEFILE));
    let before = events.last().unwrap().seq;

    let pid = run("sh", &["-c", &script]);
    let events: Vec<Event> = wait_for(&store(&m), "second release of /f", |e| {
        is(e, Op::Release, "/f") && e.seq > before
    })
    .into_iter()
    .filter(|e| e.seq > before)
    .collect();
    let open = one(&events, "open of /f", |e| is(e, Op::Open, "/f"));
    assert_eq!(
        open.flags,
        Some(libc::O_WRONLY | libc::O_TRUNC | O_LARGEFILE)
    );
    assert_eq!((open.pid, &*open.comm), (pid, "sh"));
    assert!(
        all(&events, |e| e.op == Op::Setattr || e.op == Op::Create).is_empty(),
        "atomic_o_trunc: the truncation is part of the open\n{}",
        dump(&events)
    );
    let write = one(&events, "second write of /f", |e| is(e, Op::Write, "/f"));
    assert_eq!((write.offset, write.size), (Some(0), Some(3)));
    assert_eq!(fs::read(&f).unwrap(), b"hi\n");
}

// ---------------------------------------------------------------------------------------------
// libc calls from this process

#[test]
fn libc_calls_from_this_thread_are_recorded_in_order_with_exact_fields() {
    let m = mount_or_skip!();
    let p = m.join("c");
    fs::write(&p, pattern(6000)).unwrap();
    let before = fence(&m).last().unwrap().seq;
    let tid = gettid();
    let c = cpath(&p);

    // SAFETY: plain system calls on a descriptor this test owns, with buffers of the sizes
    // given.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "open: errno {}", errno());
        let mut buf = vec![0u8; 4096];
        for (off, len, want) in [(0, 10, 10), (100, 1, 1), (5000, 4096, 1000)] {
            let n = libc::pread(fd, buf.as_mut_ptr().cast(), len, off);
            assert_eq!(n, want, "pread({off}, {len}): errno {}", errno());
        }
        assert_eq!(libc::pwrite(fd, b"hello".as_ptr().cast(), 5, 6000), 5);
        assert_eq!(libc::fsync(fd), 0, "fsync: errno {}", errno());
        assert_eq!(libc::close(fd), 0);
    }

    let events: Vec<Event> = wait_for(&store(&m), "release of /c", |e| {
        is(e, Op::Release, "/c") && e.seq > before
    })
    .into_iter()
    .filter(|e| e.seq > before)
    .collect();
    let io: Vec<&Event> = all(&events, |e| {
        e.path.as_deref() == Some("/c")
            && matches!(
                e.op,
                Op::Open | Op::Read | Op::Write | Op::Fsync | Op::Flush | Op::Release
            )
    });
    let ops: Vec<Op> = io.iter().map(|e| e.op).collect();
    assert_eq!(
        ops,
        [
            Op::Open,
            Op::Read,
            Op::Read,
            Op::Read,
            Op::Write,
            Op::Fsync,
            Op::Flush,
            Op::Release
        ],
        "{}",
        dump(&events)
    );
    let open = io[0];
    assert_eq!(open.flags, Some(libc::O_RDWR | O_LARGEFILE));
    let fh = open.out_fh.expect("open returns a handle");
    let ino = fs::metadata(&p).unwrap().ino();
    let reads: Vec<_> = io[1..4]
        .iter()
        .map(|e| (e.offset, e.size, e.returned, e.file_size, e.short))
        .collect();
    assert_eq!(
        reads,
        [
            (Some(0), Some(10), Some(10), Some(6000), false),
            (Some(100), Some(1), Some(1), Some(6000), false),
            // At end of file: fewer bytes than asked, but not a short read.
            (Some(5000), Some(4096), Some(1000), Some(6000), false),
        ]
    );
    let write = io[4];
    assert_eq!(
        (write.offset, write.size, write.returned, write.short),
        (Some(6000), Some(5), Some(5), false)
    );
    assert_eq!(write.flags, Some(libc::O_RDWR | O_LARGEFILE));
    assert_eq!(io[5].flags, Some(0), "fsync, not fdatasync");
    for e in &io[1..] {
        assert_eq!((e.fh, e.ino), (Some(fh), Some(ino)), "{e:?}");
        assert!(e.ok(), "{e:?}");
    }
    let me = std::process::id();
    let comm = own_comm();
    for e in &io[..7] {
        assert_eq!((e.pid, e.tid), (me, tid), "{e:?}");
        assert_eq!(&*e.comm, comm);
    }
    // The release comes from the kernel (no caller); rawfs credits it to the opener.
    let release = io[7];
    assert_eq!(
        (release.tid, release.pid, &*release.comm),
        (0, me, comm.as_str())
    );
    assert_eq!(release.flags, Some(libc::O_RDWR | O_LARGEFILE));
    assert_eq!(fs::metadata(&p).unwrap().len(), 6005);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn failed_requests_record_their_errno_and_kernel_decided_errors_leave_no_request() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/inner"), b"").unwrap();

    // rawfs answers ENOENT to the lookup of a missing name.
    assert_eq!(
        fs::metadata(m.join("missing")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    // rmdir of a non-empty directory reaches rawfs, which answers ENOTEMPTY.
    assert_eq!(
        fs::remove_dir(m.join("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    // A missing xattr: ENODATA from rawfs.
    let c = cpath(&m.join("d"));
    // SAFETY: valid C strings; a zero-size query writes nothing.
    let r = unsafe { libc::getxattr(c.as_ptr(), c"user.none".as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!((r, errno()), (-1, libc::ENODATA));
    // unlink(2) of a directory fails with EISDIR, decided by the kernel (may_delete) after
    // the lookup: no UNLINK request is sent.
    let c = cpath(&m.join("d"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::unlink(c.as_ptr()) }, -1);
    assert_eq!(errno(), libc::EISDIR);

    let events = fence(&m);
    let lookup = one(&events, "lookup of /missing", |e| {
        is(e, Op::Lookup, "/missing")
    });
    assert_eq!(lookup.errno.as_deref(), Some("ENOENT"));
    assert_eq!(lookup.out_ino, None);
    assert!(!lookup.ok());
    let rmdir = one(&events, "rmdir of /d", |e| is(e, Op::Rmdir, "/d"));
    assert_eq!(rmdir.errno.as_deref(), Some("ENOTEMPTY"));
    assert_eq!(rmdir.node, None, "nothing removed");
    let getxattr = one(&events, "getxattr on /d", |e| is(e, Op::Getxattr, "/d"));
    assert_eq!(getxattr.errno.as_deref(), Some("ENODATA"));
    assert_eq!(getxattr.name.as_deref(), Some("user.none"));
    assert!(
        all(&events, |e| e.op == Op::Unlink).is_empty(),
        "EISDIR is the kernel's: {}",
        dump(&events)
    );
    // Successful requests carry no errno.
    let mkdir = one(&events, "mkdir of /d", |e| is(e, Op::Mkdir, "/d"));
    assert!(mkdir.ok() && mkdir.errno.is_none());
}

// ---------------------------------------------------------------------------------------------
// The trace file, numbering, capacity

#[test]
fn trace_file_has_a_header_then_exactly_the_events_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.jsonl");
    let config = MountConfig {
        trace: TraceConfig {
            file: Some(file.clone()),
            ..TraceConfig::default()
        },
        ..MountConfig::default()
    };
    let m = mount_or_skip!(config);
    let mountpoint = m.path().to_path_buf();
    let st = store(&m);
    fs::write(m.join("f"), b"hello").unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"hello");
    fs::create_dir(m.join("d")).unwrap();
    fs::rename(m.join("f"), m.join("d/g")).unwrap();
    let _ = fs::metadata(m.join("nope"));
    fs::remove_file(m.join("d/g")).unwrap();
    m.unmount().expect("unmount");
    assert!(st.wait_closed(Duration::from_secs(5)), "collector exits");
    let (stored, counts) = st.since(0);

    let text = fs::read_to_string(&file).unwrap();
    let mut lines = text.lines();
    let header: Header = serde_json::from_str(lines.next().expect("header line")).unwrap();
    assert_eq!(header.rawfs_trace, FORMAT_VERSION);
    assert_eq!(header.rawfs_trace, 1);
    assert_eq!(header.rawfs_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(Path::new(&header.mountpoint), mountpoint);
    assert!(header.started_unix_ns > 0);
    let raw: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(raw["rawfs_trace"], 1);

    let mut written: Vec<Event> = lines
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    written.sort_by_key(|e| e.seq);
    assert!(written.len() > 10, "{}", dump(&written));
    assert_eq!(written, stored, "same events, same fields");
    assert_eq!(counts.recorded, written.len() as u64);
    assert_eq!(
        (counts.evicted, counts.dropped, counts.write_errors),
        (0, 0, 0)
    );
    // The workload is in there, with its decoded fields.
    let rename = one(&written, "rename", |e| is(e, Op::Rename, "/f"));
    assert_eq!(rename.path2.as_deref(), Some("/d/g"));
    assert_eq!(rename.flags_str.as_deref(), Some("0"));
    one(&written, "unlink", |e| is(e, Op::Unlink, "/d/g"));
}

#[test]
fn seqs_are_dense_from_one_and_one_threads_timestamps_never_go_back() {
    let m = mount_or_skip!();
    let st = store(&m);
    let tid = gettid();
    let p = m.join("n");
    for i in 0..20u8 {
        fs::write(&p, [i; 100]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), [i; 100]);
        let _ = fs::metadata(m.join("nothing"));
    }
    fs::remove_file(&p).unwrap();
    m.unmount().expect("unmount");
    assert!(st.wait_closed(Duration::from_secs(5)));
    let (events, counts) = st.since(0);

    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let dense: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, dense, "unique, from 1, no gap");
    assert_eq!(counts.recorded, events.len() as u64);
    assert!(events.len() >= 20 * 8, "{}", events.len());
    for e in &events {
        assert!(e.dur_ns > 0, "{e:?}");
    }
    let mine = all(&events, |e| e.tid == tid);
    assert!(mine.len() >= 20 * 6, "{}", mine.len());
    for w in mine.windows(2) {
        assert!(w[0].ts_ns <= w[1].ts_ns, "{:?} then {:?}", w[0], w[1]);
    }
    let distinct: BTreeSet<u64> = mine.iter().map(|e| e.ts_ns).collect();
    assert!(distinct.len() > mine.len() / 2, "timestamps move");
}

#[test]
fn capacity_keeps_the_newest_events_and_counts_the_evicted() {
    let config = MountConfig {
        trace: TraceConfig {
            capacity: 10,
            ..TraceConfig::default()
        },
        ..MountConfig::default()
    };
    let m = mount_or_skip!(config);
    fs::write(m.join("s"), b"").unwrap();
    for _ in 0..100 {
        fs::metadata(m.join("s")).unwrap();
    }
    let events = fence(&m);
    let counts = store(&m).counts();
    assert_eq!(events.len(), 10, "{}", dump(&events));
    assert!(
        counts.recorded >= 100,
        "each stat is at least a getattr: {counts:?}"
    );
    assert_eq!(counts.evicted, counts.recorded - 10, "{counts:?}");
    assert_eq!(counts.dropped, 0);
    // The newest ten: consecutive (one thread made them), ending with the fence.
    let last = events.last().unwrap();
    assert_eq!(last.op, Op::Lookup);
    assert!(last.path.as_deref().unwrap().starts_with("/.fence-"));
    for w in events.windows(2) {
        assert_eq!(w[0].seq + 1, w[1].seq, "{}", dump(&events));
    }
    assert!(
        events[0].seq > counts.recorded - 10 - 5,
        "newest, not oldest"
    );
    // A stat here is a getattr of "/s" (the first one a lookup too).
    for e in &events[..9] {
        assert!(matches!(e.path.as_deref(), Some("/" | "/s")), "{e:?}");
        assert!(matches!(e.op, Op::Lookup | Op::Getattr), "{e:?}");
    }
}

#[test]
fn capacity_zero_records_nothing_and_the_mount_still_works() {
    let config = MountConfig {
        trace: TraceConfig {
            capacity: 0,
            ..TraceConfig::default()
        },
        ..MountConfig::default()
    };
    let m = mount_or_skip!(config);
    assert!(m.trace().is_none());
    fs::write(m.join("f"), b"still works").unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"still works");
    fs::rename(m.join("f"), m.join("g")).unwrap();
    assert_eq!(fs::read_dir(m.path()).unwrap().count(), 1);
    assert!(m.trace().is_none());
    // The status still counts the requests served.
    let mut client = rawfs::control::Client::connect(m.path()).expect("control socket");
    let status = client
        .request(&rawfs::control::Command::Status)
        .expect("status");
    let served = status["requests"].as_u64().expect("requests");
    assert!(served >= 8, "{status}");
    assert!(status["trace"].is_null(), "{status}");
    m.unmount().expect("unmount");
}

#[test]
fn a_process_that_execs_is_named_after_its_new_program_at_once() {
    let m = mount_or_skip!();
    // The builtin `test` makes the shell itself look the name up; then the same process
    // becomes cp, whose create follows within a millisecond or two.
    let probe = m.join("probe");
    let out = m.join("out");
    let script = format!("test -e {}; exec cp /etc/hostname {}", s(&probe), s(&out));
    let pid = run("sh", &["-c", &script]);
    let events = fence(&m);
    let lookup = one(&events, "the shell's lookup", |e| {
        is(e, Op::Lookup, "/probe")
    });
    let create = one(&events, "cp's create", |e| is(e, Op::Create, "/out"));
    assert_eq!((lookup.pid, create.pid), (pid, pid), "{}", dump(&events));
    assert_eq!(&*lookup.comm, "sh");
    assert_eq!(
        &*create.comm,
        "cp",
        "the name must follow the exec:\n{}",
        dump(&events)
    );
}
