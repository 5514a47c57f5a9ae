//! Header values made per request without an allocation each.
//!
//! A gateway writes a few values of its own into every request it forwards:
//! `X-Forwarded-For`, the upstream's `Host`, a request id. Each made with
//! `HeaderValue::from_str` is a heap allocation, and each clone of it (the
//! request id goes both ways) another. [`shared_value`] copies the bytes into a
//! per-thread slab instead and hands out a reference-counted view of them:
//! making a value costs a copy, cloning it a count, and the slab is one 4 KiB
//! allocation now and then, freed when the last value cut from it is dropped.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;
use http::header::InvalidHeaderValue;

/// How much each slab holds.
const SLAB: usize = 4096;
/// Values longer than this are allocated alone, so one cannot waste a slab.
const LARGEST: usize = SLAB / 16;

thread_local! {
    static FREE: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A header value holding a copy of `bytes`, cut from this thread's slab (see
/// the [module docs](self)). The same check as [`HeaderValue::from_bytes`].
///
/// ```
/// let value = tower_gateway::header::shared_value(b"192.0.2.7").unwrap();
/// assert_eq!(value, "192.0.2.7");
/// assert!(tower_gateway::header::shared_value(b"a\nb").is_err());
/// ```
pub fn shared_value(bytes: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    if bytes.len() > LARGEST {
        return HeaderValue::from_bytes(bytes);
    }
    FREE.with_borrow_mut(|free| {
        if free.capacity() < bytes.len() {
            *free = BytesMut::with_capacity(SLAB);
        }
        free.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(free.split().freeze())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_bytes_while_the_slab_fills_and_is_replaced() {
        // Enough values to fill several slabs, each checked after all were made.
        let made: Vec<(String, HeaderValue)> = (0..1_000)
            .map(|i| {
                let text = format!("10.0.{}.{}", i / 256, i % 256);
                let value = shared_value(text.as_bytes()).unwrap();
                (text, value)
            })
            .collect();
        for (text, value) in &made {
            assert_eq!(value.as_bytes(), text.as_bytes());
            assert_eq!(value.clone(), *value);
        }
        let long = "x".repeat(LARGEST + 1);
        assert_eq!(shared_value(long.as_bytes()).unwrap(), long.as_str());
    }

    #[test]
    fn refuses_what_a_header_value_may_not_hold_and_goes_on() {
        assert!(shared_value(b"one\r\ntwo").is_err());
        assert_eq!(shared_value(b"after").unwrap(), "after");
        assert_eq!(shared_value(b"").unwrap(), "");
    }
}
