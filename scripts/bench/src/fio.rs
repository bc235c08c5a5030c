//! The fio runs: psync, one job, queue depth 1, time based, terse output version 3.

use std::path::Path;
use std::process::Command;

use crate::sys::{self, Result, bail};

/// What one fio run gave.
#[derive(Clone, Copy, Debug)]
pub struct FioResult {
    pub iops: f64,
    pub bw_kib_per_s: f64,
}

/// `fio` with `rw` (read, write, randread, randwrite), block size `bs` on `file` of
/// `size_mib`, for `runtime` seconds.
pub fn run(rw: &str, bs: &str, size_mib: u64, file: &Path, runtime: u64) -> Result<FioResult> {
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name=bench-{rw}"))
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--size={size_mib}m"))
        .args([
            "--ioengine=psync",
            "--numjobs=1",
            "--iodepth=1",
            "--time_based",
        ])
        .arg(format!("--runtime={runtime}"))
        .args([
            "--fallocate=none",
            "--end_fsync=0",
            "--output-format=terse",
            "--terse-version=3",
        ]);
    let out = sys::output(&mut cmd)?;
    let write = matches!(rw, "write" | "randwrite");
    parse_terse(&out, write).map_or_else(
        || {
            bail(format!(
                "fio {rw}: no terse output from {}",
                sys::describe(&cmd)
            ))
        },
        Ok,
    )
}

/// The IOPS and bandwidth of the first terse v3 line: fields 8 and 7 (1-based) for reads,
/// 49 and 48 for writes.
fn parse_terse(out: &str, write: bool) -> Option<FioResult> {
    let line = out.lines().find(|l| l.starts_with("3;"))?;
    let f: Vec<&str> = line.split(';').collect();
    let (bw, iops) = if write { (47, 48) } else { (6, 7) };
    Some(FioResult {
        iops: f.get(iops)?.parse().ok()?,
        bw_kib_per_s: f.get(bw)?.parse().ok()?,
    })
}

/// Lays out the randread file ahead (fio's create_only), as the timed run would.
pub fn layout_randread(file: &Path, size_mib: u64) -> Result<()> {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=bench-layout")
        .arg(format!("--filename={}", file.display()))
        .args(["--rw=randread", "--bs=4k"])
        .arg(format!("--size={size_mib}m"))
        .args(["--ioengine=psync", "--fallocate=none", "--create_only=1"]);
    sys::output(&mut cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_fields() {
        let mut f: Vec<String> = (1..=130).map(|i| i.to_string()).collect();
        f[0] = "3".into();
        let line = f.join(";");
        let out = format!("fio-3.33\n{line}\n");
        let r = parse_terse(&out, false).unwrap();
        assert_eq!((r.bw_kib_per_s, r.iops), (7.0, 8.0));
        let w = parse_terse(&out, true).unwrap();
        assert_eq!((w.bw_kib_per_s, w.iops), (48.0, 49.0));
        assert!(parse_terse("nothing", true).is_none());
    }
}
