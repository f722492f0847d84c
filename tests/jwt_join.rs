//! POST /join with `auth=JWT`: the application's backend vouches for its
//! users with an HS256 token signed with `--join-secret`. Tokens are minted
//! here with `jsonwebtoken`, as a Rust backend would; the `none` and RS256
//! ones are written by hand, as an attacker would.

mod common;

use std::path::PathBuf;

use common::{test_config, Answer, TestServer};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use parlor::config::BAD_JOIN_TOKENS_PER_MINUTE;
use parlor::Config;
use serde_json::{json, Value};

const SECRET: &str = "the-backend-and-parlor-share-this-32+-byte-secret";

fn config_with_secret() -> Config {
    let mut config = test_config();
    config.join_secret = Some(SECRET.to_owned());
    config
}

fn mint(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    encode(&Header::new(algorithm), claims, &key).unwrap()
}

/// A token as the backend mints it: HS256 with the shared secret.
fn token(claims: &Value) -> String {
    mint(Algorithm::HS256, SECRET, claims)
}

fn in_an_hour() -> u64 {
    get_current_timestamp() + 3600
}

/// Base64url without padding, as JWTs encode their parts.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token whose header names `alg`, with the given signature part.
fn hand_made(alg: &str, claims: &Value, signature: &str) -> String {
    let header = json!({"alg": alg, "typ": "JWT"}).to_string();
    let claims = claims.to_string();
    format!(
        "{}.{}.{signature}",
        base64url(header.as_bytes()),
        base64url(claims.as_bytes())
    )
}

async fn join_with(server: &TestServer, jwt: &str) -> Answer {
    server.post("/join", &[("auth", jwt)]).await
}

/// POST /join to the first node (in cluster mode the limit of bad tokens
/// is shared by every node: `tests/cluster_limits.rs` spreads them).
async fn join_on_first_node(server: &TestServer, jwt: &str) -> Answer {
    let form = common::encode_form(&[("auth", jwt)]);
    common::request_to(
        server.addr,
        hyper::Method::POST,
        "/join",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.into_bytes(),
    )
    .await
}

fn conversation_ids(joined: &Value) -> Vec<&str> {
    joined["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|conversation| conversation["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_valid_token_joins_its_user_into_its_rooms() {
    let server = TestServer::start_with(config_with_secret()).await;
    let claims = json!({"sub": "ann", "exp": in_an_hour(), "iat": get_current_timestamp(),
                        "rooms": ["games", "lobby", "games", "news"]});
    let joined = join_with(&server, &token(&claims)).await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    assert_eq!(joined.json["user"], "ann");
    assert_eq!(conversation_ids(&joined.json), ["lobby", "games", "news"]);

    // The rooms are real: another user sees ann in them.
    let bob = server.join("bob").await;
    let room = bob.post("/rooms/join", &[("name", "games")]).await;
    assert_eq!(room.status, 200, "{}", room.text);
    assert_eq!(room.json["conversation"]["members"], json!(["ann", "bob"]));

    // The token is a session like any other: ann polls and sends with it.
    let ann_token = joined.json["token"].as_str().unwrap();
    let sent = server
        .post(
            "/send",
            &[
                ("token", ann_token),
                ("conversation", "news"),
                ("text", "hi"),
            ],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);

    // JSON bodies work too, and `name` may repeat the token's `sub`.
    let body = json!({"auth": token(&json!({"sub": "ann", "exp": in_an_hour()})), "name": "ann"});
    let again = server.post_json("/join", &body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_ne!(again.json["client"], joined.json["client"]);
    let body = json!({"auth": token(&json!({"sub": "ann", "exp": in_an_hour()})), "name": "bob"});
    assert_eq!(
        server.post_json("/join", &body).await.code(),
        "invalid_param"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_bad_kind_of_token_is_refused_with_bad_auth_token() {
    let server = TestServer::start_with(config_with_secret()).await;
    let good = json!({"sub": "ann", "exp": in_an_hour()});
    let signed_good = token(&good);
    let hs256_signature = signed_good.rsplit('.').next().unwrap();
    let past = get_current_timestamp() - 3600;
    let cases = [
        (
            "bad signature",
            mint(
                Algorithm::HS256,
                "another secret entirely, also long",
                &good,
            ),
        ),
        ("alg none", hand_made("none", &good, "")),
        // The right signature under a header that claims none: still refused.
        (
            "alg none, signed",
            hand_made("none", &good, hs256_signature),
        ),
        ("HS512", mint(Algorithm::HS512, SECRET, &good)),
        ("RS256", hand_made("RS256", &good, hs256_signature)),
        ("expired", token(&json!({"sub": "ann", "exp": past}))),
        ("missing exp", token(&json!({"sub": "ann"}))),
        ("missing sub", token(&json!({"exp": in_an_hour()}))),
        (
            "sub not a name",
            token(&json!({"sub": "ann bob", "exp": in_an_hour()})),
        ),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ];
    for (kind, jwt) in &cases {
        let answer = join_with(&server, jwt).await;
        assert_eq!(answer.status, 401, "{kind}: {}", answer.text);
        assert_eq!(answer.code(), "bad_auth_token", "{kind}: {}", answer.text);
        if !jwt.is_empty() {
            assert!(
                !answer.text.contains(jwt.as_str()),
                "{kind} echoed the token"
            );
        }
    }
    // None of them created the account: the good token is the first in.
    let joined = join_with(&server, &signed_good).await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    server.stop().await;
}

#[tokio::test]
async fn a_name_keeps_its_kind_whichever_way_it_was_made() {
    let server = TestServer::start_with(config_with_secret()).await;
    server.join("pat").await; // a password account
    let answer = join_with(&server, &token(&json!({"sub": "pat", "exp": in_an_hour()}))).await;
    assert_eq!(
        (answer.status, answer.code()),
        (401, "bad_auth_token"),
        "{}",
        answer.text
    );

    let made = join_with(&server, &token(&json!({"sub": "jo", "exp": in_an_hour()}))).await;
    assert_eq!(made.status, 200, "{}", made.text);
    for password in ["pw-jo", "", "anything"] {
        let answer = server
            .post("/join", &[("name", "jo"), ("password", password)])
            .await;
        assert_eq!(answer.status, if password.is_empty() { 400 } else { 401 });
        if !password.is_empty() {
            assert_eq!(answer.code(), "bad_credentials", "{}", answer.text);
        }
    }
    // A password with the token is a mistake, not a choice.
    let both = server
        .post(
            "/join",
            &[
                ("auth", &token(&json!({"sub": "jo", "exp": in_an_hour()}))),
                ("password", "pw"),
            ],
        )
        .await;
    assert_eq!(both.code(), "invalid_param", "{}", both.text);
    server.stop().await;
}

#[tokio::test]
async fn without_a_secret_a_token_is_a_clear_400() {
    let server = TestServer::start().await;
    let answer = join_with(&server, &token(&json!({"sub": "ann", "exp": in_an_hour()}))).await;
    assert_eq!(
        (answer.status, answer.code()),
        (400, "jwt_join_disabled"),
        "{}",
        answer.text
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_from_one_address_are_limited_and_good_ones_still_join() {
    let server = TestServer::start_with(config_with_secret()).await;
    let bad = mint(
        Algorithm::HS256,
        "not the secret, but long enough too",
        &json!({"sub": "ann", "exp": in_an_hour()}),
    );
    for _ in 0..BAD_JOIN_TOKENS_PER_MINUTE {
        assert_eq!(
            join_on_first_node(&server, &bad).await.code(),
            "bad_auth_token"
        );
    }
    let limited = join_on_first_node(&server, &bad).await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.code(), "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    let good =
        join_on_first_node(&server, &token(&json!({"sub": "ann", "exp": in_an_hour()}))).await;
    assert_eq!(good.status, 200, "{}", good.text);
    server.stop().await;
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-jwt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn the_kind_of_an_account_survives_a_restart() {
    let dir = data_dir("restart");
    let mut config = config_with_secret();
    config.ephemeral = false;
    config.data_dir = dir.clone();

    let server = TestServer::start_with(config.clone()).await;
    let made = join_with(&server, &token(&json!({"sub": "jo", "exp": in_an_hour()}))).await;
    assert_eq!(made.status, 200, "{}", made.text);
    server.join("pat").await;
    server.stop().await;

    let server = TestServer::start_with(config).await;
    let password = server
        .post("/join", &[("name", "jo"), ("password", "pw-jo")])
        .await;
    assert_eq!(password.code(), "bad_credentials", "{}", password.text);
    let jwt = join_with(&server, &token(&json!({"sub": "pat", "exp": in_an_hour()}))).await;
    assert_eq!(jwt.code(), "bad_auth_token", "{}", jwt.text);
    let again = join_with(&server, &token(&json!({"sub": "jo", "exp": in_an_hour()}))).await;
    assert_eq!(again.status, 200, "{}", again.text);
    server.join("pat").await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_secret_comes_from_a_file_and_a_short_one_stops_the_start() {
    let dir = data_dir("secret-file");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("join-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let mut config = test_config();
    config.join_secret_file = Some(file.clone());
    config.read_join_secret_file().unwrap();
    assert_eq!(
        config.join_secret.as_deref(),
        Some(SECRET),
        "one newline trimmed"
    );

    std::fs::write(&file, "too short\n").unwrap();
    let mut config = test_config();
    config.join_secret_file = Some(file);
    config.read_join_secret_file().unwrap();
    let error = parlor::Server::open(config)
        .err()
        .expect("a short secret is refused");
    assert!(error.to_string().contains("at least 32"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
