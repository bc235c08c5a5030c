//! `Event`: one request the kernel sent, as the trace records it. Plain data, serialized as
//! one JSON object per line (the field names are a documented contract: docs/trace.md).

use serde::{Deserialize, Serialize};

use crate::text::{Comm, PathText};

/// The kind of request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Name lookup in a directory.
    #[default]
    Lookup,
    /// The kernel dropped its references to an inode.
    Forget,
    /// stat.
    Getattr,
    /// chmod, chown, truncate, utimensat.
    Setattr,
    /// readlink.
    Readlink,
    /// mknod (fifos, sockets, devices, and regular files without create).
    Mknod,
    /// mkdir.
    Mkdir,
    /// unlink.
    Unlink,
    /// rmdir.
    Rmdir,
    /// symlink.
    Symlink,
    /// rename and renameat2.
    Rename,
    /// link.
    Link,
    /// open of an existing file.
    Open,
    /// read.
    Read,
    /// write.
    Write,
    /// close of one descriptor (flush).
    Flush,
    /// Last close of an open file.
    Release,
    /// fsync or fdatasync.
    Fsync,
    /// opendir.
    Opendir,
    /// readdir.
    Readdir,
    /// Last close of an open directory.
    Releasedir,
    /// fsync of a directory.
    Fsyncdir,
    /// statfs.
    Statfs,
    /// setxattr.
    Setxattr,
    /// getxattr.
    Getxattr,
    /// listxattr.
    Listxattr,
    /// removexattr.
    Removexattr,
    /// access.
    Access,
    /// open with O_CREAT of a missing name.
    Create,
    /// fallocate.
    Fallocate,
    /// lseek with SEEK_DATA or SEEK_HOLE.
    Lseek,
    /// copy_file_range.
    CopyFileRange,
    /// fcntl lock query.
    Getlk,
    /// fcntl lock or flock.
    Setlk,
    /// ioctl.
    Ioctl,
    /// poll.
    Poll,
    /// bmap.
    Bmap,
    /// Not a request: the power was cut (`rawfs crash` or a crash rule); the note says what
    /// was lost.
    Crash,
}

impl Op {
    /// Every operation, in declaration order.
    pub const ALL: &'static [Op] = &[
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
        Op::Getlk,
        Op::Setlk,
        Op::Ioctl,
        Op::Poll,
        Op::Bmap,
        Op::Crash,
    ];

    /// The name used in the trace (`"copy_file_range"`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
            Op::Getlk => "getlk",
            Op::Setlk => "setlk",
            Op::Ioctl => "ioctl",
            Op::Poll => "poll",
            Op::Bmap => "bmap",
            Op::Crash => "crash",
        }
    }

    /// Parses a trace name (`"write"`), case-insensitive.
    pub fn from_name(s: &str) -> Option<Op> {
        let lower = s.trim().to_ascii_lowercase();
        Op::ALL.iter().copied().find(|op| op.name() == lower)
    }
}

/// The fields a setattr request changes (absent: left alone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetattrFields {
    /// New mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// New owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// New group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// New size (truncate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// New access time: nanoseconds since the epoch, or "now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<TimeSpec>,
    /// New modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<TimeSpec>,
}

/// A time a request sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSpec {
    /// `UTIME_NOW`.
    Now,
    /// Nanoseconds since 1970-01-01 UTC (negative before).
    Ns(i128),
}

/// One request and rawfs's answer.
///
/// Optional fields are present only where the operation has them; see docs/trace.md for which
/// operation fills which field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Order in which requests reached rawfs, from 1; one counter per mount.
    pub seq: u64,
    /// When the request arrived: nanoseconds since the mount started (monotonic clock).
    pub ts_ns: u64,
    /// How long rawfs took to answer, in nanoseconds.
    pub dur_ns: u64,
    /// Thread id of the caller, as the kernel reports it (0 for requests the kernel makes on
    /// its own, such as forget).
    pub tid: u32,
    /// Process id (thread group) of the caller; 0 if unknown (the process was gone).
    pub pid: u32,
    /// Command name of the caller's process; empty if unknown.
    pub comm: Comm,
    /// File system user id of the caller.
    pub uid: u32,
    /// File system group id of the caller.
    pub gid: u32,
    /// The operation.
    pub op: Op,
    /// The inode the request is about (the parent directory for name operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Path of the node the request is about, inside the mount ("/" is the mount point), as
    /// it was when the request arrived; for name operations, the path of the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathText>,
    /// Second path: the new name of a rename or link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path2: Option<PathText>,
    /// Second inode: the new parent of a rename or link, the output file of copy_file_range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino2: Option<u64>,
    /// Inode a name operation acted on: the unlinked or removed node, the renamed node, the
    /// linked node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// File handle the request names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fh: Option<u64>,
    /// Second file handle (copy_file_range output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fh2: Option<u64>,
    /// Raw flags: open flags (open, create, read, write, release...), rename flags,
    /// setxattr flags, fallocate mode, access mask or lseek whence, by operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<i32>,
    /// The flags decoded (`O_WRONLY|O_CREAT|O_EXCL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags_str: Option<String>,
    /// Mode of a create, mkdir or mknod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Device number of a mknod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u32>,
    /// xattr name, or the target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fields of a setattr (boxed: rare, and large beside the other fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Box<SetattrFields>>,
    /// Offset of a read, write, readdir, fallocate, lseek or copy_file_range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Second offset: where copy_file_range writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset2: Option<i64>,
    /// Size requested: bytes to read or write, buffer size of getxattr/listxattr, length
    /// of fallocate or copy_file_range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Size returned: bytes read, written or copied, xattr value or list length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<u64>,
    /// A read that returned less than asked before end of file, or a write that wrote less
    /// than asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short: bool,
    /// File size when a read was answered (tells a short read from end of file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Inode returned by lookup, create, mkdir, mknod, symlink, link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_ino: Option<u64>,
    /// File handle returned by open, create, opendir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_fh: Option<u64>,
    /// Offset returned by lseek.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_offset: Option<i64>,
    /// The errno by name (`"EEXIST"`) when the request failed; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// What the fault rule did: `errno EIO`, `delay 100ms` (or `delay 100ms after`),
    /// `held 1.2s`, `short 1`, `corrupt flip 0+4`, `enospc after 10000`, `competitor`,
    /// `kill TERM` (the signal as the rule names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Id of the fault rule that changed this request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u64>,
}

impl Event {
    /// True if the request succeeded.
    pub fn ok(&self) -> bool {
        self.errno.is_none()
    }

    /// True if the open or create flags include all of `bits`.
    pub fn has_flags(&self, bits: i32) -> bool {
        self.flags.is_some_and(|f| f & bits == bits)
    }
}

/// First line of a JSON Lines trace: says what follows and in which format version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version of the events that follow (this is version 1).
    pub rawfs_trace: u32,
    /// rawfs version that wrote the trace.
    pub rawfs_version: String,
    /// Mount point.
    pub mountpoint: String,
    /// Wall-clock time the mount started, in nanoseconds since the epoch (`ts_ns` counts
    /// from here).
    pub started_unix_ns: u128,
}

/// A line of a JSON Lines trace file that marks events missing from it: `{"gap": {...}}`.
/// Written by the trace writer when it dropped events (overflow policy `drop`), right after
/// the events it wrote before noticing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// How many events are missing.
    pub dropped: u64,
    /// The smallest and largest `seq` among them (others in between may be present).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
}

/// The trace format version this build writes.
pub const FORMAT_VERSION: u32 = 1;
