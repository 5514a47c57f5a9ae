//! A test identity provider over a real socket: OpenID discovery and a JWKS that
//! the test can rotate, slow down, break, bloat, redirect and take away.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// What `/jwks` answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Answers after this long.
    Slow(Duration),
    /// `500`.
    Broken,
    /// A document of this many bytes (the keys, padded).
    Oversized(usize),
    /// A redirect to this location.
    Redirect(String),
    /// These members before the keys.
    Extra(Vec<Value>),
}

pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

pub struct Idp {
    pub addr: SocketAddr,
    pub issuer: String,
    keys: Mutex<Vec<SigningKey>>,
    mode: Mutex<Mode>,
    jwks_hits: AtomicUsize,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh ES256 key pair.
pub fn es256(kid: &str) -> SigningKey {
    tower_gateway_auth::install_default_crypto();
    let pair = rcgen::KeyPair::generate().unwrap();
    let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    SigningKey { kid: kid.into(), encoding, jwk }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Idp {
    /// A provider whose issuer is its own URL, serving one key `k1`.
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Arc::new(Self {
            addr,
            issuer: format!("http://{addr}"),
            keys: Mutex::new(vec![es256("k1")]),
            mode: Mutex::new(Mode::Normal),
            jwks_hits: AtomicUsize::new(0),
            server: Mutex::new(None),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(idp.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *idp.server.lock().unwrap() = Some(server);
        idp
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Publishes a new key beside the others; tokens are signed with it from now on.
    pub fn rotate(&self, kid: &str) {
        self.keys.lock().unwrap().push(es256(kid));
    }

    /// Publishes `key` as it is (to sign with keys of another kind).
    pub fn publish(&self, key: SigningKey) {
        self.keys.lock().unwrap().push(key);
    }

    /// Stops publishing `kid`.
    pub fn retire(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|k| k.kid != kid);
    }

    /// Takes the provider away: connections are refused from now on.
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// The published JWK of `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        self.keys.lock().unwrap().iter().find(|k| k.kid == kid).unwrap().jwk.clone()
    }

    /// A token for `sub` signed with `kid`, with this issuer and `claims` added.
    pub fn sign(&self, kid: &str, claims: Value) -> String {
        let keys = self.keys.lock().unwrap();
        let key = keys.iter().find(|k| k.kid == kid).expect("a published kid");
        let alg = key.jwk["alg"].as_str().unwrap().parse().unwrap();
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let mut payload = json!({ "sub": "7", "iss": self.issuer, "iat": now(), "exp": now() + 600 });
        let Value::Object(claims) = claims else { panic!("claims are an object") };
        for (name, value) in claims {
            payload[name] = value;
        }
        jsonwebtoken::encode(&header, &payload, &key.encoding).unwrap()
    }
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    let document = json!({ "issuer": idp.issuer, "jwks_uri": idp.jwks_url() });
    ([(header::CONTENT_TYPE, "application/json")], document.to_string()).into_response()
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
    idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let mode = idp.mode.lock().unwrap().clone();
    let mut members: Vec<Value> = idp.keys.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
    match mode {
        Mode::Normal => {}
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Broken => return (StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance").into_response(),
        Mode::Oversized(bytes) => {
            let padding = "x".repeat(bytes);
            let document = json!({ "keys": members, "padding": padding });
            return ([(header::CONTENT_TYPE, "application/json")], document.to_string()).into_response();
        }
        Mode::Redirect(location) => {
            return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
        }
        Mode::Extra(extra) => members.splice(0..0, extra).for_each(drop),
    }
    let document = json!({ "keys": members });
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "max-age=300")], document.to_string())
        .into_response()
}
