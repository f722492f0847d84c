//! The online list in pages: /join and /sync list the first `ONLINE_PAGE`
//! users online (and the lobby's members) with how many there are, the
//! caller's own status apart, and GET /users pages through everyone with
//! `after` and `limit`. An API contract, so it runs against a cluster too.

mod common;

use common::{join_all, Answer, TestClient, TestServer};
use parlor::config::{MAX_USERS_PAGE, ONLINE_PAGE};
use serde_json::{json, Value};

/// More users than a /join answer lists.
const CROWD: usize = ONLINE_PAGE + 50;

/// Joins `count` users named `u0`, `u1`, ... (so that name order is not
/// join order: `u10` comes before `u2`); their names, sorted.
async fn join_crowd(server: &TestServer, count: usize) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|n| format!("u{n}")).collect();
    for batch in names.chunks(25) {
        let joins = batch.iter().map(|name| {
            let password = format!("pw-{name}");
            async move {
                server
                    .post("/join", &[("name", name), ("password", &password)])
                    .await
            }
        });
        for answer in join_all(joins).await {
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    }
    let mut sorted = names;
    sorted.sort();
    sorted
}

fn names_of(users: &Value) -> Vec<String> {
    users
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {users}"))
        .iter()
        .map(|user| user["name"].as_str().unwrap().to_owned())
        .collect()
}

fn lobby_of(answer: &Value) -> &Value {
    let lobby = &answer["conversations"][0];
    assert_eq!(lobby["id"], "lobby", "{answer}");
    lobby
}

fn assert_invalid_param(answer: &Answer, what: &str) {
    assert_eq!(
        (answer.status, answer.code()),
        (400, "invalid_param"),
        "{what}: {}",
        answer.text
    );
}

/// The first page of `online` (sorted) as a /join or /sync answer shows
/// it, with `zed` busy; `zed` sorts after every `u...`, so is not on it.
fn assert_first_page(answer: &Value, online: &[String]) {
    let page = &online[..ONLINE_PAGE];
    assert_eq!(names_of(&answer["users"]), page);
    assert_eq!(answer["users_total"], online.len());
    assert_eq!(answer["users_next"], online[ONLINE_PAGE - 1].as_str());
    assert_eq!(answer["status"], "busy", "the caller's own status");
    let lobby = lobby_of(answer);
    assert_eq!(lobby["members"], json!(page));
    assert_eq!(lobby["member_count"], online.len());
}

#[tokio::test]
async fn a_join_into_a_big_lobby_lists_the_first_page_and_the_callers_status() {
    let server = TestServer::start().await;
    let mut online = join_crowd(&server, CROWD).await;
    let zed = server.join("zed").await;
    online.push("zed".to_owned());
    let busy = zed.post("/status", &[("status", "busy")]).await;
    assert_eq!(busy.status, 200, "{}", busy.text);
    // A second client process of zed: its status is busy, off the page.
    let again = server
        .post("/join", &[("name", "zed"), ("password", "pw-zed")])
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_first_page(&again.json, &online);
    assert!(again.json["users"][0]["status"] == "online");
    let synced = zed.get("/sync", &[]).await;
    assert_eq!(synced.status, 200, "{}", synced.text);
    assert_first_page(&synced.json, &online);
    // /rooms/join of the lobby answers the same page, not everyone.
    let lobby = zed.post("/rooms/join", &[("name", "lobby")]).await;
    assert_eq!(lobby.status, 200, "{}", lobby.text);
    let lobby = &lobby.json["conversation"];
    assert_eq!(lobby["members"], json!(&online[..ONLINE_PAGE]));
    assert_eq!(lobby["member_count"], online.len());
}

#[tokio::test]
async fn paging_users_walks_everyone_once_in_name_order() {
    let server = TestServer::start().await;
    let mut online = join_crowd(&server, CROWD).await;
    let zed = server.join("zed").await;
    online.push("zed".to_owned());

    // Without parameters: everyone, as fewer than the default page.
    let all = zed.get("/users", &[]).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(names_of(&all.json["users"]), online);
    assert_eq!(all.json["total"], online.len());
    assert!(all.json.get("next").is_none(), "{}", all.json["next"]);

    for limit in [1, 7, ONLINE_PAGE, online.len()] {
        let mut walked = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let limit_text = limit.to_string();
            let mut query = vec![("limit", limit_text.as_str())];
            if let Some(after) = &after {
                query.push(("after", after));
            }
            let page = zed.get("/users", &query).await;
            assert_eq!(page.status, 200, "{}", page.text);
            let names = names_of(&page.json["users"]);
            assert!(
                names.len() <= limit,
                "limit {limit}: {} listed",
                names.len()
            );
            assert_eq!(page.json["total"], online.len());
            walked.extend(names.iter().cloned());
            match page.json.get("next") {
                Some(next) => {
                    assert_eq!(
                        next,
                        names.last().unwrap().as_str(),
                        "next is the last listed"
                    );
                    after = Some(next.as_str().unwrap().to_owned());
                }
                None => break,
            }
            assert!(walked.len() <= online.len(), "limit {limit}: walks on");
        }
        assert_eq!(walked, online, "limit {limit}: each once, in order");
    }

    // `after` a name nobody online has: the names after it.
    let page = zed.get("/users", &[("after", "u2"), ("limit", "2")]).await;
    assert_eq!(names_of(&page.json["users"]), ["u20", "u200"]);
    let past_the_end = zed.get("/users", &[("after", "zzz")]).await;
    assert_eq!(
        past_the_end.json,
        json!({"users": [], "total": online.len()})
    );
}

#[tokio::test]
async fn users_pages_are_bounded_and_bad_parameters_are_refused() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let most = MAX_USERS_PAGE.to_string();
    let ok = ann.get("/users", &[("limit", &most), ("after", "")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let too_many = (MAX_USERS_PAGE + 1).to_string();
    for limit in ["0", too_many.as_str(), "-1", "ten", "1.5"] {
        let answer = ann.get("/users", &[("limit", limit)]).await;
        assert_invalid_param(&answer, &format!("limit={limit}"));
    }
    let long = "x".repeat(33);
    for after in ["not a name", "ann!", "dialog:ann:bob", long.as_str()] {
        let answer = ann.get("/users", &[("after", after)]).await;
        assert_invalid_param(&answer, &format!("after={after}"));
    }
}

#[tokio::test]
async fn a_small_lobby_is_listed_whole() {
    let server = TestServer::start().await;
    let _ann = server.join("ann").await;
    let bob = server.join("bob").await;
    let away = bob.post("/status", &[("status", "away")]).await;
    assert_eq!(away.status, 200, "{}", away.text);
    let carol: TestClient = server.join("carol").await;
    let joined = &carol.joined;
    assert_eq!(
        joined["users"],
        json!([
            {"name": "ann", "status": "online"},
            {"name": "bob", "status": "away"},
            {"name": "carol", "status": "online"},
        ])
    );
    assert_eq!(joined["users_total"], 3);
    assert!(joined.get("users_next").is_none(), "{joined}");
    assert_eq!(joined["status"], "online");
    let lobby = lobby_of(joined);
    assert_eq!(lobby["members"], json!(["ann", "bob", "carol"]));
    assert_eq!(lobby["member_count"], 3);
    let synced = bob.get("/sync", &[]).await;
    assert_eq!(synced.json["status"], "away");
    assert_eq!(synced.json["users"], joined["users"]);
    let lobby = carol.post("/rooms/join", &[("name", "lobby")]).await;
    assert_eq!(
        lobby.json["conversation"],
        json!({"id": "lobby", "kind": "room", "name": "lobby",
               "members": ["ann", "bob", "carol"], "member_count": 3})
    );
    let users = carol.get("/users", &[]).await;
    assert_eq!(users.json, json!({"users": joined["users"], "total": 3}));
}
