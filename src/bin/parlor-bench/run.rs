//! One run: the state its tasks share, the scenario it drives, and the
//! figures every report gets (run id, checks, the bench's own CPU and RSS).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hyper::header::HeaderValue;
use parlor::client::Target;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::nodes::resolve_all;
use crate::probe::{cpu_delta, Probe};
use crate::progress::Progress;
use crate::report::{round, Report};
use crate::users::{keep_alive, leave_all, Member};
use crate::verify::Verify;
use crate::{fanout, latency, soak, throughput, Args, Res, Scenario};

/// Shared state of a run, created by `run` and shared (`Rc`) by every task
/// of the run.
pub struct Ctx {
    /// The first `--url`: control requests (dialogs, leaves) go there.
    pub target: Target,
    /// Every `--url` (see `nodes`).
    pub targets: Vec<Target>,
    /// The run id: in every bench user's name and message id.
    pub run: String,
    pub progress: Progress,
    pub probe: Probe,
    /// Every user joined, in join order (scenarios pick roles by index).
    pub members: RefCell<Vec<Rc<Member>>>,
    /// The server's timeouts, as its /join answers state them.
    pub poll_timeout: Cell<Duration>,
    pub inactivity_timeout: Cell<Duration>,
    /// Failures outside the pollers (keep-alives, floor requests).
    pub verify: RefCell<Verify>,
}

/// Runs the scenario `args` name, then leaves (unless `--no-leave`) and adds
/// what every report has: the run id, the checks, the bench's own cost.
pub async fn run(args: &Args) -> Res<Report> {
    let targets = resolve_all(&args.url).await?;
    let mut id = [0u8; 4];
    getrandom::getrandom(&mut id)?;
    let run: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let ctx = Rc::new(Ctx {
        target: targets[0].clone(),
        targets,
        run,
        progress: Progress::new(),
        probe: Probe {
            server: args.server_pid.iter().map(u32::to_string).collect(),
        },
        members: RefCell::new(Vec::new()),
        poll_timeout: Cell::new(Duration::from_secs(25)),
        inactivity_timeout: Cell::new(Duration::from_secs(30)),
        verify: RefCell::new(Verify::default()),
    });
    if !args.server_pid.is_empty() && ctx.probe.server().is_none() {
        return Err(format!("cannot read /proc/PID/stat of {:?}", args.server_pid).into());
    }
    let (stop_keep_alive, keep_alive_stopped) = watch::channel(false);
    let keeper = tokio::task::spawn_local(keep_alive(
        ctx.clone(),
        args.join_concurrency,
        keep_alive_stopped,
    ));
    let me_start = ctx.probe.me();

    let result = match args.scenario {
        Scenario::Latency => latency::run(&ctx, args).await,
        Scenario::Fanout => fanout::run(&ctx, args).await,
        Scenario::Throughput => throughput::run(&ctx, args).await,
        Scenario::Soak => soak::run(&ctx, args).await,
    };
    if !args.no_leave {
        let count = ctx.members.borrow().len();
        ctx.progress.show(&format!("leaving: {count} users"));
        if let Err(error) = leave_all(&ctx, args).await {
            eprintln!("parlor-bench: leaving failed: {error}");
        }
        ctx.progress.done(&format!("left {count} users"));
    }
    let _ = stop_keep_alive.send(true);
    let _ = keeper.await;
    let mut report = result?;

    let bench_cpu = cpu_delta(me_start, ctx.probe.me());
    report.verify.add(&ctx.verify.borrow());
    if let Value::Object(map) = &mut report.json {
        map.insert("run_id".into(), json!(ctx.run));
        map.insert("url".into(), json!(args.url.first()));
        map.insert("urls".into(), json!(args.url));
        map.insert("verify".into(), report.verify.json());
        map.insert("bench_cpu_s".into(), json!(bench_cpu.map(round)));
        map.insert(
            "bench_rss_kib".into(),
            json!(ctx.probe.me().map(|s| s.rss_kib)),
        );
    }
    let v = &report.verify;
    report.rows.push((
        "checks".into(),
        format!(
            "lost {}  duplicated {}  out of order {}  unexpected {}  errors {}  cursor expired {}",
            v.lost, v.duplicated, v.out_of_order, v.unexpected, v.errors, v.expired
        ),
    ));
    if let Some(first) = &v.first_error {
        report.rows.push(("first error".into(), first.clone()));
    }
    if let Some(cpu) = bench_cpu {
        report
            .rows
            .push(("parlor-bench CPU".into(), format!("{cpu:.2} s")));
    }
    report.rows.insert(
        0,
        (
            "scenario".into(),
            format!(
                "{} against {} (run {}, {} clients, {:?})",
                args.scenario.name(),
                args.url.join(" "),
                ctx.run,
                args.clients,
                args.duration
            ),
        ),
    );
    Ok(report)
}

/// The server at an `http://host[:port][/...]` URL (port 80 by default);
/// the host name is looked up once, here.
pub async fn resolve(url: &str) -> Res<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http:// (https is not supported)")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    Ok(Target {
        addr,
        host: HeaderValue::from_str(authority)?,
    })
}
