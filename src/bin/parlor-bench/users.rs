//! The bench users: joining them, keeping those that do not poll from
//! being swept, catching them up, and leaving at the end.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parlor::client::Conn;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{api_error, poll_uri, Joined, PollAnswer, Synced};
use crate::report::Setup;
use crate::run::Ctx;
use crate::{Args, Error, Res};

/// One bench user with one client process.
pub struct Member {
    pub name: String,
    pub token: Rc<str>,
    pub cursor: Cell<u64>,
    /// Kept alive by the keep-alive task (it does not poll by itself).
    pub kept: Cell<bool>,
    pub last_active: Cell<Instant>,
}

/// Runs `count` jobs on `workers` connections, at most `workers` in flight;
/// returns the first error, if any.
pub async fn run_workers<F>(ctx: &Rc<Ctx>, workers: usize, count: usize, job: F) -> Res<()>
where
    F: AsyncFn(&mut Conn, usize) -> Res<()> + 'static,
{
    let job = Rc::new(job);
    let next = Rc::new(Cell::new(0usize));
    let mut set = JoinSet::new();
    for worker in 0..workers.clamp(1, count.max(1)) {
        let (ctx, job, next) = (ctx.clone(), job.clone(), next.clone());
        set.spawn_local(async move {
            let target = ctx.node(worker);
            let mut conn = Conn::open(target).await?;
            loop {
                let index = next.get();
                if index >= count {
                    return Ok::<(), Error>(());
                }
                next.set(index + 1);
                if conn.is_closed() {
                    conn = Conn::open(target).await?;
                }
                (*job)(&mut conn, index).await?;
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// How bench users prove who they are at /join.
enum Credentials {
    /// `<prefix><n>`: the server hashes it with argon2 for each new user.
    Passwords { prefix: String },
    /// A JWT per user signed with the server's join secret: no hashing.
    Jwts { key: EncodingKey },
}

impl Credentials {
    fn new(args: &Args) -> Res<Credentials> {
        Ok(match &args.join_secret {
            Some(secret) => Credentials::Jwts {
                key: EncodingKey::from_secret(secret.as_bytes())?,
            },
            None => Credentials::Passwords {
                prefix: args.password_prefix.clone(),
            },
        })
    }

    /// The /join form of user `n`, named `name`.
    fn join_form(&self, name: &str, n: usize) -> Res<String> {
        Ok(match self {
            Credentials::Passwords { prefix } => format!("name={name}&password={prefix}{n}"),
            Credentials::Jwts { key } => {
                let claims = serde_json::json!({
                    "sub": name,
                    "exp": jsonwebtoken::get_current_timestamp() + JOIN_TOKEN_LIFETIME_SECS,
                });
                // Base64url and dots: nothing to escape in a form.
                let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?;
                format!("auth={token}")
            }
        })
    }
}

/// How long a bench user's join JWT is valid: setup is bounded by
/// `--setup-timeout`, and a token is used once, at once.
const JOIN_TOKEN_LIFETIME_SECS: u64 = 600;

/// Joins `count` users concurrently, showing progress; they are kept alive
/// until something starts polling for them.
pub async fn join_users(ctx: &Rc<Ctx>, args: &Args, count: usize) -> Res<Duration> {
    let started = Instant::now();
    let joined = Rc::new(Cell::new(0usize));
    let job_ctx = ctx.clone();
    let job_joined = joined.clone();
    let credentials = Credentials::new(args)?;
    let workers = args.join_concurrency;
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let name = format!("bench-{}-{n}", job_ctx.run);
        let form = credentials.join_form(&name, n)?;
        let mut attempt = 0;
        let answer = loop {
            match conn.post("/join", form.clone()).await {
                Ok(answer) => break answer,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    *conn = Conn::open(&job_ctx.target).await?;
                }
                Err(error) => return Err(error),
            }
        };
        if answer.status != StatusCode::OK {
            return Err(api_error(&format!("/join {name}"), &answer));
        }
        let joined: Joined = serde_json::from_slice(&answer.body)?;
        job_ctx
            .poll_timeout
            .set(Duration::from_millis(joined.poll_timeout_ms));
        job_ctx
            .inactivity_timeout
            .set(Duration::from_millis(joined.inactivity_timeout_ms));
        job_ctx.members.borrow_mut().push(Rc::new(Member {
            name,
            token: joined.token.into(),
            cursor: Cell::new(joined.cursor),
            kept: Cell::new(true),
            last_active: Cell::new(Instant::now()),
        }));
        job_joined.set(job_joined.get() + 1);
        Ok(())
    };
    let joins = run_workers(ctx, workers, count, job);
    ctx.progress
        .showing(joins, || {
            let done = joined.get();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            format!("joining: {done}/{count} users ({rate:.0}/s, {workers} in flight)")
        })
        .await?;
    let took = started.elapsed();
    ctx.progress.done(&format!(
        "joined {count} users in {:.1}s ({:.0}/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64().max(1e-3)
    ));
    Ok(took)
}

/// Keeps members that do not poll (senders, users waiting to be parked) from
/// being swept: a `timeout=0` poll every third of the inactivity timeout, on
/// up to `workers` connections at once (thousands may fall due together
/// while joins are still loading the server).
pub async fn keep_alive(ctx: Rc<Ctx>, workers: usize, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        let interval = (ctx.inactivity_timeout.get() / 3).max(Duration::from_millis(500));
        let mut due: Vec<Rc<Member>> = ctx
            .members
            .borrow()
            .iter()
            .filter(|m| m.kept.get() && m.last_active.get().elapsed() >= interval)
            .cloned()
            .collect();
        if due.is_empty() {
            continue;
        }
        // The longest-waiting first.
        due.sort_by_key(|m| m.last_active.get());
        let count = due.len();
        let job_ctx = ctx.clone();
        let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
            let member = &due[n];
            if member.kept.get() {
                if let Err(error) = touch(conn, member).await {
                    job_ctx.verify.borrow_mut().error(error);
                }
            }
            Ok(())
        };
        tokio::select! {
            _ = run_workers(&ctx, workers, count, job) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One `timeout=0` poll for a member (after a /sync if its cursor expired).
pub async fn touch(conn: &mut Conn, member: &Member) -> Res<()> {
    let mut answer = conn
        .get(poll_uri(&member.token, member.cursor.get(), Some(0)))
        .await?;
    if answer.status == StatusCode::GONE {
        let synced = conn.get(format!("/sync?token={}", member.token)).await?;
        if synced.status != StatusCode::OK {
            return Err(api_error("/sync", &synced));
        }
        let synced: Synced = serde_json::from_slice(&synced.body)?;
        member.cursor.set(synced.cursor);
        answer = conn
            .get(poll_uri(&member.token, synced.cursor, Some(0)))
            .await?;
    }
    if answer.status != StatusCode::OK {
        return Err(api_error("keep-alive /poll", &answer));
    }
    let polled: PollAnswer<'_> = serde_json::from_slice(&answer.body)?;
    member.cursor.set(polled.cursor);
    member.last_active.set(Instant::now());
    Ok(())
}

pub async fn leave_all(ctx: &Rc<Ctx>, args: &Args) -> Res<()> {
    let members: Vec<Rc<Member>> = ctx.members.borrow().clone();
    for member in &members {
        member.kept.set(false);
    }
    let count = members.len();
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let answer = conn
            .post("/leave", format!("token={}", members[n].token))
            .await?;
        if answer.status != StatusCode::OK && answer.status != StatusCode::UNAUTHORIZED {
            return Err(api_error("/leave", &answer));
        }
        Ok(())
    };
    run_workers(ctx, args.join_concurrency.max(8), count, job).await
}

/// Failed reads of one user's catch-up before setup gives up.
const CATCH_UP_RETRIES: u32 = 5;

/// Joins `users` users and reads what waits for them (the presence of those
/// who joined later) on control connections, recording the server's RSS
/// before and after: the RSS growth after that, once polls are parked, is
/// what connections and parked polls cost. `pollers` is what the scenario
/// will count as its parked polls.
pub async fn setup_users(ctx: &Rc<Ctx>, args: &Args, users: usize, pollers: usize) -> Res<Setup> {
    let rss_start = ctx.probe.server().map(|s| s.rss_kib);
    let join = join_users(ctx, args, users).await?;
    let started = Instant::now();
    let members: Vec<Rc<Member>> = ctx.members.borrow().clone();
    let done = Rc::new(Cell::new(0usize));
    let counter = done.clone();
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let member = &members[n];
        let mut failures = 0;
        loop {
            let before = member.cursor.get();
            if let Err(error) = touch(conn, member).await {
                // A server busy with the join storm may shed a request
                // (a cluster node answers 503 when Redis is slow to
                // answer): setup waits and tries again, a few times.
                failures += 1;
                if failures > CATCH_UP_RETRIES || conn.is_closed() {
                    return Err(error);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if member.cursor.get() == before {
                counter.set(counter.get() + 1);
                return Ok(());
            }
        }
    };
    let catch_up = run_workers(ctx, args.join_concurrency, users, job);
    ctx.progress
        .showing(catch_up, || {
            format!("catching up: {}/{users} users", done.get())
        })
        .await?;
    ctx.progress.done(&format!(
        "caught {users} users up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let rss_joined = ctx.probe.server().map(|s| s.rss_kib);
    Ok(Setup {
        join,
        park: Duration::ZERO,
        users,
        pollers,
        rss_start,
        rss_joined,
        rss_parked: None,
    })
}
