//! The phases of a run: tmpfs and passthrough_ll alone, the interleaved rounds of the rawfs
//! variants (with passthrough_ll), and the trace memory measurement.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::args::{Config, Variant};
use crate::fio;
use crate::mdbench;
use crate::mounts::{Mounts, Rawfs};
use crate::rawfs::{self, CpuSample, RULE_OPS};
use crate::results::{AfterRun, Metric, Results, Target, TraceMem, TraceMemSide};
use crate::stats::{Fixed, median};
use crate::sys::{Result, bail, fail, log, rm_f, vmrss_kib};

/// The trace-mem mount's capacity, its timed stats and its warm-up stats.
pub const TM_CAPACITY: u64 = 200_000;
pub const TM_STATS: u64 = 70_000;
pub const TM_WARMUP: u64 = 1000;

/// The run: its configuration, where things are, its mounts and what it measured.
pub struct Bench<'a> {
    pub cfg: &'a Config,
    /// The run's temporary directory (mount points).
    work: PathBuf,
    /// target/bench.
    out_dir: PathBuf,
    pub rawfs: Option<Rawfs>,
    /// passthrough_ll's binary.
    pt_bin: PathBuf,
    mounts: Mounts,
    pub res: Results,
}

impl Bench<'_> {
    pub fn new(
        cfg: &Config,
        work: PathBuf,
        out_dir: PathBuf,
        rawfs: Option<Rawfs>,
        pt_bin: PathBuf,
    ) -> Bench<'_> {
        Bench {
            cfg,
            work,
            out_dir,
            mounts: Mounts::new(rawfs.clone()),
            rawfs,
            pt_bin,
            res: Results::default(),
        }
    }

    /// target/bench/rules-100.json.
    pub fn rules_file(&self) -> PathBuf {
        self.out_dir.join("rules-100.json")
    }

    /// What a variant adds to `rawfs mount MNT --daemon ARGS`.
    pub fn variant_args(&self, v: Variant) -> Vec<String> {
        match v {
            Variant::Rawfs => vec![],
            Variant::NoTrace => vec!["--trace-capacity".into(), "0".into()],
            Variant::Rules100 => vec!["--faults".into(), self.rules_file().display().to_string()],
        }
    }

    /// How the report describes a variant.
    pub fn variant_desc(v: Variant) -> String {
        match v {
            Variant::Rawfs => "recording on (default capacity)".into(),
            Variant::NoTrace => "recording off".into(),
            Variant::Rules100 => format!(
                "recording on, 100 rules: ops [{}], path /bench-no-such-dir-NNN/*, action errno EIO (never fire)",
                RULE_OPS.join(", ")
            ),
        }
    }

    fn rawfs(&self) -> Result<&Rawfs> {
        self.rawfs.as_ref().ok_or_else(|| fail("no rawfs binary"))
    }

    /// Where a target is mounted.
    fn dir(&self, t: Target) -> PathBuf {
        match t {
            Target::Passthrough => self.work.join("pt"),
            t => self.work.join(t.name()),
        }
    }

    // ---- mounts ------------------------------------------------------------------------

    fn mount_tmpfs(&mut self) -> Result<()> {
        let dir = self.dir(Target::Tmpfs);
        self.mounts.bench_tmpfs(&dir, self.cfg.fs_size_bytes)
    }

    fn start_passthrough(&mut self) -> Result<()> {
        let (src, mnt) = (self.work.join("pt-src"), self.dir(Target::Passthrough));
        let log_file = self.out_dir.join("passthrough_ll.log");
        self.mounts.passthrough(
            &self.pt_bin,
            &self.cfg.pt_opts,
            &src,
            &mnt,
            self.cfg.fs_size_bytes,
            &log_file,
        )
    }

    fn mount_variant(&mut self, v: Variant) -> Result<()> {
        let mnt = self.dir(Target::Rawfs(v));
        let extra = self.variant_args(v);
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        self.mounts.rawfs(&mnt, &self.cfg.rawfs_args_eff, &extra)
    }

    // ---- workloads ---------------------------------------------------------------------

    /// One metadata pass of `files` files and `rounds` rounds in DIR/md.
    fn run_md(
        &self,
        t: Target,
        dir: &Path,
        files: u64,
        rounds: u64,
    ) -> Result<[(Metric, Fixed); 3]> {
        let md = dir.join("md");
        fs::create_dir(&md).map_err(|e| fail(format!("mkdir {}: {e}", md.display())))?;
        let r = mdbench::run(&md, files, rounds).map_err(|e| match e {
            crate::sys::Error::Failed(m) => fail(format!("mdbench failed on {}: {m}", t.name())),
            e => e,
        })?;
        fs::remove_dir(&md).map_err(|e| fail(format!("rmdir {}: {e}", md.display())))?;
        Ok([
            (Metric::Create, Fixed::new(r.create, 1)),
            (Metric::Stat, Fixed::new(r.stat, 1)),
            (Metric::Unlink, Fixed::new(r.unlink, 1)),
        ])
    }

    /// A 4k randread or randwrite run on the laid-out randread file: IOPS.
    fn run_rand(&self, m: Metric, dir: &Path) -> Result<Fixed> {
        let rw = if m == Metric::RandRead {
            "randread"
        } else {
            "randwrite"
        };
        let r = fio::run(
            rw,
            "4k",
            self.cfg.rr_size_mib,
            &dir.join("randread.dat"),
            self.cfg.runtime,
        )?;
        Ok(Fixed::new(r.iops, 0))
    }

    /// The 1M seq write and read runs; the file is removed afterwards.
    fn bench_seq(&mut self, t: Target) -> Result<(Fixed, Fixed)> {
        let (dir, size, rt) = (self.dir(t), self.cfg.seq_size_mib, self.cfg.runtime);
        let file = dir.join("seq.dat");
        let mut mb = [Fixed::int(0); 2];
        for (i, (rw, m)) in [("write", Metric::SeqWrite), ("read", Metric::SeqRead)]
            .into_iter()
            .enumerate()
        {
            log(format!("{}: 1M seq {rw} on {size} MiB ({rt} s)", t.name()));
            let r = fio::run(rw, "1m", size, &file, rt)?;
            mb[i] = Fixed::new(r.bw_kib_per_s * 1024.0 / 1e6, 1);
            self.res.set(t, m, mb[i]);
        }
        rm_f(&file)?;
        Ok((mb[0], mb[1]))
    }

    /// All the workloads on one target mounted alone.
    fn bench_dir(&mut self, t: Target) -> Result<()> {
        let (dir, cfg) = (self.dir(t), self.cfg);
        log(format!(
            "{}: metadata ({} files x {} round(s))",
            t.name(),
            cfg.nfiles,
            cfg.md_rounds
        ));
        for (m, v) in self.run_md(t, &dir, cfg.nfiles, cfg.md_rounds)? {
            self.res.set(t, m, v);
        }
        for m in [Metric::RandRead, Metric::RandWrite] {
            log(format!(
                "{}: {} on {} MiB ({} s)",
                t.name(),
                m.label(),
                cfg.rr_size_mib,
                cfg.runtime
            ));
            let v = self.run_rand(m, &dir)?;
            self.res.set(t, m, v);
        }
        rm_f(&dir.join("randread.dat"))?;
        self.bench_seq(t).map(drop)
    }

    // ---- phases ------------------------------------------------------------------------

    /// Runs a phase, recording its duration under `name`.
    fn phase(&mut self, name: &'static str, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let t0 = Instant::now();
        f(self)?;
        self.res
            .phases
            .push((name, Fixed::new(t0.elapsed().as_secs_f64(), 1)));
        Ok(())
    }

    /// Every selected phase, in order.
    pub fn run(&mut self) -> Result<()> {
        let cfg = self.cfg;
        if cfg.tmpfs {
            log("== tmpfs");
            self.phase("tmpfs", |b| {
                b.mount_tmpfs()?;
                b.bench_dir(Target::Tmpfs)?;
                b.mounts.unmount_all();
                Ok(())
            })?;
        }
        if cfg.passthrough {
            log(format!("== passthrough_ll ({})", cfg.pt_opts));
            self.phase("passthrough", |b| {
                b.start_passthrough()?;
                if cfg.variants.is_empty() {
                    b.bench_dir(Target::Passthrough)?;
                } else {
                    // Its metadata and 4k rounds run interleaved with the rawfs variants'.
                    b.bench_seq(Target::Passthrough)?;
                }
                b.mounts.unmount_all();
                Ok(())
            })?;
        }
        if !cfg.variants.is_empty() {
            let names: Vec<&str> = cfg.variants.iter().map(|v| v.name()).collect();
            log(format!(
                "== rawfs variants ({}): {} interleaved round(s)",
                names.join(" "),
                cfg.vrounds
            ));
            self.phase("rawfs_variants", Self::bench_variants)?;
        }
        if cfg.trace_mem {
            log("== trace memory");
            self.phase("trace_mem", Self::bench_trace_mem)?;
        }
        Ok(())
    }

    /// The targets of the interleaved rounds: the variants, then passthrough_ll if selected.
    pub fn round_targets(&self) -> Vec<Target> {
        let mut t: Vec<Target> = self
            .cfg
            .variants
            .iter()
            .map(|&v| Target::Rawfs(v))
            .collect();
        if self.cfg.passthrough {
            t.push(Target::Passthrough);
        }
        t
    }

    fn bench_variants(&mut self) -> Result<()> {
        let cfg = self.cfg;
        let variants = cfg.variants.clone();
        let targets = self.round_targets();
        let target_names = targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" ");
        if cfg.has(Variant::Rules100) {
            let file = self.rules_file();
            rawfs::write_rules(&file)?;
            log(format!("wrote {} (100 rules)", file.display()));
        }
        let rawfs_bin = self.rawfs()?.clone();
        let nb = block_count(variants.len());
        let (mut md_to, mut rr_to) = (0, 0);
        for block in 1..=nb {
            let mount_order = mount_order(&variants, block);
            for &v in &mount_order {
                log(format!(
                    "block {block}: mount {}: {} mount {} --daemon {} {}",
                    v.name(),
                    rawfs_bin.bin.display(),
                    self.dir(Target::Rawfs(v)).display(),
                    cfg.rawfs_args_eff,
                    self.variant_args(v).join(" ")
                ));
                self.mount_variant(v)?;
            }
            if cfg.passthrough {
                log(format!(
                    "block {block}: start passthrough_ll ({})",
                    cfg.pt_opts
                ));
                self.start_passthrough()?;
            }
            for &t in &targets {
                fio::layout_randread(&self.dir(t).join("randread.dat"), cfg.rr_size_mib)?;
            }
            let (md_from, rr_from) = (md_to + 1, rr_to + 1);
            md_to = cfg.mdv_rounds * block / nb;
            rr_to = cfg.vrounds * block / nb;
            log(format!(
                "block {block}: metadata rounds {md_from}-{md_to} of {} ({} files) on {target_names}",
                cfg.mdv_rounds, cfg.vfiles
            ));
            let mut cpu0 = Vec::new();
            for &v in &variants {
                cpu0.push(CpuSample::take(&rawfs_bin, &self.dir(Target::Rawfs(v)))?);
            }
            for r in md_from..=md_to {
                for t in round_order(&targets, r) {
                    for (m, x) in self.run_md(t, &self.dir(t), cfg.vfiles, 1)? {
                        self.res.add_round(t, m, x);
                    }
                }
            }
            for m in [Metric::RandRead, Metric::RandWrite] {
                for r in rr_from..=rr_to {
                    let order = round_order(&targets, r);
                    let names: Vec<&str> = order.iter().map(|t| t.name()).collect();
                    log(format!(
                        "round {r}/{}: {} ({} s) on {}",
                        cfg.vrounds,
                        m.label(),
                        cfg.runtime,
                        names.join(" ")
                    ));
                    for t in order {
                        let x = self.run_rand(m, &self.dir(t))?;
                        self.res.add_round(t, m, x);
                    }
                }
            }
            for (&v, &c0) in variants.iter().zip(&cpu0) {
                let c1 = CpuSample::take(&rawfs_bin, &self.dir(Target::Rawfs(v)))?;
                self.res.cpu.entry(v).or_default().add_delta(c0, c1);
            }
            for &t in &targets {
                rm_f(&self.dir(t).join("randread.dat"))?;
            }
            // One seq run per variant per block, in the block's mount order: the first 1 GiB
            // written after the rounds ran markedly slower, whichever variant wrote it.
            for &v in &mount_order {
                let t = Target::Rawfs(v);
                let (w, r) = self.bench_seq(t)?;
                self.res.add_round(t, Metric::SeqWrite, w);
                self.res.add_round(t, Metric::SeqRead, r);
            }
            if block < nb {
                self.mounts.unmount_all();
            }
        }
        for &t in &targets {
            for m in Metric::ROUND {
                let Some(v) = median(self.res.rounds(t, m), m.decimals()) else {
                    return bail(format!("no {} figures for {}", m.label(), t.name()));
                };
                self.res.set(t, m, v);
            }
        }
        for &v in &variants {
            let t = Target::Rawfs(v);
            for m in [Metric::SeqWrite, Metric::SeqRead] {
                if let Some(x) = median(self.res.rounds(t, m), 1) {
                    self.res.set(t, m, x);
                }
            }
        }
        for &v in &variants {
            let st = rawfs::status(&rawfs_bin, &self.dir(Target::Rawfs(v)))?;
            self.res.after_run.insert(
                v,
                AfterRun {
                    requests: st.requests,
                    recorded: st.recorded(),
                    rules: st.rules.len() as u64,
                    rule_matches: st.rules.iter().map(|r| r.matched).sum(),
                    rule_hits: st.rules.iter().map(|r| r.hits).sum(),
                },
            );
        }
        if let Some(a) = self.res.after_run.get(&Variant::Rules100) {
            if a.rules != 100 {
                return bail(format!(
                    "rawfs-100rules has {} rules, expected 100",
                    a.rules
                ));
            }
            if a.rule_hits != 0 {
                log(format!(
                    "warning: rules in rawfs-100rules fired {} times",
                    a.rule_hits
                ));
            }
        }
        let notrace_recorded = self
            .res
            .after_run
            .get(&Variant::NoTrace)
            .and_then(|a| a.recorded);
        if let Some(n) = notrace_recorded.filter(|&n| n != 0) {
            log(format!("warning: rawfs-notrace recorded {n} events"));
        }
        self.mounts.unmount_all();
        Ok(())
    }

    /// One trace-mem mount: `label` names it (on, off), `capacity` is its trace capacity.
    fn trace_mem_measure(&mut self, label: &str, capacity: u64) -> Result<TraceMemSide> {
        let rawfs_bin = self.rawfs()?.clone();
        let mnt = self.work.join(format!("mem-{label}"));
        log(format!(
            "trace-mem ({label}): rawfs mount {} --daemon {} --trace-capacity {capacity}; {TM_STATS} stats",
            mnt.display(),
            self.cfg.tm_args
        ));
        let cap = capacity.to_string();
        self.mounts.rawfs(
            &mnt,
            &self.cfg.tm_args,
            &[OsStr::new("--trace-capacity"), OsStr::new(&cap)],
        )?;
        let dir = mnt.join("mem");
        fs::create_dir(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
        let file = dir.join("file");
        mdbench::touch(&file)?;
        mdbench::stat_loop(&file, TM_WARMUP)?;
        let pid = rawfs::pid(&rawfs_bin, &mnt)?;
        let s0 = rawfs::settled_status(&rawfs_bin, &mnt)?;
        if s0.pid != pid {
            log(format!(
                "warning: pid file says {pid}, rawfs status says {}",
                s0.pid
            ));
        }
        let rss0 = vmrss_kib(pid)?;
        let secs = Fixed::new(mdbench::stat_loop(&file, TM_STATS)?, 3);
        let s1 = rawfs::settled_status(&rawfs_bin, &mnt)?;
        let rss1 = vmrss_kib(pid)?;
        self.mounts.unmount_all();
        Ok(TraceMemSide {
            rss0,
            rss1,
            secs,
            buf0: s0.buffered,
            buf1: s1.buffered,
            rec0: s0.recorded(),
            rec1: s1.recorded(),
            req0: s0.requests,
            req1: s1.requests,
            evicted: s1.trace.map(|t| t.evicted),
            dropped: s1.trace.map(|t| t.dropped),
        })
    }

    fn bench_trace_mem(&mut self) -> Result<()> {
        let on = self.trace_mem_measure("on", TM_CAPACITY)?;
        let off = self.trace_mem_measure("off", 0)?;
        let dbuf = on.buf1 as i64 - on.buf0 as i64;
        let drss = on.rss1 as i64 - on.rss0 as i64;
        let dctl = off.rss1 as i64 - off.rss0 as i64;
        let rate = |s: Fixed| (s.value() > 0.0).then(|| Fixed::new(TM_STATS as f64 / s.value(), 0));
        let (mut bpe, mut bpe_net) = (None, None);
        if dbuf > 0 {
            bpe = Some(Fixed::new(drss as f64 * 1024.0 / dbuf as f64, 1));
            bpe_net = Some(Fixed::new((drss - dctl) as f64 * 1024.0 / dbuf as f64, 1));
        } else {
            log(format!(
                "warning: the trace buffer did not grow ({dbuf} events)"
            ));
        }
        self.res.trace_mem = Some(TraceMem {
            on,
            off,
            drss,
            dctl,
            req_per_stat: Fixed::new((on.req1 as f64 - on.req0 as f64) / TM_STATS as f64, 2),
            stats_per_s: rate(on.secs),
            stats_per_s_off: rate(off.secs),
            bytes_per_event: bpe,
            bytes_per_event_net: bpe_net,
        });
        Ok(())
    }
}

/// Blocks of rounds: one per variant, at least two.
fn block_count(variants: usize) -> u64 {
    variants.max(2) as u64
}

/// The variants' mount order in block `block` (from 1): rotated by one per block, so that
/// each is mounted first once (the daemon mounted first was seen to run a few % slower).
fn mount_order(variants: &[Variant], block: u64) -> Vec<Variant> {
    let n = variants.len();
    (0..n)
        .map(|i| variants[(i + block as usize - 1) % n])
        .collect()
}

/// The targets in round `r`'s order (from 1): round r starts at target (r - 1) mod n and goes
/// on in list order, and every other cycle of n rounds runs backwards: A B C, B C A, C A B,
/// C B A, A C B, B A C, so every target runs in every place of a round equally often.
/// (Alternating A B C with C B A kept B in the middle of every round.)
fn round_order(targets: &[Target], r: u64) -> Vec<Target> {
    let n = targets.len();
    let k = (r - 1) as usize;
    let (rot, back) = (k % n, k / n % 2 == 1);
    let mut order: Vec<Target> = (0..n).map(|i| targets[(rot + i) % n]).collect();
    if back {
        order.reverse();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        let t = [
            Target::Rawfs(Variant::Rawfs),
            Target::Rawfs(Variant::NoTrace),
            Target::Passthrough,
        ];
        let names = |r| {
            round_order(&t, r)
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(names(1), "rawfs rawfs-notrace passthrough");
        assert_eq!(names(2), "rawfs-notrace passthrough rawfs");
        assert_eq!(names(3), "passthrough rawfs rawfs-notrace");
        assert_eq!(names(4), "passthrough rawfs-notrace rawfs");
        assert_eq!(names(5), "rawfs passthrough rawfs-notrace");
        assert_eq!(names(7), "rawfs rawfs-notrace passthrough");
        let v = Variant::ALL;
        assert_eq!(
            mount_order(&v, 2),
            [Variant::NoTrace, Variant::Rules100, Variant::Rawfs]
        );
        assert_eq!(block_count(1), 2);
        assert_eq!(block_count(3), 3);
    }
}
