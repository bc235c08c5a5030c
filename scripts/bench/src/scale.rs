//! The `scale` subcommand (scripts/scale.sh): metadata cost per file as a directory grows,
//! with the latency of each call.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::mdbench::{Dir, failed, stat_buf};
use crate::mounts::{Mounts, Rawfs};
use crate::rawfs;
use crate::sys::{self, Result, bail, check_signal, fail};

/// The scale run's configuration.
#[derive(Debug)]
pub struct ScaleConfig {
    pub counts: Vec<u64>,
    /// Arguments for `rawfs mount` (with a leading space each, as the target's label shows).
    pub rawfs_args: String,
    pub tmpfs: bool,
}

/// A pass over the files.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Create,
    Stat,
    List,
    Unlink,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Unlink => "unlink",
        }
    }
}

/// The latencies of one pass's calls, in µs.
struct Calls {
    p50: f32,
    p99: f32,
    max: f32,
    /// Index of the slowest call (a pause at the same count every run is the daemon's).
    slowest: usize,
    calls: usize,
}

/// One pass: `create`, `stat` or `unlink` of the files f0000000... in `dir` (each call timed,
/// with the making of its name), or `list`: getdents64 over `dir` with a 32 KiB buffer
/// (what glibc's readdir uses), which must see `count` names besides "." and "..".
fn pass(op: Op, dir: &Path, count: u64) -> Result<(f64, Calls)> {
    let d = Dir::open(dir, "scale")?;
    let mut lat: Vec<f32> = Vec::with_capacity(count as usize);
    let mut worst = 0;
    let mut note = |lat: &mut Vec<f32>, us: f32| {
        if lat.get(worst).is_some_and(|&w| us > w) {
            worst = lat.len();
        }
        lat.push(us);
    };
    let mut sb = stat_buf();
    let t0 = Instant::now();
    let mut t = t0;
    if op == Op::List {
        // 8-byte aligned, for the dirent64 records.
        let mut buf = vec![0u64; 32768 / 8];
        let mut seen = 0u64;
        loop {
            // SAFETY: getdents64 into a buffer of the size given.
            let n = unsafe {
                libc::syscall(libc::SYS_getdents64, d.raw(), buf.as_mut_ptr(), 32768usize)
            };
            let t1 = Instant::now();
            if n < 0 {
                return failed("scale", "getdents64", &sys::cstring(dir)?);
            }
            if (lat.len() as u64) < count {
                note(&mut lat, ((t1 - t).as_secs_f64() * 1e6) as f32);
            }
            t = t1;
            if n == 0 {
                break;
            }
            // SAFETY: the kernel wrote n bytes of records into buf.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            let mut off = 0;
            while off < bytes.len() {
                let reclen = u16::from_ne_bytes([bytes[off + 16], bytes[off + 17]]) as usize;
                let name = &bytes[off + 19..off + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if name != b"." && name != b".." {
                    seen += 1;
                }
                off += reclen.max(1);
            }
        }
        if seen != count {
            return bail(format!(
                "scale: listed {seen} names in {}, expected {count}",
                dir.display()
            ));
        }
    } else {
        for i in 0..count {
            let name = CString::new(format!("f{i:07}")).expect("no NUL in a file name");
            match op {
                Op::Create => d.create(&name)?,
                Op::Stat => d.stat(&name, &mut sb)?,
                _ => d.unlink(&name)?,
            }
            let t1 = Instant::now();
            note(&mut lat, ((t1 - t).as_secs_f64() * 1e6) as f32);
            t = t1;
        }
    }
    let total = (t - t0).as_secs_f64();
    check_signal()?;
    let calls = lat.len();
    lat.sort_by(f32::total_cmp);
    Ok((
        total,
        Calls {
            p50: lat[calls / 2],
            p99: lat[calls * 99 / 100],
            max: lat[calls - 1],
            slowest: worst,
            calls,
        },
    ))
}

/// What the lines of one target read.
struct Probe<'a> {
    pid: Option<u32>,
    hz: u64,
    dir: &'a Path,
}

impl Probe<'_> {
    fn cpu_ticks(&self) -> u64 {
        self.pid
            .and_then(|p| sys::cpu_ticks(p).ok())
            .map_or(0, |(u, s)| u + s)
    }

    /// The daemon's VmRSS in KiB, or "-".
    fn rss(&self) -> String {
        self.pid
            .and_then(|p| sys::vmrss_kib(p).ok())
            .map_or_else(|| "-".into(), |k| k.to_string())
    }

    /// Prints one result line and, for rawfs, the daemon's CPU per file since `c0`.
    fn report(&self, c0: u64, label: &str, n: u64, secs: f64, calls: Option<Calls>) {
        let mut line = format!(
            "  {label:<8} {n:>8} {secs:>9.3} s {:>9.2} us/file",
            secs / n as f64 * 1e6
        );
        if self.pid.is_some() {
            let c = self.cpu_ticks().saturating_sub(c0);
            line += &format!(
                "  daemon cpu {:>6.2} us/file",
                c as f64 / self.hz as f64 / n as f64 * 1e6
            );
        }
        if let Some(c) = calls {
            line += &format!(
                "   call p50 {:>7.1} p99 {:>8.1} max {:>9.1} us (call {} of {})",
                c.p50,
                c.p99,
                c.max,
                c.slowest + 1,
                c.calls
            );
        }
        println!("{line}");
    }

    fn pass(&self, op: Op, n: u64) -> Result<()> {
        let c0 = self.cpu_ticks();
        let (secs, calls) = pass(op, self.dir, n)?;
        self.report(c0, op.name(), n, secs, Some(calls));
        Ok(())
    }

    /// One line for a command timed as a whole.
    fn timed(&self, label: &str, n: u64, cmd: &mut Command) -> Result<String> {
        let c0 = self.cpu_ticks();
        let t0 = Instant::now();
        let out = sys::output(cmd)?;
        let secs = t0.elapsed().as_secs_f64();
        self.report(c0, label, n, secs, None);
        Ok(out)
    }
}

/// SReclaimable + SUnreclaim of /proc/meminfo, in KiB.
fn slab_kib() -> i64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("SReclaimable:") || l.starts_with("SUnreclaim:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        .sum()
}

/// One target (tmpfs, or rawfs when `rawfs_args` is given) with `n` files, mounted on `mnt`.
fn run_one(
    mounts: &mut Mounts,
    rawfs: &Rawfs,
    mnt: &Path,
    rawfs_args: Option<&str>,
    n: u64,
) -> Result<()> {
    let (label, pid) = match rawfs_args {
        None => {
            mounts.tmpfs(mnt, "scale", "size=1G,nr_inodes=0")?;
            ("tmpfs".to_string(), None)
        }
        Some(args) => {
            mounts.rawfs(mnt, args, &[])?;
            (format!("rawfs{args}"), Some(rawfs::status(rawfs, mnt)?.pid))
        }
    };
    println!("{label}, {n} files, load {}", sys::loadavg());
    let dir = mnt.join("d");
    fs::create_dir(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
    let p = Probe {
        pid,
        hz: sys::clock_ticks(),
        dir: &dir,
    };
    let (slab0, rss0) = (slab_kib(), p.rss());
    p.pass(Op::Create, n)?;
    println!(
        "  memory at {n} files: daemon VmRSS {} KiB (empty mount {rss0} KiB), slab {:+} KiB",
        p.rss(),
        slab_kib() - slab0
    );
    p.pass(Op::Stat, n)?;
    p.pass(Op::List, n)?;
    let listed = p.timed(
        "ls-f",
        n,
        Command::new("sh")
            .args(["-c", "ls -f \"$1\" | wc -l", "sh"])
            .arg(&dir),
    )?;
    if listed.trim().parse::<u64>().ok() != Some(n + 2) {
        return bail(format!(
            "scale: ls -f listed {} entries, expected {}",
            listed.trim(),
            n + 2
        ));
    }
    p.timed(
        "ls-U",
        n,
        Command::new("sh")
            .args(["-c", "ls -U \"$1\" >/dev/null", "sh"])
            .arg(&dir),
    )?;
    p.pass(Op::Unlink, n)?;
    println!("  after the unlinks: daemon VmRSS {} KiB", p.rss());
    pass(Op::Create, &dir, n)?;
    p.timed("rm-rf", n, Command::new("rm").arg("-rf").arg(&dir))?;
    mounts.unmount_all();
    Ok(())
}

/// Every count: tmpfs (unless left out), then rawfs.
pub fn run(cfg: &ScaleConfig, rawfs: &Rawfs, mounts: &mut Mounts, mnt: &Path) -> Result<()> {
    for &n in &cfg.counts {
        if cfg.tmpfs {
            run_one(mounts, rawfs, mnt, None, n)?;
        }
        run_one(mounts, rawfs, mnt, Some(&cfg.rawfs_args), n)?;
    }
    Ok(())
}
