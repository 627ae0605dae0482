//! Password hashing with argon2id (RFC 9106), PHC strings, and a password rule.
//!
//! Hashing takes tens of milliseconds of CPU and 19 MiB by design, so the server never
//! hashes on its async workers: [`verify_off_thread`] and [`hash_off_thread`] run on
//! tokio's blocking threads, at most [`concurrency`] at a time (the others wait their
//! turn), so a burst of logins, known users or not, can neither stall the workers that
//! answer other requests nor take every core.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory 19 MiB, 2 passes, 1 lane: OWASP's first argon2id recommendation.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Ok(hasher().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Whether `password` matches the PHC string (false for a malformed one).
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that the answer takes
/// as long as for a real user (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default())
}

/// At least 12 characters, at most 256 (NIST SP 800-63B: length over composition).
pub fn acceptable(password: &str) -> bool {
    let n = password.chars().count();
    (12..=256).contains(&n)
}

/// How many hashes run at once: half the cores, at least one.
pub fn concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
}

fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(concurrency()))
}

/// Hashing could not run (the task panicked or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("password hashing did not complete")]
pub struct Unavailable;

async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Unavailable> {
    let permit = permits().acquire().await.map_err(|_| Unavailable)?;
    tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await
    .map_err(|_| Unavailable)
}

/// [`verify`] on a blocking thread; `phc: None` verifies against [`dummy_hash`] (an
/// unknown or locked account: same work, same time, always false).
pub async fn verify_off_thread(password: &str, phc: Option<String>) -> Result<bool, Unavailable> {
    let pw = password.to_owned();
    off_thread(move || match phc {
        Some(phc) => verify(&pw, &phc),
        None => {
            let _ = verify(&pw, dummy_hash());
            false
        }
    })
    .await
}

/// [`hash`] on a blocking thread.
pub async fn hash_off_thread(
    password: &str,
) -> Result<Result<String, argon2::password_hash::Error>, Unavailable> {
    let pw = password.to_owned();
    off_thread(move || hash(&pw)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = hash("correct horse battery").unwrap_or_default();
        let b = hash("correct horse battery").unwrap_or_default();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse batterY", &a));
        assert!(!verify("x", "not a phc string"));
        assert!(!acceptable("short"));
        assert!(acceptable("twelve chars"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hashing_runs_off_the_async_thread() {
        // On a current-thread runtime, a hash on the async thread would hold up the
        // ticker; off it, the ticker keeps running while hashes are checked.
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let phc = hash_off_thread("correct horse battery").await.ok().and_then(Result::ok);
        let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(verify_off_thread("wrong horse battery", phc.clone()).await.ok(), Some(false));
            assert_eq!(verify_off_thread("any", None).await.ok(), Some(false));
        }
        assert_eq!(verify_off_thread("correct horse battery", phc).await.ok(), Some(true));
        let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
        ticker.abort();
        assert!(during >= 30, "the async thread ran only {during} times during nine hashes");
    }
}
