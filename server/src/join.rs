//! Joining a running cluster (`--initial-cluster-state existing`): the new
//! member asks the peers in `--initial-cluster` for the member list, finds
//! itself in it by its peer URLs (it must have been added with
//! `etcdctl member add` first; a peer that has not applied the addition
//! yet is passed over, for up to `ASK_FOR`) and takes its ID and the
//! cluster's from it.
//! Its raft configuration and key space then come with the leader's
//! snapshot.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::StartError;
use crate::membership::{initial_cluster, Member};
use crate::pb::kvserverpb::MembersRequest;
use crate::transport::Transport;

/// How long a joining member keeps asking its peers.
const ASK_FOR: Duration = Duration::from_secs(10);

/// What a joining member learnt from the cluster.
#[derive(Debug, Clone)]
pub struct Joined {
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

/// Asks the other members of `--initial-cluster` for the cluster.
pub async fn fetch(cfg: &Config, dialer: &crate::tls::Dialer) -> Result<Joined, StartError> {
    let initial = initial_cluster(cfg)?;
    let mut mine = cfg.peer_urls();
    mine.sort();
    let urls: Vec<String> = initial
        .members
        .iter()
        .filter(|m| m.name != cfg.name)
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let deadline = Instant::now() + ASK_FOR;
    let mut last_error = String::from("no other member in --initial-cluster");
    // The member list of the last peer that answered without this member.
    let mut not_listed: Option<String> = None;
    loop {
        for url in &urls {
            let Some(mut client) = Transport::client_for(dialer, std::slice::from_ref(url)) else {
                last_error = format!("{url}: not a URL");
                continue;
            };
            let asked =
                tokio::time::timeout(Duration::from_secs(2), client.members(MembersRequest {}));
            let r = match asked.await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    last_error = format!("{url}: {}", e.message());
                    continue;
                }
                Err(_) => {
                    last_error = format!("{url}: no answer within 2 s");
                    continue;
                }
            };
            let members: Vec<Member> = r.members.into_iter().map(Member::from_pb).collect();
            let me = members.iter().find(|m| {
                let mut theirs = m.peer_urls.clone();
                theirs.sort();
                theirs == mine
            });
            let Some(me) = me else {
                // This peer may not have applied the member's addition yet:
                // the others are asked, and this one again, until the
                // deadline.
                let list: Vec<String> = members
                    .iter()
                    .map(|m| format!("{:x}={}", m.id, m.peer_urls.join(",")))
                    .collect();
                not_listed = Some(list.join(", "));
                continue;
            };
            if r.removed.contains(&me.id) {
                return Err(StartError::Fatal(
                    "the member has been permanently removed from the cluster".into(),
                ));
            }
            tracing::info!(
                member_id = format!("{:x}", me.id),
                cluster_id = format!("{:x}", r.cluster_id),
                "joining the cluster through {url}"
            );
            return Ok(Joined {
                member_id: me.id,
                cluster_id: r.cluster_id,
                members,
            });
        }
        if Instant::now() >= deadline {
            return Err(match not_listed {
                Some(list) => StartError::NotAMember(mine.join(","), list),
                None => StartError::NoPeerAnswered(last_error),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
