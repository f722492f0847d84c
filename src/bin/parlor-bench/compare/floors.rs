//! Floors: a bare kept-alive round trip to nginx's `return 200`, to a
//! minimal hyper service and to the server's own cheapest answer, in
//! alternating rounds, so that what the machine costs per round trip at this
//! moment is measured beside every figure.

use std::time::{Duration, Instant};

use parlor::client::{Conn, Target};
use serde_json::{json, Value};

use super::stats::{micros, percentile};
use crate::Res;

/// One floor target: its name, where it is and the path it answers.
pub struct FloorTarget {
    pub name: String,
    pub target: Target,
    pub path: String,
}

/// One round trip; its time, or an error if it did not answer 200.
pub async fn round_trip(conn: &mut Conn, path: &str) -> Res<Duration> {
    let started = Instant::now();
    let answer = conn.get(path.to_owned()).await?;
    let took = started.elapsed();
    if !answer.status.is_success() {
        return Err(format!("floor {path}: {}", answer.status).into());
    }
    Ok(took)
}

/// `rounds` rounds of `samples` round trips to each target in turn (after
/// as many unmeasured ones to warm up); per target, the p50 of each round
/// and of all.
pub async fn measure(targets: &[FloorTarget], rounds: usize, samples: usize) -> Res<Value> {
    let mut conns = Vec::new();
    for target in targets {
        let mut conn = Conn::open(&target.target).await?;
        for _ in 0..samples {
            round_trip(&mut conn, &target.path).await?;
        }
        conns.push(conn);
    }
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (n, target) in targets.iter().enumerate() {
            let mut times = Vec::with_capacity(samples);
            for _ in 0..samples {
                times.push(round_trip(&mut conns[n], &target.path).await?);
            }
            times.sort();
            per_round[n].push(micros(percentile(&times, 0.5)));
            all[n].extend(times);
        }
    }
    let mut out = serde_json::Map::new();
    for (n, target) in targets.iter().enumerate() {
        all[n].sort();
        out.insert(
            target.name.clone(),
            json!({
                "path": target.path,
                "p50_us": micros(percentile(&all[n], 0.5)),
                "p99_us": micros(percentile(&all[n], 0.99)),
                "round_p50s_us": per_round[n],
                "samples": all[n].len(),
            }),
        );
    }
    Ok(Value::Object(out))
}
