//! Subscribers: one task and one kept-alive connection each, long-polling
//! again on every answer, checking that every message of the streams it
//! follows arrives once and in order, and telling the board when the
//! message being timed arrived.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use parlor::client::{Conn, Target};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::backend::{poll, Cursor, Id};
use crate::Res;

/// Reconnects of one subscriber before it gives up.
const MAX_RECONNECTS: u32 = 5;

/// Where one stream stands: the message being timed and who has it.
struct Stream {
    /// Subscribers that count for this stream (each gets every message).
    want: usize,
    /// Messages published so far.
    sent: u64,
    /// The message being timed, and how many counted subscribers have it.
    seq: u64,
    got: usize,
    /// When the timed subscriber had it, and when the last one did.
    timed_at: Option<Instant>,
    last_at: Option<Instant>,
    all: Rc<Notify>,
}

/// Shared by the subscribers and the publishers of one run.
#[derive(Default)]
pub struct Board {
    streams: RefCell<HashMap<u32, Stream>>,
    /// Polls sent and not answered yet.
    pub out: Cell<usize>,
    pub delivered: Cell<u64>,
    pub lost: Cell<u64>,
    pub duplicated: Cell<u64>,
    pub errors: Cell<u64>,
    pub last_error: RefCell<String>,
}

/// What a publisher waits for after publishing a message.
pub struct Round {
    pub all: Rc<Notify>,
}

impl Board {
    /// Declares a stream that `want` subscribers each receive whole.
    pub fn stream(&self, stream: u32, want: usize) {
        self.streams.borrow_mut().insert(
            stream,
            Stream {
                want,
                sent: 0,
                seq: u64::MAX,
                got: 0,
                timed_at: None,
                last_at: None,
                all: Rc::new(Notify::new()),
            },
        );
    }

    /// Starts timing the next message of `stream`, before it is published;
    /// returns its id.
    pub fn next(&self, stream: u32) -> (Id, Round) {
        let mut streams = self.streams.borrow_mut();
        let state = streams.get_mut(&stream).expect("streams are declared");
        state.seq = state.sent;
        state.sent += 1;
        state.got = 0;
        state.timed_at = None;
        state.last_at = None;
        // A fresh one: a round that timed out may still notify the old one.
        state.all = Rc::new(Notify::new());
        (
            (stream, state.seq),
            Round {
                all: state.all.clone(),
            },
        )
    }

    /// When the timed subscriber and the last subscriber had the message
    /// being timed.
    pub fn times(&self, stream: u32) -> (Option<Instant>, Option<Instant>) {
        let streams = self.streams.borrow();
        let state = &streams[&stream];
        (state.timed_at, state.last_at)
    }

    fn arrived(&self, (stream, seq): Id, counted: bool, timed: bool, now: Instant) {
        let mut streams = self.streams.borrow_mut();
        let Some(state) = streams.get_mut(&stream) else {
            return;
        };
        if !counted || seq != state.seq {
            return;
        }
        if timed {
            state.timed_at = Some(now);
        }
        state.got += 1;
        if state.got == state.want {
            state.last_at = Some(now);
            state.all.notify_one();
        }
    }

    fn sent(&self, stream: u32) -> u64 {
        self.streams.borrow().get(&stream).map_or(0, |s| s.sent)
    }

    pub fn error(&self, error: String) {
        self.errors.set(self.errors.get() + 1);
        *self.last_error.borrow_mut() = error;
    }
}

/// One subscriber: where it reads, and which stream it counts for.
pub struct Sub {
    pub cursor: Cursor,
    /// The stream it counts for (it receives every message of it), if any.
    pub stream: Option<u32>,
    /// Its arrival is the one a wake sample times.
    pub timed: bool,
}

/// Subscribers running until `stop`.
pub struct Subs {
    set: JoinSet<()>,
    stop: watch::Sender<bool>,
    pub count: usize,
}

impl Subs {
    /// Opens a connection for each subscriber (before any polls, so that
    /// their memory is measured apart) and starts polling on it.
    pub async fn start(
        target: &Target,
        subs: Vec<Sub>,
        board: &Rc<Board>,
        run: &Rc<str>,
    ) -> Res<Subs> {
        let mut conns = Vec::with_capacity(subs.len());
        for _ in 0..subs.len() {
            conns.push(Conn::open(target).await?);
        }
        let (stop, stopped) = watch::channel(false);
        let mut set = JoinSet::new();
        let count = subs.len();
        for (sub, conn) in subs.into_iter().zip(conns) {
            let (board, run, stopped) = (board.clone(), run.clone(), stopped.clone());
            let target = target.clone();
            set.spawn_local(follow(target, conn, sub, board, run, stopped));
        }
        Ok(Subs { set, stop, count })
    }

    /// Stops every subscriber; each counts what it never received.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.set.join_next().await.is_some() {}
    }
}

/// The next number each stream this subscriber saw is expected at.
type Expect = Vec<(u32, u64)>;

async fn follow(
    target: Target,
    mut conn: Conn,
    mut sub: Sub,
    board: Rc<Board>,
    run: Rc<str>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut expect: Expect = Vec::new();
    let mut reconnects = 0;
    loop {
        board.out.set(board.out.get() + 1);
        let answer = tokio::select! {
            answer = poll(&mut conn, &mut sub.cursor, &run) => answer,
            _ = stopped.changed() => break,
        };
        let now = Instant::now();
        board.out.set(board.out.get() - 1);
        match answer {
            Ok(ids) => {
                for id in ids {
                    check(&board, &mut expect, id);
                    board.arrived(id, sub.stream == Some(id.0), sub.timed, now);
                }
            }
            Err(error) => {
                board.error(error.to_string());
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                match Conn::open(&target).await {
                    Ok(fresh) => conn = fresh,
                    Err(error) => board.error(error.to_string()),
                }
            }
        }
    }
    board.out.set(board.out.get() - 1);
    // What it never received of the stream it follows.
    if let Some(stream) = sub.stream {
        let next = expect
            .iter()
            .find(|(s, _)| *s == stream)
            .map_or(0, |(_, next)| *next);
        let sent = board.sent(stream);
        board.lost.set(board.lost.get() + sent.saturating_sub(next));
    }
}

/// Checks one arrival against the stream's order: a gap is lost messages,
/// anything before the expected number a duplicate.
fn check(board: &Board, expect: &mut Expect, (stream, seq): Id) {
    board.delivered.set(board.delivered.get() + 1);
    let entry = match expect.iter_mut().find(|(s, _)| *s == stream) {
        Some(entry) => entry,
        None => {
            expect.push((stream, 0));
            expect.last_mut().expect("just pushed")
        }
    };
    if seq < entry.1 {
        board.duplicated.set(board.duplicated.get() + 1);
        return;
    }
    board.lost.set(board.lost.get() + (seq - entry.1));
    entry.1 = seq + 1;
}
