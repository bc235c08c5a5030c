//! POSIX behaviour through a real mount: each test drives rawfs with system calls, std::fs or
//! child processes and asserts the results and errnos that Linux tmpfs gives for the same
//! calls.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rawfs::MountConfig;
use rawfs::fuse::CacheMode;

use crate::common::{code, cpath, errno, python, sh};
use crate::mount_or_skip;

const NOBODY: u32 = 65534;
const MIB: usize = 1 << 20;

/// 0 if `r` succeeded, else its errno.
fn errno_of<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => code(&e),
    }
}

/// 0 if a libc call returned 0 (or any non-negative value), else the errno.
fn rc<T: Into<i64>>(r: T) -> i32 {
    if r.into() >= 0 { 0 } else { errno() }
}

/// open(2); the descriptor or the errno.
fn sys_open(p: &Path, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let c = cpath(p);
    // SAFETY: c is a valid C string; the fd returned is owned by nobody else.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(errno())
    } else {
        // SAFETY: fd was just opened.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn open_fd(p: &Path, flags: i32) -> OwnedFd {
    sys_open(p, flags, 0o644).unwrap_or_else(|e| panic!("open {}: errno {e}", p.display()))
}

fn fstat(fd: RawFd) -> libc::stat {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0, "fstat: {}", errno());
    st
}

fn lseek(fd: RawFd, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: plain syscall on an fd we own.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn pread(fd: RawFd, len: usize, off: i64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf has len bytes.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off) };
    assert!(n >= 0, "pread: errno {}", errno());
    buf.truncate(n as usize);
    buf
}

fn pwrite(fd: RawFd, data: &[u8], off: i64) {
    // SAFETY: data is a valid buffer.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
    assert_eq!(n, data.len() as isize, "pwrite: errno {}", errno());
}

fn fallocate(fd: RawFd, mode: i32, off: i64, len: i64) -> i32 {
    // SAFETY: plain syscall.
    rc(unsafe { libc::fallocate(fd, mode, off, len) })
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both are valid C strings.
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
    rc(r)
}

fn mknod(p: &Path, mode: u32, dev: libc::dev_t) -> i32 {
    let c = cpath(p);
    // SAFETY: c is a valid C string.
    rc(unsafe { libc::mknod(c.as_ptr(), mode, dev) })
}

fn statfs(p: &Path) -> libc::statfs {
    let c = cpath(p);
    // SAFETY: statfs is plain data.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    assert_eq!(
        unsafe { libc::statfs(c.as_ptr(), &mut s) },
        0,
        "statfs: {}",
        errno()
    );
    s
}

/// (seconds, nanoseconds) pairs, comparable.
fn mtime(m: &fs::Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

fn ctime(m: &fs::Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

fn atime(m: &fs::Metadata) -> (i64, i64) {
    (m.atime(), m.atime_nsec())
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn utimensat(p: &Path, at: libc::timespec, mt: libc::timespec) -> i32 {
    let c = cpath(p);
    let times = [at, mt];
    // SAFETY: valid path and a two-element array.
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Lets the clock move past the last recorded timestamp.
fn tick() {
    std::thread::sleep(Duration::from_millis(15));
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (cp, cn) = (cpath(p), c(name));
    // SAFETY: valid C strings and buffer.
    rc(unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// getxattr(2) into a buffer of `size` bytes: the returned length or the errno.
fn getxattr(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let (cp, cn) = (cpath(p), c(name));
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: ptr is null with size 0, or points to size bytes.
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), ptr, size) };
    if n < 0 {
        return Err(errno());
    }
    if size == 0 {
        return Ok(vec![0; n as usize]);
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn listxattr(p: &Path, size: usize) -> Result<Vec<u8>, i32> {
    let cp = cpath(p);
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: as for getxattr.
    let n = unsafe { libc::listxattr(cp.as_ptr(), ptr, size) };
    if n < 0 {
        return Err(errno());
    }
    if size == 0 {
        return Ok(vec![0; n as usize]);
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn removexattr(p: &Path, name: &str) -> i32 {
    let (cp, cn) = (cpath(p), c(name));
    // SAFETY: valid C strings.
    rc(unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) })
}

/// One directory entry from getdents64.
#[derive(Clone, Debug)]
struct Dirent {
    ino: u64,
    off: i64,
    kind: u8,
    name: String,
}

/// One getdents64 call with a buffer of `size` bytes.
fn getdents(fd: RawFd, size: usize) -> Vec<Dirent> {
    let mut buf = vec![0u8; size];
    // SAFETY: buf has size bytes.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), size) };
    assert!(n >= 0, "getdents64: errno {}", errno());
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < n as usize {
        let rec = &buf[pos..];
        let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
        let off = i64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes"));
        let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
        let kind = rec[18];
        let name_bytes = &rec[19..reclen];
        let end = name_bytes.iter().position(|&b| b == 0).expect("NUL");
        let name = String::from_utf8(name_bytes[..end].to_vec()).expect("utf-8 name");
        out.push(Dirent {
            ino,
            off,
            kind,
            name,
        });
        pos += reclen;
    }
    out
}

/// Every entry of the directory `fd`, read in batches of `size` bytes.
fn getdents_all(fd: RawFd, size: usize) -> Vec<Dirent> {
    let mut all = Vec::new();
    loop {
        let batch = getdents(fd, size);
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// Runs `f` in a forked child whose user, group and supplementary groups are nobody's, and
/// returns what it returned (0 for success or an errno). `f` may only make system calls:
/// allocate everything it needs before calling this.
fn as_nobody(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes only async-signal-safe system calls before _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: errno {}", errno());
    if pid == 0 {
        // SAFETY: plain system calls in the single-threaded child.
        let code = unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                255
            } else {
                f()
            }
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: pid is our child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: errno {}", errno());
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 255, "child could not become nobody");
    code
}

/// Runs a shell script as nobody through setpriv, in `dir`; returns the output.
fn sh_as_nobody(dir: &Path, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("run setpriv")
}

/// Waits up to five seconds for `cond`.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The bytes the tree holds for a file in the mount root, read without the kernel.
fn tree_contents(m: &rawfs::TempMount, name: &str) -> Vec<u8> {
    let fs = m.fs();
    let root = rawfs::fs::Caller::default();
    let attr = fs
        .lookup(&root, rawfs::fs::ROOT, OsStr::new(name))
        .expect("lookup in tree");
    let fh = fs
        .open(&root, attr.ino, libc::O_RDONLY)
        .expect("open in tree");
    let data = fs.read(fh, 0, attr.size as u32).expect("read in tree");
    fs.release(fh).expect("release in tree");
    fs.forget(attr.ino, 1);
    data
}

/// Deterministic pseudo-random bytes (xorshift64).
fn fill_pseudo_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// An order-sensitive 64-bit hash (FNV-1a over 8-byte words).
fn hash_words(h: &mut u64, buf: &[u8]) {
    for chunk in buf.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        *h = (*h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3);
    }
}

// ---------------------------------------------------------------- regular files

#[test]
fn write_read_and_append_roundtrip() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello");
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b", world").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello, world");
    assert_eq!(fs::metadata(&p).unwrap().len(), 12);
    let f = File::options().write(true).open(&p).unwrap();
    f.write_all_at(b"J", 0).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"Jello, world");
}

#[test]
fn o_append_from_two_descriptors_never_overwrites() {
    let m = mount_or_skip!();
    let p = m.join("log");
    fs::write(&p, b"start\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    let mut expected = b"start\n".to_vec();
    for i in 0..20 {
        let (fd, tag) = if i % 3 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        let line = format!("{tag}{i}\n");
        fd.write_all(line.as_bytes()).unwrap();
        expected.extend_from_slice(line.as_bytes());
    }
    // On Linux, pwrite on an O_APPEND descriptor appends whatever the offset.
    a.write_all_at(b"tail\n", 0).unwrap();
    expected.extend_from_slice(b"tail\n");
    drop((a, b));
    assert_eq!(fs::read(&p).unwrap(), expected);
}

#[test]
fn o_trunc_empties_an_existing_file() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, vec![7u8; 10_000]).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"new");
    // O_CREAT without O_EXCL or O_TRUNC opens the existing file untouched.
    let fd = open_fd(&p, libc::O_CREAT | libc::O_RDWR);
    assert_eq!(pread(fd.as_raw_fd(), 10, 0), b"new");
}

#[test]
fn o_trunc_with_read_only_access_still_truncates() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"hello").unwrap();
    let fd = open_fd(&p, libc::O_RDONLY | libc::O_TRUNC);
    assert_eq!(fstat(fd.as_raw_fd()).st_size, 0);
    drop(fd);
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(fs::read(&p).unwrap(), b"");
}

#[test]
fn create_exclusive_on_existing_name_fails_eexist() {
    let m = mount_or_skip!();
    let p = m.join("f");
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let first = sys_open(&p, flags, 0o600).expect("first exclusive create");
    assert_eq!(fstat(first.as_raw_fd()).st_mode & 0o7777, 0o600);
    assert_eq!(sys_open(&p, flags, 0o600).err(), Some(libc::EEXIST));
    // A dangling symlink counts as an existing name too.
    symlink("missing", m.join("dangling")).unwrap();
    assert_eq!(
        sys_open(&m.join("dangling"), flags, 0o600).err(),
        Some(libc::EEXIST)
    );
    assert!(!m.join("missing").exists());
}

#[test]
fn sparse_write_at_one_gib_keeps_blocks_small_and_holes_zero() {
    let m = mount_or_skip!();
    let p = m.join("sparse");
    let fd = open_fd(&p, libc::O_CREAT | libc::O_RDWR);
    let gib = 1i64 << 30;
    pwrite(fd.as_raw_fd(), b"abc", gib);
    let st = fstat(fd.as_raw_fd());
    assert_eq!(st.st_size, gib + 3);
    assert!(st.st_blocks <= 16, "st_blocks {}", st.st_blocks);
    assert_eq!(pread(fd.as_raw_fd(), 8192, 0), vec![0u8; 8192]);
    assert_eq!(pread(fd.as_raw_fd(), 4096, gib / 2), vec![0u8; 4096]);
    let mut tail = vec![0u8; 10];
    tail.extend_from_slice(b"abc");
    assert_eq!(pread(fd.as_raw_fd(), 100, gib - 10), tail);
}

#[test]
fn seek_data_and_seek_hole_find_the_extents() {
    let m = mount_or_skip!();
    let fd = open_fd(&m.join("f"), libc::O_CREAT | libc::O_RDWR);
    let fd = fd.as_raw_fd();
    let mib = MIB as i64;
    pwrite(fd, &[1u8; 100], 0);
    pwrite(fd, &[2u8; 10], mib);
    let size = mib + 10;
    assert_eq!(lseek(fd, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(lseek(fd, 50, libc::SEEK_DATA), Ok(50));
    assert_eq!(lseek(fd, 0, libc::SEEK_HOLE), Ok(4096));
    assert_eq!(lseek(fd, 4096, libc::SEEK_DATA), Ok(mib));
    assert_eq!(lseek(fd, 5000, libc::SEEK_HOLE), Ok(5000));
    assert_eq!(lseek(fd, mib + 5, libc::SEEK_DATA), Ok(mib + 5));
    assert_eq!(lseek(fd, mib, libc::SEEK_HOLE), Ok(size));
    assert_eq!(lseek(fd, size, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(lseek(fd, size, libc::SEEK_HOLE), Err(libc::ENXIO));
    assert_eq!(lseek(fd, -1, libc::SEEK_DATA), Err(libc::ENXIO));
}

#[test]
fn large_file_of_64_mib_reads_back_with_same_checksum() {
    let m = mount_or_skip!();
    let p = m.join("big");
    let mut f = File::create(&p).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut written_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut chunk = vec![0u8; MIB];
    for _ in 0..64 {
        fill_pseudo_random(&mut chunk, &mut state);
        hash_words(&mut written_hash, &chunk);
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 64 * MIB as u64);
    let mut f = File::open(&p).unwrap();
    let mut read_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut total = 0usize;
    loop {
        let n = f.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        // Chunks are whole words except possibly the last, so hashing per read is exact
        // as long as every read but the last returns a multiple of 8 bytes.
        assert!(n % 8 == 0 || total + n == 64 * MIB, "odd read of {n}");
        hash_words(&mut read_hash, &chunk[..n]);
        total += n;
    }
    assert_eq!(total, 64 * MIB);
    assert_eq!(read_hash, written_hash);
}

#[test]
fn truncate_down_drops_data_and_extension_reads_zeros() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, vec![0x55u8; 10_000]).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(5000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 5000);
    assert_eq!(fs::read(&p).unwrap(), vec![0x55u8; 5000]);
    f.set_len(9000).unwrap();
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 9000);
    assert!(data[..5000].iter().all(|&b| b == 0x55));
    assert!(
        data[5000..].iter().all(|&b| b == 0),
        "stale bytes after re-extension"
    );
    // truncate(2) by path, across a page boundary.
    let cp = cpath(&p);
    // SAFETY: valid path.
    assert_eq!(rc(unsafe { libc::truncate(cp.as_ptr(), 100) }), 0);
    // SAFETY: valid path.
    assert_eq!(rc(unsafe { libc::truncate(cp.as_ptr(), 20_000) }), 0);
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 20_000);
    assert!(data[..100].iter().all(|&b| b == 0x55));
    assert!(data[100..].iter().all(|&b| b == 0));
    assert_eq!(
        fs::metadata(&p).unwrap().blocks(),
        8,
        "one page left allocated"
    );
}

// ---------------------------------------------------------------- directories

#[test]
fn mkdir_rmdir_and_their_errnos() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    assert_eq!(errno_of(fs::create_dir(&d)), libc::EEXIST);
    fs::write(d.join("f"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(d.join("f"))), libc::EEXIST);
    fs::remove_file(d.join("f")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(errno_of(fs::metadata(&d)), libc::ENOENT);
    assert_eq!(errno_of(fs::remove_dir(&d)), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(m.join("no/such"))), libc::ENOENT);
}

#[test]
fn path_through_a_file_is_enotdir() {
    let m = mount_or_skip!();
    let f = m.join("f");
    fs::write(&f, b"x").unwrap();
    assert_eq!(errno_of(fs::metadata(f.join("x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::create_dir(f.join("x"))), libc::ENOTDIR);
    assert_eq!(errno_of(File::create(f.join("x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(&f)), libc::ENOTDIR);
    assert_eq!(
        sys_open(&m.join("f/"), libc::O_RDONLY, 0).err(),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        sys_open(&f, libc::O_RDONLY | libc::O_DIRECTORY, 0).err(),
        Some(libc::ENOTDIR)
    );
}

#[test]
fn unlink_of_directory_and_write_open_of_directory_are_eisdir() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(errno_of(fs::remove_file(&d)), libc::EISDIR);
    assert_eq!(sys_open(&d, libc::O_WRONLY, 0).err(), Some(libc::EISDIR));
    assert_eq!(sys_open(&d, libc::O_RDWR, 0).err(), Some(libc::EISDIR));
    assert_eq!(
        sys_open(&d, libc::O_CREAT | libc::O_WRONLY, 0o644).err(),
        Some(libc::EISDIR)
    );
    assert!(sys_open(&d, libc::O_RDONLY, 0).is_ok());
    assert!(fs::metadata(&d).unwrap().is_dir());
}

#[test]
fn rmdir_of_dot_is_einval() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(errno_of(fs::remove_dir(d.join("."))), libc::EINVAL);
    assert_eq!(errno_of(fs::remove_dir(d.join(".."))), libc::ENOTEMPTY);
    assert!(d.is_dir());
}

#[test]
fn directory_nlink_is_two_plus_subdirectories() {
    let m = mount_or_skip!();
    let root_links = fs::metadata(m.path()).unwrap().nlink();
    assert_eq!(root_links, 2);
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 3);
    for n in ["a", "b", "c"] {
        fs::create_dir(d.join(n)).unwrap();
    }
    fs::write(d.join("file"), b"").unwrap();
    symlink("a", d.join("link")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 5);
    fs::remove_dir(d.join("b")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 4);
    fs::rename(d.join("c"), m.join("c")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 4);
}

#[test]
fn readdir_lists_exactly_the_entries_with_types() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    let mut expected = HashSet::new();
    for i in 0..60 {
        let name = format!("file-{i}");
        fs::write(d.join(&name), b"").unwrap();
        expected.insert(name);
    }
    for i in 0..5 {
        let name = format!("dir-{i}");
        fs::create_dir(d.join(&name)).unwrap();
        expected.insert(name);
    }
    symlink("file-0", d.join("link")).unwrap();
    expected.insert("link".into());
    assert_eq!(mknod(&d.join("fifo"), libc::S_IFIFO | 0o644, 0), 0);
    expected.insert("fifo".into());
    fs::remove_file(d.join("file-7")).unwrap();
    expected.remove("file-7");

    let listed: HashSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, expected);

    let fd = open_fd(&d, libc::O_RDONLY | libc::O_DIRECTORY);
    let all = getdents_all(fd.as_raw_fd(), 512);
    assert_eq!(all.len(), expected.len() + 2, "no duplicates");
    let by_name: HashMap<&str, &Dirent> = all.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name["."].ino, fs::metadata(&d).unwrap().ino());
    assert_eq!(by_name[".."].ino, fs::metadata(m.path()).unwrap().ino());
    assert_eq!(by_name["."].kind, libc::DT_DIR);
    assert_eq!(by_name["file-3"].kind, libc::DT_REG);
    assert_eq!(by_name["dir-2"].kind, libc::DT_DIR);
    assert_eq!(by_name["link"].kind, libc::DT_LNK);
    assert_eq!(by_name["fifo"].kind, libc::DT_FIFO);
    assert_eq!(
        by_name["file-3"].ino,
        fs::metadata(d.join("file-3")).unwrap().ino()
    );
}

#[test]
fn readdir_of_a_large_directory_lists_every_entry_once() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    let n = 2500;
    let name = |i: usize| format!("{i:05}-{}", "x".repeat(150));
    for i in 0..n {
        drop(File::create(d.join(name(i))).unwrap());
    }
    let fd = open_fd(&d, libc::O_RDONLY | libc::O_DIRECTORY);
    let all = getdents_all(fd.as_raw_fd(), 32 * 1024);
    let names: HashSet<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(all.len(), n + 2);
    assert_eq!(names.len(), n + 2, "duplicates in the listing");
    assert!((0..n).all(|i| names.contains(name(i).as_str())));
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
}

#[test]
fn readdir_in_small_batches_while_entries_change_skips_and_repeats_nothing() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    let n = 300;
    let name = |i: usize| format!("f{i:03}");
    for i in 0..n {
        fs::write(d.join(name(i)), b"").unwrap();
    }
    let fd = open_fd(&d, libc::O_RDONLY | libc::O_DIRECTORY);
    let mut seen: Vec<String> = Vec::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut removed_unseen: HashSet<String> = HashSet::new();
    let mut round = 0usize;
    loop {
        let batch = getdents(fd.as_raw_fd(), 200);
        if batch.is_empty() {
            break;
        }
        seen.extend(
            batch
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n != "." && n != ".."),
        );
        round += 1;
        assert!(round < 1000, "the listing does not end");
        // Remove an entry already listed...
        if let Some(done) = seen
            .iter()
            .rev()
            .find(|s| s.starts_with('f') && !removed.contains(*s))
            .cloned()
        {
            fs::remove_file(d.join(&done)).unwrap();
            removed.insert(done);
        }
        // ...two not listed yet, from the far end...
        for k in [2 * round, 2 * round + 1] {
            if k < n {
                let victim = name(n - 1 - k);
                if !seen.contains(&victim) && removed.insert(victim.clone()) {
                    fs::remove_file(d.join(&victim)).unwrap();
                    removed_unseen.insert(victim);
                }
            }
        }
        // ...and, while the original entries last, add a new one.
        if round <= 20 {
            fs::write(d.join(format!("new{round:03}")), b"").unwrap();
        }
    }
    assert!(round > 10, "the listing took {round} batches");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &seen {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "listed twice: {dups:?}");
    for i in 0..n {
        let nm = name(i);
        if !removed.contains(&nm) {
            assert_eq!(
                counts.get(nm.as_str()),
                Some(&1),
                "{nm} stayed but was skipped"
            );
        }
    }
    for gone in &removed_unseen {
        assert!(
            !counts.contains_key(gone.as_str()),
            "{gone} listed after removal"
        );
    }
}

#[test]
fn readdir_seek_to_saved_offset_resumes_after_that_entry() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..40 {
        fs::write(d.join(format!("e{i:02}")), b"").unwrap();
    }
    let fd = open_fd(&d, libc::O_RDONLY | libc::O_DIRECTORY);
    let fd = fd.as_raw_fd();
    let first = getdents(fd, 256);
    let files: Vec<&Dirent> = first.iter().filter(|e| e.name.starts_with('e')).collect();
    assert!(files.len() >= 4, "first batch {first:?}");
    let mark = files[1].clone();
    let next_name = files[2].name.clone();
    let after_next = files[3].name.clone();
    let rest = getdents_all(fd, 256);
    assert!(!rest.is_empty());
    // Like seekdir(telldir()) after the mark, with the entry that followed it removed.
    fs::remove_file(d.join(&next_name)).unwrap();
    assert_eq!(lseek(fd, mark.off, libc::SEEK_SET), Ok(mark.off));
    let resumed = getdents(fd, 256);
    assert_eq!(
        resumed.first().map(|e| e.name.as_str()),
        Some(after_next.as_str())
    );
    assert!(
        resumed
            .iter()
            .all(|e| e.name != mark.name && e.name != next_name)
    );
    assert_eq!(lseek(fd, 0, libc::SEEK_SET), Ok(0));
    let again = getdents_all(fd, 4096);
    assert_eq!(again.len(), 40 - 1 + 2);
}

// ---------------------------------------------------------------- links and special files

#[test]
fn symlink_readlink_and_lstat_size() {
    let m = mount_or_skip!();
    fs::write(m.join("target"), b"through the link").unwrap();
    let l = m.join("link");
    symlink("target", &l).unwrap();
    assert_eq!(fs::read_link(&l).unwrap(), PathBuf::from("target"));
    let lm = fs::symlink_metadata(&l).unwrap();
    assert!(lm.file_type().is_symlink());
    assert_eq!(lm.len(), 6);
    assert_eq!(lm.mode() & 0o777, 0o777);
    assert_eq!(fs::read(&l).unwrap(), b"through the link");
    assert!(fs::metadata(&l).unwrap().is_file());
    symlink("/nowhere/at/all", m.join("dangling")).unwrap();
    assert_eq!(fs::symlink_metadata(m.join("dangling")).unwrap().len(), 15);
    assert_eq!(errno_of(fs::metadata(m.join("dangling"))), libc::ENOENT);
    assert_eq!(errno_of(symlink("x", &l)), libc::EEXIST);
    assert_eq!(errno_of(fs::read_link(m.join("target"))), libc::EINVAL);
}

#[test]
fn symlink_loop_is_eloop() {
    let m = mount_or_skip!();
    symlink("self", m.join("self")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.join("self"))), libc::ELOOP);
    assert_eq!(errno_of(File::open(m.join("self"))), libc::ELOOP);
    symlink("b", m.join("a")).unwrap();
    symlink("a", m.join("b")).unwrap();
    assert_eq!(errno_of(fs::read(m.join("a"))), libc::ELOOP);
    assert_eq!(
        sys_open(&m.join("a"), libc::O_RDONLY | libc::O_NOFOLLOW, 0).err(),
        Some(libc::ELOOP)
    );
}

#[test]
fn symlink_target_of_4096_bytes_is_enametoolong_but_4095_works() {
    let m = mount_or_skip!();
    let too_long = "a".repeat(4096);
    assert_eq!(
        errno_of(symlink(&too_long, m.join("l"))),
        libc::ENAMETOOLONG
    );
    assert!(!m.join("l").exists());
    let longest = format!("{}/{}", "d".repeat(2047), "e".repeat(2047));
    assert_eq!(longest.len(), 4095);
    symlink(&longest, m.join("l")).unwrap();
    assert_eq!(fs::symlink_metadata(m.join("l")).unwrap().len(), 4095);
    assert_eq!(fs::read_link(m.join("l")).unwrap(), PathBuf::from(&longest));
}

#[test]
fn name_of_256_bytes_is_enametoolong_but_255_works() {
    let m = mount_or_skip!();
    let long = "n".repeat(256);
    assert_eq!(errno_of(File::create(m.join(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::create_dir(m.join(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::metadata(m.join(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno_of(symlink("x", m.join(&long))), libc::ENAMETOOLONG);
    fs::write(m.join("f"), b"").unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("f"), m.join(&long))),
        libc::ENAMETOOLONG
    );
    let max = "m".repeat(255);
    fs::write(m.join(&max), b"ok").unwrap();
    assert_eq!(fs::read(m.join(&max)).unwrap(), b"ok");
    let names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.iter().any(|n| n.as_bytes() == max.as_bytes()));
}

#[test]
fn hard_link_shares_inode_and_counts_links() {
    let m = mount_or_skip!();
    let a = m.join("a");
    fs::write(&a, b"one").unwrap();
    fs::hard_link(&a, m.join("b")).unwrap();
    let (ma, mb) = (
        fs::metadata(&a).unwrap(),
        fs::metadata(m.join("b")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    fs::create_dir(m.join("sub")).unwrap();
    fs::hard_link(m.join("b"), m.join("sub/c")).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 3);
    fs::write(m.join("sub/c"), b"two").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"two");
    fs::remove_file(&a).unwrap();
    assert_eq!(fs::metadata(m.join("b")).unwrap().nlink(), 2);
    assert_eq!(
        errno_of(fs::hard_link(m.join("b"), m.join("sub/c"))),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(fs::hard_link(m.join("missing"), m.join("x"))),
        libc::ENOENT
    );
}

#[test]
fn hard_link_to_directory_is_eperm() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("d")).unwrap();
    assert_eq!(
        errno_of(fs::hard_link(m.join("d"), m.join("e"))),
        libc::EPERM
    );
    assert!(!m.join("e").exists());
    assert_eq!(fs::metadata(m.join("d")).unwrap().nlink(), 2);
}

#[test]
fn mknod_fifo_socket_and_devices_keep_type_and_rdev() {
    use std::os::unix::fs::FileTypeExt;
    let m = mount_or_skip!();
    assert_eq!(mknod(&m.join("fifo"), libc::S_IFIFO | 0o640, 0), 0);
    assert_eq!(mknod(&m.join("sock"), libc::S_IFSOCK | 0o644, 0), 0);
    let chr = libc::makedev(10, 200);
    let blk = libc::makedev(259, 70_000);
    assert_eq!(mknod(&m.join("chr"), libc::S_IFCHR | 0o600, chr), 0);
    assert_eq!(mknod(&m.join("blk"), libc::S_IFBLK | 0o660, blk), 0);

    let fifo = fs::symlink_metadata(m.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    assert!(
        fs::symlink_metadata(m.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let c = fs::symlink_metadata(m.join("chr")).unwrap();
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), chr);
    assert_eq!((libc::major(c.rdev()), libc::minor(c.rdev())), (10, 200));
    let b = fs::symlink_metadata(m.join("blk")).unwrap();
    assert!(b.file_type().is_block_device());
    assert_eq!(
        (libc::major(b.rdev()), libc::minor(b.rdev())),
        (259, 70_000)
    );
    assert_eq!(b.len(), 0);
    assert_eq!(
        mknod(&m.join("fifo"), libc::S_IFIFO | 0o640, 0),
        libc::EEXIST
    );

    // The fifo works as a pipe (the kernel serves its data).
    let fd = open_fd(&m.join("fifo"), libc::O_RDWR | libc::O_NONBLOCK);
    // SAFETY: valid buffer.
    assert_eq!(
        unsafe { libc::write(fd.as_raw_fd(), b"ping".as_ptr().cast(), 4) },
        4
    );
    let mut buf = [0u8; 8];
    // SAFETY: valid buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    assert_eq!(&buf[..n as usize], b"ping");
}

#[test]
fn unix_socket_bound_in_mount_accepts_connections() {
    use std::os::unix::fs::FileTypeExt;
    let m = mount_or_skip!();
    let p = m.join("s");
    let listener = UnixListener::bind(&p).unwrap();
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_socket());
    let mut client = UnixStream::connect(&p).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(errno_of(UnixListener::bind(&p)), libc::EADDRINUSE);
}

// ---------------------------------------------------------------- rename

#[test]
fn rename_moves_a_file_and_replaces_an_existing_one() {
    let m = mount_or_skip!();
    fs::write(m.join("a"), b"A").unwrap();
    let ino = fs::metadata(m.join("a")).unwrap().ino();
    fs::rename(m.join("a"), m.join("b")).unwrap();
    assert!(!m.join("a").exists());
    assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
    assert_eq!(fs::metadata(m.join("b")).unwrap().ino(), ino);

    fs::write(m.join("c"), b"C").unwrap();
    let held = File::open(m.join("c")).unwrap();
    fs::rename(m.join("b"), m.join("c")).unwrap();
    assert!(!m.join("b").exists());
    assert_eq!(fs::read(m.join("c")).unwrap(), b"A");
    assert_eq!(fs::metadata(m.join("c")).unwrap().ino(), ino);
    // The replaced file lives on for its open descriptor, with no name left.
    assert_eq!(fstat(held.as_raw_fd()).st_nlink, 0);
    assert_eq!(pread(held.as_raw_fd(), 10, 0), b"C");

    fs::create_dir(m.join("d")).unwrap();
    fs::rename(m.join("c"), m.join("d/moved")).unwrap();
    assert_eq!(fs::read(m.join("d/moved")).unwrap(), b"A");
    assert_eq!(
        errno_of(fs::rename(m.join("nope"), m.join("x"))),
        libc::ENOENT
    );
    // Renaming one hard link over another of the same inode leaves both.
    fs::hard_link(m.join("d/moved"), m.join("h")).unwrap();
    fs::rename(m.join("h"), m.join("d/moved")).unwrap();
    assert!(m.join("h").exists() && m.join("d/moved").exists());
}

#[test]
fn rename_directory_over_empty_directory_replaces_it() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("src")).unwrap();
    fs::write(m.join("src/inner"), b"x").unwrap();
    fs::create_dir(m.join("dst")).unwrap();
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 4);
    fs::rename(m.join("src"), m.join("dst")).unwrap();
    assert!(!m.join("src").exists());
    assert_eq!(fs::read(m.join("dst/inner")).unwrap(), b"x");
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 3);
    // Across parents: the source parent loses a link, the target parent keeps its count.
    fs::create_dir_all(m.join("p1/moving/child")).unwrap();
    fs::create_dir_all(m.join("p2/empty")).unwrap();
    assert_eq!(fs::metadata(m.join("p1")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.join("p2")).unwrap().nlink(), 3);
    fs::rename(m.join("p1/moving"), m.join("p2/empty")).unwrap();
    assert!(m.join("p2/empty/child").is_dir());
    assert_eq!(fs::metadata(m.join("p1")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.join("p2")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.join("p2/empty")).unwrap().nlink(), 3);
    fs::remove_dir(m.join("p1")).unwrap();
}

#[test]
fn rename_directory_over_non_empty_directory_is_enotempty() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("src")).unwrap();
    fs::create_dir(m.join("dst")).unwrap();
    fs::write(m.join("dst/keep"), b"k").unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("src"), m.join("dst"))),
        libc::ENOTEMPTY
    );
    assert!(m.join("src").is_dir());
    assert_eq!(fs::read(m.join("dst/keep")).unwrap(), b"k");
}

#[test]
fn rename_between_file_and_directory_is_eisdir_or_enotdir() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("f"), b"f").unwrap();
    assert_eq!(errno_of(fs::rename(m.join("f"), m.join("d"))), libc::EISDIR);
    assert_eq!(
        errno_of(fs::rename(m.join("d"), m.join("f"))),
        libc::ENOTDIR
    );
    assert!(m.join("d").is_dir());
    assert_eq!(fs::read(m.join("f")).unwrap(), b"f");
}

#[test]
fn rename_directory_into_its_own_subdirectory_is_einval() {
    let m = mount_or_skip!();
    fs::create_dir_all(m.join("a/b/c")).unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("a"), m.join("a/x"))),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(fs::rename(m.join("a"), m.join("a/b/c/x"))),
        libc::EINVAL
    );
    assert_eq!(
        renameat2(&m.join("a"), &m.join("a/b"), libc::RENAME_EXCHANGE),
        libc::EINVAL
    );
    assert!(m.join("a/b/c").is_dir());
}

#[test]
fn rename_noreplace_refuses_existing_target() {
    let m = mount_or_skip!();
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&m.join("a"), &m.join("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(fs::read(m.join("a")).unwrap(), b"A");
    assert_eq!(fs::read(m.join("b")).unwrap(), b"B");
    assert_eq!(
        renameat2(&m.join("a"), &m.join("c"), libc::RENAME_NOREPLACE),
        0
    );
    assert!(!m.join("a").exists());
    assert_eq!(fs::read(m.join("c")).unwrap(), b"A");
    assert_eq!(
        renameat2(
            &m.join("b"),
            &m.join("c"),
            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
        ),
        libc::EINVAL
    );
}

#[test]
fn rename_exchange_swaps_two_files() {
    let m = mount_or_skip!();
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    let (ia, ib) = (
        fs::metadata(m.join("a")).unwrap().ino(),
        fs::metadata(m.join("b")).unwrap().ino(),
    );
    assert_eq!(
        renameat2(&m.join("a"), &m.join("b"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
    assert_eq!(fs::metadata(m.join("a")).unwrap().ino(), ib);
    assert_eq!(fs::metadata(m.join("b")).unwrap().ino(), ia);
    assert_eq!(
        renameat2(&m.join("a"), &m.join("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
}

#[test]
fn rename_exchange_swaps_file_and_directory_across_parents() {
    let m = mount_or_skip!();
    let (p1, p2) = (m.join("p1"), m.join("p2"));
    fs::create_dir(&p1).unwrap();
    fs::create_dir(&p2).unwrap();
    fs::create_dir(p1.join("d")).unwrap();
    fs::write(p1.join("d/inner"), b"in").unwrap();
    fs::write(p2.join("f"), b"file").unwrap();
    assert_eq!(fs::metadata(&p1).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&p2).unwrap().nlink(), 2);

    assert_eq!(
        renameat2(&p1.join("d"), &p2.join("f"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(p1.join("d")).unwrap(), b"file");
    assert!(p2.join("f").is_dir());
    assert_eq!(fs::read(p2.join("f/inner")).unwrap(), b"in");
    assert_eq!(fs::metadata(&p1).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&p2).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 4);
    // The moved directory's ".." now names its new parent.
    let fd = open_fd(&p2.join("f"), libc::O_RDONLY | libc::O_DIRECTORY);
    let entries = getdents_all(fd.as_raw_fd(), 4096);
    let dotdot = entries.iter().find(|e| e.name == "..").expect("..");
    assert_eq!(dotdot.ino, fs::metadata(&p2).unwrap().ino());
    // p1 can now be removed once emptied; p2 cannot while it holds the directory.
    fs::remove_file(p1.join("d")).unwrap();
    fs::remove_dir(&p1).unwrap();
    assert_eq!(errno_of(fs::remove_dir(&p2)), libc::ENOTEMPTY);
}

#[test]
fn rename_to_another_file_system_is_exdev() {
    let m = mount_or_skip!();
    let mount_dev = fs::metadata(m.path()).unwrap().dev();
    let base = ["/dev/shm".into(), std::env::temp_dir()]
        .into_iter()
        .find(|p: &PathBuf| fs::metadata(p).is_ok_and(|md| md.dev() != mount_dev))
        .expect("a directory on another file system");
    let other = tempfile::tempdir_in(&base).unwrap();
    fs::write(m.join("f"), b"x").unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("f"), other.path().join("f"))),
        libc::EXDEV
    );
    fs::write(other.path().join("g"), b"y").unwrap();
    assert_eq!(
        errno_of(fs::rename(other.path().join("g"), m.join("g"))),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::hard_link(m.join("f"), other.path().join("h"))),
        libc::EXDEV
    );
    assert!(m.join("f").exists());
}

// ---------------------------------------------------------------- unlinked but open

#[test]
fn unlinked_open_file_stays_usable_until_last_close() {
    let m = mount_or_skip!();
    let baseline = m.fs().inode_count();
    let p = m.join("ghost");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"before").unwrap();
    let second = File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno_of(fs::metadata(&p)), libc::ENOENT);
    assert_eq!(fstat(f.as_raw_fd()).st_nlink, 0);
    f.write_all(b" and after").unwrap();
    assert_eq!(pread(second.as_raw_fd(), 100, 0), b"before and after");
    assert_eq!(fstat(second.as_raw_fd()).st_size, 16);
    drop(f);
    assert_eq!(pread(second.as_raw_fd(), 6, 0), b"before");
    assert!(fs::read_dir(m.path()).unwrap().next().is_none());
    drop(second);
    assert!(
        eventually(|| m.fs().inode_count() == baseline),
        "inode not freed after last close: {} live",
        m.fs().inode_count()
    );
}

#[test]
fn open_directory_after_rmdir_refuses_new_entries() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    let fd = open_fd(&d, libc::O_RDONLY | libc::O_DIRECTORY);
    fs::remove_dir(&d).unwrap();
    let name = c("x");
    // SAFETY: valid fd and C string.
    let r = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert_eq!((r, errno()), (-1, libc::ENOENT));
    // SAFETY: valid fd and C string.
    let r = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) };
    assert_eq!((r, errno()), (-1, libc::ENOENT));
    assert_eq!(fstat(fd.as_raw_fd()).st_nlink, 0);
    assert!(fs::read_dir(m.path()).unwrap().next().is_none());
}

// ---------------------------------------------------------------- permissions and ownership

#[test]
fn chmod_and_chown_change_mode_and_owner() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, None, Some(42)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 42));
    // chown of a setuid/setgid executable clears both bits, as on every Linux fs.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o6755)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o6755);
    std::os::unix::fs::chown(&p, Some(0), Some(0)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
    // Directories take the sticky bit.
    fs::create_dir(m.join("d")).unwrap();
    fs::set_permissions(m.join("d"), fs::Permissions::from_mode(0o1770)).unwrap();
    assert_eq!(fs::metadata(m.join("d")).unwrap().mode() & 0o7777, 0o1770);
}

#[test]
fn files_created_by_nobody_belong_to_nobody() {
    let m = mount_or_skip!();
    let out = sh_as_nobody(m.path(), "echo hi > f && mkdir d && ln -s f l && id -u");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    for name in ["f", "d", "l"] {
        let md = fs::symlink_metadata(m.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{name}");
    }
    assert_eq!(fs::read(m.join("f")).unwrap(), b"hi\n");
    // Created by root, owned by root.
    fs::write(m.join("r"), b"").unwrap();
    let md = fs::metadata(m.join("r")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

#[test]
fn nobody_cannot_write_into_root_owned_0755_directory() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.join("existing"), b"x").unwrap();
    fs::set_permissions(d.join("existing"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(d.join("secret"), b"s").unwrap();
    fs::set_permissions(d.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let (newf, newd) = (cpath(&d.join("new")), cpath(&d.join("newdir")));
    let (existing, secret) = (cpath(&d.join("existing")), cpath(&d.join("secret")));
    let create = as_nobody(|| {
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(newf.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
        if fd < 0 { errno() } else { 0 }
    });
    assert_eq!(create, libc::EACCES);
    // SAFETY: valid C string.
    let mk = as_nobody(|| rc(unsafe { libc::mkdir(newd.as_ptr(), 0o755) }));
    assert_eq!(mk, libc::EACCES);
    // SAFETY: valid C string.
    let rm = as_nobody(|| rc(unsafe { libc::unlink(existing.as_ptr()) }));
    assert_eq!(rm, libc::EACCES);
    let write_existing = as_nobody(|| {
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(existing.as_ptr(), libc::O_WRONLY) };
        if fd < 0 { errno() } else { 0 }
    });
    assert_eq!(write_existing, libc::EACCES);
    let read_secret = as_nobody(|| {
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(secret.as_ptr(), libc::O_RDONLY) };
        if fd < 0 { errno() } else { 0 }
    });
    assert_eq!(read_secret, libc::EACCES);
    let read_existing = as_nobody(|| {
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(existing.as_ptr(), libc::O_RDONLY) };
        if fd < 0 { errno() } else { 0 }
    });
    assert_eq!(read_existing, 0);
    assert!(!d.join("new").exists() && !d.join("newdir").exists());
    assert!(d.join("existing").exists());
}

#[test]
fn write_by_nobody_clears_setuid_bit() {
    let m = mount_or_skip!();
    let p = m.join("prog");
    fs::write(&p, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4777)).unwrap();
    let cp = cpath(&p);
    let w = as_nobody(|| {
        // SAFETY: valid C string and buffer.
        unsafe {
            let fd = libc::open(cp.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
            if fd < 0 {
                return errno();
            }
            if libc::write(fd, b"x".as_ptr().cast(), 1) != 1 {
                return errno();
            }
            libc::close(fd);
        }
        0
    });
    assert_eq!(w, 0);
    assert_eq!(fs::read(&p).unwrap(), b"#!/bin/sh\nx");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o777);
}

#[test]
fn setgid_directory_passes_its_group_and_bit_to_children() {
    let m = mount_or_skip!();
    let d = m.join("shared");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(4321)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2777)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o2777);
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("file"), b"").unwrap();
    let sub = fs::metadata(d.join("sub")).unwrap();
    assert_eq!(sub.gid(), 4321);
    assert_ne!(sub.mode() & libc::S_ISGID, 0, "subdir lost S_ISGID");
    let file = fs::metadata(d.join("file")).unwrap();
    assert_eq!(file.gid(), 4321);
    assert_eq!(file.mode() & libc::S_ISGID, 0);
    // Grandchildren inherit through the subdirectory.
    fs::create_dir(d.join("sub/deeper")).unwrap();
    assert_eq!(fs::metadata(d.join("sub/deeper")).unwrap().gid(), 4321);
    // Another user's files take the directory's group as well.
    let out = sh_as_nobody(&d, "echo x > theirs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = fs::metadata(d.join("theirs")).unwrap();
    assert_eq!((theirs.uid(), theirs.gid()), (NOBODY, 4321));
    // Outside the setgid directory, the creator's group.
    fs::create_dir(m.join("plain")).unwrap();
    let plain = fs::metadata(m.join("plain")).unwrap();
    assert_eq!(plain.gid(), 0);
    assert_eq!(plain.mode() & libc::S_ISGID, 0);
}

#[test]
fn sticky_directory_stops_nobody_deleting_roots_file() {
    let m = mount_or_skip!();
    let d = m.join("tmp");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(d.join("roots"), b"r").unwrap();
    fs::set_permissions(d.join("roots"), fs::Permissions::from_mode(0o666)).unwrap();
    let (roots, moved, mine) = (
        cpath(&d.join("roots")),
        cpath(&d.join("moved")),
        cpath(&d.join("mine")),
    );
    // SAFETY: valid C string.
    let unlink = as_nobody(|| rc(unsafe { libc::unlink(roots.as_ptr()) }));
    assert_eq!(unlink, libc::EPERM);
    // SAFETY: valid C strings.
    let rename = as_nobody(|| rc(unsafe { libc::rename(roots.as_ptr(), moved.as_ptr()) }));
    assert_eq!(rename, libc::EPERM);
    let own = as_nobody(|| {
        // SAFETY: valid C string.
        unsafe {
            let fd = libc::open(mine.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            if fd < 0 {
                return errno();
            }
            libc::close(fd);
            rc(libc::unlink(mine.as_ptr()))
        }
    });
    assert_eq!(own, 0, "nobody may delete its own file");
    assert_eq!(fs::read(d.join("roots")).unwrap(), b"r");
    // Writing the world-writable file is still allowed: sticky only guards names.
    let write = as_nobody(|| {
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(roots.as_ptr(), libc::O_WRONLY | libc::O_TRUNC) };
        if fd < 0 { errno() } else { 0 }
    });
    assert_eq!(write, 0);
    assert_eq!(fs::metadata(d.join("roots")).unwrap().len(), 0);
}

// ---------------------------------------------------------------- timestamps

#[test]
fn utimensat_sets_nanosecond_times() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"x").unwrap();
    assert_eq!(
        utimensat(
            &p,
            ts(1_000_000_000, 123_456_789),
            ts(1_500_000_000, 987_654_321)
        ),
        0
    );
    let md = fs::metadata(&p).unwrap();
    assert_eq!(atime(&md), (1_000_000_000, 123_456_789));
    assert_eq!(mtime(&md), (1_500_000_000, 987_654_321));
    // Before 1970 too.
    assert_eq!(utimensat(&p, ts(-1, 500), ts(-86_400, 1)), 0);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(atime(&md), (-1, 500));
    assert_eq!(mtime(&md), (-86_400, 1));
    assert_eq!(utimensat(&p, ts(0, 1_000_000_000), ts(0, 0)), libc::EINVAL);
}

#[test]
fn utime_now_sets_the_clock_and_utime_omit_leaves_a_time_alone() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"x").unwrap();
    assert_eq!(utimensat(&p, ts(1_000, 1), ts(2_000, 2)), 0);
    assert_eq!(
        utimensat(&p, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_NOW)),
        0
    );
    let md = fs::metadata(&p).unwrap();
    assert_eq!(atime(&md), (1_000, 1), "UTIME_OMIT changed atime");
    assert!((md.mtime() - now_secs()).abs() <= 5, "mtime {}", md.mtime());
    assert_eq!(
        utimensat(&p, ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)),
        0
    );
    let md2 = fs::metadata(&p).unwrap();
    assert!(
        (md2.atime() - now_secs()).abs() <= 5,
        "atime {}",
        md2.atime()
    );
    assert_eq!(mtime(&md2), mtime(&md), "UTIME_OMIT changed mtime");
    let before = ctime(&md2);
    tick();
    assert_eq!(
        utimensat(&p, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_OMIT)),
        0
    );
    assert_eq!(mtime(&fs::metadata(&p).unwrap()), mtime(&md));
    assert!(ctime(&fs::metadata(&p).unwrap()) >= before);
}

#[test]
fn write_and_truncate_advance_mtime_and_ctime() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"0123456789").unwrap();
    assert_eq!(utimensat(&p, ts(1_000, 0), ts(1_000, 0)), 0);
    let c0 = ctime(&fs::metadata(&p).unwrap());
    tick();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"ab", 3).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert!(
        md.mtime() >= now_secs() - 5,
        "write left mtime at {}",
        md.mtime()
    );
    assert!(ctime(&md) > c0, "write left ctime");

    assert_eq!(utimensat(&p, ts(1_000, 0), ts(1_000, 0)), 0);
    let c1 = ctime(&fs::metadata(&p).unwrap());
    tick();
    f.set_len(4).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert!(
        md.mtime() >= now_secs() - 5,
        "truncate left mtime at {}",
        md.mtime()
    );
    assert!(ctime(&md) > c1, "truncate left ctime");

    // O_TRUNC of a non-empty file counts as a truncate.
    assert_eq!(utimensat(&p, ts(1_000, 0), ts(1_000, 0)), 0);
    drop(File::create(&p).unwrap());
    assert!(fs::metadata(&p).unwrap().mtime() >= now_secs() - 5);
}

#[test]
fn truncate_to_the_same_size_still_advances_times() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"0123456789").unwrap();
    let cp = cpath(&p);
    assert_eq!(utimensat(&p, ts(1_000, 0), ts(2_000, 0)), 0);
    let c0 = ctime(&fs::metadata(&p).unwrap());
    tick();
    // SAFETY: valid path.
    assert_eq!(rc(unsafe { libc::truncate(cp.as_ptr(), 10) }), 0);
    let md = fs::metadata(&p).unwrap();
    assert!(md.mtime() >= now_secs() - 5, "truncate(2) left mtime");
    assert!(ctime(&md) > c0, "truncate(2) left ctime");
    assert_eq!(utimensat(&p, ts(1_000, 0), ts(2_000, 0)), 0);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(10).unwrap();
    assert!(
        fs::metadata(&p).unwrap().mtime() >= now_secs() - 5,
        "ftruncate left mtime"
    );
    assert_eq!(fs::read(&p).unwrap(), b"0123456789");

    // A file with no pages: truncate(2) to its size has nothing to do and leaves the times,
    // ftruncate(2) still sets them (both as on tmpfs).
    let e = m.join("empty");
    fs::write(&e, b"").unwrap();
    let ce = cpath(&e);
    assert_eq!(utimensat(&e, ts(1_000, 0), ts(2_000, 0)), 0);
    let before = fs::metadata(&e).unwrap();
    tick();
    // SAFETY: valid path.
    assert_eq!(rc(unsafe { libc::truncate(ce.as_ptr(), 0) }), 0);
    let after = fs::metadata(&e).unwrap();
    assert_eq!(
        mtime(&after),
        mtime(&before),
        "no-op truncate(2) moved mtime"
    );
    assert_eq!(
        ctime(&after),
        ctime(&before),
        "no-op truncate(2) moved ctime"
    );
    File::options()
        .write(true)
        .open(&e)
        .unwrap()
        .set_len(0)
        .unwrap();
    let after = fs::metadata(&e).unwrap();
    assert!(
        after.mtime() >= now_secs() - 5,
        "ftruncate of an empty file left mtime"
    );
    assert!(ctime(&after) > ctime(&before));
}

#[test]
fn chmod_advances_ctime_but_not_mtime() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"x").unwrap();
    let before = fs::metadata(&p).unwrap();
    tick();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let after = fs::metadata(&p).unwrap();
    assert!(ctime(&after) > ctime(&before), "chmod left ctime");
    assert_eq!(mtime(&after), mtime(&before), "chmod moved mtime");
    // chown that changes no id still counts as a change, as on tmpfs.
    tick();
    std::os::unix::fs::chown(&p, None, None).unwrap();
    let again = fs::metadata(&p).unwrap();
    assert!(ctime(&again) > ctime(&after), "chown(-1, -1) left ctime");
    assert_eq!(mtime(&again), mtime(&before));
}

#[test]
fn creating_an_entry_advances_the_directory_mtime() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(utimensat(&d, ts(1_000, 0), ts(1_000, 0)), 0);
    fs::write(d.join("f"), b"").unwrap();
    assert!(fs::metadata(&d).unwrap().mtime() >= now_secs() - 5);
    assert_eq!(utimensat(&d, ts(1_000, 0), ts(1_000, 0)), 0);
    fs::remove_file(d.join("f")).unwrap();
    assert!(fs::metadata(&d).unwrap().mtime() >= now_secs() - 5);
}

// ---------------------------------------------------------------- xattrs

#[test]
fn xattr_set_get_list_remove() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"").unwrap();
    assert_eq!(setxattr(&p, "user.color", b"blue", 0), 0);
    assert_eq!(setxattr(&p, "user.empty", b"", 0), 0);
    assert_eq!(setxattr(&p, "user.bin", &[0, 1, 2, 255], 0), 0);
    assert_eq!(getxattr(&p, "user.color", 64), Ok(b"blue".to_vec()));
    assert_eq!(getxattr(&p, "user.empty", 64), Ok(Vec::new()));
    assert_eq!(getxattr(&p, "user.bin", 64), Ok(vec![0, 1, 2, 255]));
    let list = listxattr(&p, 1024).unwrap();
    let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    assert_eq!(names, [&b"user.bin"[..], b"user.color", b"user.empty"]);
    assert_eq!(setxattr(&p, "user.color", b"green", 0), 0);
    assert_eq!(getxattr(&p, "user.color", 64), Ok(b"green".to_vec()));
    assert_eq!(removexattr(&p, "user.color"), 0);
    assert_eq!(getxattr(&p, "user.color", 64), Err(libc::ENODATA));
    assert_eq!(removexattr(&p, "user.color"), libc::ENODATA);
    // Directories carry xattrs too.
    fs::create_dir(m.join("d")).unwrap();
    assert_eq!(setxattr(&m.join("d"), "user.k", b"v", 0), 0);
    assert_eq!(getxattr(&m.join("d"), "user.k", 8), Ok(b"v".to_vec()));
}

#[test]
fn xattr_create_and_replace_flags_fail_eexist_and_enodata() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"").unwrap();
    assert_eq!(
        setxattr(&p, "user.a", b"1", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&p, "user.a", b"1", libc::XATTR_CREATE), 0);
    assert_eq!(
        setxattr(&p, "user.a", b"2", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(getxattr(&p, "user.a", 8), Ok(b"1".to_vec()));
    assert_eq!(setxattr(&p, "user.a", b"3", libc::XATTR_REPLACE), 0);
    assert_eq!(getxattr(&p, "user.a", 8), Ok(b"3".to_vec()));
    assert_eq!(getxattr(&p, "user.missing", 8), Err(libc::ENODATA));
    assert_eq!(getxattr(&p, "user.missing", 0), Err(libc::ENODATA));
}

#[test]
fn xattr_small_buffer_is_erange_and_zero_size_returns_length() {
    let m = mount_or_skip!();
    let p = m.join("f");
    fs::write(&p, b"").unwrap();
    assert_eq!(setxattr(&p, "user.long", b"0123456789", 0), 0);
    assert_eq!(getxattr(&p, "user.long", 1), Err(libc::ERANGE));
    assert_eq!(getxattr(&p, "user.long", 9), Err(libc::ERANGE));
    assert_eq!(getxattr(&p, "user.long", 0).map(|v| v.len()), Ok(10));
    assert_eq!(getxattr(&p, "user.long", 10), Ok(b"0123456789".to_vec()));
    let total = "user.long\0".len();
    assert_eq!(listxattr(&p, 0).map(|v| v.len()), Ok(total));
    assert_eq!(listxattr(&p, 1), Err(libc::ERANGE));
    assert_eq!(listxattr(&p, total), Ok(b"user.long\0".to_vec()));
}

// ---------------------------------------------------------------- fallocate

#[test]
fn fallocate_mode_zero_extends_the_size() {
    let m = mount_or_skip!();
    let fd = open_fd(&m.join("f"), libc::O_CREAT | libc::O_RDWR);
    let fd = fd.as_raw_fd();
    assert_eq!(fallocate(fd, 0, 0, 10_000), 0);
    let st = fstat(fd);
    assert_eq!(st.st_size, 10_000);
    assert_eq!(st.st_blocks, 24);
    assert_eq!(pread(fd, 20_000, 0), vec![0u8; 10_000]);
    // Inside the size it changes nothing visible.
    pwrite(fd, b"keep", 0);
    assert_eq!(fallocate(fd, 0, 0, 100), 0);
    assert_eq!(fstat(fd).st_size, 10_000);
    assert_eq!(pread(fd, 4, 0), b"keep");
    assert_eq!(fallocate(fd, 0, 0, 0), libc::EINVAL);
}

#[test]
fn fallocate_keep_size_allocates_blocks_without_growing() {
    let m = mount_or_skip!();
    let fd = open_fd(&m.join("f"), libc::O_CREAT | libc::O_RDWR);
    let fd = fd.as_raw_fd();
    assert_eq!(fallocate(fd, 0, 0, 10_000), 0);
    assert_eq!(fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 10_000, 20_000), 0);
    let st = fstat(fd);
    assert_eq!(st.st_size, 10_000);
    assert_eq!(st.st_blocks, 64);
    assert_eq!(pread(fd, 100_000, 0).len(), 10_000);
    // SEEK_HOLE stops at the size, allocated or not.
    assert_eq!(lseek(fd, 0, libc::SEEK_HOLE), Ok(10_000));
}

#[test]
fn fallocate_punch_hole_zeroes_the_range_and_frees_blocks() {
    let m = mount_or_skip!();
    let fd = open_fd(&m.join("f"), libc::O_CREAT | libc::O_RDWR);
    let fd = fd.as_raw_fd();
    pwrite(fd, &[b'x'; 30_000], 0);
    assert_eq!(fstat(fd).st_blocks, 64);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(fallocate(fd, punch, 4096, 8192), 0);
    let st = fstat(fd);
    assert_eq!(st.st_size, 30_000);
    assert_eq!(st.st_blocks, 48);
    let data = pread(fd, 30_000, 0);
    assert!(data[..4096].iter().all(|&b| b == b'x'));
    assert!(data[4096..12_288].iter().all(|&b| b == 0));
    assert!(data[12_288..].iter().all(|&b| b == b'x'));
    assert_eq!(lseek(fd, 0, libc::SEEK_HOLE), Ok(4096));
    assert_eq!(lseek(fd, 4096, libc::SEEK_DATA), Ok(12_288));
    // Unaligned: the partial pages are zeroed in place, blocks stay.
    assert_eq!(fallocate(fd, punch, 100, 10), 0);
    assert_eq!(
        pread(fd, 12, 99),
        [b"x".as_slice(), &[0; 10], b"x"].concat()
    );
    assert_eq!(fstat(fd).st_blocks, 48);
}

#[test]
fn fallocate_unsupported_modes_fail_eopnotsupp_like_tmpfs() {
    let m = mount_or_skip!();
    let fd = open_fd(&m.join("f"), libc::O_CREAT | libc::O_RDWR);
    let fd = fd.as_raw_fd();
    pwrite(fd, &[1u8; 8192], 0);
    for mode in [
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_INSERT_RANGE,
        libc::FALLOC_FL_PUNCH_HOLE,
    ] {
        assert_eq!(
            fallocate(fd, mode, 0, 4096),
            libc::EOPNOTSUPP,
            "mode {mode:#x}"
        );
    }
    assert_eq!(pread(fd, 8192, 0), vec![1u8; 8192]);
    assert_eq!(fstat(fd).st_size, 8192);
}

// ---------------------------------------------------------------- statfs and space

#[test]
fn statfs_reports_block_size_and_name_length() {
    let m = mount_or_skip!();
    let s = statfs(m.path());
    assert_eq!(s.f_bsize, 4096);
    assert_eq!(s.f_namelen, 255);
    assert!(s.f_blocks > 0);
    assert!(s.f_files > 0 && s.f_ffree <= s.f_files);
    fs::write(m.join("f"), b"x").unwrap();
    let s2 = statfs(m.path());
    assert_eq!(s2.f_ffree, s.f_ffree - 1);
}

#[test]
fn size_limit_shows_in_statfs_and_writes_past_it_fail_enospc() {
    let config = MountConfig {
        size: Some(8 * MIB as u64),
        ..MountConfig::default()
    };
    let m = mount_or_skip!(config);
    let s = statfs(m.path());
    assert_eq!(s.f_blocks * s.f_bsize as u64, 8 * MIB as u64);
    assert_eq!(s.f_bfree, s.f_blocks);

    let err = fs::write(m.join("big"), vec![1u8; 9 * MIB]).expect_err("9 MiB fit in 8 MiB");
    assert_eq!(code(&err), libc::ENOSPC);
    assert_eq!(statfs(m.path()).f_bfree, 0);
    assert_eq!(errno_of(fs::write(m.join("more"), b"x")), libc::ENOSPC);
    // Metadata still works when data space is gone.
    fs::create_dir(m.join("d")).unwrap();
    // fallocate is all or nothing.
    fs::write(m.join("small"), b"").unwrap();
    let fd = open_fd(&m.join("small"), libc::O_RDWR);
    assert_eq!(fallocate(fd.as_raw_fd(), 0, 0, 4096), libc::ENOSPC);
    assert_eq!(fstat(fd.as_raw_fd()).st_size, 0);
    drop(fd);
    fs::remove_file(m.join("small")).unwrap();

    fs::remove_file(m.join("more")).unwrap();
    fs::remove_file(m.join("big")).unwrap();
    // The pages come back when the kernel forgets the inode, which it queues during unlink.
    assert!(
        eventually(|| m.fs().bytes_used() == 0),
        "space not freed: {} bytes used",
        m.fs().bytes_used()
    );
    fs::write(m.join("again"), vec![2u8; 4 * MIB]).unwrap();
    assert_eq!(fs::read(m.join("again")).unwrap().len(), 4 * MIB);
    assert_eq!(statfs(m.path()).f_bfree, 1024);
}

#[test]
fn space_is_free_for_the_next_write_right_after_unlink() {
    let m = mount_or_skip!(MountConfig {
        size: Some(2 * MIB as u64),
        threads: 8,
        ..MountConfig::default()
    });
    let full = vec![3u8; 2 * MIB];
    let mut failures = 0;
    for i in 0..500 {
        let p = m.join(format!("f{i}"));
        if fs::write(&p, &full).is_err() {
            failures += 1;
        }
        fs::remove_file(&p).unwrap();
    }
    assert_eq!(failures, 0, "writes right after rm failed with ENOSPC");
}

// ---------------------------------------------------------------- mmap

fn mmap_shared_and_private(m: &rawfs::TempMount) {
    let p = m.join("mapped");
    fs::write(&p, vec![b'.'; 8192]).unwrap();
    let fd = open_fd(&p, libc::O_RDWR);
    let fd = fd.as_raw_fd();
    // SAFETY: a fresh mapping of an open fd; unmapped below.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(shared, libc::MAP_FAILED, "MAP_SHARED: errno {}", errno());
    // SAFETY: the mapping is 8192 bytes long.
    let view = unsafe { std::slice::from_raw_parts_mut(shared.cast::<u8>(), 8192) };
    assert_eq!(view[0], b'.');
    view[100..106].copy_from_slice(b"SHARED");
    view[5000..5004].copy_from_slice(b"PAGE");
    // SAFETY: the mapping is live.
    assert_eq!(unsafe { libc::msync(shared, 8192, libc::MS_SYNC) }, 0);
    assert_eq!(pread(fd, 6, 100), b"SHARED");
    assert_eq!(pread(fd, 4, 5000), b"PAGE");
    let through_tree = tree_contents(m, "mapped");
    assert_eq!(
        &through_tree[100..106],
        b"SHARED",
        "msync did not reach the daemon"
    );
    assert_eq!(through_tree.len(), 8192);
    // SAFETY: unmapping what was mapped above.
    assert_eq!(unsafe { libc::munmap(shared, 8192) }, 0);
    assert_eq!(fs::read(&p).unwrap()[100..106], *b"SHARED");

    // SAFETY: as above.
    let private = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            fd,
            0,
        )
    };
    assert_ne!(private, libc::MAP_FAILED, "MAP_PRIVATE: errno {}", errno());
    // SAFETY: the mapping is 8192 bytes long.
    let view = unsafe { std::slice::from_raw_parts_mut(private.cast::<u8>(), 8192) };
    assert_eq!(&view[100..106], b"SHARED");
    view[200..207].copy_from_slice(b"PRIVATE");
    // SAFETY: the mapping is live.
    assert_eq!(unsafe { libc::msync(private, 8192, libc::MS_SYNC) }, 0);
    assert_eq!(pread(fd, 7, 200), b".......");
    assert_eq!(&tree_contents(m, "mapped")[200..207], b".......");
    assert_eq!(&view[200..207], b"PRIVATE");
    // SAFETY: unmapping what was mapped above.
    assert_eq!(unsafe { libc::munmap(private, 8192) }, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 8192);
}

#[test]
fn mmap_shared_writes_reach_read_and_private_ones_do_not() {
    let m = mount_or_skip!();
    mmap_shared_and_private(&m);
}

#[test]
fn mmap_shared_writes_reach_read_and_private_ones_do_not_in_cache_mode() {
    let m = mount_or_skip!(MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    });
    mmap_shared_and_private(&m);
}

// ---------------------------------------------------------------- cache modes

#[test]
fn cache_mode_write_read_rename_and_stat_agree() {
    let m = mount_or_skip!(MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    });
    let p = m.join("f");
    fs::write(&p, b"cached contents").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"cached contents");
    assert_eq!(fs::metadata(&p).unwrap().len(), 15);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"CACHED", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"CACHED contents");
    assert_eq!(tree_contents(&m, "f"), b"CACHED contents");
    fs::rename(&p, m.join("g")).unwrap();
    assert_eq!(errno_of(fs::metadata(&p)), libc::ENOENT);
    assert_eq!(fs::read(m.join("g")).unwrap(), b"CACHED contents");
    let f = OpenOptions::new().write(true).open(m.join("g")).unwrap();
    f.set_len(6).unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.join("g")).unwrap().len(), 6);
    assert_eq!(fs::read(m.join("g")).unwrap(), b"CACHED");
    fs::remove_file(m.join("g")).unwrap();
    assert!(fs::read_dir(m.path()).unwrap().next().is_none());
}

#[test]
fn direct_mode_read_returns_exactly_the_bytes_asked_for() {
    let m = mount_or_skip!();
    let p = m.join("f");
    let data: Vec<u8> = (0..12_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&p, &data).unwrap();
    let fd = open_fd(&p, libc::O_RDONLY);
    let mut pos = 0usize;
    for want in [1usize, 5000, 3, 4097, 2899, 100] {
        let mut buf = vec![0u8; want];
        // SAFETY: buf has `want` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
        let expect = want.min(data.len() - pos);
        assert_eq!(n, expect as isize, "read({want}) at {pos}");
        assert_eq!(&buf[..expect], &data[pos..pos + expect]);
        pos += expect;
    }
    assert_eq!(pos, data.len());
    assert_eq!(pread(fd.as_raw_fd(), 1, 11_999), [data[11_999]]);
    assert_eq!(pread(fd.as_raw_fd(), 1, 12_000), Vec::<u8>::new());
}

// ---------------------------------------------------------------- child processes

#[test]
fn python_exclusive_create_and_mkstemp() {
    let m = mount_or_skip!();
    let program = r#"
import os, sys, tempfile, stat
d = sys.argv[1]
p = os.path.join(d, 'x')
with open(p, 'x') as f:
    f.write('first')
try:
    open(p, 'x')
    print('second open succeeded')
except FileExistsError as e:
    print('x', e.errno)
q = os.path.join(d, 'y')
fd = os.open(q, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
os.write(fd, b'excl')
os.close(fd)
try:
    os.open(q, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    print('second os.open succeeded')
except OSError as e:
    print('excl', e.errno)
fd, name = tempfile.mkstemp(dir=d, prefix='tmp-')
os.write(fd, b'temp')
os.close(fd)
print('mkstemp', os.path.basename(name), oct(stat.S_IMODE(os.stat(name).st_mode)))
"#;
    let out = python(m.path(), program, &[m.path().to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("x {}", libc::EEXIST));
    assert_eq!(lines[1], format!("excl {}", libc::EEXIST));
    let parts: Vec<&str> = lines[2].split(' ').collect();
    assert_eq!(parts[0], "mkstemp");
    assert_eq!(parts[2], "0o600");
    assert_eq!(fs::read(m.join(parts[1])).unwrap(), b"temp");
    assert_eq!(fs::read(m.join("x")).unwrap(), b"first");
    assert_eq!(fs::read(m.join("y")).unwrap(), b"excl");
    assert_eq!(fs::metadata(m.join("y")).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn coreutils_cp_mv_redirect_cat_ls_and_rm_work() {
    let m = mount_or_skip!();
    let out = sh(
        m.path(),
        "echo hi > f && cat f && cp f g && mv g h && mkdir -p tree/a/b && \
         cp f tree/a/b/x && cp -r tree copy && echo more >> h && ls -l",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("hi\n"), "cat printed {stdout:?}");
    for name in ["f", "h", "tree", "copy"] {
        assert!(
            stdout.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "ls -l lacks {name}: {stdout}"
        );
    }
    assert!(!stdout.lines().any(|l| l.ends_with(" g")));
    assert!(stdout.contains("\ndrwx"), "no directory line: {stdout}");
    assert_eq!(fs::read(m.join("h")).unwrap(), b"hi\nmore\n");
    assert_eq!(fs::read(m.join("copy/a/b/x")).unwrap(), b"hi\n");
    sh(m.path(), "rm -r tree copy");
    assert!(!m.join("tree").exists() && !m.join("copy").exists());
    let out = sh(m.path(), "ls");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "f\nh\n");
    let failed = Command::new("sh")
        .args(["-c", "cat missing"])
        .current_dir(m.path())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("No such file"));
}

// ---------------------------------------------------------------- a running program's file

/// A child process, killed and reaped when dropped (also after a failed assertion).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The file a program runs from, as on tmpfs: open(2) for writing fails with ETXTBSY, and so
/// does O_RDONLY|O_TRUNC, which leaves the file whole. (The kernel asks for write access for
/// that one only after the file system has opened the file and, with atomic_o_trunc,
/// truncated it.) Once the program has exited, O_RDONLY|O_TRUNC truncates.
fn a_running_programs_file_stays_whole(m: &rawfs::TempMount) {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep(1) is installed");
    let program = fs::read(sleep).unwrap();
    let p = m.join("sleep");
    fs::write(&p, &program).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    let mut running = Running(Command::new(&p).arg("30").spawn().unwrap());

    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let got = sys_open(&p, flags, 0).map(drop);
        assert_eq!(got, Err(libc::ETXTBSY), "open flags {flags:#o}");
    }
    assert_eq!(tree_contents(m, "sleep"), program);
    assert_eq!(fs::metadata(&p).unwrap().len(), program.len() as u64);
    assert!(running.0.try_wait().unwrap().is_none(), "the program died");

    let _ = running.0.kill();
    running.0.wait().unwrap();
    // exec(2)'s handle is released when the program's last reference goes, on its way to
    // rawfs as the program is reaped.
    assert!(
        eventually(|| sys_open(&p, libc::O_RDONLY | libc::O_TRUNC, 0).is_ok()),
        "O_RDONLY|O_TRUNC still refused after the program exited"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
}

#[test]
fn a_running_programs_file_refuses_writers_and_o_trunc_and_stays_whole() {
    let m = mount_or_skip!();
    a_running_programs_file_stays_whole(&m);
}

#[test]
fn a_running_programs_file_refuses_writers_and_o_trunc_and_stays_whole_in_cache_mode() {
    let m = mount_or_skip!(MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    });
    a_running_programs_file_stays_whole(&m);
}
