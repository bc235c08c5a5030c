//! Snapshots of the tree with its durable state, and the crash states built from them, for
//! exploring every state a crash could leave after each step of a workload.
//!
//! A snapshot shares file pages with the live tree (copy-on-write), so taking one after every
//! request of a small workload costs the nodes' metadata, not their bytes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::durable::{self, Change, Choice, Durable, Losses};
use super::{Body, Fs, Nodes, ROOT, path_in};

/// The tree and its durable state at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    nodes: Nodes,
    durable: Durable,
}

/// The tree one crash would leave.
#[derive(Debug)]
pub struct CrashState {
    nodes: Nodes,
    /// What the crash lost.
    pub losses: Losses,
}

impl Fs {
    /// The tree and its durable state as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            nodes: s.nodes.clone(),
            durable: s.durable.clone(),
        }
    }

    /// A number that changes whenever the tree or its durable state changes: a snapshot is
    /// worth taking only when it moved.
    pub fn generation(&self) -> u64 {
        self.lock().durable.generation()
    }
}

impl Snapshot {
    /// The unsynced changes a crash now could lose, in the order they were made.
    pub fn changes(&self) -> Vec<Change> {
        self.durable.changes()
    }

    /// The order of the last change made before the snapshot: a change with a greater order
    /// was made after it.
    pub fn last_order(&self) -> u64 {
        self.durable.last_order()
    }

    /// The path of a node in this snapshot's tree.
    pub fn path(&self, ino: u64) -> Option<String> {
        path_in(&self.nodes, ino, None).map(|p| p.as_str().to_string())
    }

    /// The tree a crash now would leave, keeping the unsynced changes `choice` keeps.
    pub fn crash_state(&self, choice: Choice) -> CrashState {
        let path = |i: u64| self.path(i);
        let o = durable::plan(&self.nodes, &self.durable, choice, &path);
        CrashState {
            nodes: o.nodes,
            losses: o.losses,
        }
    }
}

impl CrashState {
    /// A hash of everything a program can read in the tree: names, kinds, inode identity
    /// (hard links), modes, owners, contents, symlink targets and xattrs; not times. Equal
    /// trees hash equal.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            let Some(n) = self.nodes.get(&ino) else {
                continue;
            };
            (ino, n.kind as u8, n.perm, n.uid, n.gid, n.rdev).hash(&mut h);
            for (k, v) in &n.xattrs {
                (k.as_bytes(), v).hash(&mut h);
            }
            match &n.body {
                Body::File(d) => d.hash_contents(&mut h),
                Body::Symlink(t) => t.hash(&mut h),
                Body::Special => {}
                Body::Dir(d) => {
                    for (name, child) in d.iter() {
                        (name.as_bytes(), child).hash(&mut h);
                        stack.push(child);
                    }
                    0xffu8.hash(&mut h);
                }
            }
        }
        h.finish()
    }

    /// Writes the tree into `dir` (missing or empty), as a crash image.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        super::image::write(&self.nodes, dir)
    }
}
