//! The generic cell rate algorithm: a quota, and the decision for one request.
//!
//! Each key keeps one number, its *theoretical arrival time* (TAT): when the
//! key's bucket would be full again if no request came. A request is admitted
//! when, after adding one emission interval, the TAT stays within the burst
//! tolerance of now. A refused request leaves the TAT as it was, so refusals cost
//! nothing, and a TAT in the past is the same as no entry at all.

use std::fmt;
use std::time::Duration;

/// How many requests a key may make: `count` per `period`, at most `burst` at once.
/// See the [module docs](crate::rate_limit).
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::rate_limit::Quota;
///
/// // 10 a minute, one every 6 s once the first 10 are spent.
/// let logins = Quota::per_minute(10);
/// // 100 a second on average, but no more than 20 in any instant.
/// let api = Quota::per_second(100).burst(20);
/// assert_eq!(api.emission_interval(), Duration::from_millis(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// One request's share of time, in microseconds.
    interval_us: u64,
    burst: u32,
}

/// A quota that admits nothing, from [`Quota::try_new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidQuota(&'static str);

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidQuota {}

impl Quota {
    /// `count` requests per `period`, all of them allowed at once (burst = `count`).
    ///
    /// # Panics
    ///
    /// If `count` is 0 or `period` shorter than `count` microseconds; use
    /// [`try_new`](Self::try_new) for values read from configuration.
    pub fn new(count: u32, period: Duration) -> Self {
        Self::try_new(count, period).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `count` requests per `period`, or why that is not a quota.
    pub fn try_new(count: u32, period: Duration) -> Result<Self, InvalidQuota> {
        if count == 0 {
            return Err(InvalidQuota("a quota must allow at least one request"));
        }
        let period_us = u64::try_from(period.as_micros()).map_err(|_| InvalidQuota("the period is too long"))?;
        let interval_us = period_us / u64::from(count);
        if interval_us == 0 {
            return Err(InvalidQuota("more than a million requests a second cannot be limited"));
        }
        if period_us > 366 * 24 * 3600 * 1_000_000 {
            return Err(InvalidQuota("the period is longer than a year"));
        }
        Ok(Self { interval_us, burst: count })
    }

    /// `count` requests a second.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests a minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests an hour.
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// At most `burst` requests at once (at least 1), the rate unchanged.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The most requests admitted at once.
    pub fn max_burst(&self) -> u32 {
        self.burst
    }

    /// The time one request uses up: the period divided by the count.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }

    pub(crate) fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// How long a full burst takes to come back: the burst times the interval.
    pub(crate) fn capacity_us(&self) -> u64 {
        self.interval_us.saturating_mul(u64::from(self.burst))
    }

    /// The window of the `RateLimit-Policy` field: the time a full burst takes to
    /// come back, in whole seconds rounded up (so a client pacing itself by it
    /// never sends too fast).
    pub fn window_secs(&self) -> u64 {
        self.capacity_us().div_ceil(1_000_000).max(1)
    }

    /// Decides one request at `now` for a key whose stored TAT is `tat` (both in
    /// microseconds on one clock; `tat` 0 for a key never seen). Returns the
    /// decision and, if admitted, the TAT to store. This is the whole algorithm;
    /// a [`Store`](super::Store) runs it where its state lives.
    pub fn decide(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.max(now);
        let new_tat = tat.saturating_add(self.interval_us());
        let allow_at = new_tat.saturating_sub(self.capacity_us());
        if now < allow_at {
            (self.decision(false, tat - now, allow_at - now), None)
        } else {
            (self.decision(true, new_tat - now, 0), Some(new_tat))
        }
    }

    /// The decision a store reports, from what it computed: whether the request
    /// was admitted, how far the key's TAT now lies ahead, and (if refused) how
    /// long until one more request would be admitted.
    pub fn decision(&self, allowed: bool, reset_after_us: u64, retry_after_us: u64) -> Decision {
        let remaining = if allowed {
            let left = self.capacity_us().saturating_sub(reset_after_us) / self.interval_us;
            u32::try_from(left).unwrap_or(u32::MAX).min(self.burst)
        } else {
            0
        };
        Decision {
            allowed,
            remaining,
            reset_after: Duration::from_micros(reset_after_us),
            retry_after: Duration::from_micros(if allowed { 0 } else { retry_after_us.max(1) }),
        }
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests the key may still make at once after this one.
    pub remaining: u32,
    /// Until the key's whole burst is available again.
    pub reset_after: Duration,
    /// Until one more request would be admitted (zero when this one was).
    pub retry_after: Duration,
}

impl Decision {
    /// `Retry-After` in whole seconds: rounded up, never 0.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// The `t` of the `RateLimit` field: seconds until the whole quota is back, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// Runs requests at the given times (µs) through one key, returning the decisions.
    fn run(quota: Quota, times: &[u64]) -> Vec<Decision> {
        let mut tat = 0;
        times
            .iter()
            .map(|&now| {
                let (decision, new) = quota.decide(tat, now);
                if let Some(new) = new {
                    tat = new;
                }
                decision
            })
            .collect()
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        // 10 a minute: 10 at once, then one every 6 s.
        let quota = Quota::per_minute(10);
        let at_once = run(quota, &[0; 11]);
        let admitted: Vec<bool> = at_once.iter().map(|d| d.allowed).collect();
        assert_eq!(admitted, [true, true, true, true, true, true, true, true, true, true, false]);
        let remaining: Vec<u32> = at_once[..10].iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(at_once[10].retry_after, Duration::from_secs(6));
        assert_eq!(at_once[10].retry_after_secs(), 6);
        assert_eq!(at_once[10].reset_secs(), 60);

        // Spent at t=0, one more is admitted every 6 s, and not a moment sooner.
        let times = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6 * S - 1, 6 * S, 6 * S + 1, 12 * S];
        let admitted: Vec<bool> = run(quota, &times).iter().map(|d| d.allowed).collect();
        assert_eq!(admitted[10..], [false, true, false, true]);
    }

    #[test]
    fn refusals_do_not_consume_quota() {
        let quota = Quota::per_second(2);
        // Hammering while refused does not push the next admission back.
        let mut times = vec![0, 0];
        times.extend((1..100).map(|i| i * 1_000));
        times.push(S / 2);
        let decisions = run(quota, &times);
        assert!(decisions[2..101].iter().all(|d| !d.allowed));
        assert!(decisions[101].allowed, "admitted after one interval despite 99 refusals");
    }

    #[test]
    fn an_idle_key_recovers_its_whole_burst() {
        let quota = Quota::per_second(5).burst(3);
        let mut times = vec![0, 0, 0, 0];
        times.extend([10 * S, 10 * S, 10 * S, 10 * S]);
        let admitted: Vec<bool> = run(quota, &times).iter().map(|d| d.allowed).collect();
        assert_eq!(admitted, [true, true, true, false, true, true, true, false]);
    }

    #[test]
    fn a_smaller_burst_keeps_the_rate() {
        let quota = Quota::per_second(100).burst(20);
        assert_eq!(quota.emission_interval(), Duration::from_millis(10));
        assert_eq!(quota.window_secs(), 1, "20 × 10 ms rounds up to 1 s");
        // Over one second from a full bucket: 20 at once plus one per 10 ms.
        let times: Vec<u64> = (0..1000).map(|i| i * 1_000).collect();
        let admitted = run(quota, &times).iter().filter(|d| d.allowed).count();
        assert_eq!(admitted, 20 + 99);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let quota = Quota::per_second(1000).burst(1);
        let decisions = run(quota, &[0, 1]);
        assert_eq!(decisions[1].retry_after, Duration::from_micros(999));
        assert_eq!(decisions[1].retry_after_secs(), 1);
        assert_eq!(Quota::new(1, Duration::from_millis(1500)).decide(1_500_000, 0).0.retry_after_secs(), 2);
    }

    #[test]
    fn impossible_quotas_are_refused() {
        assert!(Quota::try_new(0, Duration::from_secs(1)).is_err());
        assert!(Quota::try_new(2_000_000, Duration::from_secs(1)).is_err());
        assert!(Quota::try_new(1, Duration::from_secs(400 * 24 * 3600)).is_err());
        assert_eq!(Quota::per_minute(3).burst(0).max_burst(), 1);
    }
}
