//! What the gateway keeps for as long as the process runs, whatever its
//! configuration: every generation of the plan shares it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;
use tower_gateway::upgrade::Tunnels;

use crate::alive::Alive;
use crate::metrics::Metrics;

/// What lives as long as the process, whatever its configuration: every
/// generation of the plan shares these, and a reload changes none of them.
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    /// The WebSockets every upstream's proxy has open: one cap, one idle
    /// timeout, closed at shutdown.
    pub(crate) tunnels: Tunnels,
    /// Requests forwarded at once through every route; beyond, `503 overloaded`.
    pub(crate) capacity: Arc<Semaphore>,
    /// Of those, what public routes may hold together: the rest is kept for
    /// requests with a token.
    pub(crate) anonymous: Arc<Semaphore>,
    pub(crate) drain: Drain,
    /// What generations of the plan have alive: tables, upstreams, DNS watchers.
    pub(crate) alive: Alive,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("alive", &self.alive).finish_non_exhaustive()
    }
}

/// Set when the gateway starts to shut down: readiness fails, and HTTP/1.1
/// connections are told to close after their response.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drain(Arc<AtomicBool>);

impl Drain {
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
