//! Repeat loads of the browser client: every file the page loads is
//! revalidated (`no-cache` with an `ETag`), an unchanged file costs a 304
//! with no body, a deployed change is seen on the next load, and a
//! conditional request never turns a refused path into an answer.
//!
//! tests/http_edges.rs covers the headers of a first load and the plain
//! refusals of paths outside the public directory; this file covers what
//! happens across loads.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{test_config, Answer, TestServer};
use hyper::Method;

/// How long a raw request may wait for the server to answer and close.
const PATIENCE: Duration = Duration::from_secs(10);

/// A scratch directory holding `public/` and a secret file beside it,
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root =
            std::env::temp_dir().join(format!("parlor-caching-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(root.join("public")).unwrap();
        std::fs::write(root.join("outside.txt"), "secret").unwrap();
        Scratch(root)
    }

    fn public(&self) -> PathBuf {
        self.0.join("public")
    }

    async fn serve(&self) -> TestServer {
        let mut config = test_config();
        config.public_dir = self.public();
        TestServer::start_with(config).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn etag_of(answer: &Answer) -> String {
    let etag = answer
        .headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag: {:?}", answer.headers));
    etag.to_str().unwrap().to_owned()
}

async fn get_if_none_match(server: &TestServer, path: &str, tags: &str) -> Answer {
    server
        .request(Method::GET, path, &[("if-none-match", tags)], Vec::new())
        .await
}

/// A 304 that keeps the browser's copy: no body, the same tag, and still
/// `no-cache` so that the next load asks again.
fn assert_not_modified(answer: &Answer, etag: &str, what: &str) {
    assert_eq!(answer.status, 304, "{what}: {}", answer.text);
    assert!(answer.text.is_empty(), "{what}: a 304 has no body");
    assert_eq!(etag_of(answer), etag, "{what}");
    assert_eq!(answer.headers["cache-control"], "no-cache", "{what}");
}

#[tokio::test]
async fn a_reload_costs_no_body_and_a_deploy_is_seen_at_once() {
    let scratch = Scratch::new();
    let script = scratch.public().join("app.js");
    std::fs::write(&script, "var version = 1;\n").unwrap();
    let server = scratch.serve().await;

    let first = server.get("/app.js", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text, "var version = 1;\n");
    assert_eq!(first.headers["cache-control"], "no-cache");
    let etag = etag_of(&first);
    let reload = get_if_none_match(&server, "/app.js", &etag).await;
    assert_not_modified(&reload, &etag, "unchanged file");

    // A deploy that changes the size.
    std::fs::write(&script, "var version = 22;\n").unwrap();
    let deployed = get_if_none_match(&server, "/app.js", &etag).await;
    assert_eq!(deployed.status, 200);
    assert_eq!(deployed.text, "var version = 22;\n");
    let new_etag = etag_of(&deployed);
    assert_ne!(new_etag, etag);
    let reload = get_if_none_match(&server, "/app.js", &new_etag).await;
    assert_not_modified(&reload, &new_etag, "after the deploy");

    // A deploy of the same size: only the modification time tells. Set it
    // explicitly, so that a file system with coarse timestamps cannot hide it.
    std::fs::write(&script, "var version = 33;\n").unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&script)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let same_size = get_if_none_match(&server, "/app.js", &new_etag).await;
    assert_eq!(same_size.status, 200);
    assert_eq!(same_size.text, "var version = 33;\n");
}

#[tokio::test]
async fn if_none_match_takes_a_list_either_form_of_the_tag_and_head() {
    let scratch = Scratch::new();
    std::fs::write(scratch.public().join("app.css"), "p { margin: 0 }\n").unwrap();
    let server = scratch.serve().await;
    let etag = etag_of(&server.get("/app.css", &[]).await);

    // What a cache or proxy may send back: a list, or the tag without W/.
    let listed = format!("\"elsewhere\", {etag}");
    let strong_form = etag.trim_start_matches("W/").to_owned();
    for tags in [listed.as_str(), strong_form.as_str(), "*"] {
        let answer = get_if_none_match(&server, "/app.css", tags).await;
        assert_not_modified(&answer, &etag, tags);
    }
    let head = server
        .request(
            Method::HEAD,
            "/app.css",
            &[("if-none-match", &etag)],
            Vec::new(),
        )
        .await;
    assert_not_modified(&head, &etag, "HEAD");
}

#[tokio::test]
async fn every_file_the_page_loads_revalidates_to_304() {
    let mut config = test_config();
    config.public_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("public");
    let server = TestServer::start_with(config).await;

    let page = server.get("/", &[]).await;
    assert_eq!(page.status, 200);
    let mut files = vec![("/".to_owned(), "text/html")];
    for (attribute, kind) in [
        ("<script src=\"", "text/javascript"),
        ("<link rel=\"stylesheet\" href=\"", "text/css"),
    ] {
        for piece in page.text.split(attribute).skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            files.push((format!("/{name}"), kind));
        }
    }
    assert!(
        files.iter().any(|(_, kind)| *kind == "text/javascript"),
        "index.html loads no script"
    );
    assert!(
        files.iter().any(|(_, kind)| *kind == "text/css"),
        "index.html loads no stylesheet"
    );

    for (path, kind) in &files {
        let first = server.get(path, &[]).await;
        assert_eq!(first.status, 200, "{path}");
        assert!(!first.text.is_empty(), "{path}");
        let content_type = first.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let etag = etag_of(&first);
        let reload = get_if_none_match(&server, path, &etag).await;
        assert_not_modified(&reload, &etag, path);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_conditional_request_cannot_reach_outside_the_public_directory() {
    let scratch = Scratch::new();
    let public = scratch.public();
    std::fs::write(public.join("index.html"), "<p>scratch").unwrap();
    std::fs::write(public.join(".hidden"), "secret").unwrap();
    std::os::unix::fs::symlink(scratch.0.join("outside.txt"), public.join("leak.txt")).unwrap();
    let server = scratch.serve().await;

    // `*` matches any file that exists: answering it with 304 would tell
    // that a refused file is there. Sent raw, so that no client library
    // tidies the path.
    for target in [
        "/leak.txt",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/.hidden",
        "/missing.txt",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nIf-None-Match: *\r\nConnection: close\r\n\r\n"
        );
        let answer = server.raw(request.as_bytes(), PATIENCE).await;
        assert!(
            answer.starts_with("HTTP/1.1 404 "),
            "GET {target} with If-None-Match: *: {answer}"
        );
        assert!(!answer.contains("secret"), "GET {target} leaked the file");
    }
}
