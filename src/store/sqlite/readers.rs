//! The reader threads: the reads requests make (history, a login's password
//! hash, `client_msg_id` look-ups) run on a few threads of their own, each
//! owning a read-only connection, and answer through a `Reply`. A read that
//! waits for the disk (a cold cache, a large history) then holds one of
//! these threads, never an async worker serving polls.
//!
//! Reads queue in arrival order until a reader is free. The queue holds at
//! most one read per request in flight, so the connection limits bound it.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::{Reply, StoreError, StoreResult};

/// A read waiting for a reader.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

pub(super) struct Readers {
    /// Where reads queue; `None` once stopped (each thread ends when the
    /// queue closes).
    queue: Mutex<Option<mpsc::Sender<ReadJob>>>,
    /// The threads, until `stop` joins them.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A read-only connection to the database at `path`, which WAL lets read
/// while the writer writes.
pub(super) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::new(&format!("cannot open {} for reading", path.display()), e))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(|e| StoreError::new("cannot configure a reader", e))?;
    Ok(connection)
}

impl Readers {
    /// Opens `count` read connections and starts a thread for each.
    pub(super) fn start(path: &Path, count: usize) -> StoreResult<Readers> {
        let (queue, jobs) = mpsc::channel::<ReadJob>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let connection = open_reader(path)?;
            let jobs = jobs.clone();
            let thread = std::thread::Builder::new()
                .name(format!("parlor-store-reader-{index}"))
                .spawn(move || serve(&connection, &jobs))
                .map_err(|e| StoreError::new("cannot start a store reader thread", e))?;
            threads.push(thread);
        }
        Ok(Readers {
            queue: Mutex::new(Some(queue)),
            threads: Mutex::new(threads),
        })
    }

    /// Runs `read` on the next free reader; the reply answers its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> Reply<T> {
        let (answer, reply) = Reply::pending();
        self.submit(Box::new(move |connection| {
            // The requester may have gone (its connection closed): fine.
            let _ = answer.send(read(connection));
        }));
        reply
    }

    fn submit(&self, job: ReadJob) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // Once stopped, the job is dropped and its reply answers an error.
        if let Some(queue) = queue.as_ref() {
            let _ = queue.send(job);
        }
    }

    /// Closes the queue and waits for the threads to finish what queued.
    pub(super) fn stop(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Keeps every reader busy until the returned sender drops (tests only).
    #[cfg(test)]
    pub(super) fn hold(&self) -> mpsc::Sender<()> {
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let (started, all_started) = mpsc::channel();
        let count = self.threads.lock().unwrap().len();
        for _ in 0..count {
            let (released, started) = (released.clone(), started.clone());
            self.submit(Box::new(move |_| {
                let _ = started.send(());
                // Ends once the guard drops (recv answers an error).
                let _ = released.lock().unwrap_or_else(|p| p.into_inner()).recv();
            }));
        }
        for _ in 0..count {
            all_started
                .recv()
                .expect("every reader takes a holding job");
        }
        release
    }
}

/// A reader thread: runs queued reads until the queue closes.
fn serve(connection: &Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // The lock is held only while waiting for the next job, so the
        // readers take jobs in turn and run them in parallel.
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        match job {
            Ok(job) => job(connection),
            Err(mpsc::RecvError) => return,
        }
    }
}
