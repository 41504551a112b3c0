//! Bounded queues of model work, each with its own OS threads: the model never runs on the
//! async workers, and a full queue refuses at once instead of piling calls up.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::{Result, ServiceError};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct State {
    jobs: VecDeque<Job>,
    running: usize,
    /// Places held by calls that will submit a job later ([`Slot`]).
    reserved: usize,
    closed: bool,
    /// Calls refused because the queue was full, since the start.
    refused: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and panics are caught: a poisoned lock holds a consistent
        // state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a queue is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// `ingest` or `query`.
    pub name: &'static str,
    /// Worker threads.
    pub workers: usize,
    /// Jobs running.
    pub running: usize,
    /// Jobs waiting for a worker.
    pub waiting: usize,
    /// Most jobs that may wait.
    pub depth: usize,
    /// Calls refused because the queue was full, since the start.
    pub refused: u64,
}

/// A fixed set of worker threads fed by a bounded queue.
pub struct WorkQueue {
    name: &'static str,
    workers: usize,
    depth: usize,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkQueue {
    /// Starts `workers` threads named `s3mem-<name>-<i>`; at most `depth` jobs wait beyond the
    /// running ones.
    pub fn new(name: &'static str, workers: usize, depth: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                running: 0,
                reserved: 0,
                closed: false,
                refused: 0,
            }),
            wake: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("s3mem-{name}-{i}"))
                .spawn(move || work(name, &shared))
                .map_err(|e| ServiceError::Internal(format!("starting a {name} thread: {e}")))?;
            threads.push(handle);
        }
        Ok(Self {
            name,
            workers: workers.max(1),
            depth,
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Holds a place in the queue for a job to be submitted later (an ingest, while its text
    /// arrives), or refuses with [`ServiceError::QueueFull`] when every worker is busy and
    /// `depth` jobs wait (held places count as waiting), or [`ServiceError::ShuttingDown`]
    /// after [`WorkQueue::close`]. Dropping the slot unused gives the place back.
    pub fn try_reserve(&self) -> Result<Slot> {
        let mut s = self.shared.lock();
        if s.closed {
            return Err(ServiceError::ShuttingDown);
        }
        if s.running + s.jobs.len() + s.reserved >= self.workers + self.depth {
            s.refused += 1;
            return Err(ServiceError::QueueFull {
                queue: self.name,
                workers: self.workers,
                depth: self.depth,
            });
        }
        s.reserved += 1;
        Ok(Slot {
            shared: Some(self.shared.clone()),
        })
    }

    /// Queues `job`, or refuses as [`WorkQueue::try_reserve`] does.
    pub fn try_submit(&self, job: impl FnOnce() + Send + 'static) -> Result<()> {
        self.try_reserve()?.submit(job)
    }

    /// Returns what the queue is doing now.
    pub fn state(&self) -> QueueState {
        let s = self.shared.lock();
        QueueState {
            name: self.name,
            workers: self.workers,
            running: s.running,
            waiting: s.jobs.len() + s.reserved,
            depth: self.depth,
            refused: s.refused,
        }
    }

    /// Refuses new jobs; the workers run what is queued and exit.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Waits until the workers have exited, at most until `deadline`; returns whether they did.
    pub fn join_until(&self, deadline: Instant) -> bool {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        while threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in threads.drain(..) {
            let _ = t.join();
        }
        true
    }
}

/// A place held in a [`WorkQueue`] for one job.
pub struct Slot {
    /// `None` once the job is submitted.
    shared: Option<Arc<Shared>>,
}

impl Slot {
    /// Queues `job` in the held place; refuses with [`ServiceError::ShuttingDown`] when the
    /// queue closed meanwhile.
    pub fn submit(mut self, job: impl FnOnce() + Send + 'static) -> Result<()> {
        let shared = self.shared.take().expect("a slot submits once");
        let mut s = shared.lock();
        s.reserved -= 1;
        if s.closed {
            return Err(ServiceError::ShuttingDown);
        }
        s.jobs.push_back(Box::new(job));
        drop(s);
        shared.wake.notify_one();
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.lock().reserved -= 1;
        }
    }
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        self.close();
    }
}

fn work(name: &'static str, shared: &Shared) {
    loop {
        let job = {
            let mut s = shared.lock();
            loop {
                if let Some(job) = s.jobs.pop_front() {
                    s.running += 1;
                    break job;
                }
                if s.closed {
                    return;
                }
                s = shared.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // A panicking job drops its reply sender, so its caller gets an internal error; the
        // worker lives on.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!(queue = name, "a job panicked");
        }
        shared.lock().running -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn refuses_beyond_workers_plus_depth_and_survives_panics() {
        let q = WorkQueue::new("test", 1, 1).unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        q.try_submit(move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
        .unwrap();
        started_rx.recv().unwrap();
        q.try_submit(|| panic!("a job that panics")).unwrap();
        let full = q.try_submit(|| {}).unwrap_err();
        assert!(matches!(full, ServiceError::QueueFull { depth: 1, .. }));
        assert_eq!(q.state().running, 1);
        assert_eq!(q.state().waiting, 1);
        go_tx.send(()).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        // The panicking job ran; the worker takes the next one.
        loop {
            let tx = done_tx.clone();
            if q.try_submit(move || tx.send(()).unwrap()).is_ok() {
                break;
            }
            std::thread::yield_now();
        }
        done_rx.recv().unwrap();
        q.close();
        assert!(matches!(
            q.try_submit(|| {}),
            Err(ServiceError::ShuttingDown)
        ));
        assert!(q.join_until(Instant::now() + Duration::from_secs(10)));
    }

    #[test]
    fn reserved_places_count_until_submitted_or_dropped() {
        let q = WorkQueue::new("test", 1, 1).unwrap();
        let first = q.try_reserve().unwrap();
        let second = q.try_reserve().unwrap();
        assert_eq!(q.state().waiting, 2);
        assert!(matches!(
            q.try_reserve(),
            Err(ServiceError::QueueFull { .. })
        ));
        drop(second);
        let (tx, rx) = mpsc::channel();
        first.submit(move || tx.send(()).unwrap()).unwrap();
        rx.recv().unwrap();
        let third = q.try_reserve().unwrap();
        q.close();
        assert!(matches!(
            third.submit(|| {}),
            Err(ServiceError::ShuttingDown)
        ));
        assert!(q.join_until(Instant::now() + Duration::from_secs(10)));
    }
}
