//! The Watch service: one stream carries many watchers; events come from
//! this member's key space, so a watch on any member sees every change in
//! order.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, Rpc};
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::Caller;
use crate::pb::mvccpb;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Watch(pub Arc<Shared>, pub tokio::sync::watch::Receiver<bool>);

#[tonic::async_trait]
impl pb::watch_server::Watch for Watch {
    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Rpc<BoxStream<pb::WatchResponse>> {
        self.serve(req).await
    }
}

impl Watch {
    /// One watch stream fed by `req`'s messages, whether they come from
    /// gRPC or from the JSON gateway. The client's closing its side
    /// (etcd's CloseSend) ends no watcher; dropping the answer stream ends
    /// them all.
    pub async fn serve<S>(&self, req: Request<S>) -> Rpc<BoxStream<pb::WatchResponse>>
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        self.0.refuse_on_learner()?;
        // Checked now and again at every watch created on the stream (the
        // token may have been dropped meanwhile).
        let caller = self.0.caller(&req).await?;
        let token = crate::shared::token(req.metadata()).map(str::to_string);
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        let mut stopping = self.1.clone();
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            let (stream, mut events) = shared.store.watch_stream(256);
            struct Open(prometheus::IntGauge);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.dec();
                }
            }
            shared.metrics.watch_streams.inc();
            let _open = Open(shared.metrics.watch_streams.clone());
            let mut fragment: std::collections::HashSet<i64> = Default::default();
            let mut reading = true;
            loop {
                tokio::select! {
                    msg = inbound.next(), if reading => {
                        let msg = match msg {
                            Some(Ok(msg)) => msg,
                            // The client closed its side: the watchers go on.
                            None => {
                                reading = false;
                                continue;
                            }
                            Some(Err(_)) => break,
                        };
                        let now = match &token {
                            None => Ok(caller.clone()),
                            Some(t) => shared
                                .auth
                                .resolve(t)
                                .ok_or(ServerError::InvalidAuthToken),
                        };
                        let Some(out) = watch_request(&shared, &stream, &mut fragment, msg, now) else {
                            continue;
                        };
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    resp = events.recv() => {
                        let Some(resp) = resp else { break };
                        let mut sent = true;
                        for out in watch_responses(&shared, &fragment, resp) {
                            let events = out.events.len() as u64;
                            if tx.send(Ok(out)).await.is_err() {
                                sent = false;
                                break;
                            }
                            shared.metrics.events.inc_by(events);
                        }
                        if !sent {
                            break;
                        }
                    }
                    // The client went away.
                    () = tx.closed() => break,
                    _ = stopping.changed() => break,
                }
            }
            // Dropping the stream removes its watchers.
            drop(stream);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn watch_request(
    shared: &Shared,
    stream: &mvcc::WatchStream,
    fragment: &mut std::collections::HashSet<i64>,
    msg: pb::WatchRequest,
    caller: Result<Caller, ServerError>,
) -> Option<pb::WatchResponse> {
    use pb::watch_request::RequestUnion as U;
    let header = Some(shared.header(shared.store.current_revision()));
    match msg.request_union? {
        U::CreateRequest(c) => {
            // Reading what it watches: refused as etcd refuses a watch,
            // created and canceled at once with the reason.
            let allowed = caller
                .and_then(|caller| shared.auth.check_read(Some(&caller), &c.key, &c.range_end));
            if let Err(e) = allowed {
                // etcd 3.4 names the refusal as Go's gRPC prints a status.
                let e = match e {
                    ServerError::InvalidAuthToken
                    | ServerError::AuthOldRevision
                    | ServerError::UserEmpty => e,
                    _ => ServerError::PermissionDenied,
                };
                return Some(pb::WatchResponse {
                    header,
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: crate::error::go_status_text(&Status::from(e)),
                    ..Default::default()
                });
            }
            let no_put = c
                .filters
                .contains(&(pb::watch_create_request::FilterType::Noput as i32));
            let no_delete = c
                .filters
                .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
            let req = mvcc::WatchRequest {
                key: c.key.clone(),
                range_end: c.range_end.clone(),
                start_revision: c.start_revision,
                prev_kv: c.prev_kv,
                no_put,
                no_delete,
                progress_notify: c.progress_notify,
                watch_id: c.watch_id,
            };
            Some(match stream.watch(&req) {
                Ok(id) => {
                    if c.fragment {
                        fragment.insert(id);
                    }
                    pb::WatchResponse {
                        header,
                        watch_id: id,
                        created: true,
                        ..Default::default()
                    }
                }
                // etcd 3.4: a refused watch is created and canceled at once.
                Err(e) => pb::WatchResponse {
                    header,
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                },
            })
        }
        U::CancelRequest(c) => {
            if stream.cancel(c.watch_id) {
                fragment.remove(&c.watch_id);
                Some(pb::WatchResponse {
                    header,
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
            } else {
                None
            }
        }
        U::ProgressRequest(_) => {
            stream.request_progress();
            None
        }
    }
}

/// The wire responses for one mvcc watch response: events converted, a
/// compaction turned into a cancel, large responses split when the watcher
/// asked for fragments.
fn watch_responses(
    shared: &Shared,
    fragment: &std::collections::HashSet<i64>,
    r: mvcc::WatchResponse,
) -> Vec<pb::WatchResponse> {
    let header = Some(shared.header(r.revision));
    if r.compact_revision != 0 {
        return vec![pb::WatchResponse {
            header,
            watch_id: r.watch_id,
            canceled: true,
            compact_revision: r.compact_revision,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        }];
    }
    let events: Vec<mvccpb::Event> = r
        .events
        .into_iter()
        .map(|e| mvccpb::Event {
            r#type: match e.kind {
                mvcc::EventKind::Put => mvccpb::event::EventType::Put as i32,
                mvcc::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
            },
            kv: Some(e.kv),
            prev_kv: e.prev_kv,
        })
        .collect();
    let whole = pb::WatchResponse {
        header,
        watch_id: r.watch_id,
        events,
        ..Default::default()
    };
    if !fragment.contains(&r.watch_id) || whole.encoded_len() <= shared.max_request_bytes {
        return vec![whole];
    }
    let mut out = Vec::new();
    let mut part = pb::WatchResponse {
        header,
        watch_id: r.watch_id,
        fragment: true,
        ..Default::default()
    };
    for e in whole.events {
        if !part.events.is_empty()
            && part.encoded_len() + e.encoded_len() > shared.max_request_bytes
        {
            let next = pb::WatchResponse {
                header,
                watch_id: r.watch_id,
                fragment: true,
                ..Default::default()
            };
            out.push(std::mem::replace(&mut part, next));
        }
        part.events.push(e);
    }
    part.fragment = false;
    out.push(part);
    out
}
