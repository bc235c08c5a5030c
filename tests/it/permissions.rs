//! Permission checks made by rawfs itself (src/fs/perm.rs), compared with tmpfs: one python
//! program sets up a tree as root, then forks a process per step that takes the step's
//! uid, gid and supplementary groups (or drops capabilities) and tries one thing. Each line
//! it prints is an outcome (`ok`, an errno name, a value). The same program runs on a private
//! tmpfs, on a default rawfs mount and on a `--cache` mount; all three must print the same.
//!
//! Also: the requests a path walk costs. Without the kernel's `default_permissions`, a
//! create, stat or unlink in a subdirectory reaches rawfs as the lookups of its path and the
//! operation itself, with no getattr of the directories on the way.

use std::path::Path;

use rawfs::fuse::CacheMode;
use rawfs::{MountConfig, Op, Request, TempMount};

use crate::common::{mount_with, python, root_or_skip, s, text};
use crate::differential::Tmpfs;

/// The steps, run in the directory given as argv[1] (as root). Users 1000 and 2000 have
/// groups 1000 and 2000; group 3000 is a supplementary group some steps hold.
const STEPS: &str = r##"
import ctypes, errno, os, struct, subprocess, sys

os.chdir(sys.argv[1])
os.umask(0)
A, B, G, H = 1000, 2000, 3000, 4000

def outcome(fn):
    try:
        r = fn()
        return "ok" if r is None else f"ok {r}"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def step(name, fn, uid=None, groups=(), caps_drop=()):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if caps_drop:
                drop_caps(caps_drop)
            if uid is not None:
                os.setgroups(list(groups))
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            out = outcome(fn)
        except BaseException as e:
            out = f"setup failed: {e!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    print(f"{name}: {out.decode()}")

def drop_caps(caps):
    # capset(2): keep every capability but `caps` in the effective and permitted sets.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    h = Header(0x20080522, 0)
    d = (Data * 2)()
    if libc.capget(ctypes.byref(h), d) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for c in caps:
        d[c // 32].effective &= ~(1 << (c % 32))
        d[c // 32].permitted &= ~(1 << (c % 32))
    if libc.capset(ctypes.byref(h), d) != 0:
        raise OSError(ctypes.get_errno(), "capset")

def mk(path, mode, uid=0, gid=0, data=b"data"):
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)

def mkd(path, mode, uid=0, gid=0):
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)

def read(path):
    with open(path, "rb") as f:
        return len(f.read())

def stat_mode(path):
    return oct(os.stat(path).st_mode & 0o7777)

# Setup, as root.
mkd("w", 0o755)
os.chdir("w")
mkd("g", 0o750, 0, G)
mk("g/f", 0o640, 0, G)
mkd("o", 0o755)
mk("o/h", 0o604, 0, G)
mk("o/rf", 0o644)
mk("o/wf", 0o666)
mk("o/af", 0o644, A, A)
mk("o/a2", 0o644, A, G)
mk("o/aw", 0o600, A, A)
mk("o/x.sh", 0o744, data=b"#!/bin/sh\nexit 0\n")
mk("o/secret", 0o600, A, A)
mk("o/rootonly", 0o600)
mkd("t", 0o1777)
mkd("s", 0o700)
mkd("ad", 0o700, A, A)
mk("s/f", 0o644)
mkd("mv", 0o777)
mkd("mv/d", 0o755)
mkd("mv/x", 0o777)
os.setxattr("o/rf", "user.k", b"v")

# Supplementary groups decide.
step("member reads group file", lambda: read("g/f"), B, [G])
step("non-member reads group file", lambda: read("g/f"), B)
step("non-member stats through group dir", lambda: os.stat("g/f") and None, B)
step("member lists group dir", lambda: len(os.listdir("g")), B, [G])
step("member denied where others may read", lambda: read("o/h"), B, [G])
step("non-member reads where others may", lambda: read("o/h"), B)
step("access R_OK as member", lambda: os.access("g/f", os.R_OK), B, [G])
step("access R_OK as non-member", lambda: os.access("g/f", os.R_OK), B)
step("access W_OK as member", lambda: os.access("g/f", os.W_OK), B, [G])

# Search and read permission on directories.
step("stat under a 0700 dir", lambda: os.stat("s/f") and None, A)
step("list a 0700 dir", lambda: os.listdir("s"), A)
step("chdir into a 0700 dir", lambda: os.chdir("s"), A)

# Open modes.
step("open O_RDWR without write", lambda: os.close(os.open("o/rf", os.O_RDWR)), A)
step("open O_RDONLY", lambda: os.close(os.open("o/rf", os.O_RDONLY)), A)
step("open O_RDONLY|O_TRUNC without write", lambda: os.close(os.open("o/rf", os.O_RDONLY | os.O_TRUNC)), A)
step("open O_WRONLY on 0666", lambda: os.close(os.open("o/wf", os.O_WRONLY)), A)
step("create in a root 0755 dir", lambda: os.close(os.open("o/new", os.O_CREAT | os.O_WRONLY, 0o644)), A)
step("mkdir in a root 0755 dir", lambda: os.mkdir("o/newd"), A)
step("exec a 0744 script of root's", lambda: subprocess.run(["./o/x.sh"], check=True) and None, A)
step("exec it as root", lambda: subprocess.run(["./o/x.sh"], check=True) and None)

# Sticky directories.
step("A creates in sticky dir", lambda: os.close(os.open("t/a", os.O_CREAT | os.O_WRONLY, 0o666)), A)
step("B creates in sticky dir", lambda: os.close(os.open("t/b", os.O_CREAT | os.O_WRONLY, 0o666)), B)
step("B unlinks A's file in sticky dir", lambda: os.unlink("t/a"), B)
step("B renames A's file in sticky dir", lambda: os.rename("t/a", "t/c"), B)
step("B renames over A's file in sticky dir", lambda: os.rename("t/b", "t/a"), B)
step("A writes into B's file in sticky dir", lambda: os.close(os.open("t/b", os.O_WRONLY)), A)
step("A unlinks own file in sticky dir", lambda: os.unlink("t/a"), A)

# Owners, groups and modes.
step("chgrp to a supplementary group", lambda: os.chown("o/af", -1, G), A, [G])
step("chgrp to a group not held", lambda: os.chown("o/af", -1, H), A, [G])
step("chown to another user", lambda: os.chown("o/af", B, -1), A)
step("chown to oneself", lambda: os.chown("o/af", A, -1), A)
step("chmod by non-owner", lambda: os.chmod("o/af", 0o777), B)
step("chmod g+s outside the group", lambda: os.chmod("o/a2", 0o2755), A)
step("mode after", lambda: stat_mode("o/a2"), A)
step("chmod g+s in the group", lambda: os.chmod("o/a2", 0o2755), A, [G])
step("mode after it", lambda: stat_mode("o/a2"), A)
step("chmod u+s by owner", lambda: os.chmod("o/af", 0o4755), A)
step("owner makes it 04777", lambda: os.chmod("o/af", 0o4777), A)
def write_it():
    fd = os.open("o/af", os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
step("B writes A's setuid file", write_it, B)
step("setuid bit after B's write", lambda: stat_mode("o/af"))

# Times and sizes.
step("touch a 0666 file not owned", lambda: os.utime("o/wf"), A)
step("set times on a 0666 file not owned", lambda: os.utime("o/wf", (1, 1)), A)
step("touch a 0644 file not owned", lambda: os.utime("o/rf"), A)
step("set times on own file", lambda: os.utime("o/af", (1, 1)), A)
step("truncate without write", lambda: os.truncate("o/rf", 0), A)
step("truncate a 0666 file", lambda: os.truncate("o/wf", 1), A)
def ftruncate_after_chmod():
    fd = os.open("o/aw", os.O_WRONLY)
    os.chmod("o/aw", 0o400)
    os.ftruncate(fd, 2)
    os.close(fd)
    return os.stat("o/aw").st_size
step("ftruncate through a handle after chmod 0400", ftruncate_after_chmod, A)
step("truncate by path after it", lambda: os.truncate("o/aw", 0), A)

# Renames, links, xattrs.
step("move a dir not writable to another parent", lambda: os.rename("mv/d", "mv/x/d"), A)
step("rename it in the same parent", lambda: os.rename("mv/d", "mv/e"), A)
step("hard link to a file not readable", lambda: os.link("o/rootonly", "mv/l1"), A)
step("hard link to one's own file", lambda: os.link("o/secret", "mv/l2"), A)
step("hard link to a 0666 file", lambda: os.link("o/wf", "mv/l3"), A)
step("getxattr user. readable", lambda: os.getxattr("o/rf", "user.k"), A)
step("setxattr user. not writable", lambda: os.setxattr("o/rf", "user.k", b"w"), A)
step("removexattr user. not writable", lambda: os.removexattr("o/rf", "user.k"), A)
step("setxattr user. on 0666 file", lambda: os.setxattr("o/wf", "user.j", b"w"), A)

# Capabilities: root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH is an ordinary caller
# for mode bits, but keeps CAP_FOWNER.
step("root without DAC caps reads A's 0600 file", lambda: read("o/secret"), caps_drop=[1, 2])
step("root without DAC caps reads its own 0600", lambda: read("o/rootonly"), caps_drop=[1, 2])
step("root without DAC caps lists A's 0700 dir", lambda: os.listdir("ad"), caps_drop=[1, 2])
step("root without FOWNER chmods A's file", lambda: os.chmod("o/secret", 0o640), caps_drop=[3])
step("root reads A's 0600 file", lambda: read("o/secret"))

# Search permission taken away after a walk: no name the kernel keeps may outlive it.
mkd("sp", 0o755)
mkd("sp/sub", 0o755)
mk("sp/sub/g", 0o644)
mkd("shut", 0o700)
mkd("shut/x", 0o755)
def exchange(a, b):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:  # RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")
step("walk two deep", lambda: read("sp/sub/g"), A)
os.chmod("sp", 0o750)
step("walk two deep after chmod 0750", lambda: read("sp/sub/g"), A)
step("stat after it", lambda: os.stat("sp/sub") and None, A)
step("walk as a group member", lambda: read("sp/sub/g"), B, [0])
os.chmod("sp", 0o755)
step("walk after chmod back", lambda: read("sp/sub/g"), A)
os.chmod("sp/sub", 0o744)
step("walk after the inner dir lost x", lambda: read("sp/sub/g"), A)
os.chmod("sp/sub", 0o755)
step("walk before the move", lambda: read("sp/sub/g"), A)
os.rename("sp/sub", "shut/sub")
step("walk after a move under a 0700 dir", lambda: read("shut/sub/g"), A)
os.rename("shut/sub", "sp/sub")
step("walk after the move back", lambda: read("sp/sub/g"), A)
exchange("shut/x", "sp/sub")
step("walk after an exchange under a 0700 dir", lambda: read("shut/x/g"), A)
step("walk through what came out", lambda: os.listdir("sp/sub"), A)

# Groups change between requests: nothing read about them may outlive a request.
def regroup():
    out = []
    os.setgroups([G])
    os.setegid(B)
    os.seteuid(B)
    out.append(outcome(lambda: read("g/f")))
    os.seteuid(0)
    os.setgroups([])
    os.seteuid(B)
    out.append(outcome(lambda: read("g/f")))
    os.seteuid(0)
    os.setgroups([G])
    os.seteuid(B)
    out.append(outcome(lambda: read("g/f")))
    return " / ".join(out)
step("groups changed between reads", regroup)

# What writes, truncates and chowns take away: setuid unless the caller holds CAP_FSETID,
# setgid where it means "setgid" (group-executable) or the caller is outside the file's
# group, a file capability (security.capability) whoever the caller. Each step has a file
# of its own in p/, owned by A; the line after it is the mode left, and "cap" if the
# capability is still there.
mkd("p", 0o777)
CAP = struct.pack("<5I", 0x02000000, 0, 0, 0, 0)  # VFS_CAP_REVISION_2, no capabilities
def left(path):
    try:
        os.getxattr(path, "security.capability")
        return stat_mode(path) + " cap"
    except OSError:
        return stat_mode(path)
def write_to(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
def ftruncate(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 1)
    finally:
        os.close(fd)
def fallocate(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, 8192)
    finally:
        os.close(fd)
def kills(name, mode, fn, uid=None, groups=(), caps_drop=(), cap=False):
    path = "p/" + name.replace(" ", "-").replace("'", "")
    mk(path, mode, A, A)
    if cap:
        os.setxattr(path, "security.capability", CAP)
    step(name, lambda: fn(path), uid, groups, caps_drop)
    print(f"  left: {left(path)}")
kills("B writes 06777", 0o6777, write_to, B)
kills("B writes 02666 outside the group", 0o2666, write_to, B)
kills("B writes 02666 in the group", 0o2666, write_to, B, [A])
kills("root writes 06777", 0o6777, write_to)
kills("root without FSETID writes 06777", 0o6777, write_to, caps_drop=[4])
kills("B truncates 06777", 0o6777, lambda p: os.truncate(p, 1), B)
kills("B ftruncates 06777", 0o6777, ftruncate, B)
kills("B opens 06777 with O_TRUNC", 0o6777, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)), B)
kills("B fallocates 06777", 0o6777, fallocate, B)
kills("B chmods 04777 to clear setuid only", 0o4777, lambda p: os.chmod(p, 0o777), B)
kills("root truncates 06777", 0o6777, lambda p: os.truncate(p, 1))
kills("A chowns its 06755 to itself", 0o6755, lambda p: os.chown(p, A, A), A)
kills("A chgrps its 02755 to G", 0o2755, lambda p: os.chown(p, -1, G), A, [G])
kills("A chgrps its 02745 to G", 0o2745, lambda p: os.chown(p, -1, G), A, [G])
kills("root chowns 06755 to B", 0o6755, lambda p: os.chown(p, B, B))
kills("root chowns 06755 with -1 -1", 0o6755, lambda p: os.chown(p, -1, -1))
kills("root chmods 0755 with a capability", 0o755, lambda p: os.chmod(p, 0o700), cap=True)
kills("root writes a capability file", 0o755, write_to, cap=True)
kills("B writes a capability file", 0o777, write_to, B, cap=True)
kills("root truncates a capability file", 0o755, lambda p: os.truncate(p, 0), cap=True)
kills("root opens a capability file with O_TRUNC", 0o755, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)), cap=True)
kills("root chowns a capability file", 0o755, lambda p: os.chown(p, B, -1), cap=True)
mkd("p/sd", 0o6777, A, A)
step("root chowns a 06777 dir to B", lambda: os.chown("p/sd", B, -1))
print(f"  left: {left('p/sd')}")
"##;

/// Runs [`STEPS`] in `dir`; returns its output.
fn run_steps(dir: &Path) -> String {
    text(&python(dir, STEPS, &["."]).stdout)
}

#[test]
fn permission_checks_match_tmpfs_with_groups_sticky_dirs_owners_and_capabilities() {
    if !root_or_skip() {
        return;
    }
    let Some(direct) = mount_with(&MountConfig::default()) else {
        return;
    };
    let Some(cached) = mount_with(&MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    }) else {
        return;
    };
    let tmpfs = Tmpfs::new();
    let want = run_steps(tmpfs.path());
    // The steps exercise denials, not only successes, and /proc-read groups and capabilities.
    for line in [
        "member reads group file: ok 4",
        "non-member reads group file: EACCES",
        "member denied where others may read: EACCES",
        "B unlinks A's file in sticky dir: EPERM",
        "chgrp to a group not held: EPERM",
        "root without DAC caps reads A's 0600 file: EACCES",
        "groups changed between reads: ok ok 4 / EACCES / ok 4",
        "walk two deep after chmod 0750: EACCES",
        "walk after an exchange under a 0700 dir: EACCES",
    ] {
        assert!(want.contains(line), "tmpfs did not print {line:?}:\n{want}");
    }
    for (m, mode) in [(&direct, "default"), (&cached, "--cache")] {
        let got = run_steps(m.path());
        if got != want {
            let diff: Vec<String> = want
                .lines()
                .zip(got.lines())
                .filter(|(w, g)| w != g)
                .map(|(w, g)| format!("  tmpfs: {w}\n  rawfs: {g}"))
                .collect();
            panic!(
                "rawfs ({mode}) differs from tmpfs on {}:\n{}",
                s(m.path()),
                diff.join("\n")
            );
        }
    }
}

/// A python program that creates, stats and unlinks `files` files in directory d between
/// lookups of "begin" and "end", then stats the directory e/f.
fn walk_program(files: usize) -> String {
    format!(
        r#"
import os
os.mkdir("d")
os.makedirs("e/f")
os.path.exists("begin")
for i in range({files}):
    os.close(os.open(f"d/f{{i}}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
for i in range({files}):
    os.stat(f"d/f{{i}}")
for i in range({files}):
    os.unlink(f"d/f{{i}}")
os.path.exists("end")
os.stat("e/f")
"#
    )
}

/// Runs python `program` in `m`; returns the requests between its lookups of "begin" and
/// "end", and the sequence number of the latter.
fn between_markers(m: &TempMount, program: &str) -> (Vec<Request>, u64) {
    python(m.path(), program, &[]);
    let begin = m.events().op(Op::Lookup).path("/begin").one();
    let end = m.events().op(Op::Lookup).path("/end").one();
    let (Ok(begin), Ok(end)) = (begin, end) else {
        panic!("the marker lookups of /begin and /end are not in the trace");
    };
    let between = m
        .events()
        .after(begin.seq)
        .all()
        .into_iter()
        .filter(|r| r.seq < end.seq)
        .collect();
    (between, end.seq)
}

/// Fails unless `requests` number at most `most` per file of `files`, showing the first ones.
fn assert_per_file(requests: &[Request], files: usize, most: usize) {
    let per_file = requests.len() as f64 / files as f64;
    let first: Vec<String> = requests.iter().take(40).map(|r| r.to_string()).collect();
    assert!(
        per_file <= most as f64,
        "{per_file} requests per file, {most} expected:\n{}",
        first.join("\n")
    );
}

/// Requests per file of a python loop that creates, stats and unlinks files in a
/// subdirectory, and the directories' getattrs, from the trace.
#[test]
fn a_path_walk_costs_lookups_only_no_getattr_of_the_directories_on_the_way() {
    let Some(m) = mount_with(&MountConfig::default()) else {
        return;
    };
    const FILES: usize = 50;
    let (between, end) = between_markers(&m, &walk_program(FILES));
    let dirs: Vec<String> = between
        .iter()
        .filter(|r| r.op == Op::Getattr)
        .filter(|r| {
            matches!(
                r.path.as_ref().map(|p| p.to_string()).as_deref(),
                Some("/" | "/d")
            )
        })
        .map(|r| r.to_string())
        .collect();
    assert!(
        dirs.is_empty(),
        "getattr of a directory the program did not stat:\n{}",
        dirs.join("\n")
    );
    // The kernel keeps the name d (made by mkdir) and walks through it without asking.
    let walks_of_d: Vec<String> = between
        .iter()
        .filter(|r| r.op == Op::Lookup && r.path.as_ref().is_some_and(|p| p == "/d"))
        .map(|r| r.to_string())
        .collect();
    assert!(walks_of_d.is_empty(), "lookups of d: {walks_of_d:?}");
    // Per file: create = the lookup of the missing name, create, flush, release; stat = the
    // name's lookup (a create does not hand the name out) and a getattr; unlink = the unlink
    // and the forget of the node: 8 (12 when every walk looked up every name).
    assert_per_file(&between, FILES, 8);
    // A stat the program asks for still reaches rawfs: the directory e/f, by its path.
    let stat_f = m.events().after(end).path("/e/f").all();
    assert!(
        stat_f.iter().any(|r| r.op == Op::Getattr),
        "the stat of e/f was not seen: {stat_f:?}"
    );
}

/// With `--cache`, a write through the page cache reaches rawfs as the write alone: the kernel
/// leaves taking setuid, setgid and file capabilities away to rawfs, so it does not first ask
/// for the file's `security.capability` attribute, a request the program never made.
#[test]
fn a_cached_write_costs_the_write_alone_no_getxattr_of_security_capability() {
    let Some(m) = mount_with(&MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    }) else {
        return;
    };
    const WRITES: usize = 100;
    let program = format!(
        r#"
import os
fd = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644)
for i in range({WRITES}):
    os.pwrite(fd, b"x" * 4096, i * 4096)
os.close(fd)
"#
    );
    python(m.path(), &program, &[]);
    let writes = m.events().op(Op::Write).path("/f").all().len();
    assert_eq!(writes, WRITES, "one write request per pwrite");
    // The kernel asks once before it knows the file has no capability; it may ask again
    // after its cached attributes expire (one second), not before every write.
    let asks = m.events().op(Op::Getxattr).all();
    assert!(
        asks.len() <= 3,
        "{} getxattr requests for {WRITES} writes:\n{}",
        asks.len(),
        asks.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A `--cache` mount where the tree guards the names the kernel keeps; `None` (after saying
/// why) where it cannot: before Linux 6.16 `--cache` leaves permission checks to the kernel,
/// which keeps names for a second only.
fn cache_mount_guarded_by_the_tree() -> Option<TempMount> {
    let m = mount_with(&MountConfig {
        cache: CacheMode::Cached,
        ..MountConfig::default()
    })?;
    if !rawfs::fuse::names::kernel_forgets_names() {
        eprintln!("SKIPPED: before Linux 6.16 --cache leaves permission checks to the kernel");
        return None;
    }
    Some(m)
}

/// With `--cache`, a create or an unlink in a subdirectory costs no getattr of the directory:
/// the tree, not the kernel, checks permissions, and names the kernel keeps are guarded by
/// the tree (src/fuse/names.rs; the steps above check that they stay as strict as tmpfs).
#[test]
fn with_cache_a_create_or_unlink_costs_no_getattr_of_its_directory() {
    let Some(m) = cache_mount_guarded_by_the_tree() else {
        return;
    };
    const FILES: usize = 50;
    let (between, _) = between_markers(&m, &walk_program(FILES));
    let getattrs: Vec<String> = between
        .iter()
        .filter(|r| r.op == Op::Getattr)
        .map(|r| r.to_string())
        .collect();
    assert!(
        getattrs.is_empty(),
        "getattr requests the program did not make:\n{}",
        getattrs.join("\n")
    );
    // Per file: create = lookup, create, flush, release; the stat is answered from the
    // cache; unlink = unlink and the forget of the node: 6.
    assert_per_file(&between, FILES, 6);
    for op in [Op::Create, Op::Unlink] {
        let n = between.iter().filter(|r| r.op == op).count();
        assert_eq!(n, FILES, "{op:?} requests");
    }
}

/// With `--cache` too, the kernel keeps a name longer than the second it keeps attributes: a
/// walk through `d` well after its mkdir sends no lookup of `d`, while the stat at its end
/// reaches rawfs, its file's attributes having expired.
#[test]
fn with_cache_a_kept_name_outlives_the_second_attributes_live() {
    let Some(m) = cache_mount_guarded_by_the_tree() else {
        return;
    };
    let program = r#"
import os, time
os.mkdir("d")
open("d/f", "w").close()
os.stat("d/f")
time.sleep(1.5)
os.path.exists("begin")
os.stat("d/f")
os.path.exists("end")
"#;
    let (between, _) = between_markers(&m, program);
    let on = |path: &str| {
        between
            .iter()
            .filter(|r| r.path.as_ref().is_some_and(|p| p == path))
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    assert!(on("/d").is_empty(), "requests on /d: {:?}", on("/d"));
    assert!(
        !on("/d/f").is_empty(),
        "the stat 1.5 s later was answered from attributes that live a second"
    );
}
