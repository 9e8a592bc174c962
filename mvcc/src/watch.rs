//! Watches: streams of changes to a key, a range or a prefix, in revision
//! order, with no gap and no duplicate, from now or from a past revision.
//!
//! ## How events reach a watcher
//! Every watcher is in exactly one of three sets (etcd's scheme):
//! - **synced**: it has seen everything up to the published revision. Each
//!   committed apply batch hands its events to [`Hub::notify`], which gives
//!   every synced watcher the events it matches in one response, with a
//!   non-blocking send.
//! - **victim**: a send to it failed because its stream's channel was full
//!   (a slow consumer). It keeps that one response and leaves the synced
//!   set, so neither writes nor other watchers wait for it.
//! - **unsynced**: it starts in the past, or it was a victim whose response
//!   finally went out while more revisions were published. The syncer
//!   ([`crate::Store::sync_watchers`]) replays its history from the B+tree
//!   in bounded chunks until it has caught up, then moves it to synced.
//!
//! Memory per watcher is bounded: a stream's channel holds at most its
//! capacity of responses, a victim one more, an unsynced watcher nothing
//! (its events stay in the B+tree until the syncer reads them).
//!
//! ## Invariants
//! - `next_rev` of a watcher is the lowest revision it has not been sent;
//!   a response only carries events at or above it and moves it past them,
//!   so a handover between replay and live notification can neither skip
//!   nor repeat a revision.
//! - [`Hub::notify`] runs under the hub lock together with publishing the
//!   revision, so `published` is always the store's current revision while
//!   the hub is unlocked.
//! - A revision's events are never split between two responses.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::history::{Event, EventKind};
use crate::index::RangeEnd;

/// What a client asks to watch (etcd's `WatchCreateRequest`).
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    pub key: Vec<u8>,
    /// etcd's encoding: empty for one key, `"\0"` for every key from `key`
    /// on, else the end (excluded).
    pub range_end: Vec<u8>,
    /// First revision to report; 0 (or anything not yet reached) watches
    /// from the next revision on.
    pub start_revision: i64,
    pub prev_kv: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Receive periodic progress notifications while idle.
    pub progress_notify: bool,
    /// 0: the stream picks the next free ID (as etcd's `AutoWatchID`).
    pub watch_id: i64,
}

/// One message to a watch stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// The watcher it is for; -1 for a progress notification about the
    /// whole stream.
    pub watch_id: i64,
    /// The store revision the response was made at: every event up to it
    /// has been sent to this watcher (to the stream, for -1).
    pub revision: i64,
    /// Events in revision order; empty for a progress notification.
    pub events: Vec<Event>,
    /// Non-zero: the watcher wanted history that compaction has removed;
    /// this is the compacted revision and the watcher is gone.
    pub compact_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("mvcc: watch stream is closed")]
    StreamClosed,
    /// Negative IDs are the server's: -1 marks a progress notification and
    /// a failed creation, which a client could not tell from its watch.
    #[error("mvcc: watch ID {0} is invalid (a client-chosen watch ID must be positive)")]
    InvalidId(i64),
    #[error("mvcc: too many watchers on one watch stream (at most {MAX_WATCHERS_PER_STREAM})")]
    TooManyWatchers,
}

/// Watchers one stream may hold at once: a client cannot grow a member's
/// memory without bound through one stream (each watcher keeps its range
/// and a queue of events).
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;

type WatcherKey = (u64, i64);

enum State {
    Synced,
    Unsynced,
    /// Waiting to send this response.
    Victim(WatchResponse),
}

struct Watcher {
    key: Vec<u8>,
    end: RangeEnd,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    state: State,
}

impl Watcher {
    /// This watcher's copy of `ev`, or None when a filter drops it.
    fn copy_of(&self, ev: &Event) -> Option<Event> {
        match ev.kind {
            EventKind::Put if self.no_put => return None,
            EventKind::Delete if self.no_delete => return None,
            _ => {}
        }
        Some(Event {
            kind: ev.kind,
            kv: ev.kv.clone(),
            prev_kv: if self.prev_kv {
                ev.prev_kv.clone()
            } else {
                None
            },
        })
    }
}

struct Stream {
    sender: mpsc::Sender<WatchResponse>,
    next_id: i64,
    ids: BTreeSet<i64>,
    /// A progress request waits for every watcher to be synced.
    progress_pending: bool,
}

#[derive(Default)]
struct HubState {
    /// The store's current revision as watchers know it.
    published: i64,
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    watchers: HashMap<WatcherKey, Watcher>,
    /// Synced single-key watchers by key.
    synced_keys: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    /// Synced range and prefix watchers.
    synced_ranges: HashSet<WatcherKey>,
    unsynced: BTreeSet<WatcherKey>,
    victims: BTreeSet<WatcherKey>,
}

/// Every watcher of one store.
pub(crate) struct Hub {
    state: Mutex<HubState>,
    /// Wakes the syncer when a watcher needs it.
    work: Condvar,
}

/// A replay job taken out of the hub, run without holding it.
pub(crate) struct ReplayJob {
    pub(crate) watcher: WatcherKey,
    pub(crate) next_rev: i64,
    pub(crate) key: Vec<u8>,
    pub(crate) end: RangeEnd,
    pub(crate) prev_kv: bool,
}

impl Hub {
    pub(crate) fn new(published: i64) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                published,
                ..HubState::default()
            }),
            work: Condvar::new(),
        }
    }

    /// Wakes the syncer.
    pub(crate) fn wake(&self) {
        self.work.notify_all();
    }

    pub(crate) fn lock(&self) -> HubGuard<'_> {
        HubGuard(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sleeps until a watcher needs the syncer or `timeout` passes.
    pub(crate) fn wait_for_work(&self, timeout: std::time::Duration) {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if guard.unsynced.is_empty() && guard.victims.is_empty() {
            let _unused = self.work.wait_timeout(guard, timeout);
        }
    }

    pub(crate) fn open_stream(&self, capacity: usize) -> (u64, mpsc::Receiver<WatchResponse>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let mut st = self.lock();
        let id = st.0.next_stream;
        st.0.next_stream += 1;
        st.0.streams.insert(
            id,
            Stream {
                sender,
                next_id: 0,
                ids: BTreeSet::new(),
                progress_pending: false,
            },
        );
        (id, receiver)
    }

    pub(crate) fn watch(&self, stream: u64, req: &WatchRequest) -> Result<i64, WatchError> {
        let end = RangeEnd::from_etcd(&req.range_end);
        if let RangeEnd::Until(e) = &end {
            if req.key.as_slice() >= e.as_slice() {
                return Err(WatchError::EmptyRange);
            }
        }
        let mut g = self.lock();
        let published = g.0.published;
        let st = &mut g.0;
        let s = st
            .streams
            .get_mut(&stream)
            .ok_or(WatchError::StreamClosed)?;
        if req.watch_id < 0 {
            return Err(WatchError::InvalidId(req.watch_id));
        }
        if s.ids.len() >= MAX_WATCHERS_PER_STREAM {
            return Err(WatchError::TooManyWatchers);
        }
        let id = if req.watch_id == 0 {
            while s.ids.contains(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        } else if s.ids.contains(&req.watch_id) {
            return Err(WatchError::DuplicateId);
        } else {
            req.watch_id
        };
        s.ids.insert(id);
        let synced = req.start_revision <= 0 || req.start_revision > published;
        let w = Watcher {
            key: req.key.clone(),
            end,
            next_rev: if req.start_revision <= 0 {
                published + 1
            } else {
                req.start_revision
            },
            prev_kv: req.prev_kv,
            no_put: req.no_put,
            no_delete: req.no_delete,
            progress_notify: req.progress_notify,
            state: if synced {
                State::Synced
            } else {
                State::Unsynced
            },
        };
        let wk = (stream, id);
        st.watchers.insert(wk, w);
        if synced {
            g.add_synced(wk);
        } else {
            g.0.unsynced.insert(wk);
            self.work.notify_all();
        }
        Ok(id)
    }

    pub(crate) fn cancel(&self, stream: u64, id: i64) -> bool {
        let mut g = self.lock();
        let found = g.0.watchers.contains_key(&(stream, id));
        g.remove_watcher((stream, id));
        found
    }

    pub(crate) fn request_progress(&self, stream: u64) {
        let mut g = self.lock();
        if let Some(s) = g.0.streams.get_mut(&stream) {
            s.progress_pending = true;
        }
        g.send_pending_progress(stream);
        if g.0.streams.get(&stream).is_some_and(|s| s.progress_pending) {
            self.work.notify_all();
        }
    }

    pub(crate) fn close_stream(&self, stream: u64) {
        self.lock().remove_stream(stream);
    }

    pub(crate) fn watcher_count(&self) -> (usize, usize, usize) {
        let g = self.lock();
        (
            g.0.watchers.len() - g.0.unsynced.len() - g.0.victims.len(),
            g.0.unsynced.len(),
            g.0.victims.len(),
        )
    }
}

/// The locked hub.
pub(crate) struct HubGuard<'a>(MutexGuard<'a, HubState>);

impl HubGuard<'_> {
    fn add_synced(&mut self, wk: WatcherKey) {
        let st = &mut *self.0;
        let Some(w) = st.watchers.get_mut(&wk) else {
            return;
        };
        w.state = State::Synced;
        if matches!(w.end, RangeEnd::Single) {
            st.synced_keys.entry(w.key.clone()).or_default().insert(wk);
        } else {
            st.synced_ranges.insert(wk);
        }
    }

    fn remove_from_synced(&mut self, wk: WatcherKey) {
        let st = &mut *self.0;
        let Some(w) = st.watchers.get(&wk) else {
            return;
        };
        if matches!(w.end, RangeEnd::Single) {
            if let Some(set) = st.synced_keys.get_mut(&w.key) {
                set.remove(&wk);
                if set.is_empty() {
                    st.synced_keys.remove(&w.key);
                }
            }
        } else {
            st.synced_ranges.remove(&wk);
        }
    }

    fn remove_watcher(&mut self, wk: WatcherKey) {
        self.remove_from_synced(wk);
        let st = &mut *self.0;
        st.unsynced.remove(&wk);
        st.victims.remove(&wk);
        st.watchers.remove(&wk);
        if let Some(s) = st.streams.get_mut(&wk.0) {
            s.ids.remove(&wk.1);
        }
    }

    fn remove_stream(&mut self, stream: u64) {
        let ids: Vec<i64> = match self.0.streams.get(&stream) {
            Some(s) => s.ids.iter().copied().collect(),
            None => return,
        };
        for id in ids {
            self.remove_watcher((stream, id));
        }
        self.0.streams.remove(&stream);
    }

    /// Sends `resp` without waiting. Returns it back when the channel is
    /// full; a closed stream is removed (its receiver is gone).
    fn try_send(&mut self, stream: u64, resp: WatchResponse) -> Result<(), Option<WatchResponse>> {
        let Some(s) = self.0.streams.get(&stream) else {
            return Err(None);
        };
        match s.sender.try_send(resp) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(r)) => Err(Some(r)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.remove_stream(stream);
                Err(None)
            }
        }
    }

    /// Sends a stream's progress notification once all its watchers are
    /// synced (so its revision promises every earlier event was sent).
    fn send_pending_progress(&mut self, stream: u64) {
        let Some(s) = self.0.streams.get(&stream) else {
            return;
        };
        if !s.progress_pending {
            return;
        }
        let all_synced =
            s.ids.iter().all(|id| {
                matches!(self.0.watchers.get(&(stream, *id)), Some(w) if matches!(w.state, State::Synced))
            });
        if !all_synced {
            return;
        }
        let resp = WatchResponse {
            watch_id: -1,
            revision: self.0.published,
            ..WatchResponse::default()
        };
        if self.try_send(stream, resp).is_ok() {
            if let Some(s) = self.0.streams.get_mut(&stream) {
                s.progress_pending = false;
            }
        }
    }

    /// Whether any watcher exists (an apply batch collects its events only
    /// then).
    pub(crate) fn has_watchers(&self) -> bool {
        !self.0.watchers.is_empty()
    }

    /// Publishes revision `rev` after a batch that did not collect its
    /// events (no watcher existed when it began): a watcher created since
    /// then that wants some of the batch's revisions replays them from the
    /// B+tree instead.
    /// Returns whether any watcher now needs the syncer.
    pub(crate) fn publish_uncollected(&mut self, rev: i64) -> bool {
        self.0.published = rev;
        let late: Vec<WatcherKey> = self
            .0
            .watchers
            .iter()
            .filter(|(_, w)| matches!(w.state, State::Synced) && w.next_rev <= rev)
            .map(|(wk, _)| *wk)
            .collect();
        let any = !late.is_empty();
        for wk in late {
            self.remove_from_synced(wk);
            if let Some(w) = self.0.watchers.get_mut(&wk) {
                w.state = State::Unsynced;
                self.0.unsynced.insert(wk);
            }
        }
        any
    }

    /// Publishes revision `rev` and hands the events of the batch that
    /// made it (in revision order) to every synced watcher.
    pub(crate) fn notify(&mut self, events: &[Event], rev: i64) {
        self.0.published = rev;
        if events.is_empty() || self.0.watchers.is_empty() {
            return;
        }
        // Which events each synced watcher matches, in order.
        let mut matched: HashMap<WatcherKey, Vec<usize>> = HashMap::new();
        for (i, ev) in events.iter().enumerate() {
            if let Some(set) = self.0.synced_keys.get(&ev.kv.key) {
                for wk in set {
                    matched.entry(*wk).or_default().push(i);
                }
            }
            for wk in &self.0.synced_ranges {
                if let Some(w) = self.0.watchers.get(wk) {
                    if w.end.contains(&w.key, &ev.kv.key) {
                        matched.entry(*wk).or_default().push(i);
                    }
                }
            }
        }
        for (wk, idxs) in matched {
            let Some(w) = self.0.watchers.get_mut(&wk) else {
                continue;
            };
            let mut out = Vec::new();
            let mut last = w.next_rev - 1;
            for i in idxs {
                let ev = &events[i];
                if ev.kv.mod_revision < w.next_rev {
                    continue;
                }
                last = last.max(ev.kv.mod_revision);
                if let Some(e) = w.copy_of(ev) {
                    out.push(e);
                }
            }
            w.next_rev = last + 1;
            if out.is_empty() {
                continue;
            }
            let resp = WatchResponse {
                watch_id: wk.1,
                revision: rev,
                events: out,
                compact_revision: 0,
            };
            if let Err(Some(resp)) = self.try_send(wk.0, resp) {
                // A slow consumer: park the response, leave the synced set.
                self.remove_from_synced(wk);
                if let Some(w) = self.0.watchers.get_mut(&wk) {
                    w.state = State::Victim(resp);
                    self.0.victims.insert(wk);
                }
            }
        }
    }

    /// Retries every victim's parked response; a delivered one rejoins the
    /// synced set when nothing newer was published meanwhile, else the
    /// unsynced set. Also sends progress notifications that were waiting.
    pub(crate) fn retry_victims(&mut self) {
        let victims: Vec<WatcherKey> = self.0.victims.iter().copied().collect();
        for wk in victims {
            let Some(w) = self.0.watchers.get_mut(&wk) else {
                self.0.victims.remove(&wk);
                continue;
            };
            let State::Victim(resp) = std::mem::replace(&mut w.state, State::Unsynced) else {
                self.0.victims.remove(&wk);
                continue;
            };
            match self.try_send(wk.0, resp) {
                Ok(()) => {
                    self.0.victims.remove(&wk);
                    let caught_up = self
                        .0
                        .watchers
                        .get(&wk)
                        .is_some_and(|w| w.next_rev > self.0.published);
                    if caught_up {
                        self.add_synced(wk);
                    } else {
                        self.0.unsynced.insert(wk);
                    }
                }
                Err(Some(resp)) => {
                    if let Some(w) = self.0.watchers.get_mut(&wk) {
                        w.state = State::Victim(resp);
                    }
                }
                Err(None) => {
                    self.0.victims.remove(&wk);
                }
            }
        }
        let streams: Vec<u64> = self
            .0
            .streams
            .iter()
            .filter(|(_, s)| s.progress_pending)
            .map(|(id, _)| *id)
            .collect();
        for s in streams {
            self.send_pending_progress(s);
        }
    }

    /// Up to `max` unsynced watchers to replay.
    pub(crate) fn replay_jobs(&self, max: usize) -> Vec<ReplayJob> {
        self.0
            .unsynced
            .iter()
            .take(max)
            .filter_map(|wk| {
                self.0.watchers.get(wk).map(|w| ReplayJob {
                    watcher: *wk,
                    next_rev: w.next_rev,
                    key: w.key.clone(),
                    end: w.end.clone(),
                    prev_kv: w.prev_kv,
                })
            })
            .collect()
    }

    /// Finishes a replay: `events` are the job's history from `next_rev`
    /// through `reached`. Sends them; once the watcher has caught up with
    /// the published revision it joins the synced set.
    pub(crate) fn finish_replay(&mut self, job: &ReplayJob, events: &[Event], reached: i64) {
        let wk = job.watcher;
        let Some(w) = self.0.watchers.get(&wk) else {
            return;
        };
        // Cancelled and replaced, or moved on meanwhile: the job is stale.
        if w.next_rev != job.next_rev || !matches!(w.state, State::Unsynced) {
            return;
        }
        let out: Vec<Event> = events.iter().filter_map(|e| w.copy_of(e)).collect();
        if !out.is_empty() {
            let resp = WatchResponse {
                watch_id: wk.1,
                revision: reached,
                events: out,
                compact_revision: 0,
            };
            if self.try_send(wk.0, resp).is_err() {
                // Full: the same replay runs again later; closed: gone.
                return;
            }
        }
        if let Some(w) = self.0.watchers.get_mut(&wk) {
            w.next_rev = w.next_rev.max(reached + 1);
            if w.next_rev > self.0.published {
                self.0.unsynced.remove(&wk);
                self.add_synced(wk);
            }
        }
    }

    /// The watcher wanted history below the compacted revision: tell it and
    /// drop it (once the message is out).
    pub(crate) fn compacted(&mut self, job: &ReplayJob, compacted: i64) {
        let wk = job.watcher;
        if !self.0.watchers.contains_key(&wk) {
            return;
        }
        let resp = WatchResponse {
            watch_id: wk.1,
            revision: self.0.published,
            events: Vec::new(),
            compact_revision: compacted,
        };
        match self.try_send(wk.0, resp) {
            Ok(()) => self.remove_watcher(wk),
            Err(Some(_)) => {}
            Err(None) => {}
        }
    }

    /// Sends a progress notification to every synced watcher that asked
    /// for them (etcd sends them every ten minutes while idle).
    pub(crate) fn notify_progress(&mut self) {
        let published = self.0.published;
        let targets: Vec<WatcherKey> = self
            .0
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && matches!(w.state, State::Synced))
            .map(|(wk, _)| *wk)
            .collect();
        for wk in targets {
            let resp = WatchResponse {
                watch_id: wk.1,
                revision: published,
                ..WatchResponse::default()
            };
            // A full channel means events are flowing; no progress needed.
            let _ = self.try_send(wk.0, resp);
        }
    }
}
