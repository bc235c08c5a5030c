//! `rawfs explore`: runs a workload once on a mount that keeps its tree after every request
//! that changed it, builds from that recording every crash state the workload could have left
//! under a persistence model (never running the workload again), checks each distinct state
//! with a checker program, and reports the failing ones grouped by the change whose loss
//! broke the checker (docs/explore.md).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fs::durable::{Change, ChangeKind, Choice, CrashOptions, Keep, Losses, Model};
use crate::fs::snapshot::{CrashState, Snapshot};
use crate::mount::{MountConfig, Mounted};
use crate::trace::recorder::{Overflow, TraceConfig};
use crate::trace::{Event, Op, format};

/// Most bytes of a checker's output kept in the report.
const OUTPUT_MAX: usize = 4096;

/// What to explore and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Persistence model.
    pub model: Model,
    /// Torn writes are cut at multiples of this many bytes.
    pub sector: u64,
    /// Most crash states generated.
    pub max_states: usize,
    /// Seed of the random states.
    pub seed: u64,
    /// States checked at once.
    pub jobs: usize,
    /// The checker, a shell command run in each state's directory.
    pub checker: String,
    /// The workload and its arguments.
    pub workload: Vec<OsString>,
}

/// Why exploring could not start or finish (exit status 2).
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of the workload, recorded.
pub struct Recording {
    /// (request sequence number, the tree after it), for every request that changed the tree
    /// or its durable state, preceded by the empty tree at 0.
    points: Vec<(u64, Snapshot)>,
    /// What the workload printed: (requests numbered when the line was read, the line).
    stdout: Vec<(u64, String)>,
    /// Every request of the run.
    events: Vec<Event>,
}

/// Which unsynced changes a state keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    /// None: the power went right after the request.
    Prefix,
    /// Every one but the change with this order.
    Reorder {
        /// The lost change.
        order: u64,
    },
    /// Every one, but the write with this order keeps only `keep` bytes.
    Torn {
        /// The torn write.
        order: u64,
        /// Bytes of it kept.
        keep: u64,
    },
    /// A seeded random subset, writes torn at the sector size.
    Random {
        /// The draw's seed.
        seed: u64,
    },
}

impl Spec {
    fn choice(self, sector: u64) -> Choice {
        match self {
            Spec::Prefix => Choice::Draw(CrashOptions::default()),
            Spec::Reorder { order } => Choice::AllBut(order),
            Spec::Torn { order, keep } => Choice::Torn { order, keep },
            Spec::Random { seed } => Choice::Draw(CrashOptions {
                keep: Keep::Random,
                seed,
                torn: Some(sector),
            }),
        }
    }

    /// The short form used in state ids: `p`, `r12`, `t12+512`, `s7`.
    fn code(self) -> String {
        match self {
            Spec::Prefix => "p".into(),
            Spec::Reorder { order } => format!("r{order}"),
            Spec::Torn { order, keep } => format!("t{order}+{keep}"),
            Spec::Random { seed } => format!("s{seed}"),
        }
    }

    fn parse(code: &str) -> Option<Spec> {
        let num = |s: &str| s.parse::<u64>().ok();
        match code.split_at_checked(1)? {
            ("p", "") => Some(Spec::Prefix),
            ("r", n) => Some(Spec::Reorder { order: num(n)? }),
            ("s", n) => Some(Spec::Random { seed: num(n)? }),
            ("t", rest) => {
                let (o, k) = rest.split_once('+')?;
                Some(Spec::Torn {
                    order: num(o)?,
                    keep: num(k)?,
                })
            }
            _ => None,
        }
    }
}

/// A state to build: after which recorded point, keeping what.
#[derive(Clone, Copy, Debug)]
struct Planned {
    point: usize,
    spec: Spec,
}

/// One state the checker rejected.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// Rebuilds the state: `rawfs explore --replay ID`.
    pub id: String,
    /// The last request that took effect.
    pub seq: u64,
    /// What the state keeps, in words.
    pub state: String,
    /// Which unsynced changes it keeps.
    pub spec: Spec,
    /// What the crash lost or tore.
    pub lost: Losses,
    /// The checker's exit status (None: killed by a signal).
    pub status: Option<i32>,
    /// What the checker printed (standard output, then standard error), cut at 4 KiB.
    pub output: String,
    /// The requests around the cut, as text.
    pub excerpt: Vec<String>,
    /// The request whose change, lost or torn alone, breaks the checker (reorder and torn
    /// states), as text.
    pub cause: Option<String>,
}

/// Failures that share a cause.
#[derive(Debug, Serialize)]
pub struct Group {
    /// The cause: the request whose lost or torn change breaks the checker, or which kind of
    /// state fails.
    pub cause: String,
    /// The ids of the failing states, in order.
    pub ids: Vec<String>,
}

/// What exploring found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The persistence model.
    pub model: Model,
    /// Requests the workload caused.
    pub requests: u64,
    /// Requests that changed the tree or its durable state (crash points).
    pub points: usize,
    /// Crash states generated.
    pub generated: usize,
    /// Distinct ones: equal trees with the same workload output before the cut count once.
    pub distinct: usize,
    /// Checked by the checker (every distinct state).
    pub checked: usize,
    /// Systematic states not generated because of `--max-states`.
    pub skipped: usize,
    /// Seconds the checking took.
    pub seconds: f64,
    /// Distinct states checked per second.
    pub states_per_second: f64,
    /// The failing states.
    pub failures: Vec<Failure>,
    /// The failures grouped by cause.
    pub groups: Vec<Group>,
}

/// Resolves the first word of a command line against the caller's directory and PATH;
/// errors if there is no such program.
fn program(word: &str, what: &str) -> Result<PathBuf, Error> {
    let p = Path::new(word);
    if word.contains('/') {
        let abs = std::path::absolute(p).map_err(|e| Error(format!("{what} {word}: {e}")))?;
        if abs.is_file() {
            return Ok(abs);
        }
        return Err(Error(format!("{what} {word:?} does not exist")));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(word).is_file()) || is_shell_builtin(word) {
        return Ok(p.to_path_buf());
    }
    Err(Error(format!(
        "{what} {word:?} is not a program on PATH (give a path to run a script)"
    )))
}

fn is_shell_builtin(word: &str) -> bool {
    matches!(word, "true" | "false" | "test" | "[" | ":" | "exit" | "cd")
}

/// Checks the options before anything runs.
pub fn validate(o: &mut Options) -> Result<(), Error> {
    if o.max_states == 0 {
        return Err(Error("--max-states must be at least 1".into()));
    }
    if o.sector == 0 {
        return Err(Error("--sector must be at least 1 byte".into()));
    }
    if o.jobs == 0 {
        return Err(Error("--jobs must be at least 1".into()));
    }
    let Some(first) = o.checker.split_whitespace().next() else {
        return Err(Error("--check needs a command".into()));
    };
    let resolved = program(first, "checker")?;
    if first.contains('/') {
        let rest = o.checker.trim_start()[first.len()..].to_string();
        o.checker = format!(
            "'{}'{rest}",
            resolved.display().to_string().replace('\'', "'\\''")
        );
    }
    let Some(w) = o.workload.first() else {
        return Err(Error("no WORKLOAD given (after --)".into()));
    };
    let w = w.to_string_lossy().into_owned();
    let resolved = program(&w, "workload")?;
    o.workload[0] = resolved.into_os_string();
    Ok(())
}

/// Runs the workload once on a fresh mount (its working directory, `RAWFS_MOUNT` set), keeping
/// the tree after every request that changed it and what it printed.
pub fn record(o: &Options) -> Result<Recording, Error> {
    let dir = tempfile::Builder::new()
        .prefix("rawfs-explore-")
        .tempdir()
        .map_err(|e| Error(format!("cannot create a mount point: {e}")))?;
    let config = MountConfig {
        model: o.model,
        threads: 1,
        record_states: true,
        trace: TraceConfig {
            capacity: 10_000_000,
            file: None,
            overflow: Overflow::Wait,
        },
        ..MountConfig::default()
    };
    let mounted = Mounted::mount(dir.path(), &config).map_err(|e| Error(e.to_string()))?;
    let recorder = mounted.recorder().cloned().expect("recording is on");
    let mut child = mounted
        .spawn_inside(
            Command::new(&o.workload[0])
                .args(&o.workload[1..])
                .env("RAWFS_MOUNT", dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| Error(format!("cannot run the workload: {e}")))?;
    let out = child.stdout.take().expect("piped");
    let rec = recorder.clone();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            lines.push((rec.requests(), line));
        }
        lines
    });
    let mut err = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = child
        .wait()
        .map_err(|e| Error(format!("waiting for the workload: {e}")))?;
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    recorder.store().sync(Duration::from_secs(5));
    let (events, _) = recorder.store().since(0);
    let mut points = mounted.power().take_states();
    // The power may also go after the workload ended, when it has told its user everything.
    let last = recorder.requests();
    if points.last().is_none_or(|p| p.0 < last) {
        points.push((last, mounted.fs().snapshot()));
    }
    let _ = mounted.unmount();
    if !status.success() {
        return Err(Error(format!(
            "the workload failed ({status}); it runs with the fresh mount as its working \
             directory, so files outside it need absolute paths. Its standard error:\n{}",
            stderr.trim_end()
        )));
    }
    Ok(Recording {
        points,
        stdout,
        events,
    })
}

/// splitmix64, for drawing random states from the seed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Recording {
    /// Every state to build, systematic ones first: prefix states, then each unsynced change
    /// lost alone, then the writes of each request torn at every sector boundary, then random
    /// subsets; at most `max` in all. Also how many systematic ones did not fit.
    fn plan(&self, o: &Options) -> (Vec<Planned>, usize) {
        let mut prefix = Vec::new();
        let mut reorder = Vec::new();
        let mut torn = Vec::new();
        for (i, (_, snap)) in self.points.iter().enumerate() {
            prefix.push(Planned {
                point: i,
                spec: Spec::Prefix,
            });
            let before = if i == 0 {
                0
            } else {
                self.points[i - 1].1.last_order()
            };
            for c in snap.changes() {
                reorder.push(Planned {
                    point: i,
                    spec: Spec::Reorder { order: c.order },
                });
                // Writes made by this point's request, torn at every sector boundary.
                if let (ChangeKind::Write(offset, len), true) = (&c.kind, c.order > before) {
                    let mut cut = (offset / o.sector + 1) * o.sector;
                    while cut < offset + len {
                        torn.push(Planned {
                            point: i,
                            spec: Spec::Torn {
                                order: c.order,
                                keep: cut - offset,
                            },
                        });
                        cut += o.sector;
                    }
                }
            }
        }
        let mut all: Vec<Planned> = prefix.into_iter().chain(reorder).chain(torn).collect();
        let skipped = all.len().saturating_sub(o.max_states);
        all.truncate(o.max_states);
        let mut n = 0u64;
        while all.len() < o.max_states && self.points.len() > 1 {
            n += 1;
            let seed = o.seed.wrapping_mul(1_000_003).wrapping_add(n);
            let point = (mix(seed) % self.points.len() as u64) as usize;
            all.push(Planned {
                point,
                spec: Spec::Random { seed },
            });
        }
        (all, skipped)
    }

    /// The request that made change `order` (the first point whose last order reaches it).
    fn request_of(&self, order: u64) -> Option<u64> {
        self.points
            .iter()
            .find(|(_, s)| s.last_order() >= order)
            .map(|(seq, _)| *seq)
    }

    fn event(&self, seq: u64) -> Option<&Event> {
        self.events
            .binary_search_by_key(&seq, |e| e.seq)
            .ok()
            .map(|i| &self.events[i])
    }

    /// One request as `#12 [4242 python3] write("/f", ...)`.
    fn request_text(&self, seq: u64) -> String {
        match self.event(seq) {
            Some(e) => format::text_line(e),
            None => format!("#{seq}"),
        }
    }

    fn excerpt(&self, seq: u64) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.op != Op::Forget && e.seq + 4 > seq && e.seq <= seq + 1)
            .map(|e| {
                let mark = if e.seq == seq { "=> " } else { "   " };
                format!("{mark}{}", format::text_line(e))
            })
            .collect()
    }

    fn change(&self, point: usize, order: u64) -> Option<Change> {
        self.points[point]
            .1
            .changes()
            .into_iter()
            .find(|c| c.order == order)
    }

    fn describe(&self, p: Planned, sector: u64) -> (String, Option<String>) {
        let seq = self.points[p.point].0;
        let cause = |order: u64| {
            self.request_of(order)
                .map(|s| self.request_text(s))
                .unwrap_or_else(|| format!("change {order}"))
        };
        match p.spec {
            Spec::Prefix => (format!("after #{seq}, nothing unsynced kept"), None),
            Spec::Reorder { order } => {
                let what = self
                    .change(p.point, order)
                    .map(|c| change_text(&c, &self.points[p.point].1))
                    .unwrap_or_default();
                let c = cause(order);
                (
                    format!("after #{seq}, every unsynced change kept but {what} (by {c})"),
                    Some(format!("lost alone: {what}, made by {c}")),
                )
            }
            Spec::Torn { order, keep } => {
                let c = cause(order);
                (
                    format!(
                        "after #{seq}, every unsynced change kept, the write of {c} torn after {keep} bytes"
                    ),
                    Some(format!("torn: {c}")),
                )
            }
            Spec::Random { seed } => (
                format!(
                    "after #{seq}, a random subset of unsynced changes (seed {seed}, torn at {sector})"
                ),
                None,
            ),
        }
    }

    /// The lines the workload printed before request `seq` took effect.
    fn printed_before(&self, seq: u64) -> Vec<&str> {
        self.stdout
            .iter()
            .filter(|(at, _)| *at <= seq)
            .map(|(_, l)| l.as_str())
            .collect()
    }

    fn state(&self, p: Planned, sector: u64) -> CrashState {
        self.points[p.point].1.crash_state(p.spec.choice(sector))
    }
}

fn change_text(c: &Change, s: &Snapshot) -> String {
    let path = s
        .path(c.ino)
        .unwrap_or_else(|| format!("(inode {})", c.ino));
    let join = |name: &std::ffi::OsStr| {
        let sep = if path.ends_with('/') { "" } else { "/" };
        format!("{path}{sep}{}", name.to_string_lossy())
    };
    match &c.kind {
        ChangeKind::Attrs => format!("the attributes of {path}"),
        ChangeKind::Name(name, Some(_)) => format!("the name {}", join(name)),
        ChangeKind::Name(name, None) => format!("the removal of {}", join(name)),
        ChangeKind::Write(o, n) => format!("the write of {path} {o}..{}", o + n),
        ChangeKind::Size(n) => format!("the size {n} of {path}"),
        ChangeKind::Zero => format!("a hole punched in {path}"),
    }
}

fn state_id(seq: u64, spec: Spec, fingerprint: u64) -> String {
    format!("{seq}{}-{:08x}", spec.code(), fingerprint as u32)
}

/// Removes a tree the checker may have made read-only.
fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+rwx")
        .arg(dir)
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

/// The checker's verdict on one state.
struct Verdict {
    status: Option<i32>,
    output: String,
}

fn run_checker(o: &Options, dir: &Path, seq: u64, state: &str, stdout_file: &Path) -> Verdict {
    let out = Command::new("sh")
        .arg("-c")
        .arg(&o.checker)
        .current_dir(dir)
        .env("RAWFS_CRASH_SEQ", seq.to_string())
        .env("RAWFS_CRASH_STATE", state)
        .env("RAWFS_WORKLOAD_STDOUT", stdout_file)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if text.len() > OUTPUT_MAX {
                let mut cut = OUTPUT_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("\n[cut]");
            }
            use std::os::unix::process::ExitStatusExt;
            Verdict {
                status: out.status.code().or(out.status.signal().map(|s| 128 + s)),
                output: text,
            }
        }
        Err(e) => Verdict {
            status: Some(127),
            output: format!("cannot run the checker: {e}"),
        },
    }
}

/// `f(0..n)` on `jobs` threads, results in order.
fn parallel_map<T: Send>(jobs: usize, n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let v = f(i);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// Builds and checks every planned state, `jobs` at a time.
pub fn explore(o: &Options, rec: &Recording) -> Result<Report, Error> {
    let (plan, skipped) = rec.plan(o);
    let work = tempfile::Builder::new()
        .prefix("rawfs-states-")
        .tempdir()
        .map_err(|e| Error(format!("cannot create a directory for the states: {e}")))?;
    // First every state's key, so that of equal states the first planned one is checked,
    // whatever the threads' timing.
    let keys: Vec<(u64, usize)> = parallel_map(o.jobs, plan.len(), |i| {
        let p = plan[i];
        let seq = rec.points[p.point].0;
        (
            rec.state(p, o.sector).fingerprint(),
            rec.printed_before(seq).len(),
        )
    });
    let mut first: HashMap<(u64, usize), usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        first.entry(*k).or_insert(i);
    }
    let mut distinct: Vec<usize> = first.values().copied().collect();
    distinct.sort_unstable();
    let start = Instant::now();
    let verdicts: Vec<Option<Failure>> = parallel_map(o.jobs, distinct.len(), |j| {
        let i = distinct[j];
        let p = plan[i];
        let seq = rec.points[p.point].0;
        let state = rec.state(p, o.sector);
        let printed = rec.printed_before(seq);
        let dir = work.path().join(format!("state-{i}"));
        let stdout_file = work.path().join(format!("stdout-{i}"));
        let written = state.write(&dir).and_then(|()| {
            let mut f = std::fs::File::create(&stdout_file)?;
            for l in &printed {
                writeln!(f, "{l}")?;
            }
            Ok(())
        });
        let (text, cause) = rec.describe(p, o.sector);
        let verdict = match written {
            Ok(()) => run_checker(o, &dir, seq, &text, &stdout_file),
            Err(e) => Verdict {
                status: None,
                output: format!("cannot write the state: {e}"),
            },
        };
        remove_tree(&dir);
        let _ = std::fs::remove_file(&stdout_file);
        (verdict.status != Some(0)).then(|| Failure {
            id: state_id(seq, p.spec, keys[i].0),
            seq,
            state: text,
            spec: p.spec,
            lost: state.losses,
            status: verdict.status,
            output: verdict.output,
            excerpt: rec.excerpt(seq),
            cause,
        })
    });
    let checked = verdicts.len();
    let seconds = start.elapsed().as_secs_f64();
    let failures: Vec<Failure> = verdicts.into_iter().flatten().collect();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &failures {
        let cause = f.cause.clone().unwrap_or_else(|| match f.spec {
            Spec::Prefix => "power cut with nothing unsynced kept".into(),
            _ => "random subsets of unsynced changes".into(),
        });
        groups.entry(cause).or_default().push(f.id.clone());
    }
    let distinct = distinct.len();
    Ok(Report {
        model: o.model,
        requests: rec.events.last().map_or(0, |e| e.seq),
        points: rec.points.len(),
        generated: plan.len(),
        distinct,
        checked,
        skipped,
        seconds,
        states_per_second: if seconds > 0.0 {
            checked as f64 / seconds
        } else {
            0.0
        },
        groups: groups
            .into_iter()
            .map(|(cause, ids)| Group { cause, ids })
            .collect(),
        failures,
    })
}

/// Rebuilds the state `id` names from a new run of the workload, checking that the run
/// repeated itself (the state's fingerprint matches). Returns the state and its description.
pub fn replay(o: &Options, rec: &Recording, id: &str) -> Result<(CrashState, String), Error> {
    let bad = || {
        Error(format!(
            "{id:?} is not a state id (as `rawfs explore` reports them)"
        ))
    };
    let (head, fp) = id.rsplit_once('-').ok_or_else(bad)?;
    let fp = u32::from_str_radix(fp, 16).map_err(|_| bad())?;
    let digits = head.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let seq: u64 = head[..digits].parse().map_err(|_| bad())?;
    let spec = Spec::parse(&head[digits..]).ok_or_else(bad)?;
    // Request numbers can shift between runs (the kernel's own lookups and forgets vary):
    // the point with the same number is tried first, then every point, by the fingerprint.
    let same = rec.points.iter().position(|(s, _)| *s == seq);
    let found = same
        .into_iter()
        .chain(0..rec.points.len())
        .map(|point| Planned { point, spec })
        .map(|p| (p, rec.state(p, o.sector)))
        .find(|(_, state)| state.fingerprint() as u32 == fp);
    let Some((p, state)) = found else {
        return Err(Error(format!(
            "this run of the workload left no state like {id}: it does not repeat itself"
        )));
    };
    Ok((state, rec.describe(p, o.sector).0))
}

/// The workload's output before `seq`, for `--replay` (written beside the state).
pub fn printed_before(rec: &Recording, seq: u64) -> Vec<String> {
    rec.printed_before(seq)
        .into_iter()
        .map(str::to_string)
        .collect()
}
