//! `probe [--print] URL`: exits 0 if `GET URL` answers 2xx within 2 s, 1
//! otherwise; with `--print`, writes the body to standard output. For container
//! health checks, and for reading a listener that is not published, in images
//! that have no shell and no curl.
//!
//! `probe --redis HOST:PORT CONF_FILE`: exits 0 if Redis there answers `PING`
//! with `PONG` once authenticated with the `requirepass` of CONF_FILE, within
//! 2 s. `redis-cli ping` succeeds on a `NOAUTH` error, so it cannot tell a
//! Redis that serves from one that refuses everyone.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--redis") {
        let (Some(addr), Some(conf)) = (args.get(1), args.get(2)) else {
            eprintln!("usage: probe --redis HOST:PORT CONF_FILE");
            return ExitCode::from(2);
        };
        return match tokio::time::timeout(Duration::from_secs(2), redis_ping(addr, conf)).await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(err)) => {
                eprintln!("probe: redis {addr}: {err}");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("probe: redis {addr}: no answer within 2 s");
                ExitCode::FAILURE
            }
        };
    }
    let print = args.first().is_some_and(|a| a == "--print");
    if print {
        args.remove(0);
    }
    let Some(url) = args.into_iter().next() else {
        eprintln!("usage: probe [--print] URL");
        return ExitCode::from(2);
    };
    let Ok(uri) = url.parse() else {
        eprintln!("probe: not a URL: {url}");
        return ExitCode::from(2);
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(res)) if res.status().is_success() => {
            if print {
                use http_body_util::BodyExt;
                match tokio::time::timeout(Duration::from_secs(2), res.into_body().collect()).await {
                    Ok(Ok(body)) => print!("{}", String::from_utf8_lossy(&body.to_bytes())),
                    _ => {
                        eprintln!("probe: {url}: the body did not arrive");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok(Ok(res)) => {
            eprintln!("probe: {url}: {}", res.status());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("probe: {url}: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("probe: {url}: no answer within 2 s");
            ExitCode::FAILURE
        }
    }
}

/// `AUTH` with the `requirepass` of `conf` (if it has one), then `PING`: each
/// must be answered `+OK` and `+PONG`.
async fn redis_ping(addr: &str, conf: &str) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let conf = std::fs::read_to_string(conf).map_err(|e| format!("{conf}: {e}"))?;
    let password = conf.lines().find_map(|l| l.trim().strip_prefix("requirepass ")).map(str::trim);
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let command = |parts: &[&str]| {
        let mut out = format!("*{}\r\n", parts.len());
        for part in parts {
            out.push_str(&format!("${}\r\n{part}\r\n", part.len()));
        }
        out
    };
    let mut expect = Vec::new();
    let mut sent = String::new();
    if let Some(password) = password {
        sent.push_str(&command(&["AUTH", password]));
        expect.push("+OK");
    }
    sent.push_str(&command(&["PING"]));
    expect.push("+PONG");
    stream.get_mut().write_all(sent.as_bytes()).await.map_err(|e| e.to_string())?;
    for want in expect {
        let mut line = String::new();
        stream.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line.trim_end() != want {
            return Err(format!("answered {:?}", line.trim_end()));
        }
    }
    Ok(())
}
