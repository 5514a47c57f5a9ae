//! The benchmark's floor, a bare hyper 1 proxy (see
//! `tower_gateway_tests::bare_proxy`), on every core.
//!
//! `bareproxy LISTEN PREFIX UPSTREAM...` (e.g. `127.0.0.1:18109 /api/products
//! http://127.0.0.1:18081 http://127.0.0.1:18082`); runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;

use tower_gateway_tests::bare_proxy::serve;

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
