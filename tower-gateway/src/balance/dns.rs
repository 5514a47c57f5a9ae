//! Endpoint sets from DNS.
//!
//! Docker Swarm answers `tasks.<service>` with the address of every running
//! replica (Kubernetes headless services do the same), so resolving it again
//! every few seconds makes the balancer follow scaling and restarts without a
//! restart of its own.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_gateway::balance::{Endpoints, dns};
//!
//! # async fn run() {
//! let endpoints = Endpoints::new(Vec::<String>::new()).unwrap();
//! dns::resolve("tasks.product-service:3001", &endpoints).await.ok();
//! tokio::spawn(dns::watch("tasks.product-service:3001".into(), endpoints.clone(), Duration::from_secs(5)));
//! # }
//! ```

use std::io;
use std::time::Duration;

use super::Endpoints;

/// Resolves `name` (`host:port`) and replaces the set with `http://` endpoints for
/// every address; returns how many. A failed or empty lookup leaves the set as it
/// was (replicas that are really gone are ejected once they refuse connections),
/// and is returned as an error.
pub async fn resolve(name: &str, endpoints: &Endpoints) -> io::Result<usize> {
    let mut urls: Vec<String> = tokio::net::lookup_host(name).await?.map(|addr| format!("http://{addr}")).collect();
    urls.sort();
    urls.dedup();
    if urls.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address")));
    }
    endpoints.replace(&urls).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(urls.len())
}

/// Resolves `name` into `endpoints` every `every`, forever (run it in a task;
/// abort the task to stop). Failures are logged and the last good set is kept.
pub async fn watch(name: String, endpoints: Endpoints, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = resolve(&name, &endpoints).await {
            tracing::warn!(%name, %err, "DNS lookup failed; keeping the endpoints we have");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_every_address_and_keeps_the_set_on_failure() {
        let endpoints = Endpoints::new(["http://10.9.9.9:1"]).unwrap();
        let n = resolve("localhost:3001", &endpoints).await.unwrap();
        let uris: Vec<String> = endpoints.snapshot().iter().map(ToString::to_string).collect();
        assert_eq!(uris.len(), n);
        assert!(uris.contains(&"http://127.0.0.1:3001".to_owned()), "{uris:?}");

        assert!(resolve("no-such-host.invalid:1", &endpoints).await.is_err());
        assert_eq!(endpoints.len(), n, "a failed lookup changes nothing");
        assert!(resolve("localhost", &endpoints).await.is_err(), "a port is required");
    }
}
