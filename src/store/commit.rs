//! Group commit: one thread writes batches of changes to the [`Store`], each batch in one
//! durable transaction, and acknowledges every change of the batch when it is on disk.
//!
//! Changes arrive in registry order (they are submitted under the registry lock). The thread
//! takes the first waiting change, then everything else already waiting (up to
//! [`MAX_BATCH`]), so a burst of concurrent registrations shares one fsync while a lone change
//! is written at once. A store write runs on this dedicated thread, never on the async
//! runtime.
//!
//! Each batch's write time and size are recorded in [`CommitStats`] (for `/metrics`).
//!
//! When a batch fails, every change of it and every change queued behind it fails too, and
//! the registry reverts to what the store holds (see `Registry::revert_to_store`): a change is
//! either durable and acknowledged, or gone.

use std::sync::Arc;
use std::sync::mpsc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use super::{Change, Store, StoreError};

/// The most changes written in one transaction (a store may ask for fewer:
/// [`Store::max_batch`]).
pub const MAX_BATCH: usize = 4096;

struct Job {
    index: u64,
    change: Change,
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

/// What the commit thread calls when a batch fails: given the store and a function that fails
/// every change still queued, it restores a state consistent with the store.
pub type OnFailure = Box<dyn Fn(&dyn Store, &dyn Fn()) + Send>;

/// What the commit thread measures: one observation per batch (transaction).
#[derive(Debug)]
pub struct CommitStats {
    /// Seconds each batch took to write and make durable.
    pub duration: Histogram,
    /// Changes per batch.
    pub batch_size: Histogram,
    /// Batches whose write failed.
    pub failures: Counter,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            // 100 µs to ~3 s: an fsync on an SSD takes around a millisecond.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 16,
            )),
            // 1 to MAX_BATCH.
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 4.0, 7,
            )),
            failures: Counter::default(),
        }
    }
}

/// The handle that submits changes. [`Committer::close`] (or dropping it) stops the thread,
/// which owns the store: once it has stopped, the store is closed.
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    /// Told of every queued change ([`Store::queued`]).
    store: Arc<dyn Store>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

/// Resolves when a change is durable (or failed).
pub struct Ticket(Option<oneshot::Receiver<Result<(), Arc<StoreError>>>>);

impl Ticket {
    /// A ticket for a change that needs no store (memory-only registry).
    pub fn done() -> Self {
        Self(None)
    }

    pub async fn wait(self) -> Result<(), Arc<StoreError>> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(Arc::new(StoreError::Closed))),
        }
    }
}

impl Committer {
    /// Starts the commit thread.
    pub fn start(store: Arc<dyn Store>, on_failure: OnFailure) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let writer = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("srvdns-store".into())
            .spawn(move || run(&*writer, &queue, &on_failure, &thread_stats))?;
        Ok(Self {
            jobs,
            store,
            thread: Some(thread),
            stats,
        })
    }

    /// The commit thread's measurements.
    pub fn stats(&self) -> Arc<CommitStats> {
        Arc::clone(&self.stats)
    }

    /// Writes what is queued, then stops the thread and closes the store.
    pub fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Queues a change; the ticket resolves when it is durable.
    pub fn submit(&self, index: u64, change: Change) -> Ticket {
        self.store.queued(&change);
        let (tx, rx) = oneshot::channel();
        let job = Job {
            index,
            change,
            done: Some(tx),
        };
        match self.jobs.send(job) {
            Ok(()) => Ticket(Some(rx)),
            Err(mpsc::SendError(job)) => {
                if let Some(done) = job.done {
                    let _ = done.send(Err(Arc::new(StoreError::Closed)));
                }
                Ticket(Some(rx))
            }
        }
    }

    /// Queues a change nobody waits for (health transitions).
    pub fn submit_detached(&self, index: u64, change: Change) {
        self.store.queued(&change);
        let _ = self.jobs.send(Job {
            index,
            change,
            done: None,
        });
    }
}

fn run(
    store: &dyn Store,
    queue: &mpsc::Receiver<Job>,
    on_failure: &OnFailure,
    stats: &CommitStats,
) {
    let max_batch = store.max_batch().clamp(1, MAX_BATCH);
    loop {
        let Ok(first) = queue.recv() else { return };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let index = batch.iter().map(|job| job.index).max().unwrap_or(0);
        let changes: Vec<Change> = batch.iter().map(|job| job.change.clone()).collect();
        let started = std::time::Instant::now();
        let written = store.write(index, &changes);
        let took = started.elapsed();
        stats.duration.observe(took.as_secs_f64());
        stats.batch_size.observe(changes.len() as f64);
        tracing::debug!(
            changes = changes.len(),
            micros = took.as_micros() as u64,
            "store batch written"
        );
        match written {
            Ok(()) => {
                for job in batch {
                    if let Some(done) = job.done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            Err(error) => {
                stats.failures.inc();
                tracing::error!(%error, changes = changes.len(), "store write failed; reverting to the stored registry");
                let error = Arc::new(error);
                fail(batch, &error);
                let fail_queued = || fail(queue.try_iter().collect(), &error);
                on_failure(store, &fail_queued);
            }
        }
    }
}

fn fail(jobs: Vec<Job>, error: &Arc<StoreError>) {
    for job in jobs {
        if let Some(done) = job.done {
            let _ = done.send(Err(Arc::clone(error)));
        }
    }
}
