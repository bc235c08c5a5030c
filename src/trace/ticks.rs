//! Request durations from the CPU's time-stamp counter, where the kernel trusts it.
//!
//! Every request reads the time twice: when it arrives (its timestamp) and when its answer is
//! ready (its duration). A read of CLOCK_MONOTONIC costs 25 to 50 ns in a virtual machine, a
//! read of the time-stamp counter about 10. The end of a request is read from the counter when
//! the kernel itself keeps time with it (clocksource `tsc`) and the CPU says the counter runs
//! at a constant rate that does not stop in sleep states; the rate is measured against the
//! monotonic clock at the start and measured again, over the whole time since, while the
//! mount runs. Anywhere else both ends are read from the monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counter ticks to nanoseconds.
#[derive(Debug)]
pub struct Ticks {
    /// When the counter is used: a monotonic time and the counter at the same moment.
    origin: Option<(Instant, u64)>,
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

/// Whether the counter may time requests on this machine.
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

impl Ticks {
    /// Uses the counter if this machine's kernel and CPU allow it, and then measures its rate
    /// (for 2 ms).
    pub fn detect() -> Ticks {
        Self::with_counter(counter_is_trusted())
    }

    /// Like [`Ticks::detect`], with the choice made by the caller.
    pub fn with_counter(use_counter: bool) -> Ticks {
        let ticks = Ticks {
            origin: use_counter.then(|| (Instant::now(), read_counter())),
            scale: AtomicU64::new(0),
        };
        if let Some((t0, _)) = ticks.origin {
            while t0.elapsed() < Duration::from_millis(2) {
                std::hint::spin_loop();
            }
            ticks.refine();
        }
        ticks
    }

    /// Whether durations come from the counter.
    pub fn uses_counter(&self) -> bool {
        self.origin.is_some()
    }

    /// The counter now (0 where it is not used), for [`Ticks::since`].
    pub fn now(&self) -> u64 {
        if self.origin.is_some() {
            read_counter()
        } else {
            0
        }
    }

    /// Nanoseconds since `start`, when the counter read `tick`.
    pub fn since(&self, start: Instant, tick: u64) -> u64 {
        if self.origin.is_none() {
            return start.elapsed().as_nanos() as u64;
        }
        let scale = f64::from_bits(self.scale.load(Ordering::Relaxed));
        (read_counter().saturating_sub(tick) as f64 * scale) as u64
    }

    /// Measures the rate again, over the whole time since the start: the longer the mount
    /// runs, the closer it is. The collector calls this every few milliseconds.
    pub fn refine(&self) {
        let Some((t0, c0)) = self.origin else { return };
        let ns = t0.elapsed().as_nanos() as f64;
        let ticks = read_counter().saturating_sub(c0);
        if ticks > 0 && ns > 0.0 {
            self.scale
                .store((ns / ticks as f64).to_bits(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_a_sleep_as_the_monotonic_clock_does() {
        for ticks in [Ticks::detect(), Ticks::with_counter(false)] {
            let (start, tick) = (Instant::now(), ticks.now());
            std::thread::sleep(Duration::from_millis(30));
            let ns = ticks.since(start, tick) as f64;
            let by_clock = start.elapsed().as_nanos() as f64;
            let off = (by_clock - ns).abs() / by_clock;
            assert!(off < 0.02, "{ns} ns by ticks, {by_clock} by the clock");
        }
    }
}
