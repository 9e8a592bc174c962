//! # The HTTP/1.1 side of the client port
//!
//! etcd serves plain HTTP beside gRPC on its client URLs; so does
//! kvserver, on the same listeners (behind TLS when the URL is
//! `https://`). A request is gRPC when it is HTTP/2 with
//! `content-type: application/grpc`; everything else is routed here.
//!
//! - [`health`]: `/health` (etcd 3.4's rule), `/livez` and `/readyz`
//!   (etcd 3.5's), `/version`.
//! - [`gateway`]: etcd's JSON gateway, `POST /v3/...`.
//! - [`metrics`]: `/metrics`, which `--listen-metrics-urls` also serve
//!   (with `/health` and nothing else: [`metrics_router`]).
//! - `failpoints`: `/failpoints`, only in a build with the `failpoints`
//!   feature (fault-injection tests).
//!
//! ## Invariants (etcd 3.4's answers, checked against the real one)
//! - Every answer carries `--cors` (`*`): `Access-Control-Allow-Origin:
//!   *` and etcd's allowed methods and headers; `OPTIONS` gets 200 and an
//!   empty body.
//! - A path nothing serves gets 404 `404 page not found`; a method a route
//!   does not take gets 405 `Method Not Allowed` with `Allow`.

#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod gateway;
pub mod health;
pub mod metrics;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::shared::Shared;

/// The routes of the client port's HTTP side.
pub fn router(shared: Arc<Shared>, stopping: tokio::sync::watch::Receiver<bool>) -> axum::Router {
    let r = health::routes(shared.clone())
        .merge(metrics::routes(shared.clone()))
        .merge(gateway::routes(shared, stopping));
    #[cfg(feature = "failpoints")]
    let r = r.merge(failpoints::routes());
    r
}

/// What `--listen-metrics-urls` serve: `/metrics` and `/health`.
pub fn metrics_router(shared: Arc<Shared>) -> axum::Router {
    health::health_route(shared.clone()).merge(metrics::routes(shared))
}

/// A plain-text answer as Go's `http.Error` writes it (the text and a
/// newline).
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{body}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// 405 for a route that takes only `allow`.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether a request is gRPC (HTTP/2 with `content-type:
/// application/grpc...`; the rest of the client port is HTTP).
fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What no route serves: gRPC's UNIMPLEMENTED for a gRPC request (as
/// tonic answers), else Go's 404.
pub async fn fallback(req: Request<Body>) -> Response<Body> {
    if is_grpc(&req) {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let mut r = if req.method() == Method::OPTIONS {
        Response::new(Body::empty())
    } else {
        text(StatusCode::NOT_FOUND, "404 page not found")
    };
    cors_headers(&mut r);
    r
}

/// Adds etcd's CORS headers (`--cors '*'`) to an HTTP answer; gRPC
/// answers pass untouched.
pub async fn cors(req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let grpc = is_grpc(&req);
    let options = req.method() == Method::OPTIONS;
    let mut r = if options && !grpc {
        Response::new(Body::empty())
    } else {
        next.run(req).await
    };
    if !grpc {
        cors_headers(&mut r);
    }
    r
}

/// etcd's CORS headers (`--cors '*'`).
fn cors_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}
