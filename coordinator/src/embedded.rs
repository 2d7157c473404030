//! The embedded runtime: runs a plan's tasks on in-process workers that use the same worker
//! library as the cluster, with a memory budget so the largest tensors never run side by side.
//!
//! CPU work runs on a dedicated rayon pool; each worker thread pulls the next task, waits for
//! enough of the memory budget, executes the task and reports progress.

use crate::chunk_book::ChunkBook;
use crate::plan::Plan;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::{Condvar, Mutex};
use shardmerge_worker::TaskError;
use shardmerge_worker::execute::{LocalIo, execute_task};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

mod queue;
use queue::{Next, StopOnPanic, TaskQueue};

/// How to run a plan in-process.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Concurrent tasks (in-process workers).
    pub workers: usize,
    /// Threads of the CPU pool (defaults to the number of cores).
    pub threads: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
    /// Run tasks in a shuffled order (seeded), to show order does not matter.
    pub shuffle: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            threads: None,
            progress: false,
            shuffle: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Tasks executed.
    pub tasks: usize,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Output bytes written.
    pub bytes_written: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Errors of the embedded runtime.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Preparing the output failed.
    #[error("preparing output {path}: {source}")]
    Prepare {
        /// File or directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The CPU pool could not start.
    #[error("starting the CPU pool: {0}")]
    Pool(String),
}

/// Creates the staging directory and the pre-sized shard files with their headers.
pub fn prepare_output(plan: &Plan) -> Result<(), RunError> {
    let prep = |path: &Path, source| RunError::Prepare {
        path: path.display().to_string(),
        source,
    };
    for shard in &plan.proto.shards {
        let path = Path::new(&shard.staging_uri);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| prep(dir, e))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| prep(path, e))?;
        f.set_len(shard.total_bytes).map_err(|e| prep(path, e))?;
        // Reserve the blocks up front: writes into allocated extents are much cheaper than
        // extending a sparse file. Filesystems without fallocate just skip this.
        let _ = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, shard.total_bytes);
        f.write_all_at(&shard.header, 0).map_err(|e| prep(path, e))?;
    }
    Ok(())
}

/// Runs every task of `plan` (after [`prepare_output`]).
pub fn run_tasks(plan: &Plan, opts: &RunOptions) -> Result<RunStats, RunError> {
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .thread_name(|i| format!("shardmerge-cpu-{i}"))
        .build()
        .map_err(|e| RunError::Pool(e.to_string()))?;
    let queue = TaskQueue::new(&plan.proto.tasks, opts.shuffle);
    let book = Mutex::new(ChunkBook::new(&plan.proto.tasks));
    let budget_total = plan.memory_budget().max(1);
    let budget = (Mutex::new(budget_total), Condvar::new());
    let first_error: Mutex<Option<TaskError>> = Mutex::new(None);
    let stats = Mutex::new(RunStats::default());
    let total_bytes: u64 = plan
        .proto
        .tasks
        .iter()
        .map(|t| t.output.as_ref().map_or(0, |o| o.length))
        .sum();
    let bar = if opts.progress {
        let b = ProgressBar::new(total_bytes);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} merging [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let io = LocalIo::default();
    let flush = FlushState::default();
    std::thread::scope(|scope| {
        let flusher = scope.spawn(|| flush.run(plan));
        let mut workers = Vec::new();
        for w in 0..opts.workers.max(1) {
            let (queue, budget, first_error, stats, bar, io, pool, flush, book) =
                (&queue, &budget, &first_error, &stats, &bar, &io, &pool, &flush, &book);
            let fail = move |e: TaskError| {
                first_error.lock().get_or_insert(e);
                queue.stop();
            };
            let worker = std::thread::Builder::new()
                .name(format!("shardmerge-worker-{w}"))
                .spawn_scoped(scope, move || {
                    let _stop = StopOnPanic(queue);
                    loop {
                        let ti = match queue.next() {
                            Next::Run(ti) => ti,
                            Next::Done => return,
                            Next::Stalled => {
                                let t = &plan.proto.tasks;
                                let tensor = t.iter().find(|t| !book.lock().ready(t)).unwrap_or(&t[0]).tensor.clone();
                                let reason =
                                    "its chunk pipeline stalled: a statistics pass never completed".to_string();
                                return fail(TaskError::InvalidTask { tensor, reason });
                            }
                        };
                        let task = book.lock().dispatch(&plan.proto.tasks[ti]);
                        let Some(task) = task else {
                            let reason = "dispatched before its statistics were combined".to_string();
                            let tensor = plan.proto.tasks[ti].tensor.clone();
                            return fail(TaskError::InvalidTask { tensor, reason });
                        };
                        let task = &task;
                        let need = plan.task_memory[ti].min(budget_total);
                        {
                            let mut avail = budget.0.lock();
                            while *avail < need {
                                budget.1.wait(&mut avail);
                            }
                            *avail -= need;
                        }
                        bar.set_message(task.tensor.clone());
                        tracing::debug!(tensor = %task.tensor, worker = w, "task started");
                        let result = pool.install(|| execute_task(task, io));
                        {
                            let mut avail = budget.0.lock();
                            *avail += need;
                            budget.1.notify_all();
                        }
                        let recorded = match result {
                            Ok(mut outcome) => match outcome.stats.take() {
                                Some(st) => {
                                    book.lock()
                                        .record(task, st)
                                        .map(|done| (outcome, done))
                                        .map_err(|source| TaskError::Kernel {
                                            tensor: task.tensor.clone(),
                                            source,
                                        })
                                }
                                None => Ok((outcome, false)),
                            },
                            Err(e) => Err(e),
                        };
                        match recorded {
                            Ok((outcome, completed_pass)) => {
                                bar.inc(outcome.bytes_written);
                                flush.add(outcome.bytes_written);
                                {
                                    let mut s = stats.lock();
                                    s.tasks += 1;
                                    s.bytes_read += outcome.bytes_read;
                                    s.bytes_written += outcome.bytes_written;
                                }
                                queue.finished(task, completed_pass);
                            }
                            Err(e) => return fail(e),
                        }
                    }
                })
                .expect("spawning a worker thread");
            workers.push(worker);
        }
        let panicked = workers.into_iter().filter_map(|w| w.join().err()).next();
        // Stop the flusher before re-raising a worker's panic, or the scope would wait for it.
        flush.finish();
        let flushed = flusher.join();
        if let Some(panic) = panicked.or(flushed.err()) {
            std::panic::resume_unwind(panic);
        }
    });
    bar.finish_and_clear();
    io.outputs.close_all();
    if let Some(e) = first_error.into_inner() {
        return Err(e.into());
    }
    let mut s = stats.into_inner();
    s.elapsed = started.elapsed();
    Ok(s)
}

/// Output bytes written between two early flushes.
const FLUSH_EVERY: u64 = 64 << 20;

/// Starts the disk writes of finished output early, so that they overlap the merge instead
/// of all happening in the commit's `fsync`: a background thread `fdatasync`s the staged
/// shards after every [`FLUSH_EVERY`] bytes of finished tasks. Best effort; the commit still
/// syncs every shard and reports errors.
#[derive(Default)]
struct FlushState {
    progress: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl FlushState {
    /// Records `bytes` of finished output.
    fn add(&self, bytes: u64) {
        self.progress.lock().0 += bytes;
        self.changed.notify_one();
    }

    /// Stops the flusher (the commit does the final sync).
    fn finish(&self) {
        self.progress.lock().1 = true;
        self.changed.notify_one();
    }

    /// The flusher thread's loop.
    fn run(&self, plan: &Plan) {
        let files: Vec<std::fs::File> = plan
            .proto
            .shards
            .iter()
            .filter_map(|s| std::fs::File::open(&s.staging_uri).ok())
            .collect();
        let mut flushed = 0;
        loop {
            let written = {
                let mut p = self.progress.lock();
                while !p.1 && p.0 < flushed + FLUSH_EVERY {
                    self.changed.wait(&mut p);
                }
                if p.1 {
                    return;
                }
                p.0
            };
            for f in &files {
                let _ = f.sync_data();
            }
            flushed = written;
        }
    }
}
