//! The floor every scenario is compared with: a bare `GET /healthz` round
//! trip on the same kind of kept-alive connection, one at a time (latency,
//! fanout) or closed-loop on many connections (throughput).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::Conn;
use tokio::task::JoinSet;

use crate::probe::cpu_delta;
use crate::run::Ctx;
use crate::Res;

/// One bare round trip; false if it failed. The caller times it.
pub async fn healthz(conn: &mut Conn) -> bool {
    matches!(
        conn.get("/healthz".to_owned()).await,
        Ok(answer) if answer.status == StatusCode::OK
    )
}

/// The floor rate that throughput is compared with.
pub struct FloorRate {
    pub requests: u64,
    pub seconds: f64,
    pub cpu: Option<f64>,
}

impl FloorRate {
    pub fn per_s(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    pub fn per_cpu_s(&self) -> Option<f64> {
        self.cpu.map(|cpu| self.requests as f64 / cpu.max(1e-9))
    }
}

/// Closed-loop `GET /healthz` on `connections` connections for `length`.
pub async fn floor_throughput(
    ctx: &Rc<Ctx>,
    connections: usize,
    length: Duration,
) -> Res<FloorRate> {
    let mut conns = Vec::with_capacity(connections);
    for n in 0..connections {
        conns.push(Conn::open(ctx.node(n)).await?);
    }
    let requests = Rc::new(Cell::new(0u64));
    let cpu_start = ctx.probe.server();
    let started = Instant::now();
    let deadline = started + length;
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (requests, ctx) = (requests.clone(), ctx.clone());
        set.spawn_local(async move {
            while Instant::now() < deadline {
                if healthz(&mut conn).await {
                    requests.set(requests.get() + 1);
                } else {
                    ctx.verify.borrow_mut().errors += 1;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_start, ctx.probe.server());
    ctx.progress.done(&format!(
        "floor: {} GET /healthz in {seconds:.1}s on {connections} connections",
        requests.get()
    ));
    Ok(FloorRate {
        requests: requests.get(),
        seconds,
        cpu,
    })
}
