//! Reading a unit's S3 inputs ahead of its tasks, concurrently across tensors and models.
//!
//! A unit's tasks run one after the other, and a task reads its inputs one at a time; most
//! tensors fit in one ranged GET, so reading them on demand leaves one request in flight and
//! the CPU idle while it is. [`Prefetch`] starts the reads of every task's S3 inputs when the
//! unit starts, in task order, a few tasks at a time, while earlier tasks compute. Memory is
//! bounded: a task's inputs are fetched only once they fit in the [`WINDOW`] of bytes fetched
//! and not yet taken (a task larger than the window waits for an empty window), and bytes are
//! released as tasks take them. Reads nobody prefetched (an unexpected source) go to storage
//! directly, so prefetching never changes what a task reads, only when.

use crate::storage::{Location, Storage, StorageError};
use parking_lot::Mutex;
use shardmerge_proto::v1::{TensorSource, WorkUnit};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Bytes fetched ahead and not yet taken by a task, at most (a single larger task is
/// fetched alone).
pub const WINDOW: u64 = 256 << 20;
/// Tasks whose inputs are being fetched at once (each input is itself split into concurrent
/// ranged GETs by [`Storage::read_range_vec`]).
const TASKS_IN_FLIGHT: usize = 4;
/// Semaphore permits are MiB of the window.
const PERMIT: u64 = 1 << 20;

type Fetched = Result<(Vec<u8>, Arc<OwnedSemaphorePermit>), StorageError>;

/// One prefetched input: which task reads it, what it is, and where its bytes arrive.
struct Slot {
    task: usize,
    uri: String,
    offset: u64,
    length: u64,
    bytes: Option<oneshot::Receiver<Fetched>>,
}

/// The prefetched inputs of one unit. Dropping it stops fetching.
pub struct Prefetch {
    slots: Mutex<Vec<Slot>>,
    fetcher: tokio::task::JoinHandle<()>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.fetcher.abort();
    }
}

impl Prefetch {
    /// Starts fetching the S3 inputs of every task of `unit` on `handle`'s runtime, at most
    /// `window` bytes ahead (see [`WINDOW`]).
    pub fn start(unit: &WorkUnit, storage: &Storage, handle: &Handle, window: u64) -> Prefetch {
        let mut slots = Vec::new();
        let mut tasks: Vec<Vec<(Location, TensorSource, oneshot::Sender<Fetched>)>> = Vec::new();
        for (t, task) in unit.tasks.iter().enumerate() {
            let mut reads = Vec::new();
            // Vocabulary-aligned inputs read the stored rows their runs name, directly.
            for src in task
                .inputs
                .iter()
                .filter(|i| i.rows.is_empty())
                .filter_map(|i| i.source.as_ref())
            {
                let Ok(loc @ Location::S3 { .. }) = Location::parse(&src.uri) else {
                    continue;
                };
                // A chunk task reads its own elements only.
                let (offset, length) = crate::chunk::input_range(task, src);
                let src = TensorSource {
                    offset,
                    length,
                    ..src.clone()
                };
                let (tx, rx) = oneshot::channel();
                slots.push(Slot {
                    task: t,
                    uri: src.uri.clone(),
                    offset,
                    length,
                    bytes: Some(rx),
                });
                reads.push((loc, src, tx));
            }
            if !reads.is_empty() {
                tasks.push(reads);
            }
        }
        let storage = storage.clone();
        let fetcher = handle.spawn(fetch_in_order(storage, tasks, window.max(PERMIT)));
        Prefetch {
            slots: Mutex::new(slots),
            fetcher,
        }
    }

    /// The bytes of `src` for task `task`, waiting for them if they are still on the way;
    /// `None` if they were not prefetched. Inputs of earlier tasks not taken by now are
    /// released.
    /// The returned guard keeps the bytes counted in the window until it is dropped (with the
    /// task's input).
    #[allow(clippy::type_complexity)]
    pub fn take(
        &self,
        task: usize,
        src: &TensorSource,
    ) -> Option<Result<(Vec<u8>, Arc<OwnedSemaphorePermit>), StorageError>> {
        let rx = {
            let mut slots = self.slots.lock();
            for s in slots.iter_mut().filter(|s| s.task < task) {
                s.bytes = None;
            }
            slots
                .iter_mut()
                .find(|s| {
                    s.task == task
                        && s.bytes.is_some()
                        && s.uri == src.uri
                        && s.offset == src.offset
                        && s.length == src.length
                })?
                .bytes
                .take()?
        };
        // The fetcher is gone only if the prefetch is being dropped: read directly then.
        let fetched = rx.blocking_recv().ok()?;
        Some(fetched)
    }
}

/// Starts each task's fetch in task order, once it fits in the window and fewer than
/// [`TASKS_IN_FLIGHT`] fetches run. Acquiring in order (never concurrently) is what makes
/// waiting safe: the task a worker thread waits for is never behind a later task's bytes.
async fn fetch_in_order(
    storage: Storage,
    tasks: Vec<Vec<(Location, TensorSource, oneshot::Sender<Fetched>)>>,
    window_bytes: u64,
) {
    let permits = window_bytes.div_ceil(PERMIT);
    let window = Arc::new(Semaphore::new(permits as usize));
    let in_flight = Arc::new(Semaphore::new(TASKS_IN_FLIGHT));
    // Dropped (aborting the fetches) when the prefetch is.
    let mut fetches = tokio::task::JoinSet::new();
    for reads in tasks {
        let total: u64 = reads.iter().map(|(_, s, _)| s.length).sum();
        let need = total.div_ceil(PERMIT).clamp(1, permits) as u32;
        let (Ok(slot), Ok(bytes)) = (
            in_flight.clone().acquire_owned().await,
            window.clone().acquire_many_owned(need).await,
        ) else {
            return;
        };
        let storage = storage.clone();
        fetches.spawn(async move {
            let bytes = Arc::new(bytes);
            futures::future::join_all(reads.into_iter().map(|(loc, src, tx)| {
                let bytes = bytes.clone();
                let storage = &storage;
                async move {
                    let got = storage.read_range_vec(&loc, src.offset, src.length).await;
                    let _ = tx.send(got.map(|b| (b, bytes)));
                }
            }))
            .await;
            drop(slot);
        });
        while fetches.try_join_next().is_some() {}
    }
    while fetches.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_server::TestS3;
    use shardmerge_proto::v1::{MergeTask, TaskInput};

    fn src(uri: &str, offset: u64, length: u64) -> TensorSource {
        TensorSource {
            uri: uri.into(),
            offset,
            length,
            ..Default::default()
        }
    }

    fn task(sources: Vec<TensorSource>) -> MergeTask {
        MergeTask {
            inputs: sources
                .into_iter()
                .map(|s| TaskInput {
                    source: Some(s),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn takes_in_any_order_within_a_task_releases_skipped_ones_and_ignores_strangers() {
        let s3 = TestS3::start().await;
        let data: Vec<u8> = (0..(20u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(s3.create_bucket("bucket").join("m.bin"), &data).unwrap();
        let uri = "s3://bucket/m.bin";
        let (a, b, c) = (src(uri, 0, 1000), src(uri, 5, 9 << 20), src(uri, 17 << 20, 3 << 20));
        let unit = WorkUnit {
            tasks: vec![
                task(vec![a.clone(), b.clone(), src("/local/file", 0, 4)]),
                task(vec![c.clone()]),
                task(vec![a.clone(), c.clone()]),
            ],
            ..Default::default()
        };
        let storage = s3.storage();
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let p = Prefetch::start(&unit, &storage, &handle, WINDOW);
            let want = |s: &TensorSource| &data[s.offset as usize..(s.offset + s.length) as usize];
            // Compared as booleans: a failing assert must not print megabytes.
            let got = |t: usize, s: &TensorSource| p.take(t, s).map(|r| r.unwrap().0 == want(s));
            // Out of order within a task; each prefetched input is handed out once.
            assert_eq!(got(0, &b), Some(true));
            assert_eq!(got(0, &a), Some(true));
            assert_eq!(got(0, &a), None);
            // Not an input of this task, or not on S3: read directly by the caller.
            assert_eq!(got(0, &c), None);
            assert_eq!(got(0, &src("/local/file", 0, 4)), None);
            // Skipping task 1 releases its input; task 2 still gets its own.
            assert_eq!(got(2, &c), Some(true));
            assert_eq!(got(1, &c), None);
            assert_eq!(got(2, &a), Some(true));
        })
        .await
        .unwrap();
    }
}
