//! W3C Trace Context: a client's, checked strictly; an attempt's, written for
//! the upstream.

use std::str::FromStr;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// The longest `traceparent` read: version `00` is 55 bytes, a later version
/// may append fields, and nothing needs more than this.
const MAX_TRACEPARENT: usize = 256;
/// W3C: a `tracestate` of up to 512 bytes and 32 members must be propagated;
/// past either it may be dropped.
const MAX_TRACESTATE: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// W3C Baggage: at least 8,192 bytes must be propagated.
const MAX_BAGGAGE: usize = 8192;

/// A client's trace context, if it sent a valid one; what is malformed is
/// removed from `headers` so that nothing forwards it as it came (see the
/// [module docs](super)): an invalid `traceparent` (and with it any
/// `tracestate`), a `tracestate` that is invalid or too large, a `baggage`
/// that is too large.
pub fn extract(headers: &mut HeaderMap) -> Option<SpanContext> {
    if headers.contains_key(&BAGGAGE) && total_len(headers, &BAGGAGE) > MAX_BAGGAGE {
        headers.remove(&BAGGAGE);
    }
    let parent = {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (None, _) => {
                headers.remove(&TRACESTATE);
                return None;
            }
            (Some(value), None) => traceparent(value.as_bytes()),
            (Some(_), Some(_)) => None,
        }
    };
    let Some((trace_id, span_id, flags)) = parent else {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
        return None;
    };
    let state = match tracestate(headers) {
        Some(state) => state,
        None => {
            headers.remove(&TRACESTATE);
            TraceState::default()
        }
    };
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The span context of a `traceparent` of the W3C form, or `None`.
fn traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if !(55..=MAX_TRACEPARENT).contains(&value.len()) {
        return None;
    }
    let hex = |field: &[u8]| field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) = (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    if !dashes || !hex(version) || !hex(trace) || !hex(parent) || !hex(flags) || version == b"ff" {
        return None;
    }
    // Version 00 is exactly these fields; a later one may add more after a dash.
    if (version == b"00" && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    fn text(field: &[u8]) -> Option<&str> {
        std::str::from_utf8(field).ok()
    }
    let trace = u128::from_str_radix(text(trace)?, 16).ok().filter(|&id| id != 0)?;
    let parent = u64::from_str_radix(text(parent)?, 16).ok().filter(|&id| id != 0)?;
    let flags = u8::from_str_radix(text(flags)?, 16).ok()?;
    // Only `sampled` is defined; the other bits are not passed on.
    Some((TraceId::from(trace), SpanId::from(parent), TraceFlags::new(flags) & TraceFlags::SAMPLED))
}

/// The client's `tracestate` (its headers joined), if valid and within bounds.
fn tracestate(headers: &HeaderMap) -> Option<TraceState> {
    if !headers.contains_key(&TRACESTATE) {
        return Some(TraceState::default());
    }
    if total_len(headers, &TRACESTATE) > MAX_TRACESTATE {
        return None;
    }
    let mut joined = String::new();
    for value in headers.get_all(&TRACESTATE) {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(value.to_str().ok()?);
    }
    let members = joined.split(',').filter(|member| !member.trim().is_empty()).count();
    if members > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    TraceState::from_str(&joined).ok()
}

fn total_len(headers: &HeaderMap, name: &http::HeaderName) -> usize {
    headers.get_all(name).iter().map(HeaderValue::len).sum()
}

/// The OpenTelemetry context of `span` (e.g. `tracing::Span::current()` in a
/// request): its trace and span id, for a log line or an exemplar; `None` when
/// the span is not exported (no layer, or not wanted by it).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    context.is_valid().then_some(context)
}

/// Writes `span`'s context as the request's `traceparent` and `tracestate`,
/// in place of the client's; leaves the headers as they are when the span
/// has no OpenTelemetry context (no layer, or not wanted by it).
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let Some(context) = span_context(span) else {
        return;
    };
    let flags = (context.trace_flags() & TraceFlags::SAMPLED).to_u8();
    let parent = format!("00-{}-{}-{flags:02x}", context.trace_id(), context.span_id());
    if let Ok(value) = HeaderValue::try_from(parent) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    let state = context.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(value) if !value.is_empty() => headers.insert(TRACESTATE.clone(), value),
        _ => headers.remove(&TRACESTATE),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_valid_traceparent_is_read_and_kept() {
        let mut map = headers(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]);
        let context = extract(&mut map).expect("valid");
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(context.trace_state().get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(map.get("traceparent").unwrap(), VALID);
        assert!(map.contains_key("tracestate"));
    }

    #[test]
    fn each_malformed_traceparent_starts_a_new_trace_and_is_removed() {
        let malformed = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 with more
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // separator
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // not hex
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // sign
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later version, no dash
        ];
        for value in malformed {
            let mut map = headers(&[("traceparent", value), ("tracestate", "a=b")]);
            assert_eq!(extract(&mut map), None, "{value:?}");
            assert!(!map.contains_key("traceparent") && !map.contains_key("tracestate"), "{value:?}");
        }
        let oversized = format!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}", "a".repeat(300));
        let mut map = headers(&[("traceparent", &oversized)]);
        assert_eq!(extract(&mut map), None);
        assert!(!map.contains_key("traceparent"));
        let mut two = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(extract(&mut two), None, "two traceparents");
        assert!(!two.contains_key("traceparent"));
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields_and_only_sampled_is_kept() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-later";
        let context = extract(&mut headers(&[("traceparent", value)])).expect("a later version");
        assert_eq!(context.trace_flags(), TraceFlags::SAMPLED);
        let unsampled = extract(&mut headers(&[("traceparent", &VALID.replace("-01", "-00"))])).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn a_bad_or_oversized_tracestate_is_dropped_and_the_parent_kept() {
        let members = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE));
        for state in ["not a member", members.as_str(), long.as_str()] {
            let mut map = headers(&[("traceparent", VALID), ("tracestate", state)]);
            let context = extract(&mut map).expect("the parent holds");
            assert_eq!(context.trace_state().header(), "", "{state:?}");
            assert!(!map.contains_key("tracestate"), "{state:?}");
            assert!(map.contains_key("traceparent"));
        }
        let mut split = headers(&[("traceparent", VALID), ("tracestate", "a=1"), ("tracestate", "b=2")]);
        let context = extract(&mut split).unwrap();
        assert_eq!((context.trace_state().get("a"), context.trace_state().get("b")), (Some("1"), Some("2")));
    }

    #[test]
    fn an_oversized_baggage_is_dropped_a_small_one_kept() {
        let mut small = headers(&[("baggage", "user=alice")]);
        assert_eq!(extract(&mut small), None);
        assert_eq!(small.get("baggage").unwrap(), "user=alice");
        let mut large = headers(&[("baggage", &format!("k={}", "v".repeat(MAX_BAGGAGE)))]);
        extract(&mut large);
        assert!(!large.contains_key("baggage"));
    }

    #[test]
    fn a_disabled_span_writes_nothing() {
        let mut map = headers(&[("traceparent", VALID)]);
        inject(&tracing::Span::none(), &mut map);
        assert_eq!(map.get("traceparent").unwrap(), VALID);
    }
}
