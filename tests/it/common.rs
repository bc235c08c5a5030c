//! Helpers shared by the integration tests: mounting with a skip rule, running programs,
//! and reading errnos.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use rawfs::{MountConfig, TempMount};

/// Why mounted tests cannot run here, or `None` if they can.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !root && !fusermount {
        return Some("not root and fusermount3 is not installed".into());
    }
    None
}

/// True when skipping a mounted test must fail instead (CI=true).
pub fn must_run() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True if FUSE is usable here; otherwise prints why the test is skipped and returns false,
/// except under CI=true, where it fails the test.
pub fn fuse_or_skip() -> bool {
    match fuse_unavailable() {
        None => true,
        Some(why) => {
            assert!(!must_run(), "CI=true but FUSE is unavailable: {why}");
            eprintln!("SKIPPED: FUSE is unavailable: {why}");
            false
        }
    }
}

/// Returns from the calling test when FUSE is unavailable (see [`fuse_or_skip`]).
#[macro_export]
macro_rules! fuse_or_skip {
    () => {
        if !$crate::common::fuse_or_skip() {
            return;
        }
    };
}

/// True if this process may switch users (root); otherwise prints why the test is skipped,
/// or fails under CI=true.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!must_run(), "CI=true but not root: the test switches users");
    eprintln!("SKIPPED: not root, and the test switches users");
    false
}

/// Mounts rawfs with `config` on a fresh temp dir, or returns `None` after printing why the
/// test is skipped. Under CI=true, not being able to mount fails the test.
pub fn mount_with(config: &MountConfig) -> Option<TempMount> {
    if !fuse_or_skip() {
        return None;
    }
    match TempMount::with_config(config) {
        Ok(m) => Some(m),
        Err(e) => panic!("mount failed: {e}"),
    }
}

/// Mounts rawfs with the default configuration (see [`mount_with`]).
pub fn mount() -> Option<TempMount> {
    mount_with(&MountConfig::default())
}

/// Mounts or returns from the calling test (after printing why).
#[macro_export]
macro_rules! mount_or_skip {
    () => {
        match $crate::common::mount() {
            Some(m) => m,
            None => return,
        }
    };
    ($config:expr) => {
        match $crate::common::mount_with(&$config) {
            Some(m) => m,
            None => return,
        }
    };
}

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno of an `io::Error` (0 if it has none).
pub fn code(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Runs a shell command in `dir`, asserting it succeeds; returns its output.
pub fn sh(dir: &Path, script: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "sh -c {script:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a python3 program in `dir` with argv[1..] = `args`, asserting it succeeds.
pub fn python(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The path to the `rawfs` binary under test.
pub fn rawfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rawfs")
}

/// A C string from a path.
pub fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// A path as a &str, for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Bytes of program output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A runtime directory of its own (sockets, logs), so that parallel tests driving the
/// `rawfs` binary never meet, and `rawfs` run with it.
pub struct Runtime(pub TempDir);

impl Runtime {
    /// A fresh runtime directory.
    pub fn new() -> Runtime {
        Runtime(tempfile::tempdir().expect("runtime dir"))
    }

    /// `rawfs ARGS` from `/`, with this runtime directory and no input.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rawfs_bin());
        c.args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .env("RAWFS_RUNTIME_DIR", self.0.path())
            .env_remove("RUST_LOG");
        c
    }

    /// Runs `rawfs ARGS`; returns its output.
    pub fn rawfs(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run rawfs")
    }

    /// Like [`Runtime::rawfs`], asserting that it exits 0.
    pub fn rawfs_ok(&self, args: &[&str]) -> Output {
        let out = self.rawfs(args);
        assert!(
            out.status.success(),
            "rawfs {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }
}

/// A `rawfs mount --daemon` with its own runtime directory; unmounted when dropped, with
/// `rawfs umount --lazy` and then, if that left it mounted, `umount -l`.
pub struct Daemon {
    /// The runtime directory the daemon and the CLI use.
    pub rt: Runtime,
    mp: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    /// Mounts on a fresh directory with extra `rawfs mount` options.
    pub fn start(opts: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("mount point");
        let mp = dir.path().canonicalize().expect("canonical mount point");
        Daemon::start_at(dir, mp, opts)
    }

    /// Mounts on `mp`, an empty directory inside `dir` (removed when dropped).
    pub fn start_at(dir: TempDir, mp: PathBuf, opts: &[&str]) -> Daemon {
        let d = Daemon {
            rt: Runtime::new(),
            mp,
            _dir: dir,
        };
        let mut args = vec!["mount", "--daemon"];
        args.extend_from_slice(opts);
        args.push(d.mp());
        d.rt.rawfs_ok(&args);
        d
    }

    /// The mount point.
    pub fn mp(&self) -> &str {
        s(&self.mp)
    }

    /// A path inside the mount.
    pub fn join(&self, rel: &str) -> String {
        format!("{}/{rel}", self.mp())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.rt.rawfs(&["umount", "--lazy", self.mp()]);
        if rawfs::mount::is_rawfs_mount(&self.mp) || rawfs::mount::is_stale(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}
