//! The library side for test suites: mount rawfs on a fresh temporary directory and have it
//! unmounted (lazily if something still holds it) and removed when the guard is dropped, so
//! that mounted tests run in parallel and a failed assertion never leaves a stale mount.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// The tree behind the mount, for looking at it without going through the kernel.
    pub fn fs(&self) -> &Arc<Fs> {
        self.mounted.as_ref().expect("mounted until dropped").fs()
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
