//! Typed queries over a mount's trace, for assertions in Rust tests:
//! `m.events().op(Op::Create).path("/app.pid").one()?` gives the one matching request with
//! its open flags typed ([`OFlag`]), and an assertion that fails says what it looked for and
//! prints the part of the trace around it as text.
//!
//! A query reads the trace when it ends (`one`, `all`...), and then sees every request
//! answered before (see [`crate::trace::recorder::Store::sync`]).

use std::fmt;
use std::ops::{BitOr, Deref};

use crate::trace::filter::PathGlob;
use crate::trace::format::text_line;
use crate::trace::recorder::Store;
use crate::trace::{Event, Op, flags};

/// Open flags, typed: `e.flags.contains(OFlag::EXCL)`, `OFlag::WRONLY | OFlag::CREAT`.
///
/// The access mode (`RDONLY`, `WRONLY`, `RDWR`) is a value, not a bit: `contains(RDONLY)`
/// holds only for flags whose access mode is read-only, and flags of a request that carries
/// no open flags (a rename, an fsync) contain no access mode at all.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OFlag {
    bits: i32,
    /// The access mode in `bits & O_ACCMODE` is part of the value.
    mode: bool,
}

macro_rules! oflags {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl OFlag {
            $($(#[$doc])* pub const $name: OFlag = OFlag { bits: $value, mode: false };)*
        }
    };
}

oflags! {
    /// `O_CREAT`.
    CREAT = libc::O_CREAT;
    /// `O_EXCL`.
    EXCL = libc::O_EXCL;
    /// `O_TRUNC`.
    TRUNC = libc::O_TRUNC;
    /// `O_APPEND`.
    APPEND = libc::O_APPEND;
    /// `O_NONBLOCK`.
    NONBLOCK = libc::O_NONBLOCK;
    /// `O_DSYNC`.
    DSYNC = libc::O_DSYNC;
    /// `O_SYNC` (includes `O_DSYNC`).
    SYNC = libc::O_SYNC;
    /// `O_DIRECT`.
    DIRECT = libc::O_DIRECT;
    /// `O_DIRECTORY`.
    DIRECTORY = libc::O_DIRECTORY;
    /// `O_NOFOLLOW`.
    NOFOLLOW = libc::O_NOFOLLOW;
    /// `O_NOATIME`.
    NOATIME = libc::O_NOATIME;
    /// `O_CLOEXEC` (the kernel usually keeps it to itself).
    CLOEXEC = libc::O_CLOEXEC;
    /// `O_NOCTTY`.
    NOCTTY = libc::O_NOCTTY;
    /// `O_LARGEFILE`, which the kernel sets on every open of a 64-bit process.
    LARGEFILE = flags::O_LARGEFILE;
}

impl OFlag {
    /// Access mode `O_RDONLY`.
    pub const RDONLY: OFlag = OFlag {
        bits: libc::O_RDONLY,
        mode: true,
    };
    /// Access mode `O_WRONLY`.
    pub const WRONLY: OFlag = OFlag {
        bits: libc::O_WRONLY,
        mode: true,
    };
    /// Access mode `O_RDWR`.
    pub const RDWR: OFlag = OFlag {
        bits: libc::O_RDWR,
        mode: true,
    };

    /// No flags, and no access mode.
    pub const fn empty() -> OFlag {
        OFlag {
            bits: 0,
            mode: false,
        }
    }

    /// The open flags `open(2)` took, as the kernel passed them (access mode included).
    pub const fn from_bits(bits: i32) -> OFlag {
        OFlag { bits, mode: true }
    }

    /// The raw bits (with the access mode in `O_ACCMODE`, if there is one).
    pub const fn bits(self) -> i32 {
        self.bits
    }

    /// True if every flag of `other` is set here, and its access mode, if it has one, is
    /// this one's.
    pub fn contains(self, other: OFlag) -> bool {
        let rest = other.bits & !libc::O_ACCMODE;
        let flags_ok = self.bits & rest == rest;
        let mode_ok = !other.mode
            || (self.mode && self.bits & libc::O_ACCMODE == other.bits & libc::O_ACCMODE);
        flags_ok && mode_ok
    }

    /// True if the file was opened for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writes(self) -> bool {
        self.mode && self.bits & libc::O_ACCMODE != libc::O_RDONLY
    }
}

impl BitOr for OFlag {
    type Output = OFlag;
    fn bitor(self, rhs: OFlag) -> OFlag {
        OFlag {
            bits: self.bits | rhs.bits,
            mode: self.mode || rhs.mode,
        }
    }
}

/// `O_WRONLY|O_CREAT|O_EXCL`, as the text trace spells them.
impl fmt::Display for OFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode {
            return f.write_str(&flags::open_flags(self.bits));
        }
        if self.bits == 0 {
            return f.write_str("0");
        }
        // Without an access mode: the names after the (read-only) mode word.
        let text = flags::open_flags(self.bits & !libc::O_ACCMODE);
        f.write_str(text.strip_prefix("O_RDONLY|").unwrap_or(&text))
    }
}

impl fmt::Debug for OFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OFlag({self})")
    }
}

/// Operations whose `flags` are not open flags.
fn has_open_flags(op: Op) -> bool {
    !matches!(
        op,
        Op::Rename
            | Op::Setxattr
            | Op::Fallocate
            | Op::Access
            | Op::Fsync
            | Op::Fsyncdir
            | Op::Ioctl
            | Op::Lseek
    )
}

/// A request as a query returns it: the [`Event`] (its fields are reachable directly,
/// `r.seq`, `r.path`...) with its open flags typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The event as recorded.
    pub event: Event,
    /// The open flags (of an open, a create, and the reads, writes and releases on the file it
    /// opened); empty for other requests.
    pub flags: OFlag,
}

impl Request {
    /// Types the flags of `event`.
    pub fn new(event: Event) -> Request {
        let flags = match (has_open_flags(event.op), event.flags) {
            (true, Some(bits)) => OFlag::from_bits(bits),
            _ => OFlag::empty(),
        };
        Request { event, flags }
    }
}

impl Deref for Request {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The strace-like line of `rawfs trace`.
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text_line(&self.event))
    }
}

/// An assertion of a query that did not hold: what was looked for, what was found, and the
/// trace around it as text. Its `Debug` is the same text, so that `unwrap()` prints it.
pub struct QueryError {
    message: String,
}

impl QueryError {
    fn new(message: String) -> QueryError {
        QueryError { message }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QueryError {}

/// Requests shown around the matches in an error (and at the end when nothing matched).
const CONTEXT: usize = 3;
const TAIL: usize = 30;

/// One filter of a query.
type Pred<'a> = Box<dyn Fn(&Request) -> bool + 'a>;

/// A filter over a mount's trace, built with the methods below and run by one of the
/// terminal methods ([`Query::one`], [`Query::all`]...). Every filter must hold.
pub struct Query<'a> {
    store: Option<&'a Store>,
    preds: Vec<Pred<'a>>,
    /// What the filters ask for, for messages: `create`, `path /app.pid`.
    wants: Vec<String>,
    /// A filter that could not be built (a bad glob), reported by the terminal method.
    invalid: Option<String>,
}

impl<'a> Query<'a> {
    /// A query over `store`, or over nothing when recording is off (`None`).
    pub fn new(store: Option<&'a Store>) -> Query<'a> {
        Query {
            store,
            preds: Vec::new(),
            wants: Vec::new(),
            invalid: None,
        }
    }

    fn filter(mut self, want: String, pred: impl Fn(&Request) -> bool + 'a) -> Query<'a> {
        self.wants.push(want);
        self.preds.push(Box::new(pred));
        self
    }

    /// Only requests of operation `op`.
    pub fn op(self, op: Op) -> Query<'a> {
        self.filter(op.name().to_string(), move |r| r.op == op)
    }

    /// Only requests of one of `ops`.
    pub fn ops(self, ops: &[Op]) -> Query<'a> {
        let ops = ops.to_vec();
        let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        self.filter(names.join("|"), move |r| ops.contains(&r.op))
    }

    /// Only requests whose path, or second path (a rename's or link's new name), is `path`
    /// or matches it as a glob (`*` within a component, `**` across): `/app.pid`,
    /// `/logs/*.log`. Paths start with `/` at the mount point.
    pub fn path(mut self, path: &str) -> Query<'a> {
        match PathGlob::new(path) {
            Ok(glob) => self.filter(format!("path {path}"), move |r| {
                [&r.path, &r.path2]
                    .into_iter()
                    .flatten()
                    .any(|p| glob.matches(p))
            }),
            Err(e) => {
                self.invalid = Some(format!("bad path {path:?}: {e}"));
                self
            }
        }
    }

    /// Only requests from process `pid`.
    pub fn pid(self, pid: u32) -> Query<'a> {
        self.filter(format!("pid {pid}"), move |r| r.pid == pid)
    }

    /// Only requests from processes whose command name is `comm`.
    pub fn comm(self, comm: &str) -> Query<'a> {
        let want = comm.to_string();
        self.filter(format!("comm {comm}"), move |r| *r.comm == *want)
    }

    /// Only requests whose open flags contain `flags` (see [`OFlag::contains`]).
    pub fn flags(self, flags: OFlag) -> Query<'a> {
        self.filter(format!("flags {flags}"), move |r| r.flags.contains(flags))
    }

    /// Only requests that failed.
    pub fn failed(self) -> Query<'a> {
        self.filter("failed".into(), |r| r.errno.is_some())
    }

    /// Only requests that succeeded.
    pub fn succeeded(self) -> Query<'a> {
        self.filter("succeeded".into(), |r| r.errno.is_none())
    }

    /// Only requests that failed with `errno`.
    pub fn errno(self, errno: crate::Errno) -> Query<'a> {
        let name = errno.name().unwrap_or("?");
        self.filter(format!("errno {name}"), move |r| {
            r.errno.as_deref() == errno.name()
        })
    }

    /// Only requests after sequence number `seq`.
    pub fn after(self, seq: u64) -> Query<'a> {
        self.filter(format!("after #{seq}"), move |r| r.seq > seq)
    }

    /// Only requests for which `pred` holds; `what` describes it in messages.
    pub fn matching(self, what: &str, pred: impl Fn(&Request) -> bool + 'a) -> Query<'a> {
        self.filter(what.to_string(), pred)
    }

    /// What the query looks for, in words.
    fn describe(&self) -> String {
        if self.wants.is_empty() {
            "request".into()
        } else {
            self.wants.join(", ")
        }
    }

    /// Every request of the trace and the indices of those that match.
    fn run(&self) -> Result<(Vec<Request>, Vec<usize>), QueryError> {
        if let Some(e) = &self.invalid {
            return Err(QueryError::new(e.clone()));
        }
        let Some(store) = self.store else {
            return Err(QueryError::new(
                "recording is off (trace capacity 0): there is no trace to query".into(),
            ));
        };
        let (events, _) = store.since(0);
        let all: Vec<Request> = events.into_iter().map(Request::new).collect();
        let hits = (0..all.len())
            .filter(|&i| self.preds.iter().all(|p| p(&all[i])))
            .collect();
        Ok((all, hits))
    }

    /// An error saying `what`, with the trace around `hits` (or its end) as text.
    fn error(&self, what: String, all: &[Request], hits: &[usize]) -> QueryError {
        let mut shown = vec![false; all.len()];
        if hits.is_empty() {
            let from = all.len().saturating_sub(TAIL);
            shown[from..].iter_mut().for_each(|s| *s = true);
        }
        for &i in hits {
            let (from, to) = (i.saturating_sub(CONTEXT), (i + CONTEXT + 1).min(all.len()));
            shown[from..to].iter_mut().for_each(|s| *s = true);
        }
        let mut text = format!(
            "{what} (looking for: {}); trace, matches marked with >:\n",
            self.describe()
        );
        let mut skipped = 0;
        for (i, r) in all.iter().enumerate() {
            if !shown[i] {
                skipped += 1;
                continue;
            }
            if skipped > 0 {
                text.push_str(&format!("  ... {skipped} requests not shown\n"));
                skipped = 0;
            }
            let mark = if hits.contains(&i) { '>' } else { ' ' };
            text.push_str(&format!("{mark} {r}\n"));
        }
        if skipped > 0 {
            text.push_str(&format!("  ... {skipped} requests not shown\n"));
        }
        if all.is_empty() {
            text.push_str("  (the trace is empty)\n");
        }
        QueryError::new(text)
    }

    /// Every matching request, oldest first. Panics with the reason if the trace cannot be
    /// read (recording off, a bad glob).
    pub fn all(self) -> Vec<Request> {
        match self.run() {
            Ok((all, hits)) => {
                let mut all: Vec<Option<Request>> = all.into_iter().map(Some).collect();
                hits.into_iter().filter_map(|i| all[i].take()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// How many requests match (panics as [`Query::all`] does).
    pub fn count(self) -> usize {
        self.all().len()
    }

    /// The one matching request; an error showing the trace if there are none or several.
    pub fn one(self) -> Result<Request, QueryError> {
        let (mut all, hits) = self.run()?;
        match hits.len() {
            1 => Ok(all.swap_remove(hits[0])),
            0 => Err(self.error(
                "expected exactly one request, found none".into(),
                &all,
                &hits,
            )),
            n => Err(self.error(
                format!("expected exactly one request, found {n}"),
                &all,
                &hits,
            )),
        }
    }

    /// The oldest matching request; an error showing the trace if there is none.
    pub fn first(self) -> Result<Request, QueryError> {
        let (mut all, hits) = self.run()?;
        match hits.first() {
            Some(&i) => Ok(all.swap_remove(i)),
            None => Err(self.error("expected a request, found none".into(), &all, &hits)),
        }
    }

    /// The newest matching request; an error showing the trace if there is none.
    pub fn last(self) -> Result<Request, QueryError> {
        let (mut all, hits) = self.run()?;
        match hits.last() {
            Some(&i) => Ok(all.swap_remove(i)),
            None => Err(self.error("expected a request, found none".into(), &all, &hits)),
        }
    }

    /// Ok if no request matches; an error showing them in the trace otherwise.
    pub fn none(self) -> Result<(), QueryError> {
        let (all, hits) = self.run()?;
        if hits.is_empty() {
            Ok(())
        } else {
            let n = hits.len();
            Err(self.error(format!("expected no request, found {n}"), &all, &hits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_modes_are_values_and_flags_are_bits() {
        let create = OFlag::from_bits(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL);
        assert!(create.contains(OFlag::EXCL));
        assert!(create.contains(OFlag::WRONLY | OFlag::CREAT));
        assert!(!create.contains(OFlag::RDONLY));
        assert!(!create.contains(OFlag::RDWR));
        assert!(!create.contains(OFlag::TRUNC));
        assert!(create.writes());
        let read = OFlag::from_bits(libc::O_RDONLY);
        assert!(read.contains(OFlag::RDONLY) && !read.writes());
        // A request without open flags has no access mode.
        assert!(!OFlag::empty().contains(OFlag::RDONLY));
        assert!(OFlag::empty().contains(OFlag::empty()));
        assert_eq!(create.to_string(), "O_WRONLY|O_CREAT|O_EXCL");
        assert_eq!((OFlag::CREAT | OFlag::EXCL).to_string(), "O_CREAT|O_EXCL");
        assert_eq!(format!("{:?}", OFlag::RDWR), "OFlag(O_RDWR)");
    }

    #[test]
    fn only_open_flags_are_typed() {
        let open = Request::new(Event {
            op: Op::Open,
            flags: Some(libc::O_RDWR),
            ..Event::default()
        });
        assert!(open.flags.contains(OFlag::RDWR));
        let rename = Request::new(Event {
            op: Op::Rename,
            flags: Some(1),
            ..Event::default()
        });
        assert_eq!(rename.flags, OFlag::empty());
        assert_eq!(rename.event.flags, Some(1));
    }
}
