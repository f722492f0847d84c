//! Setting up who publishes and who subscribes, on either server: pairs
//! (a sender and its receiver: a parlor dialog, an Nchan channel of their
//! own) and the crowd of parked lobby subscribers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use parlor::client::{Conn, Target};

use super::backend::{self, catch_up, dialog, join, Cursor, Kind, Outbox, User};
use super::subs::Sub;
use super::Ctx;
use crate::{Error, Res};

/// The parlor conversation, and the Nchan channel, every crowd member reads.
pub const LOBBY: &str = "lobby";

/// A sender and its receiver. The receiver's subscription is timed; the
/// sender's own (its tab receiving its own message) only with `sender_polls`.
pub struct Pair {
    pub stream: u32,
    pub outbox: Outbox,
    pub subs: Vec<Sub>,
    /// The parlor user whose token the outbox uses (fan-out sends as it).
    pub sender: Option<Rc<str>>,
}

impl Pair {
    /// The same sender, publishing to the lobby.
    pub fn lobby_outbox(&self, run: &str) -> Outbox {
        match &self.sender {
            Some(token) => Outbox::Parlor {
                token: token.clone(),
                conversation: LOBBY.to_owned(),
            },
            None => Outbox::Nchan {
                channel: format!("{run}-{LOBBY}"),
            },
        }
    }
}

/// Runs `job(conn, n)` for n in 0..count on `workers` connections; the
/// results in order.
pub async fn each<T: 'static, F>(
    target: &Target,
    workers: usize,
    count: usize,
    job: F,
) -> Res<Vec<T>>
where
    F: AsyncFn(&mut Conn, usize) -> Res<T> + 'static,
{
    let job = Rc::new(job);
    let results: Rc<RefCell<Vec<Option<T>>>> =
        Rc::new(RefCell::new((0..count).map(|_| None).collect()));
    let next = Rc::new(std::cell::Cell::new(0usize));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.clamp(1, count.max(1)) {
        let (job, next, results, target) =
            (job.clone(), next.clone(), results.clone(), target.clone());
        set.spawn_local(async move {
            let mut conn = Conn::open(&target).await?;
            loop {
                let n = next.get();
                if n >= count {
                    return Ok::<(), Error>(());
                }
                next.set(n + 1);
                if conn.is_closed() {
                    conn = Conn::open(&target).await?;
                }
                let value = (*job)(&mut conn, n).await?;
                results.borrow_mut()[n] = Some(value);
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let results = Rc::try_unwrap(results)
        .map_err(|_| "workers still hold the results")?
        .into_inner();
    Ok(results.into_iter().flatten().collect())
}

/// Joins `count` parlor users named `cmp-<run>-<tag><n>` and catches each
/// up on the presence of those who joined after it.
pub async fn join_users(ctx: &Ctx, tag: &str, count: usize) -> Res<Vec<User>> {
    let started = Instant::now();
    let (run, prefix) = (ctx.run.clone(), ctx.password_prefix.clone());
    let tag = tag.to_owned();
    let users = each(
        &ctx.target,
        ctx.join_concurrency,
        count,
        async move |conn: &mut Conn, n: usize| {
            join(conn, format!("cmp-{run}-{tag}{n}"), &format!("{prefix}{n}")).await
        },
    )
    .await?;
    let joined = started.elapsed();
    let users = catch_up_all(ctx, users).await?;
    eprintln!(
        "compare: joined {count} users in {:.1}s, caught up in {:.1}s",
        joined.as_secs_f64(),
        (started.elapsed() - joined).as_secs_f64()
    );
    Ok(users)
}

/// Reads what waits for each user, on `join_concurrency` connections.
pub async fn catch_up_all(ctx: &Ctx, users: Vec<User>) -> Res<Vec<User>> {
    let count = users.len();
    let users: Rc<Vec<RefCell<Option<User>>>> =
        Rc::new(users.into_iter().map(|u| RefCell::new(Some(u))).collect());
    let shared = users.clone();
    each(
        &ctx.target,
        ctx.join_concurrency,
        count,
        async move |conn: &mut Conn, n: usize| {
            let mut user = shared[n].borrow_mut().take().ok_or("caught up twice")?;
            let result = catch_up(conn, &mut user).await;
            *shared[n].borrow_mut() = Some(user);
            result
        },
    )
    .await?;
    let users = Rc::try_unwrap(users).map_err(|_| "catch-up still holds the users")?;
    Ok(users.into_iter().filter_map(|u| u.into_inner()).collect())
}

/// `count` pairs on streams `first..first + count`; with parlor also the
/// users, to leave at the end.
pub async fn pairs(
    ctx: &Ctx,
    first: u32,
    count: usize,
    sender_polls: bool,
) -> Res<(Vec<Pair>, Vec<User>)> {
    match ctx.kind {
        Kind::Nchan => {
            let pairs = (0..count)
                .map(|n| {
                    let stream = first + n as u32;
                    let channel = format!("{}-{stream}", ctx.run);
                    let sub = |timed| Sub {
                        cursor: Cursor::Nchan {
                            channel: channel.clone(),
                            last_modified: None,
                            etag: None,
                        },
                        stream: Some(stream),
                        timed,
                    };
                    let mut subs = vec![sub(true)];
                    if sender_polls {
                        subs.push(sub(false));
                    }
                    Pair {
                        stream,
                        outbox: Outbox::Nchan {
                            channel: channel.clone(),
                        },
                        subs,
                        sender: None,
                    }
                })
                .collect();
            Ok((pairs, Vec::new()))
        }
        Kind::Parlor => {
            let users = join_users(ctx, &format!("p{first}-"), 2 * count).await?;
            let mut conn = Conn::open(&ctx.target).await?;
            let mut conversations = Vec::with_capacity(count);
            for n in 0..count {
                conversations.push(dialog(&mut conn, &users[2 * n], &users[2 * n + 1]).await?);
            }
            // The dialogs' `conversation_added`, read before anything is timed.
            let users = catch_up_all(ctx, users).await?;
            let pairs = conversations
                .into_iter()
                .enumerate()
                .map(|(n, conversation)| {
                    let stream = first + n as u32;
                    let (sender, receiver) = (&users[2 * n], &users[2 * n + 1]);
                    let sub = |user: &User, timed| Sub {
                        cursor: Cursor::Parlor {
                            token: user.token.clone(),
                            cursor: user.cursor,
                        },
                        stream: Some(stream),
                        timed,
                    };
                    let mut subs = vec![sub(receiver, true)];
                    if sender_polls {
                        subs.push(sub(sender, false));
                    }
                    Pair {
                        stream,
                        outbox: Outbox::Parlor {
                            token: sender.token.clone(),
                            conversation,
                        },
                        subs,
                        sender: Some(sender.token.clone()),
                    }
                })
                .collect();
            Ok((pairs, users))
        }
    }
}

/// The crowd: `count` subscribers of the lobby following `stream`. With
/// parlor, users who joined (and were caught up) beforehand.
pub fn crowd(ctx: &Ctx, users: &[User], count: usize, stream: u32) -> Vec<Sub> {
    (0..count)
        .map(|n| Sub {
            cursor: match ctx.kind {
                Kind::Parlor => Cursor::Parlor {
                    token: users[n].token.clone(),
                    cursor: users[n].cursor,
                },
                Kind::Nchan => Cursor::Nchan {
                    channel: format!("{}-{LOBBY}", ctx.run),
                    last_modified: None,
                    etag: None,
                },
            },
            stream: Some(stream),
            timed: false,
        })
        .collect()
}

/// Waits until the server holds at least `count` parked subscribers (for
/// at most `limit`); false if it never did.
pub async fn wait_parked(ctx: &Ctx, count: usize, limit: Duration) -> Res<bool> {
    let mut conn = Conn::open(&ctx.status).await?;
    let deadline = Instant::now() + limit;
    loop {
        let parked = backend::parked(ctx.kind, &mut conn).await?;
        if parked >= count {
            return Ok(true);
        }
        if Instant::now() > deadline {
            eprintln!("compare: only {parked} of {count} subscribers parked");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leaves parlor users (their presence would otherwise be copied to every
/// later joiner's mailbox).
pub async fn leave_all(ctx: &Ctx, users: Vec<User>) -> Res<()> {
    let users = Rc::new(users);
    let count = users.len();
    each(
        &ctx.target,
        ctx.join_concurrency,
        count,
        async move |conn: &mut Conn, n: usize| backend::leave(conn, &users[n]).await,
    )
    .await?;
    Ok(())
}
