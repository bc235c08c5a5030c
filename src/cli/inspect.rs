//! The commands that read a mount's trace or state: `rawfs trace`, `rawfs check`,
//! `rawfs status`, and the trace report printed by `rawfs run`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::check::{self, Severity};
use crate::cli::outln;
use crate::control::{Client, Command};
use crate::trace::event::{FORMAT_VERSION, Header};
use crate::trace::filter::Filter;
use crate::trace::recorder::Counts;
use crate::trace::{Event, Gap, format};

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TraceFormat {
    /// One strace-like line per request.
    Text,
    /// JSON Lines: a header, then one event per line (docs/trace.md).
    Jsonl,
    /// Chrome trace-event JSON, for Perfetto or chrome://tracing.
    Chrome,
}

/// Where events come from and which ones to print.
#[derive(Args, Debug, Clone)]
pub(crate) struct Source {
    /// A rawfs mount point (its daemon is found from the path alone).
    #[arg(
        value_name = "MOUNTPOINT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    mountpoint: Option<PathBuf>,
    /// Read a saved trace (JSON Lines, as written by `--trace FILE`) instead of a live mount.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Only these operations (comma-separated: lookup,create,read,...).
    #[arg(long = "op", value_name = "OPS")]
    ops: Option<String>,
    /// Only requests whose path (or second path) matches this glob; `*` stays within one
    /// path component, `**` crosses them. Paths start with `/` at the mount point.
    #[arg(long, value_name = "GLOB")]
    path: Option<String>,
    /// Only requests from this process id.
    #[arg(long)]
    pid: Option<u32>,
    /// Only requests from processes with this command name.
    #[arg(long)]
    comm: Option<String>,
    /// Only these sequence numbers: `N`, `A..B` (inclusive), `A..` or `..B`.
    #[arg(long, value_name = "RANGE")]
    seq: Option<String>,
    /// Only requests that failed.
    #[arg(long)]
    failed: bool,
}

impl Source {
    fn filter(&self) -> Result<Filter, String> {
        let mut f = Filter::default();
        if let Some(ops) = &self.ops {
            f.ops = Filter::parse_ops(ops).map_err(|e| e.to_string())?;
        }
        if let Some(glob) = &self.path {
            f.path = Some(Filter::parse_glob(glob).map_err(|e| e.to_string())?);
        }
        f.pid = self.pid;
        f.comm = self.comm.clone();
        f.failed = self.failed;
        if let Some(seq) = &self.seq {
            f.seq = Some(Filter::parse_seq(seq).map_err(|e| e.to_string())?);
        }
        Ok(f)
    }

    /// Every event of the source, in sequence order, with the counters when live.
    fn load(&self) -> Result<Loaded, String> {
        if let Some(path) = &self.file {
            let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let read = format::read_jsonl_with_gaps(BufReader::new(f))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            warn_gaps(path, &read.gaps);
            let (header, mut events) = (read.header, read.events);
            events.sort_by_key(|e| e.seq);
            return Ok((events, None, header));
        }
        let mp = self
            .mountpoint
            .as_deref()
            .expect("clap requires a mount point or --file");
        let mut client = Client::connect(mp)?;
        let header = live_header(&mut client, mp)?;
        let mut events = Vec::new();
        let counts = client.trace(0, false, |e| {
            events.push(e);
            true
        })?;
        Ok((events, counts, Some(header)))
    }
}

/// Events in sequence order, the live counters, and the trace header.
type Loaded = (Vec<Event>, Option<Counts>, Option<Header>);

fn live_header(client: &mut Client, mountpoint: &Path) -> Result<Header, String> {
    let status = client.request(&Command::Status)?;
    let uptime_ns = status
        .get("uptime_ms")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u128
        * 1_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // The daemon's own start time and version: the same header for every reader, whichever
    // rawfs binary reads it. (A daemon older than the field: estimated from its uptime.)
    let started = status
        .get("started_unix_ns")
        .and_then(|v| serde_json::from_value::<u128>(v.clone()).ok())
        .unwrap_or_else(|| now.saturating_sub(uptime_ns));
    let version = status
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    Ok(Header {
        rawfs_trace: FORMAT_VERSION,
        rawfs_version: version,
        mountpoint: status
            .get("mountpoint")
            .and_then(|v| v.as_str())
            .map_or_else(|| mountpoint.display().to_string(), str::to_string),
        started_unix_ns: started,
    })
}

fn output(path: Option<&Path>) -> Result<Box<dyn Write>, String> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

/// Prints `events` in `fmt`.
pub(crate) fn print_events(
    mut w: &mut dyn Write,
    fmt: TraceFormat,
    header: Option<&Header>,
    events: &[Event],
) -> io::Result<()> {
    match fmt {
        TraceFormat::Text => {
            for e in events {
                writeln!(w, "{}", format::text_line(e))?;
            }
        }
        TraceFormat::Jsonl => {
            if let Some(h) = header {
                format::write_header(&mut w, h)?;
            }
            for e in events {
                format::write_event(&mut w, e)?;
            }
        }
        TraceFormat::Chrome => format::write_chrome(&mut w, events)?,
    }
    w.flush()
}

/// Says that a saved trace misses events, and where, as `warn_counts` does for a live one.
fn warn_gaps(path: &Path, gaps: &[Gap]) {
    if gaps.is_empty() {
        return;
    }
    let missing: u64 = gaps.iter().map(|g| g.dropped).sum();
    let first = gaps.iter().map(|g| g.first_seq).min().unwrap_or(0);
    let last = gaps.iter().map(|g| g.last_seq).max().unwrap_or(0);
    eprintln!(
        "rawfs: {} is missing {missing} events, dropped by the writer (--trace-overflow drop) \
         in {} gaps between #{first} and #{last}; what follows is incomplete",
        path.display(),
        gaps.len()
    );
}

fn warn_counts(counts: Option<Counts>) {
    if let Some(c) = counts {
        if c.dropped > 0 || c.evicted > 0 {
            eprintln!(
                "rawfs: the buffer is missing events: {} dropped (writer behind), {} evicted \
                 (buffer full; raise --trace-capacity or use --trace FILE)",
                c.dropped, c.evicted
            );
        }
    }
}

/// `rawfs trace`.
pub(crate) fn trace(
    src: &Source,
    fmt: TraceFormat,
    follow: bool,
    clear: bool,
    out: Option<&Path>,
) -> Result<ExitCode, String> {
    let filter = src.filter()?;
    if follow && src.file.is_some() {
        return Err("--follow needs a live mount, not --file".into());
    }
    if follow && fmt == TraceFormat::Chrome {
        return Err("--follow cannot stream the chrome format (it is one JSON document)".into());
    }
    if clear && src.file.is_some() {
        return Err("--clear needs a live mount, not --file".into());
    }
    let mut w = output(out)?;
    if !follow {
        let (events, counts, header) = src.load()?;
        let last = events.last().map_or(0, |e| e.seq);
        let shown: Vec<Event> = events.into_iter().filter(|e| filter.matches(e)).collect();
        match print_events(&mut *w, fmt, header.as_ref(), &shown) {
            // A closed pipe (`| head`) ends the output quietly, and clears nothing.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r.map_err(|e| e.to_string())?,
        }
        warn_counts(counts);
        if clear {
            let mp = src.mountpoint.as_deref().expect("checked above");
            Client::connect(mp)?.request(&Command::TraceClear { upto: Some(last) })?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mp = src
        .mountpoint
        .as_deref()
        .expect("follow needs a mount point");
    let mut client = Client::connect(mp)?;
    if out.is_none() {
        watch_stdout();
    }
    if fmt == TraceFormat::Jsonl {
        let header = live_header(&mut client, mp)?;
        format::write_header(&mut &mut *w, &header).map_err(|e| e.to_string())?;
    }
    let mut failed = None;
    let counts = client.trace(0, true, |e| {
        if !filter.matches(&e) {
            return true;
        }
        let r = print_events(&mut *w, fmt, None, std::slice::from_ref(&e));
        match r {
            Ok(()) => true,
            Err(err) => {
                // A closed pipe (`| head`) ends the stream quietly.
                if err.kind() != io::ErrorKind::BrokenPipe {
                    failed = Some(err.to_string());
                }
                false
            }
        }
    })?;
    warn_counts(counts);
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Ends the command when its standard output is closed, even while nothing is written
/// (`rawfs trace --follow MNT | head -2` on an idle mount): a pipe whose reader has gone
/// reports an error to poll.
fn watch_stdout() {
    let _ = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(|| {
            loop {
                let mut pfd = libc::pollfd {
                    fd: 1,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; no events asked, errors are always reported.
                let n = unsafe { libc::poll(&mut pfd, 1, 200) };
                if n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    crate::cli::stdout_closed();
                }
                if n < 0 || pfd.revents & libc::POLLNVAL != 0 {
                    return;
                }
                if n == 0 {
                    continue;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
}

/// Which checks `rawfs check` runs.
#[derive(Args, Debug, Clone)]
pub(crate) struct Selection {
    /// Run only these checks (comma-separated: check-then-create,lost-race,...).
    #[arg(long, value_name = "CHECKS", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Leave these checks out (comma-separated).
    #[arg(long, value_name = "CHECKS", value_delimiter = ',')]
    ignore: Vec<String>,
}

/// `rawfs check`, as a gate: exit 0 when no warning was found, 1 when one was, 2 when the
/// check could not run (no daemon, unreadable file, unknown check name). Informational
/// findings (`exclusive-create`) are printed but do not fail the gate.
pub(crate) fn check(src: &Source, sel: &Selection, json: bool) -> ExitCode {
    match run_check(src, sel, json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rawfs: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_check(src: &Source, sel: &Selection, json: bool) -> Result<ExitCode, String> {
    let checks = check::select(sel.only.as_deref(), &sel.ignore)?;
    let filter = src.filter()?;
    let (events, counts, _) = src.load()?;
    let events: Vec<Event> = events.into_iter().filter(|e| filter.matches(e)).collect();
    let findings = check::run_selected(&events, &checks);
    let mut out = io::stdout().lock();
    for f in &findings {
        let line = if json {
            serde_json::to_string(f).map_err(|e| e.to_string())?
        } else {
            f.to_string()
        };
        match writeln!(out, "{line}") {
            // A closed pipe (`| head`) still leaves the verdict in the exit status.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            r => r.map_err(|e| e.to_string())?,
        }
    }
    let _ = out.flush();
    warn_counts(counts);
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    if !json {
        eprintln!(
            "rawfs check: {} events, {} findings, {warnings} warnings",
            events.len(),
            findings.len()
        );
    }
    Ok(if warnings > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `rawfs status`.
pub(crate) fn status(mountpoint: &Path, json: bool) -> Result<ExitCode, String> {
    let mut client = Client::connect(mountpoint)?;
    let mut v = client.request(&Command::Status)?;
    if let Some(m) = v.as_object_mut() {
        m.remove("v");
        m.remove("ok");
    }
    if json {
        outln!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let get = |k: &str| v.get(k).map(|x| x.to_string()).unwrap_or_default();
    outln!(
        "mountpoint: {}",
        v.get("mountpoint").and_then(|x| x.as_str()).unwrap_or("")
    );
    outln!("daemon pid: {}", get("pid"));
    outln!(
        "version:    {}",
        v.get("version").and_then(|x| x.as_str()).unwrap_or("")
    );
    outln!(
        "uptime:     {:.1} s",
        v.get("uptime_ms").and_then(|x| x.as_u64()).unwrap_or(0) as f64 / 1000.0
    );
    outln!("requests:   {}", get("requests"));
    outln!("inodes:     {}", get("inodes"));
    outln!("bytes used: {}", get("bytes_used"));
    match v.get("trace") {
        Some(t) => outln!(
            "trace:      {} buffered, {} recorded, {} dropped, {} evicted, {} cleared",
            get("buffered"),
            t.get("recorded").map(|x| x.to_string()).unwrap_or_default(),
            t.get("dropped").map(|x| x.to_string()).unwrap_or_default(),
            t.get("evicted").map(|x| x.to_string()).unwrap_or_default(),
            t.get("cleared").map(|x| x.to_string()).unwrap_or_default(),
        ),
        None => outln!("trace:      off"),
    }
    let rules = v
        .get("rules")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    outln!("rules:      {}", rules.len());
    for r in &rules {
        let mut rule = r.clone();
        let (id, matched, hits) = match rule.as_object_mut() {
            Some(m) => (m.remove("id"), m.remove("matched"), m.remove("hits")),
            None => (None, None, None),
        };
        let show = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
        outln!(
            "  rule {}: matched {}, fired {}: {rule}",
            show(id),
            show(matched),
            show(hits)
        );
    }
    outln!("held:       {} requests", get("held"));
    Ok(ExitCode::SUCCESS)
}
