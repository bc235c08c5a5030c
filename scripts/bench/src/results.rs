//! What a run measured: the figures of each target and metric, the per-round values of the
//! interleaved rounds, the rawfs daemons' CPU time and status, and the trace memory figures.

use std::collections::BTreeMap;

use crate::args::Variant;
use crate::rawfs::CpuSample;
use crate::stats::Fixed;

/// A measured file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Tmpfs,
    Passthrough,
    Rawfs(Variant),
}

impl Target {
    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Target::Tmpfs => "tmpfs",
            Target::Passthrough => "passthrough",
            Target::Rawfs(v) => v.name(),
        }
    }

    /// Its name in the report's and results.json's columns and keys.
    pub fn column(self) -> &'static str {
        match self {
            Target::Passthrough => "passthrough_ll",
            t => t.name(),
        }
    }
}

/// A measured quantity, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Create,
    Stat,
    Unlink,
    RandRead,
    RandWrite,
    SeqWrite,
    SeqRead,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Create,
        Metric::Stat,
        Metric::Unlink,
        Metric::RandRead,
        Metric::RandWrite,
        Metric::SeqWrite,
        Metric::SeqRead,
    ];
    /// Those of the interleaved rounds (the seq runs are once per block).
    pub const ROUND: [Metric; 5] = [
        Metric::Create,
        Metric::Stat,
        Metric::Unlink,
        Metric::RandRead,
        Metric::RandWrite,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Create => "create (open+close)",
            Metric::Stat => "stat",
            Metric::Unlink => "unlink",
            Metric::RandRead => "4k randread",
            Metric::RandWrite => "4k randwrite",
            Metric::SeqWrite => "1M seq write",
            Metric::SeqRead => "1M seq read",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Create | Metric::Stat | Metric::Unlink => "ops/s",
            Metric::RandRead | Metric::RandWrite => "IOPS",
            Metric::SeqWrite | Metric::SeqRead => "MB/s",
        }
    }

    /// Its key in results.json.
    pub fn json(self) -> &'static str {
        match self {
            Metric::Create => "create_ops_per_s",
            Metric::Stat => "stat_ops_per_s",
            Metric::Unlink => "unlink_ops_per_s",
            Metric::RandRead => "randread_4k_iops",
            Metric::RandWrite => "randwrite_4k_iops",
            Metric::SeqWrite => "seqwrite_1m_mb_per_s",
            Metric::SeqRead => "seqread_1m_mb_per_s",
        }
    }

    /// Decimals of its figures: whole IOPS, tenths of ops/s and MB/s.
    pub fn decimals(self) -> usize {
        match self {
            Metric::RandRead | Metric::RandWrite => 0,
            _ => 1,
        }
    }
}

/// A rawfs variant's `rawfs status` after its rounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct AfterRun {
    pub requests: u64,
    /// None when recording is off.
    pub recorded: Option<u64>,
    pub rules: u64,
    pub rule_matches: u64,
    pub rule_hits: u64,
}

/// One trace-mem mount's readings.
#[derive(Clone, Copy, Debug)]
pub struct TraceMemSide {
    pub rss0: u64,
    pub rss1: u64,
    /// Seconds of the timed stat loop.
    pub secs: Fixed,
    pub buf0: u64,
    pub buf1: u64,
    pub rec0: Option<u64>,
    pub rec1: Option<u64>,
    pub req0: u64,
    pub req1: u64,
    pub evicted: Option<u64>,
    pub dropped: Option<u64>,
}

/// The trace memory measurement.
#[derive(Clone, Copy, Debug)]
pub struct TraceMem {
    /// Recording, with the big capacity.
    pub on: TraceMemSide,
    /// The control, `--trace-capacity 0`.
    pub off: TraceMemSide,
    /// Growth of VmRSS (KiB), and the control's VmRSS growth.
    pub drss: i64,
    pub dctl: i64,
    pub req_per_stat: Fixed,
    pub stats_per_s: Option<Fixed>,
    pub stats_per_s_off: Option<Fixed>,
    pub bytes_per_event: Option<Fixed>,
    pub bytes_per_event_net: Option<Fixed>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    /// The figure of each target and metric (for the interleaved ones: the median).
    figures: BTreeMap<(Target, Metric), Fixed>,
    /// The per-round (or per-block) values.
    rounds: BTreeMap<(Target, Metric), Vec<Fixed>>,
    /// Daemon CPU time and requests over the interleaved rounds, summed over the blocks.
    pub cpu: BTreeMap<Variant, CpuSample>,
    pub after_run: BTreeMap<Variant, AfterRun>,
    pub trace_mem: Option<TraceMem>,
    /// Seconds of each phase that ran (tmpfs, passthrough, rawfs_variants, trace_mem).
    pub phases: Vec<(&'static str, Fixed)>,
}

impl Results {
    pub fn get(&self, t: Target, m: Metric) -> Option<Fixed> {
        self.figures.get(&(t, m)).copied()
    }

    pub fn set(&mut self, t: Target, m: Metric, v: Fixed) {
        self.figures.insert((t, m), v);
    }

    /// The per-round values (empty if none).
    pub fn rounds(&self, t: Target, m: Metric) -> &[Fixed] {
        self.rounds.get(&(t, m)).map_or(&[], Vec::as_slice)
    }

    pub fn add_round(&mut self, t: Target, m: Metric, v: Fixed) {
        self.rounds.entry((t, m)).or_default().push(v);
    }
}
