//! `rawfs check`: analysers that read a trace and point at I/O patterns that race with other
//! processes or lose data on a crash.
//!
//! Each analyser is a [`Check`]; [`run_checks`] runs them all over a trace and returns
//! [`Finding`]s. They see only what reached rawfs, so they reason about the requests the
//! kernel sent, not the system calls a program made:
//!
//! * `open(O_CREAT)` of a name the kernel does not know sends a `lookup` (which fails with
//!   ENOENT) and then a `create`, from the same thread with nothing in between; that lookup is
//!   the kernel's, not a check the program made.
//! * `open(O_CREAT|O_EXCL)` of a name the kernel already knows fails with EEXIST in the kernel,
//!   and `open` never carries `O_CREAT` or `O_EXCL` to rawfs.
//! * Requests whose process was unknown (`pid` 0) are not attributed to any process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::trace::{Event, Op};

/// One analyser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Every create with `O_EXCL`, and whether it created the file or found it there (EEXIST).
    ExclusiveCreate,
    /// A process saw a name missing (lookup failed with ENOENT), then created it without
    /// `O_EXCL`, or opened it for writing because by then it existed: another process can
    /// create the name in between.
    CheckThenCreate,
    /// Between a process's failed lookup of a name and its create, or open for writing, of
    /// that name, another process created it: the first process opened the other's file.
    /// (Opens for reading only are left out here and in [`Check::CheckThenCreate`]: waiting
    /// for a file to appear and then reading it is not a race.)
    LostRace,
    /// A read returned less than asked before end of file, and the process did not ask for
    /// the rest (its next read on that handle started elsewhere, or it closed the file).
    ShortReadNotRetried,
    /// A rename replaced a file with one whose writes were never fsynced: after a crash the
    /// name may hold an empty or partial file.
    RenameWithoutFsync,
    /// A directory gained or changed names (create, mkdir, rename) and was never fsynced
    /// afterwards: after a crash the names may be lost.
    DirNotFsynced,
}

impl Check {
    /// Every check, in the order [`run_checks`] runs them.
    pub const ALL: &'static [Check] = &[
        Check::ExclusiveCreate,
        Check::CheckThenCreate,
        Check::LostRace,
        Check::ShortReadNotRetried,
        Check::RenameWithoutFsync,
        Check::DirNotFsynced,
    ];

    /// The check's name in findings and on the command line (`check-then-create`).
    pub fn name(self) -> &'static str {
        match self {
            Check::ExclusiveCreate => "exclusive-create",
            Check::CheckThenCreate => "check-then-create",
            Check::LostRace => "lost-race",
            Check::ShortReadNotRetried => "short-read-not-retried",
            Check::RenameWithoutFsync => "rename-without-fsync",
            Check::DirNotFsynced => "dir-not-fsynced",
        }
    }

    /// Parses a check name (`"lost-race"`, case-insensitive, `_` accepted for `-`).
    pub fn from_name(s: &str) -> Option<Check> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Check::ALL.iter().copied().find(|c| c.name() == wanted)
    }

    /// How serious its findings are.
    pub fn severity(self) -> Severity {
        match self {
            Check::ExclusiveCreate => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, not a fault.
    Info,
    /// A pattern that can lose data or race with another process.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
        })
    }
}

/// What a check found, with the sequence numbers of the events that show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check that found it.
    pub check: Check,
    /// How serious it is.
    pub severity: Severity,
    /// What happened, in one sentence.
    pub message: String,
    /// The events involved, in ascending order.
    pub seqs: Vec<u64>,
}

impl Finding {
    fn new(check: Check, mut seqs: Vec<u64>, message: String) -> Finding {
        seqs.sort_unstable();
        seqs.dedup();
        Finding {
            check,
            severity: check.severity(),
            message,
            seqs,
        }
    }
}

/// `warning[check-then-create] #12 #15: process 4242 (python3) saw ...`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity, self.check)?;
        for s in &self.seqs {
            write!(f, " #{s}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The checks to run: those named in `only` (every check if `only` is `None`), less those
/// named in `ignore`. An unknown name is an error that names it and lists the valid ones.
pub fn select(only: Option<&[String]>, ignore: &[String]) -> Result<Vec<Check>, String> {
    let parse = |names: &[String]| -> Result<Vec<Check>, String> {
        names
            .iter()
            .map(|n| {
                Check::from_name(n).ok_or_else(|| {
                    let valid: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
                    format!("unknown check {n:?} (valid: {})", valid.join(", "))
                })
            })
            .collect()
    };
    let only = match only {
        Some(names) => parse(names)?,
        None => Check::ALL.to_vec(),
    };
    let ignore = parse(ignore)?;
    Ok(Check::ALL
        .iter()
        .copied()
        .filter(|c| only.contains(c) && !ignore.contains(c))
        .collect())
}

/// Runs the checks in `checks` over `events`, as [`run_checks`] does.
pub fn run_selected(events: &[Event], checks: &[Check]) -> Vec<Finding> {
    let mut all = run_checks(events);
    all.retain(|f| checks.contains(&f.check));
    all
}

/// Runs every check over `events` (in any order: they are put in `seq` order first) and
/// returns the findings ordered by their first sequence number.
pub fn run_checks(events: &[Event]) -> Vec<Finding> {
    let mut ev: Vec<&Event> = events.iter().collect();
    ev.sort_by_key(|e| e.seq);
    let mut out = Vec::new();
    exclusive_create(&ev, &mut out);
    check_then_create(&ev, &mut out);
    short_read_not_retried(&ev, &mut out);
    rename_without_fsync(&ev, &mut out);
    dir_not_fsynced(&ev, &mut out);
    out.sort_by_key(|f| (f.seqs.first().copied(), f.check));
    out
}

/// `process 4242 (python3)`.
fn who(e: &Event) -> String {
    match (e.pid, e.comm.is_empty()) {
        (0, _) => format!("an unknown process (thread {})", e.tid),
        (pid, true) => format!("process {pid}"),
        (pid, false) => format!("process {pid} ({})", e.comm),
    }
}

fn path_of(e: &Event) -> String {
    match (&e.path, e.ino) {
        (Some(p), _) => p.to_string(),
        (None, Some(ino)) => format!("ino {ino}"),
        (None, None) => "?".into(),
    }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn failed_with(e: &Event, errno: &str) -> bool {
    e.errno.as_deref() == Some(errno)
}

/// An open that can change the file: write access or `O_TRUNC`.
fn opens_for_writing(e: &Event) -> bool {
    let f = e.flags.unwrap_or(0);
    f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
}

fn exclusive_create(ev: &[&Event], out: &mut Vec<Finding>) {
    for e in ev {
        if e.op != Op::Create || !e.has_flags(libc::O_EXCL) {
            continue;
        }
        let outcome = match (&e.errno, e.out_ino) {
            (None, Some(ino)) => format!("created it (ino {ino})"),
            (None, None) => "created it".to_string(),
            (Some(x), _) if x == "EEXIST" => {
                "EEXIST, another process created it first (O_EXCL kept this one off its file)"
                    .to_string()
            }
            (Some(x), _) => format!("failed with {x}"),
        };
        out.push(Finding::new(
            Check::ExclusiveCreate,
            vec![e.seq],
            format!(
                "{} opened {} with O_CREAT|O_EXCL: {outcome}",
                who(e),
                path_of(e)
            ),
        ));
    }
}

/// Check-then-create and lost race, which follow the same lookups.
fn check_then_create(ev: &[&Event], out: &mut Vec<Finding>) {
    // ENOENT lookups of a path by a process, not yet followed by its open or create.
    let mut missing: HashMap<(u32, &str), Vec<u64>> = HashMap::new();
    // Successful requests that created or removed each path.
    let mut changes: HashMap<&str, Vec<&Event>> = HashMap::new();
    // The previous request of each thread.
    let mut last_of_tid: HashMap<u32, &Event> = HashMap::new();

    for &e in ev {
        if let (Some(path), true) = (e.path.as_deref(), e.pid != 0) {
            match e.op {
                Op::Lookup if failed_with(e, "ENOENT") => {
                    missing.entry((e.pid, path)).or_default().push(e.seq);
                }
                Op::Create => {
                    let checks = missing.remove(&(e.pid, path)).unwrap_or_default();
                    let kernels = last_of_tid.get(&e.tid).filter(|p| {
                        p.op == Op::Lookup
                            && failed_with(p, "ENOENT")
                            && p.path.as_deref() == Some(path)
                    });
                    let own: Vec<u64> = checks
                        .iter()
                        .copied()
                        .filter(|s| kernels.is_none_or(|k| k.seq != *s))
                        .collect();
                    if let (Some(&check), false) = (own.last(), e.has_flags(libc::O_EXCL)) {
                        let did = match &e.errno {
                            None => "created it without O_EXCL".to_string(),
                            Some(x) => format!("tried to create it without O_EXCL ({x})"),
                        };
                        out.push(Finding::new(
                            Check::CheckThenCreate,
                            vec![check, e.seq],
                            format!("{} saw {path} missing, then {did}", who(e)),
                        ));
                    }
                    lost_race(e, path, &checks, &changes, out);
                }
                Op::Open if opens_for_writing(e) => {
                    let checks = missing.remove(&(e.pid, path)).unwrap_or_default();
                    if let Some(&check) = checks.last() {
                        out.push(Finding::new(
                            Check::CheckThenCreate,
                            vec![check, e.seq],
                            format!(
                                "{} saw {path} missing, then opened it for writing because it \
                                 existed by then (another process created it in between; \
                                 create it with O_CREAT|O_EXCL instead)",
                                who(e)
                            ),
                        ));
                    }
                    lost_race(e, path, &checks, &changes, out);
                }
                _ => {}
            }
        }
        if e.ok() {
            let (removed, made) = match e.op {
                Op::Create | Op::Mknod | Op::Symlink => (None, e.path.as_deref()),
                Op::Link => (None, e.path2.as_deref()),
                Op::Rename => (e.path.as_deref(), e.path2.as_deref()),
                Op::Unlink | Op::Rmdir => (e.path.as_deref(), None),
                _ => (None, None),
            };
            for p in [removed, made].into_iter().flatten() {
                changes.entry(p).or_default().push(e);
            }
        }
        if e.tid != 0 {
            last_of_tid.insert(e.tid, e);
        }
    }
}

/// True if `e` (a successful request) put a node at `path`.
fn creates(e: &Event, path: &str) -> bool {
    match e.op {
        Op::Create | Op::Mknod | Op::Symlink => e.path.as_deref() == Some(path),
        Op::Link | Op::Rename => e.path2.as_deref() == Some(path),
        _ => false,
    }
}

/// `e` (an open or create of `path`) came after the ENOENT lookups `checks` of its process:
/// if it succeeded, was `path` last created in between by another process?
fn lost_race(
    e: &Event,
    path: &str,
    checks: &[u64],
    changes: &HashMap<&str, Vec<&Event>>,
    out: &mut Vec<Finding>,
) {
    let Some(&check) = checks.last() else { return };
    if !e.ok() {
        return;
    }
    let last_change = changes
        .get(path)
        .and_then(|c| c.iter().rev().find(|c| c.seq > check && c.seq < e.seq));
    let Some(other) = last_change.filter(|c| creates(c, path) && c.pid != e.pid) else {
        return;
    };
    let how = match other.op {
        Op::Rename => format!("renamed {} onto it", path_of(other)),
        Op::Link => format!("linked {} to it", path_of(other)),
        Op::Create => "created it".to_string(),
        op => format!("created it ({})", op.name()),
    };
    let (did, pid) = (
        if e.op == Op::Create {
            "created it without O_EXCL"
        } else {
            "opened it"
        },
        e.pid,
    );
    let ino = if e.op == Op::Create { e.out_ino } else { e.ino };
    let file = match ino {
        Some(ino) => format!("the other process's file (ino {ino})"),
        None => "the other process's file".to_string(),
    };
    let trunc = if e.has_flags(libc::O_TRUNC) {
        " and truncated it (O_TRUNC)"
    } else {
        ""
    };
    out.push(Finding::new(
        Check::LostRace,
        vec![check, other.seq, e.seq],
        format!(
            "{} saw {path} missing, then {} {how} before {pid} {did}: {pid} opened {file}{trunc}",
            who(e),
            who(other),
        ),
    ));
}

fn short_read_not_retried(ev: &[&Event], out: &mut Vec<Finding>) {
    // Short reads waiting for the process's next read on the same handle.
    let mut waiting: HashMap<(u32, u64), &Event> = HashMap::new();
    let describe = |r: &Event| {
        let got = r.returned.unwrap_or(0);
        let asked = r.size.unwrap_or(0);
        let at = r.offset.unwrap_or(0);
        let file = r
            .file_size
            .map(|s| format!(" of a {s}-byte file"))
            .unwrap_or_default();
        format!(
            "{} got {got} of {asked} bytes at offset {at}{file} from {} (fh {})",
            who(r),
            path_of(r),
            r.fh.unwrap_or(0)
        )
    };
    for &e in ev {
        let Some(fh) = e.fh else { continue };
        match e.op {
            Op::Read => {
                if let Some(r) = waiting.remove(&(e.pid, fh)) {
                    let next = r.offset.unwrap_or(0) + r.returned.unwrap_or(0) as i64;
                    if e.offset != Some(next) {
                        out.push(Finding::new(
                            Check::ShortReadNotRetried,
                            vec![r.seq, e.seq],
                            format!(
                                "{} and did not ask for the rest: its next read was at offset \
                                 {} (#{}), not {next}",
                                describe(r),
                                e.offset.unwrap_or(0),
                                e.seq
                            ),
                        ));
                    }
                }
                if e.short && e.ok() {
                    waiting.insert((e.pid, fh), e);
                }
            }
            Op::Flush => {
                if let Some(r) = waiting.remove(&(e.pid, fh)) {
                    out.push(Finding::new(
                        Check::ShortReadNotRetried,
                        vec![r.seq, e.seq],
                        format!(
                            "{} and closed the file (flush #{}) without asking for the rest",
                            describe(r),
                            e.seq
                        ),
                    ));
                }
            }
            Op::Release => {
                let mut gone: Vec<&Event> = Vec::new();
                waiting.retain(|&(_, f), r| {
                    if f == fh {
                        gone.push(r);
                    }
                    f != fh
                });
                gone.sort_by_key(|r| r.seq);
                for r in gone {
                    out.push(Finding::new(
                        Check::ShortReadNotRetried,
                        vec![r.seq, e.seq],
                        format!(
                            "{} and the file was closed (release #{}) without a read of the rest",
                            describe(r),
                            e.seq
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn rename_without_fsync(ev: &[&Event], out: &mut Vec<Finding>) {
    // Writes to each inode since its last fsync.
    let mut unsynced: HashMap<u64, Vec<u64>> = HashMap::new();
    for &e in ev {
        if !e.ok() {
            continue;
        }
        match e.op {
            Op::Write => {
                // O_DSYNC (and O_SYNC, which includes it) makes each write durable.
                let synchronous = e.flags.is_some_and(|f| f & libc::O_DSYNC != 0);
                if let (Some(ino), false, false) = (e.ino, synchronous, e.returned == Some(0)) {
                    unsynced.entry(ino).or_default().push(e.seq);
                }
            }
            Op::CopyFileRange => {
                if let (Some(ino), false) = (e.ino2, e.returned == Some(0)) {
                    unsynced.entry(ino).or_default().push(e.seq);
                }
            }
            Op::Fsync => {
                if let Some(ino) = e.ino {
                    unsynced.remove(&ino);
                }
            }
            Op::Rename => {
                let (Some(node), Some(replaced)) = (e.node, e.out_ino) else {
                    continue;
                };
                let Some(writes) = unsynced.get(&node).filter(|w| !w.is_empty()) else {
                    continue;
                };
                let (first, last) = (writes[0], writes[writes.len() - 1]);
                let which = if first == last {
                    format!("a write (#{first})")
                } else {
                    format!("{} writes (#{first} to #{last})", writes.len())
                };
                let target = e.path2.clone().unwrap_or_else(|| "?".into());
                out.push(Finding::new(
                    Check::RenameWithoutFsync,
                    vec![first, last, e.seq],
                    format!(
                        "{} renamed {} (ino {node}) over {target} (ino {replaced}) with {which} \
                         not fsynced: after a crash {target} may be empty or partial",
                        who(e),
                        path_of(e)
                    ),
                ));
            }
            _ => {}
        }
    }
}

fn dir_not_fsynced(ev: &[&Event], out: &mut Vec<Finding>) {
    struct Change {
        seq: u64,
        what: String,
        /// The name the change put in the directory, if any: when that name is removed again
        /// before a crash could matter (a temporary file, a pidfile unlinked at exit), the
        /// change has nothing left to lose.
        made: Option<String>,
    }
    type Pending = BTreeMap<u64, (Option<String>, Vec<Change>)>;
    // Directory inode -> (its path when known, changes since its last fsyncdir).
    let mut pending: Pending = BTreeMap::new();
    let note = |pending: &mut Pending, dir: u64, path: Option<&str>, seq: u64, what: &str| {
        let entry = pending.entry(dir).or_insert_with(|| (None, Vec::new()));
        if let Some(p) = path {
            entry.0 = Some(parent_of(p).to_string());
        }
        match entry.1.last_mut() {
            // A rename within one directory is noted once, with the name it made.
            Some(c) if c.seq == seq => {
                if path.is_some() {
                    c.made = path.map(str::to_string);
                }
            }
            _ => entry.1.push(Change {
                seq,
                what: what.to_string(),
                made: path.map(str::to_string),
            }),
        }
    };
    // The name `path` left directory `dir`: the changes that made it are moot.
    let forget = |pending: &mut Pending, dir: u64, path: &str| {
        if let Some((_, changes)) = pending.get_mut(&dir) {
            changes.retain(|c| c.made.as_deref() != Some(path));
        }
    };
    for &e in ev {
        if !e.ok() {
            continue;
        }
        match e.op {
            Op::Create | Op::Mkdir | Op::Mknod | Op::Symlink => {
                if let Some(dir) = e.ino {
                    let what = format!("{} {}", e.op.name(), path_of(e));
                    note(&mut pending, dir, e.path.as_deref(), e.seq, &what);
                }
            }
            Op::Link => {
                if let (Some(dir), Some(to)) = (e.ino2, e.path2.as_deref()) {
                    let what = format!("link {} to {to}", path_of(e));
                    note(&mut pending, dir, Some(to), e.seq, &what);
                }
            }
            Op::Rename => {
                let what = format!(
                    "rename {} to {}",
                    path_of(e),
                    e.path2.as_deref().unwrap_or("?")
                );
                if let (Some(dir), Some(from)) = (e.ino, e.path.as_deref()) {
                    forget(&mut pending, dir, from);
                    // The name left here; no name was made in this directory (unless it is
                    // also the target's, noted next).
                    note(&mut pending, dir, None, e.seq, &what);
                    if let Some(entry) = pending.get_mut(&dir) {
                        entry.0 = Some(parent_of(from).to_string());
                    }
                }
                if let Some(dir) = e.ino2 {
                    note(&mut pending, dir, e.path2.as_deref(), e.seq, &what);
                }
            }
            Op::Unlink | Op::Rmdir => {
                if let (Some(dir), Some(path)) = (e.ino, e.path.as_deref()) {
                    forget(&mut pending, dir, path);
                }
                // A removed directory has no names left to lose.
                if let (Op::Rmdir, Some(node)) = (e.op, e.node) {
                    pending.remove(&node);
                }
            }
            Op::Fsyncdir => {
                if let Some(dir) = e.ino {
                    pending.remove(&dir);
                }
            }
            _ => {}
        }
    }
    const SHOWN: usize = 5;
    for (dir, (path, changes)) in pending {
        if changes.is_empty() {
            continue;
        }
        let mut list: Vec<String> = changes
            .iter()
            .take(SHOWN)
            .map(|c| format!("{} (#{})", c.what, c.seq))
            .collect();
        if changes.len() > SHOWN {
            list.push(format!("and {} more", changes.len() - SHOWN));
        }
        let name = match path {
            Some(p) => format!("directory {p} (ino {dir})"),
            None => format!("directory ino {dir}"),
        };
        out.push(Finding::new(
            Check::DirNotFsynced,
            changes.iter().map(|c| c.seq).collect(),
            format!(
                "{name} was not fsynced after {}: after a crash these names may be lost",
                list.join(", ")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: u32 = 4242;
    const Y: u32 = 5151;
    const ROOT: u64 = 1;

    /// A trace built one event at a time, numbered from 1.
    #[derive(Default)]
    struct Trace(Vec<Event>);

    impl Trace {
        fn push(&mut self, pid: u32, op: Op, path: &str, f: impl FnOnce(&mut Event)) -> u64 {
            let seq = self.0.len() as u64 + 1;
            let mut e = Event {
                seq,
                ts_ns: seq * 1000,
                dur_ns: 500,
                pid,
                tid: pid,
                comm: if pid == X { "python3" } else { "sh" }.into(),
                op,
                ino: Some(ROOT),
                path: Some(path.into()),
                ..Event::default()
            };
            f(&mut e);
            self.0.push(e);
            seq
        }

        fn lookup_missing(&mut self, pid: u32, path: &str) -> u64 {
            self.push(pid, Op::Lookup, path, |e| e.errno = Some("ENOENT".into()))
        }

        fn lookup_found(&mut self, pid: u32, path: &str, ino: u64) -> u64 {
            self.push(pid, Op::Lookup, path, |e| e.out_ino = Some(ino))
        }

        fn create(&mut self, pid: u32, path: &str, flags: i32, ino: u64, fh: u64) -> u64 {
            self.push(pid, Op::Create, path, |e| {
                e.flags = Some(flags | libc::O_CREAT);
                e.mode = Some(0o644);
                e.out_ino = Some(ino);
                e.out_fh = Some(fh);
            })
        }

        fn create_failed(&mut self, pid: u32, path: &str, flags: i32, errno: &str) -> u64 {
            self.push(pid, Op::Create, path, |e| {
                e.flags = Some(flags | libc::O_CREAT);
                e.mode = Some(0o644);
                e.errno = Some(errno.into());
            })
        }

        fn open(&mut self, pid: u32, path: &str, ino: u64, flags: i32, fh: u64) -> u64 {
            self.push(pid, Op::Open, path, |e| {
                e.ino = Some(ino);
                e.flags = Some(flags);
                e.out_fh = Some(fh);
            })
        }

        fn on_fh(&mut self, pid: u32, op: Op, path: &str, ino: u64, fh: u64) -> u64 {
            self.push(pid, op, path, |e| {
                e.ino = Some(ino);
                e.fh = Some(fh);
            })
        }

        #[allow(clippy::too_many_arguments)]
        fn read(
            &mut self,
            pid: u32,
            path: &str,
            fh: u64,
            offset: i64,
            size: u64,
            returned: u64,
            file_size: u64,
        ) -> u64 {
            self.push(pid, Op::Read, path, |e| {
                e.ino = Some(5);
                e.fh = Some(fh);
                e.offset = Some(offset);
                e.size = Some(size);
                e.returned = Some(returned);
                e.file_size = Some(file_size);
                e.short = (returned < size) && (offset as u64 + returned < file_size);
                e.flags = Some(libc::O_RDONLY);
            })
        }

        fn write(&mut self, pid: u32, path: &str, ino: u64, fh: u64, offset: i64, n: u64) -> u64 {
            self.push(pid, Op::Write, path, |e| {
                e.ino = Some(ino);
                e.fh = Some(fh);
                e.offset = Some(offset);
                e.size = Some(n);
                e.returned = Some(n);
                e.flags = Some(libc::O_WRONLY);
            })
        }

        fn rename(
            &mut self,
            pid: u32,
            from: &str,
            to: &str,
            node: u64,
            replaced: Option<u64>,
        ) -> u64 {
            self.push(pid, Op::Rename, from, |e| {
                e.ino2 = Some(ROOT);
                e.path2 = Some(to.into());
                e.flags = Some(0);
                e.node = Some(node);
                e.out_ino = replaced;
            })
        }

        fn fsyncdir(&mut self, pid: u32, path: &str, dir: u64) -> u64 {
            self.push(pid, Op::Fsyncdir, path, |e| {
                e.ino = Some(dir);
                e.fh = Some(99);
            })
        }

        fn findings(&self, check: Check) -> Vec<Finding> {
            // Shuffled input: the checks must order events by seq themselves.
            let mut events = self.0.clone();
            events.reverse();
            run_checks(&events)
                .into_iter()
                .filter(|f| f.check == check)
                .collect()
        }
    }

    const PIDFILE: i32 = libc::O_WRONLY | libc::O_EXCL | libc::O_CLOEXEC;

    #[test]
    fn exclusive_create_reports_each_outcome() {
        let mut t = Trace::default();
        t.lookup_missing(X, "/run/app.pid");
        let won = t.create(X, "/run/app.pid", PIDFILE, 5, 3);
        t.lookup_missing(Y, "/run/other.pid");
        let lost = t.create_failed(Y, "/run/other.pid", PIDFILE, "EEXIST");
        let f = t.findings(Check::ExclusiveCreate);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].seqs, vec![won]);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(
            f[0].to_string(),
            format!(
                "info[exclusive-create] #{won}: process 4242 (python3) opened /run/app.pid \
                 with O_CREAT|O_EXCL: created it (ino 5)"
            )
        );
        assert_eq!(f[1].seqs, vec![lost]);
        assert!(f[1].message.contains("EEXIST"), "{}", f[1].message);
    }

    #[test]
    fn exclusive_create_silent_without_o_excl() {
        let mut t = Trace::default();
        t.lookup_missing(X, "/log");
        t.create(X, "/log", libc::O_WRONLY | libc::O_APPEND, 5, 3);
        assert!(t.findings(Check::ExclusiveCreate).is_empty());
    }

    #[test]
    fn check_then_create_fires_on_stat_then_create() {
        let mut t = Trace::default();
        // stat() fails, then open(O_CREAT) does its own lookup and create.
        let stat = t.lookup_missing(X, "/run/app.pid");
        t.lookup_missing(X, "/run/app.pid");
        let create = t.create(X, "/run/app.pid", libc::O_WRONLY | libc::O_TRUNC, 5, 3);
        let f = t.findings(Check::CheckThenCreate);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].to_string(),
            format!(
                "warning[check-then-create] #{stat} #{create}: process 4242 (python3) saw \
                 /run/app.pid missing, then created it without O_EXCL"
            )
        );
        let json = serde_json::to_value(&f[0]).unwrap();
        assert_eq!(json["check"], "check-then-create");
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["seqs"], serde_json::json!([stat, create]));
    }

    #[test]
    fn check_then_create_fires_when_the_name_appeared_before_the_open() {
        let mut t = Trace::default();
        let stat = t.lookup_missing(X, "/lock");
        t.lookup_missing(Y, "/lock");
        t.create(Y, "/lock", libc::O_WRONLY, 9, 1);
        t.lookup_found(X, "/lock", 9);
        let open = t.open(X, "/lock", 9, libc::O_RDWR, 2);
        let f = t.findings(Check::CheckThenCreate);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![stat, open]);
        assert!(f[0].message.contains("existed by then"), "{}", f[0].message);
    }

    #[test]
    fn check_then_create_silent_on_plain_and_exclusive_creates() {
        let mut t = Trace::default();
        // open(O_CREAT) with no check first: the lookup is the kernel's own.
        t.lookup_missing(X, "/log");
        t.create(X, "/log", libc::O_WRONLY | libc::O_APPEND, 5, 3);
        // A pidfile created with O_EXCL after a stat.
        t.lookup_missing(X, "/run/app.pid");
        t.lookup_missing(X, "/run/app.pid");
        t.create(X, "/run/app.pid", PIDFILE, 6, 4);
        // A reader waiting for a file to appear, then opening it read-only.
        t.lookup_missing(Y, "/ready");
        t.create(X, "/ready", libc::O_WRONLY | libc::O_EXCL, 7, 5);
        t.lookup_found(Y, "/ready", 7);
        t.open(Y, "/ready", 7, libc::O_RDONLY, 6);
        assert!(t.findings(Check::CheckThenCreate).is_empty());
    }

    #[test]
    fn lost_race_fires_when_another_process_creates_in_between() {
        let mut t = Trace::default();
        let x_looks = t.lookup_missing(X, "/state");
        t.lookup_missing(Y, "/state");
        let y_creates = t.create(Y, "/state", libc::O_WRONLY, 7, 1);
        let x_creates = t.create(X, "/state", libc::O_WRONLY | libc::O_TRUNC, 7, 2);
        let f = t.findings(Check::LostRace);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![x_looks, y_creates, x_creates]);
        let m = &f[0].message;
        assert!(
            m.starts_with(
                "process 4242 (python3) saw /state missing, then process 5151 (sh) created it"
            ),
            "{m}"
        );
        assert_eq!(
            m,
            "process 4242 (python3) saw /state missing, then process 5151 (sh) created it \
             before 4242 created it without O_EXCL: 4242 opened the other process's file \
             (ino 7) and truncated it (O_TRUNC)"
        );

        // The other process renames its file into place; the first then opens it.
        let mut t = Trace::default();
        let stat = t.lookup_missing(X, "/cfg");
        let put = t.rename(Y, "/cfg.tmp", "/cfg", 8, None);
        t.lookup_found(X, "/cfg", 8);
        let open = t.open(X, "/cfg", 8, libc::O_WRONLY, 3);
        let f = t.findings(Check::LostRace);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![stat, put, open]);
        assert!(
            f[0].message
                .contains("renamed /cfg.tmp onto it before 4242 opened it"),
            "{}",
            f[0].message
        );
        assert!(f[0].message.contains("(ino 8)"), "{}", f[0].message);
        assert!(!f[0].message.contains("truncated"));
    }

    #[test]
    fn lost_race_silent_with_o_excl() {
        let mut t = Trace::default();
        t.lookup_missing(X, "/state");
        t.lookup_missing(Y, "/state");
        t.create(Y, "/state", libc::O_WRONLY | libc::O_EXCL, 7, 1);
        t.create_failed(X, "/state", libc::O_WRONLY | libc::O_EXCL, "EEXIST");
        assert!(t.findings(Check::LostRace).is_empty());
        // Nor when the same process creates the file it looked up.
        let mut t = Trace::default();
        t.lookup_missing(X, "/own");
        t.create(X, "/own", libc::O_WRONLY, 7, 1);
        t.lookup_found(X, "/own", 7);
        t.open(X, "/own", 7, libc::O_WRONLY, 2);
        assert!(t.findings(Check::LostRace).is_empty());
    }

    #[test]
    fn lost_race_silent_when_the_other_file_was_removed_again() {
        let mut t = Trace::default();
        t.lookup_missing(X, "/state");
        t.create(Y, "/state", libc::O_WRONLY, 7, 1);
        t.push(Y, Op::Unlink, "/state", |e| e.node = Some(7));
        t.lookup_missing(X, "/state");
        t.create(X, "/state", libc::O_WRONLY | libc::O_EXCL, 8, 2);
        assert!(t.findings(Check::LostRace).is_empty());
    }

    #[test]
    fn short_read_not_retried_fires_on_skip_and_on_close() {
        let mut t = Trace::default();
        let short = t.read(X, "/data", 3, 0, 4096, 1, 10);
        let next = t.read(X, "/data", 3, 4096, 4096, 0, 10);
        let f = t.findings(Check::ShortReadNotRetried);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![short, next]);
        assert!(
            f[0].message.starts_with(
                "process 4242 (python3) got 1 of 4096 bytes at offset 0 of a 10-byte file \
                 from /data (fh 3)"
            ),
            "{}",
            f[0].message
        );
        assert!(f[0].message.contains("not 1"), "{}", f[0].message);

        let mut t = Trace::default();
        let short = t.read(X, "/data", 3, 0, 4096, 1, 10);
        let release = t.on_fh(X, Op::Release, "/data", 5, 3);
        let f = t.findings(Check::ShortReadNotRetried);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![short, release]);
        assert!(f[0].message.contains("release"), "{}", f[0].message);

        let mut t = Trace::default();
        let short = t.read(X, "/data", 3, 0, 4096, 1, 10);
        let flush = t.on_fh(X, Op::Flush, "/data", 5, 3);
        t.on_fh(X, Op::Release, "/data", 5, 3);
        let f = t.findings(Check::ShortReadNotRetried);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![short, flush]);
    }

    #[test]
    fn short_read_not_retried_silent_when_the_reader_retries() {
        let mut t = Trace::default();
        t.read(X, "/data", 3, 0, 4096, 1, 10);
        t.read(X, "/data", 3, 1, 4096, 9, 10);
        t.read(X, "/data", 3, 10, 4096, 0, 10);
        // Another process's reads on its own handle do not interfere.
        t.read(Y, "/data", 4, 0, 4096, 10, 10);
        t.on_fh(X, Op::Flush, "/data", 5, 3);
        t.on_fh(X, Op::Release, "/data", 5, 3);
        // A short read still open when the trace ends is not judged.
        t.read(Y, "/data", 4, 0, 4096, 2, 10);
        assert!(t.findings(Check::ShortReadNotRetried).is_empty());
    }

    #[test]
    fn rename_without_fsync_fires_on_unsynced_replacement() {
        let mut t = Trace::default();
        t.create(X, "/cfg.tmp", libc::O_WRONLY, 5, 3);
        let w1 = t.write(X, "/cfg.tmp", 5, 3, 0, 100);
        let w2 = t.write(X, "/cfg.tmp", 5, 3, 100, 100);
        t.on_fh(X, Op::Release, "/cfg.tmp", 5, 3);
        let r = t.rename(X, "/cfg.tmp", "/cfg", 5, Some(4));
        let f = t.findings(Check::RenameWithoutFsync);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![w1, w2, r]);
        assert_eq!(
            f[0].message,
            "process 4242 (python3) renamed /cfg.tmp (ino 5) over /cfg (ino 4) with 2 writes \
             (#2 to #3) not fsynced: after a crash /cfg may be empty or partial"
        );

        // Writes after the last fsync count too.
        let mut t = Trace::default();
        t.write(X, "/a.tmp", 5, 3, 0, 10);
        t.on_fh(X, Op::Fsync, "/a.tmp", 5, 3);
        let late = t.write(X, "/a.tmp", 5, 3, 10, 10);
        let r = t.rename(X, "/a.tmp", "/a", 5, Some(4));
        let f = t.findings(Check::RenameWithoutFsync);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![late, r]);
    }

    #[test]
    fn rename_without_fsync_silent_after_fsync_or_without_replacement() {
        let mut t = Trace::default();
        t.write(X, "/a.tmp", 5, 3, 0, 10);
        t.on_fh(X, Op::Fsync, "/a.tmp", 5, 3);
        t.rename(X, "/a.tmp", "/a", 5, Some(4));
        // Nothing replaced: nothing to lose.
        t.write(X, "/b.tmp", 6, 4, 0, 10);
        t.rename(X, "/b.tmp", "/b", 6, None);
        // O_SYNC writes are durable on their own.
        t.push(X, Op::Write, "/c.tmp", |e| {
            e.ino = Some(7);
            e.fh = Some(5);
            e.offset = Some(0);
            e.size = Some(10);
            e.returned = Some(10);
            e.flags = Some(libc::O_WRONLY | libc::O_SYNC);
        });
        t.rename(X, "/c.tmp", "/c", 7, Some(8));
        assert!(t.findings(Check::RenameWithoutFsync).is_empty());
    }

    #[test]
    fn dir_not_fsynced_lists_changes_per_directory() {
        let mut t = Trace::default();
        t.create(X, "/a", libc::O_WRONLY, 5, 3);
        let m = t.push(X, Op::Mkdir, "/d", |e| {
            e.mode = Some(0o755);
            e.out_ino = Some(6);
        });
        let sub = t.create(X, "/d/x", libc::O_WRONLY, 7, 4);
        t.0.last_mut().unwrap().ino = Some(6);
        let r = t.rename(X, "/a", "/b", 5, None);
        let f = t.findings(Check::DirNotFsynced);
        assert_eq!(f.len(), 2, "{f:?}");
        // The create of /a is moot once the rename took the name away: the rename is listed.
        assert_eq!(f[0].seqs, vec![m, r]);
        assert_eq!(
            f[0].message,
            "directory / (ino 1) was not fsynced after mkdir /d (#2), rename /a to /b (#4): \
             after a crash these names may be lost"
        );
        assert_eq!(f[1].seqs, vec![sub]);
        assert!(
            f[1].message.starts_with("directory /d (ino 6)"),
            "{}",
            f[1].message
        );

        // Changes after the last fsyncdir still count.
        let mut t = Trace::default();
        t.create(X, "/a", libc::O_WRONLY, 5, 3);
        t.fsyncdir(X, "/", ROOT);
        let late = t.create(X, "/b", libc::O_WRONLY, 6, 4);
        let f = t.findings(Check::DirNotFsynced);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![late]);
    }

    #[test]
    fn dir_not_fsynced_silent_after_fsyncdir() {
        let mut t = Trace::default();
        t.create(X, "/a", libc::O_WRONLY, 5, 3);
        t.rename(X, "/a", "/b", 5, None);
        t.fsyncdir(X, "/", ROOT);
        // A failed create changes nothing.
        t.create_failed(X, "/c", libc::O_WRONLY | libc::O_EXCL, "EEXIST");
        assert!(t.findings(Check::DirNotFsynced).is_empty());
    }

    #[test]
    fn dir_not_fsynced_silent_on_names_removed_again() {
        let mut t = Trace::default();
        // A pidfile removed at exit, a temporary file, an emptied work directory.
        t.create(X, "/app.pid", PIDFILE, 5, 3);
        t.create(X, "/scratch", libc::O_RDWR, 6, 4);
        t.push(X, Op::Unlink, "/scratch", |e| e.node = Some(6));
        t.push(X, Op::Mkdir, "/work", |e| e.out_ino = Some(7));
        t.create(X, "/work/x", libc::O_WRONLY, 8, 5);
        t.0.last_mut().unwrap().ino = Some(7);
        t.push(X, Op::Unlink, "/work/x", |e| {
            e.ino = Some(7);
            e.node = Some(8);
        });
        t.push(X, Op::Rmdir, "/work", |e| e.node = Some(7));
        t.push(X, Op::Unlink, "/app.pid", |e| e.node = Some(5));
        assert!(t.findings(Check::DirNotFsynced).is_empty());
        // A link made and removed; a symlink that stays is reported.
        let mut t = Trace::default();
        t.push(X, Op::Link, "/a", |e| {
            e.ino2 = Some(ROOT);
            e.path2 = Some("/b".into());
        });
        t.push(X, Op::Unlink, "/b", |e| e.node = Some(5));
        let s = t.push(X, Op::Symlink, "/l", |e| e.out_ino = Some(9));
        let f = t.findings(Check::DirNotFsynced);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].seqs, vec![s]);
    }

    /// The careful ways to do each thing: only the informational finding remains.
    #[test]
    fn correct_programs_draw_no_warnings() {
        let mut t = Trace::default();
        // Pidfile: O_EXCL create, write, fsync, fsyncdir.
        t.lookup_missing(X, "/app.pid");
        t.create(X, "/app.pid", PIDFILE, 5, 3);
        t.write(X, "/app.pid", 5, 3, 0, 5);
        t.on_fh(X, Op::Fsync, "/app.pid", 5, 3);
        t.on_fh(X, Op::Flush, "/app.pid", 5, 3);
        t.on_fh(X, Op::Release, "/app.pid", 5, 3);
        t.fsyncdir(X, "/", ROOT);
        // Atomic replace: write the temporary file, fsync, rename over, fsyncdir.
        t.lookup_missing(Y, "/cfg.tmp");
        t.create(Y, "/cfg.tmp", libc::O_WRONLY | libc::O_EXCL, 6, 4);
        t.write(Y, "/cfg.tmp", 6, 4, 0, 100);
        t.on_fh(Y, Op::Fsync, "/cfg.tmp", 6, 4);
        t.on_fh(Y, Op::Release, "/cfg.tmp", 6, 4);
        t.rename(Y, "/cfg.tmp", "/cfg", 6, Some(2));
        t.fsyncdir(Y, "/", ROOT);
        // A reader that retries after a 1-byte read.
        t.open(X, "/cfg", 6, libc::O_RDONLY, 7);
        t.read(X, "/cfg", 7, 0, 4096, 1, 100);
        t.read(X, "/cfg", 7, 1, 4096, 99, 100);
        t.read(X, "/cfg", 7, 100, 4096, 0, 100);
        t.on_fh(X, Op::Release, "/cfg", 6, 7);

        let all = run_checks(&t.0);
        assert!(
            all.iter().all(|f| f.severity == Severity::Info),
            "{:#?}",
            all
        );
        assert_eq!(all.len(), 2);
        assert!(all.windows(2).all(|w| w[0].seqs[0] <= w[1].seqs[0]));
    }

    #[test]
    fn names_parse_back() {
        for &c in Check::ALL {
            assert_eq!(Check::from_name(c.name()), Some(c));
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.name())
            );
        }
        assert_eq!(Check::from_name("Lost_Race"), Some(Check::LostRace));
        assert_eq!(Check::from_name("nope"), None);
    }
}
