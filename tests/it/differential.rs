//! Differential tests: one script of file system operations runs through real system calls,
//! step by step, on a private tmpfs and on a rawfs mount. Every step's outcome must be the
//! same on both: the value (stat fields, bytes read, directory names, link targets, xattr
//! values) or the errno, plus whether the step changed the mtime and ctime of each node it
//! names (and of their parent directories). After the last step, both trees are walked and
//! compared whole. Inode numbers and absolute timestamps are never compared.
//!
//! Time changes are observed robustly: before each step, every node it names (and each
//! parent) gets its mtime set to an old fixed time, and its ctime is read back; after the
//! step, "mtime changed" means "no longer the old time" and "ctime changed" means "differs
//! from the value read". On tmpfs the step waits for the coarse clock first (see
//! [`wait_for_coarse_clock`]).
//!
//! Descriptors can be held open across steps (`Op::Open` and the `Op::Fd*` steps), so unlinked
//! and replaced open files are covered too.
//!
//! Known differences that are not compared, with the reason at the place they are skipped:
//! the times of a truncate(2) to the current size (see [`Tree::run`]), st_blocks of anything
//! but regular files (tmpfs gives a long symlink target a page, see [`Stat`]).
//!
//! [`model`](crate::model) reuses the interpreter ([`Op`], [`differential`], [`Tmpfs`]) to
//! compare random scripts. With `DIFF_TRACE` set, every step's outcomes are printed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rawfs::Errno;

use crate::common::cpath;

// ---------------------------------------------------------------------------------------------
// Scripts

/// How a rename treats its target (renameat2 flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// rename(2): replace the target.
    Plain,
    /// `RENAME_NOREPLACE`.
    NoReplace,
    /// `RENAME_EXCHANGE`.
    Exchange,
}

/// fallocate(2) modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Falloc {
    /// 0: allocate and extend.
    Extend,
    /// `FALLOC_FL_KEEP_SIZE`.
    KeepSize,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE` (neither tmpfs nor rawfs supports it).
    ZeroRange,
}

/// setxattr(2) flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XFlags {
    /// 0: create or replace.
    Any,
    /// `XATTR_CREATE`.
    Create,
    /// `XATTR_REPLACE`.
    Replace,
}

/// One step of a script. Paths are relative to the script's root directory and may contain
/// these tokens: `<255>` (a 255-byte name), `<256>` (a name one byte too long); as symlink
/// targets also `<4095>` (the longest target) and `<4096>` (one byte too long).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// mkdir(2).
    Mkdir { path: &'static str, mode: u32 },
    /// rmdir(2).
    Rmdir { path: &'static str },
    /// mknod(2) of a fifo or a socket (opens below use O_NONBLOCK, so they never block).
    Mknod { path: &'static str, socket: bool },
    /// open(2) with `O_CREAT | O_WRONLY` (and `O_EXCL`, `O_TRUNC` if asked), then close.
    Create {
        path: &'static str,
        mode: u32,
        excl: bool,
        trunc: bool,
    },
    /// open(2) `O_WRONLY`, pwrite(2) `len` bytes of [`pattern`]`(seed)` at `offset`, close.
    Write {
        path: &'static str,
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// open(2) `O_WRONLY | O_APPEND`, write(2), close.
    Append {
        path: &'static str,
        len: usize,
        seed: u8,
    },
    /// open(2) `O_RDONLY`, pread(2) up to `len` bytes at `offset`, close.
    Read {
        path: &'static str,
        offset: u64,
        len: usize,
    },
    /// truncate(2).
    Truncate { path: &'static str, size: u64 },
    /// unlink(2).
    Unlink { path: &'static str },
    /// renameat2(2).
    Rename {
        from: &'static str,
        to: &'static str,
        mode: Mode,
    },
    /// link(2) (the link itself when `from` is a symlink).
    Link {
        from: &'static str,
        to: &'static str,
    },
    /// symlink(2): `path` pointing at `target`.
    Symlink {
        target: &'static str,
        path: &'static str,
    },
    /// readlink(2).
    Readlink { path: &'static str },
    /// lstat(2), or stat(2) with `follow`.
    Stat { path: &'static str, follow: bool },
    /// chmod(2) (follows symlinks).
    Chmod { path: &'static str, mode: u32 },
    /// lsetxattr(2).
    SetXattr {
        path: &'static str,
        name: &'static str,
        value: &'static str,
        flags: XFlags,
    },
    /// lgetxattr(2) with a buffer of `size` bytes (0 asks for the value's size).
    GetXattr {
        path: &'static str,
        name: &'static str,
        size: usize,
    },
    /// llistxattr(2): the names, sorted.
    ListXattr { path: &'static str },
    /// lremovexattr(2).
    RemoveXattr {
        path: &'static str,
        name: &'static str,
    },
    /// opendir/readdir: names and d_type, sorted, without "." and "..".
    Readdir { path: &'static str },
    /// open(2) `O_WRONLY`, fallocate(2), close.
    Fallocate {
        path: &'static str,
        mode: Falloc,
        offset: u64,
        len: u64,
    },
    /// utimensat(2) with `AT_SYMLINK_NOFOLLOW` to a fixed time (not "now").
    Utimens { path: &'static str },
    /// open(2) `O_RDWR` (or `O_RDONLY`) without `O_CREAT`, kept in descriptor slot `slot`
    /// (closing what the slot held). The `Fd*` steps use the slot; a script's descriptors
    /// stay open across other steps, so a file can be unlinked or replaced while open.
    Open {
        slot: u8,
        path: &'static str,
        write: bool,
    },
    /// close(2) of a slot (EBADF if it holds nothing).
    Close { slot: u8 },
    /// pwrite(2) through a slot.
    FdWrite {
        slot: u8,
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// pread(2) through a slot.
    FdRead { slot: u8, offset: u64, len: usize },
    /// fstat(2) of a slot.
    FdStat { slot: u8 },
    /// ftruncate(2) of a slot.
    FdTruncate { slot: u8, size: u64 },
    /// open(2) `O_RDONLY` (a directory too), fsync(2), close.
    Fsync { path: &'static str },
    /// fsync(2), or fdatasync(2) with `datasync`, of a slot.
    FdFsync { slot: u8, datasync: bool },
    /// A power cut: `Fs::crash` with the default options (every unsynced change lost). Not a
    /// system call: only the model test ([`crate::model`]) runs it, never through a kernel.
    Crash,
}

impl Op {
    /// The paths a step names; they and their parent directories are watched for time changes.
    /// The descriptor slot a step uses, if any.
    fn slot(&self) -> Option<u8> {
        match *self {
            Op::Open { slot, .. }
            | Op::Close { slot }
            | Op::FdWrite { slot, .. }
            | Op::FdRead { slot, .. }
            | Op::FdStat { slot }
            | Op::FdTruncate { slot, .. }
            | Op::FdFsync { slot, .. } => Some(slot),
            _ => None,
        }
    }

    fn paths(&self) -> Vec<&'static str> {
        match *self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Close { .. }
            | Op::FdWrite { .. }
            | Op::FdRead { .. }
            | Op::FdStat { .. }
            | Op::FdTruncate { .. }
            | Op::FdFsync { .. }
            | Op::Crash => vec![],
            Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Mknod { path, .. }
            | Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Read { path, .. }
            | Op::Truncate { path, .. }
            | Op::Unlink { path }
            | Op::Symlink { path, .. }
            | Op::Readlink { path }
            | Op::Stat { path, .. }
            | Op::Chmod { path, .. }
            | Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::ListXattr { path }
            | Op::RemoveXattr { path, .. }
            | Op::Readdir { path }
            | Op::Fallocate { path, .. }
            | Op::Utimens { path }
            | Op::Fsync { path }
            | Op::Open { path, .. } => vec![path],
        }
    }
}

/// Shorthands for hand-written scripts.
pub(crate) mod ops {
    use super::{Falloc, Mode, Op, XFlags};

    pub(crate) fn mkdir(path: &'static str) -> Op {
        Op::Mkdir { path, mode: 0o755 }
    }
    pub(crate) fn rmdir(path: &'static str) -> Op {
        Op::Rmdir { path }
    }
    pub(crate) fn create(path: &'static str) -> Op {
        Op::Create {
            path,
            mode: 0o644,
            excl: false,
            trunc: false,
        }
    }
    pub(crate) fn create_excl(path: &'static str) -> Op {
        Op::Create {
            path,
            mode: 0o644,
            excl: true,
            trunc: false,
        }
    }
    pub(crate) fn create_trunc(path: &'static str) -> Op {
        Op::Create {
            path,
            mode: 0o644,
            excl: false,
            trunc: true,
        }
    }
    pub(crate) fn write(path: &'static str, offset: u64, len: usize) -> Op {
        Op::Write {
            path,
            offset,
            len,
            seed: (offset as usize + len) as u8,
        }
    }
    pub(crate) fn append(path: &'static str, len: usize) -> Op {
        Op::Append { path, len, seed: 7 }
    }
    pub(crate) fn read(path: &'static str, offset: u64, len: usize) -> Op {
        Op::Read { path, offset, len }
    }
    pub(crate) fn truncate(path: &'static str, size: u64) -> Op {
        Op::Truncate { path, size }
    }
    pub(crate) fn unlink(path: &'static str) -> Op {
        Op::Unlink { path }
    }
    pub(crate) fn rename(from: &'static str, to: &'static str) -> Op {
        Op::Rename {
            from,
            to,
            mode: Mode::Plain,
        }
    }
    pub(crate) fn rename_noreplace(from: &'static str, to: &'static str) -> Op {
        Op::Rename {
            from,
            to,
            mode: Mode::NoReplace,
        }
    }
    pub(crate) fn exchange(from: &'static str, to: &'static str) -> Op {
        Op::Rename {
            from,
            to,
            mode: Mode::Exchange,
        }
    }
    pub(crate) fn link(from: &'static str, to: &'static str) -> Op {
        Op::Link { from, to }
    }
    pub(crate) fn symlink(target: &'static str, path: &'static str) -> Op {
        Op::Symlink { target, path }
    }
    pub(crate) fn readlink(path: &'static str) -> Op {
        Op::Readlink { path }
    }
    pub(crate) fn lstat(path: &'static str) -> Op {
        Op::Stat {
            path,
            follow: false,
        }
    }
    pub(crate) fn stat(path: &'static str) -> Op {
        Op::Stat { path, follow: true }
    }
    pub(crate) fn chmod(path: &'static str, mode: u32) -> Op {
        Op::Chmod { path, mode }
    }
    pub(crate) fn setxattr(
        path: &'static str,
        name: &'static str,
        value: &'static str,
        flags: XFlags,
    ) -> Op {
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        }
    }
    pub(crate) fn getxattr(path: &'static str, name: &'static str, size: usize) -> Op {
        Op::GetXattr { path, name, size }
    }
    pub(crate) fn listxattr(path: &'static str) -> Op {
        Op::ListXattr { path }
    }
    pub(crate) fn removexattr(path: &'static str, name: &'static str) -> Op {
        Op::RemoveXattr { path, name }
    }
    pub(crate) fn readdir(path: &'static str) -> Op {
        Op::Readdir { path }
    }
    pub(crate) fn fallocate(path: &'static str, mode: Falloc, offset: u64, len: u64) -> Op {
        Op::Fallocate {
            path,
            mode,
            offset,
            len,
        }
    }
    pub(crate) fn utimens(path: &'static str) -> Op {
        Op::Utimens { path }
    }
    pub(crate) fn open(slot: u8, path: &'static str, write: bool) -> Op {
        Op::Open { slot, path, write }
    }
    pub(crate) fn close(slot: u8) -> Op {
        Op::Close { slot }
    }
    pub(crate) fn fd_write(slot: u8, offset: u64, len: usize) -> Op {
        Op::FdWrite {
            slot,
            offset,
            len,
            seed: 99,
        }
    }
    pub(crate) fn fd_read(slot: u8, offset: u64, len: usize) -> Op {
        Op::FdRead { slot, offset, len }
    }
    pub(crate) fn fstat(slot: u8) -> Op {
        Op::FdStat { slot }
    }
    pub(crate) fn ftruncate(slot: u8, size: u64) -> Op {
        Op::FdTruncate { slot, size }
    }
}

/// The bytes a write with `seed` puts at each position: never zero, so holes and misplaced
/// data show.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + usize::from(seed) * 7) % 251 + 1) as u8)
        .collect()
}

/// A path or target with its tokens expanded.
fn expand(s: &str) -> Vec<u8> {
    let mut s = s.to_string();
    for (token, byte, len) in [
        ("<255>", "n", 255),
        ("<256>", "n", 256),
        ("<4095>", "t", 4095),
        ("<4096>", "t", 4096),
    ] {
        s = s.replace(token, &byte.repeat(len));
    }
    s.into_bytes()
}

/// `root` joined with a script path ("." is the root itself).
fn full(root: &Path, rel: &str) -> CString {
    let mut p = root.as_os_str().as_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(&expand(rel));
    CString::new(p).expect("no NUL in script paths")
}

/// The lexical parent of a script path ("." for a top-level name).
fn parent(rel: &str) -> &str {
    let rel = rel.trim_end_matches('/');
    match rel.rfind('/') {
        Some(i) => &rel[..i],
        None => ".",
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes

/// File contents, printed as length, a hash and the first bytes instead of in full.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 24 {
            return write!(f, "{:?}", String::from_utf8_lossy(&self.0));
        }
        let hash = self.0.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        write!(
            f,
            "<{} bytes, fnv {hash:016x}, starting {:02x?}>",
            self.0.len(),
            &self.0[..8]
        )
    }
}

/// The stat(2) fields compared: no inode numbers, no timestamps.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// 'f', 'd', 'l', 'p' (fifo), 's' (socket), or '?' for other types.
    pub(crate) kind: char,
    pub(crate) perm: u32,
    pub(crate) nlink: u64,
    pub(crate) size: u64,
    /// st_blocks, for regular files only (tmpfs gives long symlinks a page, rawfs none).
    pub(crate) blocks: Option<i64>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl fmt::Debug for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04o} nlink={} size={}",
            self.kind, self.perm, self.nlink, self.size
        )?;
        if let Some(b) = self.blocks {
            write!(f, " blocks={b}")?;
        }
        write!(f, " {}:{}", self.uid, self.gid)
    }
}

fn kind_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

impl Stat {
    fn of(st: &libc::stat) -> Stat {
        let kind = kind_char(st.st_mode);
        Stat {
            kind,
            perm: st.st_mode & 0o7777,
            nlink: st.st_nlink,
            size: st.st_size as u64,
            blocks: (kind == 'f').then_some(st.st_blocks),
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

/// What a successful step gives back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// Nothing (mkdir, unlink, ...).
    Done,
    /// A byte count (write, getxattr size query).
    Count(u64),
    /// Bytes (read, readlink, getxattr).
    Bytes(Bytes),
    /// stat(2).
    Stat(Stat),
    /// Names (listxattr) or names with their d_type (readdir).
    Names(Vec<String>),
}

/// How a step changed a node it named, by the mtime and ctime observed around it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Still the same inode; did mtime / ctime change?
    Same { mtime: bool, ctime: bool },
    /// The name is gone, or now names another inode.
    Other,
}

impl fmt::Debug for Touch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Touch::Same { mtime, ctime } => write!(
                f,
                "{}{}",
                if *mtime { "m" } else { "-" },
                if *ctime { "c" } else { "-" }
            ),
            Touch::Other => f.write_str("gone/replaced"),
        }
    }
}

/// The outcome of one step.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) result: Result<Value, Errno>,
    /// For each watched path that existed before the step.
    pub(crate) touched: Vec<(String, Touch)>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(v) => write!(f, "Ok({v:?})")?,
            Err(e) => write!(f, "Err({e})")?,
        }
        write!(f, " times{{")?;
        for (i, (p, t)) in self.touched.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{p}: {t:?}")?;
        }
        write!(f, "}}")
    }
}

// ---------------------------------------------------------------------------------------------
// Running a step

fn last_errno() -> Errno {
    Errno::from_raw(crate::common::errno())
}

fn ok(r: libc::c_int) -> Result<Value, Errno> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(Value::Done)
    }
}

fn count(r: isize) -> Result<u64, Errno> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as u64)
    }
}

/// Opens `p`, runs `f` on the descriptor, closes it; a failed close fails the step.
fn with_fd(
    p: &CString,
    flags: libc::c_int,
    mode: u32,
    f: impl FnOnce(libc::c_int) -> Result<Value, Errno>,
) -> Result<Value, Errno> {
    // SAFETY: p is a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK, mode) };
    if fd < 0 {
        return Err(last_errno());
    }
    let r = f(fd);
    // SAFETY: fd was opened above and is closed once.
    let c = unsafe { libc::close(fd) };
    let closed = if c < 0 { Err(last_errno()) } else { Ok(()) };
    let v = r?;
    closed.map(|()| v)
}

fn lstat_raw(p: &CString, follow: bool) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: p is a valid C string and st a valid buffer.
    let r = unsafe {
        if follow {
            libc::stat(p.as_ptr(), &mut st)
        } else {
            libc::lstat(p.as_ptr(), &mut st)
        }
    };
    if r < 0 { Err(last_errno()) } else { Ok(st) }
}

/// The mtime every watched node is set to before a step.
const OLD_TIME: i64 = 1_000_000_000;
/// The time `Op::Utimens` sets.
const SET_TIME: i64 = 1_200_000_000;

fn utimens_at(p: &CString, sec: i64) -> libc::c_int {
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: p is a valid C string and times holds two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }
}

fn ctime(st: &libc::stat) -> (i64, i64) {
    (st.st_ctime, st.st_ctime_nsec)
}

/// Sets the mtime of each existing watched path to [`OLD_TIME`] and records its inode and
/// ctime (read after that utimensat, so any later change shows; tmpfs uses fine-grained
/// timestamps once a ctime has been read, and rawfs always does).
fn watch(root: &Path, op: &Op) -> Vec<(String, u64, (i64, i64))> {
    let mut names: Vec<&str> = Vec::new();
    for p in op.paths() {
        for q in [p, parent(p)] {
            if !names.contains(&q) {
                names.push(q);
            }
        }
    }
    let mut out = Vec::new();
    for name in names {
        let p = full(root, name);
        if lstat_raw(&p, false).is_err() || utimens_at(&p, OLD_TIME) < 0 {
            continue;
        }
        if let Ok(st) = lstat_raw(&p, false) {
            out.push((name.to_string(), st.st_ino, ctime(&st)));
        }
    }
    out
}

fn is_tmpfs(root: &Path) -> bool {
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and buffer.
    let r = unsafe { libc::statfs(cpath(root).as_ptr(), &mut sf) };
    r == 0 && sf.f_type == libc::TMPFS_MAGIC
}

/// Waits until the kernel's coarse clock is past `t`.
///
/// tmpfs stamps most changes with the coarse clock, refined only for the inode whose ctime was
/// read since its last change, and it gives a parent directory the child's new ctime. So a
/// directory whose ctime was itself set (by our utimensat) a moment ago from the fine clock
/// can get the very same ctime again from an unlink inside it, and the change would not show.
/// Once the coarse clock has passed every watched ctime, every new stamp is later than them.
fn wait_for_coarse_clock(t: (i64, i64)) {
    loop {
        // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: a valid clock id and buffer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
        if (now.tv_sec, now.tv_nsec) > t {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn touched(root: &Path, watched: Vec<(String, u64, (i64, i64))>) -> Vec<(String, Touch)> {
    watched
        .into_iter()
        .map(|(name, ino, ct)| {
            let t = match lstat_raw(&full(root, &name), false) {
                Ok(st) if st.st_ino == ino => Touch::Same {
                    mtime: st.st_mtime != OLD_TIME || st.st_mtime_nsec != 0,
                    ctime: ctime(&st) != ct,
                },
                _ => Touch::Other,
            };
            (name, t)
        })
        .collect()
}

/// A tree under test: its root directory and the descriptors a script holds open.
pub(crate) struct Tree {
    root: PathBuf,
    tmpfs: bool,
    fds: BTreeMap<u8, OwnedFd>,
}

impl Tree {
    pub(crate) fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_path_buf(),
            tmpfs: is_tmpfs(root),
            fds: BTreeMap::new(),
        }
    }

    /// Runs one step.
    pub(crate) fn run(&mut self, op: &Op) -> Step {
        let root = self.root.clone();
        let mut watched = watch(&root, op);
        // truncate(2) to the size a file already has: POSIX asks for new times only "if the
        // file size is changed" (ext4 leaves them alone); tmpfs updates them when the file has
        // a page allocated (its range truncation stamps the times) and not otherwise; rawfs
        // updates them always. No contract to hold rawfs to, so those times are not compared.
        // (ftruncate(2) always updates them on tmpfs; that is compared.)
        if let Op::Truncate { path, size } = *op {
            if lstat_raw(&full(&root, path), true).is_ok_and(|st| st.st_size as u64 == size) {
                watched.retain(|w| w.0 != path);
            }
        }
        // A descriptor the step uses is watched like a path, through futimens and fstat.
        let fd_watch = match (op, op.slot().and_then(|s| self.fds.get(&s))) {
            (Op::Open { .. } | Op::Close { .. }, _) | (_, None) => None,
            (_, Some(fd)) => watch_fd(fd.as_raw_fd()),
        };
        if self.tmpfs {
            let newest = watched.iter().map(|w| w.2).chain(fd_watch).max();
            if let Some(newest) = newest {
                wait_for_coarse_clock(newest);
            }
        }
        let result = self.execute(op);
        let mut touched = touched(&root, watched);
        if let (Some(before), Some(slot)) = (fd_watch, op.slot()) {
            if let Some(st) = self
                .fds
                .get(&slot)
                .and_then(|fd| fstat_raw(fd.as_raw_fd()).ok())
            {
                touched.push((
                    format!("#{slot}"),
                    Touch::Same {
                        mtime: st.st_mtime != OLD_TIME || st.st_mtime_nsec != 0,
                        ctime: ctime(&st) != before,
                    },
                ));
            }
        }
        Step { result, touched }
    }

    fn fd(&self, slot: u8) -> Result<libc::c_int, Errno> {
        self.fds
            .get(&slot)
            .map(|fd| fd.as_raw_fd())
            .ok_or(Errno::EBADF)
    }

    fn execute(&mut self, op: &Op) -> Result<Value, Errno> {
        // SAFETY (every block below): the descriptors are open, and the pointers are valid
        // buffers that live across the call, with the lengths passed.
        match *op {
            Op::Open { slot, path, write } => {
                let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
                let p = full(&self.root, path);
                let fd =
                    unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK) };
                if fd < 0 {
                    return Err(last_errno());
                }
                // SAFETY: fd was just opened and is owned by nothing else.
                self.fds.insert(slot, unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(Value::Done)
            }
            Op::Close { slot } => {
                let fd = self.fds.remove(&slot).ok_or(Errno::EBADF)?;
                ok(unsafe { libc::close(fd.into_raw_fd()) })
            }
            Op::FdWrite {
                slot,
                offset,
                len,
                seed,
            } => {
                let data = pattern(len, seed);
                let n = unsafe {
                    libc::pwrite(self.fd(slot)?, data.as_ptr().cast(), len, offset as i64)
                };
                count(n).map(Value::Count)
            }
            Op::FdRead { slot, offset, len } => {
                let mut buf = vec![0u8; len];
                let n = unsafe {
                    libc::pread(self.fd(slot)?, buf.as_mut_ptr().cast(), len, offset as i64)
                };
                buf.truncate(count(n)? as usize);
                Ok(Value::Bytes(Bytes(buf)))
            }
            Op::FdStat { slot } => fstat_raw(self.fd(slot)?).map(|st| Value::Stat(Stat::of(&st))),
            Op::FdTruncate { slot, size } => {
                ok(unsafe { libc::ftruncate(self.fd(slot)?, size as i64) })
            }
            Op::FdFsync { slot, datasync } => {
                let fd = self.fd(slot)?;
                ok(unsafe {
                    if datasync {
                        libc::fdatasync(fd)
                    } else {
                        libc::fsync(fd)
                    }
                })
            }
            _ => execute(&self.root, op),
        }
    }
}

fn fstat_raw(fd: libc::c_int) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        Err(last_errno())
    } else {
        Ok(st)
    }
}

/// Sets a descriptor's mtime to [`OLD_TIME`] and returns its ctime after that.
fn watch_fd(fd: libc::c_int) -> Option<(i64, i64)> {
    let t = libc::timespec {
        tv_sec: OLD_TIME,
        tv_nsec: 0,
    };
    // SAFETY: fd is open and times holds two timespecs.
    if unsafe { libc::futimens(fd, [t, t].as_ptr()) } < 0 {
        return None;
    }
    fstat_raw(fd).ok().map(|st| ctime(&st))
}

/// Runs a whole script on the tree under `root` (descriptors are closed at the end).
pub(crate) fn run_script(root: &Path, script: &[Op]) -> Vec<Step> {
    let mut tree = Tree::new(root);
    script.iter().map(|op| tree.run(op)).collect()
}

fn xattr_name(name: &str) -> CString {
    CString::new(name).expect("no NUL in xattr names")
}

/// Runs a step that names only paths.
fn execute(root: &Path, op: &Op) -> Result<Value, Errno> {
    let p = |rel: &str| full(root, rel);
    // SAFETY (every block below): the pointers are valid C strings and buffers that live
    // across the call, with the lengths passed.
    match *op {
        Op::Mkdir { path, mode } => ok(unsafe { libc::mkdir(p(path).as_ptr(), mode) }),
        Op::Rmdir { path } => ok(unsafe { libc::rmdir(p(path).as_ptr()) }),
        Op::Mknod { path, socket } => {
            let kind = if socket {
                libc::S_IFSOCK
            } else {
                libc::S_IFIFO
            };
            ok(unsafe { libc::mknod(p(path).as_ptr(), kind | 0o644, 0) })
        }
        Op::Create {
            path,
            mode,
            excl,
            trunc,
        } => {
            let mut flags = libc::O_CREAT | libc::O_WRONLY;
            if excl {
                flags |= libc::O_EXCL;
            }
            if trunc {
                flags |= libc::O_TRUNC;
            }
            with_fd(&p(path), flags, mode, |_| Ok(Value::Done))
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => with_fd(&p(path), libc::O_WRONLY, 0, |fd| {
            let data = pattern(len, seed);
            let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), len, offset as i64) };
            count(n).map(Value::Count)
        }),
        Op::Append { path, len, seed } => {
            with_fd(&p(path), libc::O_WRONLY | libc::O_APPEND, 0, |fd| {
                let data = pattern(len, seed);
                let n = unsafe { libc::write(fd, data.as_ptr().cast(), len) };
                count(n).map(Value::Count)
            })
        }
        Op::Read { path, offset, len } => with_fd(&p(path), libc::O_RDONLY, 0, |fd| {
            let mut buf = vec![0u8; len];
            let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, offset as i64) };
            buf.truncate(count(n)? as usize);
            Ok(Value::Bytes(Bytes(buf)))
        }),
        Op::Truncate { path, size } => ok(unsafe { libc::truncate(p(path).as_ptr(), size as i64) }),
        Op::Unlink { path } => ok(unsafe { libc::unlink(p(path).as_ptr()) }),
        Op::Rename { from, to, mode } => {
            let flags = match mode {
                Mode::Plain => 0,
                Mode::NoReplace => libc::RENAME_NOREPLACE,
                Mode::Exchange => libc::RENAME_EXCHANGE,
            };
            let (a, b) = (p(from), p(to));
            let r = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    flags,
                )
            };
            ok(r as libc::c_int)
        }
        Op::Link { from, to } => ok(unsafe { libc::link(p(from).as_ptr(), p(to).as_ptr()) }),
        Op::Symlink { target, path } => {
            let target = CString::new(expand(target)).expect("no NUL");
            ok(unsafe { libc::symlink(target.as_ptr(), p(path).as_ptr()) })
        }
        Op::Readlink { path } => {
            let mut buf = vec![0u8; 8192];
            let n = unsafe { libc::readlink(p(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            buf.truncate(count(n)? as usize);
            Ok(Value::Bytes(Bytes(buf)))
        }
        Op::Stat { path, follow } => {
            lstat_raw(&p(path), follow).map(|st| Value::Stat(Stat::of(&st)))
        }
        Op::Chmod { path, mode } => ok(unsafe { libc::chmod(p(path).as_ptr(), mode) }),
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            let flags = match flags {
                XFlags::Any => 0,
                XFlags::Create => libc::XATTR_CREATE,
                XFlags::Replace => libc::XATTR_REPLACE,
            };
            let n = xattr_name(name);
            ok(unsafe {
                libc::lsetxattr(
                    p(path).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
        }
        Op::GetXattr { path, name, size } => {
            let n = xattr_name(name);
            let mut buf = vec![0u8; size];
            let r = unsafe {
                libc::lgetxattr(p(path).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size)
            };
            let len = count(r)?;
            if size == 0 {
                return Ok(Value::Count(len));
            }
            buf.truncate(len as usize);
            Ok(Value::Bytes(Bytes(buf)))
        }
        Op::ListXattr { path } => list_xattrs(&p(path)).map(Value::Names),
        Op::RemoveXattr { path, name } => {
            let n = xattr_name(name);
            ok(unsafe { libc::lremovexattr(p(path).as_ptr(), n.as_ptr()) })
        }
        Op::Readdir { path } => {
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(p(path).as_bytes()));
            read_dir(&dir).map(|entries| {
                Value::Names(
                    entries
                        .into_iter()
                        .map(|(n, k)| format!("{n}:{k}"))
                        .collect(),
                )
            })
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            len,
        } => {
            let mode = match mode {
                Falloc::Extend => 0,
                Falloc::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
                Falloc::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                Falloc::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            };
            with_fd(&p(path), libc::O_WRONLY, 0, |fd| {
                ok(unsafe { libc::fallocate(fd, mode, offset as i64, len as i64) })
            })
        }
        Op::Utimens { path } => ok(utimens_at(&p(path), SET_TIME)),
        Op::Fsync { path } => with_fd(&p(path), libc::O_RDONLY, 0, |fd| {
            ok(unsafe { libc::fsync(fd) })
        }),
        Op::Open { .. }
        | Op::Close { .. }
        | Op::FdWrite { .. }
        | Op::FdRead { .. }
        | Op::FdStat { .. }
        | Op::FdTruncate { .. }
        | Op::FdFsync { .. } => unreachable!("descriptor steps run in Tree::execute"),
        Op::Crash => unreachable!(
            "a power cut is not a system call: only the model test generates Op::Crash"
        ),
    }
}

fn list_xattrs(p: &CString) -> Result<Vec<String>, Errno> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: p is a valid C string and buf a buffer of the length passed.
    let n = count(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn get_xattr(p: &CString, name: &str) -> Result<Vec<u8>, Errno> {
    let n = xattr_name(name);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(count(r)? as usize);
    Ok(buf)
}

/// Entries of a directory with their d_type letter, sorted by name.
fn read_dir(dir: &Path) -> Result<Vec<(String, char)>, Errno> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(Errno::from)? {
        let e = e.map_err(Errno::from)?;
        let t = e.file_type().map_err(Errno::from)?;
        let k = if t.is_file() {
            'f'
        } else if t.is_dir() {
            'd'
        } else if t.is_symlink() {
            'l'
        } else if t.is_fifo() {
            'p'
        } else if t.is_socket() {
            's'
        } else {
            '?'
        };
        out.push((e.file_name().to_string_lossy().into_owned(), k));
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Whole trees

/// Everything compared about one node when the trees are compared whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeSnap {
    pub(crate) stat: Stat,
    /// File contents or symlink target.
    pub(crate) data: Option<Bytes>,
    pub(crate) xattrs: Vec<(String, Bytes)>,
}

/// Every node under `root` (root included, as "."), by relative path.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, NodeSnap> {
    let mut out = BTreeMap::new();
    snap_into(root, ".", &mut out);
    out
}

fn snap_into(root: &Path, rel: &str, out: &mut BTreeMap<String, NodeSnap>) {
    let p = full(root, rel);
    let st = match lstat_raw(&p, false) {
        Ok(st) => Stat::of(&st),
        Err(e) => panic!("snapshot: lstat {rel}: {e}"),
    };
    let data = match st.kind {
        'f' => Some(Bytes(
            std::fs::read(root.join(rel)).expect("snapshot: read"),
        )),
        'l' => Some(Bytes(
            std::fs::read_link(root.join(rel))
                .expect("snapshot: readlink")
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )),
        _ => None,
    };
    let xattrs = list_xattrs(&p)
        .expect("snapshot: listxattr")
        .into_iter()
        .map(|n| {
            let v = get_xattr(&p, &n).expect("snapshot: getxattr");
            (n, Bytes(v))
        })
        .collect();
    out.insert(
        rel.to_string(),
        NodeSnap {
            stat: st,
            data,
            xattrs,
        },
    );
    if st.kind == 'd' {
        for (name, _) in read_dir(&root.join(rel)).expect("snapshot: readdir") {
            let child = if rel == "." {
                name
            } else {
                format!("{rel}/{name}")
            };
            snap_into(root, &child, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing

/// The script, numbered, with the step at `mark` flagged.
pub(crate) fn listing(script: &[Op], mark: Option<usize>) -> String {
    let mut s = String::new();
    for (i, op) in script.iter().enumerate() {
        let flag = if Some(i) == mark { ">>" } else { "  " };
        s.push_str(&format!("{flag} {i:3}: {op:?}\n"));
    }
    s
}

/// Runs `script` step by step on the trees under `a` and `b` (named `names`), then compares
/// the trees. Returns a report of the first difference. With `DIFF_TRACE` set in the
/// environment, every step's outcomes are printed as they come.
pub(crate) fn differential(
    names: [&str; 2],
    a: &Path,
    b: &Path,
    script: &[Op],
) -> Result<(), String> {
    let trace = std::env::var_os("DIFF_TRACE").is_some();
    let (mut ta, mut tb) = (Tree::new(a), Tree::new(b));
    for (i, op) in script.iter().enumerate() {
        let sa = ta.run(op);
        let sb = tb.run(op);
        if trace {
            eprintln!("{i:3}: {op:?}\n     {sa:?}\n     {sb:?}");
        }
        if sa != sb {
            return Err(format!(
                "{} and {} differ at step {i}: {op:?}\n  {:>6}: {sa:?}\n  {:>6}: {sb:?}\nscript:\n{}",
                names[0],
                names[1],
                names[0],
                names[1],
                listing(script, Some(i))
            ));
        }
    }
    drop((ta, tb));
    let (ta, tb) = (snapshot(a), snapshot(b));
    if ta != tb {
        let mut diff = String::new();
        let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
        for k in keys {
            let (x, y) = (ta.get(k), tb.get(k));
            if x != y {
                diff.push_str(&format!(
                    "  {k}:\n    {:>6}: {x:?}\n    {:>6}: {y:?}\n",
                    names[0], names[1]
                ));
            }
        }
        return Err(format!(
            "{} and {} end with different trees:\n{diff}script:\n{}",
            names[0],
            names[1],
            listing(script, None)
        ));
    }
    Ok(())
}

/// A fresh, empty directory `root/name`, made the same way on every side.
pub(crate) fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir(&d).expect("create a case directory");
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod a case directory");
    d
}

// ---------------------------------------------------------------------------------------------
// The reference side: a private tmpfs

/// A tmpfs mounted on a fresh temporary directory (unmounted on drop), or, if mounting is
/// not allowed, a temporary directory under /dev/shm (which is tmpfs too).
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    pub(crate) fn new() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("rawfs-tmpfs-")
            .tempdir()
            .expect("create a temporary directory");
        let target = cpath(dir.path());
        // SAFETY: all pointers are valid C strings.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=64m".as_ptr().cast(),
            )
        };
        if r == 0 {
            return Tmpfs { dir, mounted: true };
        }
        let why = std::io::Error::last_os_error();
        eprintln!("cannot mount a tmpfs ({why}); using a directory under /dev/shm");
        let dir = tempfile::Builder::new()
            .prefix("rawfs-tmpfs-")
            .tempdir_in("/dev/shm")
            .expect("create a directory under /dev/shm");
        Tmpfs {
            dir,
            mounted: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let target = cpath(self.dir.path());
            // SAFETY: target is a valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written scripts

#[cfg(test)]
mod scripts {
    use super::ops::*;
    use super::*;
    use crate::mount_or_skip;

    /// Runs `script` on a fresh tmpfs and a fresh rawfs mount; panics with the report.
    fn check(script: &[Op]) {
        let m = mount_or_skip!();
        let t = Tmpfs::new();
        let a = fresh_dir(t.path(), "case");
        let b = fresh_dir(m.path(), "case");
        if let Err(report) = differential(["tmpfs", "rawfs"], &a, &b, script) {
            panic!("{report}");
        }
    }

    #[test]
    fn comparison_detects_a_difference() {
        // Two tmpfs trees that differ by one file: the comparison must say so, at the step
        // that sees it.
        let t = Tmpfs::new();
        let a = fresh_dir(t.path(), "a");
        let b = fresh_dir(t.path(), "b");
        std::fs::write(b.join("x"), b"12").unwrap();
        let script = [mkdir("d"), read("x", 0, 10), unlink("x")];
        let report = differential(["left", "right"], &a, &b, &script).unwrap_err();
        assert!(report.contains("differ at step 1"), "{report}");
        assert!(report.contains(">>   1: Read"), "{report}");
        // Same steps, but a difference only in the final trees.
        let a = fresh_dir(t.path(), "c");
        let b = fresh_dir(t.path(), "e");
        std::fs::write(b.join("y"), b"").unwrap();
        let report = differential(["left", "right"], &a, &b, &[mkdir("d")]).unwrap_err();
        assert!(report.contains("different trees"), "{report}");
        // And identical trees compare equal, step by step too.
        let a = fresh_dir(t.path(), "f");
        let b = fresh_dir(t.path(), "g");
        let script = [mkdir("d"), create("d/x"), write("d/x", 5, 10), lstat("d/x")];
        differential(["left", "right"], &a, &b, &script).unwrap();
        let a = fresh_dir(t.path(), "h");
        let b = fresh_dir(t.path(), "i");
        let (sa, sb) = (run_script(&a, &script), run_script(&b, &script));
        assert_eq!(sa, sb);
        assert_eq!(sa[2].result, Ok(Value::Count(10)));
    }

    #[test]
    fn files_write_read_truncate() {
        check(&[
            create("a"),
            lstat("a"),
            write("a", 0, 10),
            read("a", 0, 100),
            write("a", 4090, 20),
            read("a", 4000, 200),
            lstat("a"),
            write("a", 12288, 1),
            lstat("a"),
            read("a", 5000, 4096),
            read("a", 20000, 10),
            truncate("a", 4095),
            lstat("a"),
            read("a", 4080, 100),
            truncate("a", 4095),
            truncate("a", 10000),
            read("a", 4090, 20),
            lstat("a"),
            append("a", 5000),
            lstat("a"),
            read("a", 9990, 40),
            truncate("a", 0),
            lstat("a"),
            create_trunc("a"),
            write("a", 0, 3),
            create("a"),
            create_trunc("a"),
            lstat("a"),
            create_excl("a"),
            create_excl("b"),
            write("b", 0, 0),
            read("b", 0, 0),
            unlink("a"),
            lstat("a"),
            read("a", 0, 1),
            write("a", 0, 1),
            truncate("a", 1),
            unlink("a"),
            readdir("."),
        ]);
    }

    #[test]
    fn directories_and_their_errors() {
        check(&[
            mkdir("d1"),
            mkdir("d1"),
            mkdir("d1/d2"),
            lstat("d1"),
            lstat("."),
            create("d1/a"),
            lstat("d1"),
            readdir("d1"),
            readdir("d1/a"),
            readdir("nope"),
            rmdir("d1"),
            rmdir("d1/a"),
            unlink("d1"),
            unlink("d1/d2"),
            create("nope/a"),
            mkdir("nope/d"),
            create("d1/a/b"),
            lstat("d1/a/b"),
            mkdir("d1/a/b"),
            lstat("d1/a/"),
            stat("d1/d2/"),
            create("d1/d2/"),
            create("d1"),
            read("d1", 0, 10),
            write("d1", 0, 10),
            truncate("d1", 0),
            rmdir("d1/d2/."),
            rmdir("d1/d2/.."),
            mkdir("<255>"),
            mkdir("<256>"),
            create("<256>"),
            lstat("<256>"),
            readdir("."),
            rmdir("<255>"),
            rmdir("d1/d2"),
            unlink("d1/a"),
            lstat("d1"),
            rmdir("d1"),
            rmdir("d1"),
            lstat("."),
        ]);
    }

    #[test]
    fn renames_and_their_errors() {
        check(&[
            mkdir("d1"),
            mkdir("d2"),
            mkdir("d1/sub"),
            create("a"),
            write("a", 0, 5),
            create("b"),
            rename("a", "b"),
            read("b", 0, 10),
            lstat("a"),
            rename("a", "c"),
            rename("b", "d1/b"),
            lstat("d1"),
            rename("d1", "d1/sub/x"),
            rename("d1", "d1/x"),
            rename("d1/b", "d2"),
            rename("d2", "d1/b"),
            rename("d2", "d1"),
            create("d2/f"),
            rename("d1", "d2"),
            unlink("d2/f"),
            rename("d1", "d2"),
            lstat("d2"),
            lstat("d2/sub"),
            readdir("."),
            rename("d2", "d2"),
            rename("d2/b", "d2/b"),
            link("d2/b", "d2/b2"),
            rename("d2/b", "d2/b2"),
            readdir("d2"),
            lstat("d2/b"),
            create("c"),
            rename_noreplace("c", "d2/b"),
            rename_noreplace("c", "e"),
            rename_noreplace("nope", "f"),
            exchange("e", "d2/sub"),
            lstat("e"),
            lstat("d2/sub"),
            lstat("d2"),
            exchange("e", "nope"),
            exchange("nope", "e"),
            exchange("e", "e/x"),
            mkdir("e/inner"),
            exchange("e", "e/inner"),
            exchange("e/inner", "e"),
            rename("e/inner", "e/inner/deeper"),
            rename("e", "e/inner/deeper"),
            rename("d2/b/", "x"),
            rename("d2/sub", "x/"),
            rename("<256>", "x"),
            rename("d2/sub", "<256>"),
            rename("d2/sub", "<255>"),
            readdir("."),
        ]);
    }

    #[test]
    fn links_and_symlinks() {
        check(&[
            create("a"),
            write("a", 0, 100),
            link("a", "b"),
            lstat("a"),
            link("a", "b"),
            link("nope", "c"),
            mkdir("d"),
            link("d", "e"),
            link("a", "d/a"),
            lstat("b"),
            unlink("a"),
            lstat("b"),
            read("d/a", 0, 200),
            symlink("b", "s"),
            lstat("s"),
            stat("s"),
            readlink("s"),
            readlink("b"),
            readlink("nope"),
            read("s", 0, 10),
            write("s", 50, 10),
            read("b", 40, 30),
            symlink("nope", "dangling"),
            stat("dangling"),
            read("dangling", 0, 1),
            create("dangling"),
            lstat("nope"),
            symlink("loop", "loop"),
            stat("loop"),
            create("loop"),
            symlink("x", "s"),
            symlink("", "empty"),
            symlink("<4095>", "long"),
            lstat("long"),
            readlink("long"),
            symlink("<4096>", "toolong"),
            symlink("d", "sd"),
            create("sd/f"),
            readdir("sd"),
            readdir("sd/"),
            lstat("sd/"),
            rmdir("sd"),
            unlink("sd/"),
            link("s", "s2"),
            lstat("s"),
            readlink("s2"),
            rename("s", "d/s"),
            readlink("d/s"),
            stat("d/s"),
            unlink("s2"),
            readdir("."),
        ]);
    }

    #[test]
    fn xattrs_and_their_errors() {
        use XFlags::*;
        check(&[
            create("f"),
            mkdir("d"),
            symlink("f", "s"),
            listxattr("f"),
            getxattr("f", "user.a", 100),
            setxattr("f", "user.a", "hello", Any),
            getxattr("f", "user.a", 100),
            getxattr("f", "user.a", 0),
            getxattr("f", "user.a", 2),
            setxattr("f", "user.a", "again", Create),
            setxattr("f", "user.b", "bee", Replace),
            setxattr("f", "user.a", "replaced", Replace),
            setxattr("f", "user.b", "", Create),
            getxattr("f", "user.b", 10),
            getxattr("f", "user.b", 0),
            listxattr("f"),
            setxattr("f", "trusted.t", "tv", Any),
            listxattr("f"),
            removexattr("f", "user.a"),
            removexattr("f", "user.a"),
            getxattr("f", "user.a", 10),
            setxattr("f", "plain", "v", Any),
            getxattr("f", "plain", 10),
            setxattr("f", "user.", "v", Any),
            getxattr("f", "user.", 10),
            setxattr("d", "user.dir", "dv", Any),
            getxattr("d", "user.dir", 10),
            setxattr("s", "user.a", "v", Any),
            setxattr("s", "trusted.t", "link", Any),
            getxattr("s", "trusted.t", 10),
            listxattr("s"),
            getxattr("nope", "user.a", 10),
            setxattr("nope", "user.a", "v", Any),
            removexattr("nope", "user.a"),
            listxattr("nope"),
        ]);
    }

    #[test]
    fn fallocate_and_sparse_files() {
        use Falloc::*;
        check(&[
            create("f"),
            fallocate("f", Extend, 0, 10000),
            lstat("f"),
            read("f", 9990, 20),
            fallocate("f", KeepSize, 10000, 8192),
            lstat("f"),
            write("f", 0, 12288),
            fallocate("f", PunchHole, 100, 8192),
            lstat("f"),
            read("f", 0, 12288),
            fallocate("f", ZeroRange, 0, 10),
            fallocate("f", Extend, 0, 0),
            write("g", 0, 1),
            create("g"),
            write("g", 65536, 10),
            lstat("g"),
            read("g", 65530, 100),
            truncate("g", 4097),
            lstat("g"),
            fallocate("g", PunchHole, 0, 1_000_000),
            lstat("g"),
            read("g", 0, 5000),
            mkdir("d"),
            fallocate("d", Extend, 0, 10),
            // Pages allocated past the end of file, then truncations that keep, cut, and grow.
            create("k"),
            write("k", 0, 100),
            fallocate("k", KeepSize, 0, 16384),
            lstat("k"),
            truncate("k", 100),
            lstat("k"),
            fallocate("k", KeepSize, 8192, 8192),
            truncate("k", 5000),
            lstat("k"),
            fallocate("k", KeepSize, 12288, 100),
            truncate("k", 4000),
            lstat("k"),
            fallocate("k", KeepSize, 20000, 100),
            write("k", 6000, 10),
            lstat("k"),
            fallocate("k", Extend, 0, 100),
            lstat("k"),
            fallocate("k", PunchHole, 16384, 8192),
            lstat("k"),
            read("k", 0, 30000),
        ]);
    }

    #[test]
    fn open_descriptors_outlive_names() {
        check(&[
            create("a"),
            write("a", 0, 100),
            open(0, "a", true),
            fstat(0),
            unlink("a"),
            fstat(0),
            fd_read(0, 0, 200),
            fd_write(0, 4000, 200),
            fstat(0),
            ftruncate(0, 10),
            ftruncate(0, 10),
            fd_read(0, 0, 200),
            readdir("."),
            create("b"),
            write("b", 0, 10),
            open(1, "b", false),
            create("c"),
            write("c", 0, 20),
            rename("c", "b"),
            fd_read(1, 0, 100),
            fstat(1),
            read("b", 0, 100),
            fd_write(1, 0, 10),
            ftruncate(1, 0),
            close(1),
            close(1),
            fstat(1),
            fd_read(5, 0, 1),
            mkdir("d"),
            open(2, "d", true),
            open(2, "d", false),
            fd_read(2, 0, 10),
            fstat(2),
            rmdir("d"),
            fstat(2),
            open(2, "nope", false),
            fstat(2),
            link("b", "b2"),
            open(1, "b2", true),
            unlink("b"),
            fstat(1),
            unlink("b2"),
            fstat(1),
            fd_write(1, 0, 5),
            fd_read(1, 0, 5),
            close(0),
            close(1),
            readdir("."),
        ]);
    }

    #[test]
    fn fifos_and_sockets() {
        check(&[
            Op::Mknod {
                path: "p",
                socket: false,
            },
            Op::Mknod {
                path: "sock",
                socket: true,
            },
            Op::Mknod {
                path: "p",
                socket: true,
            },
            lstat("p"),
            lstat("sock"),
            readdir("."),
            read("p", 0, 10),
            write("p", 0, 10),
            read("sock", 0, 10),
            truncate("p", 0),
            fallocate("p", Falloc::Extend, 0, 10),
            setxattr("p", "user.a", "v", XFlags::Any),
            setxattr("p", "trusted.a", "v", XFlags::Any),
            listxattr("p"),
            chmod("p", 0o600),
            lstat("p"),
            link("p", "p2"),
            lstat("p"),
            rename("sock", "p2"),
            lstat("p"),
            readdir("."),
            mkdir("d"),
            rename("p", "d/p"),
            rename("d", "p2"),
            unlink("d/p"),
            unlink("p2"),
            readdir("."),
        ]);
    }

    #[test]
    fn modes_and_times() {
        check(&[
            create("f"),
            chmod("f", 0o4755),
            lstat("f"),
            chmod("f", 0o2750),
            lstat("f"),
            chmod("f", 0o1000),
            lstat("f"),
            chmod("f", 0),
            lstat("f"),
            read("f", 0, 1),
            mkdir("d"),
            chmod("d", 0o1777),
            lstat("d"),
            Op::Mkdir {
                path: "d/sub",
                mode: 0o2711,
            },
            lstat("d/sub"),
            Op::Create {
                path: "d/sub/x",
                mode: 0o600,
                excl: true,
                trunc: false,
            },
            lstat("d/sub/x"),
            symlink("f", "s"),
            chmod("s", 0o640),
            lstat("s"),
            lstat("f"),
            utimens("f"),
            utimens("s"),
            utimens("d"),
            utimens("nope"),
            chmod("nope", 0o644),
        ]);
    }
}
