//! Property tests.
//!
//! - [`random_scripts_match_tmpfs`]: random scripts of [`Op`]s, over a small alphabet of names
//!   so that they collide, run through the kernel on a private tmpfs and on a rawfs mount and
//!   compared step by step (see [`crate::differential`]).
//! - [`fs_matches_model`]: random scripts run directly on the core [`rawfs::fs::Fs`] (no
//!   mount) against a small reference model of names, kinds, contents, link counts and
//!   allocated pages, with the whole tree and the inode and space counts checked after every
//!   step. Scripts also fsync, fdatasync and cut the power (`Fs::crash`, every unsynced
//!   change lost), each under the `strict` or the `ext4-ordered` persistence model: the model
//!   keeps what a disk would hold by that model's rules (see [`Model`]), and after a crash the
//!   tree must equal it, every descriptor opened before must fail with EIO, and a crash that
//!   changes what the tree shows must report a loss.
//! - [`crashes_match_model`]: the same check, with scripts weighted towards what a power cut
//!   makes interesting: directories moved between directories synced at different times,
//!   descriptors open across the cut.
//!
//! Not modelled: partial crashes (`--keep random`, `--torn`), O_SYNC writes, xattrs and
//! times in the durable state, symlinks and special files.
//!
//! Failures are not persisted to files: a shrunk failure is frozen here as a named
//! `regression_*` test instead.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use rawfs::fs::{Allocate, Caller, Fs, FsOptions, Kind, ROOT, RenameMode, SetAttr};
use rawfs::{CrashOptions, Errno, Losses, Model as Persistence};

use crate::differential::{
    Bytes, Falloc, Mode, Op, Stat, Tmpfs, Value, XFlags, differential, fresh_dir, listing, pattern,
};
use crate::mount_or_skip;

// ---------------------------------------------------------------------------------------------
// Strategies

/// Plain paths: a few names under a few directories, so that operations collide.
const TOP: &[&str] = &["a", "b", "d1", "d2"];
const DEEP: &[&str] = &[
    "d1/a", "d1/b", "d1/d1", "d1/d2", "d2/a", "d2/b", "d2/d1", "d2/d2",
];
/// Where the setup makes directories, and a level below.
const DIRS: &[&str] = &["d1", "d2", "d1/d1", "d1/d2", "d2/d1", "d2/d2"];
const DEEPER: &[&str] = &["d1/d2/a", "d1/d2/b", "d1/d2/d1", "d2/d1/a"];
/// Paths only the kernel-level scripts use: symlinks, trailing slashes, dot entries, names
/// that are too long.
const ODD: &[&str] = &[
    "s", "d1/s", "s/a", "a/", "d1/", "d1/.", ".", "<255>", "<256>", "a/a",
];
/// Symlink targets. None starts with "..", and "d2/../a" only climbs back out of what it
/// entered, so no path leaves the case directory.
const TARGETS: &[&str] = &["a", "b", "d1", "d1/a", "s", "nope", "d2/../a", "", "<4095>"];
const OFFSETS: &[u64] = &[0, 1, 100, 4095, 4096, 4097, 8191, 8192, 10000];
const LENS: &[usize] = &[0, 1, 10, 100, 4095, 4096, 4097, 5000];
const SIZES: &[u64] = &[0, 1, 100, 4095, 4096, 4097, 5000, 8192, 12000];
const MODES: &[u32] = &[0o755, 0o700, 0o644, 0o600, 0o1777, 0o2755, 0o4755, 0];
const XNAMES: &[&str] = &["user.x", "user.y", "trusted.t", "user.", "plain"];
const XVALUES: &[&str] = &["", "v", "value-2"];

fn plain_path() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => select(TOP), 3 => select(DEEP), 1 => select(DEEPER)]
}

fn any_path() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => plain_path(), 1 => select(ODD)]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![3 => select(OFFSETS), 1 => 0u64..13000]
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![3 => select(LENS), 1 => 0usize..9000]
}

fn rename_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![3 => Just(Mode::Plain), 1 => Just(Mode::NoReplace), 1 => Just(Mode::Exchange)]
}

/// Every operation, through the kernel.
fn kernel_op() -> impl Strategy<Value = Op> {
    let p = any_path;
    prop_oneof![
        3 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        1 => p().prop_map(|path| Op::Rmdir { path }),
        1 => (p(), any::<bool>()).prop_map(|(path, socket)| Op::Mknod { path, socket }),
        3 => (p(), select(MODES), any::<bool>(), any::<bool>())
            .prop_map(|(path, mode, excl, trunc)| Op::Create { path, mode, excl, trunc }),
        4 => (p(), offset(), len(), any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        1 => (p(), len(), any::<u8>()).prop_map(|(path, len, seed)| Op::Append { path, len, seed }),
        2 => (p(), offset(), len()).prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        1 => (p(), select(SIZES)).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => p().prop_map(|path| Op::Unlink { path }),
        3 => (p(), p(), rename_mode()).prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        1 => (p(), p()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (select(TARGETS), p()).prop_map(|(target, path)| Op::Symlink { target, path }),
        1 => p().prop_map(|path| Op::Readlink { path }),
        2 => (p(), any::<bool>()).prop_map(|(path, follow)| Op::Stat { path, follow }),
        1 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (
            p(),
            select(XNAMES),
            select(XVALUES),
            select(&[XFlags::Any, XFlags::Create, XFlags::Replace][..])
        )
            .prop_map(|(path, name, value, flags)| Op::SetXattr { path, name, value, flags }),
        1 => (p(), select(XNAMES), select(&[0usize, 1, 100][..]))
            .prop_map(|(path, name, size)| Op::GetXattr { path, name, size }),
        1 => p().prop_map(|path| Op::ListXattr { path }),
        1 => (p(), select(XNAMES)).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => p().prop_map(|path| Op::Readdir { path }),
        1 => (
            p(),
            select(&[Falloc::Extend, Falloc::KeepSize, Falloc::PunchHole, Falloc::ZeroRange][..]),
            offset(),
            select(&[0u64, 1, 4096, 5000, 9000][..])
        )
            .prop_map(|(path, mode, offset, len)| Op::Fallocate { path, mode, offset, len }),
        1 => p().prop_map(|path| Op::Utimens { path }),
        2 => (0u8..3, p(), any::<bool>()).prop_map(|(slot, path, write)| Op::Open { slot, path, write }),
        1 => (0u8..3).prop_map(|slot| Op::Close { slot }),
        2 => (0u8..3, offset(), len(), any::<u8>())
            .prop_map(|(slot, offset, len, seed)| Op::FdWrite { slot, offset, len, seed }),
        1 => (0u8..3, offset(), len()).prop_map(|(slot, offset, len)| Op::FdRead { slot, offset, len }),
        1 => (0u8..3).prop_map(|slot| Op::FdStat { slot }),
        1 => (0u8..3, select(SIZES)).prop_map(|(slot, size)| Op::FdTruncate { slot, size }),
    ]
}

/// The operations the model covers, on plain paths.
fn fs_op() -> impl Strategy<Value = Op> {
    let p = plain_path;
    prop_oneof![
        3 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        1 => p().prop_map(|path| Op::Rmdir { path }),
        3 => (p(), select(MODES), any::<bool>(), any::<bool>())
            .prop_map(|(path, mode, excl, trunc)| Op::Create { path, mode, excl, trunc }),
        4 => (p(), offset(), len(), any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        1 => (p(), len(), any::<u8>()).prop_map(|(path, len, seed)| Op::Append { path, len, seed }),
        2 => (p(), offset(), len()).prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        2 => (p(), select(SIZES)).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => p().prop_map(|path| Op::Unlink { path }),
        3 => (p(), p(), rename_mode()).prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        2 => (p(), p()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => p().prop_map(|path| Op::Stat { path, follow: false }),
        1 => prop_oneof![Just("."), p()].prop_map(|path| Op::Readdir { path }),
        2 => (
            p(),
            select(&[Falloc::Extend, Falloc::KeepSize, Falloc::PunchHole][..]),
            offset(),
            select(&[0u64, 1, 4096, 5000, 9000][..])
        )
            .prop_map(|(path, mode, offset, len)| Op::Fallocate { path, mode, offset, len }),
        2 => (0u8..3, p(), any::<bool>()).prop_map(|(slot, path, write)| Op::Open { slot, path, write }),
        1 => (0u8..3).prop_map(|slot| Op::Close { slot }),
        2 => (0u8..3, offset(), len(), any::<u8>())
            .prop_map(|(slot, offset, len, seed)| Op::FdWrite { slot, offset, len, seed }),
        1 => (0u8..3, offset(), len()).prop_map(|(slot, offset, len)| Op::FdRead { slot, offset, len }),
        1 => (0u8..3).prop_map(|slot| Op::FdStat { slot }),
        1 => (0u8..3, select(SIZES)).prop_map(|(slot, size)| Op::FdTruncate { slot, size }),
        1 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        3 => prop_oneof![1 => Just("."), 2 => p()].prop_map(|path| Op::Fsync { path }),
        1 => (0u8..3, any::<bool>()).prop_map(|(slot, datasync)| Op::FdFsync { slot, datasync }),
        1 => Just(Op::Crash),
    ]
}

/// The operations that matter to a power cut, weighted so that a script often renames a
/// directory between directories synced differently, or uses a descriptor opened before the
/// cut: names, syncs, descriptors and crashes.
fn crash_op() -> impl Strategy<Value = Op> {
    let p = plain_path;
    prop_oneof![
        2 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        1 => p().prop_map(|path| Op::Rmdir { path }),
        2 => (p(), select(MODES), any::<bool>(), any::<bool>())
            .prop_map(|(path, mode, excl, trunc)| Op::Create { path, mode, excl, trunc }),
        2 => (p(), offset(), len(), any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        1 => (p(), select(SIZES)).prop_map(|(path, size)| Op::Truncate { path, size }),
        1 => p().prop_map(|path| Op::Unlink { path }),
        2 => (p(), p(), rename_mode()).prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        // Directories moved between directories: both names may be durable.
        6 => (select(DIRS), select(DIRS), rename_mode())
            .prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        1 => (p(), p()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (p(), select(MODES)).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        5 => prop_oneof![select(&[".", "d1", "d2"][..]), p()].prop_map(|path| Op::Fsync { path }),
        3 => (0u8..2, p(), any::<bool>()).prop_map(|(slot, path, write)| Op::Open { slot, path, write }),
        1 => (0u8..2).prop_map(|slot| Op::Close { slot }),
        2 => (0u8..2, offset(), len(), any::<u8>())
            .prop_map(|(slot, offset, len, seed)| Op::FdWrite { slot, offset, len, seed }),
        1 => (0u8..2, offset(), len()).prop_map(|(slot, offset, len)| Op::FdRead { slot, offset, len }),
        1 => (0u8..2).prop_map(|slot| Op::FdStat { slot }),
        1 => (0u8..2, select(SIZES)).prop_map(|(slot, size)| Op::FdTruncate { slot, size }),
        2 => (0u8..2, any::<bool>()).prop_map(|(slot, datasync)| Op::FdFsync { slot, datasync }),
        2 => Just(Op::Crash),
    ]
}

/// The persistence model a script's [`Fs`] runs under.
fn persistence() -> impl Strategy<Value = Persistence> {
    select(&Persistence::ALL[..])
}

/// A tree most scripts start from (any subsequence of it), so that later steps find
/// something at the names they use instead of mostly failing with ENOENT.
fn setup(kernel: bool) -> Vec<Op> {
    let mut ops = vec![
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d2",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d1/d2",
            mode: 0o755,
        },
        Op::Create {
            path: "a",
            mode: 0o644,
            excl: true,
            trunc: false,
        },
        Op::Write {
            path: "a",
            offset: 0,
            len: 5000,
            seed: 1,
        },
        Op::Create {
            path: "d1/a",
            mode: 0o644,
            excl: true,
            trunc: false,
        },
        Op::Write {
            path: "d1/a",
            offset: 4096,
            len: 10,
            seed: 2,
        },
        Op::Create {
            path: "d2/b",
            mode: 0o600,
            excl: true,
            trunc: false,
        },
        Op::Link {
            from: "a",
            to: "d2/a",
        },
    ];
    if !kernel {
        // Made durable, so that a power cut leaves something: any part of it, as the steps
        // are a random subsequence.
        for path in ["a", "d1/a", "d1/d2", "d1", "d2", "."] {
            ops.push(Op::Fsync { path });
        }
        // An attribute change not yet durable, and descriptors open across the steps (and
        // across a power cut).
        ops.push(Op::Chmod {
            path: "a",
            mode: 0o640,
        });
        ops.push(Op::Open {
            slot: 0,
            path: "a",
            write: true,
        });
        ops.push(Op::Open {
            slot: 1,
            path: "d1",
            write: false,
        });
    }
    if kernel {
        ops.push(Op::Symlink {
            target: "d1",
            path: "s",
        });
        ops.push(Op::SetXattr {
            path: "a",
            name: "user.x",
            value: "v",
            flags: XFlags::Any,
        });
    }
    ops
}

/// A setup prefix, then `body` random steps.
fn script(kernel: bool, body: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Op>> {
    let ops = if kernel {
        kernel_op().boxed()
    } else {
        fs_op().boxed()
    };
    script_of(kernel, usize::MAX, ops, body)
}

/// A setup prefix (all of it but up to `drop` steps, any subsequence with `drop` = its
/// length), then `body` steps drawn from `ops`.
fn script_of(
    kernel: bool,
    drop: usize,
    ops: BoxedStrategy<Op>,
    body: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Op>> {
    let setup = setup(kernel);
    let n = setup.len();
    (
        proptest::sample::subsequence(setup, n.saturating_sub(drop)..=n),
        proptest::collection::vec(ops, body),
    )
        .prop_map(|(mut s, body)| {
            s.extend(body);
            s
        })
}

/// `cases` cases, or as many as `PROPTEST_CASES` says (for a longer hunt by hand).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) random scripts, tmpfs against a rawfs mount

/// Runs `script` in fresh case directories on both sides, then removes them.
fn compare_mounted(
    tmpfs: &Tmpfs,
    mount: &rawfs::TempMount,
    n: usize,
    script: &[Op],
) -> Result<(), String> {
    let name = format!("case{n}");
    let a = fresh_dir(tmpfs.path(), &name);
    let b = fresh_dir(mount.path(), &name);
    let r = differential(["tmpfs", "rawfs"], &a, &b, script);
    for d in [&a, &b] {
        std::fs::remove_dir_all(d).map_err(|e| format!("cleaning up {}: {e}", d.display()))?;
    }
    r
}

#[test]
fn random_scripts_match_tmpfs() {
    let m = mount_or_skip!();
    let t = Tmpfs::new();
    let n = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config(64));
    let result = runner.run(&script(true, 1..20), |script| {
        compare_mounted(&t, &m, n.fetch_add(1, Ordering::Relaxed), &script)
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// fsync(2), fdatasync(2) and fsync of a directory through the kernel: they succeed or fail
/// as on tmpfs, and change no time.
#[test]
fn fsync_steps_match_tmpfs() {
    check_mounted(&[
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Write {
            path: "d1/a",
            offset: 0,
            len: 10,
            seed: 1,
        },
        Op::Create {
            path: "d1/a",
            mode: 0o644,
            excl: false,
            trunc: false,
        },
        Op::Write {
            path: "d1/a",
            offset: 0,
            len: 5000,
            seed: 1,
        },
        Op::Fsync { path: "d1/a" },
        Op::Fsync { path: "d1" },
        Op::Fsync { path: "." },
        Op::Fsync { path: "d2" },
        Op::Fsync { path: "d1/a/b" },
        Op::Open {
            slot: 0,
            path: "d1/a",
            write: true,
        },
        Op::FdWrite {
            slot: 0,
            offset: 4000,
            len: 100,
            seed: 2,
        },
        Op::FdFsync {
            slot: 0,
            datasync: true,
        },
        Op::FdFsync {
            slot: 0,
            datasync: false,
        },
        Op::Open {
            slot: 1,
            path: "d1",
            write: false,
        },
        Op::FdFsync {
            slot: 1,
            datasync: false,
        },
        Op::FdFsync {
            slot: 2,
            datasync: false,
        },
        Op::Close { slot: 0 },
        Op::Close { slot: 1 },
    ]);
}

/// Runs a frozen script through the kernel on both sides.
fn check_mounted(script: &[Op]) {
    let m = mount_or_skip!();
    let t = Tmpfs::new();
    if let Err(report) = compare_mounted(&t, &m, 0, script) {
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------------------------
// (b) the core tree against a reference model

const ROOT_CALLER: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};
const PAGE: u64 = 4096;
/// tmpfs's (and rawfs's) directory size per entry, "." and ".." included.
const DIRENT: u64 = 20;

/// Every path of a tree with its stat and file contents.
type Tree = BTreeMap<String, (Stat, Option<Bytes>)>;

/// One node of the model. Link counts are not stored: they follow from the tree.
#[derive(Clone, Debug)]
enum MNode {
    File {
        perm: u32,
        data: Vec<u8>,
        /// Indexes of the pages that hold data (st_blocks counts them).
        pages: BTreeSet<u64>,
    },
    Dir {
        perm: u32,
        parent: usize,
        entries: BTreeMap<String, usize>,
    },
}

/// One open descriptor of the model.
#[derive(Clone, Copy, Debug)]
struct MHandle {
    node: usize,
    /// Opened for writing.
    write: bool,
    /// Opened before a power cut: using it fails with EIO, closing it succeeds.
    stale: bool,
}

/// The reference: nodes by id (0 is the root); a node with no name left is removed.
///
/// Beside the live `nodes`, `durable` holds what a disk would hold after a power cut under
/// rawfs's `strict` persistence model (POSIX's promises only, docs/crash.md), kept the naive
/// way: a full image of every node, changed only by the syncs that POSIX says make something
/// durable.
///
/// - A new node's durable image is its creation image: an empty file, or an empty directory,
///   with the mode it was made with. No durable entry names it yet.
/// - fsync of a file makes its data, size, allocated pages and mode durable; fdatasync the
///   same but the mode.
/// - fsync (or fdatasync) of a directory makes its entries and its mode durable: each name
///   then durably points at whatever node it names now (whose own durable image may still be
///   its creation image).
/// - Nothing else is ever durable: not a rename, not an unlink, not a write.
/// - A power cut ([`Model::crash`]) replaces the live tree with what the durable entries reach
///   from the root. Link counts follow from that tree; a node no durable name reaches is gone
///   (but a descriptor still open on it keeps an unlinked, empty node alive, with the mode it
///   had, until it is closed); every descriptor becomes stale. The new tree is all durable.
/// - Both sides of a rename that was never made durable may survive (the old directory never
///   fsynced, the new one fsynced). A file then has both names (and a link count of 2). A
///   directory keeps one name, the first the walk meets, as rawfs's crash does: the walk pops
///   directories from a stack (last found, first walked), starting from the root, and looks at
///   each directory's names in byte order; a directory found a second time is not listed there.
///   So if `/d1/x` and `/d2/x` both durably name one directory, `/d2/x` is kept (d2 is walked
///   first, having been pushed last), whichever of the two names is the newer.
///
/// Under `ext4-ordered` (with `ext4` set) the rules for metadata differ, as docs/crash.md
/// gives them, and the rest is the same:
///
/// - Any fsync or fdatasync, of a file or a directory, commits the journal: every directory's
///   entries and every node's mode become durable as they are now. The fsynced file's data,
///   size and pages become durable too (fdatasync included); other files' do not.
/// - A rename that replaces an existing file (not an exchange) first makes the renamed file's
///   data, size and pages durable (auto_da_alloc).
#[derive(Clone, Debug)]
struct Model {
    /// The `ext4-ordered` persistence model rather than `strict`.
    ext4: bool,
    nodes: BTreeMap<usize, MNode>,
    next: usize,
    /// Open descriptors by slot.
    handles: BTreeMap<u8, MHandle>,
    /// Each node's durable image, for every node made since the last power cut (a node that
    /// left the live tree may still be named by a durable entry).
    durable: BTreeMap<usize, MNode>,
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    }
}

impl Model {
    fn new() -> Model {
        Model::with(Persistence::Strict)
    }

    fn with(persistence: Persistence) -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            0,
            MNode::Dir {
                perm: 0o755,
                parent: 0,
                entries: BTreeMap::new(),
            },
        );
        Model {
            ext4: persistence == Persistence::Ext4Ordered,
            durable: nodes.clone(),
            nodes,
            next: 1,
            handles: BTreeMap::new(),
        }
    }

    fn entries(&self, id: usize) -> Result<&BTreeMap<String, usize>, Errno> {
        match &self.nodes[&id] {
            MNode::Dir { entries, .. } => Ok(entries),
            MNode::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, id: usize) -> &mut BTreeMap<String, usize> {
        match self.nodes.get_mut(&id) {
            Some(MNode::Dir { entries, .. }) => entries,
            _ => unreachable!("not a directory"),
        }
    }

    fn is_dir(&self, id: usize) -> bool {
        matches!(self.nodes[&id], MNode::Dir { .. })
    }

    /// Walks every component: a missing one is ENOENT, a file in the middle ENOTDIR.
    fn resolve(&self, path: &str) -> Result<usize, Errno> {
        if path == "." {
            return Ok(0);
        }
        let mut id = 0;
        for c in path.split('/') {
            id = *self.entries(id)?.get(c).ok_or(Errno::ENOENT)?;
        }
        Ok(id)
    }

    fn resolve_parent<'p>(&self, path: &'p str) -> Result<(usize, &'p str), Errno> {
        let (dir, name) = split(path);
        let id = self.resolve(dir)?;
        self.entries(id)?;
        Ok((id, name))
    }

    /// How many directory entries name `id`.
    fn names(&self, id: usize) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| match n {
                MNode::Dir { entries, .. } => Some(entries.values().filter(|&&c| c == id).count()),
                MNode::File { .. } => None,
            })
            .sum::<usize>() as u64
    }

    fn nlink(&self, id: usize) -> u64 {
        match &self.nodes[&id] {
            // A removed directory (still open) has no links at all.
            MNode::Dir { .. } if id != 0 && self.names(id) == 0 => 0,
            MNode::Dir { entries, .. } => {
                2 + entries.values().filter(|&&c| self.is_dir(c)).count() as u64
            }
            MNode::File { .. } => self.names(id),
        }
    }

    fn stat(&self, id: usize) -> Stat {
        let (kind, perm, size, blocks) = match &self.nodes[&id] {
            MNode::File { perm, data, pages } => {
                ('f', *perm, data.len() as u64, Some(pages.len() as i64 * 8))
            }
            MNode::Dir { perm, entries, .. } => {
                ('d', *perm, (entries.len() as u64 + 2) * DIRENT, None)
            }
        };
        Stat {
            kind,
            perm,
            nlink: self.nlink(id),
            size,
            blocks,
            uid: 0,
            gid: 0,
        }
    }

    /// Drops nodes no name reaches any more.
    fn collect(&mut self) {
        // Open descriptors keep their nodes (unlinked or not) alive.
        let mut live: BTreeSet<usize> = self.handles.values().map(|h| h.node).collect();
        live.insert(0);
        let mut todo: Vec<usize> = live.iter().copied().collect();
        while let Some(id) = todo.pop() {
            if let MNode::Dir { entries, .. } = &self.nodes[&id] {
                for &c in entries.values() {
                    if live.insert(c) {
                        todo.push(c);
                    }
                }
            }
        }
        self.nodes.retain(|id, _| live.contains(id));
    }

    fn add(&mut self, parent: usize, name: &str, node: MNode) {
        let id = self.next;
        self.next += 1;
        // What the disk holds of it: its creation image, with no name yet.
        self.durable.insert(id, node.clone());
        self.nodes.insert(id, node);
        self.entries_mut(parent).insert(name.to_string(), id);
    }

    fn file(&mut self, id: usize) -> Result<(&mut Vec<u8>, &mut BTreeSet<u64>), Errno> {
        match self.nodes.get_mut(&id) {
            Some(MNode::File { data, pages, .. }) => Ok((data, pages)),
            _ => Err(Errno::EISDIR),
        }
    }

    fn truncate(&mut self, id: usize, size: u64) -> Result<(), Errno> {
        let (data, pages) = self.file(id)?;
        // Keeping the size frees pages past the end too (preallocated ones).
        if size <= data.len() as u64 {
            pages.retain(|&p| p < size.div_ceil(PAGE));
        }
        data.resize(size as usize, 0);
        Ok(())
    }

    fn write(&mut self, id: usize, offset: Option<u64>, bytes: &[u8]) -> Result<Value, Errno> {
        let (data, pages) = self.file(id)?;
        let offset = offset.unwrap_or(data.len() as u64);
        if !bytes.is_empty() {
            let end = offset + bytes.len() as u64;
            pages.extend(offset / PAGE..end.div_ceil(PAGE));
            if data.len() < end as usize {
                data.resize(end as usize, 0);
            }
            data[offset as usize..end as usize].copy_from_slice(bytes);
        }
        Ok(Value::Count(bytes.len() as u64))
    }

    /// The open descriptor in `slot`, for a step that uses it: EBADF if the slot holds none,
    /// EIO if it was opened before a power cut.
    fn handle(&self, slot: u8) -> Result<MHandle, Errno> {
        match self.handles.get(&slot) {
            None => Err(Errno::EBADF),
            Some(h) if h.stale => Err(Errno::EIO),
            Some(h) => Ok(*h),
        }
    }

    /// fsync(2) (or, with `datasync`, fdatasync(2)) of node `id`.
    fn fsync(&mut self, id: usize, datasync: bool) {
        if self.ext4 {
            self.data_durable(id);
            // The journal commit: every name and mode as it is now.
            for (&id, live) in &self.nodes {
                let image = self.durable.get_mut(&id).expect("every node has an image");
                match (live, image) {
                    (
                        MNode::Dir { perm, entries, .. },
                        MNode::Dir {
                            perm: p,
                            entries: e,
                            ..
                        },
                    ) => {
                        *p = *perm;
                        e.clone_from(entries);
                    }
                    (MNode::File { perm, .. }, MNode::File { perm: p, .. }) => *p = *perm,
                    _ => unreachable!("a node keeps its kind"),
                }
            }
            return;
        }
        let live = self.nodes[&id].clone();
        let image = match (live, self.durable.get(&id)) {
            (
                MNode::File { data, pages, .. },
                Some(MNode::File {
                    perm: durable_perm, ..
                }),
            ) if datasync => MNode::File {
                perm: *durable_perm,
                data,
                pages,
            },
            (live, _) => live,
        };
        self.durable.insert(id, image);
    }

    /// File `id`'s data, size and pages become durable (not its mode).
    fn data_durable(&mut self, id: usize) {
        if let (
            Some(MNode::File { data, pages, .. }),
            Some(MNode::File {
                data: d, pages: p, ..
            }),
        ) = (self.nodes.get(&id), self.durable.get_mut(&id))
        {
            d.clone_from(data);
            p.clone_from(pages);
        }
    }

    /// A power cut: the live tree becomes what the durable entries reach from the root.
    fn crash(&mut self) {
        let mut after: BTreeMap<usize, MNode> = BTreeMap::new();
        let mut parents = BTreeMap::from([(0, 0)]);
        let mut seen = BTreeSet::from([0]);
        let mut stack = vec![0];
        while let Some(dir) = stack.pop() {
            let MNode::Dir { perm, entries, .. } = &self.durable[&dir] else {
                unreachable!("only directories are pushed");
            };
            let mut kept = BTreeMap::new();
            for (name, &child) in entries {
                if matches!(self.durable[&child], MNode::Dir { .. }) {
                    if !seen.insert(child) {
                        continue; // met before: the first name wins
                    }
                    parents.insert(child, dir);
                    stack.push(child);
                } else {
                    seen.insert(child);
                }
                kept.insert(name.clone(), child);
            }
            let dir_node = MNode::Dir {
                perm: *perm,
                parent: parents[&dir],
                entries: kept,
            };
            after.insert(dir, dir_node);
        }
        for &id in &seen {
            after.entry(id).or_insert_with(|| self.durable[&id].clone());
        }
        // A descriptor keeps its node alive; one the crash removed is left unlinked and empty.
        for h in self.handles.values_mut() {
            h.stale = true;
            after
                .entry(h.node)
                .or_insert_with(|| match &self.nodes[&h.node] {
                    MNode::File { perm, .. } => MNode::File {
                        perm: *perm,
                        data: Vec::new(),
                        pages: BTreeSet::new(),
                    },
                    MNode::Dir { perm, .. } => MNode::Dir {
                        perm: *perm,
                        parent: h.node,
                        entries: BTreeMap::new(),
                    },
                });
        }
        self.durable = after.clone();
        self.nodes = after;
    }

    /// `ancestor` is `id` or one of its parents.
    fn is_ancestor(&self, ancestor: usize, mut id: usize) -> bool {
        loop {
            if id == ancestor {
                return true;
            }
            match &self.nodes[&id] {
                MNode::Dir { parent, .. } if *parent != id => id = *parent,
                _ => return false,
            }
        }
    }

    fn set_parent(&mut self, id: usize, to: usize) {
        if let Some(MNode::Dir { parent, .. }) = self.nodes.get_mut(&id) {
            *parent = to;
        }
    }

    /// The expected outcome of `op`, applied to the model.
    fn apply(&mut self, op: &Op) -> Result<Value, Errno> {
        let r = self.apply_inner(op);
        self.collect();
        r
    }

    fn apply_inner(&mut self, op: &Op) -> Result<Value, Errno> {
        match *op {
            Op::Mkdir { path, mode } => {
                let (p, name) = self.resolve_parent(path)?;
                if self.entries(p)?.contains_key(name) {
                    return Err(Errno::EEXIST);
                }
                // A directory made in a setgid directory is setgid too.
                let setgid = match &self.nodes[&p] {
                    MNode::Dir { perm, .. } => perm & 0o2000,
                    MNode::File { .. } => 0,
                };
                let node = MNode::Dir {
                    perm: mode & 0o7777 | setgid,
                    parent: p,
                    entries: BTreeMap::new(),
                };
                self.add(p, name, node);
                Ok(Value::Done)
            }
            Op::Rmdir { path } => {
                let (p, name) = self.resolve_parent(path)?;
                let id = *self.entries(p)?.get(name).ok_or(Errno::ENOENT)?;
                if !self.entries(id)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                self.entries_mut(p).remove(name);
                Ok(Value::Done)
            }
            Op::Create {
                path,
                mode,
                excl,
                trunc,
            } => {
                let (p, name) = self.resolve_parent(path)?;
                match self.entries(p)?.get(name).copied() {
                    Some(_) if excl => Err(Errno::EEXIST),
                    Some(id) if self.is_dir(id) => Err(Errno::EISDIR),
                    Some(id) => {
                        if trunc {
                            self.truncate(id, 0)?;
                        }
                        Ok(Value::Done)
                    }
                    None => {
                        let node = MNode::File {
                            perm: mode & 0o7777,
                            data: Vec::new(),
                            pages: BTreeSet::new(),
                        };
                        self.add(p, name, node);
                        Ok(Value::Done)
                    }
                }
            }
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => {
                let id = self.resolve(path)?;
                self.write(id, Some(offset), &pattern(len, seed))
            }
            Op::Append { path, len, seed } => {
                let id = self.resolve(path)?;
                self.write(id, None, &pattern(len, seed))
            }
            Op::Read { path, offset, len } => {
                let id = self.resolve(path)?;
                let (data, _) = self.file(id)?;
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                Ok(Value::Bytes(Bytes(data[start..end].to_vec())))
            }
            Op::Truncate { path, size } => {
                let id = self.resolve(path)?;
                self.truncate(id, size).map(|()| Value::Done)
            }
            Op::Unlink { path } => {
                let (p, name) = self.resolve_parent(path)?;
                let id = *self.entries(p)?.get(name).ok_or(Errno::ENOENT)?;
                if self.is_dir(id) {
                    return Err(Errno::EISDIR);
                }
                self.entries_mut(p).remove(name);
                Ok(Value::Done)
            }
            Op::Rename { from, to, mode } => self.rename(from, to, mode).map(|()| Value::Done),
            Op::Link { from, to } => {
                let id = self.resolve(from)?;
                let (p, name) = self.resolve_parent(to)?;
                // rawfs checks the kind before the target; through the kernel the VFS reports
                // EEXIST first, before rawfs is asked.
                if self.is_dir(id) {
                    return Err(Errno::EPERM);
                }
                if self.entries(p)?.contains_key(name) {
                    return Err(Errno::EEXIST);
                }
                self.entries_mut(p).insert(name.to_string(), id);
                Ok(Value::Done)
            }
            Op::Stat { path, .. } => {
                let id = self.resolve(path)?;
                Ok(Value::Stat(self.stat(id)))
            }
            Op::Open { slot, path, write } => {
                let id = self.resolve(path)?;
                if write && self.is_dir(id) {
                    return Err(Errno::EISDIR);
                }
                let h = MHandle {
                    node: id,
                    write,
                    stale: false,
                };
                self.handles.insert(slot, h);
                Ok(Value::Done)
            }
            Op::Close { slot } => {
                self.handles.remove(&slot).ok_or(Errno::EBADF)?;
                Ok(Value::Done)
            }
            Op::FdWrite {
                slot,
                offset,
                len,
                seed,
            } => {
                // The kernel refuses a descriptor not open for writing before asking rawfs.
                if !self.handles.get(&slot).is_some_and(|h| h.write) {
                    return Err(Errno::EBADF);
                }
                let h = self.handle(slot)?;
                self.write(h.node, Some(offset), &pattern(len, seed))
            }
            Op::FdRead { slot, offset, len } => {
                // The kernel refuses to read a directory before asking rawfs.
                let h = self.handles.get(&slot).ok_or(Errno::EBADF)?;
                if self.is_dir(h.node) {
                    return Err(Errno::EISDIR);
                }
                let id = self.handle(slot)?.node;
                let (data, _) = self.file(id)?;
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                Ok(Value::Bytes(Bytes(data[start..end].to_vec())))
            }
            Op::FdStat { slot } => {
                // Also through a stale descriptor: the node as the crash left it.
                let h = self.handles.get(&slot).ok_or(Errno::EBADF)?;
                Ok(Value::Stat(self.stat(h.node)))
            }
            Op::FdTruncate { slot, size } => match self.handles.get(&slot).copied() {
                None => Err(Errno::EBADF),
                Some(MHandle { write: false, .. }) => Err(Errno::EINVAL),
                Some(_) => {
                    let id = self.handle(slot)?.node;
                    self.truncate(id, size).map(|()| Value::Done)
                }
            },
            Op::Chmod { path, mode } => {
                let id = self.resolve(path)?;
                match self.nodes.get_mut(&id) {
                    Some(MNode::File { perm, .. } | MNode::Dir { perm, .. }) => {
                        *perm = mode & 0o7777;
                    }
                    None => unreachable!("resolved"),
                }
                Ok(Value::Done)
            }
            Op::Fsync { path } => {
                let id = self.resolve(path)?;
                self.fsync(id, false);
                Ok(Value::Done)
            }
            Op::FdFsync { slot, datasync } => {
                let id = self.handle(slot)?.node;
                self.fsync(id, datasync);
                Ok(Value::Done)
            }
            Op::Crash => {
                self.crash();
                Ok(Value::Done)
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let id = self.resolve(path)?;
                let (data, pages) = self.file(id)?;
                if len == 0 {
                    return Err(Errno::EINVAL);
                }
                let end = offset + len;
                match mode {
                    Falloc::Extend | Falloc::KeepSize => {
                        pages.extend(offset / PAGE..end.div_ceil(PAGE));
                        if mode == Falloc::Extend && data.len() < end as usize {
                            data.resize(end as usize, 0);
                        }
                    }
                    Falloc::PunchHole => {
                        // Whole pages are freed, partial ones zeroed.
                        pages.retain(|&p| p < offset.div_ceil(PAGE) || p >= end / PAGE);
                        let to = data.len().min(end as usize);
                        if (offset as usize) < to {
                            data[offset as usize..to].fill(0);
                        }
                    }
                    Falloc::ZeroRange => unreachable!("not generated for the model"),
                }
                Ok(Value::Done)
            }
            Op::Readdir { path } => {
                let id = self.resolve(path)?;
                let names = self
                    .entries(id)?
                    .iter()
                    .map(|(n, &c)| format!("{n}:{}", if self.is_dir(c) { 'd' } else { 'f' }))
                    .collect();
                Ok(Value::Names(names))
            }
            _ => unreachable!("not a model operation: {op:?}"),
        }
    }

    fn rename(&mut self, from: &str, to: &str, mode: Mode) -> Result<(), Errno> {
        let (p, name) = self.resolve_parent(from)?;
        let (np, newname) = self.resolve_parent(to)?;
        let src = *self.entries(p)?.get(name).ok_or(Errno::ENOENT)?;
        let dst = self.entries(np)?.get(newname).copied();
        let src_dir = self.is_dir(src);
        if mode == Mode::Exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            let dst_dir = self.is_dir(dst);
            if (src_dir && self.is_ancestor(src, np)) || (dst_dir && self.is_ancestor(dst, p)) {
                return Err(Errno::EINVAL);
            }
            self.entries_mut(p).insert(name.to_string(), dst);
            self.entries_mut(np).insert(newname.to_string(), src);
            self.set_parent(src, np);
            self.set_parent(dst, p);
            return Ok(());
        }
        // Moving a directory under itself. (Through the kernel, the VFS checks NOREPLACE
        // before this and answers EEXIST; rawfs is not asked.)
        if src_dir && self.is_ancestor(src, np) {
            return Err(Errno::EINVAL);
        }
        if let Some(dst) = dst {
            if mode == Mode::NoReplace {
                return Err(Errno::EEXIST);
            }
            if dst == src {
                return Ok(());
            }
            match (src_dir, self.is_dir(dst)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(dst)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            // ext4's auto_da_alloc: the data of a file that replaces another goes first.
            if self.ext4 && !src_dir {
                self.data_durable(src);
            }
        }
        self.entries_mut(p).remove(name);
        self.entries_mut(np).insert(newname.to_string(), src);
        self.set_parent(src, np);
        Ok(())
    }

    /// Every path with its stat and file contents.
    fn tree(&self) -> Tree {
        let mut out = BTreeMap::new();
        let mut todo = vec![(".".to_string(), 0usize)];
        while let Some((path, id)) = todo.pop() {
            let data = match &self.nodes[&id] {
                MNode::File { data, .. } => Some(Bytes(data.clone())),
                MNode::Dir { entries, .. } => {
                    for (n, &c) in entries {
                        todo.push((join(&path, n), c));
                    }
                    None
                }
            };
            out.insert(path, (self.stat(id), data));
        }
        out
    }

    fn pages(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                MNode::File { pages, .. } => pages.len() as u64,
                MNode::Dir { .. } => 0,
            })
            .sum()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Runs ops on an [`Fs`] the way the kernel would: path walks by lookup (each reference
/// forgotten right away), files opened, used and released.
struct FsDriver {
    fs: Fs,
    /// Open descriptors: slot -> (handle, inode, opened for writing). Like the kernel, the
    /// driver holds a lookup reference on the inode while it is open.
    slots: std::cell::RefCell<BTreeMap<u8, (u64, u64, bool)>>,
    /// What the last power cut reported lost.
    losses: std::cell::RefCell<Option<Losses>>,
}

fn fs_stat(a: &rawfs::fs::Attr) -> Stat {
    let kind = match a.kind {
        Kind::File => 'f',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        _ => '?',
    };
    Stat {
        kind,
        perm: u32::from(a.perm),
        nlink: u64::from(a.nlink),
        size: a.size,
        blocks: (kind == 'f').then_some(a.blocks as i64),
        uid: a.uid,
        gid: a.gid,
    }
}

impl FsDriver {
    fn new() -> FsDriver {
        FsDriver::with(Persistence::Strict)
    }

    fn with(model: Persistence) -> FsDriver {
        FsDriver {
            fs: Fs::new(FsOptions {
                size_limit: None,
                root_uid: 0,
                root_gid: 0,
                root_perm: 0o755,
                model,
                // Every step runs as uid 0, privileged without /proc.
                permissions: Some(rawfs::fs::perm::ids_only),
            }),
            slots: Default::default(),
            losses: Default::default(),
        }
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<u64, Errno> {
        let a = self.fs.lookup(&ROOT_CALLER, parent, OsStr::new(name))?;
        self.fs.forget(a.ino, 1);
        Ok(a.ino)
    }

    fn resolve(&self, path: &str) -> Result<u64, Errno> {
        if path == "." {
            return Ok(ROOT);
        }
        let mut ino = ROOT;
        for c in path.split('/') {
            ino = self.lookup(ino, c)?;
        }
        Ok(ino)
    }

    fn resolve_parent<'p>(&self, path: &'p str) -> Result<(u64, &'p OsStr), Errno> {
        let (dir, name) = split(path);
        let ino = self.resolve(dir)?;
        // The kernel's path walk rejects a parent that is not a directory.
        if self.fs.getattr(ino)?.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok((ino, OsStr::new(name)))
    }

    fn with_open<T>(
        &self,
        ino: u64,
        flags: i32,
        f: impl FnOnce(u64) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let fh = self.fs.open(&ROOT_CALLER, ino, flags)?;
        let r = f(fh);
        self.fs.release(fh).expect("release");
        r
    }

    fn readdir(&self, ino: u64) -> Result<Vec<String>, Errno> {
        let fh = self.fs.opendir(&ROOT_CALLER, ino, libc::O_RDONLY)?;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let batch = self.fs.readdir(fh, offset)?;
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            for e in batch {
                let name = e.name.to_string_lossy().into_owned();
                if name != "." && name != ".." {
                    // The kind readdir reports must be the node's.
                    let kind = self.fs.getattr(e.ino)?.kind;
                    assert_eq!(e.kind, kind, "readdir kind of {name}");
                    let k = if kind == Kind::Dir { 'd' } else { 'f' };
                    names.push(format!("{name}:{k}"));
                }
            }
        }
        self.fs.releasedir(fh).expect("releasedir");
        names.sort();
        Ok(names)
    }

    fn slot(&self, slot: u8) -> Result<(u64, u64, bool), Errno> {
        self.slots.borrow().get(&slot).copied().ok_or(Errno::EBADF)
    }

    fn close(&self, slot: u8) -> Result<(), Errno> {
        let (fh, ino, _) = self.slots.borrow_mut().remove(&slot).ok_or(Errno::EBADF)?;
        self.fs.release(fh)?;
        self.fs.forget(ino, 1);
        Ok(())
    }

    fn apply(&self, op: &Op) -> Result<Value, Errno> {
        let c = &ROOT_CALLER;
        match *op {
            Op::Open { slot, path, write } => {
                // Keep the reference the path walk takes, as the kernel does for an open file.
                let (dir, name) = split(path);
                let ino = self
                    .fs
                    .lookup(&ROOT_CALLER, self.resolve(dir)?, OsStr::new(name))?
                    .ino;
                let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
                let fh = match self.fs.open(&ROOT_CALLER, ino, flags) {
                    Ok(fh) => fh,
                    Err(e) => {
                        self.fs.forget(ino, 1);
                        return Err(e);
                    }
                };
                let _ = self.close(slot);
                self.slots.borrow_mut().insert(slot, (fh, ino, write));
                Ok(Value::Done)
            }
            Op::Close { slot } => self.close(slot).map(|()| Value::Done),
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let ino = self.resolve(path)?;
                let mode = match mode {
                    Falloc::Extend => Allocate::Extend,
                    Falloc::KeepSize => Allocate::KeepSize,
                    Falloc::PunchHole => Allocate::PunchHole,
                    Falloc::ZeroRange => unreachable!("not generated for the model"),
                };
                self.with_open(ino, libc::O_WRONLY, |fh| {
                    self.fs
                        .fallocate(&ROOT_CALLER, fh, offset, len, mode)
                        .map(|()| Value::Done)
                })
            }
            Op::FdWrite {
                slot,
                offset,
                len,
                seed,
            } => {
                let (fh, _, write) = self.slot(slot)?;
                // The VFS refuses a descriptor not open for writing.
                if !write {
                    return Err(Errno::EBADF);
                }
                let n = self.fs.write(c, fh, offset, &pattern(len, seed))?;
                Ok(Value::Count(u64::from(n)))
            }
            Op::FdRead { slot, offset, len } => {
                let (fh, ino, _) = self.slot(slot)?;
                // The VFS refuses to read a directory.
                if self.fs.getattr(ino)?.kind == Kind::Dir {
                    return Err(Errno::EISDIR);
                }
                Ok(Value::Bytes(Bytes(self.fs.read(fh, offset, len as u32)?)))
            }
            Op::FdStat { slot } => {
                let (_, ino, _) = self.slot(slot)?;
                Ok(Value::Stat(fs_stat(&self.fs.getattr(ino)?)))
            }
            Op::FdTruncate { slot, size } => {
                let (fh, ino, write) = self.slot(slot)?;
                // The VFS refuses ftruncate on a descriptor not open for writing.
                if !write {
                    return Err(Errno::EINVAL);
                }
                // ftruncate(2) names the handle (FATTR_FH), and one from before a power cut
                // must fail. Fs::setattr takes no handle: the caller asks about it first.
                self.fs.handle_flags(fh)?;
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.fs
                    .setattr(&ROOT_CALLER, ino, &set)
                    .map(|_| Value::Done)
            }
            Op::Chmod { path, mode } => {
                let ino = self.resolve(path)?;
                let set = SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                };
                self.fs
                    .setattr(&ROOT_CALLER, ino, &set)
                    .map(|_| Value::Done)
            }
            Op::Fsync { path } => {
                let ino = self.resolve(path)?;
                let fh = if self.fs.getattr(ino)?.kind == Kind::Dir {
                    self.fs.opendir(&ROOT_CALLER, ino, libc::O_RDONLY)?
                } else {
                    self.fs.open(&ROOT_CALLER, ino, libc::O_RDONLY)?
                };
                let r = self.fs.fsync(fh, false);
                self.fs.release(fh).expect("release");
                r.map(|()| Value::Done)
            }
            Op::FdFsync { slot, datasync } => {
                let (fh, _, _) = self.slot(slot)?;
                self.fs.fsync(fh, datasync).map(|()| Value::Done)
            }
            Op::Crash => {
                let crashed = self.fs.crash(CrashOptions::default());
                *self.losses.borrow_mut() = Some(crashed.losses);
                Ok(Value::Done)
            }
            Op::Mkdir { path, mode } => {
                let (p, name) = self.resolve_parent(path)?;
                let a = self.fs.mkdir(c, p, name, mode)?;
                self.fs.forget(a.ino, 1);
                Ok(Value::Done)
            }
            Op::Rmdir { path } => {
                let (p, name) = self.resolve_parent(path)?;
                self.fs.rmdir(&ROOT_CALLER, p, name).map(|_| Value::Done)
            }
            Op::Create {
                path,
                mode,
                excl,
                trunc,
            } => {
                let (p, name) = self.resolve_parent(path)?;
                let mut flags = libc::O_CREAT | libc::O_WRONLY;
                if excl {
                    flags |= libc::O_EXCL;
                }
                if trunc {
                    flags |= libc::O_TRUNC;
                }
                let (a, fh) = self.fs.create(c, p, name, mode, flags)?;
                self.fs.release(fh).expect("release");
                self.fs.forget(a.ino, 1);
                Ok(Value::Done)
            }
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => {
                let ino = self.resolve(path)?;
                self.with_open(ino, libc::O_WRONLY, |fh| {
                    let n = self.fs.write(c, fh, offset, &pattern(len, seed))?;
                    Ok(Value::Count(u64::from(n)))
                })
            }
            Op::Append { path, len, seed } => {
                let ino = self.resolve(path)?;
                self.with_open(ino, libc::O_WRONLY | libc::O_APPEND, |fh| {
                    let n = self.fs.write(c, fh, 0, &pattern(len, seed))?;
                    Ok(Value::Count(u64::from(n)))
                })
            }
            Op::Read { path, offset, len } => {
                let ino = self.resolve(path)?;
                self.with_open(ino, libc::O_RDONLY, |fh| {
                    let d = self.fs.read(fh, offset, len as u32)?;
                    Ok(Value::Bytes(Bytes(d)))
                })
            }
            Op::Truncate { path, size } => {
                let ino = self.resolve(path)?;
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.fs
                    .setattr(&ROOT_CALLER, ino, &set)
                    .map(|_| Value::Done)
            }
            Op::Unlink { path } => {
                let (p, name) = self.resolve_parent(path)?;
                self.fs.unlink(&ROOT_CALLER, p, name).map(|_| Value::Done)
            }
            Op::Rename { from, to, mode } => {
                let (p, name) = self.resolve_parent(from)?;
                let (np, newname) = self.resolve_parent(to)?;
                let mode = match mode {
                    Mode::Plain => RenameMode::Replace,
                    Mode::NoReplace => RenameMode::NoReplace,
                    Mode::Exchange => RenameMode::Exchange,
                };
                self.fs
                    .rename(&ROOT_CALLER, p, name, np, newname, mode)
                    .map(|_| Value::Done)
            }
            Op::Link { from, to } => {
                let ino = self.resolve(from)?;
                let (p, name) = self.resolve_parent(to)?;
                let a = self.fs.link(&ROOT_CALLER, ino, p, name)?;
                self.fs.forget(a.ino, 1);
                Ok(Value::Done)
            }
            Op::Stat { path, .. } => {
                let ino = self.resolve(path)?;
                Ok(Value::Stat(fs_stat(&self.fs.getattr(ino)?)))
            }
            Op::Readdir { path } => {
                let ino = self.resolve(path)?;
                self.readdir(ino).map(Value::Names)
            }
            _ => unreachable!("not a model operation: {op:?}"),
        }
    }

    fn tree(&self) -> Tree {
        let mut out = BTreeMap::new();
        let mut todo = vec![(".".to_string(), ROOT)];
        while let Some((path, ino)) = todo.pop() {
            // The path the trace gives a node must lead back to it.
            let traced = self.fs.path(ino).expect("a reachable node has a path");
            let back = match traced.trim_start_matches('/') {
                "" => Ok(ROOT),
                rel => self.resolve(rel),
            };
            assert_eq!(
                back,
                Ok(ino),
                "Fs::path({ino}) is {traced:?}; it is reached as {path}"
            );
            let a = self.fs.getattr(ino).expect("getattr of a reachable node");
            let st = fs_stat(&a);
            let data = if a.kind == Kind::Dir {
                for entry in self.readdir(ino).expect("readdir") {
                    let (name, _) = entry.rsplit_once(':').expect("name:kind");
                    let child = self.lookup(ino, name).expect("lookup of a listed name");
                    todo.push((join(&path, name), child));
                }
                None
            } else {
                let d = self
                    .with_open(ino, libc::O_RDONLY, |fh| self.fs.read(fh, 0, u32::MAX))
                    .expect("read a file");
                Some(Bytes(d))
            };
            out.insert(path, (st, data));
        }
        out
    }
}

/// Runs `script` on a fresh [`Fs`] and a fresh model, comparing each step's outcome, then
/// the whole tree, the inode count and the space used.
fn check_model(script: &[Op]) -> Result<(), String> {
    check_model_under(Persistence::Strict, script)
}

/// [`check_model`] under a persistence model.
fn check_model_under(persistence: Persistence, script: &[Op]) -> Result<(), String> {
    let fs = FsDriver::with(persistence);
    let mut model = Model::with(persistence);
    // After the script, every descriptor is closed: orphans must go.
    let close_all: Vec<Op> = (0..3).map(|slot| Op::Close { slot }).collect();
    let mut before = model.tree();
    for (i, op) in script.iter().chain(&close_all).enumerate() {
        let got = fs.apply(op);
        let want = model.apply(op);
        let fail = |what: String| {
            format!(
                "{persistence}, step {i}: {op:?}\n{what}\nscript (then closing every slot):\n{}",
                listing(script, Some(i))
            )
        };
        if got != want {
            return Err(fail(format!(
                "  model: {}\n  rawfs: {}",
                show(&want),
                show(&got)
            )));
        }
        let (gt, wt) = (fs.tree(), model.tree());
        // A power cut that changed what the tree shows must have said what it lost (pages
        // allocated past the end of a file aside: no byte or size changes with them).
        if let Some(losses) = fs.losses.take() {
            let shown = |t: &Tree| -> Tree {
                t.iter()
                    .map(|(k, (st, data))| {
                        let st = Stat {
                            blocks: None,
                            ..*st
                        };
                        (k.clone(), (st, data.clone()))
                    })
                    .collect()
            };
            let before = shown(&before);
            if losses.is_empty() && shown(&wt) != before {
                let mut diff = String::new();
                for k in before.keys().chain(wt.keys()).collect::<BTreeSet<_>>() {
                    if before.get(k) != wt.get(k) {
                        diff.push_str(&format!(
                            "  {k}:\n    before: {:?}\n    after: {:?}\n",
                            before.get(k),
                            wt.get(k)
                        ));
                    }
                }
                return Err(fail(format!("the crash reported no loss, but:\n{diff}")));
            }
        }
        if gt != wt {
            let mut diff = String::new();
            for k in gt.keys().chain(wt.keys()).collect::<BTreeSet<_>>() {
                if gt.get(k) != wt.get(k) {
                    diff.push_str(&format!(
                        "  {k}:\n    model: {:?}\n    rawfs: {:?}\n",
                        wt.get(k),
                        gt.get(k)
                    ));
                }
            }
            return Err(fail(format!("trees differ after the step:\n{diff}")));
        }
        let (inodes, want_inodes) = (fs.fs.inode_count(), model.nodes.len());
        if inodes != want_inodes {
            return Err(fail(format!(
                "{inodes} live inodes, the model has {want_inodes}"
            )));
        }
        let (bytes, want_bytes) = (fs.fs.bytes_used(), model.pages() * PAGE);
        if bytes != want_bytes {
            return Err(fail(format!(
                "{bytes} bytes in use, the model has {want_bytes}"
            )));
        }
        before = wt;
    }
    Ok(())
}

fn show(r: &Result<Value, Errno>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({e})"),
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fs_matches_model(persistence in persistence(), ops in script(false, 1..40)) {
        check_model_under(persistence, &ops).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn crashes_match_model(
        persistence in persistence(),
        ops in script_of(false, 4, crash_op().boxed(), 1..30),
    ) {
        check_model_under(persistence, &ops).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn model_check_can_fail() {
    // The comparisons check_model makes must see a difference between the tree and a model
    // that is wrong on purpose (one byte of a file changed behind its back): in the whole
    // tree, and in a step's outcome.
    let fs = FsDriver::new();
    let mut model = Model::new();
    let script = [
        Op::Create {
            path: "a",
            mode: 0o644,
            excl: false,
            trunc: false,
        },
        Op::Write {
            path: "a",
            offset: 0,
            len: 3,
            seed: 1,
        },
    ];
    for op in &script {
        assert_eq!(fs.apply(op), model.apply(op));
    }
    model.file(1).unwrap().0[1] ^= 1;
    assert_ne!(fs.tree(), model.tree());
    let read = Op::Read {
        path: "a",
        offset: 0,
        len: 10,
    };
    assert_ne!(fs.apply(&read), model.apply(&read));
}

#[test]
fn model_crash_check_can_fail() {
    // The same for power cuts: a sync the model is not told about must show after a crash,
    // in the tree (the file keeps its data in rawfs, not in the model) and in a stale
    // descriptor (one the model alone has seen a crash for).
    let fs = FsDriver::new();
    let mut model = Model::new();
    let script = [
        Op::Create {
            path: "a",
            mode: 0o644,
            excl: false,
            trunc: false,
        },
        Op::Write {
            path: "a",
            offset: 0,
            len: 3,
            seed: 1,
        },
        Op::Fsync { path: "." },
        Op::Open {
            slot: 0,
            path: "a",
            write: false,
        },
    ];
    for op in &script {
        assert_eq!(fs.apply(op), model.apply(op));
    }
    assert_eq!(fs.apply(&Op::Fsync { path: "a" }), Ok(Value::Done));
    assert_eq!(fs.apply(&Op::Crash), model.apply(&Op::Crash));
    assert_eq!(fs.tree().into_keys().collect::<Vec<_>>(), [".", "a"]);
    assert_ne!(fs.tree(), model.tree());
    let read = Op::FdRead {
        slot: 0,
        offset: 0,
        len: 10,
    };
    assert_eq!(model.apply(&read), Err(Errno::EIO));
    let open = Op::Open {
        slot: 1,
        path: "a",
        write: false,
    };
    assert_eq!(fs.apply(&open), model.apply(&open));
    assert_eq!(model.apply(&Op::Crash), Ok(Value::Done));
    let read = Op::FdRead {
        slot: 1,
        offset: 0,
        len: 10,
    };
    assert_ne!(fs.apply(&read), model.apply(&read));
}

/// Runs `script` on a fresh [`Fs`] (after checking it against the model) and returns the
/// tree's paths.
fn paths_after(script: &[Op]) -> Vec<String> {
    frozen(script);
    let fs = FsDriver::new();
    for op in script {
        let _ = fs.apply(op);
    }
    fs.tree().into_keys().collect()
}

/// Both sides of a directory's rename survive a crash: the old directory was made durable
/// with the name, then the new one. The walk meets `d2` first (pushed last, popped first), so
/// the directory keeps its new name `d2/x`.
#[test]
fn crash_keeps_a_directory_named_twice_where_the_walk_meets_it_first() {
    let script = [
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d2",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d1/d1",
            mode: 0o700,
        },
        Op::Fsync { path: "d1" },
        Op::Fsync { path: "." },
        Op::Rename {
            from: "d1/d1",
            to: "d2/d1",
            mode: Mode::Plain,
        },
        Op::Fsync { path: "d2" },
        Op::Crash,
    ];
    assert_eq!(paths_after(&script), [".", "d1", "d2", "d2/d1"]);
}

/// The same the other way round: the directory moves from `d2` to `d1`, and `d1` is fsynced
/// after the rename. The walk still meets `d2` first, so the directory is back under its old
/// name, although the program made the new one durable. (rawfs's rule, specified here as it
/// is; the newer durable name would be the better choice.)
#[test]
fn crash_keeps_a_directory_named_twice_under_its_old_name_if_the_walk_meets_that_first() {
    let script = [
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d2",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d2/d1",
            mode: 0o700,
        },
        Op::Fsync { path: "d2" },
        Op::Fsync { path: "." },
        Op::Rename {
            from: "d2/d1",
            to: "d1/d1",
            mode: Mode::Plain,
        },
        Op::Fsync { path: "d1" },
        Op::Crash,
    ];
    assert_eq!(paths_after(&script), [".", "d1", "d2", "d2/d1"]);
}

/// Durable entries can form a cycle (`d1` names `d2`, `d2` names `d1`) that no live tree
/// ever had: the walk meets `d1` from the root and drops `d2`'s entry for it.
#[test]
fn crash_breaks_a_cycle_of_durable_entries() {
    let script = [
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d1/d2",
            mode: 0o755,
        },
        Op::Fsync { path: "d1" },
        Op::Fsync { path: "." },
        Op::Rename {
            from: "d1/d2",
            to: "d2",
            mode: Mode::Plain,
        },
        Op::Rename {
            from: "d1",
            to: "d2/d1",
            mode: Mode::Plain,
        },
        Op::Fsync { path: "d2" },
        Op::Crash,
    ];
    assert_eq!(paths_after(&script), [".", "d1", "d1/d2"]);
}

// ---------------------------------------------------------------------------------------------
// Frozen failures: each was found (and shrunk) by one of the property tests above.

fn frozen(script: &[Op]) {
    if let Err(report) = check_model(script) {
        panic!("{report}");
    }
}

/// rawfs bug, fixed: a zero-length write past the end of file grew the file to the offset
/// (and stamped mtime). Not reachable through the kernel, which sends no empty writes, but
/// `Fs::write` is an API of its own. Fixed in `FileData::write` and `Fs::write`.
#[test]
fn regression_empty_write_past_eof_changes_nothing() {
    frozen(&[
        Op::Create {
            path: "b",
            mode: 0o755,
            excl: false,
            trunc: false,
        },
        Op::Write {
            path: "b",
            offset: 1,
            len: 0,
            seed: 0,
        },
    ]);
}

/// rawfs bug, fixed: a crash that undid a hole punch brought the old bytes back but reported
/// no loss, so `rawfs crash --dry-run` said a file that was not durable was. Found by the
/// check that a crash which changes the tree reports a loss (its first find was pages
/// allocated past the end, which change no byte and are not reported; reasoning from that
/// one gave this and the next). Fixed in `durable::plan`: a lost hole punch reports the live
/// bytes it zeroed, a lost truncate those it cut and the file grew back over.
#[test]
fn regression_a_lost_hole_punch_is_reported() {
    frozen(&[
        Op::Create {
            path: "a",
            mode: 0o644,
            excl: true,
            trunc: false,
        },
        Op::Write {
            path: "a",
            offset: 0,
            len: 100,
            seed: 1,
        },
        Op::Fsync { path: "a" },
        Op::Fsync { path: "." },
        Op::Fallocate {
            path: "a",
            mode: Falloc::PunchHole,
            offset: 0,
            len: 4096,
        },
        Op::Crash,
    ]);
}

/// rawfs bug, fixed: see the one above.
#[test]
fn regression_a_lost_truncate_grown_back_is_reported() {
    frozen(&[
        Op::Create {
            path: "a",
            mode: 0o644,
            excl: true,
            trunc: false,
        },
        Op::Write {
            path: "a",
            offset: 0,
            len: 100,
            seed: 1,
        },
        Op::Fsync { path: "a" },
        Op::Fsync { path: "." },
        Op::Truncate { path: "a", size: 1 },
        Op::Truncate {
            path: "a",
            size: 100,
        },
        Op::Crash,
    ]);
}

/// Model bug, fixed: a directory made in a setgid directory inherits the setgid bit.
#[test]
fn regression_mkdir_in_setgid_dir_is_setgid() {
    frozen(&[
        Op::Mkdir {
            path: "d1",
            mode: 0o2755,
        },
        Op::Mkdir {
            path: "d1/a",
            mode: 0o755,
        },
    ]);
}

/// Driver bug, fixed: a path whose parent is a regular file fails with ENOTDIR during the
/// path walk, before the other path of a rename is looked at.
#[test]
fn regression_rename_from_under_a_file_is_enotdir() {
    frozen(&[
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Create {
            path: "d1/d2",
            mode: 0o755,
            excl: false,
            trunc: false,
        },
        Op::Rename {
            from: "d1/d2/a",
            to: "d2/a",
            mode: Mode::Plain,
        },
    ]);
}

/// Model bug, fixed: an open directory kept itself alive but not its entries.
#[test]
fn regression_open_dir_keeps_its_entries() {
    frozen(&[
        Op::Mkdir {
            path: "d1",
            mode: 0o755,
        },
        Op::Mkdir {
            path: "d1/d2",
            mode: 0o755,
        },
        Op::Open {
            slot: 0,
            path: "d1",
            write: false,
        },
    ]);
}

/// Through the kernel: truncate(2) of an empty file to size 0. tmpfs leaves the times alone
/// (it has no page to truncate), rawfs updates them. What the times of a same-size truncate(2)
/// should do is unsettled (see `Tree::run`): they are not compared, the rest of the step is.
#[test]
fn regression_truncate_to_same_size() {
    check_mounted(&[
        Op::Create {
            path: "a",
            mode: 0o755,
            excl: false,
            trunc: false,
        },
        Op::Truncate { path: "a", size: 0 },
    ]);
}

/// rawfs bug, fixed (found reading `FileData::write` while freezing the one above): a write
/// that found no space for its first page failed with ENOSPC but still grew the file to the
/// write's offset.
#[test]
fn regression_enospc_write_does_not_grow_the_file() {
    let fs = Fs::new(FsOptions {
        size_limit: Some(PAGE),
        root_uid: 0,
        root_gid: 0,
        root_perm: 0o755,
        model: Default::default(),
        permissions: Some(rawfs::fs::perm::ids_only),
    });
    let mk = |name: &str| {
        let (a, fh) = fs
            .create(
                &ROOT_CALLER,
                ROOT,
                OsStr::new(name),
                0o644,
                libc::O_RDWR | libc::O_CREAT,
            )
            .unwrap();
        (a.ino, fh)
    };
    let (_, full) = mk("full");
    assert_eq!(fs.write(&ROOT_CALLER, full, 0, &[1; 10]), Ok(10));
    let (ino, fh) = mk("empty");
    let before = fs.getattr(ino).unwrap();
    assert_eq!(
        fs.write(&ROOT_CALLER, fh, 50_000, &[2; 10]),
        Err(Errno::ENOSPC)
    );
    let after = fs.getattr(ino).unwrap();
    assert_eq!((after.size, after.blocks), (0, 0));
    assert_eq!(after.mtime, before.mtime, "a failed write changes no time");
    // And an empty write is a no-op too, times included.
    assert_eq!(fs.write(&ROOT_CALLER, fh, 70_000, &[]), Ok(0));
    assert_eq!(fs.getattr(ino).unwrap(), after);
}
