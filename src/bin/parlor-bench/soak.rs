//! The `soak` scenario: polls held for the whole run and re-issued on every
//! answer, each answer classified as on time, late, early or woken, with
//! the server's RSS and CPU sampled; optionally lobby messages at `--rate`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::Conn;
use serde_json::json;

use crate::api::send_form;
use crate::pollers::{Lobby, SoakCounts, ON_TIME_TOLERANCE, POLL_TIMEOUT_JITTER};
use crate::report::{round, Report};
use crate::run::Ctx;
use crate::window::Window;
use crate::{Args, Res};

/// `--clients` polls held for `--duration`: how their timeouts came, and
/// the server's RSS and CPU over time.
pub async fn run(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let rate = args.rate.unwrap_or(0.0);
    let lobby = Lobby::open(ctx, args).await?;
    let (setup, sender, parked) = (lobby.setup, lobby.sender, lobby.parked);
    let (shared, pollers) = (parked.shared.clone(), setup.pollers);
    *shared.soak.borrow_mut() = SoakCounts::default();
    shared.counting_since.set(Some(Instant::now()));

    let mut send_conn = Conn::open(&ctx.target).await?;
    let window = Window::open(ctx, args);
    let (started, deadline) = (window.started, window.deadline);
    let mut samples = Vec::new();
    let first = window.cpu_start;
    if let Some(s) = first {
        samples.push(json!([0.0, s.rss_kib, 0.0]));
    }
    let mut next_sample = started + args.sample_interval;
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next_send = started;
    let mut seq = 0u64;
    let mut max_rss = first.map_or(0, |s| s.rss_kib);
    while Instant::now() < deadline {
        let wake_at = match period {
            Some(_) if seq < window.max => next_send.min(next_sample),
            _ => next_sample,
        }
        .min(deadline);
        tokio::time::sleep_until(wake_at.into()).await;
        let now = Instant::now();
        if let Some(period) = period {
            if now >= next_send && seq < window.max {
                let form = send_form(&sender.token, "lobby", &ctx.run, "f", seq);
                match send_conn.post("/send", form).await {
                    Ok(a) if a.status == StatusCode::OK => seq += 1,
                    _ => shared.verify.borrow_mut().errors += 1,
                }
                next_send += period;
            }
        }
        if now >= next_sample {
            next_sample += args.sample_interval;
            if let (Some(s), Some(f)) = (ctx.probe.server(), first) {
                max_rss = max_rss.max(s.rss_kib);
                samples.push(json!([
                    round((s.at - started).as_secs_f64()),
                    s.rss_kib,
                    round(s.cpu_seconds - f.cpu_seconds)
                ]));
            }
        }
        let counts = *shared.soak.borrow();
        ctx.progress.measuring(
            "soak",
            &window,
            format_args!(
                "{}/{} polls out  on time {}  late {}  woken {}",
                shared.in_flight.get(),
                shared.count,
                counts.on_time,
                counts.late,
                counts.woken
            ),
        );
    }
    let (elapsed, server_cpu) = window.close(ctx);
    let counts = *shared.soak.borrow();
    let in_flight_at_end = shared.in_flight.get();
    ctx.progress
        .done(&format!("soak: {:.0}s done", elapsed.as_secs_f64()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deliveries = shared.deliveries.get();
    let verify = parked.unpark(seq).await;
    let json = json!({
        "scenario": "soak", "clients": pollers, "duration_s": round(elapsed.as_secs_f64()),
        "poll_timeout_ms": ctx.poll_timeout.get().as_millis() as u64,
        "answers": { "on_time": counts.on_time, "late": counts.late, "early": counts.early,
                     "woken": counts.woken, "from_setup": counts.from_setup, "worst_overrun_ms": round(counts.worst_overrun.as_secs_f64() * 1e3) },
        "polls_out_at_end": in_flight_at_end, "messages": seq, "deliveries": deliveries,
        "server_cpu_s": server_cpu.map(round), "server_rss_max_kib": max_rss,
        "server_rss_samples": samples, "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push((
        "timed-out answers".into(),
        format!(
            "{} on time ({:.0}–100 % of the {:?} poll timeout, ±{}s), {} late (worst +{:.0} ms), {} early; {} to polls issued during setup, not counted",
            counts.on_time,
            100.0 * (1.0 - POLL_TIMEOUT_JITTER),
            ctx.poll_timeout.get(),
            ON_TIME_TOLERANCE.as_secs(),
            counts.late,
            counts.worst_overrun.as_secs_f64() * 1e3,
            counts.early,
            counts.from_setup
        ),
    ));
    rows.push((
        "woken answers".into(),
        format!(
            "{} ({seq} lobby messages, {deliveries} deliveries)",
            counts.woken
        ),
    ));
    rows.push((
        "polls out at the end".into(),
        format!("{in_flight_at_end}/{pollers}"),
    ));
    if let Some(cpu) = server_cpu {
        rows.push((
            "server".into(),
            format!(
                "{cpu:.2} CPU-s over {:.0}s; RSS max {max_rss} KiB, {} samples",
                elapsed.as_secs_f64(),
                samples.len()
            ),
        ));
    }
    Ok(Report { json, rows, verify })
}
