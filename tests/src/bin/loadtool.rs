//! The load benchmark's helpers (`bench/proxies.sh` runs them):
//!
//! - `loadtool openloop RATE SECONDS CONNECTIONS URL [HEADER]`: GETs at a fixed
//!   rate, each timed from when it was due, not from when it was sent (a late
//!   send counts its wait: no coordinated omission); prints one JSON line with
//!   the requests sent, errors, and p50/p99/p99.9 in microseconds.
//! - `loadtool idle CONNECTIONS URL SECONDS`: opens that many HTTP/1.1
//!   connections, one GET on each, prints `ready`, and holds them open, idle,
//!   for SECONDS.
//! - `loadtool token ALGORITHM KEY_FILE`: a token for subject `bench`, signed
//!   with the HMAC secret or private key (PEM) in KEY_FILE, valid 15 minutes (the gateway accepts no longer).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_gateway_tests::{get_ok, http1_connection};

use tower_gateway_tests::BoxError;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let Ok(runtime) = runtime else {
        eprintln!("loadtool: cannot start a runtime");
        return ExitCode::FAILURE;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["openloop", rate, seconds, connections, url, rest @ ..] => runtime.block_on(async {
            let header = rest.first().copied();
            open_loop(rate.parse()?, seconds.parse()?, connections.parse()?, url, header).await
        }),
        ["idle", connections, url, seconds] => {
            runtime.block_on(async { idle(connections.parse()?, url, seconds.parse()?).await })
        }
        ["token", algorithm, key_file] => token(algorithm, key_file),
        _ => {
            eprintln!(
                "usage: loadtool openloop RATE SECONDS CONNECTIONS URL [HEADER] | idle CONNECTIONS URL SECONDS | token ALGORITHM KEY_FILE"
            );
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadtool: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The host, port and path of an `http://` URL.
fn target(url: &str) -> Result<(String, String), BoxError> {
    let uri: http::Uri = url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs").into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?.to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((authority, path))
}

/// One HTTP/1.1 connection's sender.
async fn connection(authority: &str) -> Result<SendRequest<Empty<Bytes>>, BoxError> {
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    http1_connection(tcp).await
}

async fn open_loop(
    rate: f64,
    seconds: f64,
    connections: usize,
    url: &str,
    header: Option<&str>,
) -> Result<(), BoxError> {
    let (authority, path) = target(url)?;
    let header = match header {
        Some(h) => {
            let (name, value) = h.split_once(':').ok_or("HEADER is name: value")?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        }
        None => None,
    };
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let (authority, path, header) = (Arc::new(authority), Arc::new(path), Arc::new(header));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let (authority, path, header) = (authority.clone(), path.clone(), header.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(total / connections + 1);
            let mut errors = 0usize;
            let mut sender = connection(&authority).await.ok();
            // Request i is due at start + i × interval; this connection takes
            // every `connections`-th one.
            for i in (c..total).step_by(connections) {
                let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
                tokio::time::sleep_until(due).await;
                if sender.is_none() {
                    sender = connection(&authority).await.ok();
                }
                let header = header.as_ref().as_ref().map(|(n, v)| (n.as_str(), v.as_str()));
                let ok = match sender.as_mut() {
                    Some(sender) => get_ok(sender, &authority, &path, header).await.is_ok(),
                    None => false,
                };
                if ok {
                    latencies.push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors += 1;
                    sender = None;
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::with_capacity(total), 0);
    for (l, e) in tasks.join_all().await {
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    println!(
        "{}",
        serde_json::json!({
            "rate": rate,
            "sent": total,
            "ok": latencies.len(),
            "errors": errors,
            "p50_us": at(0.50),
            "p99_us": at(0.99),
            "p999_us": at(0.999),
        })
    );
    Ok(())
}

async fn idle(connections: usize, url: &str, seconds: u64) -> Result<(), BoxError> {
    let (authority, path) = target(url)?;
    let mut held = Vec::with_capacity(connections);
    let mut opening = tokio::task::JoinSet::new();
    for batch in (0..connections).collect::<Vec<_>>().chunks(200) {
        for _ in batch {
            let (authority, path) = (authority.clone(), path.clone());
            opening.spawn(async move {
                let mut sender = connection(&authority).await?;
                get_ok(&mut sender, &authority, &path, None).await?;
                Ok::<_, BoxError>(sender)
            });
        }
        while let Some(opened) = opening.join_next().await {
            held.push(opened??);
        }
    }
    println!("ready {}", held.len());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(())
}

fn token(algorithm: &str, key_file: &str) -> Result<(), BoxError> {
    let key = std::fs::read(key_file)?;
    let issuer = match algorithm {
        "HS256" => tower_gateway_auth::TokenIssuer::hmac(jsonwebtoken::Algorithm::HS256, &key)?,
        "EdDSA" => tower_gateway_auth::TokenIssuer::private_pem(jsonwebtoken::Algorithm::EdDSA, &key)?,
        "ES256" => tower_gateway_auth::TokenIssuer::private_pem(jsonwebtoken::Algorithm::ES256, &key)?,
        other => return Err(format!("{other}: HS256, EdDSA or ES256").into()),
    };
    println!("{}", issuer.ttl(Duration::from_secs(900)).issue("bench", None, &[])?);
    Ok(())
}
