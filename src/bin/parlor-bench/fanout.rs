//! The `fanout` scenario: pollers parked in the lobby, one message at a
//! time, timed until the last poller holds it; a few floor samples between
//! two messages.

use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::Conn;
use serde_json::json;

use crate::api::{api_error, send_form};
use crate::floor::healthz;
use crate::pollers::Lobby;
use crate::report::{latency_row, nanos, round, summarize, summary_json, Report};
use crate::run::Ctx;
use crate::window::Window;
use crate::{Args, Res, EXCHANGE_LIMIT};

/// Time until the last of `--clients` parked pollers holds one lobby
/// message, at `--rate`.
pub async fn run(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let lobby = Lobby::open(ctx, args).await?;
    let (setup, sender, parked) = (lobby.setup, lobby.sender, lobby.parked);
    let (shared, pollers) = (parked.shared.clone(), setup.pollers);

    let mut send_conn = Conn::open(&ctx.target).await?;
    let mut floor_conn = Conn::open(&ctx.target).await?;
    let mut floor_ns = Vec::new();
    let rate = args.rate.unwrap_or(2.0).max(0.01);
    let period = Duration::from_secs_f64(1.0 / rate);
    let gap = args
        .gap
        .unwrap_or(Duration::from_millis(20) + Duration::from_micros(40) * pollers as u32);
    let (mut last_ns, mut first_ns, mut send_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut incomplete = 0u64;
    let mut seq = 0u64;
    let window = Window::open(ctx, args);
    let mut next = window.started;
    while window.running(seq) {
        // Every poller has re-polled, and the server had `gap` to park them.
        let wait_from = Instant::now();
        while shared.in_flight.get() < shared.count {
            if wait_from.elapsed() > EXCHANGE_LIMIT {
                return Err("pollers did not re-poll within 10s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(gap).await;
        tokio::time::sleep_until(next.into()).await;
        next = Instant::now() + period;
        // The floor, on the same kind of connection, between two fan-outs.
        for _ in 0..8 {
            let t = Instant::now();
            if healthz(&mut floor_conn).await {
                floor_ns.push(nanos(t.elapsed()));
            } else {
                shared.verify.borrow_mut().errors += 1;
            }
        }

        shared.round.set(seq);
        shared.arrived.set(0);
        shared.first.set(None);
        shared.last.set(None);
        let form = send_form(&sender.token, "lobby", &ctx.run, "f", seq);
        let t0 = Instant::now();
        let answer = send_conn.post("/send", form).await?;
        let t_sent = Instant::now();
        if answer.status != StatusCode::OK {
            return Err(api_error("/send", &answer));
        }
        seq += 1;
        let all = async {
            while shared.arrived.get() < shared.count {
                shared.all_arrived.notified().await;
            }
        };
        if tokio::time::timeout(EXCHANGE_LIMIT, all).await.is_err() {
            incomplete += 1;
        } else if let (Some(first), Some(last)) = (shared.first.get(), shared.last.get()) {
            last_ns.push(nanos(last - t0));
            first_ns.push(nanos(first - t0));
            send_ns.push(nanos(t_sent - t0));
        }
        shared.round.set(u64::MAX);
        let last = last_ns.last().map_or(0.0, |&ns| ns as f64 / 1e6);
        ctx.progress.measuring(
            "fanout",
            &window,
            format_args!("{seq} messages to {pollers}  last {last:.1} ms"),
        );
    }
    let (elapsed, server_cpu) = window.close(ctx);
    ctx.progress
        .done(&format!("fanout: {seq} messages to {pollers} polls"));
    // Let stragglers arrive before counting what was lost.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deliveries = shared.deliveries.get();
    let verify = parked.unpark(seq).await;

    let last_s = summarize(&mut last_ns, 1e6);
    let first_s = summarize(&mut first_ns, 1e6);
    let send_s = summarize(&mut send_ns, 1e6);
    let floor_s = summarize(&mut floor_ns, 1e3);
    let floors = match (last_s, floor_s) {
        (Some(l), Some(f)) if f.p50 > 0.0 => Some(l.p50 * 1e3 / f.p50),
        _ => None,
    };
    let json = json!({
        "scenario": "fanout", "clients": pollers, "messages": seq, "incomplete": incomplete,
        "duration_s": round(elapsed.as_secs_f64()), "rate": rate, "gap_ms": round(gap.as_secs_f64() * 1e3),
        "last_ms": summary_json(last_s), "first_ms": summary_json(first_s), "send_ms": summary_json(send_s),
        "floor_us": summary_json(floor_s), "last_p50_in_floors": floors.map(round),
        "deliveries": deliveries, "server_cpu_s": server_cpu.map(round),
        "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push(("until the last has it".into(), latency_row(last_s, "ms")));
    rows.push(("until the first has it".into(), latency_row(first_s, "ms")));
    rows.push(("/send answered".into(), latency_row(send_s, "ms")));
    rows.push(("floor (GET /healthz)".into(), latency_row(floor_s, "µs")));
    if let Some(floors) = floors {
        rows.push((
            "last p50 / floor p50".into(),
            format!(
                "{floors:.0}× ({:.2} floors per poll)",
                floors / pollers as f64
            ),
        ));
    }
    rows.push((
        "messages".into(),
        format!("{seq} to {pollers} polls each ({deliveries} deliveries, {incomplete} incomplete)"),
    ));
    if let Some(cpu) = server_cpu {
        rows.push((
            "server CPU".into(),
            format!(
                "{cpu:.2} s ({:.0} deliveries per CPU-second)",
                deliveries as f64 / cpu.max(1e-9)
            ),
        ));
    }
    Ok(Report { json, rows, verify })
}
