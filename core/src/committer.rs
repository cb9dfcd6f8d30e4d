//! A sink's background committer: a task that commits the batches a sink hands over, one
//! after the other, while the runtime's sink loop checks and logs the next one.
//!
//! Why: a sink that committed inside [`Sink::write`](crate::component::Sink::write) made
//! the loop wait for its database at every batch, and the two cores sat idle meanwhile
//! (a third of the time in the CSV load into PostgreSQL, a third in the SIUSS flow;
//! docs/benchmarks.md). The guarantees stay those of a synchronous sink: every batch is
//! logged before it is handed over, committed with its checkpoint in the order it was
//! handed over, and nothing after a failed batch is committed. [`Committer::flush`] says
//! whether everything handed over was committed, and [`Committer::uncommitted`] how many
//! records were not, so that a run's counts stand only for committed records.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Batches handed over and not yet committed, by default. Two keep the database busy while
/// the sink loop logs the next one; a sink whose jobs are small beside the records they
/// were made from may queue more ([`Committer::with_queue`]).
pub const QUEUED: usize = 2;

/// What commits a sink's batches: owns the session, file or state the commits need.
pub trait Commit: Send + 'static {
    /// One batch, with its checkpoint.
    type Job: Send + 'static;
    /// Commits one batch with its checkpoint, all or nothing.
    fn commit(&mut self, job: Self::Job) -> impl Future<Output = Result<()>> + Send;

    /// Makes every batch committed so far durable. A committer whose commits are durable
    /// one by one has nothing to do; one that lets the database acknowledge a commit
    /// before it is on disk (see the PostgreSQL writer) waits here until it is.
    fn sync(&mut self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

enum Message<J> {
    Commit(J, u64),
    /// Answered once every batch before it is committed and durable.
    Flush(oneshot::Sender<()>),
}

/// The sink's handle on its committer task.
pub struct Committer<C: Commit> {
    to_task: mpsc::Sender<Message<C::Job>>,
    task: JoinHandle<Option<C>>,
    /// The error that stopped the task, until someone reports it.
    failure: Arc<Mutex<Option<Error>>>,
    committed: Arc<AtomicU64>,
    accepted: u64,
    /// Names the committer in the error of a task that stopped (`the PostgreSQL writer`).
    name: &'static str,
}

impl<C: Commit> Committer<C> {
    /// Starts the task; `name` says what it is in messages.
    pub fn start(commit: C, name: &'static str) -> Self {
        Self::with_queue(commit, name, QUEUED)
    }

    /// Starts the task with room for `queued` jobs handed over and not yet committed.
    pub fn with_queue(commit: C, name: &'static str, queued: usize) -> Self {
        let (to_task, from_sink) = mpsc::channel(queued.max(1));
        let failure = Arc::new(Mutex::new(None));
        let committed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(commit, from_sink, failure.clone(), committed.clone()));
        Committer {
            to_task,
            task,
            failure,
            committed,
            accepted: 0,
            name,
        }
    }

    /// Hands a batch of `records` records over. Waits only while the queue is full; fails
    /// with the error of an earlier batch, if one failed.
    pub async fn commit(&mut self, job: C::Job, records: u64) -> Result<()> {
        if let Some(e) = self.take_failure() {
            return Err(e);
        }
        if self
            .to_task
            .send(Message::Commit(job, records))
            .await
            .is_err()
        {
            return Err(self.stopped());
        }
        self.accepted += records;
        Ok(())
    }

    /// Waits until every batch handed over is committed and durable ([`Commit::sync`]).
    pub async fn flush(&mut self) -> Result<()> {
        let (done, answer) = oneshot::channel();
        if self.to_task.send(Message::Flush(done)).await.is_err() || answer.await.is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Waits until every batch handed over is committed and durable, and gives back what
    /// committed them (a sink that publishes a file takes its file back this way).
    pub async fn finish(self) -> Result<C> {
        let Committer {
            to_task,
            task,
            failure,
            name,
            ..
        } = self;
        drop(to_task);
        let ended = task.await;
        let failed = failure.lock().ok().and_then(|mut f| f.take());
        match (ended, failed) {
            (Ok(Some(c)), _) => Ok(c),
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(Error::Other(format!(
                "{name} stopped unexpectedly ({e}); nothing after the last committed batch was written"
            ))),
            (Ok(None), None) => Err(stopped(name)),
        }
    }

    /// Records handed over but not committed: after a failure, those of the batch that
    /// failed and of the batches after it.
    pub fn uncommitted(&self) -> u64 {
        self.accepted
            .saturating_sub(self.committed.load(Ordering::Acquire))
    }

    fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// The task has ended: it failed, and its error may have been reported already.
    fn stopped(&self) -> Error {
        self.take_failure().unwrap_or_else(|| stopped(self.name))
    }
}

fn stopped(name: &str) -> Error {
    Error::Other(format!(
        "{name} stopped after an earlier batch failed (see that error); nothing after the last committed batch was written"
    ))
}

async fn run<C: Commit>(
    mut commit: C,
    mut from_sink: mpsc::Receiver<Message<C::Job>>,
    failure: Arc<Mutex<Option<Error>>>,
    committed: Arc<AtomicU64>,
) -> Option<C> {
    // Whatever fails keeps its error for the sink and ends the task: dropping the receiver
    // fails every later commit and flush, which then report it, so nothing after a failed
    // batch or a failed sync is committed.
    let fail = |e: Error| {
        if let Ok(mut f) = failure.lock() {
            *f = Some(e);
        }
    };
    while let Some(message) = from_sink.recv().await {
        match message {
            Message::Flush(done) => match commit.sync().await {
                Ok(()) => {
                    let _ = done.send(());
                }
                Err(e) => {
                    fail(e);
                    return None;
                }
            },
            Message::Commit(job, records) => match commit.commit(job).await {
                Ok(()) => {
                    committed.fetch_add(records, Ordering::Release);
                }
                Err(e) => {
                    fail(e);
                    return None;
                }
            },
        }
    }
    // The sink is done with it (`finish`): what it committed must be durable too.
    if let Err(e) = commit.sync().await {
        fail(e);
        return None;
    }
    Some(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits into a shared list; refuses the batch `fail_at`. Its `sync` records how
    /// many batches were durable, or fails when `sync_fails`.
    #[derive(Debug)]
    struct Log {
        done: Arc<Mutex<Vec<u32>>>,
        fail_at: u32,
        synced: Arc<Mutex<Vec<usize>>>,
        sync_fails: bool,
    }

    impl Commit for Log {
        type Job = u32;
        async fn commit(&mut self, job: u32) -> Result<()> {
            tokio::task::yield_now().await;
            if job == self.fail_at {
                return Err(Error::Other(format!("batch {job} refused")));
            }
            self.done.lock().unwrap().push(job);
            Ok(())
        }
        async fn sync(&mut self) -> Result<()> {
            if self.sync_fails {
                return Err(Error::Other("the disk is gone".into()));
            }
            let n = self.done.lock().unwrap().len();
            self.synced.lock().unwrap().push(n);
            Ok(())
        }
    }

    fn start(fail_at: u32) -> (Committer<Log>, Arc<Mutex<Vec<u32>>>) {
        let (c, done, _) = start_with(fail_at, false);
        (c, done)
    }

    type Synced = Arc<Mutex<Vec<usize>>>;

    fn start_with(
        fail_at: u32,
        sync_fails: bool,
    ) -> (Committer<Log>, Arc<Mutex<Vec<u32>>>, Synced) {
        let done = Arc::new(Mutex::new(Vec::new()));
        let synced = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            done: done.clone(),
            fail_at,
            synced: synced.clone(),
            sync_fails,
        };
        (Committer::start(log, "the test committer"), done, synced)
    }

    #[tokio::test]
    async fn a_flush_and_the_finish_make_every_commit_before_them_durable() {
        let (mut c, _, synced) = start_with(u32::MAX, false);
        for job in 1..=4 {
            c.commit(job, 1).await.unwrap();
        }
        c.flush().await.unwrap();
        assert_eq!(*synced.lock().unwrap(), vec![4]);
        c.commit(5, 1).await.unwrap();
        c.finish().await.unwrap();
        assert_eq!(*synced.lock().unwrap(), vec![4, 5]);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_flush_with_its_error() {
        let (mut c, done, _) = start_with(u32::MAX, true);
        c.commit(1, 1).await.unwrap();
        let e = c.flush().await.unwrap_err().to_string();
        assert!(e.contains("the disk is gone"), "{e}");
        assert_eq!(*done.lock().unwrap(), vec![1]);
        assert!(
            c.commit(2, 1).await.is_err(),
            "nothing is committed after it"
        );
        let (c, _, _) = start_with(u32::MAX, true);
        let e = c.finish().await.unwrap_err().to_string();
        assert!(e.contains("the disk is gone"), "{e}");
    }

    #[tokio::test]
    async fn commits_in_order_and_gives_the_committer_back() {
        let (mut c, done) = start(u32::MAX);
        for job in 1..=10 {
            c.commit(job, 100).await.unwrap();
        }
        c.flush().await.unwrap();
        assert_eq!(*done.lock().unwrap(), (1..=10).collect::<Vec<_>>());
        assert_eq!(c.uncommitted(), 0);
        c.commit(11, 5).await.unwrap();
        let back = c.finish().await.unwrap();
        assert_eq!(back.done.lock().unwrap().last(), Some(&11));
    }

    #[tokio::test]
    async fn nothing_after_a_failed_batch_is_committed_and_the_error_is_reported_once() {
        let (mut c, done) = start(3);
        let mut refused = None;
        for job in 1..=6 {
            if let Err(e) = c.commit(job, 10).await {
                refused = Some((job, e.to_string()));
                break;
            }
        }
        let flushed = c.flush().await;
        assert_eq!(*done.lock().unwrap(), vec![1, 2]);
        // The error reaches the sink once, at a later commit or at the flush; afterwards
        // the committer only says it stopped.
        let first = match refused {
            Some((_, e)) => {
                assert!(
                    flushed.unwrap_err().to_string().contains("stopped"),
                    "a second report names the stop"
                );
                e
            }
            None => flushed.unwrap_err().to_string(),
        };
        assert!(first.contains("batch 3 refused"), "{first}");
        // Handed over and not committed: 3, and whatever the queue took before the failure
        // was seen.
        assert!(c.uncommitted() >= 10, "{}", c.uncommitted());
        assert_eq!(c.uncommitted() % 10, 0);
        assert!(c.finish().await.is_err());
    }
}
