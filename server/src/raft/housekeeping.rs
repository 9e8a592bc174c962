//! The leader's periodic duties, run by the raft thread every 100 ms:
//! proposing the revocation of expired leases (again if one gets lost),
//! lease checkpoints, the NOSPACE alarm when the database passes its
//! quota, and auto-compaction. Followers do none of it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::{AutoCompaction, Config, ConfigError};
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, LeaseCheckpoint, LeaseCheckpoints};
use crate::raft::ready::RaftLoop;

/// Most leases one checkpoint proposal carries (etcd's batch size).
const CHECKPOINT_BATCH: usize = 1000;

/// A revocation not applied within this is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

pub struct Housekeeping {
    /// None: no quota (a negative `--quota-backend-bytes`).
    quota_bytes: Option<i64>,
    auto_compaction: AutoCompaction,
    /// (when, revision) samples for periodic auto-compaction.
    revision_marks: Vec<(Instant, i64)>,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    /// Expired leases whose revocation was proposed, and when.
    revoking: HashMap<i64, Instant>,
    /// When this member last proposed NOSPACE for a full disk.
    last_space_alarm: Option<Instant>,
}

impl Housekeeping {
    pub fn new(cfg: &Config) -> Result<Housekeeping, ConfigError> {
        Ok(Housekeeping {
            quota_bytes: cfg.quota_bytes(),
            auto_compaction: cfg.auto_compaction()?,
            revision_marks: Vec::new(),
            checkpoint_interval: cfg.experimental_lease_checkpoint_interval,
            last_checkpoint: Instant::now(),
            revoking: HashMap::new(),
            last_space_alarm: None,
        })
    }

    /// A new term of leadership: nothing proposed before is still pending.
    pub fn became_leader(&mut self) {
        self.revoking.clear();
        self.last_checkpoint = Instant::now();
    }
}

/// How often a member whose disk is full proposes its NOSPACE alarm again
/// while the alarm is not yet applied (the proposal may be dropped while
/// no leader is known).
const NOSPACE_RETRY: Duration = Duration::from_secs(1);

impl RaftLoop {
    pub(crate) fn housekeep(&mut self) {
        self.check_disk_space();
        if !self.is_leader() || !self.can_serve_reads() {
            return;
        }
        let store = self.shared.store.clone();
        let now = Instant::now();
        // Until this leader's first entry is applied, lease deadlines are
        // the ones this member kept as a follower (stale): none expires.
        let term = self.node.raft.term;
        let promoted = self.shared.raft.lease_term.load(Ordering::Acquire) == term;
        let expired = if promoted {
            store.expired_leases(now)
        } else {
            Vec::new()
        };
        self.housekeeping
            .revoking
            .retain(|id, _| expired.contains(id));
        for id in expired {
            let due = match self.housekeeping.revoking.get(&id) {
                None => {
                    self.shared.metrics.leases_expired.inc();
                    true
                }
                Some(at) => now.duration_since(*at) >= REVOKE_RETRY,
            };
            if due {
                self.housekeeping.revoking.insert(id, now);
                self.propose_internal(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }));
            }
        }
        if self.housekeeping.last_checkpoint.elapsed() >= self.housekeeping.checkpoint_interval {
            self.housekeeping.last_checkpoint = Instant::now();
            let all = store.lease_remaining();
            for chunk in all.chunks(CHECKPOINT_BATCH) {
                self.propose_internal(Op::LeaseCheckpoints(LeaseCheckpoints {
                    checkpoints: chunk
                        .iter()
                        .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                        .collect(),
                }));
            }
        }
        // The quota counts the pages the database has used (its high-water
        // mark, which only a defragmentation lowers, as etcd's file size),
        // not the space the file keeps in reserve beyond them.
        let (_, file) = store.db_size();
        let no_space = self
            .shared
            .alarms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .no_space();
        let over = self.housekeeping.quota_bytes.filter(|q| file as i64 > *q);
        if let (Some(quota), false) = (over, no_space) {
            tracing::warn!("database size {file} exceeds the quota {quota}: raising NOSPACE");
            self.propose_internal(Op::Alarm(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Activate as i32,
                member_id: self.shared.member_id,
                alarm: pb::AlarmType::Nospace as i32,
            }));
        }
        if let Some(target) = self.housekeeping.auto_compact_target(&store) {
            tracing::info!("auto-compaction at revision {target}");
            self.propose_internal(Op::Compaction(pb::CompactionRequest {
                revision: target,
                physical: false,
            }));
        }
    }
}

impl RaftLoop {
    /// On every member, leader or not (etcd's members each raise the
    /// alarm their own apply hits): a disk that cannot give the database
    /// its reserve, or the WAL its next segment, raises NOSPACE for this
    /// member. Writes then stop cluster-wide with etcd's "database space
    /// exceeded", while reads, deletes, compaction, defragmentation and
    /// `alarm disarm` go on; the member never exits over it.
    fn check_disk_space(&mut self) {
        let db = self.shared.store.space_short();
        let wal = self.log.space_short();
        if !db && !wal {
            return;
        }
        let raised = self
            .shared
            .alarms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .no_space_of(self.shared.member_id);
        let due = self
            .housekeeping
            .last_space_alarm
            .is_none_or(|at| at.elapsed() >= NOSPACE_RETRY);
        if raised || !due {
            return;
        }
        self.housekeeping.last_space_alarm = Some(Instant::now());
        let what = match (db, wal) {
            (true, true) => "the database cannot keep its reserve and the WAL cannot preallocate its next segment",
            (true, false) => "the database cannot keep its reserve",
            _ => "the WAL cannot preallocate its next segment",
        };
        tracing::warn!("the disk is full: {what}: raising NOSPACE");
        self.propose_internal(Op::Alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.shared.member_id,
            alarm: pb::AlarmType::Nospace as i32,
        }));
    }
}

impl Housekeeping {
    fn auto_compact_target(&mut self, store: &mvcc::Store) -> Option<i64> {
        let current = store.current_revision();
        let target = match self.auto_compaction {
            AutoCompaction::Off => return None,
            AutoCompaction::Revision(keep) => {
                // etcd checks every five minutes; so does this.
                let now = Instant::now();
                if self
                    .revision_marks
                    .last()
                    .is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(300))
                {
                    return None;
                }
                self.revision_marks = vec![(now, current)];
                current - keep
            }
            AutoCompaction::Periodic(keep) => {
                let now = Instant::now();
                let sample_every = (keep / 10).max(Duration::from_secs(1));
                if self
                    .revision_marks
                    .last()
                    .is_none_or(|(t, _)| now.duration_since(*t) >= sample_every)
                {
                    self.revision_marks.push((now, current));
                }
                // The newest revision at least `keep` old.
                let pos = self
                    .revision_marks
                    .iter()
                    .rposition(|(t, _)| now.duration_since(*t) >= keep)?;
                let rev = self.revision_marks[pos].1;
                self.revision_marks.drain(..=pos);
                rev
            }
        };
        (target > store.compacted_revision() && target <= current).then_some(target)
    }
}
