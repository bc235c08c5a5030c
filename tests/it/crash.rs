//! Power cuts: the durable state under each persistence model, `rawfs crash` and its options,
//! crash rules, and real programs (python, sqlite3) recovering on the crashed mount.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rawfs::fs::{Caller, Fs, FsOptions, ROOT};
use rawfs::{CrashOptions, Keep, Model, MountConfig, TempMount};

use crate::common::{Daemon, python, s, text};

fn mount_model(model: Model) -> Option<TempMount> {
    crate::common::mount_with(&MountConfig {
        model,
        ..MountConfig::default()
    })
}

macro_rules! mount_model_or_skip {
    ($model:expr) => {
        match mount_model($model) {
            Some(m) => m,
            None => return,
        }
    };
}

fn read(p: impl AsRef<Path>) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// Python helper: fsync a directory by path.
const FSYNC_DIR: &str = "
import os, sys
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
";

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_is_lost_by_name_under_strict() {
    let program = format!(
        "{FSYNC_DIR}
os.mkdir('d')
fd = os.open('d/f', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b'data')
os.fsync(fd)
os.close(fd)
if sys.argv[1] == 'dirsync':
    fsync_dir('d')
    fsync_dir('.')
"
    );
    for (model, mode, survives) in [
        (Model::Strict, "nosync", false),
        (Model::Strict, "dirsync", true),
        // ext4's fsync commits the journal, names included.
        (Model::Ext4Ordered, "nosync", true),
    ] {
        let m = mount_model_or_skip!(model);
        python(m.path(), &program, &[mode]);
        let lost = m.crash(CrashOptions::default());
        let got = read(m.join("d/f"));
        if survives {
            assert_eq!(
                got.as_deref(),
                Some(&b"data"[..]),
                "{model} {mode}: {lost:?}"
            );
            assert!(lost.is_empty(), "{model} {mode}: {lost}");
        } else {
            assert_eq!(got, None, "{model} {mode}");
            assert!(
                !m.join("d").exists(),
                "{model} {mode}: d was never made durable"
            );
            assert!(
                lost.names.iter().any(|n| n.path == "/d"),
                "the report names the lost directory: {lost}"
            );
        }
    }
}

/// The atomic-replace pattern: write f.tmp, rename it over f, with the syncs `mode` names.
const REPLACE: &str = "
with open('f', 'wb') as f:
    f.write(b'old')
    f.flush()
    os.fsync(f.fileno())
fsync_dir('.')
mode = sys.argv[1]
with open('f.tmp', 'wb') as f:
    f.write(b'new content')
    if mode == 'both':
        f.flush()
        os.fsync(f.fileno())
os.rename('f.tmp', 'f')
if mode in ('dir', 'both'):
    fsync_dir('.')
print('saved')
";

#[test]
fn atomic_replace_keeps_old_new_or_empty_content_as_each_model_says() {
    let program = format!("{FSYNC_DIR}{REPLACE}");
    let cases: [(Model, &str, &[u8]); 6] = [
        (Model::Strict, "none", b"old"),
        (Model::Ext4Ordered, "none", b"old"),
        // The famous zero-length file: the name was made durable, the data never was.
        (Model::Strict, "dir", b""),
        // auto_da_alloc: the rename over f made f.tmp's data durable first.
        (Model::Ext4Ordered, "dir", b"new content"),
        (Model::Strict, "both", b"new content"),
        (Model::Ext4Ordered, "both", b"new content"),
    ];
    for (model, mode, want) in cases {
        let m = mount_model_or_skip!(model);
        let out = python(m.path(), &program, &[mode]);
        assert_eq!(text(&out.stdout), "saved\n");
        let lost = m.crash(CrashOptions::default());
        assert_eq!(
            read(m.join("f")).as_deref(),
            Some(want),
            "{model}, fsync {mode}: lost {lost}"
        );
        assert!(!m.join("f.tmp").exists(), "{model} {mode}");
    }
}

#[test]
fn an_unsynced_unlink_is_undone_and_an_osync_write_survives() {
    let m = mount_model_or_skip!(Model::Strict);
    python(
        m.path(),
        &format!(
            "{FSYNC_DIR}
for name in ('gone', 'sync', 'dsync'):
    with open(name, 'wb') as f:
        f.write(b'kept')
        f.flush()
        os.fsync(f.fileno())
fsync_dir('.')
os.unlink('gone')
for name, flag in (('sync', os.O_SYNC), ('dsync', os.O_DSYNC)):
    fd = os.open(name, os.O_WRONLY | flag)
    os.write(fd, b'KEPT')
    os.close(fd)
with open('plain', 'wb') as f:
    f.write(b'lost')
"
        ),
        &[],
    );
    m.crash(CrashOptions::default());
    assert_eq!(read(m.join("gone")).as_deref(), Some(&b"kept"[..]));
    assert_eq!(read(m.join("sync")).as_deref(), Some(&b"KEPT"[..]));
    assert_eq!(read(m.join("dsync")).as_deref(), Some(&b"KEPT"[..]));
    assert!(!m.join("plain").exists());
}

#[test]
fn handles_opened_before_a_crash_fail_with_eio_and_new_ones_see_the_durable_tree() {
    for cache in [
        rawfs::fuse::CacheMode::Direct,
        rawfs::fuse::CacheMode::Cached,
    ] {
        let Some(m) = crate::common::mount_with(&MountConfig {
            cache,
            ..MountConfig::default()
        }) else {
            return;
        };
        python(
            m.path(),
            &format!(
                "{FSYNC_DIR}
with open('f', 'wb') as f:
    f.write(b'durable')
    f.flush()
    os.fsync(f.fileno())
fsync_dir('.')
with open('f', 'wb') as f:
    f.write(b'unsynced!')
open('new', 'w').close()
"
            ),
            &[],
        );
        // The kernel has the unsynced state cached in --cache mode.
        assert_eq!(read(m.join("f")).as_deref(), Some(&b"unsynced!"[..]));
        assert!(m.join("new").exists());
        let mut old = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("f"))
            .expect("open f");
        m.crash(CrashOptions::default());
        assert_eq!(
            read(m.join("f")).as_deref(),
            Some(&b"durable"[..]),
            "{cache:?}"
        );
        assert!(!m.join("new").exists(), "{cache:?}");
        let e = std::io::Write::write_all(&mut old, b"x").expect_err("stale handle");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{cache:?}");
        let e = old
            .set_len(1)
            .expect_err("ftruncate through a stale handle");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{cache:?}");
        assert_eq!(
            read(m.join("f")).as_deref(),
            Some(&b"durable"[..]),
            "{cache:?}"
        );
    }
}

/// With `--cache` the kernel keeps names where anyone may walk; a crash that takes search
/// permission back (an unsynced chmod undone) makes it forget them, so the next walk of
/// another user is checked again.
#[test]
fn a_crash_that_undoes_a_chmod_is_checked_on_the_next_walk_with_cache() {
    if !crate::common::root_or_skip() {
        return;
    }
    let Some(m) = crate::common::mount_with(&MountConfig {
        cache: rawfs::fuse::CacheMode::Cached,
        ..MountConfig::default()
    }) else {
        return;
    };
    python(
        m.path(),
        &format!(
            "{FSYNC_DIR}
os.mkdir('d', 0o700)
with open('d/f', 'wb') as f:
    f.write(b'data')
    os.fsync(f.fileno())
fsync_dir('d')
fsync_dir('.')
os.chmod('d', 0o755)
"
        ),
        &[],
    );
    let cat_as_nobody = || {
        use std::os::unix::process::CommandExt;
        let out = Command::new("cat")
            .arg(m.join("d/f"))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run cat");
        (out.status.success(), text(&out.stderr))
    };
    let (ok, err) = cat_as_nobody();
    assert!(ok, "nobody could not read d/f before the crash: {err}");
    m.crash(CrashOptions::default());
    let mode = std::fs::metadata(m.join("d")).expect("stat d").mode() & 0o7777;
    assert_eq!(mode, 0o700, "the crash did not undo the chmod");
    let (ok, err) = cat_as_nobody();
    assert!(
        !ok,
        "nobody read d/f through a directory the crash made 0700"
    );
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn dry_run_says_what_would_be_lost_until_the_program_made_it_durable() {
    let d = Daemon::start(&[]);
    let dry = |d: &Daemon| -> serde_json::Value {
        let out = d.rt.rawfs_ok(&["crash", d.mp(), "--dry-run", "--json"]);
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    python(
        Path::new(d.mp()),
        "with open('data', 'wb') as f: f.write(b'x' * 5000)",
        &[],
    );
    let v = dry(&d);
    assert_eq!(v["model"], "strict");
    let files = v["unsynced"]["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["path"], "/data");
    assert_eq!(files[0]["lost"], serde_json::json!([[0, 5000]]));
    assert_eq!(files[0]["size_after"], 0);
    assert_eq!(v["unsynced"]["names"][0]["path"], "/data");
    let out = d.rt.rawfs_ok(&["crash", d.mp(), "--dry-run"]);
    assert_eq!(
        text(&out.stdout),
        "a crash now (strict) would lose:\n  /data: 5000 bytes lost at 0..5000, size 5000 -> 0\n  \
         /data: file (inode 2) -> none\n"
    );
    python(
        Path::new(d.mp()),
        &format!("{FSYNC_DIR}\nfd = os.open('data', os.O_RDONLY)\nos.fsync(fd)\nfsync_dir('.')"),
        &[],
    );
    let v = dry(&d);
    assert_eq!(v["unsynced"]["files"], serde_json::json!([]), "{v}");
    assert_eq!(v["unsynced"]["names"], serde_json::json!([]), "{v}");
    // The dry run changed nothing.
    assert_eq!(read(d.join("data")).map(|b| b.len()), Some(5000));
}

#[test]
fn the_crash_is_an_event_in_the_trace_saying_what_was_lost() {
    let d = Daemon::start(&[]);
    python(Path::new(d.mp()), "open('f', 'w').write('abc')", &[]);
    let out = d.rt.rawfs_ok(&["crash", d.mp()]);
    assert!(
        text(&out.stdout).contains("/f: 3 bytes lost at 0..3"),
        "{}",
        text(&out.stdout)
    );
    let trace = text(&d.rt.rawfs_ok(&["trace", d.mp(), "--op", "crash"]).stdout);
    assert!(
        trace.contains("crash(\"/\") = 0")
            && trace.contains("[keep none: lost /f (3 bytes, size 3 -> 0); /f (file -> none)]"),
        "{trace}"
    );
}

/// The tree under `root` as path -> description (type, mode, size, contents or target).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("inside").display().to_string();
            let mode = md.permissions().mode() & 0o7777;
            let what = if md.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else if md.file_type().is_symlink() {
                format!("symlink {:?}", std::fs::read_link(&p).expect("readlink"))
            } else {
                let data = std::fs::read(&p).expect("read");
                format!("file {mode:o} links {} {:?}", md.nlink(), text(&data))
            };
            out.insert(rel, what);
        }
    }
    out
}

#[test]
fn a_crash_image_equals_what_the_mount_shows_after_the_same_crash() {
    let d = Daemon::start(&[]);
    let workload = format!(
        "{FSYNC_DIR}
os.makedirs('a/b')
for p in ('a/b', 'a', '.'):
    fsync_dir(p)
with open('a/b/kept', 'w') as f:
    f.write('kept' * 300)
    f.flush()
    os.fsync(f.fileno())
os.link('a/b/kept', 'a/hard')
os.symlink('b/kept', 'a/link')
os.chmod('a/b/kept', 0o600)
fsync_dir('a/b')
fsync_dir('a')
with open('a/b/kept', 'a') as f:
    f.write('tail that is never synced')
for i in range(20):
    with open(f'a/n{{i}}', 'w') as f:
        f.write(str(i) * i)
        if i % 2:
            f.flush()
            os.fsync(f.fileno())
    if i % 3 == 0:
        fsync_dir('a')
os.rename('a/n3', 'a/b/moved')
"
    );
    python(Path::new(d.mp()), &workload, &[]);
    let img = tempfile::tempdir().expect("image dir");
    let to = img.path().join("image");
    for seed in ["1", "2"] {
        let to = to.with_extension(seed);
        d.rt.rawfs_ok(&[
            "crash",
            d.mp(),
            "--keep",
            "random",
            "--seed",
            seed,
            "--torn",
            "512",
            "--to",
            s(&to),
        ]);
    }
    // The image did not change the mount.
    assert!(Path::new(&d.join("a/b/moved")).exists());
    d.rt.rawfs_ok(&[
        "crash",
        d.mp(),
        "--keep",
        "random",
        "--seed",
        "2",
        "--torn",
        "512",
    ]);
    let after = snapshot(Path::new(d.mp()));
    assert_eq!(snapshot(&to.with_extension("2")), after);
    assert!(after.contains_key("a/b/kept"), "{after:?}");
    // The hard link, the fsynced content and the mode survive; the unsynced tail may
    // survive in whole or in part, as the seed drew it.
    let hard = &after["a/hard"];
    let full = format!("{}tail that is never synced", "kept".repeat(300));
    let content = hard
        .strip_prefix("file 600 links 2 \"")
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{hard}"));
    assert!(content.len() >= 1200 && full.starts_with(content), "{hard}");
    // A bad --to is refused with a message naming it.
    let out =
        d.rt.rawfs(&["crash", d.mp(), "--to", s(&to.with_extension("1"))]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn keep_random_is_reproducible_by_seed_and_lies_between_none_and_all() {
    let workload = "
import os
for i in range(40):
    with open(f'f{i}', 'w') as f:
        f.write('x' * (100 + i))
";
    let run = |seed: &str| {
        let d = Daemon::start(&[]);
        python(Path::new(d.mp()), workload, &[]);
        d.rt.rawfs_ok(&["crash", d.mp(), "--keep", "random", "--seed", seed]);
        snapshot(Path::new(d.mp()))
    };
    let a = run("7");
    assert_eq!(a, run("7"), "the same seed gives the same crash");
    let b = run("8");
    assert_ne!(a, b, "another seed gives another crash");
    for tree in [&a, &b] {
        assert!(
            !tree.is_empty() && tree.len() < 40,
            "{} names kept",
            tree.len()
        );
    }
}

#[test]
fn torn_writes_keep_a_prefix_ending_on_a_sector_boundary() {
    let d = Daemon::start(&[]);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut kept = Vec::new();
    for seed in 0..12 {
        python(
            Path::new(d.mp()),
            &format!(
                "{FSYNC_DIR}
name = sys.argv[1]
with open(name, 'wb') as f:
    os.fsync(f.fileno())
fsync_dir('.')
with open(name, 'r+b') as f:
    f.write(bytes(i % 251 for i in range(4096)))
"
            ),
            &[&format!("log{seed}")],
        );
        d.rt.rawfs_ok(&[
            "crash",
            d.mp(),
            "--torn",
            "512",
            "--seed",
            &seed.to_string(),
        ]);
        let got = read(d.join(&format!("log{seed}"))).expect("log survives by name");
        assert!(
            got.len() % 512 == 0 && got.len() < 4096,
            "{} bytes",
            got.len()
        );
        assert_eq!(got[..], pattern[..got.len()], "a prefix of the write");
        kept.push(got.len());
    }
    assert!(
        kept.iter().any(|&n| n > 0),
        "some write survives in part: {kept:?}"
    );
    assert!(
        kept.iter().any(|&n| n != kept[0]),
        "seeds tear differently: {kept:?}"
    );
}

#[test]
fn crash_kill_ends_every_process_with_a_file_open_on_the_mount() {
    let d = Daemon::start(&[]);
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg("import time\nf = open('f', 'w')\nprint('open', flush=True)\nwhile True:\n    f.write('x')\n    f.flush()\n    time.sleep(0.01)")
        .current_dir(d.mp())
        .stdout(Stdio::piped())
        .spawn()
        .expect("writer");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("writer started");
    let out = d.rt.rawfs_ok(&["crash", d.mp(), "--kill"]);
    let status = writer.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{}",
        text(&out.stdout)
    );
    assert!(!Path::new(&d.join("f")).exists());
}

#[test]
fn a_crash_rule_cuts_the_power_after_the_third_fsync() {
    let d = Daemon::start(&[]);
    python(
        Path::new(d.mp()),
        &format!("{FSYNC_DIR}\nos.mkdir('db')\nfsync_dir('.')"),
        &[],
    );
    d.rt.rawfs_ok(&[
        "fault",
        "add",
        d.mp(),
        "--json",
        r#"{"match": {"ops": ["fsync"], "path": "/db/*"}, "when": {"nth": 3}, "action": {"crash": {"after": true}}}"#,
    ]);
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{FSYNC_DIR}
f = open('db/log', 'w')
fsync_dir('db')
for i in range(6):
    f.write(f'line {{i}}\\n')
    f.flush()
    os.fsync(f.fileno())
    print(i, flush=True)
"
        ))
        .current_dir(d.mp())
        .output()
        .expect("python");
    assert!(!out.status.success(), "the write after the crash fails");
    assert!(
        text(&out.stderr).contains("Input/output error"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "0\n1\n2\n");
    assert_eq!(
        read(d.join("db/log")).map(|b| text(&b)).as_deref(),
        Some("line 0\nline 1\nline 2\n")
    );
    let trace = text(
        &d.rt
            .rawfs_ok(&["trace", d.mp(), "--op", "fsync,crash"])
            .stdout,
    );
    let last: Vec<&str> = trace.lines().rev().take(2).collect();
    assert!(
        last[0].contains("crash(") && last[0].contains("[rule 1: keep none: nothing lost]"),
        "{trace}"
    );
    assert!(last[1].contains("fsync(\"/db/log\"") && last[1].contains("[rule 1: crash after]"));
}

const SQLITE: &str = "
import sqlite3, sys
db = sqlite3.connect('t.db', isolation_level=None)
db.execute('PRAGMA journal_mode=' + sys.argv[1])
db.execute('PRAGMA synchronous=' + sys.argv[4])
db.execute('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)')
start = int(sys.argv[2])
for i in range(start, start + int(sys.argv[3])):
    db.execute('BEGIN')
    db.execute('INSERT INTO t VALUES (?, ?)', (i, 'x' * 3000))
    db.execute('COMMIT')
    print(i, flush=True)
";

const SQLITE_CHECK: &str = "
import sqlite3
db = sqlite3.connect('t.db')
print(db.execute('PRAGMA integrity_check').fetchone()[0])
print(sorted(r[0] for r in db.execute('SELECT id FROM t')))
";

#[test]
fn sqlite_keeps_committed_rows_through_a_crash_and_a_crash_inside_a_transaction() {
    // In rollback-journal mode the commit point is the journal's unlink, which only
    // synchronous=EXTRA makes durable (by fsyncing the directory after it).
    for (journal, sync) in [("delete", "extra"), ("wal", "full")] {
        let d = Daemon::start(&[]);
        let dir = Path::new(d.mp());
        python(dir, SQLITE, &[journal, "1", "2", sync]);
        d.rt.rawfs_ok(&["crash", d.mp()]);
        let out = python(dir, SQLITE_CHECK, &[]);
        assert_eq!(text(&out.stdout), "ok\n[1, 2]\n", "{journal}");
        // Cut the power at the second write to the database or its WAL in the next
        // transaction, killing the writer, as a real power cut would.
        let file = if journal == "wal" {
            "/t.db-wal"
        } else {
            "/t.db"
        };
        let rule = format!(
            r#"{{"match": {{"ops": ["write"], "path": "{file}"}}, "when": {{"nth": 2}}, "action": {{"crash": {{"kill": true}}}}}}"#
        );
        d.rt.rawfs_ok(&["fault", "add", d.mp(), "--json", &rule]);
        let out = Command::new("python3")
            .arg("-c")
            .arg(SQLITE)
            .args([journal, "3", "1", sync])
            .current_dir(dir)
            .output()
            .expect("python");
        assert!(!out.status.success(), "{journal}: the writer died");
        d.rt.rawfs_ok(&["fault", "clear", d.mp()]);
        let out = python(dir, SQLITE_CHECK, &[]);
        assert_eq!(text(&out.stdout), "ok\n[1, 2]\n", "{journal}");
    }
}

#[test]
fn sqlite_in_delete_mode_with_synchronous_full_loses_the_last_commit_but_stays_consistent() {
    // SQLite documents this: with synchronous=FULL, a power cut right after a commit in
    // DELETE mode may roll it back, since the journal's unlink was never made durable.
    let d = Daemon::start(&[]);
    let dir = Path::new(d.mp());
    python(dir, SQLITE, &["delete", "1", "2", "full"]);
    let unsynced = text(&d.rt.rawfs_ok(&["crash", d.mp(), "--dry-run"]).stdout);
    assert!(
        unsynced.contains("/t.db-journal: none -> file"),
        "{unsynced}"
    );
    d.rt.rawfs_ok(&["crash", d.mp()]);
    let out = python(dir, SQLITE_CHECK, &[]);
    assert_eq!(text(&out.stdout), "ok\n[1]\n");
}

/// A tree driven through the `Fs` API, for model rules that need many crash states.
struct Tree(Fs);

const ROOTC: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

impl Tree {
    fn new(model: Model) -> Tree {
        Tree(Fs::new(FsOptions {
            model,
            ..FsOptions::default()
        }))
    }

    fn create(&self, name: &str, data: &[u8]) -> u64 {
        let (_, fh) = self
            .0
            .create(
                &ROOTC,
                ROOT,
                OsStr::new(name),
                0o100644,
                libc::O_WRONLY | libc::O_CREAT,
            )
            .expect("create");
        self.0.write(&ROOTC, fh, 0, data).expect("write");
        fh
    }

    fn names(&self) -> Vec<String> {
        let fh = self.0.opendir(&ROOTC, ROOT, 0).expect("opendir");
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let batch = self.0.readdir(fh, offset).expect("readdir");
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            names.extend(
                batch
                    .into_iter()
                    .map(|e| e.name.to_string_lossy().into_owned())
                    .filter(|n| n != "." && n != ".."),
            );
        }
        self.0.releasedir(fh).expect("releasedir");
        // In name order (readdir lists the newest first, as tmpfs does).
        names.sort();
        names
    }
}

#[test]
fn ext4_ordered_keeps_a_prefix_of_the_metadata_changes_and_strict_any_subset() {
    let mut strict_gaps = 0;
    for seed in 0..64 {
        for model in Model::ALL {
            let t = Tree::new(model);
            for name in ["a", "b", "c", "d"] {
                t.create(name, b"x");
            }
            t.0.crash(CrashOptions {
                keep: Keep::Random,
                seed,
                torn: None,
            });
            let names = t.names();
            let prefix: Vec<String> = ["a", "b", "c", "d"][..names.len()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if model == Model::Ext4Ordered {
                assert_eq!(
                    names, prefix,
                    "seed {seed}: names reach the journal in order"
                );
            } else if names != prefix {
                strict_gaps += 1;
            }
        }
    }
    assert!(strict_gaps > 0, "strict allows any order");
}

#[test]
fn a_crash_takes_no_time_to_speak_of_for_a_small_tree() {
    let t = Tree::new(Model::Strict);
    for i in 0..2000 {
        let fh = t.create(&format!("f{i}"), &[7u8; 100]);
        if i % 2 == 0 {
            t.0.fsync(fh, false).expect("fsync");
        }
    }
    let dir = t.0.opendir(&ROOTC, ROOT, 0).expect("opendir");
    t.0.fsync(dir, false).expect("fsyncdir");
    let start = std::time::Instant::now();
    let crashed = t.0.crash(CrashOptions::default());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        crashed.losses.files.len(),
        1000,
        "the odd files lose their data"
    );
    assert_eq!(t.names().len(), 2000);
}

#[test]
fn a_file_rewritten_past_the_log_limit_survives_whole_or_not_at_all() {
    for seed in 0..8 {
        let t = Tree::new(Model::Strict);
        let fh = t.create("f", b"durable!");
        t.0.fsync(fh, false).expect("fsync");
        let dir = t.0.opendir(&ROOTC, ROOT, 0).expect("opendir");
        t.0.fsync(dir, false).expect("fsyncdir");
        for i in 0..(rawfs::fs::durable::MAX_CHANGES + 10) {
            t.0.write(&ROOTC, fh, 0, format!("{:08}", i % 100_000_000).as_bytes())
                .expect("write");
        }
        let last = format!("{:08}", rawfs::fs::durable::MAX_CHANGES + 9);
        t.0.crash(CrashOptions {
            keep: Keep::Random,
            seed,
            torn: None,
        });
        let attr =
            t.0.lookup(&ROOTC, ROOT, OsStr::new("f"))
                .expect("f survives");
        let fh = t.0.open(&ROOTC, attr.ino, libc::O_RDONLY).expect("open");
        let got = t.0.read(fh, 0, 64).expect("read");
        assert!(
            got == b"durable!" || got == last.as_bytes(),
            "seed {seed}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn temporary_files_removed_before_any_fsync_do_not_stay_in_memory() {
    let d = Daemon::start(&["--trace-capacity", "0"]);
    let status = d.rt.rawfs_ok(&["status", d.mp(), "--json"]);
    let pid = serde_json::from_slice::<serde_json::Value>(&status.stdout).expect("status")["pid"]
        .as_u64()
        .expect("pid");
    python(
        Path::new(d.mp()),
        "
import os
for i in range(300):
    name = 'tmp%d' % (i % 5)
    with open(name, 'wb') as f:
        f.write(b'x' * (1 << 20))
    os.unlink(name)
",
        &[],
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("daemon status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    assert!(
        rss_kib < 150 * 1024,
        "300 MiB written and removed, the daemon holds {rss_kib} KiB"
    );
}

#[test]
fn a_partial_crash_that_keeps_a_removed_files_name_shows_its_durable_contents() {
    let mut kept = 0;
    for seed in 0..32 {
        let t = Tree::new(Model::Strict);
        let fh = t.create("f", b"never synced");
        t.0.release(fh).expect("release");
        let ino = t.0.unlink(&ROOTC, ROOT, OsStr::new("f")).expect("unlink");
        // The kernel forgets it: the node leaves the live tree.
        t.0.forget(ino, 1);
        let attr = t.0.lookup(&ROOTC, ROOT, OsStr::new("f"));
        assert!(attr.is_err());
        t.0.crash(CrashOptions {
            keep: Keep::Random,
            seed,
            torn: None,
        });
        if let Ok(a) = t.0.lookup(&ROOTC, ROOT, OsStr::new("f")) {
            kept += 1;
            assert_eq!(a.size, 0, "seed {seed}: the data was never made durable");
        }
    }
    assert!(kept > 0, "some crash keeps the create and loses the unlink");
}
