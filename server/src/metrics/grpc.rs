//! The gRPC metrics of the client port, as go-grpc-prometheus counts them
//! in etcd: `grpc_server_started_total`, `grpc_server_handled_total`
//! (with the status code by name), `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`, with `--metrics extensive`
//! `grpc_server_handling_seconds`, and etcd's bytes to and from clients
//! and requests per client API version.
//!
//! [`track`] is a layer over the client port's router: it reads the call
//! from the path, counts the messages and their bytes as the bodies pass
//! (gRPC's 5-byte prefix read off the stream, so a message split across
//! frames counts once), and the status from the trailers. Every etcd
//! method's series exist from the start, at zero (etcd's
//! `grpc_prometheus.Register`); paths that are no etcd method are not
//! counted.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, Response};
use http_body::Frame;
use prometheus::{Histogram, HistogramOpts, IntCounter};

use super::{Metrics, Registrar, R};
use crate::error::GO_CODE_NAMES as CODES;

/// etcd's gRPC services and their methods, with each method's kind.
const METHODS: &[(&str, &[(&str, &str)])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("Range", "unary"),
            ("Put", "unary"),
            ("DeleteRange", "unary"),
            ("Txn", "unary"),
            ("Compact", "unary"),
        ],
    ),
    ("etcdserverpb.Watch", &[("Watch", "bidi_stream")]),
    (
        "etcdserverpb.Lease",
        &[
            ("LeaseGrant", "unary"),
            ("LeaseRevoke", "unary"),
            ("LeaseKeepAlive", "bidi_stream"),
            ("LeaseTimeToLive", "unary"),
            ("LeaseLeases", "unary"),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            ("MemberAdd", "unary"),
            ("MemberRemove", "unary"),
            ("MemberUpdate", "unary"),
            ("MemberList", "unary"),
            ("MemberPromote", "unary"),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("Alarm", "unary"),
            ("Status", "unary"),
            ("Defragment", "unary"),
            ("Hash", "unary"),
            ("HashKV", "unary"),
            ("Snapshot", "server_stream"),
            ("MoveLeader", "unary"),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            ("AuthEnable", "unary"),
            ("AuthDisable", "unary"),
            ("Authenticate", "unary"),
            ("UserAdd", "unary"),
            ("UserGet", "unary"),
            ("UserList", "unary"),
            ("UserDelete", "unary"),
            ("UserChangePassword", "unary"),
            ("UserGrantRole", "unary"),
            ("UserRevokeRole", "unary"),
            ("RoleAdd", "unary"),
            ("RoleGet", "unary"),
            ("RoleList", "unary"),
            ("RoleDelete", "unary"),
            ("RoleGrantPermission", "unary"),
            ("RoleRevokePermission", "unary"),
        ],
    ),
    ("v3lockpb.Lock", &[("Lock", "unary"), ("Unlock", "unary")]),
    (
        "v3electionpb.Election",
        &[
            ("Campaign", "unary"),
            ("Proclaim", "unary"),
            ("Leader", "unary"),
            ("Observe", "server_stream"),
            ("Resign", "unary"),
        ],
    ),
];

/// One method's series, resolved once.
struct Method {
    unary: bool,
    started: IntCounter,
    handled: [IntCounter; 17],
    received: IntCounter,
    sent: IntCounter,
    handling: Option<Histogram>,
}

/// The gRPC metrics, by path (`/etcdserverpb.KV/Range`).
pub struct GrpcMetrics {
    methods: HashMap<String, Arc<Method>>,
}

impl GrpcMetrics {
    pub(super) fn new(r: &mut Registrar<'_>, extensive: bool) -> R<GrpcMetrics> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let with_code = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        let started = r.counter_vec(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &labels,
        )?;
        let handled = r.counter_vec(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &with_code,
        )?;
        let received = r.counter_vec(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            &labels,
        )?;
        let sent = r.counter_vec(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            &labels,
        )?;
        let handling = if extensive {
            Some(r.add(prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                ),
                &labels,
            )?)?)
        } else {
            None
        };
        let mut methods = HashMap::new();
        for (service, calls) in METHODS {
            for (method, kind) in *calls {
                let l = [*kind, *service, *method];
                let code =
                    |c: &str| handled.get_metric_with_label_values(&[kind, service, method, c]);
                let mut codes = Vec::with_capacity(CODES.len());
                for c in CODES {
                    codes.push(code(c)?);
                }
                let handled: [IntCounter; 17] = match codes.try_into() {
                    Ok(a) => a,
                    Err(_) => return Err(prometheus::Error::Msg("gRPC codes".into())),
                };
                let m = Method {
                    unary: *kind == "unary",
                    started: started.get_metric_with_label_values(&l)?,
                    handled,
                    received: received.get_metric_with_label_values(&l)?,
                    sent: sent.get_metric_with_label_values(&l)?,
                    handling: match &handling {
                        Some(h) => Some(h.get_metric_with_label_values(&l)?),
                        None => None,
                    },
                };
                methods.insert(format!("/{service}/{method}"), Arc::new(m));
            }
        }
        Ok(GrpcMetrics { methods })
    }
}

/// Counts a gRPC call on the client port (other requests pass untouched).
pub async fn track(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = match grpc {
        true => metrics.grpc.methods.get(req.uri().path()).cloned(),
        false => None,
    };
    let Some(method) = method else {
        return next.run(req).await;
    };
    method.started.inc();
    let version = client_api_version(req.headers());
    let kind = if method.unary { "unary" } else { "stream" };
    if let Ok(c) = metrics
        .client_requests
        .get_metric_with_label_values(&[kind, version])
    {
        c.inc();
    }
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = Body::new(Counted {
        inner: body,
        frames: Framing::default(),
        on_message: Counting::Received(metrics.clone(), method.clone()),
        done: None,
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    // A trailers-only answer carries its status in the headers.
    let status = grpc_status(&parts.headers);
    let done = Done {
        method: method.clone(),
        start,
    };
    if let Some(code) = status {
        done.finish(code);
        return Response::from_parts(parts, body);
    }
    let body = Body::new(Counted {
        inner: body,
        frames: Framing::default(),
        on_message: Counting::Sent(metrics, method),
        done: Some(done),
    });
    Response::from_parts(parts, body)
}

/// etcd's `client-api-version` label: the client's metadata, or
/// "unknown". Only short version-like values are taken, so that no client
/// can grow the label set without bound.
fn client_api_version(h: &HeaderMap) -> &str {
    match h.get("client-api-version").and_then(|v| v.to_str().ok()) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 8
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            v
        }
        _ => "unknown",
    }
}

fn grpc_status(h: &HeaderMap) -> Option<usize> {
    let v = h.get("grpc-status")?.to_str().ok()?.parse::<usize>().ok()?;
    Some(v.min(CODES.len() - 1))
}

/// Which way a body's messages go.
enum Counting {
    Received(Arc<Metrics>, Arc<Method>),
    Sent(Arc<Metrics>, Arc<Method>),
}

impl Counting {
    fn message(&self, bytes: u64) {
        match self {
            Counting::Received(m, method) => {
                m.client_received_bytes.inc_by(bytes);
                method.received.inc();
            }
            Counting::Sent(m, method) => {
                m.client_sent_bytes.inc_by(bytes);
                method.sent.inc();
            }
        }
    }
}

/// Reads gRPC's length-prefixed messages off a body's data frames.
#[derive(Default)]
struct Framing {
    /// Bytes of the current prefix read so far.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    left: u64,
}

impl Framing {
    /// Feeds `data`; calls `message(len)` for each message whose prefix
    /// has been read.
    fn feed(&mut self, mut data: &[u8], message: impl Fn(u64)) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = (self.left as usize).min(data.len());
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                self.left = u64::from(len);
                message(self.left);
            }
        }
    }
}

/// Counts a call handled once, when its status is known (or, for a call
/// whose answer was dropped unfinished, as canceled).
struct Done {
    method: Arc<Method>,
    start: Instant,
}

impl Done {
    fn finish(&self, code: usize) {
        self.method.handled[code].inc();
        if let Some(h) = &self.method.handling {
            h.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

/// A body whose gRPC messages are counted as they pass.
struct Counted {
    inner: Body,
    frames: Framing,
    on_message: Counting,
    /// For an answer: counts the call handled at its trailers.
    done: Option<Done>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let on = &this.on_message;
                this.frames.feed(data, |len| on.message(len));
            } else if let Some(trailers) = frame.trailers_ref() {
                if let Some(done) = this.done.take() {
                    done.finish(grpc_status(trailers).unwrap_or(2));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            // The client went away before the status was sent.
            done.finish(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_once_however_the_frames_split_them() {
        let msg = |len: u32| {
            let mut v = vec![0u8];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend(std::iter::repeat_n(7u8, len as usize));
            v
        };
        let mut stream = msg(3);
        stream.extend(msg(0));
        stream.extend(msg(300));
        for split in [1, 2, 4, 5, 6, 7, 64, 1000] {
            let seen = std::cell::RefCell::new(Vec::new());
            let mut f = Framing::default();
            for chunk in stream.chunks(split) {
                f.feed(chunk, |len| seen.borrow_mut().push(len));
            }
            assert_eq!(seen.into_inner(), vec![3, 0, 300], "split {split}");
        }
    }

    #[test]
    fn client_versions_outside_a_short_version_shape_are_unknown() {
        let mut h = HeaderMap::new();
        assert_eq!(client_api_version(&h), "unknown");
        h.insert("client-api-version", "3.4".parse().unwrap());
        assert_eq!(client_api_version(&h), "3.4");
        h.insert("client-api-version", "3.4.0-rc.1xxxxx".parse().unwrap());
        assert_eq!(client_api_version(&h), "unknown");
    }
}
