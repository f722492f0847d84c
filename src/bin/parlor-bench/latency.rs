//! The `latency` scenario: one sender, one measured receiver in a dialog,
//! the other pollers parked; every wake sample paired with a floor sample.

use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::Conn;
use serde_json::json;

use crate::api::{api_error, send_form};
use crate::dialog::{self, Inbox};
use crate::floor::healthz;
use crate::pollers::park;
use crate::report::{latency_row, nanos, round, summarize, summary_json, Report, Summary};
use crate::run::Ctx;
use crate::users::setup_users;
use crate::verify::Verify;
use crate::window::Window;
use crate::{Args, Res, EXCHANGE_LIMIT};

/// Wake latency of one receiver's parked poll, against the floor, with
/// `--clients - 1` other polls parked.
pub async fn run(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pollers = args.clients.max(1);
    let mut setup = setup_users(ctx, args, pollers + 1, pollers).await?;
    let members = ctx.members.borrow().clone();
    let (sender, receiver, others) = (&members[0], &members[1], &members[2..]);

    let mut send_conn = Conn::open(ctx.sender_node(0)).await?;
    let recv_conn = Conn::open(ctx.receiver_node(0)).await?;
    let mut floor_conn = Conn::open(&ctx.target).await?;
    // The dialog: messages in it reach the receiver only, not the others.
    let dialog = dialog::open(&mut send_conn, sender, receiver).await?;
    receiver.kept.set(false);

    let parked = park(ctx, others, None, &mut setup, args.setup_timeout).await?;

    let rate = args.rate.unwrap_or(200.0).max(0.1);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut verify = Verify::default();
    let mut wake = Vec::with_capacity((args.duration.as_secs_f64() * rate) as usize + 16);
    let mut floor = Vec::with_capacity(wake.capacity());
    let mut inbox = Inbox::new(recv_conn, receiver, "l".to_owned());
    let mut seq = 0u64;
    let window = Window::open(ctx, args);
    let mut next = window.started;
    while window.running(seq) {
        // The floor: a bare round trip on a kept-alive connection.
        let t = Instant::now();
        if !healthz(&mut floor_conn).await {
            verify.errors += 1;
        } else if t - window.started >= args.warmup {
            floor.push(nanos(t.elapsed()));
        }
        // Park the receiver's poll and keep it parked until the next tick;
        // the receive loop reads (and skips) anything else that wakes it.
        next = (next + period).max(Instant::now() + Duration::from_millis(1));
        let mut receive = Box::pin(inbox.until(&ctx.run, seq, &mut verify));
        let early = tokio::select! {
            result = &mut receive => Some(result),
            _ = tokio::time::sleep_until(next.into()) => None,
        };
        let (t0, sent, received) = match early {
            // Only an error can end the receive loop before the send.
            Some(result) => (Instant::now(), None, Ok(result)),
            None => {
                let form = send_form(&sender.token, &dialog, &ctx.run, "l", seq);
                let t0 = Instant::now();
                let (sent, received) = tokio::join!(
                    send_conn.post("/send", form),
                    tokio::time::timeout(EXCHANGE_LIMIT, &mut receive)
                );
                (t0, Some(sent), received)
            }
        };
        drop(receive);
        match sent {
            None => {}
            Some(Ok(a)) if a.status == StatusCode::OK => seq += 1,
            Some(Ok(a)) => return Err(api_error("/send", &a)),
            Some(Err(error)) => return Err(error),
        }
        match received {
            Ok(Ok(at)) => {
                if t0 - window.started >= args.warmup {
                    wake.push(nanos(at - t0));
                }
            }
            Ok(Err(_)) => {
                verify.errors += 1;
                if inbox.conn.is_closed() {
                    inbox.conn = Conn::open(ctx.receiver_node(0)).await?;
                }
            }
            Err(_) => {
                // Timed out: the poll was dropped mid-flight; start afresh.
                verify.errors += 1;
                inbox.conn = Conn::open(ctx.receiver_node(0)).await?;
            }
        }
        if seq.is_multiple_of(64) {
            let n = wake.len();
            let last = wake.last().map_or(0.0, |&ns| ns as f64 / 1e3);
            ctx.progress.measuring(
                "latency",
                &window,
                format_args!("{n} samples  last {last:.0} µs"),
            );
        }
    }
    let (elapsed, server_cpu) = window.close(ctx);
    ctx.progress.done(&format!(
        "latency: {seq} messages in {:.1}s",
        elapsed.as_secs_f64()
    ));
    verify.lost += seq.saturating_sub(inbox.expect);
    verify.add(&parked.unpark(0).await);

    let wake_s = summarize(&mut wake, 1e3);
    let floor_s = summarize(&mut floor, 1e3);
    let ratio = |f: fn(&Summary) -> f64| match (wake_s, floor_s) {
        (Some(w), Some(fl)) if f(&fl) > 0.0 => Some(f(&w) / f(&fl)),
        _ => None,
    };
    let (r50, r99) = (ratio(|s| s.p50), ratio(|s| s.p99));
    let json = json!({
        "scenario": "latency", "clients": pollers, "parked_others": others.len(),
        "duration_s": round(elapsed.as_secs_f64()), "rate": rate, "messages": seq,
        "wake_us": summary_json(wake_s), "floor_us": summary_json(floor_s),
        "ratio_p50": r50.map(round), "ratio_p99": r99.map(round),
        "ratio_p99_to_floor_p50": match (wake_s, floor_s) { (Some(w), Some(f)) => Some(round(w.p99 / f.p50)), _ => None },
        "server_cpu_s": server_cpu.map(round),
        "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push(("floor (GET /healthz)".into(), latency_row(floor_s, "µs")));
    rows.push(("wake (/send → answer)".into(), latency_row(wake_s, "µs")));
    rows.push((
        "wake / floor".into(),
        format!(
            "p50 {:.2}×  p99 {:.2}×  (p99 / floor p50: {:.2}×)",
            r50.unwrap_or(f64::NAN),
            r99.unwrap_or(f64::NAN),
            match (wake_s, floor_s) {
                (Some(w), Some(f)) => w.p99 / f.p50,
                _ => f64::NAN,
            }
        ),
    ));
    rows.push((
        "messages".into(),
        format!(
            "{seq} in {:.1}s ({:.0}/s), {} other polls parked",
            elapsed.as_secs_f64(),
            seq as f64 / elapsed.as_secs_f64(),
            others.len()
        ),
    ));
    Ok(Report { json, rows, verify })
}
