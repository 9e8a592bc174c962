//! The store's side of watches: streams of watchers on the hub
//! ([`crate::watch`]), and the syncer that replays history to watchers
//! that are behind.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::watch::{Hub, ReplayJob, WatchError, WatchRequest, WatchResponse};

/// A watch stream: many watchers sharing one channel of responses
/// (etcd's `WatchStream`). Dropping it removes its watchers.
pub struct WatchStream {
    pub(crate) hub: Arc<Hub>,
    pub(crate) id: u64,
}

impl WatchStream {
    /// Adds a watcher; returns its ID.
    pub fn watch(&self, req: &WatchRequest) -> std::result::Result<i64, WatchError> {
        self.hub.watch(self.id, req)
    }

    /// Removes a watcher; false when there was none with that ID.
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.hub.cancel(self.id, watch_id)
    }

    /// Asks for a progress notification (watch ID -1) carrying a revision
    /// up to which every event has been sent to every watcher of the
    /// stream; it is sent once all of them have caught up.
    pub fn request_progress(&self) {
        self.hub.request_progress(self.id)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.close_stream(self.id);
    }
}

/// A thread running the watch syncer of a store until dropped.
pub struct WatchSyncer {
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a thread that runs [`Store::sync_watchers`] whenever a watcher
/// is behind (at least every `interval`), and sends progress notifications
/// every `progress_interval`. It holds only a weak reference to the store.
pub fn spawn_watch_syncer(
    store: &Arc<Store>,
    interval: std::time::Duration,
    progress_interval: std::time::Duration,
) -> std::io::Result<WatchSyncer> {
    let weak = Arc::downgrade(store);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("watch-syncer".into())
        .spawn(move || {
            let mut last_progress = std::time::Instant::now();
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(store) = weak.upgrade() else { break };
                fail::fail_point!("mvcc::watch_syncer");
                let behind = match store.sync_watchers(512, 1000) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("watch syncer: {e}");
                        true
                    }
                };
                if last_progress.elapsed() >= progress_interval {
                    store.notify_watch_progress();
                    last_progress = std::time::Instant::now();
                }
                let hub = store.hub.clone();
                drop(store);
                if behind {
                    // Slow consumers are retried at this pace.
                    std::thread::sleep(interval.min(std::time::Duration::from_millis(10)));
                } else {
                    hub.wait_for_work(interval);
                }
            }
        })?;
    Ok(WatchSyncer {
        stop,
        thread: Some(thread),
    })
}

impl Drop for WatchSyncer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens a watch stream: one channel of responses (holding at most
    /// `capacity` of them) for any number of watchers. Watchers starting in
    /// the past, and slow ones, need the syncer
    /// ([`Store::sync_watchers`], or [`spawn_watch_syncer`]).
    pub fn watch_stream(
        &self,
        capacity: usize,
    ) -> (WatchStream, tokio::sync::mpsc::Receiver<WatchResponse>) {
        let (id, rx) = self.hub.open_stream(capacity);
        (
            WatchStream {
                hub: self.hub.clone(),
                id,
            },
            rx,
        )
    }

    /// One round of the syncer: resends parked responses of slow watchers
    /// and replays history to up to `max_watchers` watchers that are
    /// behind, at most `max_events` events each. Returns true when some
    /// watcher is still behind.
    pub fn sync_watchers(&self, max_watchers: usize, max_events: usize) -> Result<bool> {
        self.hub.lock().retry_victims();
        let jobs: Vec<ReplayJob> = self.hub.lock().replay_jobs(max_watchers);
        for job in &jobs {
            match self.history(job.next_rev, &job.key, &job.end, job.prev_kv, max_events) {
                Ok((events, reached)) => self.hub.lock().finish_replay(job, &events, reached),
                Err(Error::Compacted) => {
                    let compacted = self.compacted_revision();
                    self.hub.lock().compacted(job, compacted);
                }
                Err(e) => return Err(e),
            }
        }
        let (_, unsynced, victims) = self.hub.watcher_count();
        Ok(unsynced + victims > 0)
    }

    /// Sends a progress notification to every caught-up watcher that
    /// asked for them (the server calls this periodically).
    pub fn notify_watch_progress(&self) {
        self.hub.lock().notify_progress();
    }

    /// Watchers (synced, unsynced, victims).
    pub fn watcher_count(&self) -> (usize, usize, usize) {
        self.hub.watcher_count()
    }
}
