//! mdbench: the metadata workload, the stat loop of the trace memory measurement, and the
//! calls on a directory descriptor that they and `scale` share.
//!
//! Per round: create COUNT files in a directory (`openat(O_CREAT|O_EXCL|O_WRONLY|O_CLOEXEC,
//! 0644)` + `close`), `fstatat` each, `unlinkat` each, all on a descriptor of the directory
//! and with the names (`f00000000`, ...) made beforehand; each phase is timed as a whole with
//! CLOCK_MONOTONIC (`Instant`). The result is the median ops/s of each phase over the rounds.
//! Any failing call stops the run with an error naming the call and the file.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Instant;

use crate::stats::median_f64;
use crate::sys::{Result, bail, check_signal, cstring, fail};

/// A directory open for the `*at` calls; `prog` names the program part in errors.
pub struct Dir {
    fd: OwnedFd,
    prog: &'static str,
}

impl Dir {
    /// `open(dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC)`.
    pub fn open(dir: &Path, prog: &'static str) -> Result<Dir> {
        let path = cstring(dir)?;
        // SAFETY: open(2) with a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return failed(prog, "open", &path);
        }
        Ok(Dir {
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            prog,
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `openat(O_CREAT|O_EXCL|O_WRONLY|O_CLOEXEC, 0644)` + `close`.
    #[inline]
    pub fn create(&self, name: &CStr) -> Result<()> {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC;
        // SAFETY: openat on a directory descriptor and a NUL-terminated name.
        let fd = unsafe { libc::openat(self.raw(), name.as_ptr(), flags, 0o644) };
        if fd < 0 {
            return failed(self.prog, "create", name);
        }
        // SAFETY: fd was just opened here.
        if unsafe { libc::close(fd) } != 0 {
            return failed(self.prog, "close", name);
        }
        Ok(())
    }

    /// `fstatat(name, 0)`.
    #[inline]
    pub fn stat(&self, name: &CStr, sb: &mut libc::stat) -> Result<()> {
        // SAFETY: fstatat with a NUL-terminated name and a valid buffer.
        if unsafe { libc::fstatat(self.raw(), name.as_ptr(), sb, 0) } != 0 {
            return failed(self.prog, "stat", name);
        }
        Ok(())
    }

    /// `unlinkat(name, 0)`.
    #[inline]
    pub fn unlink(&self, name: &CStr) -> Result<()> {
        // SAFETY: unlinkat with a NUL-terminated name.
        if unsafe { libc::unlinkat(self.raw(), name.as_ptr(), 0) } != 0 {
            return failed(self.prog, "unlink", name);
        }
        Ok(())
    }
}

/// A zeroed stat buffer.
pub fn stat_buf() -> libc::stat {
    // SAFETY: struct stat is plain data.
    unsafe { std::mem::zeroed() }
}

/// Median ops/s of each phase.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub create: f64,
    pub stat: f64,
    pub unlink: f64,
}

/// The error of a failed call (errno), naming the program part, the call and the file.
pub fn failed<T>(prog: &str, what: &str, name: &CStr) -> Result<T> {
    let e = io::Error::last_os_error();
    bail(format!("{prog}: {what} {}: {e}", name.to_string_lossy()))
}

/// Runs `rounds` rounds over `count` files in `dir`.
pub fn run(dir: &Path, count: u64, rounds: u64) -> Result<Rates> {
    let d = Dir::open(dir, "mdbench")?;
    let names: Vec<CString> = (0..count)
        .map(|i| CString::new(format!("f{i:08}")).expect("no NUL in a file name"))
        .collect();
    let (mut cr, mut st, mut ul) = (Vec::new(), Vec::new(), Vec::new());
    let n = count as f64;
    let mut sb = stat_buf();
    for _ in 0..rounds {
        let t0 = Instant::now();
        for name in &names {
            d.create(name)?;
        }
        let t1 = Instant::now();
        for name in &names {
            d.stat(name, &mut sb)?;
        }
        let t2 = Instant::now();
        for name in &names {
            d.unlink(name)?;
        }
        let t3 = Instant::now();
        cr.push(n / (t1 - t0).as_secs_f64());
        st.push(n / (t2 - t1).as_secs_f64());
        ul.push(n / (t3 - t2).as_secs_f64());
        check_signal()?;
    }
    Ok(Rates {
        create: median_f64(&mut cr),
        stat: median_f64(&mut st),
        unlink: median_f64(&mut ul),
    })
}

/// stat(2)s `file` `count` times; returns the elapsed seconds.
pub fn stat_loop(file: &Path, count: u64) -> Result<f64> {
    let path = cstring(file)?;
    let mut sb = stat_buf();
    let t0 = Instant::now();
    for _ in 0..count {
        // SAFETY: stat(2) with a NUL-terminated path and a valid buffer.
        if unsafe { libc::stat(path.as_ptr(), &mut sb) } != 0 {
            return failed("statloop", "stat", &path);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    check_signal()?;
    Ok(secs)
}

/// Creates an empty file (`: >FILE`).
pub fn touch(file: &Path) -> Result<()> {
    File::create(file)
        .map(drop)
        .map_err(|e| fail(format!("create {}: {e}", file.display())))
}
