//! The command line and the run configuration derived from it.

use clap::{Parser, Subcommand};

use crate::scale::ScaleConfig;
use crate::sys::{Error, Result};

/// The command line (see the module docs, printed by --help).
#[derive(Parser, Debug)]
#[command(
    name = "bench.sh",
    bin_name = "bench.sh",
    about = "Compare rawfs against tmpfs and libfuse's passthrough_ll",
    long_about = include_str!("about.md"),
    args_conflicts_with_subcommands = true,
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Smaller counts and files.
    #[arg(long)]
    quick: bool,
    /// Extra arguments for `rawfs mount` (all variants), e.g. "--cache".
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        default_value = "",
        hide_default_value = true
    )]
    rawfs_args: String,
    /// Comma list of tmpfs, passthrough, rawfs, rawfs-notrace, rawfs-100rules, trace-mem
    /// (rawfs-all = the three rawfs variants).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "tmpfs,passthrough,rawfs,rawfs-notrace,rawfs-100rules"
    )]
    only: String,
    /// Number of files for the metadata workloads (default 10000, quick 5000).
    #[arg(long, value_name = "N", value_parser = positive)]
    files: Option<u64>,
    /// Seconds per fio workload (default 5, quick 3).
    #[arg(long, value_name = "SEC", value_parser = positive)]
    runtime: Option<u64>,
    /// Interleaved 4k randread (and randwrite) rounds for the rawfs variants (default 10,
    /// quick 3).
    #[arg(long, value_name = "N", value_parser = positive)]
    rounds: Option<u64>,
    /// Interleaved metadata rounds for the rawfs variants (default 200, quick 10).
    #[arg(long, value_name = "N", value_parser = positive)]
    md_rounds: Option<u64>,
    /// Skip the trace memory measurement.
    #[arg(long)]
    no_trace_mem: bool,
    /// Options for passthrough_ll instead of the automatic choice (e.g. "-o cache=auto").
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    passthrough_opts: Option<String>,
    /// For the run, let an idle virtual CPU poll this long before it halts (the guest's
    /// cpuidle haltpoll driver, /sys/module/haltpoll/parameters/guest_halt_poll_ns); the old
    /// value is restored at the end. See "Idle CPUs" in --help.
    #[arg(long, value_name = "NS")]
    halt_poll_ns: Option<u64>,
}

/// A positive whole number.
fn positive(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("wants a positive integer".into()),
    }
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Metadata cost per file from 10k to 1M files in one directory (scripts/scale.sh).
    #[command(long_about = include_str!("scale.md"))]
    Scale(ScaleCli),
}

/// The options of `scale`.
#[derive(clap::Args, Debug)]
struct ScaleCli {
    /// File counts, comma separated.
    #[arg(long, value_name = "N,N,...", default_value = "10000,100000,1000000")]
    counts: String,
    /// Pass --cache to `rawfs mount`.
    #[arg(long)]
    cache: bool,
    /// Measure rawfs only.
    #[arg(long)]
    no_tmpfs: bool,
    /// More arguments for `rawfs mount` (may be given more than once).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    rawfs_args: Vec<String>,
}

/// What to run.
#[derive(Debug)]
pub enum Run {
    Bench(Config),
    Scale(ScaleConfig),
}

/// The rawfs variants, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Rawfs,
    NoTrace,
    Rules100,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Rawfs, Variant::NoTrace, Variant::Rules100];

    /// Its name in --only, the report and results.json (also its mount directory's).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Rawfs => "rawfs",
            Variant::NoTrace => "rawfs-notrace",
            Variant::Rules100 => "rawfs-100rules",
        }
    }
}

/// The run configuration.
#[derive(Debug)]
pub struct Config {
    pub quick: bool,
    /// --rawfs-args as given.
    pub rawfs_args: String,
    /// The arguments every rawfs mount gets: --rawfs-args plus `--size` unless given.
    pub rawfs_args_eff: String,
    /// Those of the trace-mem mounts: without --cache.
    pub tm_args: String,
    pub tmpfs: bool,
    pub passthrough: bool,
    /// The selected rawfs variants, in table order.
    pub variants: Vec<Variant>,
    pub trace_mem: bool,
    /// Files of a metadata pass (tmpfs, passthrough_ll alone).
    pub nfiles: u64,
    /// Files of an interleaved metadata round.
    pub vfiles: u64,
    pub runtime: u64,
    /// Interleaved 4k rounds.
    pub vrounds: u64,
    /// Interleaved metadata rounds.
    pub mdv_rounds: u64,
    /// Rounds inside one metadata pass (tmpfs, passthrough_ll alone).
    pub md_rounds: u64,
    pub seq_size_mib: u64,
    pub rr_size_mib: u64,
    /// Size of the tmpfs mounts and of rawfs (unless --size is given).
    pub fs_size_bytes: u64,
    /// passthrough_ll's options besides -f -o source=DIR, and why.
    pub pt_opts: String,
    pub pt_opts_why: &'static str,
    /// --halt-poll-ns, if given.
    pub halt_poll_ns: Option<u64>,
}

impl Config {
    pub fn mode(&self) -> &'static str {
        if self.quick { "quick" } else { "default" }
    }

    /// Whether a rawfs binary is needed.
    pub fn rawfs(&self) -> bool {
        !self.variants.is_empty() || self.trace_mem
    }

    pub fn has(&self, v: Variant) -> bool {
        self.variants.contains(&v)
    }
}

/// Whether the whitespace-split `args` hold option `opt` (alone or as `opt=...`).
fn has_option(args: &str, opt: &str) -> bool {
    args.split_whitespace()
        .any(|w| w == opt || w.strip_prefix(opt).is_some_and(|r| r.starts_with('=')))
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Parses the command line (clap prints --help and its own errors and exits).
pub fn parse() -> Result<Run> {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Sub::Scale(s)) => scale_config(s).map(Run::Scale),
        None => config(cli).map(Run::Bench),
    }
}

fn scale_config(s: ScaleCli) -> Result<ScaleConfig> {
    let counts: Option<Vec<u64>> = s
        .counts
        .split(',')
        .map(|c| {
            c.parse::<u64>()
                .ok()
                .filter(|&n| n > 0 && !c.starts_with(['+', '0']))
        })
        .collect();
    let counts = counts.ok_or_else(|| usage("--counts wants N,N,..."))?;
    let mut rawfs_args = String::new();
    if s.cache {
        rawfs_args.push_str(" --cache");
    }
    for a in &s.rawfs_args {
        rawfs_args.push(' ');
        rawfs_args.push_str(a);
    }
    Ok(ScaleConfig {
        counts,
        rawfs_args,
        tmpfs: !s.no_tmpfs,
    })
}

fn config(cli: Cli) -> Result<Config> {
    let (mut tmpfs, mut passthrough, mut tm_only) = (false, false, false);
    let mut chosen = Vec::new();
    for t in cli.only.split(',') {
        match t.replace(' ', "").as_str() {
            "tmpfs" => tmpfs = true,
            "passthrough" | "passthrough_ll" | "pt" => passthrough = true,
            "rawfs" => chosen.push(Variant::Rawfs),
            "rawfs-notrace" => chosen.push(Variant::NoTrace),
            "rawfs-100rules" => chosen.push(Variant::Rules100),
            "rawfs-all" => chosen.extend(Variant::ALL),
            "trace-mem" | "tracemem" => tm_only = true,
            "" => {}
            other => {
                return Err(usage(format!(
                    "unknown target in --only: '{other}' (use tmpfs,passthrough,rawfs,\
                     rawfs-notrace,rawfs-100rules,rawfs-all,trace-mem)"
                )));
            }
        }
    }
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| chosen.contains(v))
        .collect();
    let trace_mem = !cli.no_trace_mem && (variants.contains(&Variant::Rawfs) || tm_only);
    if !tmpfs && !passthrough && variants.is_empty() && !trace_mem {
        return Err(usage("--only selects no target"));
    }

    // The program sets --trace-capacity and --faults itself for some variants; rawfs refuses
    // an option given twice.
    let ra = &cli.rawfs_args;
    if has_option(ra, "--trace-capacity") && (variants.contains(&Variant::NoTrace) || trace_mem) {
        return Err(usage(
            "--rawfs-args must not contain --trace-capacity with rawfs-notrace or trace-mem \
             (use --only without them, or --no-trace-mem)",
        ));
    }
    if has_option(ra, "--faults") && variants.contains(&Variant::Rules100) {
        return Err(usage(
            "--rawfs-args must not contain --faults with rawfs-100rules",
        ));
    }

    let quick = cli.quick;
    let (files, runtime, mdv, vr, md_rounds, seq) = if quick {
        (5000, 3, 10, 3, 1, 256)
    } else {
        (10000, 5, 200, 10, 3, 1024)
    };
    let nfiles = cli.files.unwrap_or(files);
    let rr_size_mib = 64;
    // Room for both fio files plus the metadata files and some slack.
    let fs_size_bytes = (seq + rr_size_mib + 256) * 1024 * 1024;

    let cache = ra.split_whitespace().any(|w| w == "--cache");
    let (pt_opts, pt_opts_why) = match cli.passthrough_opts {
        Some(o) => (o, "given with --passthrough-opts"),
        None if cache => (
            "-o cache=auto".to_string(),
            "matches rawfs --cache: kernel page/attr caching on",
        ),
        None => (
            "-o cache=never".to_string(),
            "matches rawfs without --cache: no kernel caching",
        ),
    };

    // rawfs gets a capacity large enough for the workloads unless one is given.
    let rawfs_args_eff = if has_option(ra, "--size") {
        ra.clone()
    } else if ra.is_empty() {
        format!("--size {fs_size_bytes}")
    } else {
        format!("{ra} --size {fs_size_bytes}")
    };
    let tm_args = rawfs_args_eff
        .split_whitespace()
        .filter(|w| *w != "--cache")
        .collect::<Vec<_>>()
        .join(" ");

    Ok(Config {
        quick,
        rawfs_args: ra.clone(),
        rawfs_args_eff,
        tm_args,
        tmpfs,
        passthrough,
        variants,
        trace_mem,
        nfiles,
        vfiles: (nfiles / 10).max(500),
        runtime: cli.runtime.unwrap_or(runtime),
        vrounds: cli.rounds.unwrap_or(vr),
        mdv_rounds: cli.md_rounds.unwrap_or(mdv),
        md_rounds,
        seq_size_mib: seq,
        rr_size_mib,
        fs_size_bytes,
        pt_opts,
        pt_opts_why,
        halt_poll_ns: cli.halt_poll_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config> {
        let mut v = vec!["bench.sh"];
        v.extend_from_slice(args);
        config(Cli::try_parse_from(v).map_err(|e| Error::Usage(e.to_string()))?)
    }

    #[test]
    fn scale() {
        let parse = |args: &[&str]| {
            let mut v = vec!["bench.sh", "scale"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Some(Sub::Scale(s)) => scale_config(s),
                None => panic!("no subcommand"),
            }
        };
        let c = parse(&[
            "--counts",
            "10,200",
            "--cache",
            "--rawfs-args",
            "--trace-capacity 0",
        ])
        .unwrap();
        assert_eq!(c.counts, [10, 200]);
        assert_eq!(c.rawfs_args, " --cache --trace-capacity 0");
        assert!(c.tmpfs);
        assert_eq!(parse(&[]).unwrap().counts, [10000, 100000, 1000000]);
        assert!(parse(&["--counts", "10,,2"]).is_err());
        assert!(parse(&["--counts", "010"]).is_err());
        assert!(Cli::try_parse_from(["bench.sh", "--quick", "scale"]).is_err());
    }

    #[test]
    fn defaults_and_quick() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.variants, Variant::ALL);
        assert!(c.tmpfs && c.passthrough && c.trace_mem);
        assert_eq!(
            (c.nfiles, c.vfiles, c.runtime, c.vrounds, c.mdv_rounds),
            (10000, 1000, 5, 10, 200)
        );
        assert_eq!(
            c.rawfs_args_eff,
            format!("--size {}", (1024 + 64 + 256) << 20)
        );
        assert_eq!(c.pt_opts, "-o cache=never");
        let q = cfg(&["--quick", "--files", "2000"]).unwrap();
        assert_eq!(
            (q.nfiles, q.vfiles, q.md_rounds, q.seq_size_mib),
            (2000, 500, 1, 256)
        );
    }

    #[test]
    fn rawfs_args() {
        let c = cfg(&["--rawfs-args", "--cache", "--only", "rawfs,pt"]).unwrap();
        assert_eq!(c.pt_opts, "-o cache=auto");
        assert!(c.rawfs_args_eff.starts_with("--cache --size "));
        assert!(!c.tm_args.contains("--cache"));
        assert_eq!(c.variants, [Variant::Rawfs]);
        let c = cfg(&["--rawfs-args=--size 1G"]).unwrap();
        assert_eq!(c.rawfs_args_eff, "--size 1G");
        assert!(cfg(&["--rawfs-args", "--trace-capacity=5"]).is_err());
        assert!(
            cfg(&[
                "--rawfs-args",
                "--trace-capacity 5",
                "--only",
                "rawfs-100rules"
            ])
            .is_ok()
        );
        assert!(cfg(&["--rawfs-args", "--faults x", "--only", "rawfs-100rules"]).is_err());
        assert!(cfg(&["--only", "nothing"]).is_err());
        assert!(cfg(&["--only", "rawfs", "--no-trace-mem", "--files", "0"]).is_err());
    }
}
