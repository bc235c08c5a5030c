#![doc = include_str!("about.md")]
//!
//! Modules: [`args`] (command line), [`setup`] (packages, passthrough_ll, rawfs),
//! [`mounts`] (mounts removed on drop, the temporary directory), [`mdbench`] (the metadata
//! workload), [`fio`], [`bench`] (phases and interleaved rounds), [`rawfs`] (status, pid,
//! CPU time), [`stats`], [`results`], [`report`] (tables and results.json), [`scale`] (the
//! `scale` subcommand, scripts/scale.sh), [`sys`].

mod args;
mod bench;
mod fio;
mod mdbench;
mod mounts;
mod rawfs;
mod report;
mod results;
mod scale;
mod setup;
mod stats;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::bench::Bench;
use crate::mounts::{Mounts, Rawfs, Workspace};
use crate::sys::{Error, Result, fail, log};

/// The repository root: scripts/bench/../..
fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

fn main() -> ExitCode {
    let what = match args::parse() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("bench.sh: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    sys::catch_signals();
    // The guards live here, so that an error is logged before they clean up: the mounts
    // (inside the bench, or `mounts`) go first, then the temporary directory.
    let mut ws = None;
    let mut bench = None;
    let mut mounts = None;
    let result = match &what {
        args::Run::Bench(cfg) => run(cfg, &mut ws, &mut bench),
        args::Run::Scale(cfg) => run_scale(cfg, &mut ws, &mut mounts),
    };
    if let Err(Error::Failed(m) | Error::Usage(m)) = &result {
        log(format!("error: {m}"));
    }
    drop(bench);
    drop(mounts);
    if let Some(ws) = &mut ws {
        ws.ok = result.is_ok();
    }
    drop(ws);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            log(format!("aborted (exit {code}); mounts cleaned up"));
            ExitCode::from(code as u8)
        }
    }
}

/// The `scale` subcommand; `ws` and `mounts` receive the guards it makes.
fn run_scale(
    cfg: &scale::ScaleConfig,
    ws: &mut Option<Workspace>,
    mounts: &mut Option<Mounts>,
) -> Result<()> {
    if !sys::is_root() {
        return Err(fail("run as root (it mounts file systems)"));
    }
    let root = repo_root();
    let ws = ws.insert(Workspace::create(root.join("target/bench/rawfs-logs"))?);
    let rawfs = Rawfs {
        bin: setup::rawfs_binary(&root)?,
        runtime_dir: ws.runtime_dir(),
    };
    let mounts = mounts.insert(Mounts::new(Some(rawfs.clone())));
    scale::run(cfg, &rawfs, mounts, &ws.dir.join("mnt"))
}

/// The run, from the checks to results.json; `ws` and `bench` receive the guards it makes.
fn run<'a>(
    cfg: &'a args::Config,
    ws: &mut Option<Workspace>,
    bench: &mut Option<Bench<'a>>,
) -> Result<()> {
    let start = sys::epoch_secs();
    if !sys::is_root() {
        return Err(fail(
            "must run as root (it mounts tmpfs and FUSE file systems)",
        ));
    }
    if (cfg.passthrough || cfg.rawfs()) && !setup::have_dev_fuse() {
        return Err(fail("/dev/fuse is missing"));
    }
    setup::ensure_packages()?;
    let root = repo_root();
    let out_dir = root.join("target/bench");
    sys::mkdir_p(&out_dir)?;
    let results_json = out_dir.join("results.json");

    let ws = ws.insert(Workspace::create(out_dir.join("rawfs-logs"))?);
    let _halt_poll = cfg.halt_poll_ns.map(sys::HaltPoll::set).transpose()?;
    let cpuidle = sys::cpuidle();
    let load_start = sys::loadavg();

    let pt_bin = if cfg.passthrough {
        setup::build_passthrough(&out_dir)?
    } else {
        out_dir.join("passthrough_ll")
    };
    let rawfs = if cfg.rawfs() {
        Some(Rawfs {
            bin: setup::rawfs_binary(&root)?,
            runtime_dir: ws.runtime_dir(),
        })
    } else {
        None
    };
    // passthrough_ll keeps one O_PATH descriptor per inode the kernel knows of, so the
    // metadata workload needs at least NFILES descriptors; raise the limit.
    if cfg.passthrough {
        let limit = sys::raise_nofile(cfg.nfiles + 4096);
        if limit <= cfg.nfiles + 64 {
            return Err(fail(format!(
                "open file limit {limit} too low for --files {}",
                cfg.nfiles
            )));
        }
    }

    let rawfs_binary = rawfs.as_ref().map(|r| r.bin.display().to_string());
    let bench = bench.insert(Bench::new(
        cfg,
        ws.dir.clone(),
        out_dir.clone(),
        rawfs,
        pt_bin,
    ));
    bench.run()?;
    let info = report::Info {
        date_utc: sys::utc_timestamp(),
        elapsed_s: sys::epoch_secs() - start,
        load_start,
        load_end: sys::loadavg(),
        kernel: sys::kernel_release(),
        cpu: sys::cpu_model(),
        ncpu: sys::ncpu(),
        fio: setup::fio_version()?,
        libfuse: setup::libfuse_version(),
        clock_ticks: sys::clock_ticks(),
        cpuidle,
        results_json: results_json.clone(),
    };
    print!("{}", report::text(bench, &info));
    let json = report::json(bench, &info, rawfs_binary);
    std::fs::write(&results_json, json)
        .map_err(|e| fail(format!("write {}: {e}", results_json.display())))
}
