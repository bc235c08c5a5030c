//! The mounts of a run: tmpfs, passthrough_ll and rawfs, each recorded as it is made and
//! removed, newest first, by [`Mounts::unmount_all`] or when the [`Mounts`] is dropped, on
//! success, failure, panic or signal alike (falling back to `umount -l`). [`Workspace`]
//! removes the run's temporary directory after that.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sys::{
    self, Result, bail, fail, is_mounted, log, mkdir_p, mount_type, run, run_quiet,
    run_with_timeout, wait_exit,
};

enum Kind {
    Tmpfs,
    /// passthrough_ll, running in the foreground as our child.
    Passthrough(Child),
    Rawfs,
}

struct Mount {
    kind: Kind,
    dir: PathBuf,
}

/// How to run `rawfs`: the binary and the private runtime directory (pid files, control
/// sockets, logs) that every rawfs command of the run gets as RAWFS_RUNTIME_DIR.
#[derive(Clone, Debug)]
pub struct Rawfs {
    pub bin: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Rawfs {
    /// `rawfs ARGS...` with the run's runtime directory.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(&self.bin);
        c.args(args).env("RAWFS_RUNTIME_DIR", &self.runtime_dir);
        c
    }
}

/// The mounts made so far, newest last.
#[derive(Default)]
pub struct Mounts {
    list: Vec<Mount>,
    rawfs: Option<Rawfs>,
}

impl Mounts {
    pub fn new(rawfs: Option<Rawfs>) -> Mounts {
        Mounts {
            list: Vec::new(),
            rawfs,
        }
    }

    /// `mount -t tmpfs -o OPTIONS SOURCE DIR` (DIR made first).
    pub fn tmpfs(&mut self, dir: &Path, source: &str, options: &str) -> Result<()> {
        mkdir_p(dir)?;
        self.list.push(Mount {
            kind: Kind::Tmpfs,
            dir: dir.to_path_buf(),
        });
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, source])
            .arg(dir))
    }

    /// A tmpfs for the benchmark: `size=SIZE,mode=0755`.
    pub fn bench_tmpfs(&mut self, dir: &Path, size: u64) -> Result<()> {
        self.tmpfs(dir, "tmpfs", &format!("size={size},mode=0755"))
    }

    /// passthrough_ll exporting a fresh tmpfs at `src` on `mnt`: `BIN -f -o source=SRC OPTS
    /// MNT`, its output in `log_file`; waits up to 10 s for the mount.
    pub fn passthrough(
        &mut self,
        bin: &Path,
        opts: &str,
        src: &Path,
        mnt: &Path,
        size: u64,
        log_file: &Path,
    ) -> Result<()> {
        self.bench_tmpfs(src, size)?;
        mkdir_p(mnt)?;
        let out = fs::File::create(log_file)
            .map_err(|e| fail(format!("create {}: {e}", log_file.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| fail(format!("{}: {e}", log_file.display())))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg("-o")
            .arg(format!("source={}", src.display()))
            .args(sys::words(opts))
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C stops the run, which then unmounts it in order.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("{}: cannot start: {e}", sys::describe(&cmd))))?;
        self.list.push(Mount {
            kind: Kind::Passthrough(child),
            dir: mnt.to_path_buf(),
        });
        for _ in 0..100 {
            let Some(Mount {
                kind: Kind::Passthrough(child),
                ..
            }) = self.list.last_mut()
            else {
                unreachable!("the passthrough_ll entry was just pushed");
            };
            if let Ok(Some(status)) = child.try_wait() {
                eprint!("{}", fs::read_to_string(log_file).unwrap_or_default());
                return bail(format!("passthrough_ll exited during startup ({status})"));
            }
            if mount_type(mnt).is_some_and(|t| t.starts_with("fuse")) {
                return Ok(());
            }
            sys::sleep(Duration::from_millis(100))?;
        }
        bail(format!(
            "passthrough_ll did not mount {} within 10 s",
            mnt.display()
        ))
    }

    /// `rawfs mount MNT --daemon ARGS EXTRA...` (MNT made first).
    pub fn rawfs(&mut self, mnt: &Path, args: &str, extra: &[&OsStr]) -> Result<()> {
        let Some(rawfs) = &self.rawfs else {
            return bail("no rawfs binary for a rawfs mount");
        };
        mkdir_p(mnt)?;
        let mut cmd = rawfs.command([OsStr::new("mount"), mnt.as_os_str(), OsStr::new("--daemon")]);
        cmd.args(sys::words(args)).args(extra);
        self.list.push(Mount {
            kind: Kind::Rawfs,
            dir: mnt.to_path_buf(),
        });
        run(&mut cmd)?;
        if !is_mounted(mnt) {
            return bail(format!(
                "rawfs mount returned but {} is not a mount point",
                mnt.display()
            ));
        }
        Ok(())
    }

    /// Removes every mount, newest first.
    pub fn unmount_all(&mut self) {
        while let Some(m) = self.list.pop() {
            self.unmount(m);
        }
    }

    fn unmount(&self, m: Mount) {
        let Mount { kind, dir } = m;
        let mut child = None;
        match kind {
            Kind::Rawfs => {
                if let Some(rawfs) = self.rawfs.as_ref().filter(|_| is_mounted(&dir)) {
                    let mut cmd = rawfs.command([OsStr::new("umount"), dir.as_os_str()]);
                    if !run_with_timeout(&mut cmd, Duration::from_secs(30)) {
                        log(format!("{} failed", sys::describe(&cmd)));
                    }
                }
            }
            Kind::Passthrough(mut c) => {
                if is_mounted(&dir) && !run_quiet(Command::new("fusermount3").arg("-u").arg(&dir)) {
                    run_quiet(Command::new("umount").arg(&dir));
                }
                if !wait_exit(&mut c, Duration::from_secs(5)) {
                    sys::terminate(&mut c);
                }
                child = Some(c);
            }
            Kind::Tmpfs => {
                if is_mounted(&dir) {
                    run_quiet(Command::new("umount").arg(&dir));
                }
            }
        }
        // Still mounted (busy, dead daemon, ...): detach it lazily.
        if is_mounted(&dir) {
            log(format!("lazy unmount of {}", dir.display()));
            run_quiet(Command::new("umount").arg("-l").arg(&dir));
        }
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// The run's temporary directory (mount points and rawfs's runtime directory `run/`).
/// Dropped after the mounts: keeps the rawfs daemon logs of a failed run in `logs_dir`,
/// removes `run/` and the empty mount points, and then the directory itself.
pub struct Workspace {
    pub dir: PathBuf,
    logs_dir: PathBuf,
    /// Set once the run succeeded.
    pub ok: bool,
}

impl Workspace {
    /// `mktemp -d /tmp/rawfs-bench.XXXXXX` with a private `run/` in it.
    pub fn create(logs_dir: PathBuf) -> Result<Workspace> {
        let mut template = *b"/tmp/rawfs-bench.XXXXXX\0";
        // SAFETY: mkdtemp rewrites the NUL-terminated template in place.
        let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if p.is_null() {
            return bail(format!(
                "mktemp -d /tmp/rawfs-bench.XXXXXX: {}",
                std::io::Error::last_os_error()
            ));
        }
        let dir =
            PathBuf::from(std::str::from_utf8(&template[..template.len() - 1]).expect("ASCII"));
        let ws = Workspace {
            dir,
            logs_dir,
            ok: false,
        };
        let run_dir = ws.runtime_dir();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .map_err(|e| fail(format!("mkdir {}: {e}", run_dir.display())))?;
        Ok(ws)
    }

    /// rawfs's runtime directory for this run.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let run_dir = self.runtime_dir();
        if run_dir.is_dir() {
            let logs: Vec<PathBuf> = fs::read_dir(&run_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            if !self.ok && !logs.is_empty() && fs::create_dir_all(&self.logs_dir).is_ok() {
                let copied = logs.iter().all(|l| {
                    fs::copy(l, self.logs_dir.join(l.file_name().unwrap_or_default())).is_ok()
                });
                if copied {
                    log(format!(
                        "rawfs daemon logs copied to {}/",
                        self.logs_dir.display()
                    ));
                }
            }
            let _ = fs::remove_dir_all(&run_dir);
        }
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !is_mounted(&p) {
                let _ = fs::remove_dir(&p);
            }
        }
        if fs::remove_dir(&self.dir).is_err() {
            log(format!("left {} behind (not empty)", self.dir.display()));
        }
    }
}
