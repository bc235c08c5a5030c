//! Which events to keep: a [`Filter`] over operation, path glob, process, command name and
//! sequence numbers, with parsers that turn command-line strings into its parts.
//!
//! # Path globs
//!
//! A glob is matched against the whole path of an event inside the mount (`/run/app.pid`),
//! and an event matches if its `path` or its `path2` (the new name of a rename or link) does.
//!
//! * `*` matches any run of characters within one path component: it never crosses a `/`
//!   (`/run/*.pid` matches `/run/app.pid`, not `/run/sub/app.pid`).
//! * `?` matches one character other than `/`.
//! * `**` matches across `/`, and is only allowed as a whole path component: `/a/**` matches
//!   everything below `/a` (not `/a` itself), `/a/**/b` matches `/a/b`, `/a/x/b`,
//!   `/a/x/y/b`, and `**/b` matches `b` in any directory.
//! * `[abc]`, `[a-z]`, `[!abc]` match one character of (or not of) a set; `{a,b}` matches
//!   either alternative; a backslash escapes the next character.
//! * A glob that does not start with `/` (nor with `**`) may match at any depth, as if it
//!   started with `**/`: `*.pid` matches `/app.pid` and `/run/app.pid`.

use std::fmt;
use std::ops::RangeInclusive;

use globset::{GlobBuilder, GlobMatcher};

use super::{Event, Op};
use crate::text::PathText;

/// A selection of events. Each criterion that is set must match; an empty `ops` and `None`
/// elsewhere match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Operations to keep; empty keeps every operation.
    pub ops: Vec<Op>,
    /// Glob the event's `path` or `path2` must match.
    pub path: Option<PathGlob>,
    /// Process id (`pid`) the event must come from.
    pub pid: Option<u32>,
    /// Command name the event's process must have (see [`Filter::matches`] for truncated
    /// names).
    pub comm: Option<String>,
    /// Sequence numbers to keep.
    pub seq: Option<RangeInclusive<u64>>,
    /// Keep only failed requests (those with an `errno`).
    pub failed: bool,
}

impl Filter {
    /// A filter that keeps every event.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// True if `e` meets every criterion that is set.
    ///
    /// `comm` matches the event's command name exactly, or, as the kernel keeps only the
    /// first 15 bytes of a command name, when the event's name is 15 bytes long and starts
    /// the filter's (`--comm my-long-program-name` matches `my-long-program`).
    pub fn matches(&self, e: &Event) -> bool {
        if !self.ops.is_empty() && !self.ops.contains(&e.op) {
            return false;
        }
        if self.seq.as_ref().is_some_and(|seq| !seq.contains(&e.seq)) {
            return false;
        }
        if self.pid.is_some_and(|p| p != e.pid) {
            return false;
        }
        if self
            .comm
            .as_deref()
            .is_some_and(|c| !comm_matches(c, &e.comm))
        {
            return false;
        }
        if self.failed && e.ok() {
            return false;
        }
        if let Some(glob) = &self.path {
            let hit = |p: &Option<PathText>| p.as_deref().is_some_and(|p| glob.matches(p));
            if !hit(&e.path) && !hit(&e.path2) {
                return false;
            }
        }
        true
    }

    /// Parses a comma-separated list of operation names (`"read,write"`, case-insensitive,
    /// spaces allowed around names).
    pub fn parse_ops(s: &str) -> Result<Vec<Op>, FilterError> {
        let mut ops = Vec::new();
        for name in s.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(FilterError::EmptyOp(s.to_string()));
            }
            let op = Op::from_name(name).ok_or_else(|| FilterError::UnknownOp(name.to_string()))?;
            if !ops.contains(&op) {
                ops.push(op);
            }
        }
        Ok(ops)
    }

    /// Parses a path glob (syntax in the [module documentation](self)).
    pub fn parse_glob(s: &str) -> Result<PathGlob, FilterError> {
        PathGlob::new(s)
    }

    /// Parses a range of sequence numbers: `"10..20"` (both ends included, also written
    /// `"10..=20"`), `"10.."` (10 and after), `"..20"` (up to 20) or `"15"` (just 15).
    pub fn parse_seq(s: &str) -> Result<RangeInclusive<u64>, FilterError> {
        let bad = |why: &str| FilterError::BadSeq {
            input: s.to_string(),
            why: why.to_string(),
        };
        let num = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| bad(&format!("{:?} is not a sequence number", part.trim())))
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty range"));
        }
        let Some((lo, hi)) = t.split_once("..") else {
            let n = num(t)?;
            return Ok(n..=n);
        };
        let hi = hi.strip_prefix('=').unwrap_or(hi);
        if lo.trim().is_empty() && hi.trim().is_empty() {
            return Err(bad(
                "give at least one end (\"10..\", \"..20\", \"10..20\")",
            ));
        }
        let lo = if lo.trim().is_empty() { 0 } else { num(lo)? };
        let hi = if hi.trim().is_empty() {
            u64::MAX
        } else {
            num(hi)?
        };
        if lo > hi {
            return Err(bad(&format!("start {lo} is after end {hi}")));
        }
        Ok(lo..=hi)
    }

    /// Parses a process id.
    pub fn parse_pid(s: &str) -> Result<u32, FilterError> {
        s.trim()
            .parse::<u32>()
            .map_err(|_| FilterError::BadPid(s.to_string()))
    }
}

fn comm_matches(wanted: &str, comm: &str) -> bool {
    // TASK_COMM_LEN is 16 including the terminating NUL.
    const KEPT: usize = 15;
    wanted == comm || (comm.len() == KEPT && wanted.len() > KEPT && wanted.starts_with(comm))
}

/// A compiled path glob (syntax in the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct PathGlob {
    pattern: String,
    matcher: GlobMatcher,
    /// The literal text every match starts with (up to the first wildcard), checked first:
    /// most paths fail there, without running the matcher.
    prefix: String,
}

impl PathGlob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<PathGlob, FilterError> {
        let bad = |why: String| FilterError::BadGlob {
            glob: pattern.to_string(),
            why,
        };
        if pattern.is_empty() {
            return Err(bad("empty glob".into()));
        }
        check_recursive(pattern).map_err(bad)?;
        let full = if pattern.starts_with('/') || pattern.starts_with("**") {
            pattern.to_string()
        } else {
            format!("**/{pattern}")
        };
        let glob = GlobBuilder::new(&full)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| bad(e.kind().to_string()))?;
        let prefix = if full.starts_with('/') {
            full.chars()
                .take_while(|c| !matches!(c, '*' | '?' | '[' | '{' | '\\'))
                .collect()
        } else {
            String::new()
        };
        Ok(PathGlob {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
            prefix,
        })
    }

    /// True if `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        path.starts_with(&self.prefix) && self.matcher.is_match(path)
    }

    /// The literal text every matching path starts with (empty for a relative glob).
    pub fn literal_prefix(&self) -> &str {
        &self.prefix
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Rejects `**` that is not a whole path component, which globset would quietly read as `*`.
fn check_recursive(pattern: &str) -> Result<(), String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '*' if !in_class && chars.get(i + 1) == Some(&'*') => {
                let start = i;
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                let before_ok = start == 0 || matches!(chars[start - 1], '/' | '{' | ',');
                let after_ok = i == chars.len() || matches!(chars[i], '/' | '}' | ',');
                if i - start > 2 || !before_ok || !after_ok {
                    return Err(
                        "`**` must be a whole path component (`/a/**`, `/a/**/b`, `**/b`); \
                         use `*` within a name"
                            .into(),
                    );
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Why a filter string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// An operation name that is not one of [`Op::ALL`].
    UnknownOp(String),
    /// An empty name in an operation list (`"read,,write"`); holds the whole list.
    EmptyOp(String),
    /// A glob that does not compile.
    BadGlob {
        /// The glob as given.
        glob: String,
        /// What is wrong with it.
        why: String,
    },
    /// A sequence range that does not parse.
    BadSeq {
        /// The range as given.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// A process id that is not a number.
    BadPid(String),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::UnknownOp(name) => {
                write!(f, "unknown operation {name:?}; valid operations: ")?;
                let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                f.write_str(&names.join(", "))
            }
            FilterError::EmptyOp(list) => {
                write!(f, "empty operation name in {list:?}")
            }
            FilterError::BadGlob { glob, why } => write!(f, "bad path glob {glob:?}: {why}"),
            FilterError::BadSeq { input, why } => {
                write!(f, "bad sequence range {input:?}: {why}")
            }
            FilterError::BadPid(s) => write!(f, "bad process id {s:?}: not a number"),
        }
    }
}

impl std::error::Error for FilterError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, path: &str) -> Event {
        Event {
            seq: 1,
            op,
            pid: 10,
            comm: "sh".into(),
            path: Some(path.into()),
            ..Event::default()
        }
    }

    #[test]
    fn ops_parse_and_name_the_unknown_one() {
        assert_eq!(
            Filter::parse_ops("read, Write,read").unwrap(),
            vec![Op::Read, Op::Write]
        );
        assert_eq!(
            Filter::parse_ops("copy_file_range").unwrap(),
            vec![Op::CopyFileRange]
        );
        let err = Filter::parse_ops("read,raed").unwrap_err();
        assert_eq!(err, FilterError::UnknownOp("raed".into()));
        let msg = err.to_string();
        assert!(msg.contains("\"raed\""), "{msg}");
        assert!(
            msg.contains("lookup, forget") && msg.contains("bmap"),
            "{msg}"
        );
        assert!(matches!(
            Filter::parse_ops("read,,write"),
            Err(FilterError::EmptyOp(_))
        ));
        assert!(Filter::parse_ops("").is_err());
    }

    #[test]
    fn seq_ranges() {
        assert_eq!(Filter::parse_seq("10..20").unwrap(), 10..=20);
        assert_eq!(Filter::parse_seq("10..=20").unwrap(), 10..=20);
        assert_eq!(Filter::parse_seq("10..").unwrap(), 10..=u64::MAX);
        assert_eq!(Filter::parse_seq("..20").unwrap(), 0..=20);
        assert_eq!(Filter::parse_seq(" 15 ").unwrap(), 15..=15);
        for (bad, says) in [
            ("", "empty"),
            ("..", "at least one end"),
            ("20..10", "start 20 is after end 10"),
            ("x..3", "\"x\" is not a sequence number"),
            ("1..y", "\"y\""),
            ("-3", "\"-3\""),
            ("1...3", "\".3\""),
        ] {
            let msg = Filter::parse_seq(bad).unwrap_err().to_string();
            assert!(msg.contains(says), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn star_stays_in_a_component_double_star_crosses() {
        let g = Filter::parse_glob("/run/*.pid").unwrap();
        assert!(g.matches("/run/app.pid"));
        assert!(!g.matches("/run/sub/app.pid"));
        assert!(!g.matches("/app.pid"));

        let g = Filter::parse_glob("/data/**").unwrap();
        assert!(g.matches("/data/a"));
        assert!(g.matches("/data/a/b/c"));
        assert!(!g.matches("/data"));
        assert!(!g.matches("/database/x"));

        let g = Filter::parse_glob("/a/**/b").unwrap();
        for p in ["/a/b", "/a/x/b", "/a/x/y/b"] {
            assert!(g.matches(p), "{p}");
        }
        assert!(!g.matches("/a/xb"));

        let g = Filter::parse_glob("/f?").unwrap();
        assert!(g.matches("/f1"));
        assert!(!g.matches("/f/"));

        let g = Filter::parse_glob("/{a,b}.[ch]").unwrap();
        assert!(g.matches("/a.c") && g.matches("/b.h") && !g.matches("/c.c"));

        let g = Filter::parse_glob(r"/lit\*").unwrap();
        assert!(g.matches("/lit*") && !g.matches("/lit-x"));
    }

    #[test]
    fn relative_globs_match_at_any_depth() {
        let g = Filter::parse_glob("*.pid").unwrap();
        assert!(g.matches("/app.pid"));
        assert!(g.matches("/run/deep/app.pid"));
        assert!(!g.matches("/run/app.pid.tmp"));
        let g = Filter::parse_glob("run/*.pid").unwrap();
        assert!(g.matches("/run/x.pid") && g.matches("/var/run/x.pid"));
        assert!(!g.matches("/prerun/x.pid"));
        let g = Filter::parse_glob("**/x").unwrap();
        assert!(g.matches("/x") && g.matches("/a/b/x"));
    }

    #[test]
    fn bad_globs_say_why() {
        let msg = Filter::parse_glob("/a**").unwrap_err().to_string();
        assert!(
            msg.contains("\"/a**\"") && msg.contains("whole path component"),
            "{msg}"
        );
        assert!(Filter::parse_glob("/***/x").is_err());
        assert!(Filter::parse_glob("").is_err());
        let msg = Filter::parse_glob("/[a").unwrap_err().to_string();
        assert!(msg.starts_with("bad path glob \"/[a\": "), "{msg}");
        // `**` inside a class is two literal stars, not a recursive match.
        assert!(Filter::parse_glob("/[**]").unwrap().matches("/*"));
    }

    #[test]
    fn matches_combines_every_criterion() {
        let mut f = Filter::new();
        assert!(f.matches(&ev(Op::Read, "/x")));

        f.ops = Filter::parse_ops("read,write").unwrap();
        assert!(f.matches(&ev(Op::Read, "/x")));
        assert!(!f.matches(&ev(Op::Lookup, "/x")));

        f.path = Some(Filter::parse_glob("/d/*").unwrap());
        assert!(!f.matches(&ev(Op::Read, "/x")));
        assert!(f.matches(&ev(Op::Read, "/d/x")));
        let mut no_path = ev(Op::Read, "/d/x");
        no_path.path = None;
        assert!(!f.matches(&no_path));

        f.ops.clear();
        let mut rename = ev(Op::Rename, "/tmp.1");
        rename.path2 = Some("/d/final".into());
        assert!(f.matches(&rename), "path2 is matched too");

        f.pid = Some(10);
        assert!(f.matches(&ev(Op::Read, "/d/x")));
        f.pid = Some(11);
        assert!(!f.matches(&ev(Op::Read, "/d/x")));
        f.pid = None;

        f.comm = Some("sh".into());
        assert!(f.matches(&ev(Op::Read, "/d/x")));
        f.comm = Some("bash".into());
        assert!(!f.matches(&ev(Op::Read, "/d/x")));
        f.comm = None;

        f.seq = Some(Filter::parse_seq("2..").unwrap());
        assert!(!f.matches(&ev(Op::Read, "/d/x")));
        f.seq = Some(Filter::parse_seq("..1").unwrap());
        assert!(f.matches(&ev(Op::Read, "/d/x")));

        f.failed = true;
        assert!(!f.matches(&ev(Op::Read, "/d/x")));
        let mut failed = ev(Op::Read, "/d/x");
        failed.errno = Some("EIO".into());
        assert!(f.matches(&failed));
    }

    #[test]
    fn truncated_command_names_match_the_full_name() {
        let f = Filter {
            comm: Some("my-long-program-name".into()),
            ..Filter::default()
        };
        let mut e = ev(Op::Read, "/x");
        e.comm = "my-long-program".into();
        assert!(f.matches(&e));
        e.comm = "my-long".into();
        assert!(!f.matches(&e));
        assert_eq!(Filter::parse_pid(" 42").unwrap(), 42);
        assert!(
            Filter::parse_pid("x")
                .unwrap_err()
                .to_string()
                .contains("\"x\"")
        );
    }
}
