//! Micro-benches of the hub's in-process hot paths, through the library's
//! public API: what a `/send` and a woken `/poll` do under the hub lock.
//!
//! - `mailbox`: pushing into a full mailbox (the steady state: every push
//!   drops the oldest event) and reading a poll's worth of events.
//! - `event`: serializing a message once (`Event::to_bytes`) and writing a
//!   poll answer around shared event bytes (`write_poll_body`).
//! - `idle_queue`: the sweeper's deadline set over 10 000 clients — filling
//!   it, re-arming one deadline (what every poll does), popping all.
//! - `presence`: setting statuses and reading the changes since a version
//!   on a board of 10 000 users.
//!
//! Setup (full mailboxes, filled queues) is kept out of the measurement
//! with `iter_batched_ref`. Run: `cargo bench --bench hub`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use parlor::config::{MAILBOX_CAPACITY, MAX_EVENTS_PER_POLL};
use parlor::event::{write_poll_body, Event, EventBytes, Message, Status};
use parlor::hub::mailbox::{Mailbox, Read};
use parlor::hub::presence::PresenceBoard;
use parlor::hub::sweeper::IdleQueue;
use tokio::time::Instant;

/// Clients in the idle-queue and presence benches.
const CLIENTS: usize = 10_000;

fn message(id: u64) -> Message {
    Message {
        id,
        conversation: "lobby".to_owned(),
        from: "bench-user-0042".to_owned(),
        // The 64-byte messages of the end-to-end benches.
        text: "0123456789abcdef".repeat(4),
        at: 1_795_313_600_000 + id,
        client_msg_id: Some(format!("m-{id}")),
    }
}

fn message_bytes(id: u64) -> EventBytes {
    Event::Message(&message(id)).to_bytes()
}

fn full_mailbox(event: &EventBytes) -> Mailbox {
    let mut mailbox = Mailbox::new(0);
    for _ in 0..MAILBOX_CAPACITY {
        mailbox.push(event.clone());
    }
    mailbox
}

fn mailbox(c: &mut Criterion) {
    let event = message_bytes(1);
    let mut group = c.benchmark_group("mailbox");

    group.throughput(Throughput::Elements(MAX_EVENTS_PER_POLL as u64));
    group.bench_function("push_256_into_full", |b| {
        b.iter_batched_ref(
            || full_mailbox(&event),
            |mailbox| {
                for _ in 0..MAX_EVENTS_PER_POLL {
                    black_box(mailbox.push(event.clone()));
                }
            },
            BatchSize::LargeInput,
        )
    });

    let mailbox = full_mailbox(&event);
    let head = mailbox.head();
    group.throughput(Throughput::Elements(1));
    group.bench_function("read_1_at_head", |b| {
        b.iter(
            || match mailbox.read(black_box(head - 1), MAX_EVENTS_PER_POLL) {
                Read::Events { events, .. } => black_box(events.len()),
                _ => unreachable!("one event after head - 1"),
            },
        )
    });
    group.throughput(Throughput::Elements(MAX_EVENTS_PER_POLL as u64));
    group.bench_function("read_256_and_write_body", |b| {
        let cursor = head - MAX_EVENTS_PER_POLL as u64;
        b.iter(
            || match mailbox.read(black_box(cursor), MAX_EVENTS_PER_POLL) {
                Read::Events { first_seq, events } => {
                    let last = first_seq + events.len() as u64 - 1;
                    black_box(write_poll_body(last, first_seq, events.into_iter()))
                }
                _ => unreachable!("256 events after the cursor"),
            },
        )
    });
    group.finish();
}

fn event(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    let message = message(7);
    group.bench_function("message_to_bytes", |b| {
        b.iter(|| black_box(Event::Message(black_box(&message)).to_bytes()))
    });
    let presence = Event::Presence {
        user: "bench-user-0042",
        status: Status::Online,
    };
    group.bench_function("presence_to_bytes", |b| {
        b.iter(|| black_box(black_box(&presence).to_bytes()))
    });
    let one = [message_bytes(7)];
    group.bench_function("write_poll_body_1", |b| {
        b.iter(|| black_box(write_poll_body(42, 42, one.iter())))
    });
    let many: Vec<EventBytes> = (0..MAX_EVENTS_PER_POLL as u64).map(message_bytes).collect();
    group.throughput(Throughput::Elements(many.len() as u64));
    group.bench_function("write_poll_body_256", |b| {
        b.iter(|| black_box(write_poll_body(300, 45, many.iter())))
    });
    group.finish();
}

/// Deadlines spread over 30 s, as clients going idle at different times.
fn deadlines(base: Instant) -> Vec<(Instant, usize, u64)> {
    (0..CLIENTS)
        .map(|n| {
            let jitter = Duration::from_micros((n as u64 * 7_919) % 30_000_000);
            (base + jitter, n, n as u64 + 1)
        })
        .collect()
}

fn filled(entries: &[(Instant, usize, u64)]) -> IdleQueue {
    let mut queue = IdleQueue::default();
    for &(deadline, key, id) in entries {
        queue.insert(deadline, key, id);
    }
    queue
}

fn idle_queue(c: &mut Criterion) {
    let base = Instant::now();
    let entries = deadlines(base);
    let mut group = c.benchmark_group("idle_queue");

    group.throughput(Throughput::Elements(CLIENTS as u64));
    group.bench_function("insert_10k", |b| {
        b.iter_batched_ref(
            IdleQueue::default,
            |queue| {
                for &(deadline, key, id) in &entries {
                    black_box(queue.insert(deadline, key, id));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("pop_expired_10k", |b| {
        let after_all = base + Duration::from_secs(60);
        b.iter_batched_ref(
            || filled(&entries),
            |queue| black_box(queue.pop_expired(after_all)),
            BatchSize::SmallInput,
        )
    });

    // Re-arming one client's deadline (remove + insert) in a queue of
    // 10 000: what every poll that ends and every parked poll costs.
    group.throughput(Throughput::Elements(1));
    group.bench_function("rearm_1_of_10k", |b| {
        let mut queue = filled(&entries);
        let mut current = entries.clone();
        let mut next = 0usize;
        let mut later = Duration::from_secs(30);
        b.iter(|| {
            let (deadline, key, id) = current[next];
            queue.remove(deadline, key, id);
            later += Duration::from_micros(1);
            let fresh = base + later;
            black_box(queue.insert(fresh, key, id));
            current[next] = (fresh, key, id);
            next = (next + 1) % CLIENTS;
        })
    });
    group.finish();
}

fn board_of(users: &[String]) -> PresenceBoard {
    let mut board = PresenceBoard::default();
    for user in users {
        board.set(user, Status::Online);
    }
    board
}

fn presence(c: &mut Criterion) {
    let users: Vec<String> = (0..CLIENTS).map(|n| format!("bench-user-{n}")).collect();
    let mut group = c.benchmark_group("presence");

    group.throughput(Throughput::Elements(CLIENTS as u64));
    group.bench_function("join_storm_10k", |b| {
        b.iter_batched_ref(
            PresenceBoard::default,
            |board| {
                for user in &users {
                    black_box(board.set(user, Status::Online));
                }
            },
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("set_1_of_10k", |b| {
        let mut board = board_of(&users);
        let mut next = 0usize;
        let mut busy = false;
        b.iter(|| {
            let status = if busy { Status::Busy } else { Status::Away };
            black_box(board.set(&users[next], status));
            next += 1;
            if next == users.len() {
                next = 0;
                busy = !busy;
            }
        })
    });

    let board = board_of(&users);
    let behind = board.version() - MAX_EVENTS_PER_POLL as u64;
    group.throughput(Throughput::Elements(MAX_EVENTS_PER_POLL as u64));
    group.bench_function("changes_since_256_of_10k", |b| {
        b.iter(|| {
            black_box(
                board
                    .changes_since(black_box(behind), MAX_EVENTS_PER_POLL)
                    .map(|(version, event)| (version, event.clone()))
                    .collect::<Vec<_>>(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, mailbox, event, idle_queue, presence);
criterion_main!(benches);
