//! The embedded runtime's task queue: which task an in-process worker runs next.
//!
//! Tasks run as soon as they may, not in waves: a chunk task of step `s > 1` waits in
//! `blocked` until the last chunk of step `s - 1` of its pipeline has reported, then goes to
//! the front of the queue, so a pipeline's later steps run beside the remaining whole tasks
//! instead of after all of them. Chunk pipelines start first (they are the longest chains).

use crate::chunk_book::step;
use parking_lot::{Condvar, Mutex};
use shardmerge_proto::v1::MergeTask;
use std::collections::{HashMap, VecDeque};

/// What a worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Run the task of this index.
    Run(usize),
    /// Nothing left (or the run stopped).
    Done,
    /// Tasks are left but none can ever become ready: a bug in the plan's pipelines.
    Stalled,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<usize>,
    /// Chunk tasks by (pipeline, step), waiting for the step before.
    blocked: HashMap<(u64, u32), Vec<usize>>,
    running: usize,
    stopped: bool,
}

/// The tasks of one run, handed out to the workers.
#[derive(Debug, Default)]
pub(super) struct TaskQueue {
    state: Mutex<State>,
    changed: Condvar,
}

/// The pipeline and step a chunk task waits on, if it is a later step of a pipeline with
/// statistics passes.
fn waits_on(task: &MergeTask) -> Option<(u64, u32)> {
    let c = task.chunk.as_ref().filter(|c| c.passes > 0)?;
    let s = step(task);
    (s > 1).then_some((c.group, s))
}

impl TaskQueue {
    /// Every task of `tasks`, in plan order with chunk pipelines first; shuffled (seeded)
    /// when `shuffle` is set.
    pub(super) fn new(tasks: &[MergeTask], shuffle: Option<u64>) -> Self {
        let mut first = Vec::new();
        let mut rest = Vec::new();
        let mut blocked: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(key) = waits_on(t) {
                blocked.entry(key).or_default().push(i);
            } else if t.chunk.as_ref().is_some_and(|c| c.passes > 0) {
                first.push(i);
            } else {
                rest.push(i);
            }
        }
        if let Some(seed) = shuffle {
            use rand::SeedableRng;
            use rand::seq::SliceRandom;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            first.shuffle(&mut rng);
            rest.shuffle(&mut rng);
            let mut keys: Vec<_> = blocked.keys().copied().collect();
            keys.sort_unstable();
            for k in keys {
                if let Some(v) = blocked.get_mut(&k) {
                    v.shuffle(&mut rng);
                }
            }
        }
        let ready = first.into_iter().chain(rest).collect();
        TaskQueue {
            state: Mutex::new(State {
                ready,
                blocked,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    /// The next task to run, waiting while every remaining task waits on a running one.
    pub(super) fn next(&self) -> Next {
        let mut s = self.state.lock();
        loop {
            if s.stopped {
                return Next::Done;
            }
            if let Some(i) = s.ready.pop_front() {
                s.running += 1;
                return Next::Run(i);
            }
            if s.blocked.is_empty() {
                return Next::Done;
            }
            if s.running == 0 {
                return Next::Stalled;
            }
            self.changed.wait(&mut s);
        }
    }

    /// `task` finished; `completed_pass` when it was the last chunk of its statistics pass to
    /// report, which makes the next step of its pipeline ready.
    pub(super) fn finished(&self, task: &MergeTask, completed_pass: bool) {
        let mut s = self.state.lock();
        s.running -= 1;
        if let Some(c) = task.chunk.as_ref().filter(|_| completed_pass)
            && let Some(next) = s.blocked.remove(&(c.group, c.pass + 1))
        {
            for &i in next.iter().rev() {
                s.ready.push_front(i);
            }
        }
        self.changed.notify_all();
    }

    /// Stops handing out tasks (a task failed, or a worker panicked).
    pub(super) fn stop(&self) {
        self.state.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// Stops the queue when the worker holding it unwinds, so the other workers do not wait for
/// a step that will never complete.
pub(super) struct StopOnPanic<'a>(pub(super) &'a TaskQueue);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmerge_proto::v1::ChunkInfo;

    fn chunk(group: u64, pass: u32, passes: u32, index: u32) -> MergeTask {
        MergeTask {
            tensor: format!("g{group}"),
            chunk: Some(ChunkInfo {
                group,
                pass,
                passes,
                index,
                count: 2,
                ..ChunkInfo::default()
            }),
            ..MergeTask::default()
        }
    }

    fn whole(name: &str) -> MergeTask {
        MergeTask {
            tensor: name.into(),
            ..MergeTask::default()
        }
    }

    #[test]
    fn later_steps_wait_for_their_pass_then_jump_the_queue() {
        // One pipeline: pass 1 (2 chunks), apply (pass 0, 2 chunks); two whole tasks.
        let tasks = vec![
            whole("a"),
            chunk(7, 1, 1, 0),
            chunk(7, 1, 1, 1),
            chunk(7, 0, 1, 0),
            chunk(7, 0, 1, 1),
            whole("b"),
        ];
        let q = TaskQueue::new(&tasks, None);
        assert_eq!(q.next(), Next::Run(1), "pipelines start first");
        assert_eq!(q.next(), Next::Run(2));
        assert_eq!(q.next(), Next::Run(0));
        q.finished(&tasks[1], false);
        q.finished(&tasks[0], false);
        assert_eq!(q.next(), Next::Run(5), "apply still waits for chunk 2 of pass 1");
        q.finished(&tasks[2], true);
        assert_eq!(q.next(), Next::Run(3), "the apply chunks go before anything else");
        assert_eq!(q.next(), Next::Run(4));
        for i in [5, 3, 4] {
            q.finished(&tasks[i], false);
        }
        assert_eq!(q.next(), Next::Done);
    }

    #[test]
    fn a_step_that_can_never_run_is_reported_not_waited_for() {
        let tasks = vec![chunk(3, 1, 1, 0), chunk(3, 0, 1, 0)];
        let q = TaskQueue::new(&tasks, None);
        assert_eq!(q.next(), Next::Run(0));
        // The pass reports without completing (as if a chunk were missing from the plan).
        q.finished(&tasks[0], false);
        assert_eq!(q.next(), Next::Stalled);
    }

    #[test]
    fn a_waiting_worker_wakes_when_the_pass_completes_or_the_run_stops() {
        let tasks = vec![chunk(1, 1, 1, 0), chunk(1, 0, 1, 0)];
        let q = TaskQueue::new(&tasks, Some(5));
        assert_eq!(q.next(), Next::Run(0));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| q.next());
            std::thread::sleep(std::time::Duration::from_millis(20));
            q.finished(&tasks[0], true);
            assert_eq!(waiter.join().unwrap(), Next::Run(1));
        });
        let q = TaskQueue::new(&tasks, None);
        assert_eq!(q.next(), Next::Run(0));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| q.next());
            std::thread::sleep(std::time::Duration::from_millis(20));
            q.stop();
            assert_eq!(waiter.join().unwrap(), Next::Done);
        });
    }
}
