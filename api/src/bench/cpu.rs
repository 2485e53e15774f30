//! What a measured run cost in CPU: the whole machine's (busy and steal shares, see
//! [`super::machine`]), the server's (its `process_cpu_seconds_total` in `/metrics`)
//! and the load tool's own, in cores and per unit of work (request, event, delivery).
//!
//! With the load tool on the server's machine both draw on the same cores, so the
//! server's share per unit is what an optimisation has to cut, and the two together
//! bound the rate the machine can reach.

use std::time::Duration;

use reqwest::{Client, Url};

use super::machine::{self, MachineCpu};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The server's CPU counter in `/metrics`.
const SERVER_CPU_COUNTER: &str = "process_cpu_seconds_total";

/// CPU used so far, at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// All cores' counters; `None` where `/proc/stat` is unavailable.
    machine: Option<machine::Sample>,
    /// `None` when `/metrics` was unreachable, refused or had no such counter.
    server: Option<f64>,
    /// `None` where the platform does not tell.
    own: Option<f64>,
}

async fn server_cpu_seconds(client: &Client, metrics: &Url) -> Option<f64> {
    let resp = client.get(metrics.clone()).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    super::parse_gauge(&text, SERVER_CPU_COUNTER).filter(|v| v.is_finite() && *v >= 0.0)
}

async fn sample(client: &Client, metrics: &Url) -> Sample {
    let server = server_cpu_seconds(client, metrics).await;
    let own = metrics_process::collector::collect().cpu_seconds_total;
    Sample { at: Instant::now(), machine: machine::sample(), server, own }
}

/// CPU per unit of work (a request, an event, a delivery), in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerUnit {
    /// What was counted: `request`, `event`, `delivery`.
    pub unit: &'static str,
    /// Server CPU time per unit.
    pub server_us: Option<f64>,
    /// Load tool CPU time per unit.
    pub load_tool_us: Option<f64>,
}

/// CPU used during the measured part of a run. In JSON: `server_cores`,
/// `load_tool_cores`, and per unit `server_us_per_<unit>` and `load_tool_us_per_<unit>`
/// (absent when unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuCost {
    /// Server CPU time divided by wall time: 1.0 is one core busy all the time.
    pub server_cores: Option<f64>,
    /// The load tool's own CPU time divided by wall time.
    pub load_tool_cores: Option<f64>,
    /// Per unit of work, in the order the units were given.
    pub per: Vec<PerUnit>,
}

impl Serialize for CpuCost {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("server_cores", &self.server_cores)?;
        map.serialize_entry("load_tool_cores", &self.load_tool_cores)?;
        for p in &self.per {
            if let Some(v) = p.server_us {
                map.serialize_entry(&format!("server_us_per_{}", p.unit), &v)?;
            }
            if let Some(v) = p.load_tool_us {
                map.serialize_entry(&format!("load_tool_us_per_{}", p.unit), &v)?;
            }
        }
        map.end()
    }
}

impl CpuCost {
    /// The cost between two samples, for `units` (name and how many were completed
    /// between them); `None` when no time passed.
    fn between(a: Sample, b: Sample, units: &[(&'static str, u64)]) -> Option<Self> {
        let wall = b.at.checked_duration_since(a.at).filter(|d| *d > Duration::ZERO)?.as_secs_f64();
        let used = |x: Option<f64>, y: Option<f64>| Some((y? - x?).max(0.0));
        let per = |cpu: Option<f64>, n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
        let (server, own) = (used(a.server, b.server), used(a.own, b.own));
        Some(Self {
            server_cores: server.map(|c| c / wall),
            load_tool_cores: own.map(|c| c / wall),
            per: units
                .iter()
                .map(|&(unit, n)| PerUnit { unit, server_us: per(server, n), load_tool_us: per(own, n) })
                .collect(),
        })
    }

    /// Report rows: `server CPU  1.12 cores, 39.5 µs/request, 0.40 µs/event` and the
    /// load tool's.
    pub fn rows(cost: Option<&Self>) -> [(&'static str, String); 2] {
        let describe = |cores: Option<f64>, per: &dyn Fn(&PerUnit) -> Option<f64>| {
            let cores = cores?;
            let mut parts = vec![format!("{cores:.2} cores")];
            for p in cost.map_or(&[][..], |c| &c.per[..]) {
                if let Some(us) = per(p) {
                    parts.push(if us < 10.0 {
                        format!("{us:.2} µs/{}", p.unit)
                    } else {
                        format!("{us:.1} µs/{}", p.unit)
                    });
                }
            }
            Some(parts.join(", "))
        };
        let server = describe(cost.and_then(|c| c.server_cores), &|p| p.server_us)
            .unwrap_or_else(|| format!("n/a (no {SERVER_CPU_COUNTER} in /metrics)"));
        let load_tool = describe(cost.and_then(|c| c.load_tool_cores), &|p| p.load_tool_us).unwrap_or("n/a".into());
        [("server CPU", server), ("load tool CPU", load_tool)]
    }
}

/// The CPU of a measured run: the machine's shares and the server's and load tool's cost.
#[derive(Debug, Clone)]
pub struct RunCpu {
    /// Busy and steal shares of all cores.
    pub machine: Option<MachineCpu>,
    /// Server and load tool CPU, in cores and per unit of work.
    pub cost: Option<CpuCost>,
}

/// Samples every CPU counter at a start instant and again at [`Window::finish`].
pub struct Window {
    from: Instant,
    first: JoinHandle<Sample>,
    client: Client,
    metrics: Url,
}

impl Window {
    /// Takes the first sample at `from` (at once if it has passed), reading the
    /// server's counter from `metrics` with `client`.
    pub fn from(from: Instant, client: Client, metrics: Url) -> Self {
        let first = tokio::spawn({
            let (client, metrics) = (client.clone(), metrics.clone());
            async move {
                tokio::time::sleep_until(from).await;
                sample(&client, &metrics).await
            }
        });
        Self { from, first, client, metrics }
    }

    /// The CPU used between the start and now, the cost per unit of work done in that
    /// time (`units`: name and count); nothing when the run ended before the window
    /// started.
    pub async fn finish(self, units: &[(&'static str, u64)]) -> RunCpu {
        let nothing = RunCpu { machine: None, cost: None };
        if Instant::now() < self.from {
            self.first.abort();
            return nothing;
        }
        let Ok(first) = self.first.await else { return nothing };
        let last = sample(&self.client, &self.metrics).await;
        RunCpu {
            machine: first.machine.zip(last.machine).and_then(|(a, b)| MachineCpu::between(a, b)),
            cost: CpuCost::between(first, last, units),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, server: Option<f64>, own: Option<f64>) -> Sample {
        Sample { at: base + Duration::from_millis(ms), machine: None, server, own }
    }

    #[test]
    fn cost_is_cpu_over_wall_time_and_over_units() {
        let t = Instant::now();
        let a = at(t, 0, Some(10.0), Some(1.0));
        let b = at(t, 2_000, Some(12.5), Some(2.0));
        // 2 s of wall time: 2.5 s of server CPU, 1 s of load tool CPU; 50,000 requests
        // carrying 5,000,000 events.
        let c = CpuCost::between(a, b, &[("request", 50_000), ("event", 5_000_000)]).unwrap();
        assert_eq!((c.server_cores, c.load_tool_cores), (Some(1.25), Some(0.5)));
        assert_eq!(c.per[0], PerUnit { unit: "request", server_us: Some(50.0), load_tool_us: Some(20.0) });
        assert_eq!(c.per[1], PerUnit { unit: "event", server_us: Some(0.5), load_tool_us: Some(0.2) });
        let rows = CpuCost::rows(Some(&c));
        assert_eq!(rows[0].1, "1.25 cores, 50.0 µs/request, 0.50 µs/event");
        assert_eq!(rows[1].1, "0.50 cores, 20.0 µs/request, 0.20 µs/event");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"server_cores": 1.25, "load_tool_cores": 0.5,
                "server_us_per_request": 50.0, "load_tool_us_per_request": 20.0,
                "server_us_per_event": 0.5, "load_tool_us_per_event": 0.2})
        );
    }

    #[test]
    fn missing_counters_and_empty_windows_say_so() {
        let t = Instant::now();
        assert!(CpuCost::between(at(t, 5, Some(1.0), None), at(t, 5, Some(2.0), None), &[]).is_none());
        let c = CpuCost::between(at(t, 0, None, Some(1.0)), at(t, 1_000, Some(3.0), Some(1.5)), &[("event", 0)]);
        let c = c.unwrap();
        assert_eq!(c.server_cores, None, "no first server sample");
        assert_eq!(c.load_tool_cores, Some(0.5));
        assert_eq!(c.per[0], PerUnit { unit: "event", server_us: None, load_tool_us: None }, "nothing done");
        let rows = CpuCost::rows(Some(&c));
        assert_eq!(rows[0].1, format!("n/a (no {SERVER_CPU_COUNTER} in /metrics)"));
        assert_eq!(rows[1].1, "0.50 cores");
        assert_eq!(CpuCost::rows(None)[1].1, "n/a");
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"server_cores": null, "load_tool_cores": 0.5})
        );
    }

    #[tokio::test]
    async fn a_window_on_this_machine() {
        // No server listens on port 9: the machine's and this process's figures only.
        let (client, metrics) =
            (super::super::setup_client().unwrap(), Url::parse("http://127.0.0.1:9/metrics").unwrap());
        let window = Window::from(Instant::now(), client.clone(), metrics.clone());
        // Enough ticks (10 ms each) for a figure.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let cpu = window.finish(&[]).await.machine;
        if std::path::Path::new("/proc/stat").exists() {
            let c = cpu.expect("a figure after 60 ms");
            assert!((0.0..=100.0).contains(&c.busy_percent) && (0.0..=100.0).contains(&c.steal_percent));
        }
        let later = Window::from(Instant::now() + std::time::Duration::from_secs(60), client, metrics);
        assert!(later.finish(&[]).await.machine.is_none(), "a window that never started has no figure");
    }

    #[tokio::test]
    async fn this_process_reports_its_own_cpu_time() {
        let cpu = || metrics_process::collector::collect().cpu_seconds_total.expect("Linux tells the CPU time");
        let first = cpu();
        // Burn CPU until the counter (10 ms clock ticks) moves; a busy test machine may
        // hold this thread back for a while, so the bound is generous.
        let began = std::time::Instant::now();
        let mut x = 0u64;
        let mut second = first;
        while second <= first && began.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            second = cpu();
        }
        assert!(second > first, "{first} → {second} after {:?} of spinning", began.elapsed());
    }
}
