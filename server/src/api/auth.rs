//! The Auth service: authentication is not enabled (the user and role
//! model is a later issue); what answers here says so.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Rpc;
use crate::pb::etcdserverpb as pb;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Auth(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::auth_server::Auth for Auth {
    async fn authenticate(
        &self,
        _req: Request<pb::AuthenticateRequest>,
    ) -> Rpc<pb::AuthenticateResponse> {
        self.0.refuse_on_learner()?;
        Err(Status::failed_precondition(
            "etcdserver: authentication is not enabled",
        ))
    }

    async fn auth_disable(
        &self,
        _req: Request<pb::AuthDisableRequest>,
    ) -> Rpc<pb::AuthDisableResponse> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
        }))
    }

    async fn auth_status(
        &self,
        _req: Request<pb::AuthStatusRequest>,
    ) -> Rpc<pb::AuthStatusResponse> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            enabled: false,
            auth_revision: 0,
        }))
    }
}
