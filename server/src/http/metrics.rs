//! `GET /metrics`: the member's metrics in Prometheus's text format
//! (see [`crate::metrics`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response};
use axum::routing::any;

use super::method_not_allowed;
use crate::shared::Shared;

pub fn routes(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        any(move |req: Request<Body>| {
            let s = shared.clone();
            async move {
                if req.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                let mut r = Response::new(Body::from(s.metrics.render(&s)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    // What Go's promhttp answers with.
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        }),
    )
}
