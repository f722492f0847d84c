//! Reading a request into typed parameters.
//!
//! Every endpoint takes its parameters from the query string and, for POST,
//! from a body that is either `application/json` (an object) or
//! `application/x-www-form-urlencoded` (what `curl -d` and old browsers'
//! forms send); body fields override query fields. The body is bounded:
//! a declared `Content-Length` over the limit is refused before reading, an
//! undeclared one is cut off at the limit, and a body that trickles in is
//! cut off after `BODY_READ_TIMEOUT`.

use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::StatusCode;
use serde_json::Value;

use crate::config::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use crate::error::{ApiError, ApiResult};

/// A request's parameters, whatever encoding they came in.
#[derive(Debug, Default)]
pub struct Params {
    /// (name, value) in arrival order: query first, then body. Looked up
    /// from the back, so a later value wins. A request has a handful of
    /// parameters: a scan beats hashing them, and a body with thousands of
    /// keys costs O(keys) to read rather than quadratic deduplication.
    values: Vec<(String, Value)>,
    /// The token from `Authorization: Bearer ...`, if sent.
    bearer: Option<String>,
    /// Whether the body was JSON (some endpoints accept only JSON).
    pub json_body: bool,
}

/// A request's parameters as far as its head gives them (query, bearer
/// token), and its body still to read, if it has one. What a request keeps
/// once its head is dropped: the head shares hyper's read buffer, which a
/// parked poll must not pin (see `http`'s module doc).
#[derive(Debug, Default)]
pub struct Unread {
    params: Params,
    body: Option<(Incoming, MediaType)>,
}

/// What a body's `Content-Type` says it is.
#[derive(Debug, Clone, Copy)]
enum MediaType {
    Json,
    Form,
    Other,
}

impl Params {
    /// Reads the query and bearer parameters from a request's head; the
    /// body (`body`, when it is not empty) is read by `Unread::read`.
    pub fn from_head(head: &Parts, body: Incoming) -> ApiResult<Unread> {
        let mut params = Params {
            bearer: bearer_token(&head.headers)?,
            ..Params::default()
        };
        if let Some(query) = head.uri.query() {
            for (key, value) in decode_form(query.as_bytes())? {
                params.values.push((key, Value::String(value)));
            }
        }
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(body_too_large());
        }
        // A GET without a body (every poll but a form POST) reads nothing.
        if body.is_end_stream() {
            return Ok(Unread { params, body: None });
        }
        let content_type = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        let media_type = if media_type.eq_ignore_ascii_case("application/json") {
            MediaType::Json
        } else if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            MediaType::Form
        } else {
            MediaType::Other
        };
        Ok(Unread {
            params,
            body: Some((body, media_type)),
        })
    }
}

impl Unread {
    /// The parameters, with the body's (if any) read into them.
    pub async fn read(self) -> ApiResult<Params> {
        match self.body {
            None => Ok(self.params),
            // Boxed: most requests have no body, and a parked poll's
            // future would otherwise keep room for the read (a timer and
            // the collected frames) for its whole wait.
            Some((body, media_type)) => Box::pin(read_into(self.params, body, media_type)).await,
        }
    }
}

/// Adds the parameters of `body` to `params`.
async fn read_into(mut params: Params, body: Incoming, media_type: MediaType) -> ApiResult<Params> {
    let body = read_body(body).await?;
    if body.is_empty() {
        return Ok(params);
    }
    match media_type {
        MediaType::Json => {
            let object = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(object)) => object,
                Ok(_) => {
                    return Err(ApiError::bad_request(
                        "invalid_json",
                        "the JSON body must be an object",
                    ))
                }
                Err(error) => {
                    return Err(ApiError::bad_request(
                        "invalid_json",
                        format!("the body is not valid JSON: {error}"),
                    ))
                }
            };
            params.values.extend(object);
            params.json_body = true;
        }
        MediaType::Form => {
            for (key, value) in decode_form(&body)? {
                params.values.push((key, Value::String(value)));
            }
        }
        MediaType::Other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json or application/x-www-form-urlencoded",
            ))
        }
    }
    Ok(params)
}

impl Params {
    /// A string parameter, if present.
    pub fn optional_str(&self, name: &str) -> ApiResult<Option<&str>> {
        match self.value(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid_param(name, "a string")),
        }
    }

    pub fn str(&self, name: &str) -> ApiResult<&str> {
        self.optional_str(name)?
            .ok_or_else(|| ApiError::missing_param(name))
    }

    /// A non-negative integer, given as a JSON number or as decimal text.
    pub fn optional_u64(&self, name: &str) -> ApiResult<Option<u64>> {
        let invalid = || ApiError::invalid_param(name, "a non-negative integer");
        match self.value(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => number.as_u64().map(Some).ok_or_else(invalid),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| invalid()),
            Some(_) => Err(invalid()),
        }
    }

    pub fn u64(&self, name: &str) -> ApiResult<u64> {
        self.optional_u64(name)?
            .ok_or_else(|| ApiError::missing_param(name))
    }

    /// A raw JSON value (for endpoints that take structured data).
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The client token: `Authorization: Bearer` first, else a `token` field.
    pub fn token(&self) -> ApiResult<&str> {
        if let Some(bearer) = &self.bearer {
            return Ok(bearer);
        }
        self.optional_str("token")?.ok_or_else(missing_token)
    }

    /// The client token as `token` finds it, taken out of the parameters
    /// (no copy), which are dropped.
    pub fn into_token(mut self) -> ApiResult<String> {
        if let Some(bearer) = self.bearer.take() {
            return Ok(bearer);
        }
        let at = self.values.iter().rposition(|(key, _)| key == "token");
        match at.map(|at| self.values.swap_remove(at).1) {
            Some(Value::String(token)) => Ok(token),
            None | Some(Value::Null) => Err(missing_token()),
            Some(_) => Err(ApiError::invalid_param("token", "a string")),
        }
    }

    /// The bearer token only (for the admin endpoint).
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }
}

fn missing_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing_token",
        "send the token from /join as `Authorization: Bearer TOKEN` or a `token` parameter",
    )
}

fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
    )
}

async fn read_body(body: Incoming) -> ApiResult<Bytes> {
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await;
    match collected {
        Err(_elapsed) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(body_too_large()),
        Ok(Err(error)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("the body could not be read: {error}"),
        )),
    }
}

fn bearer_token(headers: &hyper::HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
            "the Authorization header must be `Bearer TOKEN`",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    // Any other scheme (Basic, Digest, Negotiate) is a proxy's credentials
    // in front of parlor, not the client's: the token then comes from the
    // `token` parameter, as it would without the proxy.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if token.trim().is_empty() {
        return Err(invalid());
    }
    Ok(Some(token.trim().to_owned()))
}

/// Decodes `a=1&b=x+y%21` into pairs. Invalid percent escapes or UTF-8 are
/// errors, not silently replaced: the client must learn its data was bad.
pub fn decode_form(input: &[u8]) -> ApiResult<Vec<(String, String)>> {
    input
        .split(|&byte| byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut halves = pair.splitn(2, |&byte| byte == b'=');
            let key = percent_decode(halves.next().unwrap_or_default())?;
            let value = percent_decode(halves.next().unwrap_or_default())?;
            Ok((key, value))
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> ApiResult<String> {
    let mut bytes = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        match input[index] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = input
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_form",
                            "a `%` escape must be followed by two hex digits",
                        )
                    })?;
                bytes.push(hex);
                index += 2;
            }
            byte => bytes.push(byte),
        }
        index += 1;
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_utf8", "parameters must be UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_escapes_and_rejects_bad_input() {
        let pairs = decode_form(b"name=ann+lee&text=%3Cb%3E%F0%9F%98%80&empty=&flag").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("name".into(), "ann lee".into()),
                ("text".into(), "<b>😀".into()),
                ("empty".into(), "".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert_eq!(decode_form(b"a=%zz").unwrap_err().code, "invalid_form");
        assert_eq!(decode_form(b"a=%4").unwrap_err().code, "invalid_form");
        assert_eq!(decode_form(b"a=%ff%fe").unwrap_err().code, "invalid_utf8");
    }
}
