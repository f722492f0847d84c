//! The `throughput` scenario: sender/receiver pairs in dialogs, each a
//! closed loop of one message at a time, against a closed-loop floor.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::Conn;
use serde_json::json;
use tokio::task::JoinSet;

use crate::api::{failure, send_form};
use crate::dialog::{self, Inbox};
use crate::floor::floor_throughput;
use crate::probe::cpu_delta;
use crate::report::{latency_row, nanos, round, summarize, summary_json, Report};
use crate::run::Ctx;
use crate::users::setup_users;
use crate::verify::Verify;
use crate::window::Window;
use crate::{Args, Res, EXCHANGE_LIMIT};

/// `--clients / 2` sender/receiver pairs, each sending its next message
/// when the last one arrived: deliveries per second and per server
/// CPU-second, against the closed-loop floor.
pub async fn run(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pairs = (args.clients / 2).max(1);
    let mut setup = setup_users(ctx, args, pairs * 2, pairs).await?;
    let members = ctx.members.borrow().clone();

    // Open the dialogs and connections first; the clock starts after.
    let mut lanes = Vec::with_capacity(pairs);
    let mut control = Conn::open(&ctx.target).await?;
    for pair in 0..pairs {
        let (sender, receiver) = (members[2 * pair].clone(), members[2 * pair + 1].clone());
        let dialog = dialog::open(&mut control, &sender, &receiver).await?;
        lanes.push((
            sender,
            receiver,
            dialog,
            Conn::open(ctx.sender_node(pair)).await?,
            Conn::open(ctx.receiver_node(pair)).await?,
        ));
        if pair % 16 == 0 {
            ctx.progress.show(&format!("dialogs: {pair}/{pairs}"));
        }
    }
    drop(control);
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);

    let floor =
        floor_throughput(ctx, pairs, (args.duration / 4).min(Duration::from_secs(5))).await?;

    let delivered = Rc::new(Cell::new(0u64));
    let samples = Rc::new(RefCell::new(Vec::<u64>::new()));
    let sent_total = Rc::new(Cell::new(0u64));
    let pace = args
        .rate
        .map(|rate| Duration::from_secs_f64(pairs as f64 / rate.max(0.01)));
    let window = Window::open(ctx, args);
    let started = window.started;
    let warm = started + args.warmup.min(args.duration / 2);
    let mut set = JoinSet::new();
    for (pair, (sender, receiver, dialog, mut send_conn, recv_conn)) in
        lanes.into_iter().enumerate()
    {
        let (ctx, delivered, samples, sent_total) = (
            ctx.clone(),
            delivered.clone(),
            samples.clone(),
            sent_total.clone(),
        );
        set.spawn_local(async move {
            // From here on the receiver polls by itself. Until now (joins,
            // dialogs, the floor run) the keep-alive kept it from being
            // swept; it must stop now, or its polls would supersede ours.
            receiver.kept.set(false);
            let stream = format!("p{pair}");
            let mut inbox = Inbox::new(recv_conn, &receiver, stream.clone());
            let mut verify = Verify::default();
            let mut seq = 0u64;
            let mut next = Instant::now();
            while window.running(sent_total.get()) {
                if let Some(pace) = pace {
                    tokio::time::sleep_until(next.into()).await;
                    next += pace;
                }
                let form = send_form(&sender.token, &dialog, &ctx.run, &stream, seq);
                let t0 = Instant::now();
                let (sent, received) = tokio::join!(
                    send_conn.post("/send", form),
                    tokio::time::timeout(EXCHANGE_LIMIT, inbox.until(&ctx.run, seq, &mut verify))
                );
                match &sent {
                    Ok(a) if a.status == StatusCode::OK => {
                        seq += 1;
                        sent_total.set(sent_total.get() + 1);
                    }
                    _ => verify.error(failure("/send", &sent)),
                }
                match received {
                    Ok(Ok(at)) => {
                        delivered.set(delivered.get() + 1);
                        if t0 >= warm {
                            samples.borrow_mut().push(nanos(at - t0));
                        }
                    }
                    Ok(Err(error)) => verify.error(error),
                    Err(_) => match Conn::open(ctx.receiver_node(pair)).await {
                        Ok(fresh) => inbox.conn = fresh,
                        Err(_) => break,
                    },
                }
            }
            verify.lost += seq.saturating_sub(inbox.expect);
            verify
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut warm_count, mut warm_cpu) = (None, None);
    let mut verify = Verify::default();
    loop {
        tokio::select! {
            done = set.join_next() => match done {
                Some(Ok(lane)) => verify.add(&lane),
                Some(Err(error)) => verify.error(format!("a sender/receiver pair failed: {error}")),
                None => break,
            },
            _ = tick.tick() => {
                if warm_count.is_none() && Instant::now() >= warm {
                    warm_count = Some((delivered.get(), Instant::now()));
                    warm_cpu = ctx.probe.server();
                }
                let (count, secs) = (delivered.get(), started.elapsed().as_secs_f64());
                ctx.progress.measuring(
                    "throughput",
                    &window,
                    format_args!("{count} deliveries ({:.0}/s)", count as f64 / secs.max(1e-3)),
                );
            }
        }
    }
    let end = Instant::now();
    let cpu_end = ctx.probe.server();
    let total = delivered.get();
    // Rates over the steady part of the run (after the warm-up).
    let (base, from) = warm_count.unwrap_or((0, started));
    let cpu_from = warm_cpu.or(window.cpu_start);
    let measured = total - base;
    let seconds = (end - from).as_secs_f64();
    let per_s = measured as f64 / seconds.max(1e-9);
    let server_cpu = cpu_delta(cpu_from, cpu_end);
    let per_cpu_s = server_cpu.map(|cpu| measured as f64 / cpu.max(1e-9));
    ctx.progress
        .done(&format!("throughput: {total} deliveries"));
    let mut lat = std::mem::take(&mut *samples.borrow_mut());
    let lat_s = summarize(&mut lat, 1e3);
    let json = json!({
        "scenario": "throughput", "clients": pairs * 2, "pairs": pairs,
        "duration_s": round((end - started).as_secs_f64()), "deliveries": total,
        "measured_deliveries": measured, "measured_s": round(seconds),
        "deliveries_per_s": round(per_s), "server_cpu_s": server_cpu.map(round),
        "server_cpu_share": server_cpu.map(|cpu| round(cpu / seconds.max(1e-9))),
        "deliveries_per_server_cpu_s": per_cpu_s.map(round),
        "delivery_us": summary_json(lat_s), "setup": setup.json(),
        "floor": { "connections": pairs, "requests": floor.requests, "seconds": round(floor.seconds),
                   "requests_per_s": round(floor.per_s()), "server_cpu_s": floor.cpu.map(round),
                   "requests_per_server_cpu_s": floor.per_cpu_s().map(round) },
        "deliveries_per_s_to_floor": round(per_s / floor.per_s().max(1e-9)),
        "per_server_cpu_s_to_floor": match (per_cpu_s, floor.per_cpu_s()) { (Some(d), Some(f)) => Some(round(d / f)), _ => None },
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push((
        "deliveries".into(),
        format!("{total} ({measured} after warm-up in {seconds:.1}s: {per_s:.0}/s)"),
    ));
    if let (Some(cpu), Some(per_cpu)) = (server_cpu, per_cpu_s) {
        rows.push((
            "per server CPU-second".into(),
            format!(
                "{per_cpu:.0} deliveries (server used {cpu:.2} CPU-s, {:.0}% of one core)",
                100.0 * cpu / seconds.max(1e-9)
            ),
        ));
    }
    rows.push(("send → delivered".into(), latency_row(lat_s, "µs")));
    rows.push((
        "floor (GET /healthz)".into(),
        format!(
            "{:.0} requests/s on {pairs} connections{}",
            floor.per_s(),
            floor
                .per_cpu_s()
                .map(|f| format!(", {f:.0} per server CPU-second"))
                .unwrap_or_default()
        ),
    ));
    rows.push((
        "deliveries / floor".into(),
        format!(
            "{:.2}× per second{}",
            per_s / floor.per_s().max(1e-9),
            match (per_cpu_s, floor.per_cpu_s()) {
                (Some(d), Some(f)) => format!(", {:.2}× per server CPU-second", d / f),
                _ => String::new(),
            }
        ),
    ));
    Ok(Report { json, rows, verify })
}
