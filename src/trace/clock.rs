//! The recorder's clock: nanoseconds since recording started, read twice per request (when
//! it arrives, its timestamp, and when its answer is ready, for its duration).
//!
//! A read of CLOCK_MONOTONIC costs 25 to 50 ns in a virtual machine, a read of the CPU's
//! time-stamp counter about 10. The counter is used when the kernel itself keeps time with it
//! (clocksource `tsc`) and the CPU says it runs at a constant rate that does not stop in sleep
//! states. Its rate is measured against the monotonic clock for 2 ms when the first clock of
//! the process starts (later ones start from that rate), and measured again, over the whole
//! time since the clock started, every time the collector calls [`Clock::refine`]. A new
//! measurement never makes the clock jump: it takes over from the reading the old rate gives
//! at that moment, and any difference from the monotonic clock is absorbed gradually, with a
//! time constant of [`SLEW`], running at most [`MAX_SLEW`] faster or slower. Anywhere else
//! the clock is read from CLOCK_MONOTONIC.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

/// The time constant in which a difference between the counter's time and the monotonic
/// clock is absorbed: a refinement steers the clock by the difference over this long, so
/// that the next one (a few to a few tens of milliseconds later) never overshoots.
pub const SLEW: Duration = Duration::from_secs(1);
/// The largest share by which the clock runs faster or slower than the measured rate while
/// absorbing a difference.
pub const MAX_SLEW: f64 = 1e-3;

/// Nanoseconds since a start.
#[derive(Debug)]
pub struct Clock {
    /// The monotonic time at which this clock reads 0.
    epoch: Instant,
    counter: Option<Counter>,
}

/// The conversion from counter ticks: `ns = base_ns + (tick - base_tick) * scale`, published
/// as a whole by one writer under a sequence lock.
#[derive(Debug)]
struct Counter {
    /// The counter at `epoch`: the rate is measured over all the time since.
    origin: u64,
    /// Odd while the writer changes the conversion.
    version: AtomicU64,
    base_tick: AtomicU64,
    base_ns: AtomicU64,
    /// Nanoseconds per tick, as f64 bits.
    scale: AtomicU64,
}

/// The counter.
fn read_counter() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions; every x86_64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The counter's rate in nanoseconds per tick if it may keep time on this machine, measured
/// once for the process.
fn calibration() -> Option<f64> {
    static RATE: OnceLock<Option<f64>> = OnceLock::new();
    *RATE.get_or_init(|| counter_is_trusted().then(measure_rate))
}

/// Nanoseconds per tick, over [`MEASURE`] of the monotonic clock.
fn measure_rate() -> f64 {
    let (t0, c0) = (Instant::now(), read_counter());
    while t0.elapsed() < MEASURE {
        std::hint::spin_loop();
    }
    let (ns, ticks) = (t0.elapsed().as_nanos(), read_counter().saturating_sub(c0));
    ns as f64 / ticks.max(1) as f64
}

/// How long the rate is measured at first; a clock is refined only once it has run as long.
const MEASURE: Duration = Duration::from_millis(2);

/// Whether the counter may keep time on this machine.
fn counter_is_trusted() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|w| w == flag);
    source.trim() == "tsc" && has("constant_tsc") && has("nonstop_tsc")
}

impl Counter {
    /// Nanoseconds at counter reading `tick`.
    fn ns_at(&self, tick: u64) -> u64 {
        loop {
            let v = self.version.load(Ordering::Acquire);
            let base_tick = self.base_tick.load(Ordering::Relaxed);
            let base_ns = self.base_ns.load(Ordering::Relaxed);
            let scale = f64::from_bits(self.scale.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if v & 1 == 0 && self.version.load(Ordering::Relaxed) == v {
                // A tick read just before the writer moved the base is slightly behind it.
                let ticks = tick.wrapping_sub(base_tick) as i64 as f64;
                return base_ns.saturating_add_signed((ticks * scale) as i64);
            }
            std::hint::spin_loop();
        }
    }

    /// Publishes a new conversion (one writer at a time: the caller holds `&mut`-like
    /// exclusivity by being the only one to call it).
    fn publish(&self, base_tick: u64, base_ns: u64, scale: f64) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.base_tick.store(base_tick, Ordering::Relaxed);
        self.base_ns.store(base_ns, Ordering::Relaxed);
        self.scale.store(scale.to_bits(), Ordering::Relaxed);
        self.version.store(v.wrapping_add(2), Ordering::Release);
    }
}

impl Clock {
    /// A clock reading 0 now, from the counter if this machine's kernel and CPU allow it.
    pub fn start() -> Clock {
        Self::from_rate(calibration())
    }

    /// Like [`Clock::start`], with the choice made by the caller.
    pub fn with_counter(use_counter: bool) -> Clock {
        Self::from_rate(use_counter.then(|| calibration().unwrap_or_else(measure_rate)))
    }

    /// A clock from the counter at `rate` nanoseconds per tick, or from the monotonic clock.
    fn from_rate(rate: Option<f64>) -> Clock {
        let (epoch, origin) = (Instant::now(), read_counter());
        Clock {
            epoch,
            counter: rate.map(|rate| Counter {
                origin,
                version: AtomicU64::new(0),
                base_tick: AtomicU64::new(origin),
                base_ns: AtomicU64::new(0),
                scale: AtomicU64::new(rate.to_bits()),
            }),
        }
    }

    /// Whether the clock is read from the counter.
    pub fn uses_counter(&self) -> bool {
        self.counter.is_some()
    }

    /// The monotonic time at which the clock reads 0.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the clock started.
    #[inline]
    pub fn now(&self) -> u64 {
        match &self.counter {
            Some(c) => c.ns_at(read_counter()),
            None => self.epoch.elapsed().as_nanos() as u64,
        }
    }

    /// Measures the counter's rate again, over the whole time since the start (the longer
    /// the clock runs, the closer it is), and steers the clock towards the monotonic clock.
    /// Only one thread may call this (the collector, every few milliseconds).
    pub fn refine(&self) {
        let Some(c) = &self.counter else { return };
        let (ns, tick) = (self.epoch.elapsed().as_nanos() as u64, read_counter());
        let ticks = tick.saturating_sub(c.origin);
        if ticks == 0 || ns < MEASURE.as_nanos() as u64 {
            // Too short to improve on the rate the clock started with.
            return;
        }
        let rate = ns as f64 / ticks as f64;
        let reads = c.ns_at(tick);
        // Ahead (negative) or behind (positive) the monotonic clock, absorbed over SLEW.
        let behind = ns as f64 - reads as f64;
        let slew = (behind / SLEW.as_nanos() as f64).clamp(-MAX_SLEW, MAX_SLEW);
        c.publish(tick, reads, rate * (1.0 + slew));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_a_sleep_as_the_monotonic_clock_does() {
        for clock in [Clock::start(), Clock::with_counter(false)] {
            let (start, t0) = (Instant::now(), clock.now());
            std::thread::sleep(Duration::from_millis(30));
            let ns = (clock.now() - t0) as f64;
            let by_clock = start.elapsed().as_nanos() as f64;
            let off = (by_clock - ns).abs() / by_clock;
            assert!(off < 0.02, "{ns} ns by the clock, {by_clock} by Instant");
        }
    }

    #[test]
    fn never_goes_back_and_stays_with_the_monotonic_clock_while_refined() {
        let clock = Clock::start();
        let mut last = clock.now();
        let until = Instant::now() + Duration::from_millis(60);
        while Instant::now() < until {
            clock.refine();
            for _ in 0..100 {
                let t = clock.now();
                assert!(t >= last, "{t} after {last}");
                last = t;
            }
        }
        let (ns, by_clock) = (clock.now(), clock.epoch().elapsed().as_nanos() as u64);
        let off = ns.abs_diff(by_clock);
        assert!(
            off < 200_000,
            "{ns} ns by the clock, {by_clock} since its epoch"
        );
    }

    #[test]
    fn a_reading_taken_before_a_refine_converts_near_the_new_base() {
        let Some(c) = Clock::with_counter(true).counter else {
            unreachable!()
        };
        let before = read_counter();
        c.publish(before + 1000, 5_000_000, 0.5);
        assert_eq!(c.ns_at(before), 5_000_000 - 500);
        assert_eq!(c.ns_at(before + 3000), 5_000_000 + 1000);
    }
}
