//! `/failpoints`: fault injection at run time, in a build with the
//! `failpoints` feature only (the test command's build; a release build has
//! neither the points nor this route). As etcd's gofail endpoint:
//! `PUT /failpoints/NAME` with fail-rs actions as the body (`panic`,
//! `return(EIO)`, `1*off->return(ENOSPC)`, ...) arms a point, `DELETE`
//! disarms it, `GET /failpoints` lists the armed ones. The points are named
//! where they sit (`apply::entries`, `raft::ready`, `wal::fdatasync`, ...).

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{Response, StatusCode};
use axum::routing::get;

use super::text;

pub fn routes() -> axum::Router {
    axum::Router::new()
        .route("/failpoints", get(list))
        .route("/failpoints/{name}", axum::routing::put(arm).delete(disarm))
}

async fn list() -> Response<Body> {
    let mut out = String::new();
    for (name, actions) in fail::list() {
        out.push_str(&format!("{name}={actions}\n"));
    }
    Response::new(Body::from(out))
}

async fn arm(Path(name): Path<String>, body: Bytes) -> Response<Body> {
    let actions = String::from_utf8_lossy(&body);
    match fail::cfg(name.as_str(), actions.trim()) {
        Ok(()) => {
            tracing::warn!(failpoint = %name, actions = %actions.trim(), "failpoint armed");
            text(StatusCode::OK, "ok")
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &e),
    }
}

async fn disarm(Path(name): Path<String>) -> Response<Body> {
    fail::remove(name.as_str());
    text(StatusCode::OK, "ok")
}

/// Arms the points `FAILPOINTS` names at start (`name=actions;...`, fail-rs's
/// syntax), with a clear error for a bad one instead of fail-rs's panic.
pub fn arm_from_env(spec: &str) -> Result<(), String> {
    for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
        let (name, actions) = part
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS: {part:?} is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
    }
    Ok(())
}
