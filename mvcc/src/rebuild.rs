//! Opening a store: the buckets created when missing, the key index and
//! the leases rebuilt from the records, an unfinished compaction picked
//! up again.

use btree::Db;
use prost::Message;

use crate::buckets::{
    be_u64, AuthBucket, ALARM_BUCKET, COMPACTED_REVISION, CONSISTENT_INDEX, KEY_BUCKET,
    LEASE_BUCKET, MEMBERS_BUCKET, MEMBERS_REMOVED_BUCKET, META_BUCKET, SCHEDULED_COMPACTION, TERM,
};
use crate::compact::PendingCompaction;
use crate::error::{Error, Result};
use crate::index::KeyIndex;
use crate::kv::KeyValueHead;
use crate::lease::{LeaseRecord, Lessor};
use crate::revision::Revision;
use crate::store::Shared;

/// Bytes of records the index rebuild walks between releases of the
/// pages it mapped.
const RELEASE_EVERY: usize = 64 << 20;

/// Reads a store's state from its database: creates missing buckets,
/// rebuilds the key index and the leases, and picks up an unfinished
/// compaction.
pub(crate) fn load(db: &Db) -> Result<Shared> {
    {
        let mut tx = db.begin_write()?;
        for b in [
            KEY_BUCKET,
            META_BUCKET,
            LEASE_BUCKET,
            ALARM_BUCKET,
            MEMBERS_BUCKET,
            MEMBERS_REMOVED_BUCKET,
            AuthBucket::Meta.name(),
            AuthBucket::Users.name(),
            AuthBucket::Roles.name(),
        ] {
            tx.create_bucket_if_missing(b)?;
        }
        tx.commit()?;
    }
    let mut index = KeyIndex::new();
    let mut lessor = Lessor::default();
    // The lease of each live key's latest record.
    let mut key_leases: std::collections::HashMap<Vec<u8>, i64> = Default::default();
    let mut current = 0;
    let (consistent_index, term, finished, scheduled) = {
        let rx = db.begin_read();
        let meta = rx.open_bucket(META_BUCKET)?;
        let consistent_index = be_u64(meta.get(CONSISTENT_INDEX)?);
        let term = be_u64(meta.get(TERM)?);
        let finished = be_u64(meta.get(COMPACTED_REVISION)?) as i64;
        let scheduled = be_u64(meta.get(SCHEDULED_COMPACTION)?) as i64;
        let keys = rx.open_bucket(KEY_BUCKET)?;
        let mut walked = 0usize;
        for item in keys.range(b"", None) {
            let (k, v) = item?;
            // The walk reads each record once: the pages it mapped (the
            // kernel maps pages around each one touched, so a large
            // value's whole run) are let go of as it goes, not only at
            // the end, so resident memory stays bounded whatever the
            // file's size. They stay in the page cache.
            walked += k.len() + v.len();
            if walked >= RELEASE_EVERY {
                walked = 0;
                let _ = db.release_mapped_pages();
            }
            let Some((rev, tombstone)) = Revision::from_key(k) else {
                return Err(Error::Corrupt {
                    rev: Revision::default(),
                    reason: format!(
                        "key bucket holds a key that is not a revision ({} bytes)",
                        k.len()
                    ),
                });
            };
            // Only the head: copying every value would double the work.
            let kv = KeyValueHead::decode(v).map_err(|e| Error::Corrupt {
                rev,
                reason: e.to_string(),
            })?;
            // Most keys have no lease: the map holds only those that do.
            if !key_leases.is_empty() {
                key_leases.remove(&kv.key);
            }
            if tombstone {
                // An unfinished compaction may have removed the puts
                // before a tombstone it had not reached yet; the index
                // is compacted past it below anyway.
                let unfinished = scheduled > finished && rev.main <= scheduled;
                if index.tombstone(&kv.key, rev).is_err() && !unfinished {
                    return Err(Error::Corrupt {
                        rev,
                        reason: "tombstone of a key that does not exist".into(),
                    });
                }
            } else {
                if kv.lease != 0 {
                    key_leases.insert(kv.key.clone(), kv.lease);
                }
                index.restore(
                    kv.key,
                    Revision::new(kv.create_revision, 0),
                    rev,
                    kv.version,
                );
            }
            current = rev.main;
        }
        // Leases come back with the time left at their last checkpoint,
        // or their full TTL, from now.
        let now = std::time::Instant::now();
        for item in rx.open_bucket(LEASE_BUCKET)?.range(b"", None) {
            let (_, v) = item?;
            let rec = LeaseRecord::decode(v).map_err(|e| Error::Corrupt {
                rev: Revision::default(),
                reason: format!("lease record: {e}"),
            })?;
            lessor.insert(rec.id, rec.ttl, rec.remaining_ttl, now);
        }
        for (k, lease) in &key_leases {
            lessor.attach(k, *lease);
        }
        (consistent_index, term, finished, scheduled)
    };
    // The walk read every record once; the pages it mapped need not stay
    // resident (they remain in the page cache). Advice the kernel refuses
    // changes nothing but memory use.
    let _ = db.release_mapped_pages();
    // A compaction scheduled but not finished before a crash: the index
    // was rebuilt from every record, so compact it again and let the
    // physical steps run to the end.
    let (compacted, pending_compaction) = if scheduled > finished {
        let kept = index.compact(scheduled);
        (
            scheduled,
            Some(PendingCompaction {
                rev: scheduled,
                kept,
                next_key: Vec::new(),
            }),
        )
    } else {
        (finished, None)
    };
    // As in etcd, an empty store is at revision 1: the first change
    // makes revision 2.
    let current = current.max(compacted).max(1);
    Ok(Shared {
        index,
        lessor,
        current,
        compacted,
        consistent_index,
        term,
        poisoned: false,
        pending_compaction,
    })
}
