//! The in-memory tree: inodes, directory entries, file contents, open handles, and the POSIX
//! rules and errnos of each operation. It knows nothing of FUSE: every method takes plain
//! values and returns plain data or an [`Errno`], so it is tested without a mount.
//!
//! Permission checks are made here, as Linux makes them for tmpfs ([`perm`]), under the same
//! lock as the operation they guard: every method that a permission decides takes the
//! [`Caller`]. A mount could leave them to the kernel (`default_permissions`), but the kernel
//! then asks for the attributes of every directory on a path before each walk: with zero
//! attribute timeouts that is a request per directory per syscall that the program never made.
//!
//! Durability: file contents are copy-on-write pages ([`data::FileData`]) and directories are
//! plain values ([`dir::Dir`]), so keeping the last fsynced version of a node costs a clone of
//! page pointers, not of bytes; a crash simulation swaps those versions back in.

pub mod data;
pub mod dir;
pub mod durable;
mod image;
pub mod perm;
pub mod snapshot;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::errno::Errno;
use crate::text::PathText;
use data::{FileData, PAGE, Space};
use dir::Dir;
use durable::{Choice, CrashOptions, DataChange, Durable, Losses, Model};
use perm::{Asker, Cap, CredentialSource, MAY_EXEC, MAY_READ, MAY_WRITE, Owned};

const SUID: u16 = libc::S_ISUID as u16;
const SGID: u16 = libc::S_ISGID as u16;
const SUID_SGID: u16 = SUID | SGID;
/// The extended attribute that holds a file's capabilities: writes and chowns remove it.
const CAPABILITY_XATTR: &str = "security.capability";

/// Whether permission bits `perm` let owner, group and others all search (execute).
pub fn all_may_search(perm: u16) -> bool {
    perm & 0o111 == 0o111
}

/// Inode number of the root directory.
pub const ROOT: u64 = 1;
/// Longest name in a directory, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (PATH_MAX minus the terminating NUL).
pub const SYMLINK_MAX: usize = 4095;
/// Directory size as tmpfs reports it: a fixed amount per entry, "." and ".." included.
const DIRENT_SIZE: u64 = 20;
/// Most entries one [`Fs::readdir`] call returns.
const READDIR_BATCH: usize = 1024;
/// Inode count reported by statfs.
const MAX_INODES: u64 = 1 << 32;
/// The open flag the kernel adds when exec(2) opens a file (`__FMODE_EXEC`); FUSE passes it.
pub const FMODE_EXEC: i32 = 0o40;

/// What kind of node an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

impl Kind {
    /// The kind for the `S_IFMT` bits of a mode, if it names one.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => return None,
        })
    }
}

/// Who is asking: the ids the kernel puts in each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// Effective (file system) user id.
    pub uid: u32,
    /// Effective (file system) group id.
    pub gid: u32,
    /// Thread id of the caller, as the kernel reports it.
    pub pid: u32,
}

/// An inode's attributes, as stat(2) reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Node kind.
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification of contents.
    pub mtime: SystemTime,
    /// Last change of contents or attributes.
    pub ctime: SystemTime,
    /// Creation.
    pub crtime: SystemTime,
}

/// A time to set with utimensat: now, or a given time (`UTIME_OMIT` is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// `UTIME_NOW`.
    Now,
    /// A given time.
    At(SystemTime),
}

/// The fields a setattr request changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New mode (permission bits are taken from it).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// New change time; when absent, any change sets it to now.
    pub ctime: Option<SystemTime>,
    /// The size is set through an open file (ftruncate(2)): the handle's access mode was
    /// checked at open, and mtime and ctime change even when the size does not, as on tmpfs.
    pub by_handle: bool,
}

/// How rename treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace the target (plain rename).
    #[default]
    Replace,
    /// `RENAME_NOREPLACE`: fail with EEXIST if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap source and target atomically.
    Exchange,
}

/// What a rename did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The node that was renamed.
    pub node: u64,
    /// The node that was at the target name (replaced, or swapped with RENAME_EXCHANGE).
    pub replaced: Option<u64>,
}

/// What `fallocate` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Allocate, extending the size (mode 0).
    Extend,
    /// Allocate without changing the size (`FALLOC_FL_KEEP_SIZE`).
    KeepSize,
    /// Free the range (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    PunchHole,
}

/// One readdir entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset to pass to the next readdir to continue after this entry.
    pub offset: u64,
    /// Node kind.
    pub kind: Kind,
    /// Entry name.
    pub name: OsString,
}

/// File system totals, as statfs(2) reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `bsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// What a crash did: what was lost, and what the kernel may have cached that changed.
#[derive(Debug, Default)]
pub struct Crashed {
    /// The unsynced changes that were lost.
    pub losses: Losses,
    /// What to invalidate in the kernel's caches.
    pub stale: Stale,
}

/// Kernel cache entries a change behind the kernel's back made stale.
#[derive(Debug, Default)]
pub struct Stale {
    /// Inodes whose attributes and pages may have changed.
    pub inodes: Vec<u64>,
    /// Directory entries, as (parent, name), that may have changed.
    pub entries: Vec<(u64, OsString)>,
}

/// Options fixed when the tree is created.
#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    /// Most bytes of file data the tree holds before writes fail with ENOSPC.
    pub size_limit: Option<u64>,
    /// Owner of the root directory.
    pub root_uid: u32,
    /// Group of the root directory.
    pub root_gid: u32,
    /// Permission bits of the root directory.
    pub root_perm: u16,
    /// What a sync makes durable, for crash simulation.
    pub model: Model,
    /// Where permission checks read a caller's supplementary groups and capabilities
    /// ([`perm::from_proc`]); `None` makes no permission checks at all (a caller may do
    /// anything: for a tree whose mount leaves the checks to the kernel).
    pub permissions: Option<CredentialSource>,
}

impl Default for FsOptions {
    fn default() -> Self {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsOptions {
            size_limit: None,
            root_uid: uid,
            root_gid: gid,
            root_perm: 0o1777,
            model: Model::default(),
            permissions: Some(perm::from_proc),
        }
    }
}

/// The in-memory file system.
#[derive(Debug)]
pub struct Fs {
    state: Mutex<State>,
    /// See [`FsOptions::permissions`].
    permissions: Option<CredentialSource>,
    /// Signalled when a node is freed, for writes waiting for space (see [`Fs::write`]).
    freed: Condvar,
    /// Called when a write starts waiting for space ([`Fs::on_wait`]).
    wait_hook: OnceLock<WaitHook>,
    /// See [`Fs::let_others_clear_ids`].
    others_clear_ids: AtomicBool,
}

/// What a request does when it starts waiting for other requests to free space; what it
/// returns is dropped when the wait ends.
pub struct WaitHook(pub Box<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>);

impl std::fmt::Debug for WaitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitHook")
    }
}

/// How long a write that ran out of space waits for unlinked files to be freed.
const SPACE_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct State {
    nodes: Nodes,
    next_ino: u64,
    handles: FxHashMap<u64, Handle>,
    next_fh: u64,
    space: Space,
    /// What a disk would hold: the parts of nodes changed since they were made durable.
    durable: Durable,
    /// Handles opened before a crash: every request on them fails with EIO.
    stale: FxHashSet<u64>,
}

/// Every node by inode number. Boxed: growing the table moves 16-byte slots, not whole nodes
/// (a single pause of most of a second at a million files, when it doubled at 917,505).
type Nodes = FxHashMap<u64, Box<Node>>;

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    perm: u16,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
    body: Body,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// References the kernel holds (lookups not yet forgotten).
    lookups: u64,
    /// Open handles.
    opens: u64,
    /// Of those, the ones exec(2) opened (FMODE_EXEC). While one is open the kernel denies
    /// writing the file (ETXTBSY): a program is running from it or being loaded.
    execs: u32,
    /// Every name of the node, as (parent, name); the first one gives its path in the trace.
    links: Vec<(u64, OsString)>,
}

#[derive(Clone, Debug)]
enum Body {
    File(FileData),
    Dir(Dir),
    Symlink(Vec<u8>),
    Special,
}

/// What a create-like operation asks for, before the parent directory's rules apply.
struct NewNode {
    kind: Kind,
    perm: u32,
    rdev: u32,
    body: Body,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    flags: i32,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The permission rules of setattr, as Linux applies them before a file system sees the
/// change (`setattr_prepare`, truncate(2), utimensat(2)): EACCES or EPERM, or a chmod's setgid
/// bit dropped where the caller is not in the file's group.
fn may_setattr(
    a: &Asker,
    n: &Node,
    set: &mut SetAttr,
    others_clear_ids: bool,
) -> Result<(), Errno> {
    let o = n.owned();
    if set.size.is_some() && !set.by_handle {
        a.may(&o, MAY_WRITE)?;
    }
    if let Some(uid) = set.uid
        && !((a.uid() == n.uid && uid == n.uid) || a.capable(Cap::Chown))
    {
        return Err(Errno::EPERM);
    }
    if let Some(gid) = set.gid
        && !((a.uid() == n.uid && (gid == n.gid || a.in_group(gid))) || a.capable(Cap::Chown))
    {
        return Err(Errno::EPERM);
    }
    if let Some(mode) = set.mode {
        let (new, old) = (mode & 0o7777, u32::from(n.perm));
        // See Fs::let_others_clear_ids.
        let only_clears_ids = others_clear_ids
            && new != old
            && new & !old == 0
            && (new ^ old) & !u32::from(SUID_SGID) == 0;
        if !a.owns(&o) {
            if !only_clears_ids {
                return Err(Errno::EPERM);
            }
        } else if !only_clears_ids
            && new & libc::S_ISGID != 0
            && !a.in_group(set.gid.unwrap_or(n.gid))
            && !a.capable(Cap::Fsetid)
        {
            set.mode = Some(mode & !libc::S_ISGID);
        }
    }
    let touch = set.atime == Some(SetTime::Now) && set.mtime == Some(SetTime::Now);
    if touch {
        // utimensat(NULL) or both UTIME_NOW: the owner, or anyone who may write.
        if !a.owns(&o) {
            a.may(&o, MAY_WRITE)?;
        }
    } else if (set.atime.is_some() || set.mtime.is_some()) && !a.owns(&o) {
        return Err(Errno::EPERM);
    }
    Ok(())
}

fn resolve(t: SetTime, now: SystemTime) -> SystemTime {
    match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    }
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, rdev: u32, body: Body) -> Node {
        let t = now();
        Node {
            kind,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid,
            gid,
            rdev,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            body,
            xattrs: BTreeMap::new(),
            lookups: 0,
            opens: 0,
            execs: 0,
            links: Vec::new(),
        }
    }

    /// A copy of the node as a disk would hold it: attributes, contents (sharing pages) and
    /// names, but no kernel references, open handles or directory entries.
    fn image(&self) -> Node {
        Node {
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            body: match &self.body {
                Body::File(d) => Body::File(d.clone()),
                Body::Dir(d) => Body::Dir(Dir::new(d.parent)),
                Body::Symlink(t) => Body::Symlink(t.clone()),
                Body::Special => Body::Special,
            },
            xattrs: self.xattrs.clone(),
            lookups: 0,
            opens: 0,
            execs: 0,
            links: self.links.clone(),
        }
    }

    fn attr(&self, ino: u64) -> Attr {
        let (size, blocks) = match &self.body {
            Body::File(d) => (d.size(), d.pages() * (PAGE / 512)),
            Body::Dir(d) => ((d.len() as u64 + 2) * DIRENT_SIZE, 0),
            Body::Symlink(t) => (t.len() as u64, 0),
            Body::Special => (0, 0),
        };
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            size,
            blocks,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
        }
    }

    /// Owner, group and mode, as a permission check reads them.
    fn owned(&self) -> Owned {
        Owned {
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            dir: self.kind == Kind::Dir,
        }
    }

    fn dir(&self) -> Result<&Dir, Errno> {
        match &self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Result<&mut Dir, Errno> {
        match &mut self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn touch_modified(&mut self, t: SystemTime) {
        self.mtime = t;
        self.ctime = t;
    }

    /// What a write or truncate by `who` takes from a regular file, as Linux's
    /// `file_remove_privs` does on every file system: a file capability whoever writes, and
    /// unless `who` holds CAP_FSETID, setuid and the setgid bits [`Node::setgid_goes`] names.
    fn drop_privileges_on_write(&mut self, who: &Asker) {
        if self.kind != Kind::File {
            return;
        }
        self.drop_capability();
        if self.perm & SUID_SGID != 0 && !who.capable(Cap::Fsetid) {
            self.drop_ids(who);
        }
    }

    /// What chown(2) by `who` takes from anything but a directory, whatever the new owner
    /// and group (chown(f, -1, -1) included): setuid, the setgid bits [`Node::setgid_goes`]
    /// names, and a file capability.
    fn drop_privileges_on_chown(&mut self, who: &Asker) {
        if self.kind == Kind::Dir {
            return;
        }
        self.drop_capability();
        self.drop_ids(who);
    }

    /// Drops setuid, and setgid where [`Node::setgid_goes`] says so.
    fn drop_ids(&mut self, who: &Asker) {
        let ids = if self.setgid_goes(who) {
            SUID_SGID
        } else {
            SUID
        };
        self.perm &= !ids;
    }

    /// True if the node's setgid bit goes when `who` changes it (`setattr_should_drop_sgid`):
    /// where it means "setgid" (group-executable), or where `who` is neither in the node's
    /// group nor holds CAP_FSETID (without group execute it marks mandatory locking).
    fn setgid_goes(&self, who: &Asker) -> bool {
        self.perm & SGID != 0
            && (self.perm & 0o010 != 0 || !(who.in_group(self.gid) || who.capable(Cap::Fsetid)))
    }

    fn drop_capability(&mut self) {
        if !self.xattrs.is_empty() {
            self.xattrs.remove(OsStr::new(CAPABILITY_XATTR));
        }
    }
}

/// The path of `ino` in `nodes` by its first name, followed by `last` if given, or `None` if
/// `ino` has no name left.
fn path_in(nodes: &Nodes, ino: u64, last: Option<&OsStr>) -> Option<PathText> {
    // Names from `ino` up; on the stack unless the tree is deep.
    const SHALLOW: usize = 16;
    let mut shallow = [OsStr::new(""); SHALLOW];
    let mut deep: Vec<&OsStr> = Vec::new();
    let mut n = 0;
    let mut push = |name| {
        if n < SHALLOW {
            shallow[n] = name;
        } else {
            if deep.is_empty() {
                deep.extend_from_slice(&shallow);
            }
            deep.push(name);
        }
        n += 1;
    };
    if let Some(last) = last {
        push(last);
    }
    let mut cur = ino;
    for depth in 0.. {
        if cur == ROOT {
            break;
        }
        if depth > 4096 {
            return None;
        }
        let (parent, name) = nodes.get(&cur)?.links.first()?;
        push(name);
        cur = *parent;
    }
    let names = if n <= SHALLOW {
        &mut shallow[..n]
    } else {
        &mut deep[..]
    };
    names.reverse();
    Some(PathText::from_names(names))
}

impl State {
    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).map(|n| &**n).ok_or(Errno::ENOENT)
    }

    /// Owner, group and mode of `ino`, for a permission check.
    fn owned(&self, ino: u64) -> Result<Owned, Errno> {
        Ok(self.node(ino)?.owned())
    }

    /// Write and search permission on directory `parent` (adding a name to it).
    fn may_add(&self, who: Option<&Asker>, parent: u64) -> Result<(), Errno> {
        match who {
            Some(a) => a.may(&self.owned(parent)?, MAY_WRITE | MAY_EXEC),
            None => Ok(()),
        }
    }

    /// Removing `victim`'s name from `parent`: write and search on `parent`, then the
    /// sticky rule.
    fn may_delete(&self, who: Option<&Asker>, parent: u64, victim: u64) -> Result<(), Errno> {
        match who {
            Some(a) => a.may_delete(&self.owned(parent)?, &self.owned(victim)?),
            None => Ok(()),
        }
    }

    /// Opening `ino` with open(2) `flags`: read and/or write by the access mode, write for
    /// O_TRUNC (Linux truncates even O_RDONLY), execute for an exec(2) open.
    fn may_open(&self, who: Option<&Asker>, ino: u64, flags: i32) -> Result<(), Errno> {
        let Some(a) = who else {
            return Ok(());
        };
        let n = self.node(ino)?;
        let mut mask = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => MAY_READ,
            libc::O_WRONLY => MAY_WRITE,
            _ => MAY_READ | MAY_WRITE,
        };
        if flags & libc::O_TRUNC != 0 && n.kind == Kind::File {
            mask |= MAY_WRITE;
        }
        if flags & FMODE_EXEC != 0 {
            mask |= MAY_EXEC;
        }
        a.may(&n.owned(), mask)
    }

    /// Reading or writing an extended attribute: the kernel checks the `trusted.` namespace
    /// (CAP_SYS_ADMIN) and which nodes take `user.` attributes; read or write permission on
    /// the node for `user.` attributes is left to us. Other namespaces need none.
    fn may_xattr(
        &self,
        who: Option<&Asker>,
        ino: u64,
        name: &OsStr,
        mask: u32,
    ) -> Result<(), Errno> {
        match who {
            Some(a) if name.as_bytes().starts_with(b"user.") => a.may(&self.owned(ino)?, mask),
            _ => self.node(ino).map(|_| ()),
        }
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes
            .get_mut(&ino)
            .map(|n| &mut **n)
            .ok_or(Errno::ENOENT)
    }

    fn handle(&self, fh: u64) -> Result<Handle, Errno> {
        match self.handles.get(&fh) {
            Some(h) => Ok(*h),
            None if self.stale.contains(&fh) => Err(Errno::EIO),
            None => Err(Errno::EBADF),
        }
    }

    /// Saves a node's attributes as the durable state holds them, before they change.
    fn meta_changing(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get(&ino) {
            self.durable.meta_changing(ino, n);
        }
    }

    /// Saves a file's attributes and contents as the durable state holds them, before a
    /// write, truncate or fallocate changes both.
    fn contents_changing(&mut self, ino: u64) {
        self.meta_changing(ino);
        self.data_changing(ino);
    }

    /// Saves a file's contents as the durable state holds them, before they change.
    fn data_changing(&mut self, ino: u64) {
        if let Some(Node {
            body: Body::File(d),
            ..
        }) = self.nodes.get(&ino).map(|n| &**n)
        {
            self.durable.data_changing(ino, d);
        }
    }

    /// The directory `parent`, checked to accept new entries.
    fn live_dir(&self, parent: u64) -> Result<&Dir, Errno> {
        let d = self.node(parent)?.dir()?;
        if d.removed {
            return Err(Errno::ENOENT);
        }
        Ok(d)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        check_name(name)?;
        self.node(parent)?.dir()?.get(name).ok_or(Errno::ENOENT)
    }

    /// Frees a node nothing refers to any more: no name, no open handle, no kernel reference.
    /// Pages held by files that have no name left (freed once closed and forgotten).
    fn unlinked_pages(&self) -> u64 {
        self.nodes
            .values()
            .filter(|n| n.nlink == 0)
            .map(|n| {
                if let Body::File(d) = &n.body {
                    d.pages()
                } else {
                    0
                }
            })
            .sum()
    }

    fn maybe_free(&mut self, ino: u64) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if ino == ROOT || n.nlink > 0 || n.opens > 0 || n.lookups > 0 {
            return;
        }
        if let Some(mut n) = self.nodes.remove(&ino) {
            self.durable.node_freed(ino, &n);
            if let Body::File(d) = &mut n.body {
                d.clear(&mut self.space);
            }
        }
    }

    /// Adds a new node under `parent` and returns its attributes (one kernel reference taken).
    fn add_node(
        &mut self,
        caller: &Caller,
        who: Option<&Asker>,
        parent: u64,
        name: &OsStr,
        new: NewNode,
    ) -> Result<Attr, Errno> {
        let NewNode {
            kind,
            perm,
            rdev,
            body,
        } = new;
        check_name(name)?;
        let dir = self.live_dir(parent)?;
        if dir.get(name).is_some() {
            return Err(Errno::EEXIST);
        }
        self.may_add(who, parent)?;
        let p = self.node(parent)?;
        let setgid_dir = p.perm & libc::S_ISGID as u16 != 0;
        let gid = if setgid_dir { p.gid } else { caller.gid };
        let mut perm = (perm & 0o7777) as u16;
        if kind == Kind::Dir && setgid_dir {
            perm |= libc::S_ISGID as u16;
        }
        let mut node = Node::new(kind, perm, caller.uid, gid, rdev, body);
        node.lookups = 1;
        node.links.push((parent, name.to_owned()));
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = node.attr(ino);
        self.nodes.insert(ino, Box::new(node));
        let t = attr.ctime;
        self.meta_changing(parent);
        self.durable.name_changed(parent, name, None, Some(ino));
        let p = self.node_mut(parent)?;
        p.dir_mut()?.insert(name, ino);
        p.touch_modified(t);
        if kind == Kind::Dir {
            p.nlink += 1;
        }
        Ok(attr)
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let n = self.node_mut(ino)?;
        n.opens += 1;
        if flags & FMODE_EXEC != 0 {
            n.execs += 1;
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, flags });
        Ok(fh)
    }

    /// ETXTBSY for O_TRUNC of a file a program is running from. The kernel refuses that too,
    /// but only after we have truncated the file: with atomic_o_trunc, it asks for write
    /// access to the inode (which exec(2) denies) after OPEN returns for an open that does not
    /// write (O_RDONLY|O_TRUNC), and after CREATE returns for a create that finds the name
    /// taken. An OPEN that writes reaches us holding write access already, so an exec handle
    /// still counted then is one whose exec is failing or whose release is on its way; such an
    /// open must not fail for it, and [`Fs::open`] asks this only for O_RDONLY.
    fn may_truncate_on_open(&self, ino: u64, flags: i32) -> Result<(), Errno> {
        if flags & libc::O_TRUNC != 0 && self.node(ino)?.execs > 0 {
            return Err(Errno::ETXTBSY);
        }
        Ok(())
    }

    /// O_TRUNC at open time (with atomic_o_trunc the kernel leaves it to us). Linux truncates
    /// whatever the access mode, O_RDONLY included (the kernel has checked write permission).
    fn truncate_on_open(&mut self, writer: &Asker, ino: u64, flags: i32) -> Result<(), Errno> {
        if flags & libc::O_TRUNC == 0 {
            return Ok(());
        }
        self.contents_changing(ino);
        let State {
            nodes,
            space,
            durable,
            ..
        } = self;
        let n = nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Body::File(d) = &mut n.body {
            d.truncate(0, space);
            n.touch_modified(now());
            n.drop_privileges_on_write(writer);
            durable.data_changed(ino, || DataChange::Size(0));
        }
        Ok(())
    }

    /// Moves one name of `ino` from `from` to `to` (or just drops it).
    fn relink(&mut self, ino: u64, from: (u64, &OsStr), to: Option<(u64, &OsStr)>) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if let Some(i) = n
                .links
                .iter()
                .position(|(p, name)| *p == from.0 && name == from.1)
            {
                match to {
                    Some((p, name)) => n.links[i] = (p, name.to_owned()),
                    None => {
                        n.links.remove(i);
                    }
                }
            }
        }
    }

    /// The path of `ino` inside the mount by its first name, followed by `last` if given, or
    /// `None` if `ino` has no name left.
    fn path_of(&self, ino: u64, last: Option<&OsStr>) -> Option<PathText> {
        path_in(&self.nodes, ino, last)
    }

    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).map(|n| &n.body) {
                Some(Body::Dir(d)) if d.parent != ino => ino = d.parent,
                _ => return false,
            }
        }
    }

    /// Drops one name of `ino` (it was unlinked or replaced); a directory dies entirely.
    fn drop_link(&mut self, ino: u64, t: SystemTime) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if let Body::Dir(d) = &mut n.body {
                d.removed = true;
                n.nlink = 0;
            } else {
                n.nlink = n.nlink.saturating_sub(1);
            }
            n.ctime = t;
        }
        self.maybe_free(ino);
    }

    /// A rename, after its permission checks ([`State::may_rename`]).
    fn rename(
        &mut self,
        who: Option<&Asker>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: RenameMode,
    ) -> Result<Renamed, Errno> {
        self.may_rename(who, parent, name, newparent, newname, mode)?;
        check_name(name)?;
        check_name(newname)?;
        let src = self.child(parent, name)?;
        self.live_dir(newparent)?;
        let dst = self.node(newparent)?.dir()?.get(newname);
        let src_is_dir = self.node(src)?.kind == Kind::Dir;
        let t = now();
        if mode == RenameMode::Exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            let dst_is_dir = self.node(dst)?.kind == Kind::Dir;
            if (src_is_dir && self.is_ancestor(src, newparent))
                || (dst_is_dir && self.is_ancestor(dst, parent))
            {
                return Err(Errno::EINVAL);
            }
            for ino in [src, dst, parent, newparent] {
                self.meta_changing(ino);
            }
            self.durable
                .name_changed(parent, name, Some(src), Some(dst));
            self.durable
                .name_changed(newparent, newname, Some(dst), Some(src));
            self.node_mut(parent)?.dir_mut()?.insert(name, dst);
            self.node_mut(newparent)?.dir_mut()?.insert(newname, src);
            if parent != newparent {
                self.reparent(src, src_is_dir, parent, newparent)?;
                self.reparent(dst, dst_is_dir, newparent, parent)?;
            }
            for ino in [src, dst] {
                self.node_mut(ino)?.ctime = t;
            }
            for ino in [parent, newparent] {
                self.node_mut(ino)?.touch_modified(t);
            }
            self.relink(src, (parent, name), Some((newparent, newname)));
            self.relink(dst, (newparent, newname), Some((parent, name)));
            return Ok(Renamed {
                node: src,
                replaced: Some(dst),
            });
        }
        if src_is_dir && self.is_ancestor(src, newparent) {
            return Err(Errno::EINVAL);
        }
        if let Some(dst) = dst {
            if mode == RenameMode::NoReplace {
                return Err(Errno::EEXIST);
            }
            if dst == src {
                // Two names of one inode: POSIX says do nothing.
                return Ok(Renamed {
                    node: src,
                    replaced: None,
                });
            }
            let target = self.node(dst)?;
            match (src_is_dir, target.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !target.dir()?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if dst.is_some() && !src_is_dir {
            self.durable.before_replacing_rename(src);
        }
        for ino in [Some(src), dst, Some(parent), Some(newparent)]
            .into_iter()
            .flatten()
        {
            self.meta_changing(ino);
        }
        self.durable.name_changed(parent, name, Some(src), None);
        self.durable
            .name_changed(newparent, newname, dst, Some(src));
        self.node_mut(parent)?.dir_mut()?.remove(name);
        self.node_mut(newparent)?.dir_mut()?.insert(newname, src);
        if let Some(dst) = dst {
            if src_is_dir {
                self.node_mut(newparent)?.nlink -= 1;
            }
            self.relink(dst, (newparent, newname), None);
            self.drop_link(dst, t);
        }
        self.relink(src, (parent, name), Some((newparent, newname)));
        if parent != newparent {
            self.reparent(src, src_is_dir, parent, newparent)?;
        }
        self.node_mut(src)?.ctime = t;
        for ino in [parent, newparent] {
            self.node_mut(ino)?.touch_modified(t);
        }
        Ok(Renamed {
            node: src,
            replaced: dst,
        })
    }

    /// The permission checks of a rename, in the kernel's order (`vfs_rename`): removing the
    /// source name; removing the target name if there is one, else adding it; and, for a
    /// directory that changes parent, write permission on it (its ".." changes).
    fn may_rename(
        &self,
        who: Option<&Asker>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: RenameMode,
    ) -> Result<(), Errno> {
        let Some(a) = who else {
            return Ok(());
        };
        let src = self.child(parent, name)?;
        self.may_delete(who, parent, src)?;
        check_name(newname)?;
        let dst = self.node(newparent)?.dir()?.get(newname);
        match dst {
            Some(dst) => self.may_delete(who, newparent, dst)?,
            None => self.may_add(who, newparent)?,
        }
        if parent != newparent {
            let s = self.node(src)?;
            if s.kind == Kind::Dir {
                a.may(&s.owned(), MAY_WRITE)?;
            }
            if let (RenameMode::Exchange, Some(dst)) = (mode, dst) {
                let d = self.node(dst)?;
                if d.kind == Kind::Dir {
                    a.may(&d.owned(), MAY_WRITE)?;
                }
            }
        }
        Ok(())
    }

    /// Moves a directory's ".." (and the link counts it implies) from `from` to `to`.
    fn reparent(&mut self, ino: u64, is_dir: bool, from: u64, to: u64) -> Result<(), Errno> {
        if !is_dir {
            return Ok(());
        }
        self.node_mut(ino)?.dir_mut()?.parent = to;
        self.node_mut(from)?.nlink -= 1;
        self.node_mut(to)?.nlink += 1;
        Ok(())
    }
}

impl Fs {
    /// An empty tree: just the root directory.
    pub fn new(opts: FsOptions) -> Fs {
        // Whole pages, rounded up as tmpfs rounds its size=: a limit below one page still
        // holds one page, not none.
        let limit = opts.size_limit.map_or(u64::MAX, |b| b.div_ceil(PAGE));
        let mut root = Node::new(
            Kind::Dir,
            opts.root_perm,
            opts.root_uid,
            opts.root_gid,
            0,
            Body::Dir(Dir::new(ROOT)),
        );
        root.lookups = 1;
        let mut nodes = FxHashMap::default();
        nodes.insert(ROOT, Box::new(root));
        Fs {
            state: Mutex::new(State {
                nodes,
                next_ino: ROOT + 1,
                handles: FxHashMap::default(),
                next_fh: 1,
                space: Space::with_limit(limit),
                durable: Durable::new(opts.model),
                stale: FxHashSet::default(),
            }),
            freed: Condvar::new(),
            permissions: opts.permissions,
            wait_hook: OnceLock::new(),
            others_clear_ids: AtomicBool::new(false),
        }
    }

    /// Sets what a write does when it starts waiting for unlinked files to be freed (once per
    /// tree): the FUSE adapter lets another thread take requests meanwhile, as the requests
    /// that free the space (FORGET, RELEASE) must be read for the wait to end.
    pub fn on_wait(&self, hook: WaitHook) {
        let _ = self.wait_hook.set(hook);
    }

    /// Lets a chmod that only clears setuid and setgid through from someone who does not own
    /// the file, for a kernel that takes them away itself after another user's write,
    /// truncate or chown: that arrives as a chmod from that user. (A FUSE kernel does so
    /// unless the file system takes it on, `FUSE_HANDLE_KILLPRIV_V2`.) tmpfs refuses such a
    /// chmod with EPERM, as the tree does by default.
    pub fn let_others_clear_ids(&self, yes: bool) {
        self.others_clear_ids.store(yes, Ordering::Relaxed);
    }

    /// The caller of a request, for permission checks; `None` when the tree makes none.
    fn asker<'a>(&self, caller: &'a Caller) -> Option<Asker<'a>> {
        self.permissions.map(|source| Asker::new(caller, source))
    }

    /// `caller` as what a write, truncate or chown takes away sees it (its capabilities and
    /// groups), whether or not the tree checks permissions.
    fn writer<'a>(&self, caller: &'a Caller) -> Asker<'a> {
        Asker::new(caller, self.permissions.unwrap_or(perm::ids_only))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the tree half-updated in a way that
        // matters more than refusing all further requests would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `name` up in `parent` (search permission on `parent` needed); the kernel then
    /// holds one more reference to the result.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        let p = s.node(parent)?;
        let d = p.dir()?;
        if let Some(a) = &who {
            a.may(&p.owned(), MAY_EXEC)?;
        }
        let ino = match name.as_bytes() {
            b"." => parent,
            b".." => d.parent,
            _ => {
                check_name(name)?;
                d.get(name).ok_or(Errno::ENOENT)?
            }
        };
        let n = s.node_mut(ino)?;
        n.lookups += 1;
        Ok(n.attr(ino))
    }

    /// The kernel dropped `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        let mut s = self.lock();
        if let Some(n) = s.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
        }
        s.maybe_free(ino);
        self.freed.notify_all();
    }

    /// Whether everyone may search directory `dir` and every directory above it (execute
    /// permission for owner, group and others all the way up): then anyone may walk to a
    /// name in `dir`, whoever they are, and the kernel may keep it without asking.
    pub fn searchable_by_all(&self, dir: u64) -> bool {
        let s = self.lock();
        let mut ino = dir;
        loop {
            let Some(n) = s.nodes.get(&ino) else {
                return false;
            };
            if !all_may_search(n.perm) {
                return false;
            }
            match &n.body {
                Body::Dir(d) if d.parent != ino => ino = d.parent,
                Body::Dir(_) => return true,
                _ => return false,
            }
        }
    }

    /// stat(2).
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(self.lock().node(ino)?.attr(ino))
    }

    /// chmod, chown, truncate, utimensat: applies every field given, in one step.
    pub fn setattr(&self, caller: &Caller, ino: u64, set: &SetAttr) -> Result<Attr, Errno> {
        let writer = self.writer(caller);
        let mut guard = self.lock();
        let mut set = *set;
        if self.permissions.is_some() {
            let others_clear_ids = self.others_clear_ids.load(Ordering::Relaxed);
            may_setattr(&writer, guard.node(ino)?, &mut set, others_clear_ids)?;
        }
        let set = &set;
        guard.meta_changing(ino);
        if set.size.is_some() {
            guard.data_changing(ino);
        }
        let State {
            nodes,
            space,
            durable,
            ..
        } = &mut *guard;
        let n = nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        // The privileges a chown or truncate takes away, judged on the node as it was. The
        // kernel leaves that to us (FUSE_HANDLE_KILLPRIV_V2) and sends chown(f, -1, -1) as a
        // setattr with no field at all.
        let nothing = *set == SetAttr::default();
        if set.uid.is_some() || set.gid.is_some() || nothing {
            n.drop_privileges_on_chown(&writer);
        }
        if set.size.is_some() {
            n.drop_privileges_on_write(&writer);
        }
        let t = now();
        // Times as tmpfs sets them: a new size sets mtime and ctime; truncate(2) to the same
        // size does only if the file has pages to drop (ftruncate(2) always does: the adapter
        // adds mtime). Any other field, or none (chown(f, -1, -1)), sets ctime.
        let mut untouched = false;
        if let Some(size) = set.size {
            match &mut n.body {
                Body::File(d) => {
                    untouched = !set.by_handle && d.size() == size && d.pages() == 0;
                    d.truncate(size, space);
                    durable.data_changed(ino, || DataChange::Size(size));
                }
                Body::Dir(_) => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            if !untouched {
                n.mtime = t;
            }
        }
        untouched &= !set.by_handle
            && set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.is_none()
            && set.ctime.is_none();
        if let Some(mode) = set.mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            n.uid = uid;
        }
        if let Some(gid) = set.gid {
            n.gid = gid;
        }
        if let Some(a) = set.atime {
            n.atime = resolve(a, t);
        }
        if let Some(m) = set.mtime {
            n.mtime = resolve(m, t);
        }
        if !untouched {
            n.ctime = set.ctime.unwrap_or(t);
        }
        Ok(n.attr(ino))
    }

    /// readlink(2).
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        match &self.lock().node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// mknod(2): a regular file, fifo, socket or device node, by the type bits of `mode`.
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Attr, Errno> {
        let kind = Kind::from_mode(mode).ok_or(Errno::EINVAL)?;
        let (body, rdev) = match kind {
            Kind::File => (Body::File(FileData::default()), 0),
            Kind::Fifo | Kind::Socket => (Body::Special, 0),
            Kind::CharDevice | Kind::BlockDevice => (Body::Special, rdev),
            Kind::Dir | Kind::Symlink => return Err(Errno::EPERM),
        };
        let new = NewNode {
            kind,
            perm: mode,
            rdev,
            body,
        };
        let who = self.asker(caller);
        self.lock()
            .add_node(caller, who.as_ref(), parent, name, new)
    }

    /// mkdir(2).
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<Attr, Errno> {
        let body = Body::Dir(Dir::new(parent));
        let new = NewNode {
            kind: Kind::Dir,
            perm: mode,
            rdev: 0,
            body,
        };
        let who = self.asker(caller);
        self.lock()
            .add_node(caller, who.as_ref(), parent, name, new)
    }

    /// symlink(2).
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<Attr, Errno> {
        let target = target.as_bytes();
        if target.len() > SYMLINK_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        let body = Body::Symlink(target.to_vec());
        let new = NewNode {
            kind: Kind::Symlink,
            perm: 0o777,
            rdev: 0,
            body,
        };
        let who = self.asker(caller);
        self.lock()
            .add_node(caller, who.as_ref(), parent, name, new)
    }

    /// unlink(2). Returns the inode that lost the name.
    pub fn unlink(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        let ino = s.child(parent, name)?;
        s.may_delete(who.as_ref(), parent, ino)?;
        if s.node(ino)?.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let t = now();
        s.meta_changing(parent);
        s.meta_changing(ino);
        s.durable.name_changed(parent, name, Some(ino), None);
        let p = s.node_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.touch_modified(t);
        s.relink(ino, (parent, name), None);
        s.drop_link(ino, t);
        Ok(ino)
    }

    /// rmdir(2). Returns the removed directory's inode.
    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        let ino = s.child(parent, name)?;
        s.may_delete(who.as_ref(), parent, ino)?;
        let n = s.node(ino)?;
        if !n.dir()?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let t = now();
        s.meta_changing(parent);
        s.meta_changing(ino);
        s.durable.name_changed(parent, name, Some(ino), None);
        let p = s.node_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.touch_modified(t);
        p.nlink -= 1;
        s.relink(ino, (parent, name), None);
        s.drop_link(ino, t);
        Ok(ino)
    }

    /// rename(2) and renameat2(2).
    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: RenameMode,
    ) -> Result<Renamed, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        s.rename(who.as_ref(), parent, name, newparent, newname, mode)
    }

    /// renameat2(2) with `RENAME_WHITEOUT` (and `RENAME_NOREPLACE` if `noreplace`): the rename,
    /// then, in the same step, a whiteout at the old name: a character device 0:0 with mode 0
    /// owned by the caller, as tmpfs makes it (overlay file systems use it).
    pub fn rename_whiteout(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<Renamed, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        let mode = if noreplace {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        let done = s.rename(who.as_ref(), parent, name, newparent, newname, mode)?;
        if s.node(parent)?.dir()?.get(name).is_none() {
            let whiteout = NewNode {
                kind: Kind::CharDevice,
                perm: 0,
                rdev: 0,
                body: Body::Special,
            };
            let attr = s.add_node(caller, None, parent, name, whiteout)?;
            // The kernel was not given this node: it holds no reference to it.
            s.node_mut(attr.ino)?.lookups = 0;
        }
        Ok(done)
    }

    /// The path of `ino` inside the mount ("/" for the root), by its first name; `None` once
    /// it has no name left.
    pub fn path(&self, ino: u64) -> Option<PathText> {
        // The root is always "/": no need to look at the tree (the kernel asks for the root's
        // attributes before most path walks).
        if ino == ROOT {
            return Some(PathText::from_names(&[]));
        }
        self.lock().path_of(ino, None)
    }

    /// The path `name` has (or would have) in directory `parent`.
    pub fn name_path(&self, parent: u64, name: &OsStr) -> Option<PathText> {
        if parent == ROOT {
            return Some(PathText::from_names(&[name]));
        }
        self.lock().path_of(parent, Some(name))
    }

    /// link(2): a new name for `ino`.
    pub fn link(
        &self,
        caller: &Caller,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<Attr, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        check_name(newname)?;
        let n = s.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if n.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if let Some(a) = &who {
            a.may_link(&n.owned(), n.kind == Kind::File)?;
        }
        if s.live_dir(newparent)?.get(newname).is_some() {
            return Err(Errno::EEXIST);
        }
        s.may_add(who.as_ref(), newparent)?;
        let t = now();
        s.meta_changing(newparent);
        s.meta_changing(ino);
        s.durable.name_changed(newparent, newname, None, Some(ino));
        let p = s.node_mut(newparent)?;
        p.dir_mut()?.insert(newname, ino);
        p.touch_modified(t);
        let n = s.node_mut(ino)?;
        n.nlink += 1;
        n.ctime = t;
        n.lookups += 1;
        n.links.push((newparent, newname.to_owned()));
        Ok(n.attr(ino))
    }

    /// open(2) of an existing node; O_TRUNC truncates here. Returns a file handle.
    pub fn open(&self, caller: &Caller, ino: u64, flags: i32) -> Result<u64, Errno> {
        let writer = self.writer(caller);
        let who = self.permissions.and(Some(&writer));
        let mut s = self.lock();
        let n = s.node(ino)?;
        if n.kind == Kind::Dir && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EISDIR);
        }
        s.may_open(who, ino, flags)?;
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            s.may_truncate_on_open(ino, flags)?;
        }
        s.truncate_on_open(&writer, ino, flags)?;
        s.open_handle(ino, flags)
    }

    /// open(2) with O_CREAT: creates `name` or, without O_EXCL, opens the node already there.
    /// Returns the attributes and a file handle; the kernel holds one more reference.
    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, u64), Errno> {
        let writer = self.writer(caller);
        let who = self.permissions.and(Some(&writer));
        let mut s = self.lock();
        check_name(name)?;
        if let Some(ino) = s.live_dir(parent)?.get(name) {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            if s.node(ino)?.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            s.may_open(who, ino, flags)?;
            s.may_truncate_on_open(ino, flags)?;
            s.truncate_on_open(&writer, ino, flags)?;
            let fh = s.open_handle(ino, flags)?;
            let n = s.node_mut(ino)?;
            n.lookups += 1;
            return Ok((n.attr(ino), fh));
        }
        let body = Body::File(FileData::default());
        let attr = s.add_node(
            caller,
            who,
            parent,
            name,
            NewNode {
                kind: Kind::File,
                perm: mode,
                rdev: 0,
                body,
            },
        )?;
        let fh = s.open_handle(attr.ino, flags)?;
        Ok((attr, fh))
    }

    /// read(2) through handle `fh`: at most `size` bytes, fewer only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_at(fh, offset, size).map(|(data, _)| data)
    }

    /// [`Fs::read`], also returning the file size at the time of the read (which tells a
    /// short read from end of file).
    pub fn read_at(&self, fh: u64, offset: u64, size: u32) -> Result<(Vec<u8>, u64), Errno> {
        let mut out = Vec::new();
        let file_size = self.read_into(fh, offset, size, &mut out)?;
        Ok((out, file_size))
    }

    /// [`Fs::read_at`] appending the bytes to `buf` (left as it was on error), so that a caller
    /// serving many reads can reuse one buffer instead of allocating and zeroing one per read.
    /// Returns the file size at the time of the read.
    pub fn read_into(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<u64, Errno> {
        let mut s = self.lock();
        let h = s.handle(fh)?;
        if h.flags & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(Errno::EBADF);
        }
        let n = s.node_mut(h.ino)?;
        let Body::File(d) = &n.body else {
            return Err(if n.kind == Kind::Dir {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        };
        d.read_into(offset, size as usize, buf);
        let file_size = d.size();
        if h.flags & libc::O_NOATIME == 0 {
            // relatime, the Linux default: only when atime is not already newer than both.
            if n.atime <= n.mtime || n.atime <= n.ctime {
                n.atime = now();
            }
        }
        Ok(file_size)
    }

    /// write(2) through handle `fh`; O_APPEND handles write at end of file whatever the
    /// offset. Returns the bytes written: fewer than asked only when space ran out part way.
    pub fn write(&self, caller: &Caller, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.write_with(caller, fh, offset, data, false)
    }

    /// [`Fs::write`]; `sync` says the write is durable when it returns (RWF_SYNC and the like),
    /// as it is through a handle opened with O_SYNC or O_DSYNC.
    pub fn write_with(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<u32, Errno> {
        let writer = self.writer(caller);
        let mut guard = self.lock();
        let h = guard.handle(fh)?;
        if h.flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(Errno::EBADF);
        }
        let sync = sync || h.flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let deadline = Instant::now() + SPACE_WAIT;
        let mut written = 0;
        let mut waiting = None;
        loop {
            guard.contents_changing(h.ino);
            let State {
                nodes,
                space,
                durable,
                ..
            } = &mut *guard;
            let n = nodes.get_mut(&h.ino).ok_or(Errno::ENOENT)?;
            let Body::File(d) = &mut n.body else {
                return Err(Errno::EINVAL);
            };
            let at = if h.flags & libc::O_APPEND != 0 {
                d.size()
            } else {
                offset + written as u64
            };
            let done = d.write(at, &data[written..], space);
            if done > 0 {
                if sync {
                    durable.synced_write(h.ino, d, at, done as u64);
                } else {
                    let d: &FileData = d;
                    durable.data_changed(h.ino, || DataChange::Write(d.extent(at, done as u64)));
                }
                n.touch_modified(now());
                n.drop_privileges_on_write(&writer);
            }
            written += done;
            // The kernel frees an unlinked file (FORGET, RELEASE) asynchronously: a write
            // queued right after `rm` may be served first. Wait for that space, as a local
            // file system would already have it back.
            let now = Instant::now();
            if written == data.len() || now >= deadline || guard.unlinked_pages() == 0 {
                break;
            }
            if waiting.is_none() {
                waiting = self.wait_hook.get().map(|h| (h.0)());
            }
            guard = self
                .freed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if written == 0 && !data.is_empty() {
            return Err(Errno::ENOSPC);
        }
        Ok(written as u32)
    }

    /// True if `fh` was opened before a crash (every request on it fails with EIO).
    pub fn is_stale(&self, fh: u64) -> bool {
        self.lock().stale.contains(&fh)
    }

    /// The open flags a handle was opened with.
    pub fn handle_flags(&self, fh: u64) -> Result<i32, Errno> {
        Ok(self.lock().handle(fh)?.flags)
    }

    /// close(2) of the last descriptor sharing handle `fh`.
    pub fn release(&self, fh: u64) -> Result<(), Errno> {
        let mut s = self.lock();
        if s.stale.remove(&fh) {
            return Ok(());
        }
        let h = s.handles.remove(&fh).ok_or(Errno::EBADF)?;
        if let Some(n) = s.nodes.get_mut(&h.ino) {
            n.opens = n.opens.saturating_sub(1);
            if h.flags & FMODE_EXEC != 0 {
                n.execs = n.execs.saturating_sub(1);
            }
        }
        s.maybe_free(h.ino);
        self.freed.notify_all();
        Ok(())
    }

    /// fsync(2) or, with `datasync`, fdatasync(2) of handle `fh`, on a file or a directory:
    /// what the persistence model says it makes durable survives a crash from now on.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let mut s = self.lock();
        let h = s.handle(fh)?;
        if s.node(h.ino)?.kind == Kind::Dir {
            s.durable.fsync_dir(h.ino);
        } else {
            s.durable.fsync_file(h.ino, datasync);
        }
        Ok(())
    }

    /// The persistence model.
    pub fn model(&self) -> Model {
        self.lock().durable.model
    }

    /// What a crash would lose now (`rawfs crash --dry-run`).
    pub fn unsynced(&self) -> Losses {
        let s = self.lock();
        if s.durable.is_clean() {
            return Losses::default();
        }
        let path = |i: u64| s.path_of(i, None).map(|p| p.as_str().to_string());
        durable::plan(
            &s.nodes,
            &s.durable,
            Choice::Draw(CrashOptions::default()),
            &path,
        )
        .losses
    }

    /// Writes the tree a crash under `opts` would leave into the real directory `dir` (missing
    /// or empty), without changing this tree. Returns what that crash loses.
    pub fn crash_image(
        &self,
        opts: CrashOptions,
        dir: &std::path::Path,
    ) -> std::io::Result<Losses> {
        let outcome = {
            let s = self.lock();
            let path = |i: u64| s.path_of(i, None).map(|p| p.as_str().to_string());
            durable::plan(&s.nodes, &s.durable, Choice::Draw(opts), &path)
        };
        image::write(&outcome.nodes, dir)?;
        Ok(outcome.losses)
    }

    /// Cuts the power: the tree becomes what the disk held, under `opts`. Every handle open
    /// now fails with EIO from here on. Returns what was lost and what the kernel may have
    /// cached that is no longer true.
    pub fn crash(&self, opts: CrashOptions) -> Crashed {
        let mut s = self.lock();
        let mut stale = Stale::default();
        let outcome = {
            let st = &*s;
            let path = |i: u64| st.path_of(i, None).map(|p| p.as_str().to_string());
            durable::plan(&st.nodes, &st.durable, Choice::Draw(opts), &path)
        };
        for nodes in [&s.nodes, &outcome.nodes] {
            for (&ino, n) in nodes {
                stale.inodes.push(ino);
                if let Body::Dir(d) = &n.body {
                    stale
                        .entries
                        .extend(d.iter().map(|(name, _)| (ino, name.to_owned())));
                }
            }
        }
        stale.inodes.sort_unstable();
        stale.inodes.dedup();
        stale.entries.sort_unstable();
        stale.entries.dedup();
        s.nodes = outcome.nodes;
        let open: Vec<u64> = s.handles.keys().copied().collect();
        s.stale.extend(open);
        s.handles.clear();
        let used = s
            .nodes
            .values()
            .map(|n| match &n.body {
                Body::File(d) => d.pages(),
                _ => 0,
            })
            .sum();
        s.space.used = used;
        s.durable.reset();
        self.freed.notify_all();
        Crashed {
            losses: outcome.losses,
            stale,
        }
    }

    /// opendir(3): a handle for readdir.
    pub fn opendir(&self, caller: &Caller, ino: u64, flags: i32) -> Result<u64, Errno> {
        let who = self.asker(caller);
        let mut s = self.lock();
        s.node(ino)?.dir()?;
        s.may_open(who.as_ref(), ino, flags)?;
        s.open_handle(ino, flags)
    }

    /// readdir(3): up to `READDIR_BATCH` entries after `offset` ("." and ".." first), in a
    /// stable order.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        let mut out = Vec::new();
        self.readdir_with(fh, offset, |ino, offset, kind, name| {
            if out.len() == READDIR_BATCH {
                return true;
            }
            out.push(DirEntry {
                ino,
                offset,
                kind,
                name: name.to_owned(),
            });
            false
        })?;
        Ok(out)
    }

    /// readdir(3) into the caller's buffer: hands `add` each entry after `offset` as
    /// (inode, offset of the next entry, kind, name) until it returns true: the buffer is
    /// full and did not take that entry, which the next call, from the offset of the last
    /// entry taken, gives again. Only the entries offered are looked at, whatever the size of
    /// the directory. Returns the number of entries taken.
    pub fn readdir_with(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, Kind, &OsStr) -> bool,
    ) -> Result<usize, Errno> {
        let s = self.lock();
        let h = s.handle(fh)?;
        let dir = s.node(h.ino)?.dir()?;
        let mut taken = 0;
        for (cookie, name, ino) in [(1, ".", h.ino), (2, "..", dir.parent)] {
            if offset < cookie {
                if add(ino, cookie, Kind::Dir, OsStr::new(name)) {
                    return Ok(taken);
                }
                taken += 1;
            }
        }
        for (cookie, name, ino) in dir.entries_after(offset) {
            let kind = s.node(ino).map(|n| n.kind).unwrap_or(Kind::File);
            if add(ino, cookie, kind, name) {
                break;
            }
            taken += 1;
        }
        Ok(taken)
    }

    /// closedir(3).
    pub fn releasedir(&self, fh: u64) -> Result<(), Errno> {
        self.release(fh)
    }

    /// statfs(2).
    pub fn statfs(&self) -> StatFs {
        let s = self.lock();
        let blocks = if s.space.limit == u64::MAX {
            u64::MAX / PAGE
        } else {
            s.space.limit
        };
        let free = blocks.saturating_sub(s.space.used);
        StatFs {
            blocks,
            bfree: free,
            bavail: free,
            files: MAX_INODES,
            ffree: MAX_INODES.saturating_sub(s.nodes.len() as u64),
            bsize: PAGE as u32,
            namelen: NAME_MAX as u32,
        }
    }

    /// setxattr(2); `flags` takes XATTR_CREATE and XATTR_REPLACE.
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        check_xattr_name(name)?;
        let who = self.asker(caller);
        let mut s = self.lock();
        s.may_xattr(who.as_ref(), ino, name, MAY_WRITE)?;
        s.meta_changing(ino);
        let n = s.node_mut(ino)?;
        let exists = n.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Errno::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Errno::ENODATA);
        }
        n.xattrs.insert(name.to_owned(), value.to_vec());
        n.ctime = now();
        Ok(())
    }

    /// getxattr(2): the whole value.
    pub fn getxattr(&self, caller: &Caller, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        check_xattr_name(name)?;
        let who = self.asker(caller);
        let s = self.lock();
        s.may_xattr(who.as_ref(), ino, name, MAY_READ)?;
        s.node(ino)?.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    /// listxattr(2): every name, each followed by a NUL byte.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let s = self.lock();
        let mut out = Vec::new();
        for name in s.node(ino)?.xattrs.keys() {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// removexattr(2).
    pub fn removexattr(&self, caller: &Caller, ino: u64, name: &OsStr) -> Result<(), Errno> {
        check_xattr_name(name)?;
        let who = self.asker(caller);
        let mut s = self.lock();
        s.may_xattr(who.as_ref(), ino, name, MAY_WRITE)?;
        s.meta_changing(ino);
        let n = s.node_mut(ino)?;
        n.xattrs.remove(name).ok_or(Errno::ENODATA)?;
        n.ctime = now();
        Ok(())
    }

    /// access(2) and chdir(2): whether `caller` may read, write or execute (the `R_OK`,
    /// `W_OK` and `X_OK` bits of `mask`) `ino`, as Linux decides for access(2) (the request
    /// carries the real uid and gid; capabilities count for a real uid 0 only).
    pub fn access(&self, caller: &Caller, ino: u64, mask: i32) -> Result<(), Errno> {
        let source = self.permissions.unwrap_or(perm::ids_only);
        let who = Asker::for_access(caller, source);
        let s = self.lock();
        let n = s.node(ino)?;
        who.may(&n.owned(), mask as u32 & 7)
    }

    /// fallocate(2) through handle `fh`.
    pub fn fallocate(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        len: u64,
        op: Allocate,
    ) -> Result<(), Errno> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let writer = self.writer(caller);
        let mut guard = self.lock();
        let h = guard.handle(fh)?;
        guard.contents_changing(h.ino);
        let State {
            nodes,
            space,
            durable,
            ..
        } = &mut *guard;
        let n = nodes.get_mut(&h.ino).ok_or(Errno::ENOENT)?;
        let Body::File(d) = &mut n.body else {
            return Err(Errno::ENODEV);
        };
        let size = d.size();
        match op {
            Allocate::Extend | Allocate::KeepSize => {
                if offset.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
                    return Err(Errno::EFBIG);
                }
                if !d.allocate(offset, len, op == Allocate::KeepSize, space) {
                    return Err(Errno::ENOSPC);
                }
            }
            Allocate::PunchHole => {
                d.punch_hole(offset, len, space);
                durable.data_changed(h.ino, || DataChange::Zero { offset, len });
            }
        }
        if d.size() != size {
            let new_size = d.size();
            durable.data_changed(h.ino, || DataChange::Size(new_size));
        }
        n.touch_modified(now());
        n.drop_privileges_on_write(&writer);
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel answers the other modes itself).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let s = self.lock();
        let h = s.handle(fh)?;
        let Body::File(d) = &s.node(h.ino)?.body else {
            return Err(Errno::EINVAL);
        };
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let found = match whence {
            libc::SEEK_DATA => d.seek_data(offset),
            libc::SEEK_HOLE => d.seek_hole(offset),
            _ => return Err(Errno::EINVAL),
        };
        found.map(|o| o as i64).ok_or(Errno::ENXIO)
    }

    /// copy_file_range(2) between two handles.
    pub fn copy_file_range(
        &self,
        caller: &Caller,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        let len = len.min(u64::from(u32::MAX) & !(PAGE - 1)) as u32;
        let data = self.read(fh_in, offset_in, len)?;
        if data.is_empty() {
            return Ok(0);
        }
        self.write(caller, fh_out, offset_out, &data)
    }

    /// Number of live inodes (for tests and status).
    pub fn inode_count(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Bytes of file data allocated, in whole pages.
    pub fn bytes_used(&self) -> u64 {
        self.lock().space.used * PAGE
    }

    /// Bytes of file data freed since the tree was made (deleted, truncated, punched): a
    /// counter that only grows.
    pub fn bytes_freed(&self) -> u64 {
        self.lock().space.given_back * PAGE
    }
}

fn check_xattr_name(name: &OsStr) -> Result<(), Errno> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > NAME_MAX {
        return Err(Errno::ERANGE);
    }
    const NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    // A bare namespace prefix ("user.") is EINVAL, as the VFS answers for local file systems.
    if NAMESPACES.contains(&b) {
        return Err(Errno::EINVAL);
    }
    if !NAMESPACES
        .iter()
        .any(|ns| b.starts_with(ns) && b.len() > ns.len())
    {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_into` appends what the read returns to a buffer that already holds bytes: holes
    /// as zeros, clipped at end of file, nothing past it; on error the buffer is untouched.
    #[test]
    fn read_into_appends_to_the_callers_buffer() {
        let fs = Fs::new(FsOptions {
            permissions: None,
            ..FsOptions::default()
        });
        let c = Caller::default();
        let (attr, fh) = fs
            .create(&c, ROOT, OsStr::new("f"), 0o644, libc::O_RDWR)
            .expect("create");
        fs.write(&c, fh, 0, b"abc").expect("write");
        fs.write(&c, fh, 2 * PAGE + 10, b"xyz").expect("write");
        let size = 2 * PAGE + 13;
        let old = SetAttr {
            atime: Some(SetTime::At(SystemTime::UNIX_EPOCH)),
            ..SetAttr::default()
        };
        fs.setattr(&c, attr.ino, &old).expect("setattr");

        // From data through a whole hole page into data, ending at end of file.
        let mut buf = b"keep".to_vec();
        assert_eq!(fs.read_into(fh, 1, 3 * PAGE as u32, &mut buf), Ok(size));
        let mut want = b"keepbc".to_vec();
        want.resize(4 + (2 * PAGE + 10 - 1) as usize, 0);
        want.extend_from_slice(b"xyz");
        assert_eq!(buf, want);
        assert!(fs.getattr(attr.ino).expect("getattr").atime > SystemTime::UNIX_EPOCH);

        // The partial page at end of file, and reads at and past end of file.
        buf.clear();
        assert_eq!(fs.read_into(fh, 2 * PAGE, PAGE as u32, &mut buf), Ok(size));
        assert_eq!(buf, b"\0\0\0\0\0\0\0\0\0\0xyz");
        for offset in [size, size + 1, 10 * PAGE] {
            let mut buf = b"keep".to_vec();
            assert_eq!(fs.read_into(fh, offset, 100, &mut buf), Ok(size));
            assert_eq!(buf, b"keep");
        }
        // A hole only: zeros, never the buffer's old contents.
        let mut buf = vec![0xAA; PAGE as usize];
        buf.truncate(1);
        assert_eq!(fs.read_into(fh, PAGE + 5, 20, &mut buf), Ok(size));
        assert_eq!(buf, [&[0xAA][..], &[0; 20]].concat());
        assert_eq!(fs.read_at(fh, PAGE + 5, 20), Ok((vec![0; 20], size)));

        // O_NOATIME leaves atime alone.
        fs.setattr(&c, attr.ino, &old).expect("setattr");
        let quiet = fs
            .open(&c, attr.ino, libc::O_RDONLY | libc::O_NOATIME)
            .expect("open");
        assert_eq!(fs.read_into(quiet, 0, 3, &mut Vec::new()), Ok(size));
        assert_eq!(
            fs.getattr(attr.ino).expect("getattr").atime,
            SystemTime::UNIX_EPOCH
        );

        // Errors leave the buffer as it was.
        let wronly = fs.open(&c, attr.ino, libc::O_WRONLY).expect("open");
        let dir = fs.opendir(&c, ROOT, 0).expect("opendir");
        for (h, errno) in [
            (wronly, Errno::EBADF),
            (dir, Errno::EISDIR),
            (9999, Errno::EBADF),
        ] {
            let mut buf = b"keep".to_vec();
            assert_eq!(fs.read_into(h, 0, 10, &mut buf), Err(errno));
            assert_eq!(buf, b"keep");
        }
    }

    /// O_TRUNC of a file exec(2) holds open fails with ETXTBSY and leaves it whole where the
    /// kernel would ask for write access only afterwards; where it asked before (an OPEN that
    /// writes), it truncates. Once the exec handle is released, O_RDONLY|O_TRUNC truncates.
    #[test]
    fn o_trunc_of_a_file_a_program_runs_from_is_refused_before_it_truncates() {
        let fs = Fs::new(FsOptions {
            permissions: None,
            ..FsOptions::default()
        });
        let c = Caller::default();
        let name = OsStr::new("prog");
        let (attr, fh) = fs
            .create(&c, ROOT, name, 0o755, libc::O_WRONLY)
            .expect("create");
        fs.write(&c, fh, 0, b"#!/bin/sh\n").expect("write");
        fs.release(fh).expect("release");
        let size = |fs: &Fs| fs.getattr(attr.ino).expect("getattr").size;
        let exec = fs
            .open(&c, attr.ino, libc::O_RDONLY | FMODE_EXEC)
            .expect("exec open");

        let read_trunc = libc::O_RDONLY | libc::O_TRUNC;
        assert_eq!(fs.open(&c, attr.ino, read_trunc), Err(Errno::ETXTBSY));
        let create_trunc = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        assert_eq!(
            fs.create(&c, ROOT, name, 0o644, create_trunc).map(|_| ()),
            Err(Errno::ETXTBSY)
        );
        assert_eq!(size(&fs), 10);
        // Without O_TRUNC, or holding write access already, the open goes ahead.
        let plain = fs.open(&c, attr.ino, libc::O_RDONLY).expect("open");
        fs.release(plain).expect("release");
        let write_trunc = fs
            .open(&c, attr.ino, libc::O_WRONLY | libc::O_TRUNC)
            .expect("open for writing");
        fs.release(write_trunc).expect("release");
        assert_eq!(size(&fs), 0);

        let writer = fs.open(&c, attr.ino, libc::O_WRONLY).expect("open");
        fs.write(&c, writer, 0, b"x").expect("write");
        fs.release(writer).expect("release");
        fs.release(exec).expect("release");
        let after = fs.open(&c, attr.ino, read_trunc).expect("open after exec");
        fs.release(after).expect("release");
        assert_eq!(size(&fs), 0);
    }
}
