//! Cross-origin pages: which origins `--allow-origin` admits, the answer to
//! a CORS preflight, and the headers an admitted origin's answers carry.
//!
//! Tokens travel in the `Authorization` header or the body, never in a
//! cookie, so an admitted origin gains nothing a page could not already do
//! with a token it holds; `*` is therefore allowed too. An origin not
//! admitted gets no CORS headers at all, and its browser withholds the
//! answers from the page.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use hyper::{Response, StatusCode};

use super::response::Body;

/// The origins whose pages may call the API.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), as configured.
    origins: Vec<HeaderValue>,
    /// `*` was configured: every origin is admitted.
    any: bool,
}

impl Cors {
    /// From `--allow-origin` values; each is `*` or `scheme://host[:port]`.
    pub fn new(origins: &[String]) -> Result<Cors, String> {
        let mut cors = Cors::default();
        for origin in origins {
            let origin = origin.trim().trim_end_matches('/');
            if origin == "*" {
                cors.any = true;
                continue;
            }
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b".-:[]".contains(&byte))
            });
            if !valid {
                return Err(format!(
                    "--allow-origin {origin:?} is not `*` or an origin like https://app.example.com"
                ));
            }
            let value = HeaderValue::from_str(origin).map_err(|error| error.to_string())?;
            cors.origins.push(value);
        }
        Ok(cors)
    }

    /// What `Access-Control-Allow-Origin` says to this request, if its
    /// `Origin` is admitted. The value is the configured one, never the
    /// request's own bytes: those share hyper's read buffer, which a parked
    /// poll must not pin.
    pub fn admit(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.origins.is_empty() && !self.any {
            return None;
        }
        let origin = headers.get(ORIGIN)?;
        if let Some(admitted) = self.origins.iter().find(|admitted| *admitted == origin) {
            return Some(admitted.clone());
        }
        self.any.then(|| HeaderValue::from_static("*"))
    }
}

/// Whether a request is a CORS preflight (not a plain OPTIONS).
pub fn is_preflight(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to an admitted preflight: which methods the path takes and
/// that the token may come in `Authorization`.
pub fn preflight(origin: HeaderValue, allow_methods: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    if let Ok(methods) = HeaderValue::from_str(allow_methods) {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
    }
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    // Ten minutes: browsers cap it lower anyway, and a page polls often.
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    admit_answer(&mut response, origin);
    response
}

/// Marks an answer as readable by the admitted origin.
pub fn admit_answer(response: &mut Response<Body>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // A 429's Retry-After is for the page too.
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers
    }

    #[test]
    fn only_configured_origins_are_admitted() {
        let cors = Cors::new(&["https://app.example.com/".to_owned()]).unwrap();
        assert_eq!(
            cors.admit(&request_from("https://app.example.com")),
            Some(HeaderValue::from_static("https://app.example.com"))
        );
        assert_eq!(cors.admit(&request_from("https://evil.example.com")), None);
        assert_eq!(cors.admit(&request_from("http://app.example.com")), None);
        assert_eq!(cors.admit(&HeaderMap::new()), None);
        assert_eq!(
            Cors::default().admit(&request_from("https://app.example.com")),
            None
        );
    }

    #[test]
    fn a_star_admits_every_origin() {
        let cors = Cors::new(&["*".to_owned()]).unwrap();
        assert_eq!(
            cors.admit(&request_from("http://127.0.0.1:3000")),
            Some(HeaderValue::from_static("*"))
        );
    }

    #[test]
    fn malformed_origins_are_refused_at_start() {
        for bad in [
            "app.example.com",
            "https://",
            "ftp://x",
            "https://a.com/path",
            "",
        ] {
            assert!(Cors::new(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }
}
