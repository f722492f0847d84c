//! Statistics and the report: percentiles of samples, the setup figures
//! every scenario reports, and the table or JSON object printed at the end.

use std::time::Duration;

use serde_json::{json, Value};

use crate::verify::Verify;

// ---------------------------------------------------------------------------
// Statistics.

/// Percentiles of a run's samples, in the unit they were summarized in.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Percentiles (nearest rank) of samples in nanoseconds, returned in `unit`
/// nanoseconds (1e3: µs, 1e6: ms).
pub fn summarize(samples: &mut [u64], unit: f64) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / unit
    };
    Some(Summary {
        count: samples.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1] as f64 / unit,
        mean: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / unit,
    })
}

pub fn summary_json(summary: Option<Summary>) -> Value {
    match summary {
        None => Value::Null,
        Some(s) => json!({
            "count": s.count, "p50": round(s.p50), "p90": round(s.p90),
            "p99": round(s.p99), "max": round(s.max), "mean": round(s.mean),
        }),
    }
}

pub fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().try_into().unwrap_or(u64::MAX)
}

/// What a scenario found: the JSON object of `--json`, the rows of the
/// table, and the delivery checks that decide the exit code.
pub struct Report {
    pub json: Value,
    pub rows: Vec<(String, String)>,
    pub verify: Verify,
}

impl Report {
    pub fn failed(&self) -> bool {
        let v = &self.verify;
        v.lost > 0 || v.duplicated > 0 || v.unexpected > 0
    }

    pub fn print(&self) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in &self.rows {
            if key.is_empty() {
                println!();
            } else {
                println!("{key:<width$}  {value}");
            }
        }
    }
}

pub fn latency_row(summary: Option<Summary>, unit: &str) -> String {
    match summary {
        None => "no samples".to_owned(),
        Some(s) => format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} {unit}  (n={})",
            s.p50, s.p90, s.p99, s.max, s.count
        ),
    }
}

/// The setup figures every scenario reports.
pub struct Setup {
    pub join: Duration,
    pub park: Duration,
    pub users: usize,
    pub pollers: usize,
    pub rss_start: Option<u64>,
    pub rss_joined: Option<u64>,
    pub rss_parked: Option<u64>,
}

impl Setup {
    fn per_poll_kib(&self) -> Option<f64> {
        let (joined, parked) = (self.rss_joined?, self.rss_parked?);
        (self.pollers > 0).then(|| (parked as f64 - joined as f64) / self.pollers as f64)
    }

    fn per_user_kib(&self) -> Option<f64> {
        let (start, parked) = (self.rss_start?, self.rss_parked?);
        (self.users > 0).then(|| (parked as f64 - start as f64) / self.users as f64)
    }

    pub fn json(&self) -> Value {
        json!({
            "users": self.users, "pollers": self.pollers,
            "join_s": round(self.join.as_secs_f64()), "park_s": round(self.park.as_secs_f64()),
            "joins_per_s": round(self.users as f64 / self.join.as_secs_f64().max(1e-3)),
            "server_rss_start_kib": self.rss_start, "server_rss_joined_kib": self.rss_joined,
            "server_rss_parked_kib": self.rss_parked,
            "server_rss_per_parked_poll_kib": self.per_poll_kib().map(round),
            "server_rss_per_user_and_poll_kib": self.per_user_kib().map(round),
        })
    }

    pub fn rows(&self, rows: &mut Vec<(String, String)>) {
        rows.push((
            "setup".into(),
            format!(
                "{} users joined in {:.1}s, {} polls parked in {:.1}s",
                self.users,
                self.join.as_secs_f64(),
                self.pollers,
                self.park.as_secs_f64()
            ),
        ));
        if let (Some(start), Some(joined), Some(parked)) =
            (self.rss_start, self.rss_joined, self.rss_parked)
        {
            rows.push((
                "server RSS".into(),
                format!(
                    "{start} KiB at start, {joined} KiB joined and caught up, {parked} KiB parked"
                ),
            ));
            if let Some(per_poll) = self.per_poll_kib() {
                rows.push((
                    "RSS per parked poll".into(),
                    format!(
                        "{per_poll:.2} KiB (connection + parked poll); {:.2} KiB with the user",
                        self.per_user_kib().unwrap_or(0.0)
                    ),
                ));
            }
        }
    }
}
