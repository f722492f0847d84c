//! /join under abuse: a flood of new names from one address, password
//! guessing, a full password-hashing queue, and closed sign-ups. Asserts
//! counts and answers, never how fast anything was.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{encode_form, join_all, post_from, test_config, Answer, TestServer};
use parlor::config::SignupMode;

/// Generous: the existing user's join must finish, not be fast.
const JOIN_LIMIT: Duration = Duration::from_secs(20);

/// POST /join from the local address `from` (any of 127.0.0.0/8).
async fn join_from(server: SocketAddr, from: [u8; 4], name: &str, password: &str) -> Answer {
    post_from(
        server,
        from,
        "/join",
        &[],
        &[("name", name), ("password", password)],
    )
    .await
}

fn retry_after(answer: &Answer) -> u64 {
    answer
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_flood_from_one_address_is_limited_and_others_still_get_in() {
    let mut config = test_config();
    config.signups_per_ip = 30;
    let server = TestServer::start_with(config).await;
    // An account made before the flood.
    let first = join_from(server.addr, [127, 0, 0, 2], "ann", "pw-ann").await;
    assert_eq!(first.status, 200, "{}", first.text);

    let started = Instant::now();
    let flood = tokio::spawn({
        let addr = server.addr;
        async move {
            let names: Vec<String> = (0..200).map(|n| format!("flood{n}")).collect();
            join_all(
                names
                    .iter()
                    .map(|name| join_from(addr, [127, 0, 0, 1], name, "pw")),
            )
            .await
        }
    });
    let ann = tokio::time::timeout(
        JOIN_LIMIT,
        join_from(server.addr, [127, 0, 0, 2], "ann", "pw-ann"),
    )
    .await
    .expect("the existing user's join is answered during the flood");
    assert_eq!(ann.status, 200, "{}", ann.text);

    let answers = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("every flood join is answered")
        .unwrap();
    let elapsed = started.elapsed().as_secs();
    let created = answers.iter().filter(|a| a.status == 200).count();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    // 30 a minute is a bucket of 30 that refills one every 2 s: at most 30,
    // plus what refilled while the flood lasted.
    let most = 30 + elapsed as usize / 2 + 1;
    assert!(created <= most, "{created} accounts created (most {most})");
    assert!(created >= 1, "the address is limited, not banned");
    assert_eq!(created + limited.len(), 200, "only 200s and 429s");
    for answer in limited {
        assert_eq!(answer.code(), "rate_limited", "{}", answer.text);
        assert!(retry_after(answer) >= 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn wrong_passwords_lock_out_that_name_from_that_address_only() {
    let server = TestServer::start().await;
    let (guesser, owner) = ([127, 0, 0, 1], [127, 0, 0, 3]);
    let made = join_from(server.addr, owner, "ann", "right").await;
    assert_eq!(made.status, 200, "{}", made.text);

    // Guess until refused: 10 wrong ones a minute, then one more every 6 s.
    let started = Instant::now();
    let mut wrong = 0;
    let refused = loop {
        let answer = join_from(server.addr, guesser, "ann", &format!("guess{wrong}")).await;
        if answer.status != 401 {
            break answer;
        }
        assert_eq!(answer.code(), "bad_credentials");
        wrong += 1;
        assert!(wrong < 100, "never refused");
    };
    let most = 10 + started.elapsed().as_secs() as usize / 6 + 1;
    assert!(
        (10..=most).contains(&wrong),
        "{wrong} wrong passwords tried"
    );
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.code(), "rate_limited");
    assert!(retry_after(&refused) >= 1);
    // Even the right password, from that address, until the wait is over.
    let right = join_from(server.addr, guesser, "ann", "right").await;
    assert_eq!(right.status, 429, "{}", right.text);

    // The owner, from elsewhere, is not locked out; nor is another name.
    let owner_join = join_from(server.addr, owner, "ann", "right").await;
    assert_eq!(owner_join.status, 200, "{}", owner_join.text);
    let other = join_from(server.addr, guesser, "bob", "pw").await;
    assert_eq!(other.status, 200, "{}", other.text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_busy_at_once() {
    let mut config = test_config();
    config.max_hash_waiters = 0;
    // Hashes slow enough that joins arriving together overlap.
    config.argon2_memory_kib = 16 * 1024;
    config.argon2_iterations = 3;
    let server = TestServer::start_with(config).await;
    let names: Vec<String> = (0..40).map(|n| format!("user{n}")).collect();
    let answers = tokio::time::timeout(
        Duration::from_secs(120),
        join_all(
            names
                .iter()
                .map(|name| join_from(server.addr, [127, 0, 0, 1], name, "pw")),
        ),
    )
    .await
    .expect("every join is answered");
    let joined = answers.iter().filter(|a| a.status == 200).count();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(joined >= 1, "hashing goes on");
    assert!(
        !busy.is_empty(),
        "40 joins at once, 4 hashing and none waiting"
    );
    assert_eq!(joined + busy.len(), 40, "only 200s and 503s");
    for answer in busy {
        assert_eq!(answer.code(), "busy", "{}", answer.text);
        assert!(retry_after(answer) >= 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn closed_signup_admits_only_existing_accounts() {
    let dir = std::env::temp_dir().join(format!("parlor-signup-closed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = test_config();
    config.ephemeral = false;
    config.data_dir = dir.clone();
    let open = TestServer::start_with(config.clone()).await;
    open.join("ann").await;
    open.stop().await;

    config.signup = SignupMode::Closed;
    let closed = TestServer::start_with(config).await;
    closed.join("ann").await;
    let fresh = closed
        .post("/join", &[("name", "newcomer"), ("password", "pw")])
        .await;
    assert_eq!(fresh.status, 403, "{}", fresh.text);
    assert_eq!(fresh.code(), "signup_closed");
    let wrong = closed
        .post("/join", &[("name", "ann"), ("password", "wrong")])
        .await;
    assert_eq!(wrong.code(), "bad_credentials", "{}", wrong.text);
    closed.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_signup_flags_parse() {
    use clap::Parser;
    let config = parlor::Config::parse_from([
        "parlor",
        "--signup",
        "closed",
        "--signups-per-ip",
        "0",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1",
    ]);
    assert_eq!(config.signup, SignupMode::Closed);
    assert_eq!(config.signups_per_ip, 0);
    assert_eq!(config.trusted_proxies.len(), 2);
    let defaults = parlor::Config::parse_from(["parlor"]);
    assert_eq!(defaults.signup, SignupMode::Open);
    assert_eq!(defaults.signups_per_ip, 30);
    assert!(defaults.trusted_proxies.is_empty());
    assert!(parlor::Config::try_parse_from(["parlor", "--trusted-proxy", "10.0.0.0/40"]).is_err());
}

/// POST /join from 127.0.0.1 with an `X-Forwarded-For` header, always to
/// the first node: per-address limits are kept per node in cluster mode.
async fn join_forwarded(server: &TestServer, forwarded_for: &str, name: &str) -> Answer {
    let body = encode_form(&[("name", name), ("password", "pw")]);
    common::request_to(
        server.addr,
        hyper::Method::POST,
        "/join",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-forwarded-for", forwarded_for),
        ],
        body.into_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_a_forged_header_changes_nothing() {
    // Two sign-ups a minute per address: a third within the test is refused.
    let mut config = test_config();
    config.signups_per_ip = 2;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let behind_proxy = TestServer::start_with(config.clone()).await;
    for name in ["a1", "a2"] {
        let answer = join_forwarded(&behind_proxy, "198.51.100.1", name).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let third = join_forwarded(&behind_proxy, "198.51.100.1", "a3").await;
    assert_eq!(third.code(), "rate_limited", "{}", third.text);
    // Another client behind the same proxy has its own allowance.
    let other = join_forwarded(&behind_proxy, "6.6.6.6, 198.51.100.2", "b1").await;
    assert_eq!(other.status, 200, "{}", other.text);
    behind_proxy.stop().await;

    // Without trusting the peer, a new forged address per request is no way
    // around the limit.
    config.trusted_proxies.clear();
    let direct = TestServer::start_with(config).await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let forged = format!("198.51.100.{n}");
        statuses.push(
            join_forwarded(&direct, &forged, &format!("c{n}"))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
    direct.stop().await;
}
