//! `/health`, `/livez`, `/readyz` and `/version`.
//!
//! etcd 3.4's `/health` is false (503) when the member has an alarm not
//! excluded by `?exclude=NAME`, when it knows no leader, or when a
//! linearizable read does not complete within a second; else true (200).
//! etcd 3.5 added `/livez` (the process answers) and `/readyz` (the same
//! checks as `/health`), each answering `ok` or 503.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::routing::any;

use super::{method_not_allowed, text};
use crate::shared::Shared;

/// The versions `/version` reports (etcd 3.4.23's, which clients such as
/// etcd3gw choose their API path by).
pub const SERVER_VERSION: &str = "3.4.23";
pub const CLUSTER_VERSION: &str = "3.4.0";

/// How long the health check's read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// `/health` alone (what `--listen-metrics-urls` serve beside
/// `/metrics`).
pub fn health_route(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().route(
        "/health",
        any(move |req: Request<Body>| {
            let s = shared.clone();
            async move {
                if req.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                let healthy = check(&s, &excluded(&req), true).await.is_ok();
                health_answer(healthy)
            }
        }),
    )
}

pub fn routes(shared: Arc<Shared>) -> axum::Router {
    let r = shared.clone();
    health_route(shared)
        .route(
            "/readyz",
            any(move |req: Request<Body>| {
                let s = r.clone();
                async move {
                    if req.method() != Method::GET {
                        return method_not_allowed("GET");
                    }
                    match check(&s, &[], false).await {
                        Ok(()) => text(StatusCode::OK, "ok"),
                        Err(why) => {
                            text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ok: {why}"))
                        }
                    }
                }
            }),
        )
        .route(
            "/livez",
            any(|req: Request<Body>| async move {
                if req.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                text(StatusCode::OK, "ok")
            }),
        )
        .route(
            "/version",
            any(|req: Request<Body>| async move {
                if req.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                let mut r = Response::new(Body::from(format!(
                    "{{\"etcdserver\":\"{SERVER_VERSION}\",\"etcdcluster\":\"{CLUSTER_VERSION}\"}}"
                )));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }),
        )
}

/// The alarms `?exclude=` names.
fn excluded(req: &Request<Body>) -> Vec<String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// etcd 3.4's health rule; the reason when unhealthy. `counted`: a
/// `/health` check, which etcd counts (`etcd_server_health_*`).
async fn check(s: &Shared, excluded: &[String], counted: bool) -> Result<(), String> {
    let alarms = s.alarms.lock().unwrap_or_else(|e| e.into_inner()).list();
    for a in alarms {
        let name = a.alarm().as_str_name().to_string();
        if !excluded.contains(&name) {
            tracing::warn!("/health error due to alarm {name} on {:x}", a.member_id);
            return Err(format!("alarm {name}"));
        }
    }
    // As etcd's, an alarm counts neither as a success nor as a failure.
    if s.leader() == 0 {
        tracing::warn!("/health error; no leader (status code 503)");
        if counted {
            s.metrics.health_failures.inc();
        }
        return Err("no leader".into());
    }
    let read = tokio::time::timeout(READ_TIMEOUT, s.read_index()).await;
    match &read {
        _ if !counted => {}
        Ok(Ok(())) => s.metrics.health_success.inc(),
        _ => s.metrics.health_failures.inc(),
    }
    match read {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!("/health error; linearizable read failed: {e}");
            Err(e.to_string())
        }
        Err(_) => {
            tracing::warn!("/health error; linearizable read timed out");
            Err("linearizable read timed out".into())
        }
    }
}

/// etcd's answer: `{"health":"true"}` with 200, or the same with "false"
/// and 503 (written by Go's http.Error, so with a newline).
fn health_answer(healthy: bool) -> Response<Body> {
    if healthy {
        let mut r = Response::new(Body::from("{\"health\":\"true\"}"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\"}")
    }
}
