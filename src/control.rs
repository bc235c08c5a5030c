//! The control socket: each mount listens on a Unix socket (owner-only) in the runtime
//! directory, and speaks a small, versioned, line-delimited JSON protocol. The protocol types
//! live here and are shared by the server (in the daemon), the client (the CLI) and anyone
//! else; docs/control.md describes them.
//!
//! A request is one JSON object on one line: `{"v":1,"cmd":"status"}`, with an optional
//! `"id"` echoed in the answer. Every request gets an answer line with `"ok": true` (and the
//! command's fields) or `"ok": false` and an `"error"` saying what was wrong. `trace` then
//! streams `{"event":{...}}` lines and ends with `{"end":true,...}`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fault::{Faults, Rule, RuleStatus};
use crate::fs::Fs;
use crate::fs::durable::{CrashOptions, Keep};
use crate::fuse::power::{Cause, Power};
use crate::registry::Entry;
use crate::trace::Event;
use crate::trace::recorder::{Counts, Recorder};

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// A command sent to the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Who is there: versions and the daemon's pid.
    Hello,
    /// Uptime, requests served, trace counters, tree size.
    Status,
    /// The buffered events after sequence number `since`; with `follow`, keep streaming new
    /// ones until the client closes the connection or the mount ends.
    Trace {
        /// Only events with a greater sequence number.
        #[serde(default)]
        since: u64,
        /// Keep streaming.
        #[serde(default)]
        follow: bool,
    },
    /// Add fault rules (all or none); answers their ids.
    FaultAdd {
        /// The rules (docs/faults.md).
        rules: Vec<Rule>,
    },
    /// The rules with their match and hit counts.
    FaultList,
    /// Remove rules by id (releasing what they hold).
    FaultRemove {
        /// Rule ids.
        ids: Vec<u64>,
    },
    /// Remove every rule and release every held request.
    FaultClear,
    /// The requests held now; with `wait_for`, first wait (up to `timeout_ms`, default 10 s)
    /// until at least that many are held.
    Holds {
        /// Wait until this many requests are held.
        #[serde(default)]
        wait_for: Option<usize>,
        /// How long to wait, in milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Let held requests go on: one by hold id, all of one rule, or all.
    Release {
        /// A hold id.
        #[serde(default)]
        hold: Option<u64>,
        /// Every request held by this rule.
        #[serde(default)]
        rule: Option<u64>,
        /// Every held request.
        #[serde(default)]
        all: bool,
    },
    /// Cut the power: the tree becomes its durable state (docs/crash.md). Answers what was
    /// lost.
    Crash {
        /// Which unsynced changes survive: `none` (default) or `random`.
        #[serde(default)]
        keep: Keep,
        /// Seed of the draws.
        #[serde(default)]
        seed: u64,
        /// A lost write may survive as a prefix ending on a multiple of this many bytes.
        #[serde(default)]
        torn: Option<u64>,
        /// SIGKILL every process with a file open on the mount first.
        #[serde(default)]
        kill: bool,
        /// Write the tree the crash would leave into this directory (missing or empty)
        /// instead of crashing the mount.
        #[serde(default)]
        to: Option<PathBuf>,
    },
    /// What a crash would lose now, without crashing.
    Unsynced,
    /// Empty the in-memory trace buffer, or only the events up to sequence number `upto`.
    TraceClear {
        /// Keep events after this sequence number.
        #[serde(default)]
        upto: Option<u64>,
    },
    /// Run `rawfs check`'s checks over the buffered events; answers `findings`.
    Check {
        /// Only these checks (names such as `"lost-race"`); all when absent.
        #[serde(default)]
        only: Option<Vec<String>>,
        /// Not these checks.
        #[serde(default)]
        ignore: Vec<String>,
    },
}

/// Answer to `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Mount point.
    pub mountpoint: String,
    /// Daemon pid.
    pub pid: u32,
    /// rawfs version.
    pub version: String,
    /// Milliseconds since the mount started.
    pub uptime_ms: u64,
    /// When recording started, in nanoseconds since the epoch: the trace's `ts_ns` count from
    /// here (the trace header's `started_unix_ns`). Absent when recording is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ns: Option<u128>,
    /// Requests served (numbered events).
    pub requests: u64,
    /// Trace counters; absent when recording is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Counts>,
    /// Events in the in-memory buffer.
    pub buffered: u64,
    /// Live inodes.
    pub inodes: u64,
    /// Bytes of file data allocated.
    pub bytes_used: u64,
    /// Fault rules with their counters.
    pub rules: Vec<RuleStatus>,
    /// Requests held now.
    pub held: u64,
}

/// What the server needs to answer.
#[derive(Debug, Clone)]
pub struct Served {
    /// The tree.
    pub fs: Arc<Fs>,
    /// The recorder, if recording is on.
    pub recorder: Option<Arc<Recorder>>,
    /// The fault rules.
    pub faults: Arc<Faults>,
    /// The power switch (crash).
    pub power: Arc<Power>,
    /// Requests served while recording is off (the recorder counts them otherwise).
    pub unrecorded: Arc<AtomicU64>,
    /// Mount point.
    pub mountpoint: PathBuf,
    /// When the mount started.
    pub started: Instant,
}

/// The listening socket of one mount; removed when dropped.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// The socket file's inode, so that a file another daemon put at the path since is left.
    inode: Option<u64>,
    /// The listening socket, owned by the accept thread: shut down to wake its `accept`.
    listener_fd: RawFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Connections served at once; one more is answered with an error and closed. Each has a
/// thread, and a flood of idle connections must not grow the daemon without bound.
pub const MAX_CLIENTS: usize = 64;

/// Stack of a connection's thread: requests are handled with little stack.
const CLIENT_STACK: usize = 256 << 10;

/// Once the last client has gone, hands the memory its threads freed back to the system:
/// glibc keeps freed memory in each thread's arena, and a burst of clients would otherwise
/// leave the daemon several times larger for the rest of its life.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where the control socket of the mount on `mountpoint` lives.
pub fn socket_path(mountpoint: &Path) -> io::Result<PathBuf> {
    Ok(Entry::for_mountpoint(mountpoint)?.socket_file())
}

impl Server {
    /// Listens on the mount's socket path (replacing a stale socket file).
    pub fn start(served: Served) -> io::Result<Server> {
        let path = socket_path(&served.mountpoint)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let inode = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
        let listener_fd = listener.as_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let clients = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("rawfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match conn {
                        Ok(mut stream) => {
                            if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
                                let msg = format!(
                                    "too many connections: this daemon serves at most \
                                     {MAX_CLIENTS} at once; close some and retry"
                                );
                                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                                let _ =
                                    send(&mut stream, &answer(&None, false, json!({"error": msg})));
                                continue;
                            }
                            clients.fetch_add(1, Ordering::AcqRel);
                            let served = served.clone();
                            let stop = thread_stop.clone();
                            let mine = clients.clone();
                            let spawned = std::thread::Builder::new()
                                .name("rawfs-client".into())
                                .stack_size(CLIENT_STACK)
                                .spawn(move || {
                                    handle(stream, &served, &stop);
                                    drop(served);
                                    if mine.fetch_sub(1, Ordering::AcqRel) == 1 {
                                        give_memory_back();
                                    }
                                });
                            if spawned.is_err() {
                                clients.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                        Err(e) => warn!("control socket accept failed: {e}"),
                    }
                }
            })?;
        Ok(Server {
            path,
            inode,
            listener_fd,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag: shutting a listening socket down
        // makes its accept fail at once. Not by connecting to the path, which may by now
        // lead elsewhere (or nowhere), and the loop would wait forever.
        // SAFETY: the accept thread owns the descriptor and has not closed it: it closes it
        // only when the loop ends, which is joined below.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ours = std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok();
        if ours.is_some() && ours == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads one request line of at most [`MAX_LINE`] bytes. `Ok(None)` at end of input.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<Result<String, String>>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    // A last line without a newline is accepted; an over-long one is skipped to its end.
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        r.skip_until(b'\n')?;
        return Ok(Some(Err(format!(
            "request line longer than {MAX_LINE} bytes"
        ))));
    }
    Ok(Some(
        String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_string()),
    ))
}

/// Parses one request line into its id and command, or an error naming what was wrong.
pub fn parse_request(line: &str) -> (Option<Value>, Result<Command, String>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(format!("request is not JSON: {e}"))),
    };
    let Value::Object(mut map) = value else {
        return (None, Err("request must be a JSON object".into()));
    };
    let id = map.remove("id");
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(other) => {
            return (
                id,
                Err(format!(
                    "unsupported protocol version {other} (this daemon speaks 1)"
                )),
            );
        }
        None => {
            return (
                id,
                Err("missing protocol version \"v\" (use \"v\": 1)".into()),
            );
        }
    }
    if !map.contains_key("cmd") {
        return (id, Err("missing \"cmd\"".into()));
    }
    let cmd = serde_json::from_value::<Command>(Value::Object(map)).map_err(|e| e.to_string());
    (id, cmd)
}

fn answer(id: &Option<Value>, ok: bool, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("v".into(), json!(PROTOCOL_VERSION));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("ok".into(), json!(ok));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

fn send(w: &mut impl Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")?;
    w.flush()
}

fn handle(stream: UnixStream, served: &Served, stop: &AtomicBool) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = io::BufWriter::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => return,
        };
        let result = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => {
                let (id, cmd) = parse_request(&line);
                match cmd {
                    Ok(cmd) => serve_command(&mut writer, &id, cmd, served, stop),
                    Err(msg) => send(&mut writer, &answer(&id, false, json!({"error": msg}))),
                }
            }
            Err(msg) => send(&mut writer, &answer(&None, false, json!({"error": msg}))),
        };
        if let Err(e) = result {
            debug!("control client went away: {e}");
            return;
        }
    }
}

/// How long a reader waits for requests already served to reach the trace buffer.
const SYNC: Duration = Duration::from_secs(1);

fn status(served: &Served) -> Status {
    let store = served.recorder.as_ref().map(|r| r.store());
    if let Some(s) = store {
        s.sync(SYNC);
    }
    Status {
        mountpoint: served.mountpoint.display().to_string(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: served.started.elapsed().as_millis() as u64,
        started_unix_ns: store.map(|s| s.started_unix_ns()),
        requests: served.recorder.as_ref().map_or_else(
            || served.unrecorded.load(Ordering::Relaxed),
            |r| r.requests(),
        ),
        trace: store.map(|s| s.counts()),
        buffered: store.map_or(0, |s| s.len() as u64),
        inodes: served.fs.inode_count() as u64,
        bytes_used: served.fs.bytes_used(),
        rules: served.faults.list(),
        held: served.faults.holds.list().len() as u64,
    }
}

fn serve_command(
    w: &mut impl Write,
    id: &Option<Value>,
    cmd: Command,
    served: &Served,
    stop: &AtomicBool,
) -> io::Result<()> {
    match cmd {
        Command::Hello => send(
            w,
            &answer(
                id,
                true,
                json!({"protocol": PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION"),
                       "pid": std::process::id()}),
            ),
        ),
        Command::Status => {
            let fields = serde_json::to_value(status(served)).unwrap_or_default();
            send(w, &answer(id, true, fields))
        }
        Command::FaultAdd { rules } => match served.faults.add(rules) {
            Ok(ids) => send(w, &answer(id, true, json!({ "ids": ids }))),
            Err(e) => send(w, &answer(id, false, json!({ "error": e }))),
        },
        Command::FaultList => send(
            w,
            &answer(id, true, json!({ "rules": served.faults.list() })),
        ),
        Command::FaultRemove { ids } => {
            let missing = served.faults.remove(&ids);
            if missing.is_empty() {
                send(w, &answer(id, true, json!({ "removed": ids })))
            } else {
                let msg = format!("no rule with id {missing:?} (the others were removed)");
                send(w, &answer(id, false, json!({ "error": msg })))
            }
        }
        Command::FaultClear => {
            let n = served.faults.clear();
            send(w, &answer(id, true, json!({ "cleared": n })))
        }
        Command::Holds {
            wait_for,
            timeout_ms,
        } => {
            let held = match wait_for {
                Some(n) => served
                    .faults
                    .holds
                    .wait_for(n, Duration::from_millis(timeout_ms.unwrap_or(10_000))),
                None => served.faults.holds.list(),
            };
            send(w, &answer(id, true, json!({ "holds": held })))
        }
        Command::Release { hold, rule, all } => {
            let holds = &served.faults.holds;
            let released = match (hold, rule, all) {
                (Some(h), None, false) => {
                    if holds.release(h) {
                        vec![h]
                    } else {
                        let msg = format!("no request is held with hold id {h}");
                        return send(w, &answer(id, false, json!({ "error": msg })));
                    }
                }
                (None, Some(r), false) => holds.release_rule(r),
                (None, None, true) => holds.release_all(),
                _ => {
                    let msg = "release takes exactly one of hold, rule or all";
                    return send(w, &answer(id, false, json!({ "error": msg })));
                }
            };
            send(w, &answer(id, true, json!({ "released": released })))
        }
        Command::Crash {
            keep,
            seed,
            torn,
            kill,
            to,
        } => {
            let opts = CrashOptions { keep, seed, torn };
            let result = match (torn, to) {
                (Some(0), _) => Err("torn must be at least 1 byte".to_string()),
                (_, Some(_)) if kill => {
                    Err("kill cannot go with to: an image kills nothing".into())
                }
                (_, Some(dir)) if !dir.is_absolute() => Err(format!(
                    "to must be an absolute path, not {}",
                    dir.display()
                )),
                (_, Some(dir)) => served
                    .fs
                    .crash_image(opts, &dir)
                    .map_err(|e| format!("cannot write the crash image to {}: {e}", dir.display())),
                (_, None) => Ok(served.power.crash(opts, kill, Cause::default(), true)),
            };
            match result {
                Ok(lost) => send(
                    w,
                    &answer(
                        id,
                        true,
                        json!({ "model": served.fs.model(), "lost": lost }),
                    ),
                ),
                Err(e) => send(w, &answer(id, false, json!({ "error": e }))),
            }
        }
        Command::Unsynced => {
            let unsynced = served.fs.unsynced();
            send(
                w,
                &answer(
                    id,
                    true,
                    json!({ "model": served.fs.model(), "unsynced": unsynced }),
                ),
            )
        }
        Command::TraceClear { upto } => match &served.recorder {
            Some(r) => {
                r.store().sync(SYNC);
                let n = r.store().clear(upto.unwrap_or(u64::MAX));
                send(w, &answer(id, true, json!({"cleared": n})))
            }
            None => send(
                w,
                &answer(
                    id,
                    false,
                    json!({"error": "recording is off (trace capacity 0)"}),
                ),
            ),
        },
        Command::Check { only, ignore } => match check_findings(served, only.as_deref(), &ignore) {
            Ok(fields) => send(w, &answer(id, true, fields)),
            Err(e) => send(w, &answer(id, false, json!({ "error": e }))),
        },
        Command::Trace { since, follow } => {
            let Some(rec) = &served.recorder else {
                return send(
                    w,
                    &answer(
                        id,
                        false,
                        json!({"error": "recording is off (trace capacity 0)"}),
                    ),
                );
            };
            let store = rec.store();
            store.sync(SYNC);
            let (events, counts, mut next) = store.since_with_index(since);
            send(w, &answer(id, true, json!({"counts": counts})))?;
            for e in &events {
                send_event(w, e)?;
            }
            while follow && !stop.load(Ordering::Relaxed) {
                let (events, after, closed) =
                    store.wait_stored_after(next, Duration::from_millis(200));
                next = after;
                for e in events.iter().filter(|e| e.seq > since) {
                    send_event(w, e)?;
                }
                if closed {
                    break;
                }
                // Notice a client that went away even when nothing happens.
                w.flush()?;
            }
            send(w, &json!({"end": true, "counts": store.counts()}))
        }
    }
}

/// The `check` command: the findings of the chosen checks over every buffered event.
fn check_findings(
    served: &Served,
    only: Option<&[String]>,
    ignore: &[String],
) -> Result<Value, String> {
    let checks = crate::check::select(only, ignore)?;
    let Some(rec) = &served.recorder else {
        return Err("recording is off (trace capacity 0)".into());
    };
    let (events, _) = rec.store().since(0);
    let findings = crate::check::run_selected(&events, &checks);
    Ok(json!({ "findings": findings }))
}

fn send_event(w: &mut impl Write, e: &Event) -> io::Result<()> {
    serde_json::to_writer(
        &mut *w,
        &json!({ "event": crate::trace::format::decorated(e) }),
    )?;
    w.write_all(b"\n")
}

/// A connection to a mount's daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    mountpoint: PathBuf,
    timeout: Option<Duration>,
}

/// How long a client waits for the daemon's answer before saying it does not answer (a
/// stopped or stuck daemon would otherwise keep every command waiting forever), unless
/// `RAWFS_TIMEOUT` gives another number of seconds.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// [`ANSWER_TIMEOUT`], or `RAWFS_TIMEOUT` seconds.
pub fn answer_timeout() -> Result<Duration, String> {
    match std::env::var("RAWFS_TIMEOUT") {
        Err(_) => Ok(ANSWER_TIMEOUT),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("RAWFS_TIMEOUT={v:?} is not a number of seconds above 0")),
    }
}

impl Client {
    /// Connects to the daemon serving `mountpoint`.
    pub fn connect(mountpoint: &Path) -> Result<Client, String> {
        let path = socket_path(mountpoint).map_err(|e| format!("runtime directory: {e}"))?;
        let stream = UnixStream::connect(&path).map_err(|e| {
            format!(
                "no rawfs daemon answers for {} ({}: {e}); is it mounted with rawfs, by this \
                 user, with the same RAWFS_RUNTIME_DIR?",
                mountpoint.display(),
                path.display()
            )
        })?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            mountpoint: mountpoint.to_path_buf(),
            timeout: None,
        };
        client.set_timeout(Some(answer_timeout()?))?;
        Ok(client)
    }

    /// How long to wait for each answer or write (default [`ANSWER_TIMEOUT`]); `None` waits
    /// for ever, as a followed trace does between events.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), String> {
        self.timeout = timeout;
        self.writer
            .set_read_timeout(timeout)
            .and_then(|()| self.writer.set_write_timeout(timeout))
            .map_err(|e| e.to_string())
    }

    /// The message for a failed read or write: a timeout says the daemon does not answer.
    fn io_error(&self, doing: &str, e: io::Error) -> String {
        if !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return format!("{doing}: {e}");
        }
        let pid = Entry::for_mountpoint(&self.mountpoint)
            .ok()
            .and_then(|e| e.live_pid())
            .map_or(String::new(), |p| format!(" (pid {p})"));
        format!(
            "the rawfs daemon for {}{pid} does not answer: nothing within {} s; is it stopped \
             (SIGSTOP, a debugger) or stuck? (RAWFS_TIMEOUT sets the wait)",
            self.mountpoint.display(),
            self.timeout.unwrap_or_default().as_secs_f64()
        )
    }

    /// Sends a command and returns the answer line (an error if `ok` is false).
    pub fn request(&mut self, cmd: &Command) -> Result<Value, String> {
        let mut v = serde_json::to_value(cmd).map_err(|e| e.to_string())?;
        if let Value::Object(m) = &mut v {
            m.insert("v".into(), json!(PROTOCOL_VERSION));
        }
        send(&mut self.writer, &v).map_err(|e| self.io_error("sending to the daemon", e))?;
        let answer = self
            .next_line()?
            .ok_or("the daemon closed the connection")?;
        if answer.get("ok") == Some(&Value::Bool(true)) {
            Ok(answer)
        } else {
            Err(answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string())
        }
    }

    /// The next line from the daemon, parsed; `None` when it closed the connection.
    pub fn next_line(&mut self) -> Result<Option<Value>, String> {
        let mut line = String::new();
        let n = match self.reader.read_line(&mut line) {
            Ok(n) => n,
            Err(e) => return Err(self.io_error("reading from the daemon", e)),
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| format!("bad answer from the daemon: {e}"))
    }

    /// Streams trace events after `since` to `each` (return false to stop); with `follow`,
    /// until the mount ends. Returns the final counters.
    pub fn trace(
        &mut self,
        since: u64,
        follow: bool,
        mut each: impl FnMut(Event) -> bool,
    ) -> Result<Option<Counts>, String> {
        self.request(&Command::Trace { since, follow })?;
        if follow {
            // Events come when requests do: an idle mount may send nothing for hours.
            self.set_timeout(None)?;
        }
        while let Some(line) = self.next_line()? {
            if let Some(e) = line.get("event") {
                let e: Event = serde_json::from_value(e.clone()).map_err(|e| e.to_string())?;
                if !each(e) {
                    return Ok(None);
                }
            } else if line.get("end").is_some() {
                return Ok(line
                    .get("counts")
                    .and_then(|c| serde_json::from_value(c.clone()).ok()));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_say_what_is_wrong() {
        let (id, cmd) = parse_request(r#"{"v":1,"id":7,"cmd":"status"}"#);
        assert_eq!(id, Some(json!(7)));
        assert_eq!(cmd, Ok(Command::Status));
        let (_, cmd) = parse_request(r#"{"v":1,"cmd":"trace","since":5}"#);
        assert_eq!(
            cmd,
            Ok(Command::Trace {
                since: 5,
                follow: false
            })
        );
        assert!(
            parse_request("not json")
                .1
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(parse_request("[1]").1.unwrap_err().contains("object"));
        assert!(
            parse_request(r#"{"cmd":"status"}"#)
                .1
                .unwrap_err()
                .contains("\"v\"")
        );
        assert!(
            parse_request(r#"{"v":2,"cmd":"status"}"#)
                .1
                .unwrap_err()
                .contains("version 2")
        );
        assert!(parse_request(r#"{"v":1}"#).1.unwrap_err().contains("cmd"));
        assert!(
            parse_request(r#"{"v":1,"cmd":"explode"}"#)
                .1
                .unwrap_err()
                .contains("explode")
        );
        let e = parse_request(r#"{"v":1,"cmd":"trace","sincee":5}"#)
            .1
            .unwrap_err();
        assert!(e.contains("sincee"), "{e}");
    }

    #[test]
    fn over_long_lines_are_refused_and_the_next_line_still_read() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\n{\"v\":1,\"cmd\":\"hello\"}\n");
        let mut r = BufReader::new(&input[..]);
        assert!(
            read_line(&mut r)
                .unwrap()
                .unwrap()
                .unwrap_err()
                .contains("longer")
        );
        assert_eq!(
            read_line(&mut r).unwrap().unwrap().unwrap(),
            "{\"v\":1,\"cmd\":\"hello\"}\n"
        );
        assert!(read_line(&mut r).unwrap().is_none());
    }
}
