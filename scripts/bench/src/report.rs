//! The report (tables on stdout) and target/bench/results.json.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::args::{Config, Variant};
use crate::bench::{Bench, TM_CAPACITY, TM_STATS, TM_WARMUP};
use crate::results::{Metric, Results, Target, TraceMem};
use crate::stats::{Fixed, difference, or_dash, pct, pct_num, range_of, ratio, round_ratios};

/// Facts about the run and the host.
pub struct Info {
    pub date_utc: String,
    pub elapsed_s: i64,
    pub load_start: String,
    pub load_end: String,
    pub kernel: String,
    pub cpu: String,
    pub ncpu: usize,
    pub fio: String,
    pub libfuse: String,
    pub clock_ticks: u64,
    /// The cpuidle driver and the haltpoll driver's guest_halt_poll_ns (sys::cpuidle).
    pub cpuidle: (String, Option<u64>),
    pub results_json: PathBuf,
}

const RAWFS: Target = Target::Rawfs(Variant::Rawfs);
const NOTRACE: Target = Target::Rawfs(Variant::NoTrace);
const RULES: Target = Target::Rawfs(Variant::Rules100);

/// Daemon CPU time per request served, in µs: user, system or both; none without requests.
/// `hz` is clock ticks per second.
fn cpu_us_per_req(res: &Results, hz: u64, v: Variant, user: bool, system: bool) -> Option<Fixed> {
    let c = res.cpu.get(&v)?;
    let t = if user { c.utime } else { 0 } + if system { c.stime } else { 0 };
    (c.requests > 0).then(|| Fixed::new(t as f64 / hz as f64 * 1e6 / c.requests as f64, 2))
}

/// `rawfs mount MNT --daemon ARGS EXTRA`'s arguments after --daemon.
fn variant_cmdline(b: &Bench, v: Variant) -> String {
    let extra = b.variant_args(v);
    if extra.is_empty() {
        b.cfg.rawfs_args_eff.clone()
    } else {
        format!("{} {}", b.cfg.rawfs_args_eff, extra.join(" "))
    }
}

/// The KiB figure in MiB, one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// The text report.
pub fn text(b: &Bench, info: &Info) -> String {
    let (cfg, res) = (b.cfg, &b.res);
    let mut o = String::new();
    let mount = if cfg.rawfs_args.is_empty() {
        String::new()
    } else {
        format!(", rawfs mount {}", cfg.rawfs_args)
    };
    let cpu = if info.cpu.is_empty() {
        "cpu"
    } else {
        &info.cpu
    };
    let _ = writeln!(
        o,
        "rawfs benchmark ({} size{mount}), {}, kernel {}, {} x {cpu}",
        cfg.mode(),
        info.date_utc,
        info.kernel,
        info.ncpu
    );
    let _ = writeln!(
        o,
        "  load average (1/5/15 min): {} at start, {} at end",
        info.load_start, info.load_end
    );
    match &info.cpuidle {
        (driver, Some(0)) => {
            let _ = writeln!(
                o,
                "  cpuidle: {driver}, guest_halt_poll_ns 0: an idle virtual CPU halts at once, \
                 so a reply that wakes the program on the other CPU costs a VM exit; FUSE \
                 round trips then run in a fast and a slow mode (see --halt-poll-ns)"
            );
        }
        (driver, Some(ns)) => {
            let _ = writeln!(o, "  cpuidle: {driver}, guest_halt_poll_ns {ns}");
        }
        (driver, None) if !driver.is_empty() => {
            let _ = writeln!(o, "  cpuidle: {driver}");
        }
        _ => {}
    }
    let who = if cfg.passthrough && !cfg.variants.is_empty() {
        "tmpfs"
    } else {
        "tmpfs/passthrough_ll"
    };
    let _ = writeln!(
        o,
        "  metadata: {} files in one directory; {who}: median of {} round(s) (mdbench)",
        cfg.nfiles, cfg.md_rounds
    );
    let _ = writeln!(
        o,
        "  fio {}, psync, 1 job, {} s time based: 4k randread, then 4k randwrite, on {} MiB; \
         1M seq write/read on {} MiB; MB = 10^6 B",
        info.fio, cfg.runtime, cfg.rr_size_mib, cfg.seq_size_mib
    );
    if cfg.tmpfs {
        let _ = writeln!(
            o,
            "  tmpfs:          mount -t tmpfs -o size={}",
            cfg.fs_size_bytes
        );
    }
    if cfg.passthrough {
        let _ = writeln!(
            o,
            "  passthrough_ll: libfuse {} example, -f -o source=<fresh tmpfs> {}, multi-threaded, \
             no writeback ({})",
            info.libfuse, cfg.pt_opts, cfg.pt_opts_why
        );
    }
    if !cfg.variants.is_empty() {
        let bin = b
            .rawfs
            .as_ref()
            .map(|r| r.bin.display().to_string())
            .unwrap_or_default();
        for &v in &cfg.variants {
            let _ = writeln!(
                o,
                "  {:<15} {bin} mount MNT --daemon {}",
                format!("{}:", v.name()),
                variant_cmdline(b, v)
            );
            let desc = Bench::variant_desc(v);
            let a = res.after_run.get(&v).copied().unwrap_or_default();
            match a.recorded {
                Some(r) => {
                    let _ = write!(
                        o,
                        "  {:<15}   {desc}; rawfs status after the run: {} requests, {r} recorded",
                        "", a.requests
                    );
                }
                None => {
                    let _ = write!(
                        o,
                        "  {:<15}   {desc}; rawfs status after the run: no trace counters",
                        ""
                    );
                }
            }
            if a.rules > 0 {
                let _ = write!(
                    o,
                    ", {} rules, {} rule matches, {} fired",
                    a.rules, a.rule_matches, a.rule_hits
                );
            }
            o.push('\n');
        }
        let names: Vec<&str> = b.round_targets().iter().map(|t| t.name()).collect();
        let _ = writeln!(
            o,
            "  {} mounted side by side, rounds split into blocks with the mount order rotated (each \
             variant mounted first once), run order rotated (each target in each place of a round \
             equally often): create/stat/unlink: median of {} interleaved round(s) of {} files; 4k \
             randread/randwrite: median of {} interleaved round(s); seq write/read: median of one \
             run per block",
            names.join(" "),
            cfg.mdv_rounds,
            cfg.vfiles,
            cfg.vrounds
        );
    }
    if cfg.tmpfs || cfg.passthrough || !cfg.variants.is_empty() {
        figures_tables(&mut o, res);
    }
    if !cfg.variants.is_empty() {
        cpu_table(&mut o, cfg, res, info.clock_ticks);
    }
    if let Some(tm) = &res.trace_mem {
        trace_mem_text(&mut o, cfg, tm);
    }
    let phases: Vec<String> = res
        .phases
        .iter()
        .map(|(k, s)| format!("{k} {s} s"))
        .collect();
    let _ = writeln!(
        o,
        "\ntotal run time: {} s ({}); results: {}",
        info.elapsed_s,
        phases.join(", "),
        info.results_json.display()
    );
    o
}

fn figures_tables(o: &mut String, res: &Results) {
    let v = |t, m| or_dash(res.get(t, m));
    let _ = writeln!(
        o,
        "\n{:<20} {:<6} {:>12} {:>15} {:>12} {:>14} {:>15}",
        "workload", "unit", "tmpfs", "passthrough_ll", "rawfs", "rawfs-notrace", "rawfs-100rules"
    );
    for m in Metric::ALL {
        let _ = writeln!(
            o,
            "{:<20} {:<6} {:>12} {:>15} {:>12} {:>14} {:>15}",
            m.label(),
            m.unit(),
            v(Target::Tmpfs, m),
            v(Target::Passthrough, m),
            v(RAWFS, m),
            v(NOTRACE, m),
            v(RULES, m)
        );
    }
    o.push_str(
        "\nratios (of the figures above; 'rounds' = lowest-highest ratio within one interleaved \
         round; > 1 = faster):\n",
    );
    o.push_str(
        "  on/off = rawfs / rawfs-notrace (recording on vs off), 100r/none = rawfs-100rules / \
         rawfs (both recording)\n",
    );
    let _ = writeln!(
        o,
        "{:<20} {:>7} {:>9} {:>11} {:>9} {:>11} {:>11} {:>9} {:>11} {:>9}",
        "workload",
        "on/off",
        "on-off",
        "rounds",
        "100r/none",
        "rounds",
        "rawfs/tmpfs",
        "rawfs/pt",
        "rounds",
        "pt/tmpfs"
    );
    let range = |a: Target, b: Target, m| {
        or_dash(round_ratios(res.rounds(a, m), res.rounds(b, m)).and_then(|r| range_of(&r)))
    };
    for m in Metric::ALL {
        let (on, off, rl) = (res.get(RAWFS, m), res.get(NOTRACE, m), res.get(RULES, m));
        let (a, p) = (res.get(Target::Tmpfs, m), res.get(Target::Passthrough, m));
        let _ = writeln!(
            o,
            "{:<20} {:>7} {:>9} {:>11} {:>9} {:>11} {:>11} {:>9} {:>11} {:>9}",
            m.label(),
            or_dash(ratio(on, off, 3)),
            or_dash(pct(on, off)),
            range(RAWFS, NOTRACE, m),
            or_dash(ratio(rl, on, 3)),
            range(RULES, RAWFS, m),
            or_dash(ratio(on, a, 2)),
            or_dash(ratio(on, p, 2)),
            range(RAWFS, Target::Passthrough, m),
            or_dash(ratio(p, a, 2))
        );
    }
}

fn cpu_table(o: &mut String, cfg: &Config, res: &Results, hz: u64) {
    o.push_str(
        "\ndaemon CPU over the interleaved rounds (all its threads, from /proc/PID/stat; per \
         request served):\n",
    );
    let _ = writeln!(
        o,
        "  {:<15} {:>10} {:>13} {:>15} {:>14}",
        "variant", "requests", "user us/req", "system us/req", "total us/req"
    );
    for &v in &cfg.variants {
        let _ = writeln!(
            o,
            "  {:<15} {:>10} {:>13} {:>15} {:>14}",
            v.name(),
            or_dash(res.cpu.get(&v).map(|c| c.requests)),
            or_dash(cpu_us_per_req(res, hz, v, true, false)),
            or_dash(cpu_us_per_req(res, hz, v, false, true)),
            or_dash(cpu_us_per_req(res, hz, v, true, true))
        );
    }
    if cfg.has(Variant::Rawfs) && cfg.has(Variant::NoTrace) {
        let (on, off) = (
            cpu_us_per_req(res, hz, Variant::Rawfs, true, true),
            cpu_us_per_req(res, hz, Variant::NoTrace, true, true),
        );
        let (uon, uoff) = (
            cpu_us_per_req(res, hz, Variant::Rawfs, true, false),
            cpu_us_per_req(res, hz, Variant::NoTrace, true, false),
        );
        let _ = writeln!(
            o,
            "  recording on - off: user {} us/req, total {} us/req ({})",
            or_dash(difference(uon, uoff)),
            or_dash(difference(on, off)),
            or_dash(pct(on, off))
        );
    }
}

fn trace_mem_text(o: &mut String, cfg: &Config, tm: &TraceMem) {
    let (on, off) = (&tm.on, &tm.off);
    let _ = writeln!(
        o,
        "\ntrace memory: rawfs mount MNT --daemon {} --trace-capacity {TM_CAPACITY}, \
         stat(MNT/mem/file) x {TM_STATS} after {TM_WARMUP} warm-up stats",
        cfg.tm_args
    );
    let _ = writeln!(
        o,
        "  requests per stat: {}; recorded {} -> {}, buffered {} -> {}, evicted {}, dropped {}",
        tm.req_per_stat,
        opt(on.rec0),
        opt(on.rec1),
        on.buf0,
        on.buf1,
        opt(on.evicted),
        opt(on.dropped)
    );
    let _ = writeln!(
        o,
        "  daemon VmRSS: {} MiB -> {} MiB ({:+} KiB); control with --trace-capacity 0: {} MiB -> {} MiB ({:+} KiB)",
        mib(on.rss0),
        mib(on.rss1),
        tm.drss,
        mib(off.rss0),
        mib(off.rss1),
        tm.dctl
    );
    let _ = writeln!(
        o,
        "  bytes per buffered event: {} (net of the control's growth: {})",
        or_dash(tm.bytes_per_event),
        or_dash(tm.bytes_per_event_net)
    );
    let _ = writeln!(
        o,
        "  stat rate during the run: {} /s recording, {} /s control",
        opt(tm.stats_per_s),
        opt(tm.stats_per_s_off)
    );
}

// ---- results.json --------------------------------------------------------------------------

/// A JSON object with its keys in the given order.
struct Map<T>(Vec<(&'static str, T)>);

impl<T: Serialize> Serialize for Map<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// One figure per metric.
type PerMetric<T> = Map<Option<T>>;

fn per_metric<T>(metrics: &[Metric], f: impl Fn(Metric) -> Option<T>) -> PerMetric<T> {
    Map(metrics.iter().map(|&m| (m.json(), f(m))).collect())
}

#[derive(Serialize)]
struct Json {
    mode: &'static str,
    date_utc: String,
    elapsed_s: i64,
    phase_s: Map<Fixed>,
    loadavg_start: String,
    loadavg_end: String,
    host: Host,
    config: JsonConfig,
    units: Map<&'static str>,
    targets: Map<Option<PerMetric<Fixed>>>,
    rounds: Map<Option<PerMetric<Vec<Fixed>>>>,
    ratios: Map<PerMetric<Fixed>>,
    recording_on_vs_off: Versus,
    rawfs_vs_passthrough_ll: RoundRatios,
    rules_100_vs_none: Versus,
    daemon_cpu: DaemonCpu,
    trace_memory: Option<TraceMemJson>,
}

#[derive(Serialize)]
struct Host {
    kernel: String,
    cpu: String,
    ncpu: usize,
    fio: String,
    libfuse: String,
    cpuidle_driver: String,
    guest_halt_poll_ns: Option<u64>,
}

#[derive(Serialize)]
struct JsonConfig {
    metadata_files: u64,
    metadata_rounds: u64,
    rawfs_variant_rounds: u64,
    rawfs_variant_metadata_rounds: u64,
    rawfs_variant_metadata_files: u64,
    fio_runtime_s: u64,
    randread_file_mib: u64,
    seq_file_mib: u64,
    tmpfs_size_bytes: u64,
    passthrough_ll_options: String,
    rawfs_binary: Option<String>,
    rawfs_args: String,
    rules_file: Option<String>,
    rawfs_variants: Map<Option<VariantCfg>>,
}

#[derive(Serialize)]
struct VariantCfg {
    args: String,
    after_run: AfterRunJson,
}

#[derive(Serialize)]
struct AfterRunJson {
    requests: Option<u64>,
    recorded: Option<u64>,
    rules: Option<u64>,
    rule_matches: Option<u64>,
    rule_hits: Option<u64>,
}

#[derive(Serialize)]
struct Versus {
    ratio: PerMetric<Fixed>,
    diff_pct: PerMetric<Fixed>,
    round_ratios: PerMetric<Vec<Fixed>>,
}

#[derive(Serialize)]
struct RoundRatios {
    round_ratios: PerMetric<Vec<Fixed>>,
}

#[derive(Serialize)]
struct DaemonCpu {
    clock_ticks_per_s: u64,
    #[serde(flatten)]
    variants: Map<Option<CpuJson>>,
}

#[derive(Serialize)]
struct CpuJson {
    requests: Option<u64>,
    user_ticks: Option<u64>,
    system_ticks: Option<u64>,
    user_us_per_request: Option<Fixed>,
    system_us_per_request: Option<Fixed>,
    total_us_per_request: Option<Fixed>,
}

#[derive(Serialize)]
struct TraceMemJson {
    trace_capacity: u64,
    stats: u64,
    warmup_stats: u64,
    path: &'static str,
    requests_per_stat: Fixed,
    recorded_before: Option<u64>,
    recorded_after: Option<u64>,
    buffered_before: u64,
    buffered_after: u64,
    evicted: Option<u64>,
    dropped: Option<u64>,
    vmrss_kib_before: u64,
    vmrss_kib_after: u64,
    control_trace_capacity_0: Control,
    stats_per_s: Option<Fixed>,
    bytes_per_buffered_event: Option<Fixed>,
    bytes_per_buffered_event_net_of_control: Option<Fixed>,
}

#[derive(Serialize)]
struct Control {
    vmrss_kib_before: u64,
    vmrss_kib_after: u64,
    stats_per_s: Option<Fixed>,
}

/// The JSON columns: the target and whether it ran.
fn columns(cfg: &Config) -> [(Target, bool); 5] {
    [
        (Target::Tmpfs, cfg.tmpfs),
        (Target::Passthrough, cfg.passthrough),
        (RAWFS, cfg.has(Variant::Rawfs)),
        (NOTRACE, cfg.has(Variant::NoTrace)),
        (RULES, cfg.has(Variant::Rules100)),
    ]
}

/// results.json's text.
pub fn json(b: &Bench, info: &Info, rawfs_binary: Option<String>) -> String {
    let (cfg, res, hz) = (b.cfg, &b.res, info.clock_ticks);
    let figures = |t: Target| per_metric(&Metric::ALL, |m| res.get(t, m));
    let ratios = |a: Target, bt: Target, d| {
        per_metric(&Metric::ALL, |m| ratio(res.get(a, m), res.get(bt, m), d))
    };
    let pcts = |a: Target, bt: Target| {
        per_metric(&Metric::ALL, |m| pct_num(res.get(a, m), res.get(bt, m)))
    };
    let rr = |a: Target, bt: Target| {
        per_metric(&Metric::ROUND, |m| {
            round_ratios(res.rounds(a, m), res.rounds(bt, m))
        })
    };
    let rounds = |t: Target| {
        (!res.rounds(t, Metric::Create).is_empty()).then(|| {
            per_metric(&Metric::ROUND, |m| {
                let r = res.rounds(t, m);
                (!r.is_empty()).then(|| r.to_vec())
            })
        })
    };
    let variant_cfg = |v: Variant| {
        cfg.has(v).then(|| {
            let a = res.after_run.get(&v);
            VariantCfg {
                args: variant_cmdline(b, v),
                after_run: AfterRunJson {
                    requests: a.map(|a| a.requests),
                    recorded: a.and_then(|a| a.recorded),
                    rules: a.map(|a| a.rules),
                    rule_matches: a.map(|a| a.rule_matches),
                    rule_hits: a.map(|a| a.rule_hits),
                },
            }
        })
    };
    let cpu = |v: Variant| {
        cfg.has(v).then(|| {
            let c = res.cpu.get(&v);
            CpuJson {
                requests: c.map(|c| c.requests),
                user_ticks: c.map(|c| c.utime),
                system_ticks: c.map(|c| c.stime),
                user_us_per_request: cpu_us_per_req(res, hz, v, true, false),
                system_us_per_request: cpu_us_per_req(res, hz, v, false, true),
                total_us_per_request: cpu_us_per_req(res, hz, v, true, true),
            }
        })
    };
    let j = Json {
        mode: cfg.mode(),
        date_utc: info.date_utc.clone(),
        elapsed_s: info.elapsed_s,
        phase_s: Map(res.phases.clone()),
        loadavg_start: info.load_start.clone(),
        loadavg_end: info.load_end.clone(),
        host: Host {
            kernel: info.kernel.clone(),
            cpu: info.cpu.clone(),
            ncpu: info.ncpu,
            fio: info.fio.clone(),
            libfuse: info.libfuse.clone(),
            cpuidle_driver: info.cpuidle.0.clone(),
            guest_halt_poll_ns: info.cpuidle.1,
        },
        config: JsonConfig {
            metadata_files: cfg.nfiles,
            metadata_rounds: cfg.md_rounds,
            rawfs_variant_rounds: cfg.vrounds,
            rawfs_variant_metadata_rounds: cfg.mdv_rounds,
            rawfs_variant_metadata_files: cfg.vfiles,
            fio_runtime_s: cfg.runtime,
            randread_file_mib: cfg.rr_size_mib,
            seq_file_mib: cfg.seq_size_mib,
            tmpfs_size_bytes: cfg.fs_size_bytes,
            passthrough_ll_options: format!("-f -o source=DIR {}", cfg.pt_opts),
            rawfs_binary,
            rawfs_args: cfg.rawfs_args_eff.clone(),
            rules_file: cfg
                .has(Variant::Rules100)
                .then(|| b.rules_file().display().to_string()),
            rawfs_variants: Map(Variant::ALL
                .iter()
                .map(|&v| (v.name(), variant_cfg(v)))
                .collect()),
        },
        units: Map(Metric::ALL
            .iter()
            .map(|m| {
                let unit = match m.unit() {
                    "MB/s" => "MB/s (10^6 B/s)",
                    u => u,
                };
                (m.json(), unit)
            })
            .collect()),
        targets: Map(columns(cfg)
            .into_iter()
            .map(|(t, on)| (t.column(), on.then(|| figures(t))))
            .collect()),
        rounds: Map([RAWFS, NOTRACE, RULES, Target::Passthrough]
            .into_iter()
            .map(|t| (t.column(), rounds(t)))
            .collect()),
        ratios: Map(vec![
            ("rawfs/tmpfs", ratios(RAWFS, Target::Tmpfs, 2)),
            (
                "rawfs/passthrough_ll",
                ratios(RAWFS, Target::Passthrough, 2),
            ),
            (
                "passthrough_ll/tmpfs",
                ratios(Target::Passthrough, Target::Tmpfs, 2),
            ),
            ("rawfs-notrace/tmpfs", ratios(NOTRACE, Target::Tmpfs, 2)),
            (
                "rawfs-notrace/passthrough_ll",
                ratios(NOTRACE, Target::Passthrough, 2),
            ),
            ("rawfs-100rules/tmpfs", ratios(RULES, Target::Tmpfs, 2)),
            (
                "rawfs-100rules/passthrough_ll",
                ratios(RULES, Target::Passthrough, 2),
            ),
            ("rawfs/rawfs-notrace", ratios(RAWFS, NOTRACE, 4)),
            ("rawfs-100rules/rawfs", ratios(RULES, RAWFS, 4)),
        ]),
        recording_on_vs_off: Versus {
            ratio: ratios(RAWFS, NOTRACE, 4),
            diff_pct: pcts(RAWFS, NOTRACE),
            round_ratios: rr(RAWFS, NOTRACE),
        },
        rawfs_vs_passthrough_ll: RoundRatios {
            round_ratios: rr(RAWFS, Target::Passthrough),
        },
        rules_100_vs_none: Versus {
            ratio: ratios(RULES, RAWFS, 4),
            diff_pct: pcts(RULES, RAWFS),
            round_ratios: rr(RULES, RAWFS),
        },
        daemon_cpu: DaemonCpu {
            clock_ticks_per_s: info.clock_ticks,
            variants: Map(Variant::ALL.iter().map(|&v| (v.name(), cpu(v))).collect()),
        },
        trace_memory: res.trace_mem.as_ref().map(|tm| TraceMemJson {
            trace_capacity: TM_CAPACITY,
            stats: TM_STATS,
            warmup_stats: TM_WARMUP,
            path: "/mem/file",
            requests_per_stat: tm.req_per_stat,
            recorded_before: tm.on.rec0,
            recorded_after: tm.on.rec1,
            buffered_before: tm.on.buf0,
            buffered_after: tm.on.buf1,
            evicted: tm.on.evicted,
            dropped: tm.on.dropped,
            vmrss_kib_before: tm.on.rss0,
            vmrss_kib_after: tm.on.rss1,
            control_trace_capacity_0: Control {
                vmrss_kib_before: tm.off.rss0,
                vmrss_kib_after: tm.off.rss1,
                stats_per_s: tm.stats_per_s_off,
            },
            stats_per_s: tm.stats_per_s,
            bytes_per_buffered_event: tm.bytes_per_event,
            bytes_per_buffered_event_net_of_control: tm.bytes_per_event_net,
        }),
    };
    serde_json::to_string_pretty(&j).expect("results serialize") + "\n"
}
