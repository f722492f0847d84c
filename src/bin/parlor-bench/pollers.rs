//! Pollers: one task and one connection per bench user, re-polling on
//! every answer; parking them, waiting until they settle, stopping them, and
//! what they found (deliveries, the fan-out round, soak timings).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parlor::client::{Answer, Conn};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::api::{api_error, poll_uri};
use crate::report::Setup;
use crate::run::Ctx;
use crate::users::{setup_users, touch, Member};
use crate::verify::{scan, Verify};
use crate::{Args, Error, Res};

/// A poll answered empty within this much of the poll timeout is "on time";
/// later is "late", earlier (and empty) is "early".
pub const ON_TIME_TOLERANCE: Duration = Duration::from_secs(1);
/// parlor answers an idle poll up to this fraction before its timeout, at
/// random, so that polls parked together do not all expire together; such
/// an answer is on time too.
pub const POLL_TIMEOUT_JITTER: f64 = 0.1;
/// Polls are "parked" once every poller has a request out and no answer
/// came for this long. After a mass join the server is still copying
/// presence into every mailbox; with the durable store each batch waits
/// for a commit, and a gap of half a second between batches was seen to
/// pass for quiet while the server was still busy (its first timeouts then
/// came late).
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// Reconnect attempts of one poller before it gives up.
const MAX_RECONNECTS: u32 = 5;

/// How the soak's pollers found their answers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SoakCounts {
    /// Empty answers between the jittered and the full poll timeout, within
    /// ON_TIME_TOLERANCE.
    pub on_time: u64,
    /// Empty answers later than that.
    pub late: u64,
    /// Empty answers well before the timeout (superseded, shutting down).
    pub early: u64,
    /// Answers that carried events.
    pub woken: u64,
    /// Answers to polls issued before the soak began (not classified).
    pub from_setup: u64,
    /// Longest an answer took past the poll timeout.
    pub worst_overrun: Duration,
}

/// What pollers share with the scenario driving them.
pub struct Pollers {
    pub count: usize,
    /// The stream of bench messages they expect (None: expect none).
    pub stream: Option<String>,
    pub in_flight: Cell<usize>,
    pub answers: Cell<u64>,
    pub last_answer: Cell<Instant>,
    /// Bench messages delivered (first time) to any poller.
    pub deliveries: Cell<u64>,
    /// Fanout: the message being timed, and who has it.
    pub round: Cell<u64>,
    pub arrived: Cell<usize>,
    pub first: Cell<Option<Instant>>,
    pub last: Cell<Option<Instant>>,
    pub all_arrived: Notify,
    pub verify: RefCell<Verify>,
    pub soak: RefCell<SoakCounts>,
    /// Soak: polls issued before this are setup's, not counted (the server
    /// may still have been busy with the join storm when it read them).
    pub counting_since: Cell<Option<Instant>>,
    /// Each stopped poller's next expected sequence number.
    pub tails: RefCell<Vec<u64>>,
    pub gave_up: Cell<usize>,
    /// The last failure a poller saw, for the error message.
    pub last_error: RefCell<String>,
}

impl Pollers {
    fn new(count: usize, stream: Option<String>) -> Pollers {
        Pollers {
            count,
            stream,
            in_flight: Cell::new(0),
            answers: Cell::new(0),
            last_answer: Cell::new(Instant::now()),
            deliveries: Cell::new(0),
            round: Cell::new(u64::MAX),
            arrived: Cell::new(0),
            first: Cell::new(None),
            last: Cell::new(None),
            all_arrived: Notify::new(),
            verify: RefCell::new(Verify::default()),
            soak: RefCell::new(SoakCounts::default()),
            counting_since: Cell::new(None),
            tails: RefCell::new(Vec::new()),
            gave_up: Cell::new(0),
            last_error: RefCell::new(String::new()),
        }
    }

    fn arrived_now(&self, seq: u64, now: Instant) {
        self.deliveries.set(self.deliveries.get() + 1);
        if seq != self.round.get() {
            return;
        }
        self.arrived.set(self.arrived.get() + 1);
        if self.first.get().is_none() {
            self.first.set(Some(now));
        }
        self.last.set(Some(now));
        if self.arrived.get() == self.count {
            self.all_arrived.notify_one();
        }
    }
}

async fn poller(
    ctx: Rc<Ctx>,
    shared: Rc<Pollers>,
    member: Rc<Member>,
    node: usize,
    mut conn: Conn,
    mut stop: watch::Receiver<bool>,
) {
    let mut expect = 0u64;
    let mut reconnects = 0;
    let poll_timeout = ctx.poll_timeout.get();
    loop {
        let issued = Instant::now();
        shared.in_flight.set(shared.in_flight.get() + 1);
        let uri = poll_uri(&member.token, member.cursor.get(), None);
        let result = tokio::select! {
            result = conn.get(uri) => result,
            _ = stop.changed() => Err::<Answer, Error>("stopped".into()),
        };
        shared.in_flight.set(shared.in_flight.get() - 1);
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        shared.answers.set(shared.answers.get() + 1);
        shared.last_answer.set(now);
        let problem: Option<String> = match result {
            Ok(answer) if answer.status == StatusCode::OK => {
                let mut verify = shared.verify.borrow_mut();
                match scan(
                    &answer.body,
                    &ctx.run,
                    shared.stream.as_deref(),
                    &mut expect,
                    &mut verify,
                    |seq| shared.arrived_now(seq, now),
                ) {
                    Ok(found) => {
                        member.cursor.set(found.cursor);
                        let mut soak = shared.soak.borrow_mut();
                        let waited = now - issued;
                        if shared
                            .counting_since
                            .get()
                            .is_none_or(|since| issued < since)
                        {
                            soak.from_setup += 1;
                        } else if found.events > 0 {
                            soak.woken += 1;
                        } else {
                            if waited + ON_TIME_TOLERANCE
                                < poll_timeout.mul_f64(1.0 - POLL_TIMEOUT_JITTER)
                            {
                                soak.early += 1;
                            } else if waited <= poll_timeout + ON_TIME_TOLERANCE {
                                soak.on_time += 1;
                            } else {
                                soak.late += 1;
                            }
                            if waited > poll_timeout {
                                soak.worst_overrun = soak.worst_overrun.max(waited - poll_timeout);
                            }
                        }
                        None
                    }
                    Err(error) => Some(format!("unreadable poll answer: {error}")),
                }
            }
            Ok(answer) if answer.status == StatusCode::GONE => {
                shared.verify.borrow_mut().expired += 1;
                touch(&mut conn, &member).await.err().map(|e| e.to_string())
            }
            Ok(answer) => Some(api_error("/poll", &answer).to_string()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(problem) = problem {
            shared.verify.borrow_mut().error(&problem);
            *shared.last_error.borrow_mut() = problem;
            reconnects += 1;
            if reconnects > MAX_RECONNECTS {
                shared.gave_up.set(shared.gave_up.get() + 1);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if conn.is_closed() {
                match Conn::open(ctx.node(node)).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => continue,
                }
            }
        }
    }
    shared.tails.borrow_mut().push(expect);
}

/// Parked pollers: the scenario reads `shared`, and `stop` ends them.
pub struct Parked {
    pub shared: Rc<Pollers>,
    set: JoinSet<()>,
    stop: watch::Sender<bool>,
}

/// Opens a connection per member and parks their polls, expecting the bench
/// messages of `stream`; records how long parking took and the server's RSS
/// after it in `setup`.
pub async fn park(
    ctx: &Rc<Ctx>,
    members: &[Rc<Member>],
    stream: Option<&str>,
    setup: &mut Setup,
    limit: Duration,
) -> Res<Parked> {
    let started = Instant::now();
    let shared = Rc::new(Pollers::new(members.len(), stream.map(str::to_owned)));
    let (stop, stopped) = watch::channel(false);
    let mut set = JoinSet::new();
    for (n, member) in members.iter().enumerate() {
        let conn = Conn::open(ctx.node(n)).await?;
        member.kept.set(false);
        set.spawn_local(poller(
            ctx.clone(),
            shared.clone(),
            member.clone(),
            n,
            conn,
            stopped.clone(),
        ));
        if n % 256 == 0 {
            ctx.progress
                .show(&format!("parking: {n}/{} connections open", members.len()));
            tokio::task::yield_now().await;
        }
    }
    settle(ctx, &shared, limit.saturating_sub(started.elapsed())).await?;
    let took = started.elapsed();
    ctx.progress.done(&format!(
        "parked {} polls in {:.1}s",
        members.len(),
        took.as_secs_f64()
    ));
    setup.park = took;
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);
    Ok(Parked { shared, set, stop })
}

/// What fanout and soak start from: `--clients` polls parked in the lobby,
/// expecting the lobby messages (stream "f") of one more user, the sender.
pub struct Lobby {
    pub setup: Setup,
    pub sender: Rc<Member>,
    pub parked: Parked,
}

impl Lobby {
    pub async fn open(ctx: &Rc<Ctx>, args: &Args) -> Res<Lobby> {
        let pollers = args.clients.max(1);
        let mut setup = setup_users(ctx, args, pollers + 1, pollers).await?;
        let members = ctx.members.borrow().clone();
        let (sender, receivers) = (&members[0], &members[1..]);
        let parked = park(ctx, receivers, Some("f"), &mut setup, args.setup_timeout).await?;
        Ok(Lobby {
            setup,
            sender: sender.clone(),
            parked,
        })
    }
}

/// Waits until every poller has a poll out and none was answered for
/// `SETTLE_QUIET` (they have read what was waiting and are parked).
async fn settle(ctx: &Ctx, shared: &Pollers, limit: Duration) -> Res<()> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let quiet = shared.last_answer.get().elapsed();
        if shared.in_flight.get() == shared.count && quiet >= SETTLE_QUIET {
            return Ok(());
        }
        if shared.gave_up.get() > 0 {
            return Err(format!(
                "{} pollers gave up while parking (last error: {})",
                shared.gave_up.get(),
                shared.last_error.borrow()
            )
            .into());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "polls did not settle within {limit:?}: {}/{} out",
                shared.in_flight.get(),
                shared.count
            )
            .into());
        }
        ctx.progress.show(&format!(
            "parking: {}/{} polls out, {} answers so far",
            shared.in_flight.get(),
            shared.count,
            shared.answers.get()
        ));
    }
}

impl Parked {
    /// Stops the pollers and adds what they never received of the `sent`
    /// messages of their stream to the lost count.
    pub async fn unpark(mut self, sent: u64) -> Verify {
        let _ = self.stop.send(true);
        while self.set.join_next().await.is_some() {}
        let shared = &self.shared;
        let mut verify = shared.verify.borrow().clone();
        if shared.stream.is_some() {
            for &tail in shared.tails.borrow().iter() {
                verify.lost += sent.saturating_sub(tail);
            }
        }
        verify
    }
}
