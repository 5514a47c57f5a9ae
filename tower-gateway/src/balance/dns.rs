//! Endpoint sets from DNS.
//!
//! Docker Swarm answers `tasks.<service>` with the address of every running
//! replica (Kubernetes headless services do the same), so resolving it again
//! every few seconds makes the balancer follow scaling and restarts without a
//! restart of its own.
//!
//! [`Discovered`] is an endpoint set from either source, a fixed list or a
//! watched name, its watcher stopped when it is dropped:
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_gateway::balance::RoundRobinLayer;
//! use tower_gateway::balance::dns::{Discovered, Source};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = Source::Dns { name: "tasks.product-service:3001".into(), every: Duration::from_secs(5) };
//! let products = Discovered::new(source)?;
//! products.first_lookup().await.ok(); // before the first request, not to meet an empty set
//! let layer = RoundRobinLayer::new(products.endpoints().clone());
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! [`resolve`] and [`watch`] are the parts, for a caller that runs its own task.

use std::io;
use std::time::Duration;

use super::{Endpoints, InvalidEndpoint};

/// Where an endpoint set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These URLs, for good.
    Static(Vec<String>),
    /// Every address `name` (`host:port`) resolves to, as `http://`, looked up
    /// again every `every`.
    Dns {
        /// `host:port`.
        name: String,
        /// How often it is looked up again.
        every: Duration,
    },
}

/// An endpoint set kept from its [`Source`]: a DNS name is looked up at once
/// and then every so often, by a task that stops when this is dropped.
#[derive(Debug)]
pub struct Discovered {
    source: Source,
    endpoints: Endpoints,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Discovered {
    /// The set of `source`, its watcher started. Call it inside a Tokio runtime.
    pub fn new(source: Source) -> Result<Self, InvalidEndpoint> {
        let (endpoints, watcher) = match &source {
            Source::Static(urls) => (Endpoints::new(urls)?, None),
            Source::Dns { name, every } => {
                let endpoints = Endpoints::new(Vec::<String>::new())?;
                (endpoints.clone(), Some(tokio::spawn(watch(name.clone(), endpoints, *every))))
            }
        };
        Ok(Self { source, endpoints, watcher })
    }

    /// Looks a DNS name up once now, if the set is still empty; for a static
    /// set, nothing. Await it before serving, so that the first requests do
    /// not meet an empty set while the watcher's first lookup is on its way.
    pub async fn first_lookup(&self) -> io::Result<()> {
        match &self.source {
            Source::Dns { name, .. } if self.endpoints.is_empty() => resolve(name, &self.endpoints).await.map(drop),
            _ => Ok(()),
        }
    }

    /// The set, to balance over (clones share it).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where it comes from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Whether a task watches a DNS name for it.
    pub fn is_watched(&self) -> bool {
        self.watcher.is_some()
    }
}

impl Drop for Discovered {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

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
    async fn a_discovered_set_follows_its_source_and_its_watcher_ends_with_it() {
        let fixed = Discovered::new(Source::Static(vec!["http://10.0.0.1:80".into()])).unwrap();
        assert_eq!(fixed.endpoints().len(), 1);
        assert!(!fixed.is_watched());
        assert!(Discovered::new(Source::Static(vec!["ftp://x".into()])).is_err());

        let every = Duration::from_secs(3600);
        let found = Discovered::new(Source::Dns { name: "localhost:3001".into(), every }).unwrap();
        found.first_lookup().await.unwrap();
        assert!(!found.endpoints().is_empty(), "looked up before the first request");
        let watcher = found.watcher.as_ref().unwrap().abort_handle();
        assert!(!watcher.is_finished());
        drop(found);
        for _ in 0..100 {
            if watcher.is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the watcher outlived its set");
    }

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
