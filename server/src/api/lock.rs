//! etcd's Lock service (see [`super::waiting`] for how waiting works).

use std::sync::Arc;

use tonic::{Request, Response};

use super::waiting::*;
use super::Rpc;
use crate::pb::v3lockpb as lk;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Lock(pub Arc<Shared>);

#[tonic::async_trait]
impl lk::lock_server::Lock for Lock {
    async fn lock(&self, req: Request<lk::LockRequest>) -> Rpc<lk::LockResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let mut r = req.into_inner();
        let s = &self.0;
        if r.lease == 0 {
            r.lease = session_lease(s).await?;
        }
        let key = member_key(&r.name, r.lease);
        authorize(s, &caller, Some(&r.name), &[&key])?;
        check_lease(s, r.lease)?;
        // Until the lock is ours, a call that ends any other way (an
        // error, or the client gone: its future is dropped) takes its
        // waiting key away, so that it can never own the lock later.
        let mut abandon = Abandon {
            shared: s.clone(),
            key: Some(key.clone()),
        };
        let (created, _) = ensure_key(s, &key, r.lease, b"").await?;
        let rev = wait_turn(s, &prefix_of(&r.name), created).await?;
        abandon.key = None;
        Ok(Response::new(lk::LockResponse {
            header: Some(s.header(rev)),
            key,
        }))
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Rpc<lk::UnlockResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let key = req.into_inner().key;
        authorize(&self.0, &caller, None, &[&key])?;
        let rev = delete_key(&self.0, key).await?;
        Ok(Response::new(lk::UnlockResponse {
            header: Some(self.0.header(rev)),
        }))
    }
}

/// Deletes a waiting lock key when dropped still armed.
struct Abandon {
    shared: Arc<Shared>,
    key: Option<Vec<u8>>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let s = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = delete_key(&s, key).await {
                    tracing::warn!("removing an abandoned lock key: {e}");
                }
            });
        }
    }
}
