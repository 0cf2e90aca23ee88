//! Per-peer limit on incoming requests: a token bucket per connected peer.

use std::{collections::HashMap, time::Instant};

use libp2p::PeerId;

/// One token bucket per peer: it holds up to `per_second` tokens (so a peer may burst one
/// second's worth of requests), refills at `per_second` tokens a second, and each request
/// takes one. Buckets are dropped when the peer disconnects, so memory follows connections.
pub(crate) struct RateLimiter {
    per_second: f64,
    buckets: HashMap<PeerId, Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests a second per peer (0 refuses everything).
    pub(crate) fn new(per_second: u32) -> Self {
        Self { per_second: f64::from(per_second), buckets: HashMap::new() }
    }

    /// Takes one token from `peer`'s bucket; `false` if it is empty.
    pub(crate) fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        let per_second = self.per_second;
        let bucket =
            self.buckets.entry(peer).or_insert(Bucket { tokens: per_second, refilled_at: now });
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * per_second).min(per_second);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets `peer` (it disconnected).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long a bucket refilling at `per_second` takes to regain one token.
    fn one_token(per_second: u32) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(per_second))
    }

    #[test]
    fn bursts_up_to_the_rate_then_refills_over_time() {
        let mut limiter = RateLimiter::new(4);
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!((0..6).filter(|_| limiter.allow(a, t0)).count(), 4);
        // Another peer has its own bucket.
        assert!(limiter.allow(b, t0));
        // A quarter second later one token is back, not more.
        let t1 = t0 + one_token(4);
        assert!(limiter.allow(a, t1));
        assert!(!limiter.allow(a, t1));
        // A long pause refills only up to the burst size.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.allow(a, t2)).count(), 4);
        limiter.forget(&a);
        assert!(!limiter.buckets.contains_key(&a));
    }

    #[test]
    fn zero_refuses_everything() {
        let mut limiter = RateLimiter::new(0);
        assert!(!limiter.allow(PeerId::random(), Instant::now()));
    }
}
