//! Property fuzzing of the parsers that face clients: the path canonicaliser, the
//! bearer token check, and the forwarding-header reader. Each runs 256 cases in
//! the test suite; `tests/fuzz.sh SECONDS` runs each for that long instead
//! (`FUZZ_SECONDS`). A failure prints the smallest input proptest found: add it
//! to the unit tests of the module it broke.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower_gateway::client_addr::{ForwardedHeader, TrustedProxies, client_addr, parse_hop};
use tower_gateway::strip_prefix::canonicalize;
use tower_gateway_auth::{Algorithm, Authenticator, Key, TokenIssuer};

/// Runs `test` over `strategy`: 256 cases, or for `FUZZ_SECONDS` seconds.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: Option<u64> = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok());
    let started = Instant::now();
    let mut cases = 0u64;
    loop {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        if let Err(err) = runner.run(&strategy, &test) {
            panic!("{name}: {err}");
        }
        cases += 256;
        match seconds {
            Some(s) if started.elapsed() < Duration::from_secs(s) => continue,
            _ => break,
        }
    }
    println!("{name}: {cases} cases in {:?}, no failure", started.elapsed());
}

/// Paths made of the pieces attacks are made of.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("api".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%".to_owned()),
        Just("%00".to_owned()),
        Just(";".to_owned()),
        Just("%3b".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9%._~;-]{0,6}",
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| format!("/{}", pieces.join("/")))
}

#[test]
fn canonical_paths_are_fixed_points_with_no_way_out() {
    fuzz("canonicalize", hostile_path(), |path| {
        if let Ok(canonical) = canonicalize(&path) {
            let again = canonicalize(&canonical).map(|c| c.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(&*canonical), "canonical twice is canonical once");
            for escape in ["/../", "/./", "//", "\\", "%2f", "%2F", "%2e", "%2E", ";"] {
                prop_assert!(!canonical.contains(escape), "{canonical:?} (from {path:?}) contains {escape:?}");
            }
            prop_assert!(!canonical.ends_with("/..") && !canonical.ends_with("/."), "{canonical:?}");
        }
        Ok(())
    });
}

#[test]
fn only_the_signed_token_passes() {
    let secret = b"a fuzzing secret of at least 32 bytes";
    let auth = Authenticator::builder(Key::hs256(secret).unwrap()).build().unwrap();
    let token = TokenIssuer::hmac(Algorithm::HS256, secret).unwrap().issue("7", None, &[]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert!(runtime.block_on(auth.authenticate(&token)).is_ok(), "the token itself passes");
    let length = token.len();
    let edit = (0..length, any::<u8>(), 0..3u8);
    fuzz("bearer token", edit, |(at, byte, kind)| {
        let mut bytes = token.clone().into_bytes();
        match kind {
            0 => bytes[at] = byte,
            1 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
        if bytes == token.as_bytes() {
            return Ok(());
        }
        let Ok(mutated) = String::from_utf8(bytes) else { return Ok(()) };
        let result = runtime.block_on(auth.authenticate(&mutated));
        prop_assert!(result.is_err(), "a token edited at {at} passed: {mutated}");
        Ok(())
    });
    fuzz("bearer garbage", ".{0,300}", |garbage: String| {
        prop_assert!(runtime.block_on(auth.authenticate(&garbage)).is_err());
        Ok(())
    });
}

/// Forwarding headers as clients and proxies write them, good and bad.
fn hops() -> impl Strategy<Value = Vec<String>> {
    let hop = prop_oneof![
        Just("203.0.113.7".to_owned()),
        Just("10.1.2.3".to_owned()),
        Just("[2001:db8::1]:80".to_owned()),
        Just("unknown".to_owned()),
        Just("_hidden".to_owned()),
        Just("for=198.51.100.2".to_owned()),
        Just("\"[fd00::1]\"".to_owned()),
        "[0-9a-f.:\\[\\] ,;=\"]{0,20}",
    ];
    proptest::collection::vec(proptest::collection::vec(hop, 0..5).prop_map(|h| h.join(", ")), 0..3)
}

#[test]
fn the_client_is_the_peer_or_a_hop_it_was_told_of() {
    let trusted = TrustedProxies::parse(["10.0.0.0/8", "fd00::/8"]).unwrap();
    let peers = prop_oneof![Just("10.0.0.2"), Just("203.0.113.50"), Just("fd00::9")];
    let header = prop_oneof![Just(ForwardedHeader::XForwardedFor), Just(ForwardedHeader::Forwarded)];
    fuzz("forwarding headers", (peers, hops(), header), |(peer, lines, header)| {
        let name = match header {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            _ => http::header::FORWARDED,
        };
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(value) = HeaderValue::from_str(line) {
                headers.append(name.clone(), value);
            }
        }
        let peer: IpAddr = peer.parse().unwrap();
        let client = client_addr(peer, &headers, &trusted, header);
        if !trusted.contains(peer) {
            prop_assert_eq!(client.ip(), peer, "an untrusted peer is the client, whatever it says");
        } else if client.ip() != peer {
            let told = lines.iter().flat_map(|l| l.split(',')).any(|hop| {
                let hop = hop.split(';').find_map(|p| p.trim().strip_prefix("for=")).unwrap_or(hop);
                parse_hop(hop) == Some(client.ip())
            });
            prop_assert!(told, "{} was in no hop of {lines:?}", client.ip());
        }
        prop_assert!(client.forwarded_for().to_str().is_ok());
        Ok(())
    });
}
