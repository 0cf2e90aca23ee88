//! Retrying with backoff: the one loop every OpenLedger service uses to wait for something
//! that is not there yet (a node starting, a payload not offered yet, a busy gateway).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How to wait between attempts: `first`, then doubling up to `max`, until `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// No attempt starts after this instant; the last failure is returned.
    pub deadline: Instant,
}

impl Backoff {
    /// Attempts every `every` (no growth) for `patience`.
    pub fn steady(every: Duration, patience: Duration) -> Self {
        Self { first: every, max: every, deadline: Instant::now() + patience }
    }

    /// Attempts starting `first` apart, doubling up to `max`, for `patience`.
    pub fn exponential(first: Duration, max: Duration, patience: Duration) -> Self {
        Self { first, max, deadline: Instant::now() + patience }
    }
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, or the
/// backoff's deadline has passed; returns its last result. `retryable` sees each error
/// before the wait (to log it, for example).
pub async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    mut attempt: F,
    mut retryable: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = backoff.first;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= backoff.deadline || !retryable(&e) => return Err(e),
            Err(_) => {
                let left = backoff.deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(wait.min(left)).await;
                wait = wait.saturating_mul(2).min(backoff.max);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn retries_until_success_with_growing_waits() {
        let tries = Cell::new(0);
        let started = Instant::now();
        let backoff = Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(40),
            Duration::from_secs(60),
        );
        let out: Result<u32, &str> = retry(
            backoff,
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move {
                    if n < 5 {
                        Err("not yet")
                    } else {
                        Ok(n)
                    }
                }
            },
            |_| true,
        )
        .await;
        assert_eq!(out, Ok(5));
        // Waits of 10, 20, 40, 40 ms.
        assert!(started.elapsed() >= Duration::from_millis(110), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn stops_at_a_final_error_or_the_deadline() {
        let tries = Cell::new(0);
        let final_error: Result<(), &str> = retry(
            Backoff::steady(Duration::from_millis(10), Duration::from_secs(5)),
            || {
                tries.set(tries.get() + 1);
                async { Err("refused") }
            },
            |e| *e != "refused",
        )
        .await;
        assert_eq!((final_error, tries.get()), (Err("refused"), 1));
        let started = Instant::now();
        let tries = Cell::new(0);
        let timed_out: Result<(), &str> = retry(
            Backoff::steady(Duration::from_millis(30), Duration::from_millis(100)),
            || {
                tries.set(tries.get() + 1);
                async { Err("busy") }
            },
            |_| true,
        )
        .await;
        assert_eq!(timed_out, Err("busy"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(tries.get() >= 4, "attempts every 30 ms for 100 ms: {}", tries.get());
    }
}
