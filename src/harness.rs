//! The library side for test suites: mount rawfs on a fresh temporary directory and have it
//! unmounted (lazily if something still holds it) and removed when the guard is dropped, so
//! that mounted tests run in parallel and a failed assertion never leaves a stale mount.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::check::Finding;
use crate::fault::hold::Held;
use crate::fault::{Faults, Rule, RuleStatus};
use crate::query::Query;

use crate::fs::Fs;
use crate::fs::durable::{CrashOptions, Losses};
use crate::fuse::power::Cause;
use crate::mount::{MountConfig, MountError, Mounted};
use crate::trace::recorder::Store;

/// A rawfs mount on its own temporary directory, for as long as this value lives.
#[derive(Debug)]
pub struct TempMount {
    // Field order matters: unmount before the directory is removed.
    mounted: Option<Mounted>,
    dir: tempfile::TempDir,
}

impl TempMount {
    /// Mounts with the default configuration.
    pub fn new() -> Result<TempMount, MountError> {
        TempMount::with_config(&MountConfig::default())
    }

    /// Mounts with `config` on a new directory under the system temp dir.
    pub fn with_config(config: &MountConfig) -> Result<TempMount, MountError> {
        let dir = tempfile::Builder::new()
            .prefix("rawfs-mnt-")
            .tempdir()
            .map_err(|e| MountError::new(format!("cannot create a temporary mount point: {e}")))?;
        let mounted = Mounted::mount(dir.path(), config)?;
        Ok(TempMount {
            mounted: Some(mounted),
            dir,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The tree behind the mount, for looking at it without going through the kernel. Not
    /// for changing it: the kernel keeps the names it has looked up, and would not see a
    /// name made or removed here.
    pub fn fs(&self) -> &Arc<Fs> {
        self.mounted.as_ref().expect("mounted until dropped").fs()
    }

    /// Starts `cmd` (with no working directory set) in the mount's root, without the change
    /// of directory in the trace ([`Mounted::spawn_inside`]).
    pub fn spawn_inside(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<std::process::Child> {
        self.mounted
            .as_ref()
            .expect("mounted until dropped")
            .spawn_inside(cmd)
    }

    /// The trace buffer, unless recording is off (trace capacity 0).
    pub fn trace(&self) -> Option<&Arc<Store>> {
        self.mounted.as_ref().and_then(Mounted::trace)
    }

    /// False once the session has ended (for instance after an external `umount`).
    pub fn is_alive(&self) -> bool {
        self.mounted.as_ref().is_some_and(Mounted::is_alive)
    }

    /// The fault rules in force, to change while the mount runs.
    pub fn faults(&self) -> &Arc<crate::fault::Faults> {
        self.mounted
            .as_ref()
            .expect("mounted until dropped")
            .faults()
    }

    /// Cuts the power (docs/crash.md): the tree becomes its durable state under the mount's
    /// persistence model, files open on the mount fail with EIO from now on, and the mount
    /// goes on serving. Returns what was lost.
    pub fn crash(&self, opts: CrashOptions) -> Losses {
        self.mounted
            .as_ref()
            .expect("mounted until dropped")
            .power()
            .crash(opts, false, Cause::default(), true)
    }

    /// What a crash would lose now: empty once everything was made durable.
    pub fn unsynced(&self) -> Losses {
        self.fs().unsynced()
    }

    /// Unmounts now, reporting any failure (dropping the guard does the same silently).
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.mounted.take() {
            Some(m) => m.unmount(),
            None => Ok(()),
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        drop(self.mounted.take());
    }
}

/// Assertions on the trace, fault rules and checks: the typed test API (docs/library.md).
impl TempMount {
    /// A query over the requests answered so far (every one answered before the query ends
    /// is in it): `m.events().op(Op::Create).path("/app.pid").one()?`.
    pub fn events(&self) -> Query<'_> {
        Query::new(self.trace().map(|s| &**s))
    }

    /// The strace-like text of every request answered so far, one line each.
    pub fn trace_text(&self) -> String {
        let Some(store) = self.trace() else {
            return String::new();
        };
        let (events, _) = store.since(0);
        let mut text = String::new();
        for e in &events {
            text.push_str(&crate::trace::format::text_line(e));
            text.push('\n');
        }
        text
    }

    /// Adds a fault rule, given as JSON (docs/faults.md), for as long as the returned guard
    /// lives: dropping it removes the rule and releases what it holds.
    pub fn fault(&self, rule: &str) -> Result<FaultGuard<'_>, String> {
        let mut rules = crate::fault::parse_rules(rule)?;
        if rules.len() != 1 {
            return Err(format!(
                "fault takes one rule, not {} (add each with its own guard)",
                rules.len()
            ));
        }
        self.fault_rule(rules.remove(0))
    }

    /// Adds `rule` for as long as the returned guard lives (see [`TempMount::fault`]).
    pub fn fault_rule(&self, rule: Rule) -> Result<FaultGuard<'_>, String> {
        let faults = self.faults();
        let ids = faults.add(vec![rule])?;
        Ok(FaultGuard { faults, id: ids[0] })
    }

    /// The findings of every `rawfs check` check over the requests answered so far.
    pub fn findings(&self) -> Vec<Finding> {
        match self.trace() {
            Some(store) => crate::check::run_checks(&store.since(0).0),
            None => Vec::new(),
        }
    }
}

/// A fault rule of a [`TempMount`], removed (releasing the requests it holds) when dropped.
#[derive(Debug)]
pub struct FaultGuard<'a> {
    faults: &'a Arc<Faults>,
    id: u64,
}

impl FaultGuard<'_> {
    /// The rule's id (as `rawfs fault list` and the trace's `rule` field show it).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn status(&self) -> Option<RuleStatus> {
        self.faults
            .list()
            .into_iter()
            .find(|r| r.rule.id == Some(self.id))
    }

    /// Times the rule fired so far.
    pub fn hits(&self) -> u64 {
        self.status().map_or(0, |s| s.hits)
    }

    /// Requests the rule matched so far (fired or not).
    pub fn matched(&self) -> u64 {
        self.status().map_or(0, |s| s.matched)
    }

    /// Waits until `n` requests are held by this rule, or `timeout` passes; returns the
    /// requests it holds.
    pub fn wait_held(&self, n: usize, timeout: std::time::Duration) -> Vec<Held> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mine: Vec<Held> = self
                .faults
                .holds
                .list()
                .into_iter()
                .filter(|h| h.rule == self.id)
                .collect();
            let now = std::time::Instant::now();
            if mine.len() >= n || now >= deadline {
                return mine;
            }
            // Wakes when any request is held; a short step bounds the wait for this rule's.
            self.faults.holds.wait_for(
                mine.len() + 1,
                (deadline - now).min(Duration::from_millis(50)),
            );
        }
    }

    /// Lets every request this rule holds go on (the rule stays).
    pub fn release(&self) -> Vec<u64> {
        self.faults.holds.release_rule(self.id)
    }

    /// Removes the rule now (dropping the guard does the same).
    pub fn remove(self) {}
}

impl Drop for FaultGuard<'_> {
    fn drop(&mut self) {
        self.faults.remove(&[self.id]);
    }
}
