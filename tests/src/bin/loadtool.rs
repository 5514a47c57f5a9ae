//! The load benchmark's helpers (`bench/proxies.sh` runs them):
//!
//! - `loadtool openloop RATE SECONDS CONNECTIONS URL [HEADER]`: GETs at a fixed
//!   rate, each timed from when it was due, not from when it was sent (a late
//!   send counts its wait: no coordinated omission); prints one JSON line with
//!   the requests sent, errors, and p50/p99/p99.9 in microseconds.
//! - `loadtool idle CONNECTIONS URL SECONDS [h1|h2] [batches|flood] [CA_FILE]`:
//!   opens that many connections, one GET on each, prints `ready`, and holds
//!   them open, idle, for SECONDS. HTTP/1.1 (`h1`, the default) or HTTP/2
//!   (`h2`: prior knowledge on `http://`, ALPN on `https://`); an `https://`
//!   URL is TLS, trusting the certificate(s) in CA_FILE. `batches` (the
//!   default) opens 200 at a time, each batch answered before the next;
//!   `flood` opens every one at once, the way a flood arrives.
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
        ["idle", connections, url, seconds, rest @ ..] => runtime.block_on(async {
            let how = Idle::parse(rest)?;
            idle(connections.parse()?, url, seconds.parse()?, how).await
        }),
        ["token", algorithm, key_file] => token(algorithm, key_file),
        _ => {
            eprintln!(
                "usage: loadtool openloop RATE SECONDS CONNECTIONS URL [HEADER] | idle CONNECTIONS URL SECONDS [h1|h2] [batches|flood] [CA_FILE] | token ALGORITHM KEY_FILE"
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

/// The host, port and path of an `http://` (or, for `idle`, `https://`) URL.
fn target(url: &str) -> Result<(String, String), BoxError> {
    let uri: http::Uri = url.parse()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url}: an http:// or https:// URL").into());
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
    if !url.starts_with("http://") {
        return Err(format!("{url}: openloop speaks plain HTTP/1.1 (http://) only").into());
    }
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

/// How `loadtool idle` opens its connections.
struct Idle {
    h2: bool,
    flood: bool,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Idle {
    fn parse(args: &[&str]) -> Result<Self, BoxError> {
        let h2 = match args.first().copied() {
            None | Some("h1") => false,
            Some("h2") => true,
            Some(other) => return Err(format!("{other}: h1 or h2").into()),
        };
        let flood = match args.get(1).copied() {
            None | Some("batches") => false,
            Some("flood") => true,
            Some(other) => return Err(format!("{other}: batches or flood").into()),
        };
        let tls = args.get(2).map(|ca| tls_connector(ca, h2)).transpose()?;
        Ok(Self { h2, flood, tls })
    }
}

/// A TLS client trusting the PEM certificates in `ca`, offering `h2` or `http/1.1`.
fn tls_connector(ca: &str, h2: bool) -> Result<tokio_rustls::TlsConnector, BoxError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A connection opened, answered once, and held: its sender keeps it open.
type Held = Box<dyn Send>;

/// One connection to `authority` as `how` says, one GET of `path` answered on it.
async fn open_idle(authority: &str, path: &str, how: &Idle) -> Result<Held, BoxError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    let io: Box<dyn Io> = match &how.tls {
        Some(tls) => Box::new(tls.connect(rustls::pki_types::ServerName::try_from(host.to_owned())?, tcp).await?),
        None => Box::new(tcp),
    };
    if how.h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        let uri = format!("{}://{authority}{path}", if how.tls.is_some() { "https" } else { "http" });
        let res = sender.send_request(http::Request::get(uri).body(Empty::<Bytes>::new())?).await?;
        let status = res.status();
        http_body_util::BodyExt::collect(res.into_body()).await?;
        if !status.is_success() {
            return Err(format!("status {status}").into());
        }
        Ok(Box::new(sender))
    } else {
        let mut sender = http1_connection(io).await?;
        get_ok(&mut sender, authority, path, None).await?;
        Ok(Box::new(sender))
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn idle(connections: usize, url: &str, seconds: u64, how: Idle) -> Result<(), BoxError> {
    let (authority, path) = target(url)?;
    let (authority, path, how) = (Arc::new(authority), Arc::new(path), Arc::new(how));
    let (mut held, mut again) = (Vec::with_capacity(connections), 0);
    let mut opening = tokio::task::JoinSet::new();
    let batch = if how.flood { connections.max(1) } else { 200 };
    for chunk in (0..connections).collect::<Vec<_>>().chunks(batch) {
        for _ in chunk {
            let (authority, path, how) = (authority.clone(), path.clone(), how.clone());
            opening.spawn(async move {
                // A flood meets the gateway's admission (a TLS handshake
                // budget, a full accept queue): a refused client comes back,
                // as real ones do.
                let mut tries = 1;
                loop {
                    match open_idle(&authority, &path, &how).await {
                        Ok(held) => return Ok((held, tries - 1)),
                        Err(_) if how.flood && tries < 20 => {
                            tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                            tries += 1;
                        }
                        Err(err) => return Err(err),
                    }
                }
            });
        }
        while let Some(opened) = opening.join_next().await {
            let (connection, retries) = opened??;
            held.push(connection);
            again += retries;
        }
    }
    println!("ready {} ({again} opened again after a refusal)", held.len());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    drop(held);
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
