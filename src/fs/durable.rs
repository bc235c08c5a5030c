//! The durable state: what a disk would still hold if the power went now, kept beside the live
//! tree under a persistence [`Model`], and the crash that makes the live tree become it.
//!
//! Nothing is copied while a node stays in sync. The first change to a node after it was last
//! made durable saves the part it changes as it was (its attributes, its contents as shared
//! copy-on-write pages, the old binding of each directory name it changes) and logs the change
//! itself, so the cost is the memory of what changed since the last sync, never a copy of the
//! tree. A sync drops what it made durable. A crash builds the durable tree from the live one
//! with the saved parts put back and, for a partial crash, some logged changes replayed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::data::{Extent, FileData, Space};
use super::dir::Dir;
use super::{Body, Kind, Node, Nodes, ROOT};

/// Which changes a sync makes durable, and in which order unsynced changes may reach the disk.
/// docs/crash.md lists each rule with the test that shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// Only what POSIX promises: fsync makes a file's data, size and attributes durable,
    /// fdatasync its data and size, a write through an O_SYNC or O_DSYNC handle itself; a name
    /// is durable only once its directory is fsynced. Unsynced changes reach the disk in any
    /// order.
    #[default]
    Strict,
    /// ext4 with data=ordered: metadata (names and attributes) reaches the disk in the order it
    /// changed, and any fsync commits all of it; a rename that replaces a file first makes the
    /// renamed file's data durable (auto_da_alloc); file data reaches the disk in any order.
    Ext4Ordered,
}

impl Model {
    /// Every model, in the order the documentation gives them.
    pub const ALL: [Model; 2] = [Model::Strict, Model::Ext4Ordered];

    /// The model's name on the command line and in the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Model::Strict => "strict",
            Model::Ext4Ordered => "ext4-ordered",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;

    fn from_str(s: &str) -> Result<Model, String> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown persistence model {s:?}: use strict or ext4-ordered"))
    }
}

/// Which unsynced changes survive a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Keep {
    /// Every unsynced change is lost.
    #[default]
    None,
    /// Each unsynced change is kept or lost by a seeded draw, within what the model allows.
    Random,
}

impl TryFrom<String> for Keep {
    type Error = String;

    fn try_from(s: String) -> Result<Keep, String> {
        match s.as_str() {
            "none" => Ok(Keep::None),
            "random" => Ok(Keep::Random),
            _ => Err(format!("keep must be \"none\" or \"random\", not {s:?}")),
        }
    }
}

/// How to cut the power.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashOptions {
    /// Which unsynced changes survive.
    #[serde(default)]
    pub keep: Keep,
    /// Seed of the draws (`Keep::Random`, torn writes): the same seed gives the same result.
    #[serde(default)]
    pub seed: u64,
    /// A lost write may survive in part: a prefix ending on a multiple of this many bytes.
    #[serde(default)]
    pub torn: Option<u64>,
}

/// A node's attributes as the durable state holds them (link counts follow from the names).
#[derive(Clone, Debug)]
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

impl Meta {
    fn of(n: &Node) -> Meta {
        Meta {
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            xattrs: n.xattrs.clone(),
        }
    }

    fn same_but_times(&self, n: &Node) -> bool {
        self.perm == n.perm && self.uid == n.uid && self.gid == n.gid && self.xattrs == n.xattrs
    }

    fn put(&self, n: &mut Node) {
        n.perm = self.perm;
        n.uid = self.uid;
        n.gid = self.gid;
        n.atime = self.atime;
        n.mtime = self.mtime;
        n.ctime = self.ctime;
        n.xattrs = self.xattrs.clone();
    }
}

/// One change to a file's contents, as logged for partial crashes.
#[derive(Clone, Debug)]
pub(super) enum DataChange {
    /// Bytes written.
    Write(Extent),
    /// The size set (truncate, fallocate that extends).
    Size(u64),
    /// A hole punched.
    Zero { offset: u64, len: u64 },
}

/// One name's history since its directory was last made durable.
#[derive(Clone, Debug)]
struct NameLog {
    /// The inode the durable directory binds the name to.
    durable: Option<u64>,
    /// Each change since: (metadata order, the inode the name then pointed to).
    changes: Vec<(u64, Option<u64>)>,
}

/// What changed in one node since it was last made durable.
#[derive(Clone, Debug, Default)]
struct Unsynced {
    /// Durable attributes, with the order of the first change since.
    meta: Option<(u64, Meta)>,
    /// Durable contents.
    data: Option<FileData>,
    /// Changes to the contents since, in order, each with its change order.
    changes: Vec<(u64, DataChange)>,
    /// Bytes of the writes in `changes`.
    logged: u64,
    /// The change log outgrew [`MAX_CHANGES`] or [`MAX_LOGGED`]: the unsynced contents count
    /// as one change.
    coarse: bool,
    /// Names of a directory that changed since.
    names: BTreeMap<OsString, NameLog>,
    /// The node left the live tree while a durable name may still point to it: its last live
    /// state (attributes and contents, before the saved parts are put back).
    gone: Option<Box<Node>>,
}

impl Unsynced {
    fn is_empty(&self) -> bool {
        self.meta.is_none() && self.data.is_none() && self.names.is_empty() && self.gone.is_none()
    }
}

/// Most changes logged per file between syncs. Past it the log is dropped (its pages would
/// keep every overwritten version alive), and partial crashes keep or lose the file's
/// unsynced contents as a whole.
pub const MAX_CHANGES: usize = 4096;

/// Most bytes of writes logged per file between syncs, for the same reason: a program that
/// rewrites a large file without fsync would otherwise keep every version of it.
pub const MAX_LOGGED: u64 = 16 << 20;

/// Most changes kept in one name's log between syncs of its directory: past it only the
/// latest is kept (a name created and removed over and over in a directory never fsynced).
const MAX_NAME_CHANGES: usize = 64;

/// How many name logs mention an inode.
#[derive(Clone, Copy, Debug, Default)]
struct Refs {
    /// As a durable binding or an unsynced change.
    all: u32,
    /// As a durable binding: the node exists after a crash that keeps nothing unsynced.
    durable: u32,
}

/// The durable state's bookkeeping, inside the tree's lock.
#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    pub(super) model: Model,
    /// Boxed: growing the table moves 16-byte slots, not whole records (a single pause of
    /// most of a second when it doubled at 458,753 files unlinked and never synced).
    nodes: FxHashMap<u64, Box<Unsynced>>,
    /// How name logs mention each inode: a node that leaves the live tree is kept while any
    /// does.
    refs: FxHashMap<u64, Refs>,
    /// Numbers every change in the order it was made (ext4-ordered commits metadata changes
    /// as a prefix of this order).
    order: u64,
    /// Counts syncs that made something durable.
    syncs: u64,
}

impl Durable {
    pub(super) fn new(model: Model) -> Durable {
        Durable {
            model,
            ..Durable::default()
        }
    }

    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn add_ref(&mut self, ino: Option<u64>, durable: bool) {
        if let Some(ino) = ino {
            let r = self.refs.entry(ino).or_default();
            r.all += 1;
            r.durable += u32::from(durable);
        }
    }

    /// One mention of `ino` less; true if none is left.
    fn drop_ref(&mut self, ino: u64, durable: bool) -> bool {
        let Some(r) = self.refs.get_mut(&ino) else {
            return false;
        };
        r.all = r.all.saturating_sub(1);
        r.durable = r.durable.saturating_sub(u32::from(durable));
        if r.all == 0 {
            self.refs.remove(&ino);
            return true;
        }
        false
    }

    /// Called before a node's attributes change.
    pub(super) fn meta_changing(&mut self, ino: u64, n: &Node) {
        let order = self.order + 1;
        let u = self.nodes.entry(ino).or_default();
        if u.meta.is_none() {
            u.meta = Some((order, Meta::of(n)));
            self.order = order;
        }
    }

    /// Called before a file's contents change.
    pub(super) fn data_changing(&mut self, ino: u64, d: &FileData) {
        let u = self.nodes.entry(ino).or_default();
        if u.data.is_none() {
            u.data = Some(d.clone());
        }
    }

    /// Called after a file's contents changed (after [`Durable::data_changing`]); `change`
    /// makes the log entry, if the file's log still takes one.
    pub(super) fn data_changed(&mut self, ino: u64, change: impl FnOnce() -> DataChange) {
        let order = self.next_order();
        let Some(u) = self.nodes.get_mut(&ino) else {
            return;
        };
        if u.coarse {
            return;
        }
        let change = change();
        if let DataChange::Write(e) = &change {
            u.logged += e.len;
        }
        if u.changes.len() >= MAX_CHANGES || u.logged > MAX_LOGGED {
            u.coarse = true;
            u.changes = Vec::new();
            u.logged = 0;
        } else {
            u.changes.push((order, change));
        }
    }

    /// Called when `name` in directory `dir` changes from `old` to `new`.
    pub(super) fn name_changed(
        &mut self,
        dir: u64,
        name: &OsStr,
        old: Option<u64>,
        new: Option<u64>,
    ) {
        let order = self.next_order();
        let u = self.nodes.entry(dir).or_default();
        let added_durable = !u.names.contains_key(name);
        let log = u.names.entry(name.to_owned()).or_insert_with(|| NameLog {
            durable: old,
            changes: Vec::new(),
        });
        log.changes.push((order, new));
        let dropped: Vec<(u64, Option<u64>)> = if log.changes.len() > MAX_NAME_CHANGES {
            let keep_from = log.changes.len() - 1;
            log.changes.drain(..keep_from).collect()
        } else {
            Vec::new()
        };
        if added_durable {
            self.add_ref(old, true);
        }
        self.add_ref(new, false);
        let freed: Vec<u64> = dropped
            .into_iter()
            .filter_map(|(_, ino)| ino)
            .filter(|&ino| self.drop_ref(ino, false))
            .collect();
        self.forget_gone(freed);
    }

    /// A write through an O_SYNC or O_DSYNC handle: durable when it returns.
    pub(super) fn synced_write(&mut self, ino: u64, live: &FileData, offset: u64, len: u64) {
        self.syncs += 1;
        if let Some(saved) = self.nodes.get_mut(&ino).and_then(|u| u.data.as_mut()) {
            saved.apply(&live.extent(offset, len), len, &mut Space::unlimited());
        }
    }

    /// A node leaves the live tree: keep its last state if a durable name may point to it.
    ///
    /// If only unsynced names lead to it (a temporary file created and removed since its
    /// directory was last fsynced), only what a disk holds of its contents is kept, not its
    /// unsynced writes: otherwise every such file would stay in memory until the directory is
    /// fsynced. A crash that keeps its name then shows it with its durable contents.
    pub(super) fn node_freed(&mut self, ino: u64, node: &Node) {
        let Some(refs) = self.refs.get(&ino).copied() else {
            self.nodes.remove(&ino);
            return;
        };
        let u = self.nodes.entry(ino).or_default();
        let mut image = node.image();
        if refs.durable == 0 {
            if let (Some(saved), Body::File(f)) = (u.data.take(), &mut image.body) {
                *f = saved;
            }
            u.changes = Vec::new();
            u.logged = 0;
            u.coarse = false;
        }
        u.gone = Some(Box::new(image));
    }

    /// The order of the last change made.
    pub(super) fn last_order(&self) -> u64 {
        self.order
    }

    /// A number that changes whenever the tree or its durable state does.
    pub(super) fn generation(&self) -> u64 {
        self.order + self.syncs
    }

    /// fsync (or, with `datasync`, fdatasync) of file `ino`.
    pub(super) fn fsync_file(&mut self, ino: u64, datasync: bool) {
        self.syncs += 1;
        if let Some(u) = self.nodes.get_mut(&ino) {
            u.data = None;
            u.changes = Vec::new();
            u.logged = 0;
            u.coarse = false;
            if !datasync {
                u.meta = None;
            }
        }
        if self.model == Model::Ext4Ordered {
            self.commit_metadata();
        }
        self.tidy(ino);
    }

    /// fsync of directory `ino`.
    pub(super) fn fsync_dir(&mut self, ino: u64) {
        self.syncs += 1;
        if self.model == Model::Ext4Ordered {
            self.commit_metadata();
            return;
        }
        if let Some(u) = self.nodes.get_mut(&ino) {
            u.meta = None;
            let names = std::mem::take(&mut u.names);
            self.drop_refs(names.into_values());
        }
        self.tidy(ino);
    }

    /// ext4-ordered, before a rename replaces a file: the renamed file's data is made durable.
    pub(super) fn before_replacing_rename(&mut self, src: u64) {
        if self.model == Model::Ext4Ordered {
            if let Some(u) = self.nodes.get_mut(&src) {
                u.data = None;
                u.changes = Vec::new();
                u.logged = 0;
                u.coarse = false;
            }
            self.tidy(src);
        }
    }

    /// Every name and attribute change so far becomes durable (a journal commit).
    fn commit_metadata(&mut self) {
        let mut logs = Vec::new();
        for u in self.nodes.values_mut() {
            u.meta = None;
            logs.extend(std::mem::take(&mut u.names).into_values());
        }
        self.drop_refs(logs.into_iter());
        self.nodes.retain(|_, u| !u.is_empty());
    }

    fn drop_refs(&mut self, logs: impl Iterator<Item = NameLog>) {
        let mut freed = Vec::new();
        for log in logs {
            if let Some(ino) = log.durable {
                if self.drop_ref(ino, true) {
                    freed.push(ino);
                }
            }
            for ino in log.changes.into_iter().filter_map(|c| c.1) {
                if self.drop_ref(ino, false) {
                    freed.push(ino);
                }
            }
        }
        self.forget_gone(freed);
    }

    /// A node that left the live tree and is no longer named anywhere is gone for good.
    fn forget_gone(&mut self, freed: Vec<u64>) {
        for ino in freed {
            if let Some(u) = self.nodes.get_mut(&ino) {
                if u.gone.take().is_some() {
                    self.tidy(ino);
                }
            }
        }
    }

    fn tidy(&mut self, ino: u64) {
        if self.nodes.get(&ino).is_some_and(|u| u.is_empty()) {
            self.nodes.remove(&ino);
        }
    }

    /// Forgets everything: the live tree is the durable tree now.
    pub(super) fn reset(&mut self) {
        self.nodes.clear();
        self.refs.clear();
    }

    /// True if nothing is unsynced.
    pub(super) fn is_clean(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// What a crash loses (or, before one, what it would lose): plain data for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Files whose contents or attributes lose changes.
    pub files: Vec<FileLoss>,
    /// Directory entries that change.
    pub names: Vec<NameLoss>,
}

impl Losses {
    /// True if nothing is lost.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.names.is_empty()
    }
}

/// One file's lost changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLoss {
    /// Its path in the live tree, or None if it has no name there.
    pub path: Option<String>,
    /// Inode number.
    pub ino: u64,
    /// Size in the live tree.
    pub size: u64,
    /// Size after the crash.
    pub size_after: u64,
    /// Byte ranges whose live contents are lost (written, or zeroed by a hole punch or a
    /// truncate and grown back, and not made durable), as (offset, length), merged and in
    /// offset order.
    pub lost: Vec<(u64, u64)>,
    /// Writes that survive in part, as (offset, bytes kept, length).
    pub torn: Vec<(u64, u64, u64)>,
    /// True if changes of mode, owner or xattrs are lost (times are restored too, but a lost
    /// time alone is not reported).
    pub attrs: bool,
}

/// One directory entry a crash changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameLoss {
    /// The path of the name (its directory's live path, or durable one, and the name).
    pub path: String,
    /// What the name is in the live tree: `file`, `dir`..., or None if absent.
    pub live: Option<String>,
    /// What it is after the crash.
    pub after: Option<String>,
    /// The live inode it names, if any.
    pub live_ino: Option<u64>,
    /// The inode it names after the crash, if any.
    pub after_ino: Option<u64>,
}

/// Which unsynced changes a crash state keeps: a crash's draw, or one of the systematic
/// states that exploring a workload goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// As `rawfs crash` does: keep none, or a seeded random subset, maybe torn.
    Draw(CrashOptions),
    /// Every unsynced change survives but the one with this order. Under ext4-ordered a
    /// metadata change that is lost takes every later metadata change with it.
    AllBut(u64),
    /// Every unsynced change survives, but the write with this order keeps only its first
    /// `keep` bytes.
    Torn {
        /// The write's change order.
        order: u64,
        /// Bytes of it that survive.
        keep: u64,
    },
}

/// The kind of one unsynced change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A node's attributes (its first change since it was last durable).
    Attrs,
    /// A directory entry: the name, and the inode it then pointed to.
    Name(OsString, Option<u64>),
    /// Bytes written: offset and length.
    Write(u64, u64),
    /// The size set.
    Size(u64),
    /// A hole punched.
    Zero,
}

/// One unsynced change, for exploring crash states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// When it was made, among all changes.
    pub order: u64,
    /// The node it changed (the directory, for a name).
    pub ino: u64,
    /// What it changed.
    pub kind: ChangeKind,
}

impl Durable {
    /// Every logged unsynced change, in the order they were made.
    pub(super) fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for (&ino, u) in &self.nodes {
            if let Some((order, _)) = &u.meta {
                out.push(Change {
                    order: *order,
                    ino,
                    kind: ChangeKind::Attrs,
                });
            }
            for (name, log) in &u.names {
                for &(order, to) in &log.changes {
                    out.push(Change {
                        order,
                        ino,
                        kind: ChangeKind::Name(name.clone(), to),
                    });
                }
            }
            for (order, c) in &u.changes {
                let kind = match c {
                    DataChange::Write(e) => ChangeKind::Write(e.offset, e.len),
                    DataChange::Size(s) => ChangeKind::Size(*s),
                    DataChange::Zero { .. } => ChangeKind::Zero,
                };
                out.push(Change {
                    order: *order,
                    ino,
                    kind,
                });
            }
        }
        out.sort_by_key(|c| c.order);
        out
    }

    /// The orders of metadata changes (attributes and names), sorted.
    fn metadata_orders(&self, inos: &[u64]) -> Vec<u64> {
        let mut orders: Vec<u64> = Vec::new();
        for ino in inos {
            let u = &self.nodes[ino];
            orders.extend(u.meta.as_ref().map(|m| m.0));
            orders.extend(u.names.values().flat_map(|l| l.changes.iter().map(|c| c.0)));
        }
        orders.sort_unstable();
        orders
    }
}

/// Decisions for a crash, drawn in a fixed order from one seed (or fixed by the choice).
struct Draw {
    state: u64,
    choice: Choice,
    model: Model,
    /// ext4-ordered: metadata changes with an order below this are kept.
    cut: u64,
}

impl Draw {
    fn new(choice: Choice, d: &Durable, inos: &[u64]) -> Draw {
        let seed = match choice {
            Choice::Draw(o) => o.seed,
            _ => 0,
        };
        let mut draw = Draw {
            state: seed ^ 0x5241_5746_5321_u64,
            choice,
            model: d.model,
            cut: u64::MAX,
        };
        if d.model == Model::Ext4Ordered {
            match choice {
                Choice::Draw(o) if o.keep == Keep::Random => {
                    let orders = d.metadata_orders(inos);
                    let i = draw.below(orders.len() as u64 + 1) as usize;
                    draw.cut = orders.get(i).copied().unwrap_or(u64::MAX);
                }
                Choice::AllBut(lost) if d.metadata_orders(inos).contains(&lost) => {
                    draw.cut = lost;
                }
                _ => {}
            }
        }
        draw
    }

    /// splitmix64: small, and stable across versions, so a seed means the same forever.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// Whether a metadata change of this order survives.
    fn keep_meta(&mut self, order: u64) -> bool {
        match (self.choice, self.model) {
            (Choice::Draw(o), _) if o.keep == Keep::None => false,
            (Choice::Draw(_), Model::Ext4Ordered) => order < self.cut,
            (Choice::Draw(_), Model::Strict) => self.next() & 1 == 1,
            (Choice::AllBut(lost), _) => order != lost && order < self.cut,
            (Choice::Torn { .. }, _) => true,
        }
    }

    /// Whether a change to file contents survives.
    fn keep_data(&mut self, order: u64) -> bool {
        match self.choice {
            Choice::Draw(o) => o.keep == Keep::Random && self.next() & 1 == 1,
            Choice::AllBut(lost) => order != lost,
            Choice::Torn { order: torn, .. } => order != torn,
        }
    }

    /// How much of a lost write of `len` bytes at `offset` survives: a prefix ending on a
    /// multiple of the torn unit, shorter than the write (0 without `torn`).
    fn torn(&mut self, order: u64, offset: u64, len: u64) -> u64 {
        let opts = match self.choice {
            Choice::Draw(o) => o,
            Choice::Torn { order: o, keep } if o == order => return keep.min(len),
            _ => return 0,
        };
        let Some(unit) = opts.torn.filter(|&u| u > 0) else {
            return 0;
        };
        let end = offset + len;
        let first = (offset / unit + 1) * unit;
        if first >= end {
            return 0;
        }
        let cuts = (end - 1 - first) / unit + 1;
        let i = self.below(cuts + 1);
        if i == 0 {
            0
        } else {
            first + (i - 1) * unit - offset
        }
    }
}

/// The after-crash version of one node's unsynced parts.
#[derive(Default)]
struct After {
    /// Attributes to put back (None: the live ones survive).
    meta: Option<Meta>,
    /// Contents (None: the live ones survive).
    data: Option<FileData>,
    /// Name bindings that differ from the live directory's.
    names: BTreeMap<OsString, Option<u64>>,
}

/// A crash worked out: the new tree and what it loses.
pub(super) struct Outcome {
    pub(super) nodes: Nodes,
    pub(super) losses: Losses,
}

/// Ranges (offset, length) merged where they overlap or touch, in offset order.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                last.1 = last.1.max(off + len - last.0);
            }
            _ => out.push((off, len)),
        }
    }
    out
}

impl fmt::Display for Losses {
    /// One line per file and per name: `/f: 4096 bytes lost at 0..4096, size 4096 -> 0`,
    /// `/d/f: file -> none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.files {
            let mut what = Vec::new();
            if !l.lost.is_empty() {
                let bytes: u64 = l.lost.iter().map(|r| r.1).sum();
                let ranges: Vec<String> = l
                    .lost
                    .iter()
                    .map(|(o, n)| format!("{o}..{}", o + n))
                    .collect();
                what.push(format!("{bytes} bytes lost at {}", ranges.join(" ")));
            }
            for (o, kept, n) in &l.torn {
                what.push(format!("write {o}..{} torn after {kept} bytes", o + n));
            }
            if l.size != l.size_after {
                what.push(format!("size {} -> {}", l.size, l.size_after));
            }
            if l.attrs {
                what.push("attribute changes lost".into());
            }
            let path = l.path.as_deref().unwrap_or("(no name)");
            writeln!(f, "{path}: {}", what.join(", "))?;
        }
        for n in &self.names {
            let side = |k: &Option<String>, i: Option<u64>| match (k, i) {
                (Some(k), Some(i)) => format!("{k} (inode {i})"),
                _ => "none".to_string(),
            };
            writeln!(
                f,
                "{}: {} -> {}",
                n.path,
                side(&n.live, n.live_ino),
                side(&n.after, n.after_ino)
            )?;
        }
        Ok(())
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDevice => "char-device",
        Kind::BlockDevice => "block-device",
    }
}

/// Works out the tree a crash leaves, from the live nodes and the durable bookkeeping.
/// `path` gives a live node's path for reports. Nothing is changed.
pub(super) fn plan(
    live: &Nodes,
    d: &Durable,
    choice: Choice,
    path: &dyn Fn(u64) -> Option<String>,
) -> Outcome {
    let mut inos: Vec<u64> = d.nodes.keys().copied().collect();
    inos.sort_unstable();
    let mut draw = Draw::new(choice, d, &inos);
    let mut after: FxHashMap<u64, After> = FxHashMap::default();
    let mut losses = Losses::default();
    for &ino in &inos {
        let u = &d.nodes[&ino];
        let mut a = After::default();
        let mut loss = FileLoss {
            path: path(ino),
            ino,
            ..FileLoss::default()
        };
        if let Some((order, meta)) = &u.meta {
            if !draw.keep_meta(*order) {
                // Times alone are not worth a line in the report: every change moves them.
                loss.attrs = live
                    .get(&ino)
                    .or(u.gone.as_ref())
                    .is_some_and(|n| !meta.same_but_times(n));
                a.meta = Some(meta.clone());
            }
        }
        let live_data = match live.get(&ino).or(u.gone.as_ref()).map(|n| &n.body) {
            Some(Body::File(f)) => Some(f),
            _ => None,
        };
        if let (Some(saved), Some(now), true) = (&u.data, live_data, u.coarse) {
            // One change: the live contents survive whole, or the durable ones do.
            let whole = u.changes.first().map_or(0, |c| c.0);
            let data = if draw.keep_data(whole) {
                now.clone()
            } else {
                loss.lost.push((0, now.size()));
                saved.clone()
            };
            loss.size = now.size();
            loss.size_after = data.size();
            a.data = Some(data);
        } else if let Some(saved) = &u.data {
            let mut data = saved.clone();
            let mut budget = Space::unlimited();
            // The live size before each change, and at the end: a lost truncate or hole
            // punch loses the zeros it left inside the live file.
            let mut size = saved.size();
            let live_size = live_data.map_or(0, FileData::size);
            for (order, c) in &u.changes {
                let kept = draw.keep_data(*order);
                match c {
                    DataChange::Write(e) if kept => data.apply(e, e.len, &mut budget),
                    DataChange::Write(e) => {
                        let part = draw.torn(*order, e.offset, e.len);
                        data.apply(e, part, &mut budget);
                        if part > 0 {
                            loss.torn.push((e.offset, part, e.len));
                        } else {
                            loss.lost.push((e.offset, e.len));
                        }
                    }
                    DataChange::Size(s) if kept => data.truncate(*s, &mut budget),
                    DataChange::Zero { offset, len } if kept => {
                        data.punch_hole(*offset, *len, &mut budget)
                    }
                    DataChange::Size(s) => {
                        let end = size.min(live_size);
                        if *s < end {
                            loss.lost.push((*s, end - *s));
                        }
                    }
                    DataChange::Zero { offset, len } => {
                        let end = offset.saturating_add(*len).min(size).min(live_size);
                        if *offset < end {
                            loss.lost.push((*offset, end - *offset));
                        }
                    }
                }
                size = match c {
                    DataChange::Write(e) => size.max(e.offset + e.len),
                    DataChange::Size(s) => *s,
                    DataChange::Zero { .. } => size,
                };
            }
            loss.size = live_data.map_or(0, FileData::size);
            loss.size_after = data.size();
            a.data = Some(data);
        }
        for (name, log) in &u.names {
            let mut binding = log.durable;
            for &(order, to) in &log.changes {
                if draw.keep_meta(order) {
                    binding = to;
                }
            }
            a.names.insert(name.clone(), binding);
        }
        loss.lost = merge(std::mem::take(&mut loss.lost));
        let lost_data = !loss.lost.is_empty() || !loss.torn.is_empty();
        let node_live = live.contains_key(&ino);
        if (lost_data || loss.attrs || loss.size != loss.size_after) && node_live {
            losses.files.push(loss);
        }
        after.insert(ino, a);
    }

    // The durable tree, walked from the root: a node exists after the crash if a durable
    // name leads to it.
    let source = |ino: u64| -> Option<&Node> {
        live.get(&ino)
            .or_else(|| d.nodes.get(&ino).and_then(|u| u.gone.as_ref()))
            .map(|n| &**n)
    };
    let mut links: FxHashMap<u64, Vec<(u64, OsString)>> = FxHashMap::default();
    let mut entries: FxHashMap<u64, Vec<(OsString, u64)>> = FxHashMap::default();
    let mut seen: FxHashSet<u64> = FxHashSet::default();
    seen.insert(ROOT);
    let mut queue = vec![ROOT];
    while let Some(dir) = queue.pop() {
        let Some(Body::Dir(live_dir)) = source(dir).map(|n| &n.body) else {
            continue;
        };
        let mut names: BTreeMap<OsString, u64> =
            live_dir.iter().map(|(n, i)| (n.to_owned(), i)).collect();
        if let Some(a) = after.get(&dir) {
            for (name, binding) in &a.names {
                match binding {
                    Some(i) => names.insert(name.clone(), *i),
                    None => names.remove(name),
                };
            }
        }
        let mut kept = Vec::with_capacity(names.len());
        for (name, child) in names {
            let Some(node) = source(child) else { continue };
            // A directory reached twice (both sides of an unsynced rename survive) keeps
            // the first name, as fsck would leave it.
            if node.kind == Kind::Dir && seen.contains(&child) {
                continue;
            }
            if seen.insert(child) && node.kind == Kind::Dir {
                queue.push(child);
            }
            links.entry(child).or_default().push((dir, name.clone()));
            kept.push((name, child));
        }
        entries.insert(dir, kept);
    }

    let mut nodes: Nodes = FxHashMap::default();
    for &ino in &seen {
        let Some(src) = source(ino) else { continue };
        let mut n = src.image();
        n.lookups = live.get(&ino).map_or(0, |l| l.lookups);
        n.links = links.remove(&ino).unwrap_or_default();
        if let Some(a) = after.get_mut(&ino) {
            if let Some(m) = &a.meta {
                m.put(&mut n);
            }
            if let (Some(data), Body::File(f)) = (a.data.take(), &mut n.body) {
                *f = data;
            }
        }
        if n.kind == Kind::Dir {
            let parent = if ino == ROOT {
                ROOT
            } else {
                n.links.first().map_or(ROOT, |l| l.0)
            };
            let mut dir = Dir::new(parent);
            let mut subdirs = 0;
            for (name, child) in entries.remove(&ino).unwrap_or_default() {
                if source(child).is_some_and(|c| c.kind == Kind::Dir) {
                    subdirs += 1;
                }
                dir.insert(&name, child);
            }
            n.body = Body::Dir(dir);
            n.nlink = 2 + subdirs;
        } else {
            n.nlink = n.links.len() as u32;
        }
        nodes.insert(ino, Box::new(n));
    }
    // The kernel still holds references to live nodes the crash removed: keep them as
    // unlinked, empty nodes until it forgets them.
    for (&ino, l) in live {
        if nodes.contains_key(&ino) || l.lookups == 0 {
            continue;
        }
        let mut n = l.image();
        n.lookups = l.lookups;
        n.links.clear();
        n.nlink = 0;
        n.body = match l.kind {
            Kind::File => Body::File(FileData::default()),
            Kind::Dir => {
                let mut dir = Dir::new(ROOT);
                dir.removed = true;
                Body::Dir(dir)
            }
            _ => l.image().body,
        };
        nodes.insert(ino, Box::new(n));
    }

    // Names that differ between the live tree and the crashed one.
    for &ino in &inos {
        let u = &d.nodes[&ino];
        for name in u.names.keys() {
            let live_ino = live
                .get(&ino)
                .and_then(|n| n.dir().ok())
                .and_then(|dir| dir.get(name));
            let after_ino = nodes
                .get(&ino)
                .and_then(|n| n.dir().ok())
                .and_then(|dir| dir.get(name));
            if live_ino == after_ino {
                continue;
            }
            let dir_path = path(ino).unwrap_or_else(|| format!("(inode {ino})"));
            let sep = if dir_path.ends_with('/') { "" } else { "/" };
            let kind = |i: Option<u64>| i.and_then(source).map(|n| kind_name(n.kind).to_string());
            losses.names.push(NameLoss {
                path: format!("{dir_path}{sep}{}", name.to_string_lossy()),
                live: kind(live_ino),
                after: kind(after_ino),
                live_ino,
                after_ino,
            });
        }
    }
    losses.names.sort_by(|a, b| a.path.cmp(&b.path));
    losses.files.sort_by(|a, b| a.path.cmp(&b.path));
    Outcome { nodes, losses }
}
