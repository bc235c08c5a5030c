//! `rawfs check` on real programs: each check fires on the faulty version of the pattern it
//! looks for and stays silent on the correct one; and the command is a CI gate (exit 0 with
//! nothing found, 1 with a warning, 2 when it cannot run; `--only` and `--ignore`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use rawfs::TempMount;
use rawfs::check::{Check, Finding, Severity, run_checks};
use rawfs::fault::parse_rules;

use crate::common::{Daemon, python, text};
use crate::fuse_or_skip;

/// Runs `program` with python3 in a fresh mount; returns the mount, for its trace.
fn traced(program: &str) -> Option<TempMount> {
    let m = crate::common::mount()?;
    python(m.path(), program, &[]);
    Some(m)
}

/// The findings of `check` over everything the mount answered so far.
fn findings(m: &TempMount, check: Check) -> Vec<Finding> {
    let (events, _) = m.trace().expect("recording is on").since(0);
    run_checks(&events)
        .into_iter()
        .filter(|f| f.check == check)
        .collect()
}

/// The whole trace as text, for failure messages.
fn trace_text(m: &TempMount) -> String {
    let (events, _) = m.trace().expect("recording is on").since(0);
    events
        .iter()
        .map(rawfs::trace::format::text_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `program` draws exactly `n` findings of `check`, whose messages contain
/// `needle`.
fn fires(program: &str, check: Check, n: usize, needle: &str) {
    let Some(m) = traced(program) else { return };
    let f = findings(&m, check);
    assert_eq!(
        f.len(),
        n,
        "{check} findings: {f:#?}\ntrace:\n{}",
        trace_text(&m)
    );
    assert!(
        f.iter().all(|f| f.message.contains(needle)),
        "{f:#?} should name {needle}"
    );
}

/// Asserts that `program` draws no finding of `check`.
fn silent(program: &str, check: Check) {
    let Some(m) = traced(program) else { return };
    let f = findings(&m, check);
    assert!(
        f.is_empty(),
        "{check} should be silent: {f:#?}\ntrace:\n{}",
        trace_text(&m)
    );
}

#[test]
fn exclusive_create_lists_o_excl_creates_only() {
    fuse_or_skip!();
    fires(
        "import os\nos.close(os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL))",
        Check::ExclusiveCreate,
        1,
        "/app.pid",
    );
    silent("open('log', 'a').write('x')", Check::ExclusiveCreate);
}

#[test]
fn check_then_create_fires_on_exists_then_open_and_not_on_an_exclusive_create() {
    fuse_or_skip!();
    fires(
        "import os\nif not os.path.exists('app.pid'):\n    open('app.pid', 'w').write('1')",
        Check::CheckThenCreate,
        1,
        "/app.pid",
    );
    // The same intent, done right: no check, an exclusive create that may fail.
    silent(
        "try:\n    open('app.pid', 'x').write('1')\nexcept FileExistsError:\n    pass",
        Check::CheckThenCreate,
    );
    // Waiting for a file to appear, then reading it, is not a race.
    silent(
        "import os\nassert not os.path.exists('ready')\n\
         open('ready', 'x').write('1')\n\
         assert os.path.exists('ready')\nopen('ready').read()",
        Check::CheckThenCreate,
    );
}

/// A python3 process that checks that `state` is missing, says so, waits for a line on its
/// input, then opens `state` with `mode`. Between the two, the test (another process)
/// creates the file: the race happens for real.
fn race(mode: &str) -> Option<TempMount> {
    let m = crate::common::mount()?;
    let program = format!(
        "import os, sys\n\
         assert not os.path.exists('state')\n\
         print('checked', flush=True)\n\
         sys.stdin.readline()\n\
         try:\n    open('state', '{mode}').write('mine')\n\
         except FileExistsError:\n    print('taken')\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &program])
        .current_dir(m.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "checked\n");
    std::fs::write(m.join("state"), b"theirs").expect("the other process's create");
    writeln!(child.stdin.take().expect("stdin")).expect("go on");
    assert!(child.wait().expect("wait").success());
    Some(m)
}

#[test]
fn lost_race_fires_when_another_process_creates_between_check_and_open() {
    fuse_or_skip!();
    let Some(m) = race("w") else { return };
    let f = findings(&m, Check::LostRace);
    assert_eq!(f.len(), 1, "{f:#?}\ntrace:\n{}", trace_text(&m));
    assert_eq!(f[0].seqs.len(), 3, "{f:#?}");
    assert!(f[0].message.contains("truncated it (O_TRUNC)"), "{f:#?}");
    assert_eq!(std::fs::read(m.join("state")).unwrap(), b"mine");

    // With an exclusive create the first process finds the file taken and leaves it alone.
    let Some(m) = race("x") else { return };
    let f = findings(&m, Check::LostRace);
    assert!(f.is_empty(), "{f:#?}\ntrace:\n{}", trace_text(&m));
    assert_eq!(std::fs::read(m.join("state")).unwrap(), b"theirs");
}

/// A mount where every read of /data returns at most one byte, with 10 bytes in /data.
fn short_reads(program: &str) -> Option<TempMount> {
    let m = crate::common::mount()?;
    std::fs::write(m.join("data"), b"0123456789").expect("write");
    let rule =
        parse_rules(r#"{"match": {"ops": ["read"], "path": "/data"}, "action": {"short": 1}}"#)
            .expect("rule");
    m.faults().add(rule).expect("add rule");
    python(m.path(), program, &[]);
    Some(m)
}

#[test]
fn short_read_not_retried_fires_on_one_read_and_not_on_a_read_loop() {
    fuse_or_skip!();
    let Some(m) = short_reads(
        "import os\nfd = os.open('data', os.O_RDONLY)\nassert os.read(fd, 100) == b'0'\nos.close(fd)",
    ) else {
        return;
    };
    let f = findings(&m, Check::ShortReadNotRetried);
    assert_eq!(f.len(), 1, "{f:#?}\ntrace:\n{}", trace_text(&m));
    assert!(f[0].message.contains("got 1 of 100 bytes"), "{f:#?}");

    let Some(m) = short_reads(
        "import os\nfd = os.open('data', os.O_RDONLY)\nbuf = b''\n\
         while True:\n    b = os.read(fd, 100)\n    if not b: break\n    buf += b\n\
         os.close(fd)\nassert buf == b'0123456789', buf",
    ) else {
        return;
    };
    let f = findings(&m, Check::ShortReadNotRetried);
    assert!(f.is_empty(), "{f:#?}\ntrace:\n{}", trace_text(&m));
}

/// Saves `config.json` twice by writing `config.json.tmp` and renaming it over; with
/// `durable`, fsyncs the file before the rename and the directory after.
fn save(durable: bool) -> String {
    format!(
        "import os\n\
         def save(text, durable={}):\n\
         \x20   with open('config.json.tmp', 'w') as f:\n\
         \x20       f.write(text)\n\
         \x20       if durable:\n\
         \x20           f.flush()\n\
         \x20           os.fsync(f.fileno())\n\
         \x20   os.replace('config.json.tmp', 'config.json')\n\
         \x20   if durable:\n\
         \x20       d = os.open('.', os.O_RDONLY)\n\
         \x20       os.fsync(d)\n\
         \x20       os.close(d)\n\
         save('{{}}')\nsave('{{\"retries\": 3}}')\n",
        if durable { "True" } else { "False" }
    )
}

#[test]
fn rename_without_fsync_fires_on_an_unsynced_replacement_only() {
    fuse_or_skip!();
    // Only the second save replaces a file.
    fires(
        &save(false),
        Check::RenameWithoutFsync,
        1,
        "over /config.json",
    );
    silent(&save(true), Check::RenameWithoutFsync);
}

#[test]
fn dir_not_fsynced_fires_on_a_name_left_unsynced_and_not_on_the_careful_versions() {
    fuse_or_skip!();
    fires(
        "open('log', 'w').write('x')",
        Check::DirNotFsynced,
        1,
        "create /log",
    );
    fires(
        &save(false),
        Check::DirNotFsynced,
        1,
        "rename /config.json.tmp",
    );
    // Created, then the directory fsynced.
    silent(
        "import os\n\
         fd = os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n\
         os.write(fd, b'42')\nos.fsync(fd)\nos.close(fd)\n\
         d = os.open('.', os.O_RDONLY)\nos.fsync(d)\nos.close(d)",
        Check::DirNotFsynced,
    );
    // A pidfile removed at exit, and a temporary file and directory removed again.
    silent(
        "import os\n\
         fd = os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n\
         os.write(fd, b'42')\nos.close(fd)\n\
         os.mkdir('work')\nopen('work/scratch', 'w').write('x')\n\
         os.unlink('work/scratch')\nos.rmdir('work')\n\
         open('tmp', 'w').write('x')\nos.unlink('tmp')\n\
         os.unlink('app.pid')",
        Check::DirNotFsynced,
    );
    // Rename after fsync of the file, then fsync of the directory.
    silent(&save(true), Check::DirNotFsynced);
}

/// The careful program of each pattern at once draws no warning.
#[test]
fn a_careful_program_draws_only_informational_findings() {
    fuse_or_skip!();
    let program = format!(
        "{}\nimport os\n\
         fd = os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n\
         os.write(fd, b'42')\nos.close(fd)\n\
         open('config.json', 'rb').read()\n\
         os.unlink('app.pid')\n",
        save(true)
    );
    let Some(m) = traced(&program) else { return };
    let (events, _) = m.trace().expect("recording is on").since(0);
    let all = run_checks(&events);
    assert!(
        all.iter().all(|f| f.severity == Severity::Info),
        "{all:#?}\ntrace:\n{}",
        trace_text(&m)
    );
    assert_eq!(all.len(), 1, "{all:#?}");
}

// ---------------------------------------------------------------------------------------------
// The gate

#[test]
fn check_exits_0_1_or_2_and_honours_only_and_ignore() {
    fuse_or_skip!();
    let d = Daemon::start(&[]);
    // Nothing yet: exit 0.
    let out = d.rt.rawfs(&["check", d.mp()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // An exclusive create is informational: printed, but still exit 0.
    python(
        std::path::Path::new(d.mp()),
        "import os\n\
         fd = os.open('app.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\nos.close(fd)\n\
         d = os.open('.', os.O_RDONLY)\nos.fsync(d)\nos.close(d)",
        &[],
    );
    let out = d.rt.rawfs(&["check", d.mp()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("info[exclusive-create]"), "{stdout}");

    // A check-then-create and a create left unsynced: exit 1.
    python(
        std::path::Path::new(d.mp()),
        "import os\nif not os.path.exists('state'):\n    open('state', 'w').write('1')",
        &[],
    );
    let out = d.rt.rawfs(&["check", d.mp()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("warning[check-then-create]"), "{stdout}");
    assert!(stdout.contains("warning[dir-not-fsynced]"), "{stdout}");

    // --only one of them: only its findings, still 1.
    let out = d.rt.rawfs(&["check", d.mp(), "--only", "dir-not-fsynced"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .all(|l| l.starts_with("warning[dir-not-fsynced]")),
        "{stdout}"
    );
    // --only a check that found nothing: 0.
    let out = d.rt.rawfs(&[
        "check",
        d.mp(),
        "--only",
        "lost-race,short-read-not-retried",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "");
    // --ignore both warnings (underscores and case are accepted): 0.
    let out = d.rt.rawfs(&[
        "check",
        d.mp(),
        "--ignore",
        "Check_Then_Create,dir-not-fsynced",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains("\"exclusive-create\"")),
        "{stdout}"
    );

    // An unknown check name: 2, naming it and the valid ones.
    for flag in ["--only", "--ignore"] {
        let out = d.rt.rawfs(&["check", d.mp(), flag, "dir-not-synced"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("unknown check \"dir-not-synced\"") && stderr.contains("lost-race"),
            "{stderr}"
        );
    }
}

#[test]
fn check_exits_2_when_it_cannot_run() {
    let rt = crate::common::Runtime::new();
    let dir = tempfile::tempdir().expect("dir");
    let out = rt.rawfs(&["check", crate::common::s(dir.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no rawfs daemon answers"));
    let missing = dir.path().join("missing.jsonl");
    let out = rt.rawfs(&["check", "--file", crate::common::s(&missing)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open"));
    // A bad flag, as clap reports it.
    let out = rt.rawfs(&["check", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}
