//! The Auth service: enabling auth, logging in, users, roles and their
//! permissions (etcd's model: [`crate::auth`]).
//!
//! Changes go through raft, carrying the caller, and are checked when
//! applied (only root may manage auth once it is enabled). Passwords are
//! hashed here, one at a time (the `bcrypt` semaphore), before anything is
//! proposed. A login checks the password here, then proposes the token's
//! random part: every member records the same token. Lookups (user and
//! role get and list) are answered here after a read index.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Rpc;
use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, Authenticated, Caller};
use crate::shared::Shared;

#[derive(Clone)]
pub struct Auth(pub Arc<Shared>);

impl Auth {
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.0.refuse_on_learner()?;
        Ok(self.0.caller(req).await?)
    }

    /// Proposes an auth change; Ok once applied.
    async fn change(&self, op: Op, caller: &Caller) -> Result<pb::ResponseHeader, Status> {
        match self.0.propose_as(op, caller).await? {
            (Applied::Auth, rev) => Ok(self.0.header(rev)),
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    /// bcrypt's hash of `password`, computed off the runtime, one at a time.
    async fn hash(&self, password: String) -> Result<String, Status> {
        let _turn = self
            .0
            .bcrypt
            .acquire()
            .await
            .map_err(|_| ServerError::Stopped)?;
        let cost = self.0.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("hashing the password: {e}")))
    }

    /// Whether `password` is `name`'s (etcd's CheckPassword).
    async fn check_password(&self, name: &str, password: String) -> Result<(), Status> {
        let s = &self.0;
        if !s.auth.enabled() {
            return Err(ServerError::AuthNotEnabled.into());
        }
        let Some((hash, no_password)) = s.auth.password_of(name) else {
            return Err(ServerError::AuthFailed.into());
        };
        if no_password {
            return Err(Status::unknown(
                "auth: authentication failed, password was given for no password user",
            ));
        }
        let _turn = s.bcrypt.acquire().await.map_err(|_| ServerError::Stopped)?;
        let ok = tokio::task::spawn_blocking(move || {
            let hash = String::from_utf8_lossy(&hash).into_owned();
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        if ok {
            Ok(())
        } else {
            Err(ServerError::AuthFailed.into())
        }
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for Auth {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Rpc<pb::AuthEnableResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::AuthEnable(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Rpc<pb::AuthDisableResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::AuthDisable(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Rpc<pb::AuthStatusResponse> {
        self.caller(&req).await?;
        let s = &self.0;
        s.read_index().await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(s.header(s.store.current_revision())),
            enabled: s.auth.enabled(),
            auth_revision: s.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Rpc<pb::AuthenticateResponse> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        self.0.read_index().await?;
        self.check_password(&r.name, r.password).await?;
        let op = Op::Authenticated(Authenticated {
            name: r.name,
            token_prefix: crate::auth::tokens::SimpleTokens::new_prefix(),
        });
        match self.0.propose_as(op, &caller).await? {
            (Applied::Token(token), rev) => Ok(Response::new(pb::AuthenticateResponse {
                header: Some(self.0.header(rev)),
                token,
            })),
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn user_add(&self, req: Request<pb::AuthUserAddRequest>) -> Rpc<pb::AuthUserAddResponse> {
        let caller = self.caller(&req).await?;
        let mut r = req.into_inner();
        if r.name.is_empty() {
            return Err(ServerError::UserEmpty.into());
        }
        // Refused before the (slow) hash when the caller may not add users.
        self.0.auth.check_admin(Some(&caller))?;
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password = std::mem::take(&mut r.password);
        r.hashed_password = if no_password {
            String::new()
        } else {
            self.hash(password).await?
        };
        let header = self.change(Op::UserAdd(r), &caller).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(&self, req: Request<pb::AuthUserGetRequest>) -> Rpc<pb::AuthUserGetResponse> {
        let caller = self.caller(&req).await?;
        self.0.read_index().await?;
        let roles = self.0.auth.user_get(&caller, &req.into_inner().name)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Rpc<pb::AuthUserListResponse> {
        let caller = self.caller(&req).await?;
        self.0.read_index().await?;
        let users = self.0.auth.user_list(&caller)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Rpc<pb::AuthUserDeleteResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::UserDelete(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Rpc<pb::AuthUserChangePasswordResponse> {
        let caller = self.caller(&req).await?;
        let mut r = req.into_inner();
        self.0.auth.check_admin(Some(&caller))?;
        let password = std::mem::take(&mut r.password);
        r.hashed_password = self.hash(password).await?;
        let header = self.change(Op::UserChangePassword(r), &caller).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Rpc<pb::AuthUserGrantRoleResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::UserGrantRole(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Rpc<pb::AuthUserRevokeRoleResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::UserRevokeRole(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(&self, req: Request<pb::AuthRoleAddRequest>) -> Rpc<pb::AuthRoleAddResponse> {
        let caller = self.caller(&req).await?;
        let header = self.change(Op::RoleAdd(req.into_inner()), &caller).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(&self, req: Request<pb::AuthRoleGetRequest>) -> Rpc<pb::AuthRoleGetResponse> {
        let caller = self.caller(&req).await?;
        self.0.read_index().await?;
        let perm = self.0.auth.role_get(&caller, &req.into_inner().role)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Rpc<pb::AuthRoleListResponse> {
        let caller = self.caller(&req).await?;
        self.0.read_index().await?;
        let roles = self.0.auth.role_list(&caller)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Rpc<pb::AuthRoleDeleteResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::RoleDelete(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Rpc<pb::AuthRoleGrantPermissionResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::RoleGrantPermission(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Rpc<pb::AuthRoleRevokePermissionResponse> {
        let caller = self.caller(&req).await?;
        let header = self
            .change(Op::RoleRevokePermission(req.into_inner()), &caller)
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
