//! Graceful shutdown of the job manager: background commits and cleanups run on a task tracker so
//! that a stopping coordinator can wait for them, leasing stops (a cancellation token), status
//! streams end, and the journal is synced last.

use super::Coordinator;
use std::time::Duration;

impl Coordinator {
    /// Spawns a commit or cleanup task that graceful shutdown waits for.
    pub(super) fn spawn_tracked(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.background.spawn(task);
    }

    /// Starts a graceful shutdown: lease nothing more, end status streams (clients see the
    /// stream end and can watch again after a restart).
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.cancel();
        self.notify();
    }

    /// True once [`Coordinator::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.is_cancelled()
    }

    /// Ends a graceful shutdown once the RPC server has stopped: waits up to `grace` for
    /// running commits and cleanups (one cut short is redone on restart), then syncs the
    /// journal to disk.
    pub async fn finish_shutdown(&self, grace: Duration) {
        let tasks = &self.inner.background;
        tasks.close();
        if !tasks.is_empty() {
            tracing::info!(tasks = tasks.len(), "waiting for commits and cleanups to finish");
        }
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("commits or cleanups still running at shutdown; a restart resumes them");
        }
        match self.inner.journal.close() {
            Ok(()) => tracing::info!("journal synced; coordinator stopped"),
            Err(e) => tracing::error!(error = %e, "syncing the journal at shutdown failed"),
        }
    }
}
