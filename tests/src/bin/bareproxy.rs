//! The benchmark's floor: a bare hyper 1 proxy of the gateway's own runtime
//! design and nothing else — one current-thread runtime per core, each with its
//! own `SO_REUSEPORT` listener and hyper-util pooled client, the route prefix
//! stripped and the upstreams taken in turn. No policy, no limits, no metrics,
//! no hardening: what hyper itself costs, for `bench/proxies.sh` to set the
//! gateway beside in the same run.
//!
//! `bareproxy LISTEN PREFIX UPSTREAM...` (e.g. `127.0.0.1:18109 /api/products
//! http://127.0.0.1:18081 http://127.0.0.1:18082`); runs until killed.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(prefix), upstreams) = (args.first(), args.get(1), args.get(2..).unwrap_or_default()) else {
        eprintln!("usage: bareproxy LISTEN PREFIX UPSTREAM...");
        return ExitCode::from(2);
    };
    let (Ok(listen), false) = (listen.parse::<SocketAddr>(), upstreams.is_empty()) else {
        eprintln!("bareproxy: LISTEN is ip:port, and at least one UPSTREAM (http://host:port)");
        return ExitCode::from(2);
    };
    let upstreams: Vec<String> = upstreams.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (prefix, upstreams) = (prefix.clone(), upstreams.clone());
            std::thread::spawn(move || serve(listen, prefix, upstreams))
        })
        .collect();
    for thread in threads {
        if let Ok(Err(err)) = thread.join() {
            eprintln!("bareproxy: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// One core's proxy: its runtime, listener and connection pool.
fn serve(listen: SocketAddr, prefix: String, upstreams: Vec<String>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
        let state = Rc::new((prefix, upstreams, client, Cell::new(0usize)));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let svc = service_fn(move |req| forward(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

type State = Rc<(String, Vec<String>, Client<HttpConnector, Incoming>, Cell<usize>)>;

async fn forward(state: State, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (prefix, upstreams, client, next) = &*state;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let rest = path.strip_prefix(prefix.as_str()).filter(|r| r.is_empty() || r.starts_with(['/', '?']));
    let Some(rest) = rest else { return Ok(status(StatusCode::NOT_FOUND)) };
    let turn = next.get();
    next.set(turn.wrapping_add(1));
    let upstream = &upstreams[turn % upstreams.len()];
    let rest = if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() };
    let Ok(uri) = format!("{upstream}{rest}").parse::<Uri>() else { return Ok(status(StatusCode::BAD_REQUEST)) };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(response) => Ok(response.map(|body| body.boxed_unsync())),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = code;
    response
}
