//! The machine's CPU use over a measured run, from `/proc/stat` (Linux).
//!
//! Load tools here run on the same machine as the server, and on a virtual machine
//! the host may take CPU time away (`steal`). Reports state both, so a figure can be
//! read with its conditions: a run with the cores saturated, or one where the host
//! took a tenth of the time, is not comparable with a quiet one. A run's window
//! ([`super::cpu::Window`]) takes these samples with the server's and its own.

use serde::Serialize;

/// Cumulative CPU time of all cores, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    busy: u64,
    steal: u64,
    total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat` (user nice system idle iowait irq
/// softirq steal ...; guest time is already counted in user and nice).
fn parse(stat: &str) -> Option<Sample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let (idle, steal) = (v[3] + v[4], v[7]);
    Some(Sample { busy: total - idle - steal, steal, total })
}

/// The machine's CPU counters now; `None` where `/proc/stat` is unavailable.
pub(super) fn sample() -> Option<Sample> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Shares of all cores' time during a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MachineCpu {
    /// Time the cores were busy (any process), in percent.
    pub busy_percent: f64,
    /// Time the hypervisor ran something else on this machine's cores, in percent.
    pub steal_percent: f64,
}

impl MachineCpu {
    pub(super) fn between(a: Sample, b: Sample) -> Option<Self> {
        let total = b.total.checked_sub(a.total).filter(|t| *t > 0)? as f64;
        let pct = |x: u64, y: u64| y.saturating_sub(x) as f64 * 100.0 / total;
        Some(Self { busy_percent: pct(a.busy, b.busy), steal_percent: pct(a.steal, b.steal) })
    }

    /// How a report shows it: `busy 93.1%, host steal 2.4% (all cores)`.
    pub fn describe(cpu: Option<Self>) -> String {
        match cpu {
            Some(c) => format!("busy {:.1}%, host steal {:.1}% (all cores)", c.busy_percent, c.steal_percent),
            None => "n/a (no /proc/stat)".into(),
        }
    }

    /// The report row `("machine CPU", describe(cpu))`.
    pub fn row(cpu: Option<Self>) -> (String, String) {
        ("machine CPU".into(), Self::describe(cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_steal_are_shares_of_all_time() {
        let a = parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n").unwrap();
        assert_eq!(a, Sample { busy: 150, steal: 0, total: 1000 });
        let b = parse("cpu  400 0 100 1200 100 0 100 100 0 0\n").unwrap();
        let cpu = MachineCpu::between(a, b).unwrap();
        // 1,000 ticks: 450 busy (300 user, 50 system, 100 softirq), 100 steal.
        assert_eq!(cpu.busy_percent, 45.0);
        assert_eq!(cpu.steal_percent, 10.0);
        assert!(MachineCpu::between(b, b).is_none(), "no time passed");
        assert!(parse("cpu  1 2 3\n").is_none());
        assert!(parse("intr 5\n").is_none());
    }
}
