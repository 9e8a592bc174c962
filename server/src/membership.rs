//! The cluster's members: who they are, how their IDs are derived, and the
//! list every member keeps (in the database's `members` bucket, changed
//! only through raft, so every member holds the same list).
//!
//! IDs are etcd's: a member's ID is the first 8 bytes (big-endian) of the
//! SHA-1 of its sorted peer URLs joined together followed by the cluster
//! token; the cluster ID is the first 8 bytes of the SHA-1 of the sorted
//! member IDs (8 bytes big-endian each). So a cluster started from the same
//! flags has the same IDs under etcd and kvserver, but for one rule:
//! etcdctl prints an added member's ID and the cluster's as `%16x`, which
//! pads one of fewer than 16 hex digits with spaces (scripts that read
//! that line break on it, one cluster in 16 under etcd). A cluster ID that
//! short is hashed again with an attempt byte after the member IDs, the
//! same on every member, until it has 16 digits. A member added at run
//! time gets etcd's hash of its URLs and the time, drawn again (the
//! attempt number joins the hash) while the ID is short or one the cluster
//! has used.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use prost::Message as _;
use sha1::{Digest, Sha1};

use crate::config::{Config, ConfigError};
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{member_change::Kind, MemberChange};

/// Learners a cluster may have at once (etcd's limit).
pub const MAX_LEARNERS: usize = 1;

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published them.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    pub fn to_pb(&self) -> pb::Member {
        pb::Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }

    pub fn from_pb(m: pb::Member) -> Member {
        Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_ur_ls,
            client_urls: m.client_ur_ls,
            is_learner: m.is_learner,
        }
    }

    /// The record stored in the `members` bucket: etcd's `Member` message.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }
}

fn sha1_u64(bytes: &[u8]) -> u64 {
    let d = Sha1::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// etcd's member ID for a member of a new cluster.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    sha1_u64(&b)
}

/// The smallest ID with 16 hex digits.
const FULL_WIDTH: u64 = 1 << 60;

/// How many draws an ID for a member added at run time gets (each has 15
/// chances in 16 of 16 digits); if none is both, any unused one will do.
const DRAWS: u32 = 64;

/// The ID for a member added at run time with these URLs, at `nanos`
/// (nanoseconds since the epoch): one that `used` says the cluster has not
/// had, with 16 hex digits.
pub fn runtime_member_id(peer_urls: &[String], nanos: u128, used: impl Fn(u64) -> bool) -> u64 {
    let draws = || (0..DRAWS).map(|attempt| member_id(peer_urls, &format!("{nanos}.{attempt}")));
    draws()
        .find(|&id| id >= FULL_WIDTH && !used(id))
        .or_else(|| draws().find(|&id| id != 0 && !used(id)))
        .unwrap_or(u64::MAX)
}

/// The cluster ID for a new cluster of these members: etcd's when it has
/// 16 hex digits, else the first redraw that has.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let b: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    let etcds = sha1_u64(&b);
    if etcds >= FULL_WIDTH {
        return etcds;
    }
    (1..=DRAWS as u8)
        .map(|attempt| sha1_u64(&[&b[..], &[attempt]].concat()))
        .find(|&id| id >= FULL_WIDTH)
        .unwrap_or(etcds)
}

/// The cluster `--initial-cluster` describes, and this member in it.
#[derive(Debug, Clone)]
pub struct InitialCluster {
    pub members: Vec<Member>,
    pub me: Member,
    pub cluster_id: u64,
}

/// Reads `--initial-cluster` (this member alone when it is empty) and
/// checks it against `--name` and `--initial-advertise-peer-urls`.
pub fn initial_cluster(cfg: &Config) -> Result<InitialCluster, ConfigError> {
    let spec = if cfg.initial_cluster.is_empty() {
        format!("{}={}", cfg.name, cfg.peer_urls().join(","))
    } else {
        cfg.initial_cluster.clone()
    };
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::InitialCluster(format!("bad entry {part:?}")))?;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => by_name.push((name.to_string(), vec![url.to_string()])),
        }
    }
    let mut members: Vec<Member> = Vec::new();
    for (name, mut urls) in by_name {
        urls.sort();
        let id = member_id(&urls, &cfg.initial_cluster_token);
        let dup = urls.windows(2).any(|w| w[0] == w[1])
            || members
                .iter()
                .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)));
        if dup {
            return Err(ConfigError::DuplicateUrl(spec.clone()));
        }
        members.push(Member {
            id,
            name,
            peer_urls: urls,
            client_urls: Vec::new(),
            is_learner: false,
        });
    }
    let me = members
        .iter()
        .find(|m| m.name == cfg.name)
        .cloned()
        .ok_or_else(|| ConfigError::NameNotInCluster(cfg.name.clone()))?;
    let mut advertised = cfg.peer_urls();
    advertised.sort();
    if advertised != me.peer_urls {
        return Err(ConfigError::PeerUrlsMismatch {
            name: cfg.name.clone(),
            initial: me.peer_urls.join(","),
            advertised: advertised.join(","),
        });
    }
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    Ok(InitialCluster {
        cluster_id: cluster_id(&ids),
        members,
        me,
    })
}

/// Decodes the records of a `members` bucket.
pub fn decode_members(records: Vec<(u64, Vec<u8>)>) -> Result<Vec<Member>, mvcc::Error> {
    records
        .into_iter()
        .map(|(id, bytes)| {
            pb::Member::decode(bytes.as_slice())
                .map(Member::from_pb)
                .map_err(|e| mvcc::Error::Corrupt {
                    rev: mvcc::Revision::default(),
                    reason: format!("member record {id:x}: {e}"),
                })
        })
        .collect()
}

/// raft's configuration for a member list.
pub fn conf_state(members: &[Member]) -> raft::eraftpb::ConfState {
    let voters = members.iter().filter(|m| !m.is_learner).map(|m| m.id);
    let learners = members.iter().filter(|m| m.is_learner).map(|m| m.id);
    raft::eraftpb::ConfState::from((voters.collect::<Vec<_>>(), learners.collect::<Vec<_>>()))
}

/// Checks peer URLs as etcd does (`http` or `https`, a host and a port,
/// no path); refuses an empty list.
pub fn check_peer_urls(urls: &[String]) -> Result<(), ServerError> {
    if urls.is_empty() {
        return Err(ServerError::MemberBadUrls);
    }
    for u in urls {
        let uri: http::Uri = u.parse().map_err(|_| ServerError::MemberBadUrls)?;
        let well_formed = matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
            && uri.port_u16().is_some()
            && uri.path() == "/"
            && uri.query().is_none();
        if !well_formed {
            return Err(ServerError::MemberBadUrls);
        }
    }
    Ok(())
}

/// A majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The member list as this member has applied it, and the IDs removed
/// from it.
#[derive(Debug, Default)]
pub struct Membership {
    members: RwLock<BTreeMap<u64, Member>>,
    removed: RwLock<BTreeSet<u64>>,
}

impl Membership {
    /// The list stored in the database.
    pub fn from_store(store: &mvcc::Store) -> Result<Membership, mvcc::Error> {
        let members = decode_members(store.members()?)?
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let removed = store.removed_members()?.into_iter().collect();
        Ok(Membership {
            members: RwLock::new(members),
            removed: RwLock::new(removed),
        })
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Whether `id` is a member's or was one.
    pub fn has_used(&self, id: u64) -> bool {
        self.is_removed(id)
            || self
                .members
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id)
    }

    pub fn removed(&self) -> Vec<u64> {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// etcd's checks of a membership change against the list as applied
    /// (every member decides the same: the list is the same at every
    /// index).
    pub fn validate(&self, change: &MemberChange) -> Result<(), ServerError> {
        let m = change.member.clone().unwrap_or_default();
        if self.is_removed(m.id) {
            return Err(ServerError::MemberNotFound);
        }
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let url_taken = |except: u64| {
            members
                .values()
                .filter(|o| o.id != except)
                .any(|o| o.peer_urls.iter().any(|u| m.peer_ur_ls.contains(u)))
        };
        match change.kind() {
            Kind::Add => {
                if members.contains_key(&m.id) {
                    return Err(ServerError::MemberExist);
                }
                if url_taken(0) {
                    return Err(ServerError::PeerUrlExist);
                }
                let learners = members.values().filter(|o| o.is_learner).count();
                if m.is_learner && learners + 1 > MAX_LEARNERS {
                    return Err(ServerError::TooManyLearners);
                }
            }
            Kind::Remove => {
                if !members.contains_key(&m.id) {
                    return Err(ServerError::MemberNotFound);
                }
            }
            Kind::Update => {
                if !members.contains_key(&m.id) {
                    return Err(ServerError::MemberNotFound);
                }
                if url_taken(m.id) {
                    return Err(ServerError::PeerUrlExist);
                }
            }
            Kind::Promote => match members.get(&m.id) {
                None => return Err(ServerError::MemberNotFound),
                Some(o) if !o.is_learner => return Err(ServerError::MemberNotLearner),
                Some(_) => {}
            },
        }
        Ok(())
    }

    /// Applies a validated change in `batch` and to this list; returns the
    /// member as it now is (the removed one for a removal).
    pub fn apply_change(
        &self,
        batch: &mut mvcc::Apply<'_>,
        change: &MemberChange,
    ) -> Result<Member, mvcc::Error> {
        let m = Member::from_pb(change.member.clone().unwrap_or_default());
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let member = match change.kind() {
            Kind::Add => Member {
                name: String::new(),
                client_urls: Vec::new(),
                ..m
            },
            Kind::Remove => {
                batch.set_member(m.id, None)?;
                batch.set_member_removed(m.id)?;
                self.removed
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.id);
                return Ok(members.remove(&m.id).unwrap_or(m));
            }
            Kind::Update => {
                let mut old = members.get(&m.id).cloned().unwrap_or_else(|| m.clone());
                old.peer_urls = m.peer_urls;
                old
            }
            Kind::Promote => {
                let mut old = members.get(&m.id).cloned().unwrap_or_else(|| m.clone());
                old.is_learner = false;
                old
            }
        };
        batch.set_member(member.id, Some(&member.encode()))?;
        members.insert(member.id, member.clone());
        Ok(member)
    }

    /// Voting members that have published their name (etcd's "started").
    fn started_voters(&self, except: u64) -> (usize, usize) {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let voters = members.values().filter(|m| !m.is_learner && m.id != except);
        voters.fold((0, 0), |(n, started), m| {
            (n + 1, started + usize::from(!m.name.is_empty()))
        })
    }

    /// etcd's IsReadyToAddVotingMember: with the new member counted (not
    /// started), the started ones still make a quorum.
    pub fn ready_to_add_voter(&self) -> bool {
        let (n, started) = self.started_voters(0);
        let n = n + 1;
        // Adding a second member to a one-member cluster is always let
        // through (restoring a cluster from one member).
        (started == 1 && n == 2) || started >= quorum(n)
    }

    /// etcd's IsReadyToRemoveVotingMember.
    pub fn ready_to_remove_voter(&self, id: u64) -> bool {
        let (n, started) = self.started_voters(id);
        started >= quorum(n)
    }

    /// etcd's IsReadyToPromoteMember: the learner counted as started.
    pub fn ready_to_promote(&self) -> bool {
        let (n, started) = self.started_voters(0);
        started + 1 >= quorum(n + 1)
    }

    pub fn list(&self) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Member> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// IDs of the voting members.
    pub fn is_learner(&self, id: u64) -> bool {
        self.get(id).is_some_and(|m| m.is_learner)
    }

    pub fn voters(&self) -> Vec<u64> {
        self.list()
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    pub fn learners(&self) -> Vec<u64> {
        self.list()
            .iter()
            .filter(|m| m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    /// Replaces (or adds) a member; the caller stores it with the batch.
    pub fn set(&self, m: Member) {
        self.members
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.id, m);
    }

    /// Reloads the list from the store (after a snapshot was installed).
    pub fn reload(&self, store: &mvcc::Store) -> Result<(), mvcc::Error> {
        let fresh = Membership::from_store(store)?;
        let list = fresh
            .members
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let removed = fresh
            .removed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = list;
        *self.removed.write().unwrap_or_else(|e| e.into_inner()) = removed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_from_sorted_urls_and_the_token() {
        let a = member_id(&["http://b:1".into(), "http://a:1".into()], "t");
        let b = member_id(&["http://a:1".into(), "http://b:1".into()], "t");
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u")
        );
        assert_eq!(cluster_id(&[1, 2, 3]), cluster_id(&[3, 1, 2]));
    }

    #[test]
    fn cluster_and_runtime_ids_have_16_hex_digits_and_a_runtime_one_is_new() {
        let urls = vec!["http://127.0.0.1:2380".to_string()];
        let mut short = 0;
        for nanos in 0..2000u128 {
            let first = member_id(&urls, &format!("{nanos}.0"));
            short += usize::from(first < FULL_WIDTH);
            let id = runtime_member_id(&urls, nanos, |_| false);
            assert_eq!(format!("{id:16x}").len(), 16);
            assert!(!format!("{id:16x}").starts_with(' '), "{id:x}");
            assert_ne!(runtime_member_id(&urls, nanos, |i| i == id), id);
        }
        // The first draw is short about one time in 16: the rule is what
        // keeps the width.
        let clusters: Vec<u64> = (0..2000u64).map(|i| cluster_id(&[i, i + 1])).collect();
        assert!(clusters.iter().all(|&c| c >= FULL_WIDTH));
        let etcds = |i: u64| sha1_u64(&[i.to_be_bytes(), (i + 1).to_be_bytes()].concat());
        let kept = (0..2000u64)
            .filter(|&i| clusters[i as usize] == etcds(i))
            .count();
        assert!((1800..2000).contains(&kept), "{kept} of 2000 are etcd's");
        assert!(short > 50, "{short}");
        assert_ne!(runtime_member_id(&urls, 7, |_| true), 0);
    }

    #[test]
    fn ids_match_etcd() {
        // Values etcd 3.4 derives for the same flags.
        let token = "etcd-cluster";
        let default = member_id(&["http://localhost:2380".into()], token);
        assert_eq!(default, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[default]), 0xcdf818194e3a8c32);
        let ids: Vec<u64> = [12380, 22380, 32380]
            .iter()
            .map(|p| member_id(&[format!("http://127.0.0.1:{p}")], token))
            .collect();
        assert_eq!(
            ids,
            vec![0xddd67b312462fd7b, 0x9e737febb6b99eee, 0x628170c800dbcee]
        );
        assert_eq!(cluster_id(&ids), 0x73841b4a9097c907);
    }
}
