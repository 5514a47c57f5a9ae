//! The one-command demo: the whole system in this process — the gateway on 8080,
//! product-service on 3001 and 3003, user-service on 3002 and 3004,
//! checkout-service on 3005 — with data in `./data` (`DATA_DIR`).
//!
//! Tokens are signed by user-service with Ed25519 keys kept in `users.db`, sealed
//! with a secret made on the first run (`$DATA_DIR/key-encryption.key`), rotated
//! daily and on `POST /api/users/keys/rotate` (admin). The gateway has no key
//! file: it finds user-service's keys by OpenID discovery and follows its
//! rotations. Revocations are kept in memory, or in Redis when
//! `REDIS_URL` is set — one store for the gateway and user-service either way, so
//! a logout or a changed password takes effect at the gateway. An admin is made
//! for the run (`ADMIN_EMAIL`, default `admin@example.com`, with a generated
//! password or `ADMIN_PASSWORD_FILE`) and printed. `GATEWAY_CONFIG` may replace the
//! gateway's defaults (its upstreams should still be the demo's ports).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use demo_common::telemetry::{PartLayer, TelemetryConfig};
use demo_gateway::{Config, Plan};
use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::inventory::{self, InventoryClient, InventoryState};
use demo_services::products::{self, ProductsState};
use demo_services::signing::{SealingKey, SigningKeys};
use demo_services::users::{self, Passwords, Tokens, UsersState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_gateway::balance::Endpoints;
use tower_gateway_auth::{KeyConfig, MemoryStore, RedisStore, TokenStore, read_secret_file};

#[tokio::main]
async fn main() -> ExitCode {
    // Spans go where OTEL_EXPORTER_OTLP_ENDPOINT says: the gateway's as
    // "gateway", each service's under its own name (see `PartLayer`).
    let telemetry = match TelemetryConfig::default().with_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(2);
        }
    };
    let exporter = match demo_common::telemetry::init_parts("gateway", &telemetry, &SERVICES) {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(2);
        }
    };
    let code = match run(&telemetry).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err}");
            ExitCode::from(2)
        }
    };
    // What is queued is sent before the process ends.
    exporter.shutdown();
    code
}

/// The services this process runs beside the gateway, as their spans name them.
const SERVICES: [&str; 3] = ["product-service", "user-service", "checkout-service"];

/// `n` random bytes, base64url.
fn random(n: usize) -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no random source")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The secret that seals user-service's private keys in `users.db`: made on the
/// first run, readable by this user only, and read again on the next.
fn key_encryption_secret(dir: &std::path::Path) -> Result<SealingKey, String> {
    let file = dir.join("key-encryption.key");
    if !file.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        out.write_all(random(32)?.as_bytes()).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let secret = read_secret_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    SealingKey::new(&secret).map_err(|e| format!("{}: {e}", file.display()))
}

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, made for
/// this run and written to `dir`: the CA's file (for `curl --cacert`), then
/// the certificate's and the key's.
fn demo_tls(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let fail = |e: rcgen::Error| format!("cannot make the demo's TLS certificate: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL clients take a leaf named like its issuer for self-signed.
    ca_params.distinguished_name.push(DnType::CommonName, "tower-gateway demo CA");
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca = ca_params.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(fail)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = CertificateParams::new(names).map_err(fail)?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).map_err(fail)?;
    let files = (dir.join("demo-ca.pem"), dir.join("demo-tls-cert.pem"), dir.join("demo-tls-key.pem"));
    for (file, pem) in [(&files.0, ca.pem()), (&files.1, cert.pem()), (&files.2, key.serialize_pem())] {
        std::fs::write(file, pem).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(files)
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    demo_gateway::bind(addr).map_err(|e| format!("{name} cannot listen on {addr}: {e}"))
}

/// Runs the whole system until SIGINT/SIGTERM.
async fn run(telemetry: &TelemetryConfig) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let data_dir = PathBuf::from(env("DATA_DIR").unwrap_or_else(|| "data".into()));
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let db = |file: &str| format!("sqlite://{}", data_dir.join(file).display());

    // The gateway and the services find user-service's keys as any verifier would.
    let discovery_url = "http://127.0.0.1:3002/.well-known/openid-configuration";
    let keys = KeyConfig { discovery_url: Some(discovery_url.into()), ..demo_common::shipped_jwt() };
    let users_db = users::connect(&db("users.db")).await.map_err(|e| format!("users.db: {e}"))?;
    let signing = SigningKeys::open(users_db, key_encryption_secret(&data_dir)?, keys.clone())
        .await
        .map_err(|e| format!("users.db: {e}"))?;
    signing.rotate_every(std::time::Duration::from_secs(24 * 60 * 60));

    let (store, store_name): (Arc<dyn TokenStore>, String) = match env("REDIS_URL") {
        Some(url) => {
            (Arc::new(RedisStore::new(url.clone()).map_err(|e| format!("REDIS_URL: {e}"))?), format!("Redis at {url}"))
        }
        None => (Arc::new(MemoryStore::new()), "in memory".to_owned()),
    };
    let mut config = Config::load(env("GATEWAY_CONFIG").as_deref().map(std::path::Path::new), |name| env(name))
        .map_err(|e| e.to_string())?;
    config.jwt = keys.clone();
    // HTTPS on 8443 beside plain 8080, with a certificate made for this run.
    let ca_file = if config.tls.is_none() && env("DEMO_TLS").as_deref() != Some("off") {
        let (ca_file, cert_file, key_file) = demo_tls(&data_dir)?;
        config.tls = Some(demo_gateway::config::TlsConfig::new("127.0.0.1:8443", cert_file, key_file));
        Some(ca_file)
    } else {
        None
    };
    let plan = Plan::compile_with_store(config, Some(store.clone())).map_err(|e| e.to_string())?;
    // The gateway's own authenticator for user-service too: a logout, a changed
    // password or a deleted user is refused at the gateway at once, not after its cache bound.
    let auth = match plan.authenticator() {
        Some(auth) => auth.clone(),
        None => keys.authenticator().map_err(|e| e.to_string())?.store(store).build().map_err(|e| e.to_string())?,
    };

    let [product_part, user_part, checkout_part] = SERVICES.map(PartLayer);
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut table = Vec::new();

    for port in [3001, 3003] {
        let listener = bind("product-service", local(port)).await?;
        let state = ProductsState::connect(&db("products.db")).await.map_err(|e| format!("products.db: {e}"))?;
        let state = state.with_auth(auth.clone());
        tasks.spawn(demo_services::server::serve(listener, products::app(state).layer(product_part), stopped()));
        table.push(("product-service", port));
    }
    let passwords = Passwords::new(argon2::Params::default());
    let tokens =
        Tokens::Rotating { keys: signing.clone(), jwks_uri: "http://127.0.0.1:3002/.well-known/jwks.json".into() };
    let admin_email = env("ADMIN_EMAIL").unwrap_or_else(|| "admin@example.com".into());
    let admin_password = match env("ADMIN_PASSWORD_FILE") {
        Some(path) => String::from_utf8(read_secret_file(path.as_ref()).map_err(|e| format!("{path}: {e}"))?)
            .map_err(|_| format!("{path}: not UTF-8"))?,
        None => random(18)?,
    };
    for (i, port) in [3002, 3004].into_iter().enumerate() {
        let listener = bind("user-service", local(port)).await?;
        let db = users::connect(&db("users.db")).await.map_err(|e| format!("users.db: {e}"))?;
        let state = UsersState { db, tokens: tokens.clone(), auth: auth.clone(), passwords: passwords.clone() };
        if i == 0 {
            users::ensure_admin(&state, &admin_email, admin_password.clone())
                .await
                .map_err(|e| format!("the admin {admin_email}: {e:?}"))?;
        }
        tasks.spawn(demo_services::server::serve(listener, users::app(state).layer(user_part), stopped()));
        table.push(("user-service", port));
    }
    {
        let listener = bind("checkout-service", local(3005)).await?;
        let endpoints =
            Endpoints::new(["http://127.0.0.1:3001", "http://127.0.0.1:3003"]).map_err(|e| e.to_string())?;
        let db = checkout::connect(&db("orders.db")).await.map_err(|e| format!("orders.db: {e}"))?;
        let inventory = Endpoints::new(["http://127.0.0.1:50051"]).map_err(|e| e.to_string())?;
        let state = CheckoutState {
            db,
            products: ProductClient::new(endpoints),
            auth: Some(auth.clone()),
            inventory: Some(InventoryClient::new(inventory)),
        };
        tasks.spawn(demo_services::server::serve(listener, checkout::app(state).layer(checkout_part), stopped()));
        table.push(("checkout-service", 3005));
    }
    {
        let listener = bind("inventory-service", local(50051)).await?;
        let state = InventoryState::connect(&db("inventory.db")).await.map_err(|e| format!("inventory.db: {e}"))?;
        let stop = stopped();
        tasks.spawn(async move {
            if let Err(err) = inventory::serve(state, listener, stop).await {
                eprintln!("inventory-service: {err}");
            }
            Ok(())
        });
        table.push(("inventory-service", 50051));
    }
    // Keys before the first token: the gateway fetches user-service's set now.
    if !auth.prefetch().await {
        return Err(format!("the gateway cannot fetch user-service's keys from {discovery_url}"));
    }
    let listen = plan.listen();
    let limits: Vec<String> = plan
        .config()
        .limits
        .iter()
        .map(|(name, l)| format!("{name} {}/{} by {}", l.rate, l.per, l.key.parts().join("+")))
        .collect();
    let limits_store = if plan.config().redis_url.is_some() { "in Redis" } else { "in this process" };
    let listener = bind("gateway", listen).await?;
    tasks.spawn(demo_gateway::serve(plan, listener, stopped()));

    let base = format!("http://{listen}");
    println!("tower-gateway demo: the whole system, in one process (Ctrl-C stops it all)\n");
    println!("  gateway            {base}   /api/products  /api/users  /api/checkout");
    if let Some(ca_file) = &ca_file {
        println!("  gateway, HTTPS     https://127.0.0.1:8443  (HTTP/2 and HTTP/1.1; CA in {})", ca_file.display());
    }
    for (name, port) in &table {
        println!("  {name:<18} http://127.0.0.1:{port}");
    }
    println!("\n  data in {}/ (products.db, users.db, orders.db, inventory.db)", data_dir.display());
    println!(
        "  tokens: EdDSA, signed with key {} (rotated daily); the gateway finds the keys by {discovery_url}; revoked {store_name}",
        signing.current_kid().await.map_err(|e| e.to_string())?
    );
    println!("  rate limits ({limits_store}): {}", limits.join(", "));
    println!("  admin: {admin_email} / {admin_password}");
    println!("  health {base}/healthz  readiness {base}/readyz  metrics {base}/metrics");
    match &telemetry.otlp_endpoint {
        Some(endpoint) => {
            println!("  traces: OTLP to {endpoint}, as gateway, product-service, user-service and checkout-service\n")
        }
        None => println!("  traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)\n"),
    }
    println!("Try it:\n");
    println!(
        "  curl -s -X POST {base}/api/users/signup -H 'content-type: application/json' -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}'"
    );
    println!(
        "  TOKEN=$(curl -s -X POST {base}/api/users/login -H 'content-type: application/json' -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!(
        "  curl -s -X POST {base}/api/checkout -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' -H 'idempotency-key: order-1' -d '{{\"product_id\":1,\"quantity\":2}}'"
    );
    if let Some(ca_file) = &ca_file {
        println!("  curl -s --cacert {} https://127.0.0.1:8443/api/products/1", ca_file.display());
        println!(
            "  cargo run -q --release -p demo-services --bin ws-probe -- --cacert {} wss://127.0.0.1:8443/api/products/feed   # the WebSocket price feed",
            ca_file.display()
        );
    }
    println!(
        "  curl -s -X PUT {base}/api/products/1 -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"name\":\"Laptop\",\"price\":0.01}}'   # 403: needs admin"
    );
    println!("\ngRPC through the gateway (inventory-service; h2c here, h2 on 8443):\n");
    println!(
        "  cargo run -q --release -p demo-services --bin grpc-health -- {base} inventory.v1.Inventory   # SERVING"
    );
    if let Some(ca_file) = &ca_file {
        println!(
            "  cargo run -q --release -p demo-services --bin grpc-health -- --ca {} https://127.0.0.1:8443 inventory.v1.Inventory",
            ca_file.display()
        );
    }
    println!(
        "  cargo run -q --release -p demo-services --bin grpc-health -- --unrouted {base}   # UNIMPLEMENTED: no route"
    );
    println!("\nRotate the signing key (tokens issued before stay valid until they expire):\n");
    println!("  curl -s {base}/api/users/.well-known/jwks.json");
    println!(
        "  ADMIN=$(curl -s -X POST {base}/api/users/login -H 'content-type: application/json' -d '{{\"email\":\"{admin_email}\",\"password\":\"...\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("  curl -s -X POST {base}/api/users/keys/rotate -H \"authorization: Bearer $ADMIN\"\n");

    demo_common::shutdown_signal().await;
    println!("stopping: finishing requests in flight");
    let _ = shutdown_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(err)) = done {
            tracing::warn!(%err, "a server stopped with an error");
        }
    }
    Ok(())
}
