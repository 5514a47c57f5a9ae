//! When a connection parks, times out and makes room: pure functions of a
//! snapshot of its activity and the time now, tested without sockets.

use std::time::Duration;

/// A plain HTTP/1.1 connection is parked as soon as its response has gone out
/// and it waits for the next request: hyper lets go of it, and its buffers are
/// freed until the client speaks again (nginx frees its buffers between
/// keep-alive requests the same way). Parking and coming back cost a request
/// about a tenth more work (hyper builds its connection and buffers anew), so
/// a connection whose client came back within `HOT_GAP` last time is parked
/// only once idle for `PARK_AFTER`; so is one whose request had a body, or
/// whose response was not all written yet.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// A client whose next request came this soon after its response is likely to
/// send another as soon: its connection is not parked at once.
const HOT_GAP: Duration = Duration::from_millis(100);

/// Under pressure, connections idle at least this long between requests make room.
const IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(1);

/// Under pressure, connections that have sent no request this long after they
/// were taken on make room first. A client's request comes with its handshake's
/// last packet (a TLS connection is taken on once its handshake is done), so a
/// connection this silent at the cap is a flood's, or a browser's speculative
/// preconnect, which it opens again when it needs one; nginx, out of
/// connections, closes those waiting for their first request first as well.
/// Held to the idle ones' second, a flood of fresh connections kept the cap
/// full and a new client was refused for up to a second at a time.
const SILENT_UNDER_PRESSURE: Duration = Duration::from_millis(250);

/// A connection's activity at one moment, times counted from its accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Snapshot {
    /// Whether a request has arrived yet.
    pub(super) started: bool,
    /// Whether a request is in flight (its response body included).
    pub(super) busy: bool,
    /// When a request last began or ended (the accept, before any).
    pub(super) last: Duration,
    /// Whether the last request came within [`HOT_GAP`] of the response before.
    pub(super) hot: bool,
    /// Whether the last request had a body.
    pub(super) had_body: bool,
}

impl Snapshot {
    /// How long it has been idle at `now`; `None` while busy.
    pub(super) fn idle_for(&self, now: Duration) -> Option<Duration> {
        (!self.busy).then(|| now.saturating_sub(self.last))
    }
}

/// What to do with a connection whose response has just gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Park {
    /// Park it now.
    Now,
    /// Look again this much later: its client may be about to send again, or
    /// hyper may still be reading its request's body.
    Later(Duration),
}

/// Whether to park a connection whose response has gone out, or wait.
pub(super) fn when_answered(activity: Snapshot) -> Park {
    if activity.hot || activity.had_body { Park::Later(PARK_AFTER) } else { Park::Now }
}

/// Whether a request arriving `idle` after the last response is a hot client's.
pub(super) fn is_hot(idle: Duration) -> bool {
    idle < HOT_GAP
}

/// How long an idle connection waits for its next request: the header timeout
/// on HTTP/1.1 (or the idle timeout if shorter), the idle timeout on HTTP/2.
pub(super) fn idle_limit(http1: bool, header_timeout: Duration, idle_timeout: Duration) -> Duration {
    if http1 { header_timeout.min(idle_timeout) } else { idle_timeout }
}

/// When an idle connection is closed if nothing happens meanwhile (from its
/// accept): for its first request, the header timeout after the accept; for
/// the next, `limit` after the last. `None` while a request is in flight.
pub(super) fn deadline(activity: Snapshot, header_timeout: Duration, limit: Duration) -> Option<Duration> {
    let allowed = if activity.started { limit } else { header_timeout };
    (!activity.busy).then(|| activity.last + allowed)
}

/// Whether a connection has waited past its [`deadline`] at `now`.
pub(super) fn timed_out(activity: Snapshot, now: Duration, header_timeout: Duration, limit: Duration) -> bool {
    deadline(activity, header_timeout, limit).is_some_and(|deadline| now >= deadline)
}

/// Whether a connection closes to make room when another is refused at the
/// cap: one idle between requests for [`IDLE_UNDER_PRESSURE`], or one that has
/// sent nothing for [`SILENT_UNDER_PRESSURE`].
pub(super) fn makes_room(activity: Snapshot, now: Duration) -> bool {
    let after = if activity.started { IDLE_UNDER_PRESSURE } else { SILENT_UNDER_PRESSURE };
    activity.idle_for(now).is_some_and(|idle| idle >= after)
}

/// Whether a TLS handshake under way for `elapsed` gives its place up when the
/// handshake budget is full.
pub(super) fn handshake_makes_room(elapsed: Duration) -> bool {
    elapsed >= SILENT_UNDER_PRESSURE
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn idle_since(last: u64) -> Snapshot {
        Snapshot { started: true, last: MS(last), ..Snapshot::default() }
    }

    #[test]
    fn a_connection_is_parked_at_once_unless_its_client_is_quick_or_its_body_may_still_be_read() {
        assert_eq!(when_answered(idle_since(0)), Park::Now);
        assert_eq!(when_answered(Snapshot { hot: true, ..idle_since(0) }), Park::Later(PARK_AFTER));
        assert_eq!(when_answered(Snapshot { had_body: true, ..idle_since(0) }), Park::Later(PARK_AFTER));
        assert!(is_hot(MS(99)) && !is_hot(MS(100)));
    }

    #[test]
    fn an_idle_connection_times_out_from_its_accept_or_its_last_request() {
        let (header, limit) = (MS(3000), MS(1000));
        let silent = Snapshot::default();
        assert!(!timed_out(silent, MS(2999), header, limit), "the first request gets the header timeout");
        assert!(timed_out(silent, MS(3000), header, limit));
        let idle = idle_since(5000);
        assert!(!timed_out(idle, MS(5999), header, limit));
        assert!(timed_out(idle, MS(6000), header, limit), "the next, the limit from the last");
        let busy = Snapshot { busy: true, ..idle };
        assert!(!timed_out(busy, MS(60_000), header, limit), "a request in flight never times out here");
        assert_eq!(idle_limit(true, MS(3000), MS(60_000)), MS(3000));
        assert_eq!(idle_limit(true, MS(3000), MS(2000)), MS(2000));
        assert_eq!(idle_limit(false, MS(3000), MS(60_000)), MS(60_000), "HTTP/2 waits the idle timeout");
    }

    #[test]
    fn under_pressure_silent_connections_go_first_then_idle_ones_and_busy_ones_never() {
        let silent = Snapshot::default();
        assert!(!makes_room(silent, MS(249)));
        assert!(makes_room(silent, MS(250)), "no request 250 ms after its accept");
        let idle = idle_since(1000);
        assert!(!makes_room(idle, MS(1999)), "a client between requests gets its second");
        assert!(makes_room(idle, MS(2000)));
        assert!(!makes_room(Snapshot { busy: true, ..idle }, MS(60_000)));
        assert!(!handshake_makes_room(MS(249)) && handshake_makes_room(MS(250)));
    }
}
