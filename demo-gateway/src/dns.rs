//! Endpoint sets from DNS: Swarm's `tasks.<service>` answers with the address of
//! every running replica, so resolving it again every few seconds follows scaling
//! without a restart.

use std::time::Duration;

use tower_gateway::balance::Endpoints;

/// Resolves `name` (`host:port`) once and replaces the set with every address.
/// A failed or empty lookup leaves the set as it was: replicas that are really
/// gone are skipped anyway once their connections are refused.
pub async fn resolve_into(name: &str, endpoints: &Endpoints) {
    match tokio::net::lookup_host(name).await {
        Ok(addrs) => {
            let mut urls: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
            urls.sort();
            urls.dedup();
            if urls.is_empty() {
                tracing::warn!(%name, "DNS answered no address; keeping the endpoints we have");
            } else if let Err(err) = endpoints.replace(&urls) {
                tracing::warn!(%name, %err, "DNS answered an unusable address");
            }
        }
        Err(err) => tracing::warn!(%name, %err, "DNS lookup failed; keeping the endpoints we have"),
    }
}

/// Resolves `name` into `endpoints` every `every`, forever.
pub async fn refresh(name: String, endpoints: Endpoints, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        resolve_into(&name, &endpoints).await;
    }
}
