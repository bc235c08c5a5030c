//! Where a running mount's daemon leaves its pid and log, so that the CLI finds the daemon
//! from the mount point alone.
//!
//! The directory is `$RAWFS_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/rawfs`, else `/run/rawfs`
//! for root and `/tmp/rawfs-UID` for other users. Each mount has files named after its
//! absolute mount point with `/` written as `%2F` (and `%` as `%25`); a name longer than 64
//! bytes is replaced by `hash-` and the FNV-1a 64-bit hash of the path in 16 hex digits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The runtime directory, created owner-only if missing.
pub fn runtime_dir() -> io::Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("RAWFS_RUNTIME_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(d).join("rawfs")
    } else {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        if uid == 0 {
            PathBuf::from("/run/rawfs")
        } else {
            PathBuf::from(format!("/tmp/rawfs-{uid}"))
        }
    };
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    check_private(&dir)?;
    Ok(dir)
}

/// Refuses a runtime directory another user could put files in: whoever can write there can
/// plant a symlink where rawfs writes its log or pid, or a socket that impersonates a daemon.
/// It must be owned by this user (or root) and not writable by group or others.
fn check_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "runtime directory {} {why}; rawfs keeps its sockets, pids and logs only in a \
                 directory of its own user that others cannot write: set RAWFS_RUNTIME_DIR to \
                 one (mode 0700)",
                dir.display()
            ),
        ))
    };
    if m.uid() != me && m.uid() != 0 {
        return refuse(format!(
            "is owned by uid {}, not by this user ({me})",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return refuse(format!(
            "is writable by {} (mode {:o})",
            if m.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Opens a file of the runtime directory for writing without following a symlink there.
fn open_private(path: &Path, append: bool) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::ELOOP) {
                " (a symlink: rawfs does not follow symlinks in its runtime directory)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("{}: {e}{why}", path.display()))
        })
}

/// Longest escaped mount point used as a file name; longer ones are hashed.
const MAX_NAME: usize = 64;

/// FNV-1a, 64 bits: a stable, documented hash other languages can compute too.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The files one mount's daemon keeps in the runtime directory.
#[derive(Debug, Clone)]
pub struct Entry {
    base: PathBuf,
}

impl Entry {
    /// The entry for `mountpoint` (made absolute; the path need not exist any more).
    pub fn for_mountpoint(mountpoint: &Path) -> io::Result<Entry> {
        let abs = absolute(mountpoint)?;
        let escaped = abs
            .to_string_lossy()
            .replace('%', "%25")
            .replace('/', "%2F");
        // A Unix socket path holds at most 107 bytes: long names are replaced by a hash.
        let name = if escaped.len() > MAX_NAME {
            format!("hash-{:016x}", fnv1a(abs.as_os_str().as_encoded_bytes()))
        } else {
            escaped
        };
        Ok(Entry {
            base: runtime_dir()?.join(name),
        })
    }

    /// File holding the daemon's pid.
    pub fn pid_file(&self) -> PathBuf {
        self.with_suffix(".pid")
    }

    /// Control socket of the daemon (see `control`).
    pub fn socket_file(&self) -> PathBuf {
        self.with_suffix(".sock")
    }

    /// Log file of a daemon started with `--daemon`.
    pub fn log_file(&self) -> PathBuf {
        self.with_suffix(".log")
    }

    /// The base name plus `suffix`. Not `with_extension`, which would cut a mount point such
    /// as `/mnt/data.1` at its dot and give `/mnt/data.2` the same files.
    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut name = self.base.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// File locked while a mount on this mount point is being set up.
    pub fn lock_file(&self) -> PathBuf {
        self.with_suffix(".lock")
    }

    /// Opens the log file for appending (a symlink there is refused).
    pub fn open_log(&self) -> io::Result<fs::File> {
        open_private(&self.log_file(), true)
    }

    /// Records the daemon's pid: in a new file (`O_EXCL`, never through a symlink), renamed
    /// over the old one so that a reader sees the old pid or the new one, never half.
    pub fn write_pid(&self, pid: u32) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.with_suffix(&format!(".pid.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(format!("{pid}\n").as_bytes())?;
        fs::rename(&tmp, self.pid_file())
    }

    /// The recorded pid, if any and if that process is still alive.
    pub fn live_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Forgets the daemon (its log stays, for post-mortems).
    pub fn remove(&self) {
        let _ = fs::remove_file(self.pid_file());
    }
}

/// Takes the set-up lock of the mount point `mountpoint`, waiting for another mount being set
/// up there: of two mounts started at once on one directory, the second then sees the first
/// and is refused instead of stacking on it. `None` if the runtime directory is unusable (the
/// checks before mounting still run, without the lock).
pub fn lock_mountpoint(mountpoint: &Path) -> Option<SetupLock> {
    use std::os::fd::AsRawFd;
    // The same directory through a symlink or with a trailing slash takes the same lock.
    let canonical = mountpoint.canonicalize().ok()?;
    let path = Entry::for_mountpoint(&canonical).ok()?.lock_file();
    let file = open_private(&path, false).ok()?;
    // SAFETY: the descriptor is valid for the life of `file`.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0)
        .then_some(SetupLock { path, _file: file })
}

/// A held set-up lock; released, and its file removed, when dropped.
#[derive(Debug)]
pub struct SetupLock {
    path: PathBuf,
    _file: fs::File,
}

impl Drop for SetupLock {
    fn drop(&mut self) {
        // Removed before the lock is let go: a set-up waiting on this file then finds the
        // mount in place, and one arriving later makes a new file and finds it too.
        let _ = fs::remove_file(&self.path);
    }
}

/// True if a process with this pid exists and is running.
///
/// A zombie (exited, not yet reaped by its parent: a daemon's parent exits at once, and some
/// containers' init never reaps) counts as gone.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let exists = r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // The state follows the command name in parentheses, which may itself contain ") ".
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    });
    exists && !zombie
}

/// `path` made absolute without touching it (a stale mount point cannot be canonicalized).
pub fn absolute(path: &Path) -> io::Result<PathBuf> {
    let p = std::path::absolute(path)?;
    // Resolve symlinks in the parent, which is an ordinary directory.
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => Ok(parent.join(name)),
            Err(_) => Ok(p),
        },
        _ => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mount_points_get_short_names_that_fit_a_socket_path() {
        let deep = PathBuf::from(format!("/tmp/{}", "deep/".repeat(40)));
        let e = Entry::for_mountpoint(&deep).unwrap();
        let name = e
            .socket_file()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("hash-") && name.len() == "hash-".len() + 16 + 5,
            "{name}"
        );
        let short = Entry::for_mountpoint(Path::new("/mnt/raw")).unwrap();
        assert!(short.socket_file().ends_with("%2Fmnt%2Fraw.sock"));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
