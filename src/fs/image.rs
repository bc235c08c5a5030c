//! Crash images: a tree of nodes written out as a real directory (`rawfs crash --to DIR`), so
//! that any tool can look at what a crash would leave without touching the mount.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use super::{Body, Kind, Node, Nodes, ROOT};

/// Bytes read from a file's pages and written out at a time.
const CHUNK: usize = 1 << 20;

/// Writes the tree under `ROOT` of `nodes` into `dir`, which must be missing or empty:
/// contents, symlinks, special files, hard links, modes, owners (as root), times and xattrs.
pub(super) fn write(nodes: &Nodes, dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(io::Error::other(format!(
                    "{} is not empty; a crash image goes into a new or empty directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(dir)?,
        Err(e) => return Err(e),
    }
    let mut first_path: FxHashMap<u64, PathBuf> = FxHashMap::default();
    // Attributes are set children first, so that a directory's times and a read-only mode
    // are applied after everything inside it was written.
    let mut attrs: Vec<(PathBuf, u64)> = vec![(dir.to_path_buf(), ROOT)];
    let mut stack = vec![(ROOT, dir.to_path_buf())];
    while let Some((ino, path)) = stack.pop() {
        let Some(Body::Dir(d)) = nodes.get(&ino).map(|n| &n.body) else {
            continue;
        };
        for (name, child) in d.iter() {
            let Some(n) = nodes.get(&child) else { continue };
            let p = path.join(name);
            if let Some(first) = first_path.get(&child) {
                std::fs::hard_link(first, &p)?;
                continue;
            }
            create(n, &p)?;
            first_path.insert(child, p.clone());
            attrs.push((p.clone(), child));
            if n.kind == Kind::Dir {
                stack.push((child, p));
            }
        }
    }
    for (p, ino) in attrs.iter().rev() {
        set_attrs(&nodes[ino], p)?;
    }
    Ok(())
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn create(n: &Node, p: &Path) -> io::Result<()> {
    match &n.body {
        Body::Dir(_) => std::fs::create_dir(p),
        Body::Symlink(target) => symlink(std::ffi::OsStr::from_bytes(target), p),
        Body::File(d) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)?;
            let mut at = 0;
            while at < d.size() {
                let chunk = d.read(at, CHUNK);
                f.write_all(&chunk)?;
                at += chunk.len() as u64;
            }
            f.set_len(d.size())
        }
        Body::Special => {
            let fmt = match n.kind {
                Kind::Fifo => libc::S_IFIFO,
                Kind::Socket => libc::S_IFSOCK,
                Kind::CharDevice => libc::S_IFCHR,
                _ => libc::S_IFBLK,
            };
            let c = cpath(p)?;
            // SAFETY: c is a valid NUL-terminated path.
            check(unsafe { libc::mknod(c.as_ptr(), fmt | 0o600, libc::dev_t::from(n.rdev)) })
        }
    }
}

fn timespec(t: SystemTime) -> libc::timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        },
        Err(e) => {
            let d = e.duration();
            let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
            if ns < 0 {
                s -= 1;
                ns += 1_000_000_000;
            }
            libc::timespec {
                tv_sec: s as libc::time_t,
                tv_nsec: ns as libc::c_long,
            }
        }
    }
}

fn set_attrs(n: &Node, p: &Path) -> io::Result<()> {
    let c = cpath(p)?;
    for (name, value) in &n.xattrs {
        let cname = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid C strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        check(r)?;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: c is a valid path.
        check(unsafe { libc::lchown(c.as_ptr(), n.uid, n.gid) })?;
    }
    if n.kind != Kind::Symlink {
        // SAFETY: c is a valid path.
        check(unsafe { libc::chmod(c.as_ptr(), libc::mode_t::from(n.perm)) })?;
    }
    let times = [timespec(n.atime), timespec(n.mtime)];
    // SAFETY: c is a valid path and times has two entries.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}
