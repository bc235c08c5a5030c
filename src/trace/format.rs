//! Trace formats: JSON Lines (read and write), strace-like text, Chrome trace-event JSON.
//!
//! * JSON Lines: an optional [`Header`] line, then one [`Event`] object per line, with the
//!   field names of [`Event`] (a documented contract). [`read_jsonl`] reads it back.
//! * Text: [`text_line`] renders one event the way strace renders a system call:
//!   `#12 [4242 python3] create("/run/app.pid", O_WRONLY|O_CREAT|O_EXCL, 0644) = ino 5 fh 3 <12us>`.
//! * Chrome trace-event JSON: [`write_chrome`] writes one complete (`"ph":"X"`) event per
//!   request, on one track per process and thread, for `chrome://tracing` and Perfetto.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde_json::{Map, Value, json};

use super::event::{SetattrFields, TimeSpec};
use super::{Event, FORMAT_VERSION, Gap, Header, Op, decorate, flags};

// ---------------------------------------------------------------------------------------------
// JSON Lines

/// Writes the header line of a JSON Lines trace.
pub fn write_header(w: &mut impl Write, h: &Header) -> io::Result<()> {
    serde_json::to_writer(&mut *w, h)?;
    w.write_all(b"\n")
}

/// Writes the line that marks events missing from a JSON Lines trace.
pub fn write_gap(w: &mut impl Write, gap: &Gap) -> io::Result<()> {
    serde_json::to_writer(&mut *w, &json!({ "gap": gap }))?;
    w.write_all(b"\n")
}

/// Writes one event as one JSON Lines line.
pub fn write_event(w: &mut impl Write, e: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut *w, &decorated(e))?;
    w.write_all(b"\n")
}

/// The event as written out: with `flags_str` filled (the request path leaves it empty).
pub fn decorated(e: &Event) -> std::borrow::Cow<'_, Event> {
    if e.flags.is_some() && e.flags_str.is_none() {
        let mut d = e.clone();
        decorate(&mut d);
        std::borrow::Cow::Owned(d)
    } else {
        std::borrow::Cow::Borrowed(e)
    }
}

/// Reads a JSON Lines trace: an optional header line (recognized by its `rawfs_trace` key,
/// and only before the first event), then events. Blank lines are skipped; fields this build
/// does not know are ignored. Events are returned in file order, which need not be `seq`
/// order.
pub fn read_jsonl(r: impl BufRead) -> Result<(Option<Header>, Vec<Event>), FormatError> {
    read_jsonl_with_gaps(r).map(|t| (t.header, t.events))
}

/// A JSON Lines trace as read: the header, the events in file order, and the marks of events
/// missing from it.
#[derive(Debug, Default)]
pub struct Jsonl {
    /// The header line, if the trace has one.
    pub header: Option<Header>,
    /// The events, in file order.
    pub events: Vec<Event>,
    /// Where the writer dropped events (`{"gap": ...}` lines).
    pub gaps: Vec<Gap>,
}

impl Jsonl {
    /// Events missing from the trace, by its gap lines.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|g| g.dropped).sum()
    }
}

/// [`read_jsonl`], also returning the gap lines.
pub fn read_jsonl_with_gaps(r: impl BufRead) -> Result<Jsonl, FormatError> {
    let mut header = None;
    let mut events = Vec::new();
    let mut gaps = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let n = i + 1;
        let err = |kind| FormatError { line: n, kind };
        let line = line.map_err(|e| err(FormatErrorKind::Io(e)))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // The quoted key cannot occur inside a JSON string value, where its quotes would be
        // escaped, so only a line with that key pays for the generic parse.
        if line.contains("\"rawfs_trace\"") {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| err(FormatErrorKind::NotJson(e.to_string())))?;
            if let Some(version) = v.get("rawfs_trace") {
                if header.is_some() {
                    return Err(err(FormatErrorKind::MisplacedHeader("a second header")));
                }
                if !events.is_empty() {
                    return Err(err(FormatErrorKind::MisplacedHeader(
                        "a header after events",
                    )));
                }
                header = Some(parse_header(version, v.clone()).map_err(err)?);
                continue;
            }
        }
        // As for the header: only a line with the quoted key is parsed twice.
        if line.contains("\"gap\"") {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| err(FormatErrorKind::NotJson(e.to_string())))?;
            if let Some(gap) = v.get("gap") {
                let gap: Gap = serde_json::from_value(gap.clone())
                    .map_err(|e| err(FormatErrorKind::NotJson(format!("bad gap line: {e}"))))?;
                gaps.push(gap);
                continue;
            }
        }
        match serde_json::from_str::<Event>(line) {
            Ok(e) => events.push(e),
            Err(_) => return Err(err(diagnose_event(line))),
        }
    }
    Ok(Jsonl {
        header,
        events,
        gaps,
    })
}

fn parse_header(version: &Value, v: Value) -> Result<Header, FormatErrorKind> {
    let Some(version) = version.as_u64() else {
        return Err(FormatErrorKind::BadHeader(format!(
            "rawfs_trace is {version}, not a version number"
        )));
    };
    if version > u64::from(FORMAT_VERSION) {
        return Err(FormatErrorKind::NewerVersion { found: version });
    }
    if version == 0 {
        return Err(FormatErrorKind::BadHeader(
            "format version 0 does not exist".into(),
        ));
    }
    serde_json::from_value(v).map_err(|e| FormatErrorKind::BadHeader(e.to_string()))
}

/// Says why a line that did not parse as an event is not one.
fn diagnose_event(line: &str) -> FormatErrorKind {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return FormatErrorKind::NotJson(e.to_string()),
    };
    let Some(obj) = v.as_object() else {
        return FormatErrorKind::NotObject;
    };
    match obj.get("op") {
        None => return FormatErrorKind::BadEvent("missing field `op`".into()),
        Some(Value::String(s)) if serde_json::from_value::<Op>(json!(s)).is_err() => {
            return FormatErrorKind::UnknownOp(s.clone());
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return FormatErrorKind::BadEvent(format!("op is {other}, not a string"));
        }
    }
    match serde_json::from_value::<Event>(v) {
        Err(e) => FormatErrorKind::BadEvent(e.to_string()),
        Ok(_) => FormatErrorKind::BadEvent("does not parse as an event".into()),
    }
}

/// A JSON Lines trace that could not be read: where, and why.
#[derive(Debug)]
pub struct FormatError {
    /// Line number, from 1.
    pub line: usize,
    /// What was wrong with it.
    pub kind: FormatErrorKind,
}

/// What was wrong with a line of a JSON Lines trace.
#[derive(Debug)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// The line could not be read (I/O error, or not UTF-8).
    Io(io::Error),
    /// The line is not JSON; holds the parser's message.
    NotJson(String),
    /// The line is JSON but not an object.
    NotObject,
    /// An event whose `op` this build does not know.
    UnknownOp(String),
    /// An event with a missing or ill-typed field.
    BadEvent(String),
    /// A header that does not parse.
    BadHeader(String),
    /// A header whose format version is newer than [`FORMAT_VERSION`].
    NewerVersion {
        /// The version the header announces.
        found: u64,
    },
    /// A header after the first event, or a second header; says which.
    MisplacedHeader(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            FormatErrorKind::Io(e) => write!(f, "cannot read: {e}"),
            FormatErrorKind::NotJson(e) => write!(f, "not JSON: {e}"),
            FormatErrorKind::NotObject => f.write_str("not a JSON object"),
            FormatErrorKind::UnknownOp(op) => {
                write!(f, "unknown op {op:?} (written by a newer rawfs?)")
            }
            FormatErrorKind::BadEvent(e) => write!(f, "not a trace event: {e}"),
            FormatErrorKind::BadHeader(e) => write!(f, "bad trace header: {e}"),
            FormatErrorKind::NewerVersion { found } => write!(
                f,
                "trace format version {found} is newer than this rawfs reads \
                 (version {FORMAT_VERSION}): use a newer rawfs"
            ),
            FormatErrorKind::MisplacedHeader(what) => {
                write!(f, "{what}: a trace has one header, on its first line")
            }
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FormatErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// One event as one strace-like line, without a newline:
/// `#seq [pid comm] op(arguments) = result <duration>`, then ` [rule N]` if a fault rule
/// changed the request. A failure reads `= -1 ENOENT`; a thread other than the process's main
/// one shows as `[pid/tid comm]`.
pub fn text_line(e: &Event) -> String {
    let mut s = format!("#{} [{}] {}(", e.seq, who(e), e.op.name());
    s.push_str(&args(e).join(", "));
    s.push_str(") = ");
    s.push_str(&result(e));
    s.push_str(" <");
    s.push_str(&duration(e.dur_ns));
    s.push('>');
    match (e.rule, &e.fault) {
        (Some(rule), Some(what)) => s.push_str(&format!(" [rule {rule}: {what}]")),
        (Some(rule), None) => s.push_str(&format!(" [rule {rule}]")),
        // A crash says what it lost even when no rule fired it.
        (None, Some(what)) if e.op == Op::Crash => s.push_str(&format!(" [{what}]")),
        _ => {}
    }
    s
}

fn who(e: &Event) -> String {
    let id = match (e.pid, e.tid) {
        (0, 0) => return "kernel".into(),
        (0, tid) => format!("?/{tid}"),
        (pid, tid) if tid == pid || tid == 0 => pid.to_string(),
        (pid, tid) => format!("{pid}/{tid}"),
    };
    if e.comm.is_empty() {
        id
    } else {
        format!("{id} {}", e.comm)
    }
}

/// The flags decoded: `flags_str` if the event has it, else decoded from `flags` as
/// [`decorate`] would.
///
/// fsync and fsyncdir carry 1 for fdatasync, shown as `datasync` (and nothing for 0).
pub fn flags_text(e: &Event) -> Option<String> {
    if matches!(e.op, Op::Fsync | Op::Fsyncdir) {
        return e.flags.filter(|&f| f != 0).map(|_| "datasync".into());
    }
    if e.flags_str.is_some() {
        return e.flags_str.clone();
    }
    let mut bare = Event {
        op: e.op,
        flags: e.flags,
        ..Event::default()
    };
    decorate(&mut bare);
    bare.flags_str
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() => q.push_str(&format!("\\x{:02x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The node the request is about: its path, or its inode when the path is unknown.
fn subject(e: &Event) -> String {
    match (&e.path, e.ino) {
        (Some(p), _) => quote(p),
        (None, Some(ino)) => format!("ino {ino}"),
        (None, None) => "?".into(),
    }
}

fn perm(mode: Option<u32>) -> String {
    mode.map_or_else(|| "?".into(), |m| format!("{:04o}", m & 0o7777))
}

fn span(size: Option<u64>, offset: Option<i64>) -> String {
    let size = size.map_or_else(|| "?".into(), |s| s.to_string());
    match offset {
        Some(o) => format!("{size} @ {o}"),
        None => size,
    }
}

fn time_spec(t: &TimeSpec) -> String {
    match t {
        TimeSpec::Now => "now".into(),
        TimeSpec::Ns(ns) => {
            let sign = if *ns < 0 { "-" } else { "" };
            let abs = ns.unsigned_abs();
            format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
        }
    }
}

fn setattr_fields(set: &SetattrFields) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(size) = set.size {
        v.push(format!("size={size}"));
    }
    if let Some(mode) = set.mode {
        v.push(format!("mode={}", flags::mode(mode)));
    }
    if let Some(uid) = set.uid {
        v.push(format!("uid={uid}"));
    }
    if let Some(gid) = set.gid {
        v.push(format!("gid={gid}"));
    }
    if let Some(t) = &set.atime {
        v.push(format!("atime={}", time_spec(t)));
    }
    if let Some(t) = &set.mtime {
        v.push(format!("mtime={}", time_spec(t)));
    }
    v
}

fn args(e: &Event) -> Vec<String> {
    let mut a = Vec::new();
    let fh = |a: &mut Vec<String>| {
        if let Some(fh) = e.fh {
            a.push(format!("fh {fh}"));
        }
    };
    let fl = |a: &mut Vec<String>| {
        if let Some(f) = flags_text(e) {
            a.push(f);
        }
    };
    let name = |a: &mut Vec<String>| {
        a.push(e.name.as_deref().map_or_else(|| "?".into(), quote));
    };
    match e.op {
        Op::Symlink => {
            name(&mut a);
            a.push(subject(e));
        }
        Op::Rename => {
            a.push(subject(e));
            a.push(e.path2.as_deref().map_or_else(|| "?".into(), quote));
            if e.flags.is_some_and(|f| f != 0) {
                fl(&mut a);
            }
        }
        Op::Link => {
            a.push(subject(e));
            a.push(e.path2.as_deref().map_or_else(|| "?".into(), quote));
        }
        Op::Mknod => {
            a.push(subject(e));
            a.push(e.mode.map_or_else(|| "?".into(), flags::mode));
            if let Some(rdev) = e.rdev.filter(|&r| r != 0) {
                a.push(format!("rdev {rdev:#x}"));
            }
        }
        Op::Mkdir => {
            a.push(subject(e));
            a.push(perm(e.mode));
        }
        Op::Create => {
            a.push(subject(e));
            fl(&mut a);
            a.push(perm(e.mode));
        }
        Op::Open | Op::Opendir | Op::Access => {
            a.push(subject(e));
            fl(&mut a);
        }
        Op::Read | Op::Write => {
            a.push(subject(e));
            fh(&mut a);
            a.push(span(e.size, e.offset));
        }
        Op::Release => {
            a.push(subject(e));
            fh(&mut a);
            fl(&mut a);
        }
        Op::Readdir => {
            a.push(subject(e));
            fh(&mut a);
            if let Some(o) = e.offset {
                a.push(format!("@ {o}"));
            }
        }
        Op::Setattr => {
            a.push(subject(e));
            fh(&mut a);
            if let Some(set) = &e.set {
                a.extend(setattr_fields(set));
            }
        }
        Op::Setxattr => {
            a.push(subject(e));
            name(&mut a);
            if let Some(size) = e.size {
                a.push(size.to_string());
            }
            fl(&mut a);
        }
        Op::Getxattr => {
            a.push(subject(e));
            name(&mut a);
            if let Some(size) = e.size {
                a.push(size.to_string());
            }
        }
        Op::Removexattr => {
            a.push(subject(e));
            name(&mut a);
        }
        Op::Listxattr => {
            a.push(subject(e));
            if let Some(size) = e.size {
                a.push(size.to_string());
            }
        }
        Op::Fallocate => {
            a.push(subject(e));
            fh(&mut a);
            fl(&mut a);
            a.push(span(e.size, e.offset));
        }
        Op::Lseek => {
            a.push(subject(e));
            fh(&mut a);
            if let Some(o) = e.offset {
                a.push(o.to_string());
            }
            fl(&mut a);
        }
        Op::CopyFileRange => {
            a.push(subject(e));
            fh(&mut a);
            let dest = match (&e.path2, e.ino2) {
                (Some(p), _) => quote(p),
                (None, Some(ino)) => format!("ino {ino}"),
                (None, None) => "?".into(),
            };
            let at = e.offset2.map(|o| format!(" @ {o}")).unwrap_or_default();
            match e.fh2 {
                Some(fh2) => a.push(format!("{dest} fh {fh2}{at}")),
                None => a.push(format!("{dest}{at}")),
            }
            a.push(span(e.size, e.offset));
        }
        Op::Lookup
        | Op::Forget
        | Op::Getattr
        | Op::Readlink
        | Op::Unlink
        | Op::Rmdir
        | Op::Flush
        | Op::Fsync
        | Op::Releasedir
        | Op::Fsyncdir
        | Op::Statfs
        | Op::Getlk
        | Op::Setlk
        | Op::Ioctl
        | Op::Poll
        | Op::Bmap
        | Op::Crash => {
            a.push(subject(e));
            fh(&mut a);
            if let Some(n) = e.size.filter(|_| e.op == Op::Forget) {
                a.push(n.to_string());
            }
            if matches!(e.op, Op::Fsync | Op::Fsyncdir) {
                fl(&mut a);
            }
        }
    }
    a
}

fn result(e: &Event) -> String {
    if let Some(errno) = &e.errno {
        return format!("-1 {errno}");
    }
    let ino = e.out_ino.map(|i| format!("ino {i}"));
    let fh = e.out_fh.map(|f| format!("fh {f}"));
    let returned = || e.returned.map_or_else(|| "0".into(), |r| r.to_string());
    match e.op {
        Op::Read | Op::Write => {
            let mut s = returned();
            if e.short {
                s.push_str(" SHORT");
                if let Some(size) = e.file_size.filter(|_| e.op == Op::Read) {
                    s.push_str(&format!(" (file {size} bytes)"));
                }
            }
            s
        }
        Op::Lookup | Op::Mknod | Op::Mkdir | Op::Symlink | Op::Link => {
            ino.unwrap_or_else(|| "0".into())
        }
        Op::Create | Op::Open | Op::Opendir => {
            let parts: Vec<String> = [ino, fh].into_iter().flatten().collect();
            if parts.is_empty() {
                "0".into()
            } else {
                parts.join(" ")
            }
        }
        Op::Unlink | Op::Rmdir => match e.node {
            Some(n) => format!("0 (ino {n})"),
            None => "0".into(),
        },
        Op::Rename => {
            let mut notes = Vec::new();
            if let Some(n) = e.node {
                notes.push(format!("ino {n}"));
            }
            if let Some(r) = e.out_ino {
                notes.push(format!("replaced ino {r}"));
            }
            if notes.is_empty() {
                "0".into()
            } else {
                format!("0 ({})", notes.join(", "))
            }
        }
        Op::Lseek => e.out_offset.map_or_else(|| "0".into(), |o| o.to_string()),
        Op::Readlink => e.name.as_deref().map_or_else(returned, quote),
        Op::Getxattr | Op::Listxattr | Op::Readdir | Op::CopyFileRange => returned(),
        _ => "0".into(),
    }
}

/// A duration in the largest unit that keeps it at least 1: `850ns`, `12us`, `1.5ms`, `2s`.
pub fn duration(ns: u64) -> String {
    fn scaled(v: f64, unit: &str) -> String {
        let s = if v < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        };
        let s = s.strip_suffix(".0").unwrap_or(&s);
        format!("{s}{unit}")
    }
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        scaled(n / 1e3, "us")
    } else if ns < 1_000_000_000 {
        scaled(n / 1e6, "ms")
    } else {
        scaled(n / 1e9, "s")
    }
}

// ---------------------------------------------------------------------------------------------
// Chrome trace-event JSON

/// Writes `events` as Chrome trace-event JSON (`{"traceEvents":[...],"displayTimeUnit":"ns"}`),
/// loadable by `chrome://tracing` and Perfetto: one complete event (`"ph":"X"`) per request,
/// named by its operation, timed in microseconds from `ts_ns` and `dur_ns`, on the track of
/// its process and thread, with its path, flags, sizes, errno and seq as `args`; and
/// metadata events (`"ph":"M"`) naming each process after its command and each thread.
/// Requests whose process was unknown go to process 0, named `(unknown)`.
pub fn write_chrome(w: &mut impl Write, events: &[Event]) -> io::Result<()> {
    // pid -> (command, tids), in pid order so the output is stable.
    let mut procs: BTreeMap<u32, (String, BTreeMap<u32, ()>)> = BTreeMap::new();
    let mut by_seq: Vec<&Event> = events.iter().collect();
    by_seq.sort_by_key(|e| e.seq);
    for e in &by_seq {
        let p = procs.entry(e.pid).or_default();
        if !e.comm.is_empty() {
            p.0 = e.comm.to_string();
        }
        p.1.insert(e.tid, ());
    }

    w.write_all(b"{\"traceEvents\":[\n")?;
    let mut first = true;
    let mut emit = |w: &mut dyn Write, v: &Value| -> io::Result<()> {
        if !first {
            w.write_all(b",\n")?;
        }
        first = false;
        serde_json::to_writer(&mut *w, v)?;
        Ok(())
    };
    for (pid, (comm, tids)) in &procs {
        let pname = match (pid, comm.is_empty()) {
            (0, _) => "(unknown)".to_string(),
            (_, true) => format!("process {pid}"),
            (_, false) => comm.clone(),
        };
        emit(
            w,
            &json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": pname}}),
        )?;
        for tid in tids.keys() {
            let tname = match (*pid, *tid) {
                (0, 0) => "kernel".to_string(),
                (_, 0) => format!("{pname} (sent by the kernel)"),
                (_, t) if t == *pid => pname.clone(),
                (_, t) => format!("{pname} thread {t}"),
            };
            emit(
                w,
                &json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                        "args": {"name": tname}}),
            )?;
        }
    }
    for e in &by_seq {
        let mut args = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                args.insert(k.to_string(), v);
            }
        };
        put("seq", Some(json!(e.seq)));
        put("path", e.path.as_ref().map(|p| json!(p)));
        put("path2", e.path2.as_ref().map(|p| json!(p)));
        put("flags_str", flags_text(e).map(Value::String));
        put("offset", e.offset.map(|o| json!(o)));
        put("size", e.size.map(|s| json!(s)));
        put("returned", e.returned.map(|r| json!(r)));
        put("errno", e.errno.as_ref().map(|x| json!(x)));
        put("rule", e.rule.map(|r| json!(r)));
        emit(
            w,
            &json!({
                "name": e.op.name(),
                "cat": "rawfs",
                "ph": "X",
                "ts": e.ts_ns as f64 / 1000.0,
                "dur": e.dur_ns as f64 / 1000.0,
                "pid": e.pid,
                "tid": e.tid,
                "args": Value::Object(args),
            }),
        )?;
    }
    w.write_all(b"\n],\"displayTimeUnit\":\"ns\"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::SetattrFields;

    fn base(seq: u64, op: Op, path: &str) -> Event {
        Event {
            seq,
            ts_ns: seq * 1_000,
            dur_ns: 12_000,
            tid: 4242,
            pid: 4242,
            comm: "python3".into(),
            op,
            ino: Some(1),
            path: Some(path.into()),
            ..Event::default()
        }
    }

    fn sample() -> Vec<Event> {
        let create = Event {
            flags: Some(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC),
            mode: Some(libc::S_IFREG | 0o644),
            out_ino: Some(5),
            out_fh: Some(3),
            ..base(1, Op::Create, "/run/app.pid")
        };
        let write = Event {
            fh: Some(3),
            offset: Some(100),
            size: Some(5),
            returned: Some(5),
            flags: Some(libc::O_WRONLY),
            ..base(2, Op::Write, "/run/app.pid")
        };
        let rename = Event {
            ino2: Some(1),
            node: Some(5),
            path2: Some("/b \"q\"\n".into()),
            flags: Some(libc::RENAME_NOREPLACE as i32),
            out_ino: Some(9),
            rule: Some(3),
            ..base(3, Op::Rename, "/a")
        };
        let setattr = Event {
            set: Some(Box::new(SetattrFields {
                size: Some(0),
                mode: Some(0o644),
                mtime: Some(TimeSpec::Now),
                atime: Some(TimeSpec::Ns(-1_500_000_000)),
                ..SetattrFields::default()
            })),
            ..base(4, Op::Setattr, "/f")
        };
        let failed = Event {
            errno: Some("ENOENT".into()),
            pid: 77,
            tid: 78,
            comm: "sh".into(),
            ..base(5, Op::Lookup, "/x")
        };
        let forget = Event {
            tid: 0,
            pid: 0,
            comm: "".into(),
            path: None,
            ino: Some(5),
            size: Some(1),
            ..base(6, Op::Forget, "")
        };
        vec![create, write, rename, setattr, failed, forget]
    }

    #[test]
    fn jsonl_round_trip() {
        let header = Header {
            rawfs_trace: FORMAT_VERSION,
            rawfs_version: "0.1.0".into(),
            mountpoint: "/mnt/raw".into(),
            started_unix_ns: 1_700_000_000_000_000_000,
        };
        let events = sample();
        let mut buf = Vec::new();
        write_header(&mut buf, &header).unwrap();
        for e in &events {
            write_event(&mut buf, e).unwrap();
        }
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), 1 + events.len());
        assert!(text.lines().nth(3).unwrap().contains("\"node\":5"));
        let (h, back) = read_jsonl(&buf[..]).unwrap();
        assert_eq!(h, Some(header));
        // Written events carry their decoded flags.
        let decoded: Vec<Event> = events.iter().map(|e| decorated(e).into_owned()).collect();
        assert_eq!(back, decoded);
        assert_eq!(
            back[0].flags_str.as_deref(),
            Some("O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC")
        );

        // Without a header, with blank lines and unknown fields.
        let (h, back) =
            read_jsonl(&b"\n{\"seq\":1,\"ts_ns\":0,\"dur_ns\":0,\"tid\":1,\"pid\":1,\"comm\":\"\",\"uid\":0,\"gid\":0,\"op\":\"statfs\",\"later\":1}\n\n"[..])
                .unwrap();
        assert_eq!(h, None);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].op, Op::Statfs);
    }

    fn read_err(text: &str) -> String {
        read_jsonl(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn jsonl_errors_name_the_line_and_the_fault() {
        let good = r#"{"seq":1,"ts_ns":0,"dur_ns":0,"tid":1,"pid":1,"comm":"","uid":0,"gid":0,"op":"read"}"#;
        let msg = read_err(&format!("{good}\nnot json\n"));
        assert!(msg.starts_with("line 2: not JSON"), "{msg}");
        let msg = read_err(&good.replace("\"read\"", "\"frobnicate\""));
        assert_eq!(
            msg,
            "line 1: unknown op \"frobnicate\" (written by a newer rawfs?)"
        );
        let msg = read_err(&good.replace("\"seq\":1,", ""));
        assert!(
            msg.starts_with("line 1: not a trace event: missing field `seq`"),
            "{msg}"
        );
        let msg = read_err(&good.replace("\"op\":\"read\"", "\"x\":1"));
        assert!(msg.contains("missing field `op`"), "{msg}");
        let msg = read_err("[1,2]");
        assert_eq!(msg, "line 1: not a JSON object");
        let msg = read_err(
            r#"{"rawfs_trace":2,"rawfs_version":"9","mountpoint":"/m","started_unix_ns":0}"#,
        );
        assert!(
            msg.starts_with("line 1: trace format version 2 is newer than this rawfs reads"),
            "{msg}"
        );
        let header =
            r#"{"rawfs_trace":1,"rawfs_version":"0.1.0","mountpoint":"/m","started_unix_ns":0}"#;
        let msg = read_err(&format!("{good}\n{header}"));
        assert!(msg.starts_with("line 2: a header after events"), "{msg}");
        let msg = read_err(&format!("{header}\n{header}"));
        assert!(msg.starts_with("line 2: a second header"), "{msg}");
        let msg = read_err(r#"{"rawfs_trace":1}"#);
        assert!(
            msg.starts_with("line 1: bad trace header: missing field"),
            "{msg}"
        );
        let msg = read_err(r#"{"rawfs_trace":"one"}"#);
        assert!(msg.contains("not a version number"), "{msg}");
        let err = read_jsonl(&b"\xff\xfe\n"[..]).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(matches!(err.kind, FormatErrorKind::Io(_)));
        // A path mentioning the key is still an event.
        let tricky = good.replace("\"comm\":\"\"", r#""comm":"x\"rawfs_trace\"""#);
        assert_eq!(read_jsonl(tricky.as_bytes()).unwrap().1.len(), 1);
    }

    #[test]
    fn text_lines_for_name_and_open_operations() {
        let ev = sample();
        assert_eq!(
            text_line(&ev[0]),
            "#1 [4242 python3] create(\"/run/app.pid\", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = ino 5 fh 3 <12us>"
        );
        assert_eq!(
            text_line(&ev[2]),
            "#3 [4242 python3] rename(\"/a\", \"/b \\\"q\\\"\\n\", RENAME_NOREPLACE) = 0 (ino 5, replaced ino 9) <12us> [rule 3]"
        );
        assert_eq!(
            text_line(&ev[4]),
            "#5 [77/78 sh] lookup(\"/x\") = -1 ENOENT <12us>"
        );
        assert_eq!(text_line(&ev[5]), "#6 [kernel] forget(ino 5, 1) = 0 <12us>");

        let lookup = Event {
            out_ino: Some(7),
            dur_ns: 3_000,
            ..base(7, Op::Lookup, "/y")
        };
        assert!(text_line(&lookup).ends_with("lookup(\"/y\") = ino 7 <3us>"));
        let unlink = Event {
            node: Some(7),
            ..base(8, Op::Unlink, "/y")
        };
        assert!(text_line(&unlink).ends_with("unlink(\"/y\") = 0 (ino 7) <12us>"));
        let mkdir = Event {
            mode: Some(0o755),
            out_ino: Some(8),
            ..base(9, Op::Mkdir, "/d")
        };
        assert!(text_line(&mkdir).ends_with("mkdir(\"/d\", 0755) = ino 8 <12us>"));
        let mknod = Event {
            mode: Some(libc::S_IFIFO | 0o600),
            out_ino: Some(10),
            ..base(10, Op::Mknod, "/p")
        };
        assert!(
            text_line(&mknod).ends_with("mknod(\"/p\", S_IFIFO|0600) = ino 10 <12us>"),
            "{}",
            text_line(&mknod)
        );
        let symlink = Event {
            name: Some("target".into()),
            out_ino: Some(11),
            ..base(11, Op::Symlink, "/l")
        };
        assert!(text_line(&symlink).ends_with("symlink(\"target\", \"/l\") = ino 11 <12us>"));
        let link = Event {
            node: Some(5),
            ino2: Some(1),
            path2: Some("/hard".into()),
            out_ino: Some(5),
            ..base(12, Op::Link, "/f")
        };
        assert!(text_line(&link).ends_with("link(\"/f\", \"/hard\") = ino 5 <12us>"));
        let open = Event {
            flags: Some(libc::O_RDWR | libc::O_TRUNC),
            out_fh: Some(4),
            ..base(13, Op::Open, "/f")
        };
        assert!(text_line(&open).ends_with("open(\"/f\", O_RDWR|O_TRUNC) = fh 4 <12us>"));
        let plain_rename = Event {
            flags: Some(0),
            path2: Some("/b".into()),
            ..base(14, Op::Rename, "/a")
        };
        assert!(text_line(&plain_rename).ends_with("rename(\"/a\", \"/b\") = 0 <12us>"));
    }

    #[test]
    fn text_lines_for_data_operations() {
        let ev = sample();
        assert_eq!(
            text_line(&ev[1]),
            "#2 [4242 python3] write(\"/run/app.pid\", fh 3, 5 @ 100) = 5 <12us>"
        );
        let read = Event {
            fh: Some(3),
            offset: Some(0),
            size: Some(4096),
            returned: Some(1),
            short: true,
            file_size: Some(10),
            dur_ns: 8_000,
            ..base(20, Op::Read, "/data")
        };
        assert_eq!(
            text_line(&read),
            "#20 [4242 python3] read(\"/data\", fh 3, 4096 @ 0) = 1 SHORT (file 10 bytes) <8us>"
        );
        let unlinked = Event {
            path: None,
            ino: Some(9),
            returned: Some(0),
            short: false,
            ..read.clone()
        };
        assert!(text_line(&unlinked).contains("read(ino 9, fh 3, 4096 @ 0) = 0 <"));
        let short_write = Event {
            fh: Some(3),
            offset: Some(0),
            size: Some(10),
            returned: Some(4),
            short: true,
            ..base(21, Op::Write, "/f")
        };
        assert!(text_line(&short_write).contains("= 4 SHORT <"));
        for (op, want) in [
            (Op::Flush, "flush(\"/f\", fh 3) = 0"),
            (Op::Fsync, "fsync(\"/f\", fh 3) = 0"),
            (Op::Fsyncdir, "fsyncdir(\"/f\", fh 3) = 0"),
        ] {
            let e = Event {
                fh: Some(3),
                ..base(22, op, "/f")
            };
            assert!(text_line(&e).contains(want), "{}", text_line(&e));
        }
        let datasync = Event {
            fh: Some(3),
            flags: Some(1),
            flags_str: Some("O_WRONLY".into()),
            ..base(22, Op::Fsync, "/f")
        };
        assert!(text_line(&datasync).contains("fsync(\"/f\", fh 3, datasync) = 0"));
        let readlink = Event {
            name: Some("../target".into()),
            ..base(22, Op::Readlink, "/l")
        };
        assert!(text_line(&readlink).contains("readlink(\"/l\") = \"../target\" <"));
        let release = Event {
            fh: Some(3),
            flags: Some(libc::O_WRONLY),
            ..base(23, Op::Release, "/f")
        };
        assert!(text_line(&release).contains("release(\"/f\", fh 3, O_WRONLY) = 0"));
        assert!(
            text_line(&ev[3])
                .contains("setattr(\"/f\", size=0, mode=0644, atime=-1.500000000, mtime=now) = 0"),
            "{}",
            text_line(&ev[3])
        );
        let fallocate = Event {
            fh: Some(3),
            flags: Some(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE),
            offset: Some(0),
            size: Some(4096),
            ..base(24, Op::Fallocate, "/f")
        };
        assert!(text_line(&fallocate).contains(
            "fallocate(\"/f\", fh 3, FALLOC_FL_KEEP_SIZE|FALLOC_FL_PUNCH_HOLE, 4096 @ 0) = 0"
        ));
        let lseek = Event {
            fh: Some(3),
            offset: Some(10),
            flags: Some(libc::SEEK_HOLE),
            out_offset: Some(4096),
            ..base(25, Op::Lseek, "/f")
        };
        assert!(text_line(&lseek).contains("lseek(\"/f\", fh 3, 10, SEEK_HOLE) = 4096"));
        let copy = Event {
            fh: Some(3),
            ino2: Some(8),
            fh2: Some(4),
            offset: Some(0),
            size: Some(100),
            returned: Some(100),
            ..base(26, Op::CopyFileRange, "/f")
        };
        assert!(
            text_line(&copy).contains("copy_file_range(\"/f\", fh 3, ino 8 fh 4, 100 @ 0) = 100")
        );
    }

    #[test]
    fn text_lines_for_xattrs_and_others() {
        let set = Event {
            name: Some("user.k".into()),
            size: Some(5),
            flags: Some(libc::XATTR_CREATE),
            ..base(30, Op::Setxattr, "/f")
        };
        assert!(text_line(&set).contains("setxattr(\"/f\", \"user.k\", 5, XATTR_CREATE) = 0"));
        let get = Event {
            name: Some("user.k".into()),
            size: Some(64),
            returned: Some(5),
            ..base(31, Op::Getxattr, "/f")
        };
        assert!(text_line(&get).contains("getxattr(\"/f\", \"user.k\", 64) = 5"));
        let missing = Event {
            errno: Some("ENODATA".into()),
            returned: None,
            ..get.clone()
        };
        assert!(text_line(&missing).contains(") = -1 ENODATA"));
        let list = Event {
            size: Some(0),
            returned: Some(12),
            ..base(32, Op::Listxattr, "/f")
        };
        assert!(text_line(&list).contains("listxattr(\"/f\", 0) = 12"));
        let remove = Event {
            name: Some("user.k".into()),
            ..base(33, Op::Removexattr, "/f")
        };
        assert!(text_line(&remove).contains("removexattr(\"/f\", \"user.k\") = 0"));
        let access = Event {
            flags: Some(libc::R_OK | libc::W_OK),
            ..base(34, Op::Access, "/f")
        };
        assert!(text_line(&access).contains("access(\"/f\", R_OK|W_OK) = 0"));
        let old = Event {
            flags: Some(libc::O_RDONLY),
            flags_str: Some("AS_RECORDED".into()),
            out_fh: Some(1),
            ..base(35, Op::Open, "/f")
        };
        assert!(text_line(&old).contains("open(\"/f\", AS_RECORDED) = fh 1"));
        let dir = Event {
            fh: Some(2),
            offset: Some(0),
            returned: Some(3),
            ..base(36, Op::Readdir, "/")
        };
        assert!(text_line(&dir).contains("readdir(\"/\", fh 2, @ 0) = 3"));
    }

    #[test]
    fn durations_are_human_sized() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(1_000), "1us");
        assert_eq!(duration(8_400), "8.4us");
        assert_eq!(duration(12_345), "12us");
        assert_eq!(duration(1_500_000), "1.5ms");
        assert_eq!(duration(250_000_000), "250ms");
        assert_eq!(duration(2_000_000_000), "2s");
        assert_eq!(duration(90_000_000_000), "90s");
    }

    #[test]
    fn chrome_output_is_trace_event_json() {
        let mut events = sample();
        events.reverse();
        let mut buf = Vec::new();
        write_chrome(&mut buf, &events).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["displayTimeUnit"], "ns");
        let list = v["traceEvents"].as_array().unwrap();
        let complete: Vec<&Value> = list.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(complete.len(), events.len());
        for e in &complete {
            for key in ["name", "cat", "ph", "ts", "dur", "pid", "tid", "args"] {
                assert!(e.get(key).is_some(), "{key} missing in {e}");
            }
            assert_eq!(e["cat"], "rawfs");
            assert!(e["ts"].is_f64() && e["dur"].is_f64());
            assert!(e["args"]["seq"].is_u64());
        }
        let create = complete.iter().find(|e| e["name"] == "create").unwrap();
        assert_eq!(create["ts"].as_f64(), Some(1.0));
        assert_eq!(create["dur"].as_f64(), Some(12.0));
        assert_eq!(create["pid"], 4242);
        assert_eq!(
            create["args"]["flags_str"],
            "O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC"
        );
        assert_eq!(create["args"]["path"], "/run/app.pid");
        let lookup = complete.iter().find(|e| e["name"] == "lookup").unwrap();
        assert_eq!(lookup["args"]["errno"], "ENOENT");
        let write = complete.iter().find(|e| e["name"] == "write").unwrap();
        assert_eq!(write["args"]["offset"], 100);
        assert_eq!(write["args"]["size"], 5);
        assert_eq!(write["args"]["returned"], 5);

        let meta: Vec<&Value> = list.iter().filter(|e| e["ph"] == "M").collect();
        let named = |kind: &str, pid: u64, tid: Option<u64>| {
            meta.iter()
                .find(|m| m["name"] == kind && m["pid"] == pid && tid.is_none_or(|t| m["tid"] == t))
                .map(|m| m["args"]["name"].as_str().unwrap().to_string())
        };
        assert_eq!(
            named("process_name", 4242, None).as_deref(),
            Some("python3")
        );
        assert_eq!(named("process_name", 77, None).as_deref(), Some("sh"));
        assert_eq!(named("process_name", 0, None).as_deref(), Some("(unknown)"));
        assert_eq!(
            named("thread_name", 4242, Some(4242)).as_deref(),
            Some("python3")
        );
        assert_eq!(
            named("thread_name", 77, Some(78)).as_deref(),
            Some("sh thread 78")
        );
    }
}
