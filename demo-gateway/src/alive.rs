//! Counts of what generations of the configuration have alive, so that a
//! reload can be seen to leave nothing of an old one behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many of the things a generation owns are alive, so that a reload can be
/// seen to leave nothing of an old one behind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Alive {
    pub(crate) tables: Arc<AtomicUsize>,
    pub(crate) upstreams: Arc<AtomicUsize>,
    pub(crate) dns_watchers: Arc<AtomicUsize>,
}

/// One counted in an [`Alive`] count for as long as it lives.
#[derive(Debug)]
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
