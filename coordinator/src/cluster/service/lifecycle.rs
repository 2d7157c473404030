//! Graceful shutdown of the job manager: background commits and cleanups are counted so that
//! a stopping coordinator can wait for them, leasing stops, status streams end, and the journal
//! is synced last.

use super::Coordinator;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Decrements the background task count when a task ends (or panics).
struct Tracked(Coordinator);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.inner.background.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Coordinator {
    /// Spawns a commit or cleanup task that graceful shutdown waits for.
    pub(super) fn spawn_tracked(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.background.send_modify(|n| *n += 1);
        let guard = Tracked(self.clone());
        tokio::spawn(async move {
            let _guard = guard;
            task.await;
        });
    }

    /// Starts a graceful shutdown: lease nothing more, end status streams (clients see the
    /// stream end and can watch again after a restart).
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// True once [`Coordinator::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Ends a graceful shutdown once the RPC server has stopped: waits up to `grace` for
    /// running commits and cleanups (one cut short is redone on restart), then syncs the
    /// journal to disk.
    pub async fn finish_shutdown(&self, grace: Duration) {
        let mut pending = self.inner.background.subscribe();
        let n = *pending.borrow();
        if n > 0 {
            tracing::info!(tasks = n, "waiting for commits and cleanups to finish");
        }
        if tokio::time::timeout(grace, pending.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("commits or cleanups still running at shutdown; a restart resumes them");
        }
        match self.inner.journal.close() {
            Ok(()) => tracing::info!("journal synced; coordinator stopped"),
            Err(e) => tracing::error!(error = %e, "syncing the journal at shutdown failed"),
        }
    }
}
