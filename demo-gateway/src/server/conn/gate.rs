//! What the rest of the gateway tells a connection's task, heard through a
//! gate that lets the task poll those futures only when they woke it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// What the rest of the gateway tells a connection's task.
pub(super) enum Signal {
    /// The gateway is stopping.
    Stop,
    /// A connection was refused at `max_connections`: idle ones make room.
    MakeRoom,
    /// The first request arrived (looked for once stopping).
    FirstRequest,
}

/// Lets a connection's task poll futures only after they have woken it: its
/// own wakes (reads, writes, timers) pass them by.
pub(super) struct Gate {
    flag: Arc<GateFlag>,
    /// Wakes `flag`, and the task through it.
    waker: std::task::Waker,
}

struct GateFlag {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    pub(super) fn new() -> Self {
        let flag = Arc::new(GateFlag { woken: AtomicBool::new(true), task: Default::default() });
        Self { waker: std::task::Waker::from(flag.clone()), flag }
    }

    /// Has the next [`Gate::poll`] poll its futures whether woken or not.
    pub(super) fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    /// Runs `poll` (which polls the gated futures with the context it is given)
    /// if one of them woke the task since the last time, or the gate was opened.
    pub(super) fn poll<T>(
        &self,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(&mut std::task::Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        poll(&mut std::task::Context::from_waker(&self.waker))
    }
}
