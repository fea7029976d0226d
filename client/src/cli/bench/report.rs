//! The figures a bench run prints: as text for a person, or as one JSON object for a script.

use std::time::Duration;

use serde::Serialize;

use super::worker::Tally;
use crate::cli::format;

#[derive(Debug, Serialize)]
pub struct Report {
    pub volume: String,
    pub rw: &'static str,
    pub bs: u64,
    pub iodepth: u32,
    pub runtime_s: f64,
    pub seed: u64,
    /// Operations that succeeded.
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Operations that failed (after the client's retries).
    pub errors: u64,
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mbps: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub verify: bool,
    pub blocks_checked: u64,
    pub verify_mismatches: u64,
}

/// What the run was asked to do.
pub struct Setup {
    pub volume: String,
    pub rw: &'static str,
    pub bs: u64,
    pub iodepth: u32,
    pub seed: u64,
    pub verify: bool,
}

impl Report {
    pub fn new(setup: Setup, tally: &Tally, elapsed: Duration) -> Report {
        let ops = tally.reads + tally.writes;
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let latency = &tally.latency_us;
        let quantile = |q| {
            if ops == 0 {
                0
            } else {
                latency.value_at_quantile(q)
            }
        };
        Report {
            volume: setup.volume,
            rw: setup.rw,
            bs: setup.bs,
            iodepth: setup.iodepth,
            runtime_s: round(seconds, 3),
            seed: setup.seed,
            ops,
            reads: tally.reads,
            writes: tally.writes,
            errors: tally.errors,
            iops: round(ops as f64 / seconds, 1),
            mbps: round((ops * setup.bs) as f64 / 1e6 / seconds, 2),
            latency_us_p50: quantile(0.5),
            latency_us_p99: quantile(0.99),
            latency_us_p999: quantile(0.999),
            latency_us_max: if ops == 0 { 0 } else { latency.max() },
            verify: setup.verify,
            blocks_checked: tally.blocks_checked,
            verify_mismatches: tally.mismatches,
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} on volume {}: bs {}, iodepth {}, {:.1}s, seed {}\n",
            self.rw,
            self.volume,
            format::size(self.bs),
            self.iodepth,
            self.runtime_s,
            self.seed
        );
        out.push_str(&format!(
            "  ops         {} ({} reads, {} writes), {} errors\n",
            self.ops, self.reads, self.writes, self.errors
        ));
        out.push_str(&format!("  IOPS        {:.0}\n", self.iops));
        out.push_str(&format!("  throughput  {:.2} MB/s\n", self.mbps));
        out.push_str(&format!(
            "  latency     p50 {}  p99 {}  p999 {}  max {}\n",
            format::latency_us(self.latency_us_p50),
            format::latency_us(self.latency_us_p99),
            format::latency_us(self.latency_us_p999),
            format::latency_us(self.latency_us_max),
        ));
        if self.verify {
            out.push_str(&format!(
                "  verify      {} blocks checked, {} mismatches\n",
                self.blocks_checked, self.verify_mismatches
            ));
        }
        out
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        let mut tally = Tally::new();
        for us in 1..=1000 {
            tally.latency_us.record(us).expect("in bounds");
        }
        tally.writes = 1000;
        tally
    }

    fn setup(verify: bool) -> Setup {
        Setup {
            volume: "v".into(),
            rw: "randwrite",
            bs: 4096,
            iodepth: 32,
            seed: 42,
            verify,
        }
    }

    #[test]
    fn figures_come_from_the_tally_and_the_elapsed_time() {
        let report = Report::new(setup(false), &tally(), Duration::from_secs(2));
        assert_eq!(report.ops, 1000);
        assert_eq!(report.iops, 500.0);
        assert_eq!(report.mbps, 2.05);
        assert_eq!(report.latency_us_p50, 500);
        assert_eq!(report.latency_us_p99, 990);
        assert_eq!(report.latency_us_max, 1000);
        let json = serde_json::to_value(&report).expect("serializes");
        for key in [
            "iops",
            "mbps",
            "latency_us_p50",
            "latency_us_p99",
            "latency_us_p999",
            "latency_us_max",
            "rw",
            "bs",
            "iodepth",
            "runtime_s",
            "ops",
            "errors",
            "seed",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn the_text_report_names_every_figure() {
        let text = Report::new(setup(true), &tally(), Duration::from_secs(2)).render();
        assert_eq!(
            text,
            "randwrite on volume v: bs 4k, iodepth 32, 2.0s, seed 42\n\
             \x20 ops         1000 (0 reads, 1000 writes), 0 errors\n\
             \x20 IOPS        500\n\
             \x20 throughput  2.05 MB/s\n\
             \x20 latency     p50 500us  p99 990us  p999 999us  max 1.00ms\n\
             \x20 verify      0 blocks checked, 0 mismatches\n"
        );
    }

    #[test]
    fn an_empty_run_reports_zeroes() {
        let report = Report::new(setup(false), &Tally::new(), Duration::from_secs(1));
        assert_eq!(report.latency_us_max, 0);
        assert_eq!(report.iops, 0.0);
    }
}
