use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Version};

use super::splice::idle;
use super::*;

/// The key of RFC 6455's example.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(version: Version, connection: &str, upgrade: &str) -> Request<()> {
    Request::builder()
        .version(version)
        .header(header::CONNECTION, connection)
        .header(header::UPGRADE, upgrade)
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, KEY)
        .body(())
        .unwrap()
}

#[test]
fn only_http1_websocket_upgrades_are_carried() {
    let yes = upgrade_request(Version::HTTP_11, "keep-alive, Upgrade", "WebSocket");
    assert_eq!(websocket_upgrade(&yes).unwrap(), KEY);
    let listed = upgrade_request(Version::HTTP_11, "upgrade", "websocket, h2c");
    assert_eq!(websocket_upgrade(&listed).unwrap(), KEY, "carried, as a WebSocket alone");
    assert!(websocket_upgrade(&upgrade_request(Version::HTTP_11, "keep-alive", "websocket")).is_none());
    assert!(websocket_upgrade(&upgrade_request(Version::HTTP_11, "upgrade", "h2c")).is_none());
    assert!(websocket_upgrade(&upgrade_request(Version::HTTP_10, "upgrade", "websocket")).is_none());
    let mut post = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
    *post.method_mut() = Method::POST;
    assert!(websocket_upgrade(&post).is_none());
}

#[test]
fn an_upgrade_without_a_version_13_handshake_key_is_no_upgrade() {
    let with = |name: header::HeaderName, value: Option<&str>| {
        let mut req = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
        match value {
            Some(value) => req.headers_mut().insert(name, HeaderValue::from_str(value).unwrap()),
            None => req.headers_mut().remove(name),
        };
        websocket_upgrade(&req).is_some()
    };
    assert!(!with(header::SEC_WEBSOCKET_KEY, None));
    assert!(!with(header::SEC_WEBSOCKET_KEY, Some("not base64!")));
    assert!(!with(header::SEC_WEBSOCKET_KEY, Some("AAAA")), "a key of 3 bytes, not 16");
    assert!(!with(header::SEC_WEBSOCKET_VERSION, None));
    assert!(!with(header::SEC_WEBSOCKET_VERSION, Some("8")));
    let mut two = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
    two.headers_mut().append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
    assert!(websocket_upgrade(&two).is_none(), "two keys");
}

#[test]
fn restore_asks_for_a_websocket_and_nothing_else() {
    let mut headers = HeaderMap::new();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket, h2c"));
    restore(&mut headers);
    assert_eq!(headers[header::UPGRADE], "websocket");
    assert_eq!(headers[header::CONNECTION], "upgrade");
}

#[test]
fn only_a_websocket_accepted_for_the_key_sent_is_accepted() {
    let key = HeaderValue::from_static(KEY);
    let answer = |upgrade: &'static str, accept: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(accept));
        accepts(&headers, &key)
    };
    assert!(answer("websocket", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(answer("WebSocket", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(!answer("h2c", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "another protocol");
    assert!(!answer("websocket", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "an accept for another key");
    assert!(!accepts(&HeaderMap::new(), &key), "no headers at all");
}

#[test]
fn places_are_bounded_and_given_back() {
    let tunnels = Tunnels::new(2, Duration::from_secs(1));
    let a = tunnels.open(None, None).unwrap();
    let _b = tunnels.open(None, None).unwrap();
    assert!(tunnels.open(None, None).is_none());
    assert_eq!(tunnels.active(), 2);
    drop(a);
    assert_eq!(tunnels.active(), 1);
    assert!(tunnels.open(None, None).is_some());
    tunnels.close_all();
    assert!(tunnels.open(None, None).is_none(), "closing refuses new upgrades");
    assert_eq!(tunnels.stats(), TunnelStats { opened: 3, refused: 2, ..TunnelStats::default() });
}

#[test]
fn one_client_gets_its_share_of_places_and_others_theirs() {
    let tunnels = Tunnels::builder(10, Duration::from_secs(1)).max_per_client(2).build();
    let from = |ip: &str, ext: bool| {
        let mut req = Request::new(());
        let ip: IpAddr = ip.parse().unwrap();
        if ext {
            req.extensions_mut().insert(ClientAddr::new(ip));
        } else {
            req.extensions_mut().insert(PeerAddr((ip, 4000).into()));
        }
        req
    };
    let a = tunnels.try_open(&from("192.0.2.1", true)).unwrap();
    let _b = tunnels.try_open(&from("192.0.2.1", false)).unwrap();
    assert!(tunnels.try_open(&from("192.0.2.1", true)).is_none(), "a third from one client");
    let _other = tunnels.try_open(&from("2001:db8::1", true)).expect("another client");
    let _c = tunnels.try_open(&from("2001:db8::2", true)).unwrap();
    assert!(tunnels.try_open(&from("2001:db8::ffff", false)).is_none(), "the same /64");
    drop(a);
    assert!(tunnels.try_open(&from("192.0.2.1", true)).is_some(), "its place came back");
    assert!(tunnels.try_open(&Request::new(())).is_some(), "no address: not capped per client");
    assert_eq!(tunnels.stats().refused, 2);
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_is_closed_at_its_lifetime_or_its_token_whichever_comes_first() {
    let tunnels = Tunnels::builder(10, Duration::from_secs(60)).max_lifetime(Duration::from_secs(3600)).build();
    let now = Instant::now();
    let place = tunnels.try_open(&Request::new(())).unwrap();
    assert_eq!(place.close_at, Some(now + Duration::from_secs(3600)));
    let mut req = Request::new(());
    req.extensions_mut().insert(CloseAt(std::time::SystemTime::now() + Duration::from_secs(900)));
    let place = tunnels.try_open(&req).unwrap();
    let close_at = place.close_at.unwrap() - now;
    assert!(close_at <= Duration::from_secs(900) && close_at > Duration::from_secs(899), "{close_at:?}");
    let unbounded = Tunnels::new(1, Duration::from_secs(60));
    assert_eq!(unbounded.try_open(&Request::new(())).unwrap().close_at, None);
}

#[test]
fn a_closed_group_takes_no_new_tunnel_and_others_go_on() {
    let tunnels = Tunnels::new(10, Duration::from_secs(60));
    let group = TunnelGroup::new();
    let mut req = Request::new(());
    req.extensions_mut().insert(group.clone());
    let mut place = tunnels.try_open(&req).unwrap();
    let mut told = place.group.take().expect("the place hears its group");
    assert!(!*told.borrow_and_update());
    group.close();
    assert!(told.has_changed().unwrap() && *told.borrow(), "the tunnel is told to close");
    assert!(tunnels.try_open(&req).is_none(), "a closed group opens no tunnel");
    assert!(tunnels.try_open(&Request::new(())).is_some(), "tunnels outside the group still open");
}

/// An upgrade request as a server that can hand over its connection gives it.
fn upgradable() -> Request<()> {
    let mut req = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
    req.extensions_mut().insert(hyper::upgrade::on(Request::new(())));
    req
}

#[test]
fn a_reserved_place_is_used_once_then_given_back() {
    let tunnels = Tunnels::new(1, Duration::from_secs(1));
    // Without the server's OnUpgrade, or without asking, nothing is reserved.
    assert!(tunnels.reserve(&mut upgrade_request(Version::HTTP_11, "upgrade", "websocket")).is_ok());
    assert!(tunnels.reserve(&mut Request::new(())).is_ok());
    assert_eq!(tunnels.active(), 0);

    let mut req = upgradable();
    assert!(tunnels.reserve(&mut req).is_ok());
    assert_eq!(tunnels.active(), 1);
    let refused = tunnels.reserve(&mut upgradable()).unwrap_err();
    assert_eq!(refused.into_response().status(), 503);

    // A retry's copy shares the reservation: the first attempt uses it...
    let mut copy = Request::new(());
    *copy.extensions_mut() = req.extensions().clone();
    let first = tunnels.place_for(&req).expect("the reserved place");
    assert_eq!(tunnels.active(), 1, "the reserved place, not a second one");
    // ...and a later attempt, after the first gave it back, takes a new one.
    drop(first);
    assert_eq!(tunnels.active(), 0);
    let second = tunnels.place_for(&copy).expect("a fresh place");
    assert_eq!(tunnels.active(), 1);
    // A reservation dropped unused gives its place back.
    drop(second);
    let mut unused = upgradable();
    tunnels.reserve(&mut unused).unwrap();
    drop(unused);
    assert_eq!(tunnels.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_resolves_only_after_a_silent_timeout() {
    let last = AtomicU64::new(0);
    let epoch = Instant::now();
    let timeout = Duration::from_secs(10);
    tokio::time::advance(Duration::from_secs(8)).await;
    // Traffic at 8 s moves the deadline to 18 s.
    last.store(8_000, Ordering::Relaxed);
    let idled = idle(&last, epoch, timeout);
    tokio::pin!(idled);
    assert!(tokio::time::timeout(Duration::from_secs(9), &mut idled).await.is_err(), "not idle at 17 s");
    assert!(tokio::time::timeout(Duration::from_secs(2), &mut idled).await.is_ok(), "idle by 19 s");
}

#[tokio::test]
async fn closed_waits_for_every_place() {
    let tunnels = Tunnels::new(4, Duration::from_secs(1));
    let place = tunnels.open(None, None).unwrap();
    let waiting = tokio::spawn({
        let tunnels = tunnels.clone();
        async move { tunnels.closed().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(place);
    tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
}
