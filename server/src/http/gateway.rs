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
//! Streams (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/maintenance/snapshot`, `/v3/election/observe`) are not served yet.

use std::future::Future;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::routing::{any, MethodRouter};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::api;
use crate::pb::etcdserverpb as etcd;
use crate::pb::{v3electionpb, v3lockpb};
use crate::shared::Shared;

/// The largest body read: room for a request of `--max-request-bytes`
/// in base64 (the request itself is then held to the limit where gRPC
/// requests are, before it is proposed).
fn max_body(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_mul(2).max(1 << 20)
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

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// grpc-gateway's error body.
fn error(code: tonic::Code, message: &str) -> Response<Body> {
    // In grpc-gateway's order.
    let m = serde_json::Value::from(message).to_string();
    let body = format!("{{\"error\":{m},\"message\":{m},\"code\":{}}}", code as i32);
    json(http_status(code), body.into_bytes())
}

/// One unary call: JSON in, the service, JSON out.
async fn call<Req, Resp, F, Fut>(
    (req_name, resp_name): (&'static str, &'static str),
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
    let (Some(req_desc), Some(resp_desc)) = (descriptor(req_name), descriptor(resp_name)) else {
        return error(
            tonic::Code::Internal,
            "the gateway has no descriptor for this call",
        );
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => return error(tonic::Code::InvalidArgument, &e.to_string()),
    };
    // An empty body is an empty request (grpc-gateway takes EOF so).
    let decoded = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(DynamicMessage::new(req_desc))
    } else {
        let mut de = serde_json::Deserializer::from_slice(&body);
        let opts = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
        DynamicMessage::deserialize_with_options(req_desc, &mut de, &opts)
            .and_then(|m| de.end().map(|()| m))
    };
    let message = match decoded {
        Ok(m) => m,
        Err(e) => return error(tonic::Code::InvalidArgument, &e.to_string()),
    };
    let request = match Req::decode(prost::Message::encode_to_vec(&message).as_slice()) {
        Ok(r) => r,
        Err(e) => return error(tonic::Code::InvalidArgument, &e.to_string()),
    };
    let mut request = tonic::Request::new(request);
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
    let response = match f(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return error(s.code(), s.message()),
    };
    let out = match DynamicMessage::decode(
        resp_desc,
        prost::Message::encode_to_vec(&response).as_slice(),
    ) {
        Ok(m) => m,
        Err(e) => return error(tonic::Code::Internal, &e.to_string()),
    };
    let opts = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut buf);
    if let Err(e) = out.serialize_with_options(&mut ser, &opts) {
        return error(tonic::Code::Internal, &e.to_string());
    }
    json(StatusCode::OK, buf)
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

/// Adds `/v3/$path` and `/v3beta/$path` calling `$svc.$method`.
macro_rules! rpc {
    ($router:ident, $limit:ident, $path:literal, $svc:expr, $method:ident, $pkg:literal, $req:literal, $resp:literal) => {{
        let svc = $svc.clone();
        let names = (concat!($pkg, ".", $req), concat!($pkg, ".", $resp));
        let route = unary(names, $limit, move |r| {
            let svc = svc.clone();
            async move { svc.$method(r).await }
        });
        $router = $router
            .route(concat!("/v3/", $path), route.clone())
            .route(concat!("/v3beta/", $path), route);
    }};
}

/// The gateway's unary routes.
pub fn routes(shared: Arc<Shared>) -> axum::Router {
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
    let limit = max_body(shared.max_request_bytes);
    let el = api::election::Election(shared);
    let mut r = axum::Router::new();
    rpc!(
        r,
        limit,
        "kv/range",
        kv,
        range,
        "etcdserverpb",
        "RangeRequest",
        "RangeResponse"
    );
    rpc!(
        r,
        limit,
        "kv/put",
        kv,
        put,
        "etcdserverpb",
        "PutRequest",
        "PutResponse"
    );
    rpc!(
        r,
        limit,
        "kv/deleterange",
        kv,
        delete_range,
        "etcdserverpb",
        "DeleteRangeRequest",
        "DeleteRangeResponse"
    );
    rpc!(
        r,
        limit,
        "kv/txn",
        kv,
        txn,
        "etcdserverpb",
        "TxnRequest",
        "TxnResponse"
    );
    rpc!(
        r,
        limit,
        "kv/compaction",
        kv,
        compact,
        "etcdserverpb",
        "CompactionRequest",
        "CompactionResponse"
    );
    rpc!(
        r,
        limit,
        "lease/grant",
        lease,
        lease_grant,
        "etcdserverpb",
        "LeaseGrantRequest",
        "LeaseGrantResponse"
    );
    rpc!(
        r,
        limit,
        "lease/revoke",
        lease,
        lease_revoke,
        "etcdserverpb",
        "LeaseRevokeRequest",
        "LeaseRevokeResponse"
    );
    rpc!(
        r,
        limit,
        "kv/lease/revoke",
        lease,
        lease_revoke,
        "etcdserverpb",
        "LeaseRevokeRequest",
        "LeaseRevokeResponse"
    );
    rpc!(
        r,
        limit,
        "lease/timetolive",
        lease,
        lease_time_to_live,
        "etcdserverpb",
        "LeaseTimeToLiveRequest",
        "LeaseTimeToLiveResponse"
    );
    rpc!(
        r,
        limit,
        "kv/lease/timetolive",
        lease,
        lease_time_to_live,
        "etcdserverpb",
        "LeaseTimeToLiveRequest",
        "LeaseTimeToLiveResponse"
    );
    rpc!(
        r,
        limit,
        "lease/leases",
        lease,
        lease_leases,
        "etcdserverpb",
        "LeaseLeasesRequest",
        "LeaseLeasesResponse"
    );
    rpc!(
        r,
        limit,
        "cluster/member/add",
        cluster,
        member_add,
        "etcdserverpb",
        "MemberAddRequest",
        "MemberAddResponse"
    );
    rpc!(
        r,
        limit,
        "cluster/member/remove",
        cluster,
        member_remove,
        "etcdserverpb",
        "MemberRemoveRequest",
        "MemberRemoveResponse"
    );
    rpc!(
        r,
        limit,
        "cluster/member/update",
        cluster,
        member_update,
        "etcdserverpb",
        "MemberUpdateRequest",
        "MemberUpdateResponse"
    );
    rpc!(
        r,
        limit,
        "cluster/member/list",
        cluster,
        member_list,
        "etcdserverpb",
        "MemberListRequest",
        "MemberListResponse"
    );
    rpc!(
        r,
        limit,
        "cluster/member/promote",
        cluster,
        member_promote,
        "etcdserverpb",
        "MemberPromoteRequest",
        "MemberPromoteResponse"
    );
    rpc!(
        r,
        limit,
        "maintenance/alarm",
        m,
        alarm,
        "etcdserverpb",
        "AlarmRequest",
        "AlarmResponse"
    );
    rpc!(
        r,
        limit,
        "maintenance/status",
        m,
        status,
        "etcdserverpb",
        "StatusRequest",
        "StatusResponse"
    );
    rpc!(
        r,
        limit,
        "maintenance/defragment",
        m,
        defragment,
        "etcdserverpb",
        "DefragmentRequest",
        "DefragmentResponse"
    );
    // Hash and HashKV share a path in etcd 3.4's gateway; Hash answers.
    rpc!(
        r,
        limit,
        "maintenance/hash",
        m,
        hash,
        "etcdserverpb",
        "HashRequest",
        "HashResponse"
    );
    rpc!(
        r,
        limit,
        "maintenance/transfer-leadership",
        m,
        move_leader,
        "etcdserverpb",
        "MoveLeaderRequest",
        "MoveLeaderResponse"
    );
    rpc!(
        r,
        limit,
        "auth/enable",
        auth,
        auth_enable,
        "etcdserverpb",
        "AuthEnableRequest",
        "AuthEnableResponse"
    );
    rpc!(
        r,
        limit,
        "auth/disable",
        auth,
        auth_disable,
        "etcdserverpb",
        "AuthDisableRequest",
        "AuthDisableResponse"
    );
    rpc!(
        r,
        limit,
        "auth/authenticate",
        auth,
        authenticate,
        "etcdserverpb",
        "AuthenticateRequest",
        "AuthenticateResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/add",
        auth,
        user_add,
        "etcdserverpb",
        "AuthUserAddRequest",
        "AuthUserAddResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/get",
        auth,
        user_get,
        "etcdserverpb",
        "AuthUserGetRequest",
        "AuthUserGetResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/list",
        auth,
        user_list,
        "etcdserverpb",
        "AuthUserListRequest",
        "AuthUserListResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/delete",
        auth,
        user_delete,
        "etcdserverpb",
        "AuthUserDeleteRequest",
        "AuthUserDeleteResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/changepw",
        auth,
        user_change_password,
        "etcdserverpb",
        "AuthUserChangePasswordRequest",
        "AuthUserChangePasswordResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/grant",
        auth,
        user_grant_role,
        "etcdserverpb",
        "AuthUserGrantRoleRequest",
        "AuthUserGrantRoleResponse"
    );
    rpc!(
        r,
        limit,
        "auth/user/revoke",
        auth,
        user_revoke_role,
        "etcdserverpb",
        "AuthUserRevokeRoleRequest",
        "AuthUserRevokeRoleResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/add",
        auth,
        role_add,
        "etcdserverpb",
        "AuthRoleAddRequest",
        "AuthRoleAddResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/get",
        auth,
        role_get,
        "etcdserverpb",
        "AuthRoleGetRequest",
        "AuthRoleGetResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/list",
        auth,
        role_list,
        "etcdserverpb",
        "AuthRoleListRequest",
        "AuthRoleListResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/delete",
        auth,
        role_delete,
        "etcdserverpb",
        "AuthRoleDeleteRequest",
        "AuthRoleDeleteResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/grant",
        auth,
        role_grant_permission,
        "etcdserverpb",
        "AuthRoleGrantPermissionRequest",
        "AuthRoleGrantPermissionResponse"
    );
    rpc!(
        r,
        limit,
        "auth/role/revoke",
        auth,
        role_revoke_permission,
        "etcdserverpb",
        "AuthRoleRevokePermissionRequest",
        "AuthRoleRevokePermissionResponse"
    );
    rpc!(
        r,
        limit,
        "lock/lock",
        lock,
        lock,
        "v3lockpb",
        "LockRequest",
        "LockResponse"
    );
    rpc!(
        r,
        limit,
        "lock/unlock",
        lock,
        unlock,
        "v3lockpb",
        "UnlockRequest",
        "UnlockResponse"
    );
    rpc!(
        r,
        limit,
        "election/campaign",
        el,
        campaign,
        "v3electionpb",
        "CampaignRequest",
        "CampaignResponse"
    );
    rpc!(
        r,
        limit,
        "election/proclaim",
        el,
        proclaim,
        "v3electionpb",
        "ProclaimRequest",
        "ProclaimResponse"
    );
    rpc!(
        r,
        limit,
        "election/leader",
        el,
        leader,
        "v3electionpb",
        "LeaderRequest",
        "LeaderResponse"
    );
    rpc!(
        r,
        limit,
        "election/resign",
        el,
        resign,
        "v3electionpb",
        "ResignRequest",
        "ResignResponse"
    );
    r
}
