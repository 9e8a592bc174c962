//! The server's own records kept with the key space, durably in the same
//! batches: raised alarms, the cluster's members (and the removed ones),
//! and the auth store's users and roles.

use crate::apply::Apply;
use crate::buckets::{
    member_key, AuthBucket, ALARM_BUCKET, MEMBERS_BUCKET, MEMBERS_REMOVED_BUCKET,
};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::snapshot::read_members;
use crate::store::Store;

impl Store {
    /// Raised alarms as (member ID, alarm type), as recorded by
    /// [`Apply::set_alarm`].
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(ALARM_BUCKET)?.range(b"", None) {
            let (k, _) = item?;
            let (Ok(member), Ok(alarm)) = (
                <[u8; 8]>::try_from(&k[..k.len().min(8)]),
                <[u8; 4]>::try_from(&k[k.len().min(8)..]),
            ) else {
                return Err(Error::Corrupt {
                    rev: Revision::default(),
                    reason: format!("alarm key of {} bytes", k.len()),
                });
            };
            out.push((u64::from_be_bytes(member), i32::from_be_bytes(alarm)));
        }
        Ok(out)
    }

    /// Every record of the `members` bucket: (member ID, the server's
    /// encoding of the member).
    pub fn members(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        read_members(&self.db.begin_read())
    }

    /// Every record of an auth bucket, in key order.
    pub fn auth_records(&self, bucket: AuthBucket) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(bucket.name())?.range(b"", None) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// IDs of the members removed from the cluster.
    pub fn removed_members(&self) -> Result<Vec<u64>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(MEMBERS_REMOVED_BUCKET)?.range(b"", None) {
            out.push(member_key(item?.0)?);
        }
        Ok(out)
    }
}

impl<'s> Apply<'s> {
    /// Raises (`on`) or clears an alarm of a member, durably with the
    /// batch.
    pub fn set_alarm(&mut self, member: u64, alarm: i32, on: bool) -> Result<()> {
        let mut key = member.to_be_bytes().to_vec();
        key.extend_from_slice(&alarm.to_be_bytes());
        if on {
            self.tx().put(ALARM_BUCKET, &key, b"")?;
        } else {
            self.tx().delete(ALARM_BUCKET, &key)?;
        }
        Ok(())
    }

    /// Stores (Some) or removes (None) a member record, durably with the
    /// batch.
    pub fn set_member(&mut self, id: u64, record: Option<&[u8]>) -> Result<()> {
        match record {
            Some(r) => self.tx().put(MEMBERS_BUCKET, &id.to_be_bytes(), r)?,
            None => {
                self.tx().delete(MEMBERS_BUCKET, &id.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Records that member `id` was removed (its record goes with
    /// [`Apply::set_member`]).
    pub fn set_member_removed(&mut self, id: u64) -> Result<()> {
        self.tx()
            .put(MEMBERS_REMOVED_BUCKET, &id.to_be_bytes(), b"removed")?;
        Ok(())
    }

    /// Writes (or with `None` deletes) a record of the auth store.
    pub fn set_auth_record(
        &mut self,
        bucket: AuthBucket,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        match value {
            Some(v) => self.tx().put(bucket.name(), key, v)?,
            None => {
                self.tx().delete(bucket.name(), key)?;
            }
        }
        Ok(())
    }

    /// Forgets that member `id` was removed (a restore starts a new
    /// cluster, where the old cluster's removals mean nothing).
    pub fn unset_member_removed(&mut self, id: u64) -> Result<()> {
        self.tx()
            .delete(MEMBERS_REMOVED_BUCKET, &id.to_be_bytes())?;
        Ok(())
    }
}
