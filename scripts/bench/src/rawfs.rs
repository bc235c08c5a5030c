//! What the run reads from rawfs: `rawfs status --json`, the daemon's pid file and CPU time,
//! and the fault rules of rawfs-100rules.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::mounts::Rawfs;
use crate::sys::{self, Result, bail, fail};

/// The fields of `rawfs status --json` that the run uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Requests served.
    pub requests: u64,
    /// Events in the in-memory buffer.
    pub buffered: u64,
    /// Trace counters; absent when recording is off.
    #[serde(default)]
    pub trace: Option<TraceCounts>,
    #[serde(default)]
    pub rules: Vec<RuleCounts>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct TraceCounts {
    pub recorded: u64,
    pub dropped: u64,
    pub evicted: u64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct RuleCounts {
    pub matched: u64,
    pub hits: u64,
}

impl Status {
    pub fn recorded(&self) -> Option<u64> {
        self.trace.map(|t| t.recorded)
    }
}

/// `rawfs status MNT --json`.
pub fn status(rawfs: &Rawfs, mnt: &Path) -> Result<Status> {
    let mut cmd = rawfs.command([
        std::ffi::OsStr::new("status"),
        mnt.as_os_str(),
        std::ffi::OsStr::new("--json"),
    ]);
    let out = sys::output(&mut cmd)?;
    serde_json::from_str(&out).map_err(|e| {
        fail(format!(
            "{}: unexpected output ({e}): {out}",
            sys::describe(&cmd)
        ))
    })
}

/// The status once the trace counters stop moving (the collector has stored every event):
/// read every 0.2 s, up to 50 times, until two readings agree.
pub fn settled_status(rawfs: &Rawfs, mnt: &Path) -> Result<Status> {
    let key = |s: &Status| (s.buffered, s.recorded());
    let mut a = status(rawfs, mnt)?;
    for _ in 0..50 {
        sys::sleep(Duration::from_millis(200))?;
        let b = status(rawfs, mnt)?;
        let same = key(&a) == key(&b);
        a = b;
        if same {
            break;
        }
    }
    Ok(a)
}

/// The daemon's pid, from its pid file in the runtime directory: the absolute mount point
/// with '%' written '%25' and '/' written '%2F', plus ".pid".
pub fn pid(rawfs: &Rawfs, mnt: &Path) -> Result<u32> {
    let name = mnt
        .to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F");
    let file = rawfs.runtime_dir.join(format!("{name}.pid"));
    let text = fs::read_to_string(&file)
        .map_err(|e| fail(format!("no pid file {}: {e}", file.display())))?;
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        // SAFETY: kill with signal 0 only checks that the process exists.
        Ok(pid) if unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 => Ok(pid),
        _ => bail(format!(
            "pid file {}: no live process '{digits}'",
            file.display()
        )),
    }
}

/// One sample of a daemon's CPU time (clock ticks) and requests served.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    pub utime: u64,
    pub stime: u64,
    pub requests: u64,
}

impl CpuSample {
    pub fn take(rawfs: &Rawfs, mnt: &Path) -> Result<CpuSample> {
        let (utime, stime) = sys::cpu_ticks(pid(rawfs, mnt)?)?;
        let requests = status(rawfs, mnt)?.requests;
        Ok(CpuSample {
            utime,
            stime,
            requests,
        })
    }

    /// Adds the growth from `a` to `b`.
    pub fn add_delta(&mut self, a: CpuSample, b: CpuSample) {
        self.utime += b.utime.saturating_sub(a.utime);
        self.stime += b.stime.saturating_sub(a.stime);
        self.requests += b.requests.saturating_sub(a.requests);
    }
}

/// The ops the 100 rules select.
pub const RULE_OPS: [&str; 6] = ["read", "write", "lookup", "getattr", "create", "unlink"];

/// Writes 100 rules that select common ops, so each such request is compared with every
/// rule's path glob, but whose glob names a directory that does not exist: they never fire.
pub fn write_rules(file: &Path) -> Result<()> {
    let rules: Vec<serde_json::Value> = (1..=100)
        .map(|i| {
            serde_json::json!({
                "match": {"ops": RULE_OPS, "path": format!("/bench-no-such-dir-{i:03}/*")},
                "action": {"errno": "EIO"},
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&rules).expect("rules serialize");
    fs::write(file, text + "\n").map_err(|e| fail(format!("write {}: {e}", file.display())))
}
