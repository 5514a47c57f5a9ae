//! The benchmark's floor: a bare hyper 1 proxy of the gateway's own runtime
//! design and nothing else — one current-thread runtime per core, each with its
//! own `SO_REUSEPORT` listener and hyper-util pooled client, the route prefix
//! stripped and the upstreams taken in turn. No policy, no limits, no metrics,
//! no hardening: what hyper itself costs, for `bench/proxies.sh` (through the
//! `bareproxy` binary) and the allocation count of `benches/layers.rs` to set
//! the gateway beside.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// One core's proxy: its runtime, listener and connection pool.
/// Runs until the process ends, on this thread.
pub fn serve(listen: SocketAddr, prefix: String, upstreams: Vec<String>) -> std::io::Result<()> {
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
