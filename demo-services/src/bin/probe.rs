//! `probe [--print] URL`: exits 0 if `GET URL` answers 2xx within 2 s, 1
//! otherwise; with `--print`, writes the body to standard output. For container
//! health checks, and for reading a listener that is not published, in images
//! that have no shell and no curl.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
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
