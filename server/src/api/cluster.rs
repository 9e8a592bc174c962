//! The Cluster service: the member list every member keeps (changes to it
//! are the next issue's; until then they answer UNIMPLEMENTED).

use std::sync::Arc;

use tonic::{Request, Response};

use super::Rpc;
use crate::pb::etcdserverpb as pb;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Cluster(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Cluster {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Rpc<pb::MemberListResponse> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            members: self.0.members.list().iter().map(|m| m.to_pb()).collect(),
        }))
    }
}
