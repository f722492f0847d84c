//! Secrets: client tokens and password hashes.
//!
//! Tokens are 160 bits from the operating system's CSPRNG, hex-encoded: far
//! past guessing. The server keeps only a token's SHA-256 ([`TokenHash`]),
//! in memory and in the database, so a copy of the database (a backup, a
//! stolen disk) lets no one act as a client. Passwords are hashed with argon2id (the `argon2` crate's
//! default parameters, a fresh 128-bit salt per account) and only the PHC
//! string is stored. Hashing is deliberately slow, so it runs on the blocking
//! pool behind a semaphore: a burst of /join queues instead of stalling the
//! async workers or exhausting memory. The queue is bounded twice: at most
//! `max_waiters` wait for a slot (the next is told `Busy` at once), and none
//! waits longer than `max_wait` (then `Busy`), so a flood of /join is
//! answered rather than left hanging.

pub mod join_token;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::config::MAX_CONCURRENT_PASSWORD_HASHES;

const TOKEN_BYTES: usize = 20;

/// A new unguessable client token (40 hex characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What the server keeps of a client token: its SHA-256. The hub finds
/// clients by it, so the token a request presents is hashed once, and a
/// look-up's timing can reveal only bits of a hash, which do not help to
/// forge a token. A token has 160 random bits, so a fast unsalted hash is
/// as hard to reverse as guessing the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// A hash as the store keeps it (None unless 32 bytes).
    pub fn from_stored(bytes: &[u8]) -> Option<TokenHash> {
        bytes.try_into().ok().map(TokenHash)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A shard number in `0..shards`: the hash's bytes are uniform whatever
    /// a client sends, so its first byte is spread evenly.
    pub fn shard(&self, shards: usize) -> usize {
        usize::from(self.0[0]) % shards
    }
}

impl std::fmt::Debug for TokenHash {
    /// A short prefix: enough to tell hashes apart in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// When a `Busy` answer suggests retrying: hashes take tens of ms, so a
/// slot is likely free by then.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Too many requests are waiting to hash a password; retry after `.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy(pub Duration);

/// Hashes and verifies passwords off the async workers, a few at a time.
#[derive(Debug)]
pub struct PasswordHasherPool {
    permits: Semaphore,
    /// Requests waiting for a permit now, at most `max_waiters`.
    waiting: AtomicUsize,
    max_waiters: usize,
    max_wait: Duration,
    /// Cost of new hashes; verification uses the parameters in the hash.
    params: Params,
}

impl PasswordHasherPool {
    /// A pool hashing with `memory_kib` KiB and `iterations` passes
    /// (out-of-range values fall back to argon2's defaults), with at most
    /// `max_waiters` requests waiting up to `max_wait` for a slot.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        max_waiters: usize,
        max_wait: Duration,
    ) -> PasswordHasherPool {
        let params = Params::new(memory_kib, iterations, 1, None).unwrap_or_else(|error| {
            tracing::warn!(%error, "invalid argon2 parameters; using the defaults");
            Params::default()
        });
        PasswordHasherPool {
            permits: Semaphore::new(MAX_CONCURRENT_PASSWORD_HASHES),
            waiting: AtomicUsize::new(0),
            max_waiters,
            max_wait,
            params,
        }
    }

    /// The PHC string (`$argon2id$v=19$...`) for a new account's password.
    pub async fn hash(&self, password: &str) -> Result<String, Busy> {
        let password = password.to_owned();
        let params = self.params.clone();
        self.run(move || hash_password(&password, params)).await
    }

    /// Whether `password` matches a stored PHC string.
    pub async fn verify(&self, password: &str, stored_hash: &str) -> Result<bool, Busy> {
        let password = password.to_owned();
        let stored_hash = stored_hash.to_owned();
        self.run(move || verify_password(&password, &stored_hash))
            .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let _permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiter = self.wait_in_line()?;
                tokio::time::timeout(self.max_wait, self.permits.acquire())
                    .await
                    .map_err(|_| Busy(BUSY_RETRY_AFTER))?
                    .expect("the hashing semaphore is never closed")
            }
        };
        Ok(tokio::task::spawn_blocking(work)
            .await
            .expect("password hashing does not panic"))
    }

    /// A place in the line for a permit, if the line is not full; the
    /// place is given back when the guard drops (also when the request is
    /// abandoned while waiting).
    fn wait_in_line(&self) -> Result<Waiter<'_>, Busy> {
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiter = Waiter(&self.waiting);
        if ahead >= self.max_waiters {
            return Err(Busy(BUSY_RETRY_AFTER));
        }
        Ok(waiter)
    }
}

/// A request's place in the line for a hashing permit.
struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn hash_password(password: &str, params: Params) -> String {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("the OS random source is available");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 accepts any password up to 2^32 bytes")
        .to_string()
}

fn verify_password(password: &str, stored_hash: &str) -> bool {
    match PasswordHash::new(stored_hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(error) => {
            tracing::error!(%error, "stored password hash is unreadable");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_line_is_told_busy_at_once() {
        let pool = PasswordHasherPool::new(8, 1, 1, Duration::from_secs(600));
        // Every slot taken (as by hashes running), and one waiter in line.
        let held = pool
            .permits
            .acquire_many(MAX_CONCURRENT_PASSWORD_HASHES as u32)
            .await
            .unwrap();
        let waiting = pool.hash("pw");
        tokio::pin!(waiting);
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        assert_eq!(pool.hash("pw").await, Err(Busy(BUSY_RETRY_AFTER)));
        assert_eq!(pool.verify("pw", "x").await, Err(Busy(BUSY_RETRY_AFTER)));
        drop(held);
        assert!(
            waiting.await.is_ok(),
            "the one in line hashes once a slot frees"
        );
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_ends_busy() {
        let pool = PasswordHasherPool::new(8, 1, 10, Duration::from_secs(10));
        let _held = pool
            .permits
            .acquire_many(MAX_CONCURRENT_PASSWORD_HASHES as u32)
            .await
            .unwrap();
        assert_eq!(pool.hash("pw").await, Err(Busy(BUSY_RETRY_AFTER)));
        assert_eq!(
            pool.waiting.load(Ordering::Acquire),
            0,
            "the place is given back"
        );
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn token_hashes_are_sha256_and_round_trip_as_stored() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let hash = TokenHash::of("abc");
        assert_eq!(hash.as_bytes()[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(TokenHash::from_stored(hash.as_bytes()), Some(hash));
        assert_eq!(TokenHash::from_stored(b"short"), None);
        assert_ne!(TokenHash::of(&new_token()), TokenHash::of(&new_token()));
        assert!(hash.shard(16) < 16);
    }

    #[test]
    fn hashes_are_salted_argon2id_and_verify() {
        let first = hash_password("hunter2", Params::default());
        let second = hash_password("hunter2", Params::default());
        assert!(first.starts_with("$argon2id$"));
        assert!(!first.contains("hunter2"));
        assert_ne!(first, second, "a fresh salt per hash");
        assert!(verify_password("hunter2", &first));
        assert!(!verify_password("hunter3", &first));
        assert!(!verify_password("hunter2", "not a hash"));
        // A cheap hash (as tests use) still verifies with its own parameters.
        let cheap = hash_password("pw", Params::new(8, 1, 1, None).unwrap());
        assert!(cheap.contains("m=8,t=1"));
        assert!(verify_password("pw", &cheap));
    }
}
