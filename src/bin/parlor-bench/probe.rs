//! /proc readings: CPU time and RSS of the server and of this process.

use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        at: Instant::now(),
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        rss_kib,
    })
}

/// Reads the server's figures (with `--server-pid`) and this process's.
pub struct Probe {
    /// The server's PIDs, as their /proc directory names: one, or every
    /// node of a cluster and its redis-server, added up.
    pub server: Vec<String>,
}

impl Probe {
    /// The servers' CPU time and RSS added up; None without `--server-pid`
    /// or when one of them cannot be read.
    pub fn server(&self) -> Option<ProcSample> {
        let mut samples = self.server.iter().map(|pid| proc_sample(pid));
        let first = samples.next()??;
        samples.try_fold(first, |sum, sample| {
            let sample = sample?;
            Some(ProcSample {
                at: sample.at,
                cpu_seconds: sum.cpu_seconds + sample.cpu_seconds,
                rss_kib: sum.rss_kib + sample.rss_kib,
            })
        })
    }

    pub fn me(&self) -> Option<ProcSample> {
        proc_sample("self")
    }
}

/// CPU seconds spent between two samples, if both were read.
pub fn cpu_delta(start: Option<ProcSample>, end: Option<ProcSample>) -> Option<f64> {
    Some(end?.cpu_seconds - start?.cpu_seconds)
}
