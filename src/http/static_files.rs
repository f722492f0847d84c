//! The browser client's files, served from the public directory.
//!
//! A request path is accepted only as plain segments of letters, digits,
//! `_`, `-` and `.` (no `..`, no hidden files, no backslashes or encoded
//! slashes), and the file found is checked, after resolving symlinks, to lie
//! inside the public directory: nothing outside it is ever served. Every file
//! is revalidated on each load (`no-cache` with an `ETag`, answered 304 with
//! no body when unchanged): a deploy reaches browsers at once, the page and
//! all its scripts together, while an unchanged file costs a round trip of
//! headers only.
//!
//! Every file also carries the page's security policy (see
//! [`SECURITY_HEADERS`]): scripts and styles only from this origin, never
//! inline and never `eval`, and no framing by another site. The client in
//! the public directory is written to work under it.

use std::path::{Path, PathBuf};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Response, StatusCode};

use super::response::Body;
use crate::error::{ApiError, ApiResult};

/// Longest request path considered for a static file.
const MAX_STATIC_PATH: usize = 256;
/// Largest file served (the client's files are a few KiB).
const MAX_STATIC_FILE: u64 = 4 * 1024 * 1024;

/// What the browser may do with a page from here, on every file served
/// (a policy on a script or stylesheet is ignored, but any page added to
/// the public directory gets it without another line of code).
///
/// - `default-src 'self'`: scripts, styles and XHR only from this origin,
///   and with no `'unsafe-inline'` or `'unsafe-eval'`, no inline script,
///   no `on...=` handler, no `style=` attribute and no `eval`: text a user
///   managed to slip into the page still could not run.
/// - `img-src 'self' data:`: the page's empty `data:,` icon, which spares
///   browsers a request for `/favicon.ico`.
/// - `object-src 'none'; base-uri 'none'`: no plugins, and no `<base>` to
///   redirect the page's relative script paths.
/// - `form-action 'self'`: the forms, should a script fail, post here.
/// - `frame-ancestors 'none'`, and `X-Frame-Options: DENY` for browsers
///   that predate it: no other site can frame the chat to trick clicks.
/// - `Referrer-Policy: no-referrer`: a link followed out of a conversation
///   does not tell the other site where it came from.
const SECURITY_HEADERS: [(HeaderName, &str); 3] = [
    (
        CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    (X_FRAME_OPTIONS, "DENY"),
    (REFERRER_POLICY, "no-referrer"),
];

pub async fn serve(
    public_dir: &Path,
    method: &Method,
    path: &str,
    request_headers: &HeaderMap,
) -> ApiResult<Response<Body>> {
    let relative = safe_relative_path(path).ok_or_else(not_found)?;
    let root = tokio::fs::canonicalize(public_dir)
        .await
        .map_err(|_| not_found())?;
    let file = tokio::fs::canonicalize(root.join(&relative))
        .await
        .map_err(|_| not_found())?;
    if !file.starts_with(&root) {
        return Err(not_found());
    }
    let metadata = tokio::fs::metadata(&file).await.map_err(|_| not_found())?;
    if !metadata.is_file() || metadata.len() > MAX_STATIC_FILE {
        return Err(not_found());
    }
    // A weak validator from size and modification time: cheap, and it
    // changes whenever a deploy replaces the file.
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    let etag = format!("W/\"{:x}-{:x}\"", metadata.len(), modified);
    let unchanged = request_headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| none_match_hits(tags, &etag));

    let (status, content) = if unchanged {
        (StatusCode::NOT_MODIFIED, Vec::new())
    } else if method == Method::HEAD {
        (StatusCode::OK, Vec::new())
    } else {
        let content = tokio::fs::read(&file).await.map_err(|_| not_found())?;
        (StatusCode::OK, content)
    };

    let mut response = Response::new(Full::new(Bytes::from(content)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    Ok(response)
}

/// Whether an `If-None-Match` list names `etag` (or is `*`). The comparison
/// is the weak one RFC 9110 prescribes for this header: `W/"x"` and `"x"`
/// are the same tag, since a cache or proxy may hand back either form.
fn none_match_hits(tags: &str, etag: &str) -> bool {
    fn opaque(tag: &str) -> &str {
        let tag = tag.trim();
        tag.strip_prefix("W/").unwrap_or(tag)
    }
    tags.split(',')
        .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(etag))
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such file or endpoint",
    )
}

/// `/` → `index.html`; `/css/app.css` → `css/app.css`; anything with an
/// unexpected character, an empty, hidden or `..` segment → None.
fn safe_relative_path(path: &str) -> Option<PathBuf> {
    if path.len() > MAX_STATIC_PATH || !path.starts_with('/') {
        return None;
    }
    let trimmed = &path[1..];
    if trimmed.is_empty() {
        return Some(PathBuf::from("index.html"));
    }
    let mut relative = PathBuf::new();
    for segment in trimmed.split('/') {
        let plain = !segment.is_empty()
            && !segment.starts_with('.')
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !plain {
            return None;
        }
        relative.push(segment);
    }
    Some(relative)
}

fn content_type(file: &Path) -> &'static str {
    let extension = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_map_to_files() {
        assert_eq!(safe_relative_path("/"), Some(PathBuf::from("index.html")));
        assert_eq!(safe_relative_path("/app.js"), Some(PathBuf::from("app.js")));
        assert_eq!(
            safe_relative_path("/img/a-b_c.png"),
            Some(PathBuf::from("img/a-b_c.png"))
        );
        for bad in [
            "/../Cargo.toml",
            "/a/../../etc/passwd",
            "/.git/config",
            "//etc/passwd",
            "/a\\b",
            "/%2e%2e/x",
            "/a//b",
            "relative",
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "W/\"1f-2a\"";
        for hit in ["W/\"1f-2a\"", "\"1f-2a\"", " \"old\" , W/\"1f-2a\" ", "*"] {
            assert!(none_match_hits(hit, etag), "{hit}");
        }
        for miss in ["W/\"1f-2b\"", "\"1f-2a", "", "W/"] {
            assert!(!none_match_hits(miss, etag), "{miss}");
        }
    }
}
