//! The threads that serve client connections: each runs a single-threaded Tokio
//! runtime of its own, and a connection stays on the thread it was given for its
//! whole life. Its requests, the upstream connections they go out on (the proxy
//! keeps a pool per thread) and the responses never cross threads: no work
//! stealing, no wake-up of another core per request. This is how nginx's workers
//! and Pingora's and linkerd2-proxy's per-core runtimes are laid out.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// A set of worker threads; dropping it stops them (their connections are
/// dropped with their runtimes).
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections this worker is serving.
    load: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    /// Sent once the worker's runtime has been dropped.
    stopped: Option<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stop_asked) = oneshot::channel::<()>();
            let (stopped_tx, stopped) = oneshot::channel();
            std::thread::Builder::new().name(format!("gateway-worker-{i}")).spawn(move || {
                let _ = runtime.block_on(stop_asked);
                drop(runtime);
                let _ = stopped_tx.send(());
            })?;
            workers.push(Worker { handle, load: Arc::default(), stop: Some(stop), stopped: Some(stopped) });
        }
        Ok(Self { workers })
    }

    /// Runs one connection's task on the worker serving the fewest. `make`
    /// builds it in that worker's runtime context (a socket made there is
    /// registered with that runtime), and gives none when there is nothing to run.
    pub(crate) fn spawn<F>(&self, make: impl FnOnce() -> Option<F>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self.workers.iter().min_by_key(|w| w.load.load(Ordering::Relaxed)).expect("at least one worker");
        let task = {
            let _context = worker.handle.enter();
            make()
        };
        if let Some(task) = task {
            worker.handle.spawn(Counted { task, _load: Load::take(&worker.load) });
        }
    }

    /// Stops every worker and waits until their runtimes are gone: whatever
    /// they still ran has been dropped.
    pub(crate) async fn stop(mut self) {
        for worker in &mut self.workers {
            drop(worker.stop.take());
        }
        for worker in &mut self.workers {
            if let Some(stopped) = worker.stopped.take() {
                let _ = stopped.await;
            }
        }
    }

    /// Connections each worker is serving.
    #[cfg(test)]
    fn loads(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.load.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            drop(worker.stop.take());
        }
    }
}

pin_project_lite::pin_project! {
    /// A task that holds its place in its worker's count until it ends. A
    /// future of its own: an `async` block awaiting the task would hold it
    /// twice (the captured value and the one being awaited).
    struct Counted<F> {
        #[pin]
        task: F,
        _load: Load,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

/// One connection counted on its worker until it ends.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn take(load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        Self(load.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_loaded_worker_and_stay_on_its_thread() {
        let workers = Workers::start(2).unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            let mut released = released.clone();
            workers.spawn(|| {
                Some(async move {
                    let _ = tx.send(std::thread::current().name().map(str::to_owned));
                    let _ = released.wait_for(|r| *r).await;
                })
            });
            threads.push(rx.await.unwrap().unwrap());
        }
        assert_eq!(workers.loads(), vec![2, 2]);
        threads.sort();
        assert_eq!(threads, ["gateway-worker-0", "gateway-worker-0", "gateway-worker-1", "gateway-worker-1"]);
        release.send(true).unwrap();
        // Bounded polling: each task ends on its worker and gives its place back.
        for _ in 0..200 {
            if workers.loads() == [0, 0] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(workers.loads(), vec![0, 0]);
    }

    #[tokio::test]
    async fn stopping_drops_what_the_workers_still_run() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        // Never ends by itself; its sender is dropped with the runtime.
        workers.spawn(|| {
            Some(async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            })
        });
        workers.stop().await;
        assert!(rx.await.is_err(), "the task was dropped");
    }
}
