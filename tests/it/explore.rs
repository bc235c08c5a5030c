//! `rawfs explore`: real programs explored for real, through the CLI.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::{Runtime, fuse_or_skip, text};

/// A directory holding the test's workload and checker scripts.
struct Scripts(tempfile::TempDir);

impl Scripts {
    fn new(files: &[(&str, &str)]) -> Scripts {
        let dir = tempfile::tempdir().expect("scripts dir");
        for (name, body) in files {
            let p = dir.path().join(name);
            std::fs::write(&p, body).expect("write script");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Scripts(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn explore(rt: &Runtime, args: &[&str]) -> Output {
    let mut all = vec!["explore"];
    all.extend_from_slice(args);
    rt.rawfs(&all)
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

const SAVE: &str = r#"import os, sys
mode = sys.argv[1]
with open("f", "w") as f:
    f.write("old")
    f.flush()
    os.fsync(f.fileno())
d = os.open(".", os.O_RDONLY)
os.fsync(d)
print("ready", flush=True)
with open("f.tmp", "w") as f:
    f.write("new content")
    if mode == "safe":
        f.flush()
        os.fsync(f.fileno())
os.rename("f.tmp", "f")
if mode in ("safe", "dironly"):
    os.fsync(d)
print("saved", flush=True)
"#;

/// Before "ready" anything goes; then f holds the old or the new content, and the new one
/// once "saved" was printed.
const SAVE_CHECK: &str = r#"#!/bin/sh
grep -qx ready "$RAWFS_WORKLOAD_STDOUT" || exit 0
content=$(cat f 2>/dev/null) || { echo "f is missing"; exit 1; }
if grep -qx saved "$RAWFS_WORKLOAD_STDOUT"; then
    [ "$content" = "new content" ] || { echo "saved, but f holds '$content'"; exit 1; }
fi
[ "$content" = old ] || [ "$content" = "new content" ] || { echo "f holds '$content'"; exit 1; }
"#;

#[test]
fn a_save_without_fsync_fails_and_the_careful_save_passes_every_state() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scripts::new(&[("save.py", SAVE), ("check.sh", SAVE_CHECK)]);
    let rt = Runtime::new();
    let run = |model: &str, mode: &str| {
        let out = explore(
            &rt,
            &[
                "--json",
                "--model",
                model,
                "--check",
                &s.p("check.sh"),
                "--",
                "python3",
                &s.p("save.py"),
                mode,
            ],
        );
        let code = out.status.code();
        (code, report(&out))
    };
    let (code, r) = run("strict", "none");
    assert_eq!(code, Some(1), "{r}");
    let outputs: Vec<&str> = r["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["output"].as_str().expect("output"))
        .collect();
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("saved, but f holds 'old'")),
        "a state where the program said saved but f is old: {outputs:?}"
    );
    assert!(r["distinct"].as_u64() <= r["generated"].as_u64());
    assert_eq!(r["distinct"], r["checked"]);
    for model in ["strict", "ext4-ordered"] {
        let (code, r) = run(model, "safe");
        assert_eq!(code, Some(0), "{model}: {r}");
        assert!(r["checked"].as_u64().expect("checked") >= 5, "{r}");
    }
    // fsync of the directory but not of f.tmp: an empty f under strict, the new content
    // under ext4-ordered (auto_da_alloc).
    let (code, r) = run("strict", "dironly");
    assert_eq!(code, Some(1), "{r}");
    let text = r.to_string();
    assert!(text.contains("saved, but f holds ''"), "{text}");
    let (code, r) = run("ext4-ordered", "dironly");
    assert_eq!(code, Some(0), "{r}");
}

const SQLITE: &str = r#"import sqlite3, sys
db = sqlite3.connect("t.db", isolation_level=None)
db.execute("PRAGMA journal_mode=" + sys.argv[1])
db.execute("PRAGMA synchronous=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
for i in range(1, 4):
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 2000))
    db.execute("COMMIT")
    print(i, flush=True)
"#;

/// Integrity ok, and every id the workload printed (committed) is there.
const SQLITE_CHECK: &str = r#"#!/bin/sh
printed=$(cat "$RAWFS_WORKLOAD_STDOUT")
if [ ! -e t.db ]; then
    [ -z "$printed" ] && exit 0
    echo "t.db is gone"; exit 1
fi
ok=$(sqlite3 t.db 'PRAGMA integrity_check' 2>&1)
[ "$ok" = ok ] || { echo "integrity: $ok"; exit 1; }
ids=$(sqlite3 t.db 'SELECT id FROM t' 2>/dev/null)
for i in $printed; do
    echo "$ids" | grep -qx "$i" || { echo "committed id $i is missing"; exit 1; }
done
"#;

#[test]
fn sqlite_passes_every_state_and_fails_with_synchronous_off() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scripts::new(&[("sq.py", SQLITE), ("check.sh", SQLITE_CHECK)]);
    let rt = Runtime::new();
    // Rollback journal with EXTRA (FULL does not make the journal's unlink durable, as
    // SQLite documents), and WAL with FULL.
    for (journal, sync, want) in [
        ("delete", "extra", 0),
        ("wal", "full", 0),
        ("delete", "off", 1),
    ] {
        let out = explore(
            &rt,
            &[
                "--json",
                "--max-states",
                "250",
                "--check",
                &s.p("check.sh"),
                "--",
                "python3",
                &s.p("sq.py"),
                journal,
                sync,
            ],
        );
        let r = report(&out);
        assert_eq!(out.status.code(), Some(want), "{journal} {sync}: {r}");
        assert!(r["checked"].as_u64().expect("checked") > 20, "{r}");
        eprintln!(
            "sqlite {journal} {sync}: {} generated, {} distinct, {} checked, {:.0} states/s",
            r["generated"], r["distinct"], r["checked"], r["states_per_second"]
        );
    }
}

const APPEND: &str = r#"import os
with open("log", "w") as f:
    os.fsync(f.fileno())
d = os.open(".", os.O_RDONLY)
os.fsync(d)
with open("log", "a") as f:
    for i in range(3):
        f.write(f"record {i} " + "x" * 1800 + " end\n")
        f.flush()
"#;

/// Every line of the log is a whole record.
const APPEND_CHECK: &str = r#"#!/bin/sh
[ -e log ] || exit 0
python3 -c '
import sys
data = open("log").read()
for line in data.splitlines(keepends=True):
    if not (line.startswith("record ") and line.endswith(" end\n")):
        sys.exit("torn record: %r" % line[-20:])
'
"#;

#[test]
fn an_append_log_without_fsync_is_torn_at_the_sector_size_asked() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scripts::new(&[("append.py", APPEND), ("check.sh", APPEND_CHECK)]);
    let rt = Runtime::new();
    let torn = |sector: &str| -> Vec<u64> {
        let out = explore(
            &rt,
            &[
                "--json",
                "--sector",
                sector,
                "--max-states",
                "120",
                "--check",
                &s.p("check.sh"),
                "--",
                "python3",
                &s.p("append.py"),
            ],
        );
        let r = report(&out);
        assert_eq!(out.status.code(), Some(1), "torn states fail: {r}");
        let mut keeps: Vec<u64> = r["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .filter(|f| f["spec"]["kind"] == "torn")
            .map(|f| f["spec"]["keep"].as_u64().expect("keep"))
            .collect();
        keeps.sort_unstable();
        keeps.dedup();
        keeps
    };
    let small = torn("512");
    let large = torn("4096");
    assert!(!small.is_empty(), "torn states are found");
    // Records are 1811 bytes long: a 4096-byte sector boundary falls inside none of the
    // first writes' ranges at the same offsets as the 512-byte ones do.
    assert_ne!(
        small, large,
        "the sector size changes which states are torn"
    );
    for (keeps, sector) in [(&small, 512), (&large, 4096)] {
        assert!(!keeps.is_empty(), "{sector}: {keeps:?}");
    }
}

/// Prints a hash of every file in the state, so a report says exactly what the state held.
const HASH_CHECK: &str = r#"#!/bin/sh
find . -type f | sort | xargs -r sha256sum
exit 1
"#;

#[test]
fn replay_rebuilds_the_state_a_report_named_byte_for_byte() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scripts::new(&[("save.py", SAVE), ("check.sh", HASH_CHECK)]);
    let rt = Runtime::new();
    let save = s.p("save.py");
    let check = s.p("check.sh");
    let workload = ["--", "python3", &save, "none"];
    let mut args = vec!["--json", "--check", &check];
    args.extend_from_slice(&workload);
    let out = explore(&rt, &args);
    let r = report(&out);
    let failures = r["failures"].as_array().expect("failures");
    let f = failures
        .iter()
        .find(|f| f["output"].as_str().is_some_and(|o| o.contains("./f.tmp")))
        .unwrap_or_else(|| panic!("a state holding f.tmp: {r}"));
    let id = f["id"].as_str().expect("id");
    let dir = tempfile::tempdir().expect("dir");
    let to = dir.path().join("state");
    let mut args = vec!["--replay", id, "--to", to.to_str().expect("utf-8")];
    args.extend_from_slice(&workload);
    let out = explore(&rt, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hashes = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f | sort | xargs -r sha256sum")
        .current_dir(&to)
        .output()
        .expect("sha256sum");
    assert_eq!(text(&hashes.stdout), f["output"].as_str().expect("output"));
    // An id from nowhere is refused.
    let mut args = vec!["--replay", "3r99-deadbeef", "--to", "/nonexistent-dir"];
    args.extend_from_slice(&workload);
    let out = explore(&rt, &args);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_input_is_refused_with_exit_2_and_a_clear_message() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scripts::new(&[("save.py", SAVE), ("check.sh", SAVE_CHECK)]);
    let rt = Runtime::new();
    let save = s.p("save.py");
    let check = s.p("check.sh");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "--check",
                "/no/such/checker",
                "--",
                "python3",
                &save,
                "none",
            ],
            "checker \"/no/such/checker\" does not exist",
        ),
        (
            vec!["--check", "no-such-program-xyz", "--", "true"],
            "is not a program on PATH",
        ),
        (
            vec![
                "--check",
                &check,
                "--",
                "python3",
                "-c",
                "import sys; sys.exit(3)",
            ],
            "the workload failed (exit status: 3)",
        ),
        (
            vec!["--max-states", "0", "--check", &check, "--", "true"],
            "--max-states must be at least 1",
        ),
    ];
    for (args, message) in cases {
        let out = explore(&rt, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(Path::new(&save).exists());
}
