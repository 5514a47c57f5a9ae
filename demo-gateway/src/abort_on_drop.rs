//! A task that ends with its owner.

/// Aborts the task when dropped: a background task (the certificate watcher,
/// the SIGHUP listener) lives as long as what holds it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
