//! Revisions and their on-disk key encoding.
//!
//! Every change to the key space gets a revision: `main` is the store
//! revision (one per write transaction), `sub` numbers the changes within
//! it. In the `key` bucket a revision is stored as its key: 8 bytes of
//! `main` big-endian, `_`, 8 bytes of `sub` big-endian, and a trailing `t`
//! when the change was a deletion (a tombstone), the encoding etcd uses, so
//! byte order is revision order.

/// A point in the key space's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Bytes of an encoded revision without the tombstone mark.
pub const REVISION_BYTES: usize = 17;
/// The mark appended to the key of a tombstone.
pub const TOMBSTONE_MARK: u8 = b't';

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The `key` bucket key of this revision.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(REVISION_BYTES + 1);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE_MARK);
        }
        k
    }

    /// Parses a `key` bucket key: the revision and whether it marks a
    /// tombstone. `None` for anything else.
    pub fn from_key(k: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match k.len() {
            REVISION_BYTES => false,
            18 if k[REVISION_BYTES] == TOMBSTONE_MARK => true,
            _ => return None,
        };
        if k[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(k[..8].try_into().ok()?);
        let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
        Some((Revision { main, sub }, tombstone))
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_in_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        let keys: Vec<Vec<u8>> = revs.iter().map(|r| r.to_key(false)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key(false)), Some((r, false)));
            assert_eq!(Revision::from_key(&r.to_key(true)), Some((r, true)));
        }
        assert_eq!(
            Revision::new(5, 2).to_key(true),
            b"\0\0\0\0\0\0\0\x05_\0\0\0\0\0\0\0\x02t".to_vec()
        );
        assert_eq!(Revision::from_key(b"short"), None);
    }
}
