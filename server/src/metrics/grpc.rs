//! The gRPC metrics of the client port, as go-grpc-prometheus counts them
//! in etcd: `grpc_server_started_total`, `grpc_server_handled_total`
//! (with the status code by name), `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`, with `--metrics extensive`
//! `grpc_server_handling_seconds`, and etcd's bytes to and from clients
//! and requests per client API version.
//!
//! [`GrpcLayer`] is a layer over the client port's gRPC routes: it reads the call
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
use axum::http::{HeaderMap, HeaderName, Request, Response};
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
    started: IntCounter,
    handled: [IntCounter; 17],
    received: IntCounter,
    sent: IntCounter,
    handling: Option<Histogram>,
    /// `etcd_server_client_requests_total` for this method's kind, by
    /// [`CLIENT_VERSIONS`] index.
    client_requests: Vec<IntCounter>,
    /// etcd's bytes from and to clients (shared by every method).
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
}

/// The `client-api-version` values counted by name (etcd's clients send
/// their major.minor); any other is "unknown", so that no client can grow
/// the label set.
const CLIENT_VERSIONS: [&str; 8] = ["3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "unknown"];

/// The gRPC metrics, by path (`/etcdserverpb.KV/Range`).
pub struct GrpcMetrics {
    methods: HashMap<String, Arc<Method>>,
}

impl GrpcMetrics {
    pub(super) fn new(
        r: &mut Registrar<'_>,
        extensive: bool,
        client_requests: &prometheus::IntCounterVec,
        (received_bytes, sent_bytes): (&IntCounter, &IntCounter),
    ) -> R<GrpcMetrics> {
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
                let mut codes = Vec::with_capacity(CODES.len());
                for c in CODES {
                    codes.push(handled.get_metric_with_label_values(&[kind, service, method, c])?);
                }
                let handled: [IntCounter; 17] = match codes.try_into() {
                    Ok(a) => a,
                    Err(_) => return Err(prometheus::Error::Msg("gRPC codes".into())),
                };
                let call_kind = if *kind == "unary" { "unary" } else { "stream" };
                let mut by_version = Vec::with_capacity(CLIENT_VERSIONS.len());
                for v in CLIENT_VERSIONS {
                    by_version.push(client_requests.get_metric_with_label_values(&[call_kind, v])?);
                }
                let m = Method {
                    started: started.get_metric_with_label_values(&l)?,
                    handled,
                    received: received.get_metric_with_label_values(&l)?,
                    sent: sent.get_metric_with_label_values(&l)?,
                    handling: match &handling {
                        Some(h) => Some(h.get_metric_with_label_values(&l)?),
                        None => None,
                    },
                    client_requests: by_version,
                    received_bytes: received_bytes.clone(),
                    sent_bytes: sent_bytes.clone(),
                };
                methods.insert(format!("/{service}/{method}"), Arc::new(m));
            }
        }
        Ok(GrpcMetrics { methods })
    }
}

/// The layer over the client port's gRPC routes that counts each call
/// (a path that is no etcd method passes uncounted). A plain tower layer,
/// so a call pays for no boxed future.
#[derive(Clone)]
pub struct GrpcLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// [`GrpcLayer`]'s service.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request<Body>> for Track<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(method) = self.metrics.grpc.methods.get(req.uri().path()).cloned() else {
            return Tracked {
                inner: self.inner.call(req),
                call: None,
            };
        };
        method.started.inc();
        method.client_requests[client_api_version(req.headers())].inc();
        // Counted as canceled if the call is dropped before its status is
        // known (the client reset it, a deadline passed).
        let done = Done {
            start: method.handling.as_ref().map(|_| Instant::now()),
            method: method.clone(),
            finished: false,
        };
        let req = req.map(|body| {
            Body::new(Counted {
                inner: body,
                frames: Framing::default(),
                way: Way::Received,
                method,
                done: None,
            })
        });
        Tracked {
            inner: self.inner.call(req),
            call: Some(done),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer on its way: its body is wrapped to count what it
    /// sends and its status.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        call: Option<Done>,
    }
}

impl<F, E> std::future::Future for Tracked<F>
where
    F: std::future::Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(r)) => r,
        };
        let Some(done) = this.call.take() else {
            return Poll::Ready(Ok(response));
        };
        // A trailers-only answer carries its status in the headers.
        let mut response = response;
        etcd_size_error(response.headers_mut());
        if let Some(code) = grpc_status(response.headers()) {
            done.finish(code);
            return Poll::Ready(Ok(response));
        }
        let method = done.method.clone();
        Poll::Ready(Ok(response.map(|body| {
            Body::new(Counted {
                inner: body,
                frames: Framing::default(),
                way: Way::Sent,
                method,
                done: Some(done),
            })
        })))
    }
}

/// The index in [`CLIENT_VERSIONS`] of the client's `client-api-version`.
fn client_api_version(h: &HeaderMap) -> usize {
    static NAME: HeaderName = HeaderName::from_static("client-api-version");
    let v = h.get(&NAME).map(|v| v.as_bytes());
    CLIENT_VERSIONS
        .iter()
        .position(|known| v == Some(known.as_bytes()))
        .unwrap_or(CLIENT_VERSIONS.len() - 1)
}

/// tonic refuses a message over its decoding limit (`--max-request-bytes`
/// plus gRPC's 512 KiB) as OutOfRange in its own words; etcd's gRPC
/// server answers ResourceExhausted "grpc: received message larger than
/// max (N vs. M)", which clients see. This rewrites the one into the other
/// (the refusal comes before any handler runs, in a trailers-only answer).
fn etcd_size_error(h: &mut HeaderMap) {
    static MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    if grpc_status(h) != Some(11) {
        return;
    }
    let Some(text) = h.get(&MESSAGE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    // gRPC percent-encodes the message.
    let text = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    let Some(rest) = text.strip_prefix("Error, decoded message length too large: found ") else {
        return;
    };
    let Some((found, limit)) = rest
        .strip_suffix(" bytes")
        .and_then(|r| r.split_once(" bytes, the limit is: "))
    else {
        return;
    };
    let etcd = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(v) = axum::http::HeaderValue::from_str(&etcd) {
        h.insert(&MESSAGE, v);
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
}

/// gRPC's status code, as a code number (a number no code has is Unknown).
fn grpc_status(h: &HeaderMap) -> Option<usize> {
    static NAME: HeaderName = HeaderName::from_static("grpc-status");
    let v = h.get(&NAME)?.to_str().ok()?.parse::<usize>().ok()?;
    Some(if v < CODES.len() { v } else { 2 })
}

/// Which way a body's messages go.
#[derive(Clone, Copy)]
enum Way {
    Received,
    Sent,
}

impl Method {
    /// `bytes` more of a message going `way`; `whole`: its last byte.
    fn count(&self, way: Way, bytes: u64, whole: bool) {
        let (total, messages) = match way {
            Way::Received => (&self.received_bytes, &self.received),
            Way::Sent => (&self.sent_bytes, &self.sent),
        };
        if bytes > 0 {
            total.inc_by(bytes);
        }
        if whole {
            messages.inc();
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
    /// Feeds `data`; calls `count(bytes, whole)` for the bytes of messages
    /// it holds, `whole` once a message's last byte has come.
    fn feed(&mut self, mut data: &[u8], count: impl Fn(u64, bool)) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = (self.left as usize).min(data.len());
                self.left -= n as u64;
                data = &data[n..];
                count(n as u64, self.left == 0);
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.left == 0 {
                    count(0, true);
                }
            }
        }
    }
}

/// Counts a call handled once: with its status, or, dropped before one
/// came, as canceled.
struct Done {
    method: Arc<Method>,
    /// Set with `--metrics extensive` (the handling-time histogram).
    start: Option<Instant>,
    finished: bool,
}

impl Done {
    fn finish(mut self, code: usize) {
        self.record(code);
    }

    fn record(&mut self, code: usize) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.method.handled[code].inc();
        if let (Some(h), Some(start)) = (&self.method.handling, self.start) {
            h.observe(start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.record(1);
    }
}

/// A body whose gRPC messages are counted as they pass.
struct Counted {
    inner: Body,
    frames: Framing,
    way: Way,
    method: Arc<Method>,
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
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let (method, way) = (&this.method, this.way);
                    this.frames
                        .feed(data, |n, whole| method.count(way, n, whole));
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(done) = this.done.take() {
                        done.finish(grpc_status(trailers).unwrap_or(2));
                    }
                }
            }
            // An answer that ends without a status, or fails.
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done.finish(2);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.finish(13);
                }
            }
            Poll::Pending => {}
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
            let bytes = std::cell::Cell::new(0);
            for chunk in stream.chunks(split) {
                f.feed(chunk, |n, whole| {
                    bytes.set(bytes.get() + n);
                    if whole {
                        seen.borrow_mut().push(bytes.replace(0));
                    }
                });
            }
            assert_eq!(seen.into_inner(), vec![3, 0, 300], "split {split}");
        }
    }

    #[test]
    fn client_versions_other_than_etcds_are_unknown() {
        let mut h = HeaderMap::new();
        let name = |h: &HeaderMap| CLIENT_VERSIONS[client_api_version(h)];
        assert_eq!(name(&h), "unknown");
        h.insert("client-api-version", "3.4".parse().unwrap());
        assert_eq!(name(&h), "3.4");
        h.insert("client-api-version", "3.4.12345".parse().unwrap());
        assert_eq!(name(&h), "unknown");
    }
}
