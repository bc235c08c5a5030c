//! The FUSE adapter: decodes each kernel request from fuser, runs it on the in-memory tree
//! through one pipeline (`RawFs::call`), and encodes the reply.
//!
//! Every request passes through `call`, the single place where a request is numbered and
//! recorded in the trace and where a panic in the tree becomes EIO plus a log line instead of
//! a dead session thread and a hung mount. Each handler says four things: what the request
//! is (`describe`: the event's fields), what to do (`run`: one call on the tree), what came
//! of it (`outcome`: the event's result fields) and how to answer the kernel (`answer`: the
//! reply, sent before the event is handed to the recorder). The tree never sees fuser types
//! and this file never formats a trace.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents,
    PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{error, warn};

use crate::errno::Errno;
use crate::fault::hold::Held;
use crate::fault::{Action, Compiled, CorruptHow, Faults};
use crate::fs::durable::CrashOptions;
use crate::fs::{Allocate, Attr, Caller, Fs, Kind, RenameMode, SetAttr, SetTime};
use crate::trace::event::{SetattrFields, TimeSpec};
use crate::trace::recorder::{Pending, Recorder};
use crate::trace::who::WhoCache;
use crate::trace::{Event, Op};

pub mod names;
use names::Names;
pub mod power;
use power::{Cause, Power};
pub mod reserve;
use reserve::Reserve;

/// How the kernel may cache what rawfs answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Every stat, read and write reaches the daemon: attributes live for no time and files
    /// are opened with FOPEN_DIRECT_IO, so each read(2)/write(2) is one request with the
    /// application's own size. Names live where anyone may walk to them ([`names`]).
    #[default]
    Direct,
    /// Page cache and one-second attribute TTLs, as an ordinary file system would run; names
    /// live as in [`CacheMode::Direct`].
    Cached,
}

/// The fuser `Filesystem` for a rawfs mount.
#[derive(Debug)]
pub struct RawFs {
    fs: Arc<Fs>,
    cache: CacheMode,
    /// How long the kernel may keep names and attributes.
    names: Arc<Names>,
    recorder: Option<Arc<Recorder>>,
    faults: Arc<Faults>,
    /// Who asked, when no recorder does this already (recording off, fault rules on).
    who: WhoCache,
    /// Requests served while recording is off (`rawfs status`).
    unrecorded: Arc<AtomicU64>,
    /// Cuts the power for crash rules.
    power: Arc<Power>,
    /// The power switch keeps the tree after each request (`rawfs explore`).
    record_states: bool,
    /// The session threads not needed to read requests wait here.
    reserve: Arc<Reserve>,
}

/// Most capacity a session thread keeps in its read buffer between requests: the largest read
/// Linux sends by default (256 pages, its `fuse_max_pages_limit`), so that every read reuses
/// the buffer and a bigger one (under a raised limit) does not pin its memory for good.
const READ_BUFFER_KEEP: usize = 1024 * 1024;

thread_local! {
    /// Each session thread's buffer for read replies, reused from one read to the next so that
    /// a read neither allocates nor zero-fills before copying (see [`Fs::read_into`]).
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's read buffer, empty (a fresh one if a read still has it).
fn take_read_buffer() -> Vec<u8> {
    let mut buf = READ_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.clear();
    buf
}

/// Hands a read buffer back once its reply is sent.
fn give_back_read_buffer(buf: Vec<u8>) {
    if buf.capacity() <= READ_BUFFER_KEEP {
        READ_BUFFER.with(|b| *b.borrow_mut() = buf);
    }
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

fn time_spec(t: Option<SetTime>) -> Option<TimeSpec> {
    t.map(|t| match t {
        SetTime::Now => TimeSpec::Now,
        SetTime::At(t) => TimeSpec::Ns(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        }),
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

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// Event fields for a name operation: the parent and the full path of the name.
fn named(e: &mut Event, fs: &Fs, parent: u64, name: &OsStr) {
    e.ino = Some(parent);
    e.path = fs.name_path(parent, name);
}

/// Event fields for an operation on an inode: the inode and its path.
fn on_inode(e: &mut Event, fs: &Fs, i: u64) {
    e.ino = Some(i);
    e.path = fs.path(i);
}

/// Event fields for an operation on an open handle.
fn on_handle(e: &mut Event, fs: &Fs, i: u64, fh: u64) {
    on_inode(e, fs, i);
    e.fh = Some(fh);
}

fn entry_outcome(e: &mut Event, a: &Attr) {
    e.out_ino = Some(a.ino);
}

fn nothing<T>(_: &mut Event, _: &T) {}

/// Makes `name` exist in `parent` as another process would have created it just before:
/// a regular file 0644 holding `content`, owned by `uid`/`gid`. Nothing happens if the name
/// exists already.
fn competitor_create(fs: &Fs, parent: u64, name: &OsStr, content: &[u8], uid: u32, gid: u32) {
    // Created by a caller the tree lets do anything (uid 0, whose credentials cannot be read
    // with pid 0), then given to `uid`/`gid`: the competitor is not subject to the checks
    // the program under test is.
    let root = Caller::default();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    if let Ok((attr, fh)) = fs.create(&root, parent, name, libc::S_IFREG | 0o644, flags) {
        let owner = SetAttr {
            uid: Some(uid),
            gid: Some(gid),
            ..SetAttr::default()
        };
        let _ = fs.setattr(&root, attr.ino, &owner);
        if !content.is_empty() {
            let who = Caller { uid, gid, pid: 0 };
            let _ = fs.write(&who, fh, 0, content);
        }
        let _ = fs.release(fh);
        // The kernel never looked this node up: drop the reference create took.
        fs.forget(attr.ino, 1);
    }
}

impl RawFs {
    /// An adapter serving `fs` with the given caching and lifetimes of names, recording into
    /// `recorder` if given, and applying `faults`.
    pub fn new(
        fs: Arc<Fs>,
        cache: CacheMode,
        names: Arc<Names>,
        recorder: Option<Arc<Recorder>>,
        faults: Arc<Faults>,
        unrecorded: Arc<AtomicU64>,
        power: Arc<Power>,
    ) -> RawFs {
        RawFs {
            fs,
            cache,
            names,
            recorder,
            faults,
            who: WhoCache::default(),
            unrecorded,
            record_states: power.records_states(),
            power,
            reserve: Reserve::new(1, 1, Duration::ZERO),
        }
    }

    /// Served by `threads` session threads, of which `readers` wait for requests while none
    /// is blocked and the others wait in reserve ([`reserve`]). A write that waits for space
    /// (FORGET and RELEASE requests freeing unlinked files) counts as blocked. A reader
    /// polls for the next request for up to `poll` after answering one.
    pub fn with_threads(mut self, threads: usize, readers: usize, poll: Duration) -> RawFs {
        let reserve = Reserve::new(threads, readers, poll);
        let hook = reserve.clone();
        self.fs.on_wait(crate::fs::WaitHook(Box::new(move || {
            Box::new(hook.blocking())
        })));
        self.reserve = reserve;
        self
    }

    /// The session threads' reserve, which learns the session's device once it is open.
    pub fn reserve(&self) -> Arc<Reserve> {
        self.reserve.clone()
    }

    /// One request through the pipeline (see [`RawFs::call_with`]), for operations that no
    /// fault action changes beyond failing, delaying, holding or killing.
    fn call<T>(
        &self,
        req: &Request,
        op: Op,
        describe: impl FnOnce(&mut Event, &Fs),
        run: impl FnOnce(&Fs) -> Result<T, Errno>,
        outcome: impl FnOnce(&mut Event, &T),
        answer: impl FnOnce(Result<T, Errno>),
    ) {
        self.call_with(req, op, describe, |fs, _| run(fs), outcome, answer)
    }

    /// One request through the pipeline: number and describe it, let the fault rules decide,
    /// run it on the tree (a panic becomes EIO and an error log line naming the operation),
    /// answer the kernel, then record what came of it. `run` gets the rule that fired, for
    /// actions that change the operation itself (short reads, corruption, a competitor's
    /// create...).
    fn call_with<T>(
        &self,
        req: &Request,
        op: Op,
        describe: impl FnOnce(&mut Event, &Fs),
        run: impl FnOnce(&Fs, Option<&Compiled>) -> Result<T, Errno>,
        outcome: impl FnOnce(&mut Event, &T),
        answer: impl FnOnce(Result<T, Errno>),
    ) {
        let faults = self.faults.active();
        let tid = req.pid();
        let recorder = self.recorder.as_ref().filter(|r| !r.leaves_out(tid));
        if recorder.is_none() {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        // Built in place and never moved: an event is several hundred bytes.
        let mut pending: Option<Pending> = None;
        if recorder.is_some() || faults {
            let (uid, gid) = (req.uid(), req.gid());
            let p = match recorder {
                Some(r) => r.begin_in(&mut pending, op, tid, uid, gid),
                None => {
                    let who = self.who.lookup(tid);
                    let (pid, comm) = (who.pid, who.comm);
                    pending.insert(Pending::unrecorded(Event {
                        op,
                        tid,
                        pid,
                        comm,
                        uid,
                        gid,
                        ..Event::default()
                    }))
                }
            };
            describe(&mut p.event, &self.fs);
        }
        let hit = match (&pending, faults) {
            (Some(p), true) => self.faults.check(&p.event),
            _ => None,
        };
        let mut early = None;
        if let (Some(rule), Some(p)) = (&hit, &mut pending) {
            p.event.rule = Some(rule.id());
            early = self.fault_before(rule, &mut p.event);
        }
        self.answer_and_record(op, &mut pending, hit, early, run, outcome, answer);
        drop(pending);
        self.reserve.after_request();
    }

    /// The part of [`RawFs::call_with`] after the fault rules decided.
    #[allow(clippy::too_many_arguments)]
    fn answer_and_record<T>(
        &self,
        op: Op,
        pending: &mut Option<Pending>,
        hit: Option<Arc<Compiled>>,
        early: Option<Errno>,
        run: impl FnOnce(&Fs, Option<&Compiled>) -> Result<T, Errno>,
        outcome: impl FnOnce(&mut Event, &T),
        answer: impl FnOnce(Result<T, Errno>),
    ) {
        let run = || match catch_unwind(AssertUnwindSafe(|| run(&self.fs, hit.as_deref()))) {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!("internal error in {}: {msg}; answered EIO", op.name());
                Err(Errno::EIO)
            }
        };
        let result = match early {
            // The kernel has closed the handle or dropped the inode whatever the answer, and
            // ignores an error: the tree lets go too, or the fault would leak it for good.
            Some(errno) if matches!(op, Op::Release | Op::Releasedir | Op::Forget) => {
                let _ = run();
                Err(errno)
            }
            Some(errno) => Err(errno),
            None => run(),
        };
        if let Some((d, true)) = hit.as_ref().and_then(|r| r.delay()) {
            let _blocked = self.reserve.blocking();
            std::thread::sleep(d);
        }
        let Some(p) = pending.as_mut() else {
            return answer(result);
        };
        match &result {
            Ok(v) => outcome(&mut p.event, v),
            Err(e) => p.errno = Some(*e),
        }
        // A crash after the request cuts the power before the caller hears of its success,
        // so that nothing it does next can reach the tree first.
        self.crash_after(hit.as_deref(), &p.event);
        // Numbered from 1 when recorded; an event built for the fault rules alone has none.
        let (Some(rec), 1..) = (&self.recorder, p.event.seq) else {
            return answer(result);
        };
        // The request took until its answer was ready; the kernel gets it before the event
        // is handed over, so the hand-over is not part of the caller's wait.
        rec.stop(p);
        answer(result);
        rec.finish(p);
        if self.record_states {
            self.power.after_request(p.event.seq);
        }
    }

    /// A crash rule's action, when it cuts the power after the request.
    fn crash_after(&self, rule: Option<&Compiled>, e: &Event) {
        if let Some(Action::Crash {
            after: true,
            keep,
            seed,
            torn,
            kill,
        }) = rule.map(|r| &r.rule.action)
        {
            let cause = Cause {
                pid: e.pid,
                tid: e.tid,
                rule: e.rule,
            };
            let opts = CrashOptions {
                keep: *keep,
                seed: *seed,
                torn: *torn,
            };
            self.power.crash(opts, *kill, cause, false);
        }
    }

    /// The fault actions taken before the operation, noted in the event: an errno or a
    /// signal answers the request at once (the errno is returned); a delay or a hold waits,
    /// then the operation runs. Actions that change the operation itself are applied by the
    /// handler's `run`.
    fn fault_before(&self, rule: &Compiled, e: &mut Event) -> Option<Errno> {
        let (note, early) = match &rule.rule.action {
            Action::Errno(_) => {
                let errno = rule.errno().unwrap_or(Errno::EIO);
                (format!("errno {errno}"), Some(errno))
            }
            Action::Kill(name) => {
                let sig = rule.signal().unwrap_or(libc::SIGKILL);
                if e.pid != 0 {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(e.pid as libc::pid_t, sig) };
                }
                (format!("kill {name}"), Some(Errno::EINTR))
            }
            Action::Delay { ms, after: false } => {
                let _blocked = self.reserve.blocking();
                std::thread::sleep(Duration::from_millis(*ms));
                (format!("delay {ms}ms"), None)
            }
            Action::Delay { ms, after: true } => (format!("delay {ms}ms after"), None),
            Action::Hold => {
                let _blocked = self.reserve.blocking();
                let waited = self.faults.holds.hold(Held {
                    hold: 0,
                    rule: rule.id(),
                    seq: e.seq,
                    op: e.op.name().to_string(),
                    path: e.path.as_deref().map(str::to_string),
                    pid: e.pid,
                    comm: e.comm.to_string(),
                    waited_ms: 0,
                });
                let waited = crate::trace::format::duration(waited.as_nanos() as u64);
                (format!("held {waited}"), None)
            }
            Action::Short(n) => (format!("short {n}"), None),
            Action::Corrupt { how, at, len } => {
                let how = if *how == CorruptHow::Flip {
                    "flip"
                } else {
                    "zero"
                };
                (format!("corrupt {how} {at}+{len}"), None)
            }
            Action::EnospcAfter(n) => (format!("enospc after {n}"), None),
            Action::Competitor { .. } => ("competitor".to_string(), None),
            Action::Crash { after: true, .. } => ("crash after".to_string(), None),
            Action::Crash {
                after: false,
                keep,
                seed,
                torn,
                kill,
            } => {
                let cause = Cause {
                    pid: e.pid,
                    tid: e.tid,
                    rule: Some(rule.id()),
                };
                let opts = CrashOptions {
                    keep: *keep,
                    seed: *seed,
                    torn: *torn,
                };
                self.power.crash(opts, *kill, cause, false);
                // The power went before the request reached the disk.
                ("crash before".to_string(), Some(Errno::EIO))
            }
        };
        e.fault = Some(note);
        early
    }

    fn open_flags(&self) -> FopenFlags {
        match self.cache {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            CacheMode::Cached => FopenFlags::FOPEN_KEEP_CACHE,
        }
    }

    /// Whether a fault rule may fire on a lookup of `name` in `parent`: then the kernel must
    /// not keep the name.
    fn lookups_faulted(&self, parent: u64, name: &OsStr) -> bool {
        self.faults.may_match(Op::Lookup) && {
            let path = self.fs.name_path(parent, name);
            self.faults
                .may_fault_lookup_of(path.as_ref().map(|p| p.as_str()))
        }
    }

    /// Answers with `name` in directory `parent`.
    fn entry(&self, parent: u64, name: &OsStr, r: Result<Attr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &self.names.attr_ttl(),
                &self
                    .names
                    .entry_ttl(&self.fs, parent, || self.lookups_faulted(parent, name)),
                &file_attr(&a),
                Generation(0),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn attr(&self, r: Result<Attr, Errno>, reply: ReplyAttr) {
        match r {
            Ok(a) => reply.attr(&self.names.attr_ttl(), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn empty<T>(r: Result<T, Errno>, reply: ReplyEmpty) {
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opened(&self, r: Result<u64, Errno>, flags: FopenFlags, reply: ReplyOpen) {
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(err(e)),
        }
    }

    /// fsync and fsyncdir: the same request on a file or a directory handle.
    fn sync(
        &self,
        req: &Request,
        op: Op,
        i: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            op,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(i32::from(datasync));
            },
            |fs| fs.fsync(fh.0, datasync),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    /// getxattr/listxattr: a zero size asks for the length; a too small buffer is ERANGE.
    fn xattr(
        &self,
        req: &Request,
        op: Op,
        describe: impl FnOnce(&mut Event, &Fs),
        size: u32,
        get: impl FnOnce(&Fs) -> Result<Vec<u8>, Errno>,
        reply: ReplyXattr,
    ) {
        self.call(
            req,
            op,
            |e, fs| {
                describe(e, fs);
                e.size = Some(size.into());
            },
            |fs| {
                let v = get(fs)?;
                if size != 0 && v.len() > size as usize {
                    Err(Errno::ERANGE)
                } else {
                    Ok(v)
                }
            },
            |e, v| e.returned = Some(v.len() as u64),
            |r| match r {
                Ok(v) if size == 0 => reply.size(v.len() as u32),
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(err(e)),
            },
        );
    }
}

impl Filesystem for RawFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with OPEN instead of as a separate SETATTR.
        let wanted = [
            (InitFlags::FUSE_ATOMIC_O_TRUNC, "atomic_o_trunc"),
            (InitFlags::FUSE_PARALLEL_DIROPS, "parallel_dirops"),
            (InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP, "direct_io_allow_mmap"),
            // The tree takes setuid, setgid and file capabilities away on write, truncate and
            // chown itself; the kernel then skips its getxattr("security.capability") before
            // writes through the page cache, and its extra getattr and chmod around a chown.
            (InitFlags::FUSE_HANDLE_KILLPRIV_V2, "handle_killpriv_v2"),
        ];
        let abi = config.kernel_abi();
        self.names.kernel_speaks(abi.0, abi.1);
        for (flag, name) in wanted {
            if config.add_capabilities(flag).is_err() {
                warn!("kernel does not offer {name}");
                if flag == InitFlags::FUSE_HANDLE_KILLPRIV_V2 {
                    self.fs.let_others_clear_ids(true);
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Lookup,
            |e, fs| named(e, fs, p, name),
            |fs| fs.lookup(&c, p, name),
            entry_outcome,
            |r| self.entry(p, name, r, reply),
        );
    }

    fn forget(&self, req: &Request, i: INodeNo, nlookup: u64) {
        self.call(
            req,
            Op::Forget,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.size = Some(nlookup);
            },
            |fs| {
                fs.forget(ino(i), nlookup);
                Ok(())
            },
            nothing,
            |_| {},
        );
    }

    fn getattr(&self, req: &Request, i: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.call(
            req,
            Op::Getattr,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.fh = fh.map(|f| f.0);
            },
            |fs| fs.getattr(ino(i)),
            nothing,
            |r| self.attr(r, reply),
        );
    }

    fn setattr(
        &self,
        req: &Request,
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
        let c = caller(req);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            ctime: ctime.map(request_time),
            // ftruncate(2): the kernel sends the size with the file handle.
            by_handle: size.is_some() && fh.is_some(),
        };
        self.call(
            req,
            Op::Setattr,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.fh = fh.map(|f| f.0);
                e.set = Some(Box::new(SetattrFields {
                    mode,
                    uid,
                    gid,
                    size,
                    atime: time_spec(set_time(atime)),
                    mtime: time_spec(set_time(mtime)),
                }));
            },
            |fs| {
                // ftruncate through a file opened before a crash fails as every use of it does.
                if fh.is_some_and(|f| fs.is_stale(f.0)) {
                    return Err(Errno::EIO);
                }
                fs.setattr(&c, ino(i), &set)
            },
            nothing,
            |r| {
                // A directory someone may no longer search: names below it that the kernel
                // holds must not outlive the chmod (see `names`).
                if let Ok(a) = &r
                    && mode.is_some()
                    && self.names.must_forget_after_chmod(a)
                {
                    self.names.forget_all();
                }
                self.attr(r, reply)
            },
        );
    }

    fn readlink(&self, req: &Request, i: INodeNo, reply: ReplyData) {
        self.call(
            req,
            Op::Readlink,
            |e, fs| on_inode(e, fs, ino(i)),
            |fs| fs.readlink(ino(i)),
            |e, t| e.name = Some(String::from_utf8_lossy(t).into_owned()),
            |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(err(e)),
            },
        );
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
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Mknod,
            |e, fs| {
                named(e, fs, p, name);
                e.mode = Some(mode);
                e.rdev = Some(rdev);
            },
            |fs| fs.mknod(&c, p, name, mode, rdev),
            entry_outcome,
            |r| self.entry(p, name, r, reply),
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
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Mkdir,
            |e, fs| {
                named(e, fs, p, name);
                e.mode = Some(mode);
            },
            |fs| fs.mkdir(&c, p, name, mode),
            entry_outcome,
            |r| self.entry(p, name, r, reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Unlink,
            |e, fs| named(e, fs, p, name),
            |fs| fs.unlink(&c, p, name),
            |e, victim| e.node = Some(*victim),
            |r| Self::empty(r, reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Rmdir,
            |e, fs| named(e, fs, p, name),
            |fs| fs.rmdir(&c, p, name),
            |e, victim| e.node = Some(*victim),
            |r| Self::empty(r, reply),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (p, c) = (ino(parent), caller(req));
        self.call(
            req,
            Op::Symlink,
            |e, fs| {
                named(e, fs, p, link_name);
                e.name = Some(lossy(target.as_os_str()));
            },
            |fs| fs.symlink(&c, p, link_name, target.as_os_str()),
            entry_outcome,
            |r| self.entry(p, link_name, r, reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (p, np) = (ino(parent), ino(newparent));
        let c = caller(req);
        self.call(
            req,
            Op::Rename,
            |e, fs| {
                named(e, fs, p, name);
                e.ino2 = Some(np);
                e.path2 = fs.name_path(np, newname);
                e.flags = Some(flags.bits() as i32);
            },
            |fs| {
                let mode = if flags.is_empty() {
                    RenameMode::Replace
                } else if flags == RenameFlags::RENAME_NOREPLACE {
                    RenameMode::NoReplace
                } else if flags == RenameFlags::RENAME_EXCHANGE {
                    RenameMode::Exchange
                } else if flags.contains(RenameFlags::RENAME_WHITEOUT)
                    && (flags - RenameFlags::RENAME_WHITEOUT)
                        .difference(RenameFlags::RENAME_NOREPLACE)
                        .is_empty()
                {
                    let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
                    return fs.rename_whiteout(&c, p, name, np, newname, noreplace);
                } else {
                    return Err(Errno::EINVAL);
                };
                fs.rename(&c, p, name, np, newname, mode)
            },
            |e, done| {
                e.node = Some(done.node);
                e.out_ino = done.replaced;
            },
            |r| {
                // A name the kernel may hold that moved below a directory someone may not
                // search must not outlive the rename (see `names`).
                if r.is_ok()
                    && (self.names.must_forget_under(&self.fs, np)
                        || (flags.contains(RenameFlags::RENAME_EXCHANGE)
                            && self.names.must_forget_under(&self.fs, p)))
                {
                    self.names.forget_all();
                }
                Self::empty(r, reply)
            },
        );
    }

    fn link(
        &self,
        req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (i, np, c) = (ino(i), ino(newparent), caller(req));
        self.call(
            req,
            Op::Link,
            |e, fs| {
                on_inode(e, fs, i);
                e.node = Some(i);
                e.ino2 = Some(np);
                e.path2 = fs.name_path(np, newname);
            },
            |fs| fs.link(&c, i, np, newname),
            entry_outcome,
            |r| self.entry(np, newname, r, reply),
        );
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.call(
            req,
            Op::Open,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.flags = Some(flags.0);
            },
            |fs| fs.open(&caller(req), ino(i), flags.0),
            |e, fh| e.out_fh = Some(*fh),
            |r| self.opened(r, self.open_flags(), reply),
        );
    }

    fn read(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.call_with(
            req,
            Op::Read,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(flags.0);
                e.offset = Some(offset as i64);
                e.size = Some(size.into());
            },
            |fs, rule| {
                let size = match rule.map(|r| &r.rule.action) {
                    Some(Action::Short(n)) => size.min(*n as u32),
                    _ => size,
                };
                let mut data = take_read_buffer();
                let file_size = match fs.read_into(fh.0, offset, size, &mut data) {
                    Ok(file_size) => file_size,
                    Err(e) => {
                        give_back_read_buffer(data);
                        return Err(e);
                    }
                };
                if let Some(r) = rule {
                    r.corrupt(&mut data);
                }
                Ok((data, file_size))
            },
            |e, (data, file_size)| {
                let n = data.len() as u64;
                e.returned = Some(n);
                e.file_size = Some(*file_size);
                e.short = n < u64::from(size) && offset + n < *file_size;
            },
            |r| match r {
                Ok((d, _)) => {
                    reply.data(&d);
                    give_back_read_buffer(d);
                }
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = caller(req);
        // RWF_SYNC and RWF_DSYNC arrive as O_SYNC or O_DSYNC in the write's flags.
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.call_with(
            req,
            Op::Write,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(flags.0);
                e.offset = Some(offset as i64);
                e.size = Some(data.len() as u64);
            },
            |fs, rule| {
                let Some(rule) = rule else {
                    return fs.write_with(&c, fh.0, offset, data, sync);
                };
                let mut data = std::borrow::Cow::Borrowed(data);
                match rule.rule.action {
                    Action::Short(n) => data = data[..data.len().min(n as usize)].to_vec().into(),
                    Action::Corrupt { .. } => rule.corrupt(data.to_mut()),
                    Action::EnospcAfter(_) => {
                        let allowed = rule.take_budget(data.len() as u64) as usize;
                        if allowed == 0 && !data.is_empty() {
                            return Err(Errno::ENOSPC);
                        }
                        data = data[..allowed].to_vec().into();
                    }
                    _ => {}
                }
                fs.write_with(&c, fh.0, offset, &data, sync)
            },
            |e, n| {
                e.returned = Some(u64::from(*n));
                e.short = (*n as usize) < data.len();
            },
            |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            Op::Flush,
            |e, fs| on_handle(e, fs, ino(i), fh.0),
            |fs| fs.handle_flags(fh.0),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn release(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            Op::Release,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(flags.0);
            },
            |fs| fs.release(fh.0),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn fsync(&self, req: &Request, i: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.sync(req, Op::Fsync, i, fh, datasync, reply);
    }

    fn opendir(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.call(
            req,
            Op::Opendir,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.flags = Some(flags.0);
            },
            |fs| fs.opendir(&caller(req), ino(i), flags.0),
            |e, fh| e.out_fh = Some(*fh),
            |r| self.opened(r, FopenFlags::empty(), reply),
        );
    }

    fn readdir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        // The tree fills the kernel's buffer itself, so that it looks at only the entries
        // that fit; the answer is sent afterwards, from the same reply.
        let reply = RefCell::new(Some(reply));
        self.call(
            req,
            Op::Readdir,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.offset = Some(offset as i64);
            },
            |fs| {
                let mut slot = reply.borrow_mut();
                let Some(r) = slot.as_mut() else {
                    return Err(Errno::EIO);
                };
                fs.readdir_with(fh.0, offset, |ino, off, kind, name| {
                    r.add(INodeNo(ino), off, file_type(kind), name)
                })
            },
            nothing,
            |res| {
                if let Some(r) = reply.borrow_mut().take() {
                    match res {
                        Ok(_) => r.ok(),
                        Err(e) => r.error(err(e)),
                    }
                }
            },
        );
    }

    fn releasedir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            Op::Releasedir,
            |e, fs| on_handle(e, fs, ino(i), fh.0),
            |fs| fs.releasedir(fh.0),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn fsyncdir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(req, Op::Fsyncdir, i, fh, datasync, reply);
    }

    fn statfs(&self, req: &Request, i: INodeNo, reply: ReplyStatfs) {
        self.call(
            req,
            Op::Statfs,
            |e, fs| on_inode(e, fs, ino(i)),
            |fs| Ok(fs.statfs()),
            nothing,
            |r| match r {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
                ),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            Op::Setxattr,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.name = Some(lossy(name));
                e.flags = Some(flags);
                e.size = Some(value.len() as u64);
            },
            |fs| fs.setxattr(&caller(req), ino(i), name, value, flags),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn getxattr(&self, req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.xattr(
            req,
            Op::Getxattr,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.name = Some(lossy(name));
            },
            size,
            |fs| fs.getxattr(&caller(req), ino(i), name),
            reply,
        );
    }

    fn listxattr(&self, req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        self.xattr(
            req,
            Op::Listxattr,
            |e, fs| on_inode(e, fs, ino(i)),
            size,
            |fs| fs.listxattr(ino(i)),
            reply,
        );
    }

    fn removexattr(&self, req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.call(
            req,
            Op::Removexattr,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.name = Some(lossy(name));
            },
            |fs| fs.removexattr(&caller(req), ino(i), name),
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        self.call(
            req,
            Op::Access,
            |e, fs| {
                on_inode(e, fs, ino(i));
                e.flags = Some(mask.bits());
            },
            |fs| fs.access(&c, ino(i), mask.bits()),
            nothing,
            |r| Self::empty(r, reply),
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
        let (p, c) = (ino(parent), caller(req));
        self.call_with(
            req,
            Op::Create,
            |e, fs| {
                named(e, fs, p, name);
                e.flags = Some(flags);
                e.mode = Some(mode);
            },
            |fs, rule| {
                if let Some(Action::Competitor { content, uid, gid }) = rule.map(|r| &r.rule.action)
                {
                    competitor_create(fs, p, name, content.as_bytes(), *uid, *gid);
                }
                fs.create(&c, p, name, mode, flags)
            },
            |e, (a, fh)| {
                e.out_ino = Some(a.ino);
                e.out_fh = Some(*fh);
            },
            |r| match r {
                Ok((a, fh)) => reply.created(
                    &self
                        .names
                        .created_ttl(&self.fs, p, || self.lookups_faulted(p, name)),
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    self.open_flags(),
                ),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        self.call(
            req,
            Op::Fallocate,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(mode);
                e.offset = Some(offset as i64);
                e.size = Some(length);
            },
            |fs| {
                const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
                const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let op = match mode {
                    0 => Allocate::Extend,
                    KEEP => Allocate::KeepSize,
                    PUNCH => Allocate::PunchHole,
                    _ => return Err(Errno::EOPNOTSUPP),
                };
                fs.fallocate(&c, fh.0, offset, length, op)
            },
            nothing,
            |r| Self::empty(r, reply),
        );
    }

    fn lseek(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.call(
            req,
            Op::Lseek,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.offset = Some(offset);
                e.flags = Some(whence);
            },
            |fs| fs.lseek(fh.0, offset, whence),
            |e, o| e.out_offset = Some(*o),
            |r| match r {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let c = caller(req);
        self.call(
            req,
            Op::CopyFileRange,
            |e, fs| {
                on_handle(e, fs, ino(ino_in), fh_in.0);
                e.ino2 = Some(ino(ino_out));
                e.path2 = fs.path(ino(ino_out));
                e.fh2 = Some(fh_out.0);
                e.offset = Some(offset_in as i64);
                e.offset2 = Some(offset_out as i64);
                e.size = Some(len);
            },
            |fs| fs.copy_file_range(&c, fh_in.0, offset_in, fh_out.0, offset_out, len),
            |e, n| e.returned = Some(u64::from(*n)),
            |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn ioctl(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctl is supported, as on tmpfs for ioctls it does not know: ENOTTY.
        self.call(
            req,
            Op::Ioctl,
            |e, fs| {
                on_handle(e, fs, ino(i), fh.0);
                e.flags = Some(cmd as i32);
            },
            |_| Err(Errno::ENOTTY),
            nothing,
            |r: Result<(), Errno>| {
                if let Err(e) = r {
                    reply.error(err(e));
                }
            },
        );
    }

    fn poll(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // Regular files are always ready: ENOSYS tells the kernel so, once for the mount.
        self.call(
            req,
            Op::Poll,
            |e, fs| on_handle(e, fs, ino(i), fh.0),
            |_| Err(Errno::ENOSYS),
            nothing,
            |r: Result<(), Errno>| {
                if let Err(e) = r {
                    reply.error(err(e));
                }
            },
        );
    }
}
