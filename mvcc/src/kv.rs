//! The record stored for each revision: etcd's `mvccpb.KeyValue`, encoded
//! as protobuf with etcd's field numbers, so data can move between this
//! store and etcd's.

use prost::Message;

use crate::error::{Error, Result};
use crate::revision::Revision;

/// A key's state as of one revision (etcd's `mvccpb.KeyValue`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key (in its current life).
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// Revision of the last change to the key.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Puts since the key was created (1 for the first).
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// Lease the key is attached to (0: none).
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// A [`KeyValue`] without its value: what rebuilding the index needs, decoded
/// from the same bytes without copying the value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValueHead {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// The record of revision `rev`, decoded.
pub(crate) fn decode(rev: Revision, bytes: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(bytes).map_err(|e| Error::Corrupt {
        rev,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::KeyValue;

    #[test]
    fn encodes_with_etcds_field_numbers() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"bar".to_vec(),
            lease: 0,
        };
        let bytes = kv.encode_to_vec();
        // field 1 (bytes) "foo", 2: 2, 3: 3, 4: 2, 5 (bytes) "bar"; lease 0 omitted.
        assert_eq!(
            bytes,
            b"\x0a\x03foo\x10\x02\x18\x03\x20\x02\x2a\x03bar".to_vec()
        );
        assert_eq!(KeyValue::decode(&bytes[..]).unwrap(), kv);
    }
}
