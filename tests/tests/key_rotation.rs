//! The shipped system rotates keys: user-service (two replicas on one database)
//! signs with keys it publishes by OpenID discovery; the gateway, configured with
//! the discovery URL and no key file, follows a rotation with no valid token refused.

use serde_json::{Value, json};
use tower_gateway_auth::KeyConfig;
use tower_gateway_tests::{Client, Gateway, Server, metric, serve_on};

use base64::Engine;
use bytes::Bytes;
use demo_gateway::config::{Config, UpstreamConfig, shipped_jwt, shipped_routes};
use demo_services::signing::{SealingKey, SigningKeys};
use demo_services::users::{self, Passwords, Tokens, UsersState};
use http::Request;
use http_body_util::Full;

/// The `kid` in a token's header.
fn kid(token: &str) -> String {
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let reply = Client::new().send(req.body(Full::new(body)).unwrap()).await.unwrap();
    (reply.status.as_u16(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

async fn login(gateway: &str) -> String {
    let credentials = json!({ "email": "root@example.com", "password": "a long admin password" });
    let (status, body) = call("POST", &format!("{gateway}/api/users/login"), None, Some(credentials)).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_the_gateway_refuses_no_valid_token() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("users.db").display());
    let sealing = SealingKey::new(b"a key-encryption secret of 32+ bytes").unwrap();
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let first = format!("http://{}", listeners[0].local_addr().unwrap());
    let verify_with = KeyConfig { jwks_url: Some(format!("{first}/.well-known/jwks.json")), ..shipped_jwt() };
    let mut replicas: Vec<Server> = Vec::new();
    let mut states = Vec::new();
    for listener in listeners {
        // Each replica opens the keys on the shared database, as two processes would.
        let db = users::connect(&url).await.unwrap();
        let keys = SigningKeys::open(db.clone(), sealing.clone(), shipped_jwt()).await.unwrap();
        let auth = verify_with.authenticator().unwrap().build().unwrap();
        let tokens = Tokens::Rotating { keys, jwks_uri: format!("{first}/.well-known/jwks.json") };
        let state = UsersState { db, tokens, auth, passwords: Passwords::for_tests() };
        states.push(state.clone());
        replicas.push(serve_on(listener, users::app(state)));
    }
    users::ensure_admin(&states[0], "root@example.com", "a long admin password".into()).await.unwrap();

    let upstreams = [(
        "users".to_owned(),
        UpstreamConfig { endpoints: replicas.iter().map(Server::url).collect(), ..UpstreamConfig::default() },
    )]
    .into();
    let mut config = Config { upstreams, ..Config::default() };
    // The shipped users routes, without the login limits this test would run into.
    config.routes = shipped_routes()
        .into_iter()
        .filter(|r| r.upstream == "users")
        .map(|r| demo_gateway::config::RouteConfig { limits: Vec::new(), ..r })
        .collect();
    config.jwt =
        KeyConfig { discovery_url: Some(format!("{first}/.well-known/openid-configuration")), ..shipped_jwt() };
    let gateway = Gateway::start(config).await;
    let base = gateway.url();

    let (status, discovery) =
        call("GET", &format!("{base}/api/users/.well-known/openid-configuration"), None, None).await;
    assert_eq!((status, discovery["issuer"].as_str()), (200, Some("user-service")), "{discovery}");
    let published = || async {
        let (status, jwks) = call("GET", &format!("{base}/api/users/.well-known/jwks.json"), None, None).await;
        assert_eq!(status, 200);
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let before = login(&base).await;
    assert!(published().await.contains(&kid(&before)), "the token's kid is published");
    assert_eq!(published().await.len(), 2, "the current key and the next, published before it signs");

    let (status, rotation) = call("POST", &format!("{base}/api/users/keys/rotate"), Some(&before), None).await;
    assert_eq!(status, 200, "{rotation}");
    assert_eq!(rotation["previous"].as_str().unwrap(), kid(&before));
    let current = rotation["current"].as_str().unwrap().to_owned();
    assert_ne!(current, kid(&before));

    // Logins reach both replicas (round robin): each signs with the new key at once.
    let me = format!("{base}/api/users/1");
    for _ in 0..4 {
        let after = login(&base).await;
        assert_eq!(kid(&after), current, "a new login's token carries the new kid");
        let (status, body) = call("GET", &me, Some(&after), None).await;
        assert_eq!(status, 200, "the new token is accepted at once: {body}");
    }
    let (status, body) = call("GET", &me, Some(&before), None).await;
    assert_eq!(status, 200, "a token from before the rotation is still accepted: {body}");
    let kids = published().await;
    assert!(kids.contains(&kid(&before)) && kids.contains(&current) && kids.len() == 3, "{kids:?}");

    // A second rotation at once: its key was published one rotation ahead.
    let (status, _) = call("POST", &format!("{base}/api/users/keys/rotate"), Some(&before), None).await;
    assert_eq!(status, 200);
    let (status, _) = call("GET", &me, Some(&login(&base).await), None).await;
    assert_eq!(status, 200);
    let fetched = metric(&base, r#"gateway_jwt_key_fetches_total{issuer="user-service",outcome="ok"}"#).await;
    assert!(fetched.is_some_and(|n| n >= 1.0), "{fetched:?}");
    let held = metric(&base, r#"gateway_jwt_keys{issuer="user-service"}"#).await;
    assert!(held.is_some_and(|n| n >= 3.0), "{held:?}");
}
