//! The browser client's security headers: the page, and every file served
//! beside it, lets the browser run only this origin's scripts (never inline,
//! never `eval`) and forbids other sites to frame it.
//!
//! tests/browser/csp.test.js checks in Chromium that the client works under
//! this policy with nothing refused.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{test_config, Answer, TestServer};
use hyper::Method;

/// Sources that would let injected text run as code, or load from anywhere.
const LOOSE_SOURCES: [&str; 5] = [
    "'unsafe-inline'",
    "'unsafe-eval'",
    "'unsafe-hashes'",
    "*",
    "'wasm-unsafe-eval'",
];

/// A server of the real client in `public/`.
async fn serve_the_client() -> TestServer {
    let mut config = test_config();
    config.public_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("public");
    TestServer::start_with(config).await
}

fn header<'a>(answer: &'a Answer, name: &str, what: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("{what}: no {name}: {:?}", answer.headers))
        .to_str()
        .unwrap_or_else(|_| panic!("{what}: {name} is not text"))
}

/// The `Content-Security-Policy` of an answer: directive -> its sources.
fn policy(answer: &Answer, what: &str) -> HashMap<String, Vec<String>> {
    let mut directives = HashMap::new();
    for directive in header(answer, "content-security-policy", what).split(';') {
        let mut words = directive.split_whitespace().map(str::to_owned);
        if let Some(name) = words.next() {
            let previous = directives.insert(name.to_ascii_lowercase(), words.collect());
            assert!(previous.is_none(), "{what}: a directive given twice");
        }
    }
    directives
}

#[tokio::test]
async fn the_page_runs_only_its_own_scripts_and_cannot_be_framed() {
    let server = serve_the_client().await;
    let page = server.get("/", &[]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let csp = policy(&page, "/");

    assert_eq!(csp["default-src"], ["'self'"]);
    assert_eq!(csp["frame-ancestors"], ["'none'"]);
    assert_eq!(csp["object-src"], ["'none'"]);
    assert_eq!(csp["base-uri"], ["'none'"]);
    // Scripts, styles and requests fall back to default-src, or are no wider.
    for fetched in ["script-src", "style-src", "connect-src"] {
        if let Some(sources) = csp.get(fetched) {
            assert_eq!(sources, &["'self'"], "{fetched}");
        }
    }
    for (directive, sources) in &csp {
        for loose in LOOSE_SOURCES {
            assert!(
                !sources.iter().any(|source| source == loose),
                "{directive} allows {loose}"
            );
        }
    }
    // For browsers that predate frame-ancestors.
    assert_eq!(header(&page, "x-frame-options", "/"), "DENY");
    assert_eq!(header(&page, "referrer-policy", "/"), "no-referrer");
}

#[tokio::test]
async fn every_static_answer_carries_the_same_policy() {
    let server = serve_the_client().await;
    let page = server.get("/", &[]).await;
    let expected = header(&page, "content-security-policy", "/").to_owned();

    let mut answers = Vec::new();
    for path in ["/index.html", "/app.js", "/base.js", "/app.css"] {
        let first = server.get(path, &[]).await;
        assert_eq!(first.status, 200, "{path}");
        // A 304 replaces the stored headers in some caches: it carries them too.
        let etag = header(&first, "etag", path).to_owned();
        let reload = server
            .request(Method::GET, path, &[("if-none-match", &etag)], Vec::new())
            .await;
        assert_eq!(reload.status, 304, "{path}");
        answers.push((format!("GET {path}"), first));
        answers.push((format!("GET {path} again"), reload));
    }
    let head = server.request(Method::HEAD, "/", &[], Vec::new()).await;
    answers.push(("HEAD /".to_owned(), head));

    for (what, answer) in &answers {
        assert_eq!(
            header(answer, "content-security-policy", what),
            expected,
            "{what}"
        );
        assert_eq!(header(answer, "x-frame-options", what), "DENY", "{what}");
        assert_eq!(
            header(answer, "referrer-policy", what),
            "no-referrer",
            "{what}"
        );
    }
}
