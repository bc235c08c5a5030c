//! Fault injection: rules as plain data (which requests, when, what to do), checked for each
//! request at the adapter boundary. A rule's `match` selects requests by operation, path glob,
//! process, open flags and offset/size ranges; its `when` decides which matches fire (always,
//! the Nth, after the first N, at most N times, or with a seeded probability); its `action`
//! says what happens (an errno, a delay, a short read or partial write, corrupted bytes, a
//! disk that fills up, a competitor that wins an exclusive create, a hold until released, a
//! signal to the caller). docs/faults.md is the user's guide.

pub mod hold;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::errno::Errno;
use crate::trace::filter::{Filter, PathGlob};
use crate::trace::{Event, Op, flags};

/// An inclusive range of offsets or sizes: `[min, max]`, either end may be omitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest value that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    /// Largest value that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

impl Range {
    fn contains(&self, v: u64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    /// Parses `A..B`, `A..`, `..B` or `N` (inclusive).
    pub fn parse(s: &str) -> Result<Range, String> {
        let num = |t: &str| -> Result<Option<u64>, String> {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            crate::units::parse_size(t)
                .or_else(|e| if t == "0" { Ok(0) } else { Err(e) })
                .map(Some)
        };
        let r = match s.split_once("..") {
            Some((a, b)) => Range {
                min: num(a)?,
                max: num(b.trim_start_matches('='))?,
            },
            None => {
                let n = num(s)?;
                Range { min: n, max: n }
            }
        };
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        match (self.min, self.max) {
            (Some(a), Some(b)) if a > b => Err(format!("impossible range: min {a} > max {b}")),
            _ => Ok(()),
        }
    }
}

/// Which requests a rule applies to. Every given criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Operations by trace name (`["read", "write"]`); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<String>,
    /// Glob on the request's path (or second path): `*` within a component, `**` across.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Caller's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Caller's command name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Open flags that must all be present (`["O_EXCL"]`), on ops that carry open flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Offset range (read, write, fallocate, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Range>,
    /// Requested size range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Range>,
}

/// Which matching requests fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum When {
    /// Every match.
    #[default]
    Always,
    /// Only the Nth match (from 1).
    Nth(u64),
    /// Every match after the first N.
    After(u64),
    /// The first N matches.
    Times(u64),
    /// Each match with probability `p`, drawn from a generator seeded with `seed`: the same
    /// seed gives the same hits for the same sequence of matches.
    Probability {
        /// Chance of firing, from 0 to 1.
        p: f64,
        /// Seed of the generator.
        #[serde(default)]
        seed: u64,
    },
}

/// How corrupted bytes are changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptHow {
    /// Invert every bit.
    Flip,
    /// Set to zero.
    Zero,
}

/// What a firing rule does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Fail with this errno (`"EIO"`), without doing the operation.
    Errno(String),
    /// Wait `ms` milliseconds before doing the operation (or after, with `after`).
    Delay {
        /// Milliseconds.
        ms: u64,
        /// Wait after the operation instead of before.
        #[serde(default)]
        after: bool,
    },
    /// Read or write at most this many bytes (a short read or partial write).
    Short(u64),
    /// Change `len` bytes from `at` within the data read or the data stored by a write.
    Corrupt {
        /// Flip or zero.
        how: CorruptHow,
        /// First byte, relative to the request's data.
        #[serde(default)]
        at: u64,
        /// Number of bytes.
        #[serde(default = "one")]
        len: u64,
    },
    /// Writes succeed for this many more bytes (over all matching writes), then fail with
    /// ENOSPC (a write that straddles the limit is partial).
    EnospcAfter(u64),
    /// Before a matching create, make the name exist as if another process had just won the
    /// race, holding `content` and owned by `uid`/`gid`.
    Competitor {
        /// The competitor's file content.
        #[serde(default)]
        content: String,
        /// Owner of the competitor's file.
        #[serde(default)]
        uid: u32,
        /// Group of the competitor's file.
        #[serde(default)]
        gid: u32,
    },
    /// Keep the request waiting until released through the control socket.
    Hold,
    /// Send this signal (`"KILL"`, `"SIGTERM"`, `9`) to the calling process; the request
    /// fails with EINTR.
    Kill(String),
    /// Cut the power just before the request (it then fails with EIO), or just after it was
    /// answered: the tree becomes its durable state (docs/crash.md).
    Crash {
        /// After the request instead of before it.
        #[serde(default)]
        after: bool,
        /// Which unsynced changes survive.
        #[serde(default)]
        keep: crate::fs::durable::Keep,
        /// Seed of the draws for `keep: random` and `torn`.
        #[serde(default)]
        seed: u64,
        /// A lost write may survive as a prefix ending on a multiple of this many bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        torn: Option<u64>,
        /// SIGKILL every process with a file open on the mount first.
        #[serde(default)]
        kill: bool,
    },
}

fn one() -> u64 {
    1
}

/// A fault rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Identifier, assigned when the rule is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Which requests.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Which matches fire.
    #[serde(default)]
    pub when: When,
    /// What happens.
    pub action: Action,
}

/// A rule with its live counters, as `fault list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Requests that matched.
    pub matched: u64,
    /// Times it fired.
    pub hits: u64,
}

/// A rule checked and ready to match.
#[derive(Debug)]
pub struct Compiled {
    /// The rule as given (with its id).
    pub rule: Rule,
    id: u64,
    ops: u64,
    filter: Filter,
    flags: i32,
    /// Access mode named in `match.flags` (`O_RDONLY` is 0: it cannot be a bit to test).
    accmode: Option<i32>,
    errno: Option<Errno>,
    signal: Option<i32>,
    matched: AtomicU64,
    hits: AtomicU64,
    /// Bytes left before ENOSPC, for `enospc_after`.
    budget: AtomicU64,
}

fn op_bit(op: Op) -> u64 {
    1 << Op::ALL.iter().position(|o| *o == op).unwrap_or(63)
}

/// Parses a signal name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "SEGV" => libc::SIGSEGV,
        "BUS" => libc::SIGBUS,
        "XFSZ" => libc::SIGXFSZ,
        _ => return None,
    })
}

impl Rule {
    /// Checks every field and prepares the rule for matching; the error names what is wrong.
    pub fn compile(self, id: u64) -> Result<Compiled, String> {
        let mut filter = Filter::new();
        let mut ops = 0u64;
        for name in &self.matches.ops {
            let op = Op::from_name(name).ok_or_else(|| {
                let all: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
                format!(
                    "unknown operation {name:?} in match.ops (valid: {})",
                    all.join(", ")
                )
            })?;
            ops |= op_bit(op);
        }
        if ops == 0 {
            ops = u64::MAX;
        }
        if let Some(glob) = &self.matches.path {
            filter.path = Some(PathGlob::new(glob).map_err(|e| format!("match.path: {e}"))?);
        }
        filter.pid = self.matches.pid;
        filter.comm = self.matches.comm.clone();
        let mut flag_bits = 0;
        let mut accmode = None;
        for f in &self.matches.flags {
            let bits = flags::open_flag_bits(f)
                .ok_or_else(|| format!("unknown open flag {f:?} in match.flags"))?;
            if bits & !libc::O_ACCMODE != 0 {
                flag_bits |= bits;
            } else if accmode.is_some_and(|m| m != bits) {
                return Err("match.flags names two access modes".into());
            } else {
                accmode = Some(bits);
            }
        }
        for (name, r) in [
            ("offset", &self.matches.offset),
            ("size", &self.matches.size),
        ] {
            if let Some(r) = r {
                r.check().map_err(|e| format!("match.{name}: {e}"))?;
            }
        }
        match self.when {
            When::Nth(0) => return Err("when.nth counts from 1".into()),
            When::Times(0) => return Err("when.times must be at least 1".into()),
            When::Probability { p, .. } if !(0.0..=1.0).contains(&p) => {
                return Err(format!(
                    "when.probability.p must be between 0 and 1, not {p}"
                ));
            }
            _ => {}
        }
        let mut errno = None;
        let mut signal = None;
        let mut budget = 0;
        match &self.action {
            Action::Errno(name) => {
                errno = Some(
                    Errno::from_name(name)
                        .ok_or_else(|| format!("unknown errno {name:?} in action.errno"))?,
                );
            }
            Action::Kill(name) => {
                signal = Some(
                    parse_signal(name)
                        .ok_or_else(|| format!("unknown signal {name:?} in action.kill"))?,
                );
            }
            Action::Short(0) => return Err("action.short must be at least 1 byte".into()),
            Action::Corrupt { len: 0, .. } => {
                return Err("action.corrupt.len must be at least 1".into());
            }
            Action::Delay { ms, .. } if *ms > 3_600_000 => {
                return Err("action.delay.ms is more than an hour".into());
            }
            Action::EnospcAfter(n) => budget = *n,
            Action::Crash { torn: Some(0), .. } => {
                return Err("action.crash.torn must be at least 1 byte".into());
            }
            _ => {}
        }
        // Actions that change the operation itself need operations they apply to.
        let needs: Option<(&str, &[Op])> = match &self.action {
            Action::Short(_) | Action::Corrupt { .. } => {
                Some(("read or write", &[Op::Read, Op::Write]))
            }
            Action::EnospcAfter(_) => Some(("write", &[Op::Write])),
            Action::Competitor { .. } => Some(("create", &[Op::Create])),
            _ => None,
        };
        if let Some((what, allowed)) = needs {
            let ok = !self.matches.ops.is_empty()
                && self
                    .matches
                    .ops
                    .iter()
                    .all(|o| Op::from_name(o).is_some_and(|op| allowed.contains(&op)));
            if !ok {
                let action = serde_json::to_value(&self.action)
                    .ok()
                    .and_then(|v| match v {
                        serde_json::Value::Object(m) => m.keys().next().cloned(),
                        serde_json::Value::String(s) => Some(s),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "action {action} applies to {what}: set match.ops to it"
                ));
            }
        }
        let mut rule = self;
        rule.id = Some(id);
        Ok(Compiled {
            rule,
            id,
            ops,
            filter,
            flags: flag_bits,
            accmode,
            errno,
            signal,
            matched: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
        })
    }
}

/// splitmix64: a small, well-mixed generator; the k-th draw of a seed is a pure function.
fn splitmix(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Compiled {
    /// The rule's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The errno of an `errno` action.
    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }

    /// The signal of a `kill` action.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    fn matches(&self, e: &Event) -> bool {
        if self.ops & op_bit(e.op) == 0 || !self.filter.matches(e) {
            return false;
        }
        if !self.rule.matches.flags.is_empty() {
            // Other ops use `flags` for other things (rename flags, datasync, access mask...).
            let open_flags = matches!(
                e.op,
                Op::Open | Op::Create | Op::Read | Op::Write | Op::Release | Op::Opendir
            );
            if !open_flags
                || !e.has_flags(self.flags)
                || self
                    .accmode
                    .is_some_and(|m| e.flags.is_none_or(|f| f & libc::O_ACCMODE != m))
            {
                return false;
            }
        }
        let in_range = |r: &Option<Range>, v: Option<u64>| match (r, v) {
            (Some(r), Some(v)) => r.contains(v),
            (Some(_), None) => false,
            (None, _) => true,
        };
        in_range(&self.matches_offset(), e.offset.map(|o| o.max(0) as u64))
            && in_range(&self.rule.matches.size, e.size)
    }

    fn matches_offset(&self) -> Option<Range> {
        self.rule.matches.offset
    }

    /// Counts a match and decides whether it fires.
    fn fires(&self) -> bool {
        let k = self.matched.fetch_add(1, Ordering::Relaxed) + 1;
        let fire = match self.rule.when {
            When::Always => true,
            When::Nth(n) => k == n,
            When::After(n) => k > n,
            When::Times(n) => k <= n,
            When::Probability { p, seed } => {
                ((splitmix(seed, k - 1) >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        };
        if fire {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        fire
    }

    /// For `enospc_after`: takes up to `want` bytes from the budget, returning how many.
    pub fn take_budget(&self, want: u64) -> u64 {
        let mut cur = self.budget.load(Ordering::Relaxed);
        loop {
            let take = cur.min(want);
            match self.budget.compare_exchange_weak(
                cur,
                cur - take,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    /// The rule and its counters.
    pub fn status(&self) -> RuleStatus {
        RuleStatus {
            rule: self.rule.clone(),
            matched: self.matched.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }

    /// Applies a `corrupt` action to `data` (the bytes read, or about to be stored).
    pub fn corrupt(&self, data: &mut [u8]) {
        if let Action::Corrupt { how, at, len } = self.rule.action {
            let start = (at as usize).min(data.len());
            let end = start.saturating_add(len as usize).min(data.len());
            for b in &mut data[start..end] {
                *b = match how {
                    CorruptHow::Flip => !*b,
                    CorruptHow::Zero => 0,
                };
            }
        }
    }

    /// How long a `delay` action waits, and whether after the operation.
    pub fn delay(&self) -> Option<(Duration, bool)> {
        match self.rule.action {
            Action::Delay { ms, after } => Some((Duration::from_millis(ms), after)),
            _ => None,
        }
    }
}

/// The rules of one mount.
#[derive(Debug, Default)]
pub struct Faults {
    rules: RwLock<RuleSet>,
    count: AtomicUsize,
    /// The operations some rule matches (bits as in [`op_bit`]).
    ops: AtomicU64,
    next_id: AtomicU64,
    /// Requests held by `hold` rules.
    pub holds: hold::Holds,
    /// Called once rules that may match lookups are in place.
    on_lookup_rules: OnceLock<LookupHook>,
}

/// What [`Faults::on_lookup_rules`] calls.
struct LookupHook(Box<dyn Fn() + Send + Sync>);

impl fmt::Debug for LookupHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupHook")
    }
}

/// The rules in the order they are tried, indexed by the directory their path glob names
/// literally, so that a request is checked only against rules that could match its path.
#[derive(Debug, Default)]
struct RuleSet {
    list: Vec<Arc<Compiled>>,
    /// Directory (`/a/b`, from a glob such as `/a/b/*.log`) to the positions of its rules.
    by_dir: HashMap<String, Vec<usize>>,
    /// Positions of the rules with no path, or a glob with no literal directory.
    always: Vec<usize>,
}

impl RuleSet {
    /// The operations some rule matches.
    fn ops(&self) -> u64 {
        self.list.iter().fold(0, |all, r| all | r.ops)
    }

    fn reindex(&mut self) {
        self.by_dir.clear();
        self.always.clear();
        for (i, r) in self.list.iter().enumerate() {
            let prefix = r.filter.path.as_ref().map_or("", |g| g.literal_prefix());
            match prefix.rfind('/') {
                Some(slash) if slash > 0 => self
                    .by_dir
                    .entry(prefix[..slash].to_string())
                    .or_default()
                    .push(i),
                _ => self.always.push(i),
            }
        }
    }

    /// Positions of the rules that could match `e`, in order.
    fn candidates(&self, e: &Event) -> Vec<usize> {
        let mut out = self.always.clone();
        for path in [&e.path, &e.path2].into_iter().flatten() {
            for (i, _) in path.match_indices('/').skip(1) {
                if let Some(rules) = self.by_dir.get(&path[..i]) {
                    out.extend_from_slice(rules);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Faults {
    /// True if any rule is installed (the request path skips everything otherwise).
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Indexes a changed rule list and publishes what the request path reads without the
    /// lock: how many rules there are, and which operations they match.
    fn publish(&self, rules: &mut RuleSet) {
        rules.reindex();
        self.count.store(rules.list.len(), Ordering::Relaxed);
        self.ops.store(rules.ops(), Ordering::Release);
    }

    /// True if some installed rule may match requests of `op`.
    pub fn may_match(&self, op: Op) -> bool {
        self.ops.load(Ordering::Acquire) & op_bit(op) != 0
    }

    /// True if some installed rule may fire on a lookup of `path` (None: a path not known):
    /// the kernel must not keep that name, or its walks would pass the rule by. Only the
    /// rule's operations and path count here; a rule for some other process still counts.
    pub fn may_fault_lookup_of(&self, path: Option<&str>) -> bool {
        if !self.may_match(Op::Lookup) {
            return false;
        }
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        rules.list.iter().any(|r| {
            r.ops & op_bit(Op::Lookup) != 0
                && match (&r.filter.path, path) {
                    (Some(glob), Some(p)) => glob.matches(p),
                    _ => true,
                }
        })
    }

    /// Has `hook` called whenever rules that may match lookups have been added: the mount
    /// makes the kernel forget the names it keeps, which walks would otherwise pass through
    /// without a lookup for the rules to meet. Only the first hook set is kept.
    pub fn on_lookup_rules(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_lookup_rules.set(LookupHook(Box::new(hook)));
    }

    /// Checks and adds rules, all or none; returns their ids.
    pub fn add(&self, rules: Vec<Rule>) -> Result<Vec<u64>, String> {
        // Ids are handed out under the lock and only to rules that are added: a refused
        // batch uses none, and ids grow in the order the rules are tried.
        let mut list = self.rules.write().unwrap_or_else(|e| e.into_inner());
        let first = self.next_id.load(Ordering::Relaxed) + 1;
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            let c = r.compile(first + i as u64).map_err(|e| {
                if i == 0 {
                    e
                } else {
                    format!("rule {}: {e}", i + 1)
                }
            })?;
            compiled.push(Arc::new(c));
        }
        self.next_id
            .fetch_add(compiled.len() as u64, Ordering::Relaxed);
        let ids = compiled.iter().map(|c| c.id).collect();
        let lookups = compiled.iter().any(|c| c.ops & op_bit(Op::Lookup) != 0);
        list.list.extend(compiled);
        self.publish(&mut list);
        drop(list);
        if let (true, Some(hook)) = (lookups, self.on_lookup_rules.get()) {
            (hook.0)();
        }
        Ok(ids)
    }

    /// Removes rules by id; returns the ids that did not exist.
    pub fn remove(&self, ids: &[u64]) -> Vec<u64> {
        let mut rules = self.rules.write().unwrap_or_else(|e| e.into_inner());
        let missing = ids
            .iter()
            .copied()
            .filter(|id| !rules.list.iter().any(|r| r.id == *id))
            .collect();
        rules.list.retain(|r| !ids.contains(&r.id));
        self.publish(&mut rules);
        drop(rules);
        for id in ids {
            self.holds.release_rule(*id);
        }
        missing
    }

    /// Removes every rule and releases every held request; returns how many rules there were.
    pub fn clear(&self) -> usize {
        let mut rules = self.rules.write().unwrap_or_else(|e| e.into_inner());
        let n = rules.list.len();
        rules.list.clear();
        self.publish(&mut rules);
        drop(rules);
        self.holds.release_all();
        n
    }

    /// Every rule with its counters.
    pub fn list(&self) -> Vec<RuleStatus> {
        self.rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .iter()
            .map(|r| r.status())
            .collect()
    }

    /// The first rule that matches `e` and fires, if any. Rules are tried in the order they
    /// were added; those after the one that fires are not consulted (nor counted).
    pub fn check(&self, e: &Event) -> Option<Arc<Compiled>> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let fires = |r: &&Arc<Compiled>| r.matches(e) && r.fires();
        if rules.by_dir.is_empty() {
            // Nothing is indexed: every rule is a candidate, no list to build.
            return rules.list.iter().find(fires).cloned();
        }
        let found = rules.candidates(e).into_iter().map(|i| &rules.list[i]);
        found.into_iter().find(fires).cloned()
    }
}

/// Reads rules from a JSON file: an array of rules, or one rule.
pub fn load_rules(path: &std::path::Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_rules(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses rules from JSON text: an array of rules, or one rule.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, r)| {
            one_of_each(&r).map_err(|e| format!("rule {}: {e}", i + 1))?;
            serde_json::from_value(r).map_err(|e| format!("rule {}: {e}", i + 1))
        })
        .collect()
}

/// A rule's `action` and `when` each name one thing: two would be read as neither (serde
/// only says "expected map with a single key"), so name them.
fn one_of_each(rule: &serde_json::Value) -> Result<(), String> {
    for key in ["action", "when"] {
        if let Some(serde_json::Value::Object(m)) = rule.get(key) {
            if m.len() > 1 {
                let names: Vec<&str> = m.keys().map(String::as_str).collect();
                return Err(format!(
                    "\"{key}\" names {} ({}): a rule takes one; make a rule for each",
                    m.len(),
                    names.join(", ")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, path: &str) -> Event {
        Event {
            op,
            path: Some(path.into()),
            pid: 7,
            comm: "app".into(),
            ..Event::default()
        }
    }

    fn rule(json: &str) -> Result<Compiled, String> {
        let r: Rule = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.compile(1)
    }

    #[test]
    fn rules_match_on_every_criterion() {
        let r = rule(
            r#"{"match":{"ops":["read"],"path":"/data/**","comm":"app","offset":{"min":10}},
                "action":{"errno":"EIO"}}"#,
        )
        .unwrap();
        let mut e = ev(Op::Read, "/data/a/b");
        e.offset = Some(10);
        assert!(r.matches(&e));
        e.offset = Some(9);
        assert!(!r.matches(&e));
        e.offset = Some(10);
        e.op = Op::Write;
        assert!(!r.matches(&e));
        let excl = rule(r#"{"match":{"flags":["O_EXCL"]},"action":"hold"}"#).unwrap();
        let mut c = ev(Op::Create, "/p");
        c.flags = Some(libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY);
        assert!(excl.matches(&c));
        c.flags = Some(libc::O_CREAT | libc::O_WRONLY);
        assert!(!excl.matches(&c));
        // Access modes compare as modes (O_RDONLY is 0), and only open flags are looked at.
        let rdonly = rule(r#"{"match":{"flags":["O_RDONLY"]},"action":"hold"}"#).unwrap();
        assert!(!rdonly.matches(&c));
        assert!(!rdonly.matches(&ev(Op::Getattr, "/p")));
        c.flags = Some(libc::O_RDONLY);
        assert!(rdonly.matches(&c));
        let wronly = rule(r#"{"match":{"flags":["O_WRONLY"]},"action":"hold"}"#).unwrap();
        let mut rename = ev(Op::Rename, "/p");
        rename.flags = Some(1); // RENAME_NOREPLACE
        assert!(!wronly.matches(&rename));
        assert!(rule(r#"{"match":{"flags":["O_RDONLY","O_RDWR"]},"action":"hold"}"#).is_err());
    }

    #[test]
    fn rules_are_indexed_by_directory_and_still_tried_in_order() {
        let faults = Faults::default();
        let rules = parse_rules(
            r#"[{"match":{"path":"/logs/*.log"},"action":{"errno":"EIO"}},
                {"match":{"path":"/other/**"},"action":{"errno":"EIO"}},
                {"match":{"path":"*.log"},"action":{"errno":"ENOSPC"}},
                {"match":{"path":"/logs/a.log"},"action":{"errno":"EPERM"}}]"#,
        )
        .unwrap();
        assert_eq!(faults.add(rules).unwrap(), vec![1, 2, 3, 4]);
        let hit = |path: &str| faults.check(&ev(Op::Read, path)).map(|r| r.id());
        assert_eq!(hit("/logs/a.log"), Some(1));
        assert_eq!(hit("/x/b.log"), Some(3));
        assert_eq!(hit("/other/deep/file"), Some(2));
        assert_eq!(hit("/logs/a.txt"), None);
        faults.remove(&[1]);
        assert_eq!(hit("/logs/a.log"), Some(3));
        let mut renamed = ev(Op::Rename, "/tmp/x");
        renamed.path2 = Some("/other/x".into());
        assert_eq!(faults.check(&renamed).map(|r| r.id()), Some(2));
    }

    #[test]
    fn the_mount_hears_when_rules_come_to_match_lookups_and_not_otherwise() {
        let faults = Faults::default();
        let heard = Arc::new(AtomicUsize::new(0));
        let count = heard.clone();
        faults.on_lookup_rules(move || {
            count.fetch_add(1, Ordering::Relaxed);
        });
        let add = |json: &str| faults.add(parse_rules(json).unwrap()).unwrap()[0];
        let read = add(r#"{"match":{"ops":["read"]},"action":{"errno":"EIO"}}"#);
        assert!(faults.may_match(Op::Read) && !faults.may_match(Op::Lookup));
        assert_eq!(heard.load(Ordering::Relaxed), 0);
        let lookup = add(r#"{"match":{"ops":["lookup"],"path":"/d"},"action":{"errno":"EIO"}}"#);
        assert!(faults.may_match(Op::Lookup));
        assert_eq!(heard.load(Ordering::Relaxed), 1);
        assert!(faults.may_fault_lookup_of(Some("/d")));
        assert!(faults.may_fault_lookup_of(None));
        assert!(!faults.may_fault_lookup_of(Some("/d/f")));
        assert!(!faults.may_fault_lookup_of(Some("/e")));
        faults.remove(&[lookup]);
        assert!(!faults.may_match(Op::Lookup) && faults.may_match(Op::Read));
        assert!(!faults.may_fault_lookup_of(Some("/d")));
        // A rule with no operations matches lookups too.
        add(r#"{"action":{"delay":{"ms":1}}}"#);
        assert!(faults.may_match(Op::Lookup));
        assert!(faults.may_fault_lookup_of(Some("/e")));
        assert_eq!(heard.load(Ordering::Relaxed), 2);
        faults.remove(&[read]);
        faults.clear();
        assert!(!faults.may_match(Op::Lookup) && !faults.may_match(Op::Read));
    }

    #[test]
    fn triggers_count_matches() {
        let fire = |when: &str, n: usize| -> Vec<bool> {
            let r = rule(&format!(r#"{{"when":{when},"action":{{"errno":"EIO"}}}}"#)).unwrap();
            (0..n).map(|_| r.fires()).collect()
        };
        assert_eq!(fire(r#"{"nth":2}"#, 4), [false, true, false, false]);
        assert_eq!(fire(r#"{"after":2}"#, 4), [false, false, true, true]);
        assert_eq!(fire(r#"{"times":1}"#, 3), [true, false, false]);
        assert_eq!(fire(r#""always""#, 2), [true, true]);
        let a = fire(r#"{"probability":{"p":0.3,"seed":42}}"#, 200);
        let b = fire(r#"{"probability":{"p":0.3,"seed":42}}"#, 200);
        let c = fire(r#"{"probability":{"p":0.3,"seed":43}}"#, 200);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let hits = a.iter().filter(|x| **x).count();
        assert!((30..90).contains(&hits), "{hits} hits of 200 at p=0.3");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |j: &str| rule(j).unwrap_err();
        assert!(err(r#"{"match":{"ops":["reed"]},"action":{"errno":"EIO"}}"#).contains("\"reed\""));
        assert!(err(r#"{"action":{"errno":"EBOGUS"}}"#).contains("EBOGUS"));
        assert!(err(r#"{"action":{"errno":"EIO"},"colour":1}"#).contains("colour"));
        assert!(err(r#"{"match":{"path":"/a/[b"},"action":"hold"}"#).contains("match.path"));
        assert!(
            err(r#"{"match":{"size":{"min":5,"max":1}},"action":"hold"}"#).contains("impossible")
        );
        assert!(
            err(r#"{"when":{"probability":{"p":2}},"action":"hold"}"#).contains("between 0 and 1")
        );
        assert!(err(r#"{"action":{"short":0}}"#).contains("at least 1"));
        assert!(err(r#"{"action":{"short":1}}"#).contains("applies to read or write"));
        assert!(err(r#"{"match":{"ops":["open"]},"action":{"competitor":{}}}"#).contains("create"));
        assert!(err(r#"{"action":{"kill":"SIGFOO"}}"#).contains("SIGFOO"));
        assert!(err(r#"{"match":{"flags":["O_NOPE"]},"action":"hold"}"#).contains("O_NOPE"));
        assert!(err(r#"{"when":{"nth":0},"action":"hold"}"#).contains("from 1"));
        assert!(parse_rules("[1,").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn enospc_budget_and_corruption() {
        let r = rule(r#"{"match":{"ops":["write"]},"action":{"enospc_after":10}}"#).unwrap();
        assert_eq!(r.take_budget(6), 6);
        assert_eq!(r.take_budget(6), 4);
        assert_eq!(r.take_budget(6), 0);
        let c = rule(
            r#"{"match":{"ops":["read"]},"action":{"corrupt":{"how":"flip","at":1,"len":2}}}"#,
        )
        .unwrap();
        let mut d = [0u8, 0, 0, 0];
        c.corrupt(&mut d);
        assert_eq!(d, [0, 255, 255, 0]);
        let z = rule(
            r#"{"match":{"ops":["write"]},"action":{"corrupt":{"how":"zero","at":3,"len":9}}}"#,
        )
        .unwrap();
        let mut d = [1u8, 1, 1, 1];
        z.corrupt(&mut d);
        assert_eq!(d, [1, 1, 1, 0]);
        assert_eq!(parse_signal("SIGKILL"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(
            Range::parse("10..20").unwrap(),
            Range {
                min: Some(10),
                max: Some(20)
            }
        );
        assert!(Range::parse("20..10").is_err());
    }
}
