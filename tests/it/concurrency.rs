//! Concurrency: threads of this process and separate processes (python3) creating, renaming,
//! unlinking, listing, reading and writing in one mount at the same time.
//!
//! Every workload runs under a deadline, so a deadlock in the daemon fails the test instead of
//! hanging the suite. The only errors tolerated are the ones the races imply: ENOENT for a name
//! someone else removed first, EEXIST for the losers of an O_CREAT|O_EXCL race.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use rawfs::MountConfig;

use crate::common;

/// How long any one workload may take before it counts as a deadlock.
const DEADLINE: Duration = Duration::from_secs(60);

/// Pids of the child processes a workload started, killed if it misses its deadline.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<u32>>>);

impl Children {
    /// Starts `python3 -c program args...` in `dir` with piped stdin and stdout.
    fn python(&self, dir: &Path, program: &str, args: &[String]) -> Child {
        let child = Command::new("python3")
            .arg("-c")
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        self.0.lock().unwrap().push(child.id());
        child
    }

    fn kill_all(&self) {
        for &pid in self.0.lock().unwrap().iter() {
            // SAFETY: kill has no memory effects; a pid that already exited is harmless here
            // (the Child values are still alive in the workload thread, so it is not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Runs `work` on its own thread and fails the test if it has not finished within
/// [`DEADLINE`] (killing the processes it started), instead of hanging forever.
fn with_deadline(what: &str, work: impl FnOnce(Children) + Send + 'static) {
    let children = Children::default();
    let theirs = children.clone();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            // Dropped when `work` returns or panics: either way the receiver wakes up.
            let _done = done_tx;
            work(theirs);
        })
        .expect("spawn workload thread");
    match done_rx.recv_timeout(DEADLINE) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            children.kill_all();
            panic!("{what}: not finished after {DEADLINE:?}: deadlock in the daemon?");
        }
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Waits for a child and fails with its stderr unless it exited 0.
fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait for child");
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads one line from a child's stdout, failing if it ended instead.
fn read_line(r: &mut BufReader<ChildStdout>, what: &str) -> String {
    let mut line = String::new();
    let n = r.read_line(&mut line).expect("read from child");
    assert!(n > 0, "{what} ended early (see its stderr)");
    line.trim_end().to_owned()
}

fn send_line(w: &mut ChildStdin, line: &str) {
    writeln!(w, "{line}").expect("write to child");
    w.flush().expect("flush to child");
}

fn is_enoent(e: &std::io::Error) -> bool {
    common::code(e) == libc::ENOENT
}

fn sorted_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Create, rename through a shared directory, unlink, while others list and read.

/// What worker file `name` (the j-th of its worker) holds; the python worker computes the same.
fn content(name: &str, j: usize) -> Vec<u8> {
    format!("{name}\n").repeat(1 + j % 40).into_bytes()
}

const STABLE: usize = 40;

/// The python worker: the same steps as [`tree_worker`], started by a line on stdin.
const PY_TREE_WORKER: &str = r#"
import os, sys
wid, n = sys.argv[1], int(sys.argv[2])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for j in range(n):
    name = f"{wid}_{j}"
    data = (name + "\n").encode() * (1 + j % 40)
    fd = os.open("work/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    os.rename("work/" + name, "shared/" + name)
    with open("shared/" + name, "rb") as f:
        got = f.read()
    assert got == data, (name, len(got), len(data))
    if j % 3 == 0:
        os.unlink("shared/" + name)
    else:
        os.rename("shared/" + name, "done/" + name)
print("finished")
"#;

/// The python lister: lists `shared` and reads what it finds, `n` times.
const PY_TREE_LISTER: &str = r#"
import os, sys
n, stable = int(sys.argv[1]), int(sys.argv[2])
want = {f"stable_{k}" for k in range(stable)}
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
vanished = 0
for i in range(n):
    names = os.listdir("shared")
    assert len(names) == len(set(names)), ("duplicate names in one listing", sorted(names))
    missing = want - set(names)
    assert not missing, ("stable names missing from a listing", sorted(missing))
    for name in names:
        if name.startswith("stable_"):
            continue
        wid, j = name.rsplit("_", 1)
        data = (name + "\n").encode() * (1 + int(j) % 40)
        try:
            with open("shared/" + name, "rb") as f:
                got = f.read()
        except FileNotFoundError:
            vanished += 1
            continue
        assert got == data, (name, len(got), len(data), got[:40])
print("finished", vanished)
"#;

/// One worker thread: creates `work/{wid}_{j}`, renames it into `shared`, reads it back there,
/// then unlinks it (every third) or renames it on into `done`.
fn tree_worker(root: &Path, wid: &str, n: usize) -> Result<(), String> {
    for j in 0..n {
        let name = format!("{wid}_{j}");
        let data = content(&name, j);
        let work = root.join("work").join(&name);
        let shared = root.join("shared").join(&name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&work)
            .map_err(|e| format!("create {name}: {e}"))?;
        f.write_all(&data)
            .map_err(|e| format!("write {name}: {e}"))?;
        drop(f);
        fs::rename(&work, &shared).map_err(|e| format!("rename {name} to shared: {e}"))?;
        let got = fs::read(&shared).map_err(|e| format!("read back {name}: {e}"))?;
        if got != data {
            return Err(format!(
                "{name}: read back {} bytes, wrote {}",
                got.len(),
                data.len()
            ));
        }
        if j % 3 == 0 {
            fs::remove_file(&shared).map_err(|e| format!("unlink {name}: {e}"))?;
        } else {
            fs::rename(&shared, root.join("done").join(&name))
                .map_err(|e| format!("rename {name} to done: {e}"))?;
        }
    }
    Ok(())
}

/// One lister thread: lists `shared` and `done` until told to stop, reading what it finds.
fn tree_lister(root: &Path, stop: &AtomicBool, vanished: &AtomicUsize) -> Result<usize, String> {
    let stable: BTreeSet<String> = (0..STABLE).map(|k| format!("stable_{k}")).collect();
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) || rounds == 0 {
        rounds += 1;
        let mut seen = BTreeSet::new();
        for e in fs::read_dir(root.join("shared")).map_err(|e| format!("opendir: {e}"))? {
            let name = e
                .map_err(|e| format!("readdir shared: {e}"))?
                .file_name()
                .into_string()
                .map_err(|n| format!("non-UTF-8 name {n:?}"))?;
            if !seen.insert(name.clone()) {
                return Err(format!("{name} listed twice in one pass over shared"));
            }
            if name.starts_with("stable_") {
                continue;
            }
            let j: usize = name
                .rsplit_once('_')
                .and_then(|(_, j)| j.parse().ok())
                .ok_or_else(|| format!("unexpected name {name:?} in shared"))?;
            match fs::read(root.join("shared").join(&name)) {
                Ok(got) if got == content(&name, j) => {}
                Ok(got) => {
                    return Err(format!(
                        "{name} in shared has {} bytes: {:?}",
                        got.len(),
                        String::from_utf8_lossy(&got[..got.len().min(40)])
                    ));
                }
                Err(e) if is_enoent(&e) => {
                    vanished.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("read shared/{name}: {e}")),
            }
        }
        if let Some(missing) = stable.difference(&seen).next() {
            return Err(format!("{missing} missing from a listing of shared"));
        }
        // `done` only grows: everything listed there must be readable, complete.
        for e in fs::read_dir(root.join("done")).map_err(|e| format!("opendir: {e}"))? {
            let name = e
                .map_err(|e| format!("readdir done: {e}"))?
                .file_name()
                .into_string()
                .map_err(|n| format!("non-UTF-8 name {n:?}"))?;
            let j: usize = name
                .rsplit_once('_')
                .and_then(|(_, j)| j.parse().ok())
                .ok_or_else(|| format!("unexpected name {name:?} in done"))?;
            let got = fs::read(root.join("done").join(&name))
                .map_err(|e| format!("read done/{name}: {e}"))?;
            if got != content(&name, j) {
                return Err(format!("done/{name} has {} bytes", got.len()));
            }
        }
    }
    Ok(rounds)
}

/// `threads` worker threads and `procs` worker processes each push `n` files through `shared`,
/// while two lister threads and one lister process list and read it.
fn tree_workload(root: PathBuf, threads: usize, procs: usize, n: usize, children: Children) {
    for d in ["work", "shared", "done"] {
        fs::create_dir(root.join(d)).expect("mkdir");
    }
    for k in 0..STABLE {
        fs::write(root.join("shared").join(format!("stable_{k}")), b"stable").expect("stable");
    }

    // Start the processes first and wait until each is ready, so that they race the threads.
    let mut procs_started: Vec<(String, Child)> = (0..procs)
        .map(|p| {
            let wid = format!("p{p}");
            let c = children.python(&root, PY_TREE_WORKER, &[wid.clone(), n.to_string()]);
            (wid, c)
        })
        .collect();
    procs_started.push((
        "lister".into(),
        children.python(
            &root,
            PY_TREE_LISTER,
            &["150".to_string(), STABLE.to_string()],
        ),
    ));
    for (wid, c) in &mut procs_started {
        let mut out = BufReader::new(c.stdout.take().expect("piped"));
        assert_eq!(read_line(&mut out, wid), "ready");
        c.stdout = Some(out.into_inner());
    }

    let start = Arc::new(Barrier::new(threads + 3));
    let stop = Arc::new(AtomicBool::new(false));
    let vanished = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (root, start) = (root.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                tree_worker(&root, &format!("t{t}"), n)
            })
        })
        .collect();
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let (root, start, stop) = (root.clone(), start.clone(), stop.clone());
            let vanished = vanished.clone();
            thread::spawn(move || {
                start.wait();
                tree_lister(&root, &stop, &vanished)
            })
        })
        .collect();
    start.wait();
    for (_, c) in &mut procs_started {
        send_line(c.stdin.as_mut().expect("piped"), "go");
    }

    let mut errors = Vec::new();
    for (t, w) in workers.into_iter().enumerate() {
        if let Err(e) = w.join().expect("worker thread panicked") {
            errors.push(format!("thread t{t}: {e}"));
        }
    }
    let mut outputs = Vec::new();
    for (wid, c) in procs_started {
        outputs.push(finish(c, &format!("python worker {wid}")));
    }
    stop.store(true, Ordering::Relaxed);
    for l in listers {
        if let Err(e) = l.join().expect("lister thread panicked") {
            errors.push(format!("lister: {e}"));
        }
    }
    assert!(
        errors.is_empty(),
        "unexpected errors:\n{}",
        errors.join("\n")
    );
    assert!(
        outputs.iter().all(|o| o.starts_with("finished")),
        "{outputs:?}"
    );

    // The final tree is exactly what the operations imply.
    let wids: Vec<String> = (0..threads)
        .map(|t| format!("t{t}"))
        .chain((0..procs).map(|p| format!("p{p}")))
        .collect();
    let mut expected_done = BTreeMap::new();
    for wid in &wids {
        for j in (0..n).filter(|j| j % 3 != 0) {
            let name = format!("{wid}_{j}");
            expected_done.insert(name.clone(), content(&name, j));
        }
    }
    assert_eq!(sorted_names(&root.join("work")), BTreeSet::new(), "work");
    assert_eq!(
        sorted_names(&root.join("shared")),
        (0..STABLE).map(|k| format!("stable_{k}")).collect(),
        "shared holds only the stable files"
    );
    let done = sorted_names(&root.join("done"));
    let want: BTreeSet<String> = expected_done.keys().cloned().collect();
    assert_eq!(
        done.difference(&want).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "unexpected names in done"
    );
    assert_eq!(
        want.difference(&done).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "names lost from done"
    );
    for (name, data) in &expected_done {
        let got = fs::read(root.join("done").join(name)).expect("read done file");
        assert!(
            got == *data,
            "done/{name}: {} bytes, want {}",
            got.len(),
            data.len()
        );
    }
    eprintln!(
        "tree workload: {} files kept; lister threads: {} reads lost the race (ENOENT); \
         lister process: {:?}",
        expected_done.len(),
        vanished.load(Ordering::Relaxed),
        outputs.last().map(|o| o.trim())
    );
}

/// An open that wins the race with an unlink (the kernel resolved the name first) must see
/// the file as written, as on tmpfs or ext4: the inode lives while the kernel holds it.
/// Made deterministic with an O_PATH descriptor, which holds the inode without opening it,
/// and a reopen through /proc/self/fd after the unlink.
/// (A change that freed an unlinked file's pages while the kernel still held it made this
/// read zeros, and made the tree workload's listers fail now and then.)
#[test]
fn a_reader_that_wins_the_race_with_unlink_reads_the_whole_file() {
    let m = crate::mount_or_skip!();
    let path = m.join("f");
    fs::write(&path, b"hello world\n").unwrap();
    let held = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&path)
        .expect("O_PATH open");
    fs::remove_file(&path).unwrap();
    use std::os::fd::AsRawFd;
    let got = fs::read(format!("/proc/self/fd/{}", held.as_raw_fd())).expect("reopen");
    assert_eq!(String::from_utf8_lossy(&got), "hello world\n");
    drop(held);
    drop(m);
}

#[test]
fn threads_and_processes_create_rename_unlink_while_others_list() {
    let m = crate::mount_or_skip!();
    let root = m.path().to_path_buf();
    with_deadline("tree workload (4 daemon threads)", move |children| {
        tree_workload(root, 4, 3, 150, children)
    });
    drop(m);
}

#[test]
fn eight_daemon_threads_serve_the_same_workload() {
    // All eight read requests at once, so that requests run in the tree side by side.
    let m = crate::mount_or_skip!(MountConfig {
        threads: 8,
        readers: 8,
        ..MountConfig::default()
    });
    let root = m.path().to_path_buf();
    with_deadline("tree workload (8 daemon threads)", move |children| {
        tree_workload(root, 8, 4, 100, children)
    });
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// Races on one name: exactly one winner for O_EXCL creation, unlink and rename.

const RACE_NAMES: usize = 60;

/// The python contender: for each phase named on stdin, tries the phase's operation on every
/// name and prints "NAME_INDEX won" or "NAME_INDEX lost" for each, then "end".
const PY_CONTENDER: &str = r#"
import os, sys
me, k = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    phase = line.strip()
    out = []
    for i in range(k):
        try:
            if phase == "excl":
                fd = os.open(f"race_{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, me.encode())
                os.close(fd)
            elif phase == "unlink":
                os.unlink(f"race_{i}")
            elif phase == "rename":
                os.rename(f"src_{i}", f"dst_{i}_{me}")
            else:
                raise SystemExit("unknown phase " + phase)
            out.append(f"{i} won")
        except FileExistsError:
            if phase != "excl":
                raise
            out.append(f"{i} lost")
        except FileNotFoundError:
            if phase == "excl":
                raise
            out.append(f"{i} lost")
    out.append("end")
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
"#;

/// One phase on every name from a thread: Ok(won) per name, or the unexpected error.
fn contend(root: &Path, me: &str, phase: &str) -> Result<Vec<bool>, String> {
    (0..RACE_NAMES)
        .map(|i| {
            let r = match phase {
                "excl" => OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(root.join(format!("race_{i}")))
                    .and_then(|mut f| f.write_all(me.as_bytes())),
                "unlink" => fs::remove_file(root.join(format!("race_{i}"))),
                "rename" => fs::rename(
                    root.join(format!("src_{i}")),
                    root.join(format!("dst_{i}_{me}")),
                ),
                _ => unreachable!(),
            };
            let expected_loss = if phase == "excl" {
                libc::EEXIST
            } else {
                libc::ENOENT
            };
            match r {
                Ok(()) => Ok(true),
                Err(e) if common::code(&e) == expected_loss => Ok(false),
                Err(e) => Err(format!("{me}: {phase} race_{i}: {e}")),
            }
        })
        .collect()
}

#[test]
fn exactly_one_winner_per_exclusive_create_unlink_and_rename() {
    let m = crate::mount_or_skip!();
    let root = m.path().to_path_buf();
    with_deadline("name races", move |children| {
        const THREADS: usize = 6;
        const PROCS: usize = 3;
        let mut procs: Vec<(String, Child, BufReader<ChildStdout>)> = (0..PROCS)
            .map(|p| {
                let me = format!("p{p}");
                let mut c =
                    children.python(&root, PY_CONTENDER, &[me.clone(), RACE_NAMES.to_string()]);
                let out = BufReader::new(c.stdout.take().expect("piped"));
                (me, c, out)
            })
            .collect();
        let gate = Arc::new(Barrier::new(THREADS + 1));
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (root, gate, tx) = (root.clone(), gate.clone(), tx.clone());
                thread::spawn(move || {
                    let me = format!("t{t}");
                    for phase in ["excl", "unlink", "rename"] {
                        gate.wait();
                        tx.send((me.clone(), contend(&root, &me, phase))).unwrap();
                    }
                })
            })
            .collect();

        for phase in ["excl", "unlink", "rename"] {
            if phase == "rename" {
                for i in 0..RACE_NAMES {
                    fs::write(root.join(format!("src_{i}")), format!("src {i}")).unwrap();
                }
            }
            for (_, c, _) in &mut procs {
                send_line(c.stdin.as_mut().expect("piped"), phase);
            }
            gate.wait();
            // winners[i] = everyone who won name i in this phase.
            let mut winners: Vec<Vec<String>> = vec![Vec::new(); RACE_NAMES];
            let mut errors = Vec::new();
            for _ in 0..THREADS {
                let (me, r) = rx.recv().unwrap();
                match r {
                    Ok(won) => {
                        for (i, w) in won.into_iter().enumerate() {
                            if w {
                                winners[i].push(me.clone());
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            for (me, _, out) in &mut procs {
                loop {
                    let line = read_line(out, &format!("contender {me} in {phase}"));
                    if line == "end" {
                        break;
                    }
                    let (i, result) = line.split_once(' ').expect("INDEX RESULT");
                    if result == "won" {
                        winners[i.parse::<usize>().unwrap()].push(me.clone());
                    }
                }
            }
            assert!(errors.is_empty(), "{phase}: unexpected errors: {errors:?}");
            for (i, w) in winners.iter().enumerate() {
                assert_eq!(w.len(), 1, "{phase} on name {i}: winners {w:?}");
            }
            // What the winners leave behind.
            let names = sorted_names(&root);
            match phase {
                "excl" => {
                    for (i, w) in winners.iter().enumerate() {
                        let got = fs::read_to_string(root.join(format!("race_{i}"))).unwrap();
                        assert_eq!(got, w[0], "race_{i} holds its creator's id");
                    }
                    assert_eq!(names.len(), RACE_NAMES, "{names:?}");
                }
                "unlink" => assert!(names.is_empty(), "left after unlink: {names:?}"),
                _ => {
                    let want: BTreeSet<String> = winners
                        .iter()
                        .enumerate()
                        .map(|(i, w)| format!("dst_{i}_{}", w[0]))
                        .collect();
                    assert_eq!(names, want);
                    for (i, w) in winners.iter().enumerate() {
                        let got =
                            fs::read_to_string(root.join(format!("dst_{i}_{}", w[0]))).unwrap();
                        assert_eq!(got, format!("src {i}"));
                    }
                }
            }
        }
        for t in threads {
            t.join().expect("contender thread panicked");
        }
        for (me, mut c, _out) in procs {
            // End of input ends the contender.
            drop(c.stdin.take());
            finish(c, &format!("contender {me}"));
        }
    });
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// Writers sharing one file.

const REGION: usize = 256 << 10;
const CHUNK: usize = 4096;

/// What writer `w` puts in chunk `c` of its region; the python writer computes the same.
fn chunk(w: usize, c: usize) -> Vec<u8> {
    let mut v = format!("w{w}c{c:05};").repeat(CHUNK / 8 + 1).into_bytes();
    v.truncate(CHUNK);
    v
}

const PY_REGION_WRITER: &str = r#"
import os, sys
w, region, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
fd = os.open("regions", os.O_WRONLY)
n = region // chunk
# Odd chunks first, then even ones, so regions grow with holes that others' writes cross.
for c in list(range(1, n, 2)) + list(range(0, n, 2)):
    data = (f"w{w}c{c:05};" * (chunk // 8 + 1)).encode()[:chunk]
    assert os.pwrite(fd, data, w * region + c * chunk) == chunk
os.close(fd)
print("finished")
"#;

#[test]
fn writers_to_distinct_regions_of_one_file_do_not_disturb_each_other() {
    let m = crate::mount_or_skip!();
    let root = m.path().to_path_buf();
    with_deadline("region writers", move |children| {
        const THREADS: usize = 4;
        const PROCS: usize = 2;
        let writers = THREADS + PROCS;
        fs::write(root.join("regions"), b"").unwrap();
        let mut procs: Vec<Child> = (THREADS..writers)
            .map(|w| {
                children.python(
                    &root,
                    PY_REGION_WRITER,
                    &[w.to_string(), REGION.to_string(), CHUNK.to_string()],
                )
            })
            .collect();
        for c in &mut procs {
            let mut out = BufReader::new(c.stdout.take().expect("piped"));
            assert_eq!(read_line(&mut out, "region writer"), "ready");
            c.stdout = Some(out.into_inner());
        }
        let gate = Arc::new(Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS)
            .map(|w| {
                let (root, gate) = (root.clone(), gate.clone());
                thread::spawn(move || {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(root.join("regions"))
                        .unwrap();
                    gate.wait();
                    let n = REGION / CHUNK;
                    for c in (1..n).step_by(2).chain((0..n).step_by(2)) {
                        let written = f
                            .write_at(&chunk(w, c), (w * REGION + c * CHUNK) as u64)
                            .unwrap();
                        assert_eq!(written, CHUNK, "short write");
                    }
                })
            })
            .collect();
        gate.wait();
        for c in &mut procs {
            send_line(c.stdin.as_mut().expect("piped"), "go");
        }
        for t in threads {
            t.join().expect("writer thread panicked");
        }
        for c in procs {
            finish(c, "python region writer");
        }
        let got = fs::read(root.join("regions")).unwrap();
        assert_eq!(got.len(), writers * REGION, "file size");
        for w in 0..writers {
            for c in 0..REGION / CHUNK {
                let at = w * REGION + c * CHUNK;
                assert!(
                    got[at..at + CHUNK] == chunk(w, c)[..],
                    "writer {w} chunk {c} at {at}: {:?}...",
                    String::from_utf8_lossy(&got[at..at + 16])
                );
            }
        }
    });
    drop(m);
}

const RECORD: usize = 64;
const RECORDS: usize = 300;

/// Record `seq` of writer `w`: fixed length, newline-terminated; python builds the same.
fn record(w: usize, seq: usize) -> Vec<u8> {
    let head = format!("w{w:02} s{seq:05} ");
    let fill = (b'a' + ((w * 7 + seq) % 26) as u8) as char;
    let mut r = head.into_bytes();
    r.resize(RECORD - 1, fill as u8);
    r.push(b'\n');
    r
}

const PY_APPENDER: &str = r#"
import os, sys
w, records, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
fd = os.open("log", os.O_WRONLY | os.O_APPEND)
for seq in range(records):
    fill = chr(ord("a") + (w * 7 + seq) % 26)
    head = f"w{w:02} s{seq:05} "
    rec = (head + fill * (size - 1 - len(head)) + "\n").encode()
    assert os.write(fd, rec) == size
os.close(fd)
print("finished")
"#;

#[test]
fn append_writers_keep_every_record_whole() {
    let m = crate::mount_or_skip!();
    let root = m.path().to_path_buf();
    with_deadline("append writers", move |children| {
        const THREADS: usize = 4;
        const PROCS: usize = 2;
        let writers = THREADS + PROCS;
        fs::write(root.join("log"), b"").unwrap();
        let mut procs: Vec<Child> = (THREADS..writers)
            .map(|w| {
                children.python(
                    &root,
                    PY_APPENDER,
                    &[w.to_string(), RECORDS.to_string(), RECORD.to_string()],
                )
            })
            .collect();
        for c in &mut procs {
            let mut out = BufReader::new(c.stdout.take().expect("piped"));
            assert_eq!(read_line(&mut out, "appender"), "ready");
            c.stdout = Some(out.into_inner());
        }
        let gate = Arc::new(Barrier::new(THREADS + 2));
        let stop = Arc::new(AtomicBool::new(false));
        // The size seen by stat must always be a whole number of records.
        let watcher = {
            let (root, gate, stop) = (root.clone(), gate.clone(), stop.clone());
            thread::spawn(move || {
                gate.wait();
                let mut torn = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let len = fs::metadata(root.join("log")).unwrap().len();
                    if len % RECORD as u64 != 0 {
                        torn.push(len);
                    }
                }
                torn
            })
        };
        let threads: Vec<_> = (0..THREADS)
            .map(|w| {
                let (root, gate) = (root.clone(), gate.clone());
                thread::spawn(move || {
                    let mut f = OpenOptions::new()
                        .append(true)
                        .open(root.join("log"))
                        .unwrap();
                    gate.wait();
                    for seq in 0..RECORDS {
                        let n = f.write(&record(w, seq)).unwrap();
                        assert_eq!(n, RECORD, "short append");
                    }
                })
            })
            .collect();
        gate.wait();
        for c in &mut procs {
            send_line(c.stdin.as_mut().expect("piped"), "go");
        }
        for t in threads {
            t.join().expect("append thread panicked");
        }
        for c in procs {
            finish(c, "python appender");
        }
        stop.store(true, Ordering::Relaxed);
        let torn = watcher.join().expect("watcher panicked");
        assert!(torn.is_empty(), "sizes that cut a record: {torn:?}");

        let got = fs::read(root.join("log")).unwrap();
        assert_eq!(
            got.len(),
            writers * RECORDS * RECORD,
            "size = sum of appends"
        );
        let mut next_seq = vec![0usize; writers];
        for (k, rec) in got.chunks(RECORD).enumerate() {
            let text = String::from_utf8_lossy(rec);
            let w: usize = text
                .get(1..3)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("record {k} is torn: {text:?}"));
            assert!(w < writers, "record {k}: writer {w}: {text:?}");
            let seq = next_seq[w];
            assert!(
                rec == record(w, seq),
                "record {k}: want writer {w}'s record {seq}, got {text:?}"
            );
            next_seq[w] += 1;
        }
        assert_eq!(next_seq, vec![RECORDS; writers], "records per writer");
    });
    drop(m);
}
