//! The FUSE adapter: decodes each kernel request from fuser, runs it on the in-memory tree
//! through one pipeline ([`RawFs::serve`]), and encodes the reply.
//!
//! Every request passes through `serve`, which is the single place where a request is
//! observed and where a panic in the tree becomes EIO plus a log line instead of a dead
//! session thread and a hung mount.

use std::ffi::OsStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{error, warn};

use crate::errno::Errno;
use crate::fs::{Allocate, Attr, Caller, Fs, Kind, RenameMode, SetAttr, SetTime};

/// How the kernel may cache what rawfs answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Every lookup, stat, read and write reaches the daemon: zero TTLs and FOPEN_DIRECT_IO,
    /// so each read(2)/write(2) is one request with the application's own size.
    #[default]
    Direct,
    /// Page cache and one-second entry/attribute TTLs, as an ordinary file system would run.
    Cached,
}

/// The fuser `Filesystem` for a rawfs mount.
#[derive(Debug)]
pub struct RawFs {
    fs: Arc<Fs>,
    cache: CacheMode,
    ttl: Duration,
}

fn ino(i: INodeNo) -> u64 {
    i.0
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn err(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(request_time(t)),
    })
}

/// Undoes fuser 0.18's decoding of a time before 1970: it turns (secs < 0, nsecs) into
/// `UNIX_EPOCH - (-secs s + nsecs ns)` where the kernel means `secs s + nsecs ns`, so
/// `(-1, 500)` would come back from stat as `(-2, 999999500)`.
fn request_time(t: SystemTime) -> SystemTime {
    match SystemTime::UNIX_EPOCH.duration_since(t) {
        Ok(before) if before.subsec_nanos() != 0 => {
            SystemTime::UNIX_EPOCH - Duration::from_secs(before.as_secs())
                + Duration::from_nanos(u64::from(before.subsec_nanos()))
        }
        _ => t,
    }
}

impl RawFs {
    /// An adapter serving `fs` with the given caching.
    pub fn new(fs: Arc<Fs>, cache: CacheMode) -> RawFs {
        let ttl = match cache {
            CacheMode::Direct => Duration::ZERO,
            CacheMode::Cached => Duration::from_secs(1),
        };
        RawFs { fs, cache, ttl }
    }

    /// Runs one request on the tree. A panic becomes EIO and an error log line naming the
    /// operation; the session thread lives on.
    fn serve<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Fs) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        match catch_unwind(AssertUnwindSafe(|| f(&self.fs))) {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!("internal error in {op}: {msg}; answered EIO");
                Err(Errno::EIO)
            }
        }
    }

    fn open_flags(&self) -> FopenFlags {
        match self.cache {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Cached => FopenFlags::FOPEN_KEEP_CACHE,
        }
    }

    fn entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn empty(r: Result<(), Errno>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn xattr_reply(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }
}

impl Filesystem for RawFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with OPEN instead of as a separate SETATTR.
        let wanted = [
            (InitFlags::FUSE_ATOMIC_O_TRUNC, "atomic_o_trunc"),
            (InitFlags::FUSE_PARALLEL_DIROPS, "parallel_dirops"),
            (InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP, "direct_io_allow_mmap"),
        ];
        for (flag, name) in wanted {
            if config.add_capabilities(flag).is_err() {
                warn!("kernel does not offer {name}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(
            self.serve("lookup", |fs| fs.lookup(ino(parent), name)),
            reply,
        );
    }

    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        let _ = self.serve("forget", |fs| {
            fs.forget(ino(i), nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.serve("getattr", |fs| fs.getattr(ino(i))) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // ftruncate(2) (a size with a file handle) sets mtime and ctime even to the same size,
        // as on tmpfs: the kernel leaves that to the daemon and sends no time.
        let ftruncate = size.is_some() && fh.is_some();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime).or(ftruncate.then_some(SetTime::Now)),
            ctime: ctime.map(request_time),
        };
        match self.serve("setattr", |fs| fs.setattr(ino(i), &set)) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self.serve("readlink", |fs| fs.readlink(ino(i))) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let c = caller(req);
        self.entry(
            self.serve("mknod", |fs| fs.mknod(&c, ino(parent), name, mode, rdev)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let c = caller(req);
        self.entry(
            self.serve("mkdir", |fs| fs.mkdir(&c, ino(parent), name, mode)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(
            self.serve("unlink", |fs| fs.unlink(ino(parent), name)),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.serve("rmdir", |fs| fs.rmdir(ino(parent), name)), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let c = caller(req);
        let r = self.serve("symlink", |fs| {
            fs.symlink(&c, ino(parent), link_name, target.as_os_str())
        });
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.serve("rename", |fs| {
            let mode = if flags.is_empty() {
                RenameMode::Replace
            } else if flags == RenameFlags::RENAME_NOREPLACE {
                RenameMode::NoReplace
            } else if flags == RenameFlags::RENAME_EXCHANGE {
                RenameMode::Exchange
            } else {
                return Err(Errno::EINVAL);
            };
            fs.rename(ino(parent), name, ino(newparent), newname, mode)
        });
        Self::empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.serve("link", |fs| fs.link(ino(i), ino(newparent), newname)),
            reply,
        );
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.serve("open", |fs| fs.open(ino(i), flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.serve("read", |fs| fs.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = caller(req);
        match self.serve("write", |fs| fs.write(&c, fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.serve("flush", |fs| fs.handle_flags(fh.0).map(|_| ())),
            reply,
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.serve("release", |fs| fs.release(fh.0)), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.serve("fsync", |fs| fs.fsync(fh.0)), reply);
    }

    fn opendir(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.serve("opendir", |fs| fs.opendir(ino(i), flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.serve("readdir", |fs| fs.readdir(fh.0, offset)) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.serve("releasedir", |fs| fs.releasedir(fh.0)), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.serve("fsyncdir", |fs| fs.fsync(fh.0)), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.serve("statfs", |fs| Ok(fs.statfs())) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.serve("setxattr", |fs| fs.setxattr(ino(i), name, value, flags)),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Self::xattr_reply(
            self.serve("getxattr", |fs| fs.getxattr(ino(i), name)),
            size,
            reply,
        );
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        Self::xattr_reply(
            self.serve("listxattr", |fs| fs.listxattr(ino(i))),
            size,
            reply,
        );
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(
            self.serve("removexattr", |fs| fs.removexattr(ino(i), name)),
            reply,
        );
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        Self::empty(
            self.serve("access", |fs| fs.access(&c, ino(i), mask.bits())),
            reply,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = caller(req);
        match self.serve("create", |fs| fs.create(&c, ino(parent), name, mode, flags)) {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                self.open_flags(),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.serve("fallocate", |fs| {
            const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
            const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let op = match mode {
                0 => Allocate::Extend,
                KEEP => Allocate::KeepSize,
                PUNCH => Allocate::PunchHole,
                _ => return Err(Errno::EOPNOTSUPP),
            };
            fs.fallocate(fh.0, offset, length, op)
        });
        Self::empty(r, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.serve("lseek", |fs| fs.lseek(fh.0, offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let c = caller(req);
        let r = self.serve("copy_file_range", |fs| {
            fs.copy_file_range(&c, fh_in.0, offset_in, fh_out.0, offset_out, len)
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }
}
