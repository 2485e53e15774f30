//! The delivery runtime: WebSocket and SSE subscriptions run on their own worker
//! threads, apart from the runtime that serves HTTP requests.
//!
//! An append wakes every subscriber tailing the topic. On one shared runtime those
//! wake-ups queue in front of the next request (a thousand subscribers cost a few
//! milliseconds of CPU per append), so producers would wait on consumers. With two
//! runtimes the kernel schedules between their threads: a request wakes an idle HTTP
//! worker at once, and deliveries take the CPU that is left.

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle, Runtime};

/// Owns the delivery runtime; stopping it (or dropping this) never blocks, so it may
/// happen inside async code.
#[derive(Debug)]
pub struct Delivery {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
}

impl Delivery {
    /// Starts `threads` workers (0: [`default_threads`]) named `tidegate-delivery`.
    pub fn start(threads: u32) -> std::io::Result<Self> {
        let threads = match threads {
            0 => default_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n as usize,
        };
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tidegate-delivery")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self { runtime: Mutex::new(Some(runtime)), handle })
    }

    /// Runs `session` on the delivery runtime, detached. Once [`Delivery::stop`] ran,
    /// new sessions are dropped unstarted (their sockets close).
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.runtime.lock().expect("delivery lock").is_some() {
            self.handle.spawn(session);
        }
    }

    /// Stops the workers without waiting for them; sessions still running are dropped.
    /// Callers wait for sessions to end first (server shutdown does).
    pub fn stop(&self) {
        if let Some(runtime) = self.runtime.lock().expect("delivery lock").take() {
            runtime.shutdown_background();
        }
    }
}

/// Delivery workers on a machine with `cores` cores: half of them, at least one.
///
/// Subscriptions share the machine with HTTP workers, the storage writer and RocksDB's
/// threads. On 2 cores, 1,000 WebSocket subscribers at 100 appends/s took ~10% less
/// CPU on one delivery worker than on two (no work stealing, no cross-worker
/// wake-ups), and the producers' requests waited less (README "Benchmarks").
pub fn default_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_cores_by_default() {
        assert_eq!(default_threads(1), 1);
        assert_eq!(default_threads(2), 1);
        assert_eq!(default_threads(3), 1);
        assert_eq!(default_threads(16), 8);
    }

    #[tokio::test]
    async fn sessions_run_on_named_threads_and_stop_inside_async_code() {
        let delivery = Delivery::start(1).expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel();
        delivery.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        assert_eq!(rx.await.expect("ran").as_deref(), Some("tidegate-delivery"));
        delivery.stop();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        delivery.spawn(async move {
            let _ = tx.send(());
        });
        assert!(rx.await.is_err(), "a session after stop must not run");
        drop(delivery);
    }
}
