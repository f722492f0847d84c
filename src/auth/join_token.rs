//! Join tokens: JWTs by which an application's backend vouches for one of
//! its users, so that the user joins parlor without a password of its own
//! (`--join-secret-file`; Centrifugo's connection JWT is the model).
//!
//! A token is accepted only if it is HS256, signed with the configured
//! secret, and carries `sub` (the user name) and `exp`. Everything else is
//! refused with a reason that never quotes the token: another algorithm
//! (`none`, RS256, HS512: a verifier that followed the header's `alg`
//! could be tricked into skipping or weakening the check), a signature
//! that does not match, an expired token, a `nbf` still ahead, an `aud`
//! claim (parlor names no audience, and RFC 7519 says a token for another
//! audience must be refused), a name or room that parlor would refuse.
//! `iat` is accepted and not checked; other claims are ignored.
//!
//! Checking a token is one HMAC over a few hundred bytes (microseconds), so
//! no queue bounds it as the password hashes are bounded.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{MAX_JOIN_TOKEN_BYTES, MAX_NAME_LEN, MAX_ROOMS_PER_JOIN_TOKEN};
use crate::hub::valid_name;

/// The shortest secret accepted: HS256 wants a key at least as long as its
/// hash (RFC 7518 §3.2), and a shorter one could be guessed offline from
/// any token.
pub const MIN_SECRET_BYTES: usize = 32;

/// How far past `exp` (or before `nbf`) a token is still accepted, for
/// clocks that disagree a little between the backend and parlor.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Checks join tokens against the configured secret.
pub struct JoinTokens {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JoinTokens {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens { .. }")
    }
}

/// What a valid join token says: who joins, and the rooms it joins at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    pub user: String,
    pub rooms: Vec<String>,
}

/// Why a join token was refused, in words for the client (401
/// `bad_auth_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadToken(pub String);

/// The claims parlor reads; `exp` and `nbf` are checked by `jsonwebtoken`.
/// `sub` is optional here so that a token without it is told so
/// (`jsonwebtoken` requires it) rather than called malformed.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
}

impl JoinTokens {
    /// A checker for tokens signed with `secret`; refuses a secret shorter
    /// than `MIN_SECRET_BYTES`.
    pub fn new(secret: &[u8]) -> Result<JoinTokens, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the join secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                 (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        let key = DecodingKey::from_secret(secret).map_err(|error| error.to_string())?;
        Ok(JoinTokens { key, validation })
    }

    /// The user and rooms a valid token vouches for.
    pub fn verify(&self, token: &str) -> Result<Vouched, BadToken> {
        if token.len() > MAX_JOIN_TOKEN_BYTES {
            return Err(BadToken(format!(
                "the JWT is over {MAX_JOIN_TOKEN_BYTES} bytes"
            )));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| BadToken(explain(error.kind()).to_owned()))?
            .claims;
        let Some(user) = claims.sub else {
            return Err(BadToken(NO_SUB.to_owned()));
        };
        if !valid_name(&user) {
            return Err(BadToken(format!(
                "the JWT's `sub` is not a user name (1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`)"
            )));
        }
        if claims.rooms.len() > MAX_ROOMS_PER_JOIN_TOKEN {
            return Err(BadToken(format!(
                "the JWT names {} rooms; at most {MAX_ROOMS_PER_JOIN_TOKEN}",
                claims.rooms.len()
            )));
        }
        if let Some(bad) = claims.rooms.iter().find(|room| !valid_name(room)) {
            let shown: String = bad.chars().take(MAX_NAME_LEN).collect();
            return Err(BadToken(format!(
                "the JWT's room {shown:?} is not a room name (1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`)"
            )));
        }
        Ok(Vouched {
            user,
            rooms: claims.rooms,
        })
    }
}

const NO_SUB: &str = "the JWT has no `sub` claim";

/// A refusal's reason, from what `jsonwebtoken` found.
fn explain(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "the JWT's signature does not match the join secret",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "the JWT must be signed with HS256"
        }
        ErrorKind::ExpiredSignature => "the JWT has expired (`exp`)",
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (`nbf`)",
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => "the JWT has no `exp` claim",
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => NO_SUB,
        ErrorKind::InvalidAudience => "the JWT names an audience (`aud`); parlor accepts none",
        ErrorKind::InvalidClaimFormat(_) => "a claim of the JWT has the wrong type",
        // A header that names an algorithm jsonwebtoken does not know
        // (`none`) fails to parse, as does anything that is not a JWT.
        _ => "the JWT is malformed, or not signed with HS256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a test secret of thirty-two bytes";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn signed(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JoinTokens::new(b"short").is_err());
        assert!(JoinTokens::new(SECRET).is_ok());
    }

    #[test]
    fn a_token_gives_its_user_and_rooms() {
        let tokens = JoinTokens::new(SECRET).unwrap();
        let token =
            signed(json!({"sub": "ann", "exp": now() + 60, "iat": now(), "rooms": ["games"]}));
        assert_eq!(
            tokens.verify(&token),
            Ok(Vouched {
                user: "ann".into(),
                rooms: vec!["games".into()],
            })
        );
    }

    #[test]
    fn the_leeway_admits_a_token_just_expired_and_no_older() {
        let tokens = JoinTokens::new(SECRET).unwrap();
        let just = signed(json!({"sub": "ann", "exp": now() - LEEWAY.as_secs() / 2}));
        assert!(tokens.verify(&just).is_ok());
        let old = signed(json!({"sub": "ann", "exp": now() - LEEWAY.as_secs() * 2}));
        assert!(tokens.verify(&old).unwrap_err().0.contains("expired"));
    }

    #[test]
    fn claims_parlor_would_refuse_are_refused_without_quoting_the_token() {
        let tokens = JoinTokens::new(SECRET).unwrap();
        let exp = now() + 60;
        let too_many: Vec<String> = (0..=MAX_ROOMS_PER_JOIN_TOKEN)
            .map(|n| format!("r{n}"))
            .collect();
        for (claims, reason) in [
            (json!({"sub": "bad name", "exp": exp}), "`sub`"),
            (json!({"exp": exp}), "no `sub`"),
            (json!({"sub": "ann"}), "no `exp`"),
            (json!({"sub": "ann", "exp": exp, "rooms": ["a:b"]}), "room"),
            (
                json!({"sub": "ann", "exp": exp, "rooms": too_many}),
                "rooms",
            ),
            (
                json!({"sub": "ann", "exp": exp, "rooms": "games"}),
                "malformed",
            ),
            (json!({"sub": "ann", "exp": exp, "aud": "x"}), "audience"),
            (
                json!({"sub": "ann", "exp": exp, "nbf": exp}),
                "not valid yet",
            ),
        ] {
            let token = signed(claims.clone());
            let BadToken(why) = tokens.verify(&token).unwrap_err();
            assert!(why.contains(reason), "{claims}: {why}");
            assert!(!why.contains(&token), "{why}");
        }
        let huge = "x".repeat(MAX_JOIN_TOKEN_BYTES + 1);
        assert!(tokens.verify(&huge).is_err());
    }
}
