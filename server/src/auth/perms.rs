//! A user's key permissions as sets of key intervals, one for reading and
//! one for writing, merged from all the user's roles (etcd's range
//! permission cache).
//!
//! A permission on `key` alone covers that key; with `range_end` it
//! covers `[key, range_end)`; with `range_end` "\0" every key from `key`
//! on. A permission with an empty key grants nothing (etcdctl sends "\0"
//! for "every key"). A request for one key is allowed when some interval
//! holds it; a request for a range when the intervals cover all of it
//! (adjacent and overlapping grants of several roles join).

use crate::pb::authpb;

/// `[begin, end)`; `end` None: no upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// `a < b` for interval ends, None being +infinity.
fn end_lt(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a < b,
    }
}

/// The interval a key and range end name (etcd's reading).
fn interval(key: &[u8], range_end: &[u8]) -> Option<Interval> {
    if key.is_empty() {
        return None;
    }
    let end = match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        }
        [0] => None,
        e => Some(e.to_vec()),
    };
    if end.as_ref().is_some_and(|e| e.as_slice() <= key) {
        return None;
    }
    Some(Interval {
        begin: key.to_vec(),
        end,
    })
}

/// A union of intervals, kept sorted and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    intervals: Vec<Interval>,
}

impl KeySet {
    fn add(&mut self, iv: Interval) {
        self.intervals.push(iv);
        self.intervals.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut merged: Vec<Interval> = Vec::with_capacity(self.intervals.len());
        for iv in self.intervals.drain(..) {
            match merged.last_mut() {
                // Overlapping or adjacent: one interval.
                Some(last) if !end_lt(&last.end, &Some(iv.begin.clone())) => {
                    if end_lt(&last.end, &iv.end) {
                        last.end = iv.end;
                    }
                }
                _ => merged.push(iv),
            }
        }
        self.intervals = merged;
    }

    /// Whether the set covers what `key` and `range_end` name (a request's
    /// reading: an empty range end is the key alone, "\0" every key from
    /// it).
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let Some(want) = interval(key, range_end).or_else(|| {
            // An empty key with a range: from the first key.
            (key.is_empty() && !range_end.is_empty()).then(|| Interval {
                begin: Vec::new(),
                end: (range_end != [0]).then(|| range_end.to_vec()),
            })
        }) else {
            return false;
        };
        self.intervals
            .iter()
            .any(|iv| iv.begin <= want.begin && !end_lt(&iv.end, &want.end))
    }
}

/// What one user may read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    pub read: KeySet,
    pub write: KeySet,
}

impl UserPerms {
    /// The permissions of `roles` together.
    pub fn from_roles<'a>(roles: impl IntoIterator<Item = &'a authpb::Role>) -> UserPerms {
        use authpb::permission::Type;
        let mut p = UserPerms::default();
        for role in roles {
            for perm in &role.key_permission {
                let Some(iv) = interval(&perm.key, &perm.range_end) else {
                    continue;
                };
                match perm.perm_type() {
                    Type::Read => p.read.add(iv),
                    Type::Write => p.write.add(iv),
                    Type::Readwrite => {
                        p.read.add(iv.clone());
                        p.write.add(iv);
                    }
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authpb::permission::Type;

    fn role(perms: &[(Type, &str, &str)]) -> authpb::Role {
        authpb::Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| authpb::Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_key_a_range_a_prefix_and_from_a_key() {
        let r = role(&[
            (Type::Read, "k", ""),
            (Type::Write, "a/", "a0"),
            (Type::Readwrite, "z", "\0"),
        ]);
        let p = UserPerms::from_roles([&r]);
        assert!(p.read.covers(b"k", b""));
        assert!(!p.read.covers(b"k1", b""));
        assert!(!p.write.covers(b"k", b""));
        assert!(p.write.covers(b"a/x", b""));
        assert!(p.write.covers(b"a/", b"a0"));
        assert!(!p.write.covers(b"a/", b"a1"));
        assert!(!p.write.covers(b"a", b""));
        assert!(p.read.covers(b"zz", b"\0"));
        assert!(p.write.covers(b"z", b"zzz"));
        assert!(!p.read.covers(b"y", b"\0"));
        // Every key: only with a grant from the first key on.
        assert!(!p.read.covers(b"\0", b"\0"));
        let all = UserPerms::from_roles([&role(&[(Type::Read, "\0", "\0")])]);
        assert!(all.read.covers(b"\0", b"\0"));
        assert!(all.read.covers(b"anything", b""));
    }

    #[test]
    fn grants_of_several_roles_join() {
        let a = role(&[(Type::Read, "a", "f")]);
        let b = role(&[(Type::Read, "f", "m")]);
        let p = UserPerms::from_roles([&a, &b]);
        assert!(p.read.covers(b"a", b"m"));
        assert!(p.read.covers(b"c", b"g"));
        assert!(!p.read.covers(b"a", b"n"));
        let gap = UserPerms::from_roles([&a, &role(&[(Type::Read, "g", "m")])]);
        assert!(!gap.read.covers(b"a", b"m"));
        assert!(gap.read.covers(b"g", b"h"));
    }

    #[test]
    fn an_empty_key_grants_nothing() {
        let p = UserPerms::from_roles([&role(&[(Type::Readwrite, "", "")])]);
        assert!(!p.read.covers(b"a", b""));
        assert_eq!(p, UserPerms::default());
    }
}
