//! `ws-probe [--cacert FILE] URL`: opens a WebSocket to the price feed at URL
//! (`ws://` or `wss://`, trusting the CA in FILE), waits for the prices, sends
//! a text message and waits for its echo; exits 0 if all of it happens within
//! 10 s, 1 otherwise. For `deploy/swarm.sh check` and for trying the feed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cacert, url) = match args.as_slice() {
        [flag, file, url] if flag == "--cacert" => (Some(file.clone()), url.clone()),
        [url] => (None, url.clone()),
        _ => {
            eprintln!("usage: ws-probe [--cacert FILE] URL");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), probe(&url, cacert.as_deref())).await {
        Ok(Ok(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("ws-probe: {url}: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("ws-probe: {url}: not done within 10 s");
            ExitCode::FAILURE
        }
    }
}

async fn probe(url: &str, cacert: Option<&str>) -> Result<String, BoxError> {
    let request = url.into_client_request()?;
    let uri = request.uri().clone();
    let host = uri.host().ok_or("the URL has no host")?.trim_matches(['[', ']']).to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    if !tls {
        return talk(request, tcp).await;
    }
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cacert.ok_or("wss:// needs --cacert FILE")?)?;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host)?;
    talk(request, tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?).await
}

/// The handshake over `stream`, the prices, and an echo.
async fn talk<S>(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<String, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    let prices = next(&mut socket).await?;
    let count = prices["products"].as_array().ok_or_else(|| format!("not the prices: {prices}"))?.len();
    socket.send(Message::text("ws-probe")).await?;
    let echo = loop {
        let message = next(&mut socket).await?;
        if message["type"] == "echo" {
            break message;
        }
    };
    if echo["data"] != "ws-probe" {
        return Err(format!("a wrong echo: {echo}").into());
    }
    socket.close(None).await?;
    Ok(format!("prices of {count} products, then the echo"))
}

/// The next text message, as JSON.
async fn next<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<serde_json::Value, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match socket.next().await.ok_or("the feed closed")?? {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Close(frame) => return Err(format!("the feed closed: {frame:?}").into()),
            _ => {}
        }
    }
}
