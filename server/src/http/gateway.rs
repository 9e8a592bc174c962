//! etcd 3.4's JSON gateway (grpc-gateway) for the unary RPCs: `POST
//! /v3/<service>/<call>` (and `/v3beta/...`, which etcd 3.4 still
//! accepts) with the request message as JSON, answered with the response
//! message as JSON.
//!
//! The JSON is mapped at run time from etcd's protos (the descriptors the
//! build compiles, through prost-reflect) the way grpc-gateway maps it:
//! proto field names, bytes as base64, 64-bit integers as strings, enums
//! by name, fields at their zero value left out, unknown fields ignored.
//! A request runs through the same service code as over gRPC, the
//! `Authorization` header being the token. An error is grpc-gateway's
//! `{"error", "message", "code"}` with the HTTP status it maps the gRPC
//! code to.
//!
//! Streams are answered as grpc-gateway streams them: chunked, one
//! `{"result": <message>}` line per message, an error as a last
//! `{"error": {...}}` object. `/v3/watch` and `/v3/lease/keepalive` read
//! the request body as a sequence of JSON objects, each passed on as it
//! arrives; the end of the body is the client closing its side (a
//! watch goes on, keep-alives end), and the client going away ends the
//! call. `/v3/maintenance/snapshot` and `/v3/election/observe` take one
//! request and stream their answers.

use std::future::Future;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::routing::{any, MethodRouter};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::api;
use crate::pb::etcdserverpb as etcd;
use crate::pb::{v3electionpb, v3lockpb};
use crate::shared::Shared;

/// The largest request message taken: etcd's gRPC limit,
/// `--max-request-bytes` plus 512 KiB (a request over
/// `--max-request-bytes` but under this is refused as over gRPC, with
/// "etcdserver: request is too large", before it is proposed).
fn max_message(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_add(crate::GRPC_OVERHEAD_BYTES)
}

/// The most JSON read for one message of at most `limit` bytes (base64
/// takes a third more, and the JSON around it a little).
fn max_json(limit: usize) -> usize {
    limit.saturating_mul(2)
}

/// A message over the limit, refused as etcd's gRPC server refuses it.
fn too_large(len: impl std::fmt::Display, limit: usize) -> Refused {
    Refused(
        tonic::Code::ResourceExhausted,
        format!("grpc: received message larger than max ({len} vs. {limit})"),
    )
}

/// etcd's protos, compiled by the build.
static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin")).as_ref())
        .map_err(|e| tracing::error!("the gateway's descriptors do not decode: {e}"))
        .ok()
});

fn descriptor(name: &str) -> Option<MessageDescriptor> {
    POOL.as_ref()?.get_message_by_name(name)
}

/// grpc-gateway's HTTP status for a gRPC code (runtime.HTTPStatusFromCode).
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::OK {
        // The gRPC header metadata, as grpc-gateway forwards it.
        h.insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
    }
    r
}

/// grpc-gateway's error body.
fn error(code: tonic::Code, message: &str) -> Response<Body> {
    // In grpc-gateway's order.
    let m = serde_json::Value::from(message).to_string();
    let body = format!("{{\"error\":{m},\"message\":{m},\"code\":{}}}", code as i32);
    json(http_status(code), body.into_bytes())
}

/// The gRPC request the service is given: the message, the
/// `Authorization` header as the token, the connection's TLS identity.
fn grpc_request<T>(parts: &axum::http::request::Parts, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
    {
        request.metadata_mut().insert("authorization", token);
    }
    if let Some(conn) = parts.extensions.get::<crate::tls::ConnInfo>() {
        request.extensions_mut().insert(conn.clone());
    }
    request
}

/// A request message from its JSON (`Value` or text), of at most `limit`
/// bytes encoded.
fn from_json<'de, Req, D>(desc: MessageDescriptor, de: D, limit: usize) -> Result<Req, Refused>
where
    Req: prost::Message + Default,
    D: serde::Deserializer<'de>,
{
    let bad = |e: String| Refused(tonic::Code::InvalidArgument, e);
    let opts = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(desc, de, &opts)
        .map_err(|e| bad(e.to_string()))?;
    let bytes = prost::Message::encode_to_vec(&message);
    if bytes.len() > limit {
        return Err(too_large(bytes.len(), limit));
    }
    Req::decode(bytes.as_slice()).map_err(|e| bad(e.to_string()))
}

/// The request of a call that takes one message: the whole body (an
/// empty one is an empty request, as grpc-gateway takes EOF).
async fn one_request<Req>(desc: MessageDescriptor, body: Body, limit: usize) -> Result<Req, Refused>
where
    Req: prost::Message + Default,
{
    let bad = |e: String| Refused(tonic::Code::InvalidArgument, e);
    let json = max_json(limit);
    let body = match axum::body::to_bytes(body, json).await {
        Ok(b) => b,
        Err(e)
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            return Err(too_large(format_args!("over {json} bytes of JSON"), limit));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req = from_json(desc, &mut de, limit)?;
    de.end().map_err(|e| bad(e.to_string()))?;
    Ok(req)
}

/// A response message as grpc-gateway writes it.
fn to_json<Resp: prost::Message>(desc: &MessageDescriptor, resp: &Resp) -> Result<Vec<u8>, String> {
    let out = DynamicMessage::decode(desc.clone(), prost::Message::encode_to_vec(resp).as_slice())
        .map_err(|e| e.to_string())?;
    let opts = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut buf);
    out.serialize_with_options(&mut ser, &opts)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A request the gateway answers with an error before any call.
struct Refused(tonic::Code, String);

impl Refused {
    fn answer(self) -> Response<Body> {
        error(self.0, &self.1)
    }
}

/// The descriptors of a call's request and response (refused when the
/// build lacks them).
fn descriptors(
    (req_name, resp_name): (&str, &str),
) -> Result<(MessageDescriptor, MessageDescriptor), Refused> {
    match (descriptor(req_name), descriptor(resp_name)) {
        (Some(req), Some(resp)) => Ok((req, resp)),
        _ => Err(Refused(
            tonic::Code::Internal,
            "the gateway has no descriptor for this call".into(),
        )),
    }
}

/// One unary call: JSON in, the service, JSON out.
async fn call<Req, Resp, F, Fut>(
    names: (&'static str, &'static str),
    limit: usize,
    req: Request<Body>,
    f: F,
) -> Response<Body>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    if req.method() != Method::POST {
        return super::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let (req_desc, resp_desc) = match descriptors(names) {
        Ok(d) => d,
        Err(r) => return r.answer(),
    };
    let (parts, body) = req.into_parts();
    let message = match one_request(req_desc, body, limit).await {
        Ok(m) => m,
        Err(r) => return r.answer(),
    };
    let response = match f(grpc_request(&parts, message)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return error(s.code(), s.message()),
    };
    match to_json(&resp_desc, &response) {
        Ok(buf) => json(StatusCode::OK, buf),
        Err(e) => error(tonic::Code::Internal, &e),
    }
}

/// The route for one unary call.
fn unary<Req, Resp, F, Fut>(names: (&'static str, &'static str), limit: usize, f: F) -> MethodRouter
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
{
    any(move |req: Request<Body>| {
        let f = f.clone();
        async move { call(names, limit, req, f).await }
    })
}

/// A stream's answer as grpc-gateway's ForwardResponseStream writes it.
/// The status is the first message's: 200, or the HTTP status of an
/// error that comes before any message.
async fn stream_answer<Resp>(
    desc: MessageDescriptor,
    answer: Result<tonic::Response<api::BoxStream<Resp>>, tonic::Status>,
) -> Response<Body>
where
    Resp: prost::Message + 'static,
{
    let mut stream = match answer {
        Ok(r) => r.into_inner(),
        Err(s) => return stream_error(s),
    };
    let first = match stream.next().await {
        None => return json(StatusCode::OK, Body::empty()),
        Some(Err(s)) => return stream_error(s),
        Some(Ok(m)) => m,
    };
    let chunk = move |m: Result<Resp, tonic::Status>| -> Result<Vec<u8>, std::convert::Infallible> {
        let e = match m {
            Ok(m) => match to_json(&desc, &m) {
                Ok(json) => {
                    let mut out = Vec::with_capacity(json.len() + 12);
                    out.extend_from_slice(b"{\"result\":");
                    out.extend_from_slice(&json);
                    out.extend_from_slice(b"}\n");
                    return Ok(out);
                }
                Err(e) => tonic::Status::internal(e),
            },
            Err(s) => s,
        };
        Ok(stream_error_chunk(&e))
    };
    // Everything up to and including the first error.
    let mut ended = false;
    let rest = stream.take_while(move |m| {
        let take = !ended;
        ended = m.is_err();
        take
    });
    let body = tokio_stream::once(Ok(first)).chain(rest).map(chunk);
    json(StatusCode::OK, Body::from_stream(body))
}

/// A stream's error object (grpc-gateway's StreamError).
fn stream_error_chunk(s: &tonic::Status) -> Vec<u8> {
    let status = http_status(s.code());
    // In grpc-gateway's order.
    let message = serde_json::Value::from(s.message());
    let reason = serde_json::Value::from(status.canonical_reason().unwrap_or(""));
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{message},\"http_status\":{reason}}}}}",
        s.code() as i32,
        status.as_u16(),
    )
    .into_bytes()
}

/// A stream that failed before its first message.
fn stream_error(s: tonic::Status) -> Response<Body> {
    json(http_status(s.code()), stream_error_chunk(&s))
}

/// The route for a call that takes one message and streams its answers.
fn server_stream<Req, Resp, F, Fut>(
    (req_name, resp_name): (&'static str, &'static str),
    limit: usize,
    f: F,
) -> MethodRouter
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<api::BoxStream<Resp>>, tonic::Status>>
        + Send
        + 'static,
{
    any(move |req: Request<Body>| {
        let f = f.clone();
        async move {
            if req.method() != Method::POST {
                return super::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let (req_desc, resp_desc) = match descriptors((req_name, resp_name)) {
                Ok(d) => d,
                Err(r) => return r.answer(),
            };
            let (parts, body) = req.into_parts();
            let message = match one_request(req_desc, body, limit).await {
                Ok(m) => m,
                Err(r) => return r.answer(),
            };
            stream_answer(resp_desc, f(grpc_request(&parts, message)).await).await
        }
    })
}

/// The request body of a streaming call: one JSON object after another
/// (whitespace between them), each read as soon as it is whole. Bytes are
/// scanned once as they come (nesting and strings followed), and an object
/// is parsed only when its closing brace has come.
struct JsonObjects {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    /// The largest object taken.
    limit: usize,
    /// How far `buf` has been scanned, and the scan's state there.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonObjects {
    fn new(body: Body, limit: usize) -> JsonObjects {
        JsonObjects {
            body: body.into_data_stream(),
            buf: Vec::new(),
            limit,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Where the first value in `buf` ends, if it has come whole; scans
    /// only what was not scanned before.
    fn value_end(&mut self) -> Option<usize> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(self.scanned);
                    }
                }
                // Not an object: serde says what is wrong with it.
                _ if self.depth == 0 && !b.is_ascii_whitespace() => return Some(self.buf.len()),
                _ => {}
            }
        }
        None
    }

    /// The next object; `None` at the end of the body.
    async fn next(&mut self) -> Option<Result<serde_json::Value, String>> {
        loop {
            if let Some(end) = self.value_end() {
                let parsed = serde_json::from_slice(&self.buf[..end]).map_err(|e| e.to_string());
                self.buf.drain(..end);
                self.scanned = 0;
                self.depth = 0;
                return Some(parsed);
            }
            if self.buf.len() > max_json(self.limit) {
                return Some(Err(format!(
                    "grpc: received message larger than max (over {} bytes of JSON vs. {})",
                    max_json(self.limit),
                    self.limit
                )));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e.to_string())),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return None,
                None => return Some(Err("unexpected EOF".into())),
            }
        }
    }
}

/// The route for a call that streams both ways (Watch, LeaseKeepAlive).
/// The first object is read before the call starts: a bad one is
/// grpc-gateway's error (code 2, as the gateway's decoder fails); after
/// it, a bad object or the end of the body closes the client's side.
fn bidi_stream<Req, Resp, F, Fut>(
    (req_name, resp_name): (&'static str, &'static str),
    limit: usize,
    f: F,
) -> MethodRouter
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(tonic::Request<ReceiverStream<Result<Req, tonic::Status>>>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = Result<tonic::Response<api::BoxStream<Resp>>, tonic::Status>>
        + Send
        + 'static,
{
    any(move |req: Request<Body>| {
        let f = f.clone();
        async move {
            if req.method() != Method::POST {
                return super::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let (req_desc, resp_desc) = match descriptors((req_name, resp_name)) {
                Ok(d) => d,
                Err(r) => return r.answer(),
            };
            let (parts, body) = req.into_parts();
            let mut objects = JsonObjects::new(body, limit);
            let (tx, rx) = mpsc::channel(16);
            match objects.next().await {
                // An empty body: the client's side closed at once.
                None => drop(tx),
                Some(first) => {
                    let first = first
                        .map_err(|e| Refused(tonic::Code::Unknown, e))
                        .and_then(|v| from_json::<Req, _>(req_desc.clone(), v, limit));
                    match first {
                        Ok(m) => {
                            let _ = tx.send(Ok(m)).await;
                        }
                        // The gateway's decoder fails with a plain error
                        // (code 2), the size check with gRPC's.
                        Err(Refused(tonic::Code::InvalidArgument, e)) => {
                            return error(tonic::Code::Unknown, &e)
                        }
                        Err(r) => return r.answer(),
                    }
                    // Reads on until the body ends or the call does.
                    tokio::spawn(async move {
                        loop {
                            let next = tokio::select! {
                                next = objects.next() => next,
                                () = tx.closed() => break,
                            };
                            let Some(Ok(v)) = next else { break };
                            let Ok(m) = from_json::<Req, _>(req_desc.clone(), v, limit) else {
                                break;
                            };
                            if tx.send(Ok(m)).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            let inbound = ReceiverStream::new(rx);
            stream_answer(resp_desc, f(grpc_request(&parts, inbound)).await).await
        }
    })
}

/// Adds `/v3/$path` and `/v3beta/$path`, one route per line:
/// `service, "path" => method(package.Request -> Response);`, made by
/// `$route` (unary, server_stream or bidi_stream).
macro_rules! routes {
    ($router:ident, $limit:ident, $route:ident; $($svc:ident, $path:literal => $method:ident($pkg:ident.$req:ident -> $resp:ident);)*) => {$(
        let svc = $svc.clone();
        let names = (
            concat!(stringify!($pkg), ".", stringify!($req)),
            concat!(stringify!($pkg), ".", stringify!($resp)),
        );
        let route = $route(names, $limit, move |r| {
            let svc = svc.clone();
            async move { svc.$method(r).await }
        });
        $router = $router
            .route(concat!("/v3/", $path), route.clone())
            .route(concat!("/v3beta/", $path), route);
    )*};
}

/// The gateway's routes.
pub fn routes(shared: Arc<Shared>, stopping: tokio::sync::watch::Receiver<bool>) -> axum::Router {
    use etcd::auth_server::Auth as _;
    use etcd::cluster_server::Cluster as _;
    use etcd::kv_server::Kv as _;
    use etcd::lease_server::Lease as _;
    use etcd::maintenance_server::Maintenance as _;
    use v3electionpb::election_server::Election as _;
    use v3lockpb::lock_server::Lock as _;
    let kv = api::kv::Kv(shared.clone());
    let lease = api::lease::Lease(shared.clone());
    let cluster = api::cluster::Cluster(shared.clone());
    let m = api::maintenance::Maintenance(shared.clone());
    let auth = api::auth::Auth(shared.clone());
    let lock = api::lock::Lock(shared.clone());
    let watch = api::watch::Watch(shared.clone(), stopping);
    let limit = max_message(shared.max_request_bytes);
    let el = api::election::Election(shared);
    let mut r = axum::Router::new();
    routes!(r, limit, unary;
        kv, "kv/range" => range(etcdserverpb.RangeRequest -> RangeResponse);
        kv, "kv/put" => put(etcdserverpb.PutRequest -> PutResponse);
        kv, "kv/deleterange" => delete_range(etcdserverpb.DeleteRangeRequest -> DeleteRangeResponse);
        kv, "kv/txn" => txn(etcdserverpb.TxnRequest -> TxnResponse);
        kv, "kv/compaction" => compact(etcdserverpb.CompactionRequest -> CompactionResponse);
        lease, "lease/grant" => lease_grant(etcdserverpb.LeaseGrantRequest -> LeaseGrantResponse);
        lease, "lease/revoke" => lease_revoke(etcdserverpb.LeaseRevokeRequest -> LeaseRevokeResponse);
        lease, "kv/lease/revoke" => lease_revoke(etcdserverpb.LeaseRevokeRequest -> LeaseRevokeResponse);
        lease, "lease/timetolive" => lease_time_to_live(etcdserverpb.LeaseTimeToLiveRequest -> LeaseTimeToLiveResponse);
        lease, "kv/lease/timetolive" => lease_time_to_live(etcdserverpb.LeaseTimeToLiveRequest -> LeaseTimeToLiveResponse);
        lease, "lease/leases" => lease_leases(etcdserverpb.LeaseLeasesRequest -> LeaseLeasesResponse);
        cluster, "cluster/member/add" => member_add(etcdserverpb.MemberAddRequest -> MemberAddResponse);
        cluster, "cluster/member/remove" => member_remove(etcdserverpb.MemberRemoveRequest -> MemberRemoveResponse);
        cluster, "cluster/member/update" => member_update(etcdserverpb.MemberUpdateRequest -> MemberUpdateResponse);
        cluster, "cluster/member/list" => member_list(etcdserverpb.MemberListRequest -> MemberListResponse);
        cluster, "cluster/member/promote" => member_promote(etcdserverpb.MemberPromoteRequest -> MemberPromoteResponse);
        m, "maintenance/alarm" => alarm(etcdserverpb.AlarmRequest -> AlarmResponse);
        m, "maintenance/status" => status(etcdserverpb.StatusRequest -> StatusResponse);
        m, "maintenance/defragment" => defragment(etcdserverpb.DefragmentRequest -> DefragmentResponse);
        // Hash and HashKV share a path in etcd 3.4's gateway; Hash answers.
        m, "maintenance/hash" => hash(etcdserverpb.HashRequest -> HashResponse);
        m, "maintenance/transfer-leadership" => move_leader(etcdserverpb.MoveLeaderRequest -> MoveLeaderResponse);
        auth, "auth/enable" => auth_enable(etcdserverpb.AuthEnableRequest -> AuthEnableResponse);
        auth, "auth/disable" => auth_disable(etcdserverpb.AuthDisableRequest -> AuthDisableResponse);
        auth, "auth/authenticate" => authenticate(etcdserverpb.AuthenticateRequest -> AuthenticateResponse);
        auth, "auth/user/add" => user_add(etcdserverpb.AuthUserAddRequest -> AuthUserAddResponse);
        auth, "auth/user/get" => user_get(etcdserverpb.AuthUserGetRequest -> AuthUserGetResponse);
        auth, "auth/user/list" => user_list(etcdserverpb.AuthUserListRequest -> AuthUserListResponse);
        auth, "auth/user/delete" => user_delete(etcdserverpb.AuthUserDeleteRequest -> AuthUserDeleteResponse);
        auth, "auth/user/changepw" => user_change_password(etcdserverpb.AuthUserChangePasswordRequest -> AuthUserChangePasswordResponse);
        auth, "auth/user/grant" => user_grant_role(etcdserverpb.AuthUserGrantRoleRequest -> AuthUserGrantRoleResponse);
        auth, "auth/user/revoke" => user_revoke_role(etcdserverpb.AuthUserRevokeRoleRequest -> AuthUserRevokeRoleResponse);
        auth, "auth/role/add" => role_add(etcdserverpb.AuthRoleAddRequest -> AuthRoleAddResponse);
        auth, "auth/role/get" => role_get(etcdserverpb.AuthRoleGetRequest -> AuthRoleGetResponse);
        auth, "auth/role/list" => role_list(etcdserverpb.AuthRoleListRequest -> AuthRoleListResponse);
        auth, "auth/role/delete" => role_delete(etcdserverpb.AuthRoleDeleteRequest -> AuthRoleDeleteResponse);
        auth, "auth/role/grant" => role_grant_permission(etcdserverpb.AuthRoleGrantPermissionRequest -> AuthRoleGrantPermissionResponse);
        auth, "auth/role/revoke" => role_revoke_permission(etcdserverpb.AuthRoleRevokePermissionRequest -> AuthRoleRevokePermissionResponse);
        lock, "lock/lock" => lock(v3lockpb.LockRequest -> LockResponse);
        lock, "lock/unlock" => unlock(v3lockpb.UnlockRequest -> UnlockResponse);
        el, "election/campaign" => campaign(v3electionpb.CampaignRequest -> CampaignResponse);
        el, "election/proclaim" => proclaim(v3electionpb.ProclaimRequest -> ProclaimResponse);
        el, "election/leader" => leader(v3electionpb.LeaderRequest -> LeaderResponse);
        el, "election/resign" => resign(v3electionpb.ResignRequest -> ResignResponse);
    );
    routes!(r, limit, server_stream;
        m, "maintenance/snapshot" => snapshot(etcdserverpb.SnapshotRequest -> SnapshotResponse);
        el, "election/observe" => observe(v3electionpb.LeaderRequest -> LeaderResponse);
    );
    routes!(r, limit, bidi_stream;
        watch, "watch" => serve(etcdserverpb.WatchRequest -> WatchResponse);
        lease, "lease/keepalive" => keep_alive(etcdserverpb.LeaseKeepAliveRequest -> LeaseKeepAliveResponse);
    );
    r
}
