//! `probe URL`: exits 0 if `GET URL` answers 2xx within 2 s, 1 otherwise. For
//! container health checks in images that have no shell and no curl.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: probe URL");
        return ExitCode::from(2);
    };
    let Ok(uri) = url.parse() else {
        eprintln!("probe: not a URL: {url}");
        return ExitCode::from(2);
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(res)) if res.status().is_success() => ExitCode::SUCCESS,
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
