//! etcd's keep-alive enforcement (`--grpc-keepalive-min-time`).
//!
//! etcd's gRPC server (grpc-go) holds clients to a ping policy: a client
//! that pings more often than the minimum time while it has streams open,
//! or at all within two hours while it has none, earns a strike; past two
//! strikes the server sends `GOAWAY` with `ENHANCE_YOUR_CALM` and the
//! debug data `too_many_pings`, and closes the connection. A grpc-go
//! client that gets that answer doubles its keep-alive time. A strike is
//! forgiven once the server has sent headers or data since the last ping.
//!
//! tonic's server (h2) answers every ping and has no such policy, so
//! [`PingPolicy`] follows the HTTP/2 frames of a client connection both
//! ways, by their 9-byte headers only (no payload is copied or parsed):
//! client PINGs, the streams a client opens (HEADERS) and that end (the
//! server's END_STREAM, or RST_STREAM either way), and the server's
//! HEADERS and DATA. When the policy is broken it lets the server finish
//! the frame it is writing, writes the GOAWAY itself, shuts the
//! connection down, and from then on reads end of file and writes fail.
//!
//! A connection that does not open with the HTTP/2 preface (HTTP/1.1 for
//! the JSON side) is passed through untouched.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// HTTP/2's preface and frame layout, as the `:authority` layer reads them.
use crate::authority::{FLAG_END_STREAM, FRAME_HEAD_LEN, PREFACE, TYPE_HEADERS};

/// grpc-go's default minimum ping interval when none is set.
pub const DEFAULT_MIN_TIME: Duration = Duration::from_secs(5 * 60);

/// How often a client with no stream open may ping (grpc-go's
/// `defaultPingTimeout`, with `PermitWithoutStream` off as etcd sets it).
const IDLE_MIN_TIME: Duration = Duration::from_secs(2 * 60 * 60);

/// Strikes a client may earn before it is disconnected (grpc-go's
/// `maxPingStrikes`).
const MAX_PING_STRIKES: u32 = 2;

const TYPE_DATA: u8 = 0x0;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// The header of one HTTP/2 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEAD_LEN]) -> FrameHead {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Follows a byte stream of HTTP/2 frames and reports each frame's header.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; FRAME_HEAD_LEN],
    /// Bytes of `head` seen so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    skip: usize,
}

impl Frames {
    /// Takes in `bytes`; pushes the header of each frame that starts in
    /// them onto `heads`.
    fn feed(&mut self, mut bytes: &[u8], heads: &mut Vec<FrameHead>) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEAD_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEAD_LEN {
                let h = FrameHead::parse(&self.head);
                self.have = 0;
                self.skip = h.len;
                heads.push(h);
            }
        }
    }

    /// How many bytes of `next` (what would follow) end the current frame:
    /// 0 at a frame boundary.
    fn to_boundary(&self, next: &[u8]) -> usize {
        if self.have == 0 {
            return self.skip.min(next.len());
        }
        let need = FRAME_HEAD_LEN - self.have;
        if next.len() < need {
            return next.len();
        }
        let mut head = self.head;
        head[self.have..].copy_from_slice(&next[..need]);
        (need + FrameHead::parse(&head).len).min(next.len())
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

enum GoAway {
    /// The client keeps to the policy.
    No,
    /// Due at the next frame boundary of what the server writes.
    Due,
    /// Being written: the frame and how much of it is out.
    Sending(Vec<u8>, usize),
    /// Written and the connection shut down.
    Sent,
}

/// A client connection under etcd's ping policy (see the module
/// documentation). With no policy it only passes bytes through.
pub struct PingPolicy<S> {
    inner: S,
    /// None: no policy, or not an HTTP/2 connection.
    min_time: Option<Duration>,
    /// Bytes of the client preface still to check.
    preface_seen: usize,
    read: Frames,
    written: Frames,
    heads: Vec<FrameHead>,
    /// Streams the client opened that have not ended.
    active: HashSet<u32>,
    last_stream: u32,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server has sent headers or data since the last ping.
    forgive: bool,
    goaway: GoAway,
}

impl<S> PingPolicy<S> {
    /// `inner` with the policy of `min_time` (None: no policy).
    pub fn new(inner: S, min_time: Option<Duration>) -> PingPolicy<S> {
        PingPolicy {
            inner,
            min_time,
            preface_seen: 0,
            read: Frames::default(),
            written: Frames::default(),
            heads: Vec::new(),
            active: HashSet::new(),
            last_stream: 0,
            last_ping: None,
            strikes: 0,
            forgive: false,
            goaway: GoAway::No,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// What the client sent.
    fn client_bytes(&mut self, mut bytes: &[u8]) {
        if self.min_time.is_none() {
            return;
        }
        if self.preface_seen < PREFACE.len() {
            let n = (PREFACE.len() - self.preface_seen).min(bytes.len());
            if bytes[..n] != PREFACE[self.preface_seen..self.preface_seen + n] {
                // Not HTTP/2 with prior knowledge: nothing to police.
                self.min_time = None;
                return;
            }
            self.preface_seen += n;
            bytes = &bytes[n..];
        }
        let mut heads = std::mem::take(&mut self.heads);
        self.read.feed(bytes, &mut heads);
        for h in heads.drain(..) {
            match h.kind {
                TYPE_PING if h.flags & FLAG_ACK == 0 => self.ping(),
                TYPE_HEADERS if h.stream != 0 => {
                    self.active.insert(h.stream);
                    self.last_stream = self.last_stream.max(h.stream);
                }
                TYPE_RST_STREAM => {
                    self.active.remove(&h.stream);
                }
                _ => {}
            }
        }
        self.heads = heads;
    }

    /// What the server wrote.
    fn server_bytes(&mut self, bytes: &[u8]) {
        if self.min_time.is_none() {
            return;
        }
        let mut heads = std::mem::take(&mut self.heads);
        self.written.feed(bytes, &mut heads);
        for h in heads.drain(..) {
            match h.kind {
                TYPE_HEADERS | TYPE_DATA => {
                    self.forgive = true;
                    if h.flags & FLAG_END_STREAM != 0 {
                        self.active.remove(&h.stream);
                    }
                }
                TYPE_RST_STREAM => {
                    self.active.remove(&h.stream);
                }
                _ => {}
            }
        }
        self.heads = heads;
    }

    /// A ping from the client, judged as grpc-go judges it.
    fn ping(&mut self) {
        let Some(min_time) = self.min_time else {
            return;
        };
        let now = Instant::now();
        let previous = self.last_ping.replace(now);
        if std::mem::take(&mut self.forgive) {
            self.strikes = 0;
            return;
        }
        let min = if self.active.is_empty() {
            IDLE_MIN_TIME
        } else {
            min_time
        };
        if previous.is_some_and(|p| now.duration_since(p) < min) {
            self.strikes += 1;
        }
        if self.strikes > MAX_PING_STRIKES && matches!(self.goaway, GoAway::No) {
            tracing::warn!(
                "a client pinged more often than every {} (--grpc-keepalive-min-time): closing its connection (too_many_pings)",
                humantime::format_duration(min)
            );
            self.goaway = GoAway::Due;
        }
    }

    fn goaway_frame(&self) -> Vec<u8> {
        let len = 8 + TOO_MANY_PINGS.len();
        let mut f = Vec::with_capacity(FRAME_HEAD_LEN + len);
        f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[TYPE_GOAWAY, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.last_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(TOO_MANY_PINGS);
        f
    }
}

impl<S: AsyncWrite + Unpin> PingPolicy<S> {
    /// Writes the due GOAWAY (the server's writes are at a frame
    /// boundary), flushes and shuts the connection down.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.goaway {
                GoAway::No | GoAway::Sent => return Poll::Ready(Ok(())),
                GoAway::Due => self.goaway = GoAway::Sending(self.goaway_frame(), 0),
                GoAway::Sending(frame, at) => {
                    while *at < frame.len() {
                        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &frame[*at..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *at += n;
                    }
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    // The client has what it needs; a failed close changes
                    // nothing for it.
                    let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    self.goaway = GoAway::Sent;
                }
            }
        }
    }

    fn closed() -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "connection closed: the client pinged too often (too_many_pings)",
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PingPolicy<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let owed = matches!(this.goaway, GoAway::Due | GoAway::Sending(..));
        // Once the GOAWAY is out, end of file: the server closes its side.
        if matches!(this.goaway, GoAway::Sent)
            || (owed && this.written.at_boundary() && this.poll_goaway(cx)?.is_ready())
        {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let (start, end) = (before, buf.filled().len());
        if end > start {
            this.client_bytes(&buf.filled()[start..end]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PingPolicy<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let allowed = match this.goaway {
            GoAway::No => buf.len(),
            GoAway::Sent => return Poll::Ready(Err(Self::closed())),
            // Only the rest of the frame being written, then the GOAWAY.
            GoAway::Due | GoAway::Sending(..) => {
                let n = this.written.to_boundary(buf);
                if n == 0 {
                    ready!(this.poll_goaway(cx))?;
                    return Poll::Ready(Err(Self::closed()));
                }
                n
            }
        };
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
        this.server_bytes(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !matches!(this.goaway, GoAway::No) {
            // The slow path, one slice at a time, near the end.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return Pin::new(this).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            this.server_bytes(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.goaway, GoAway::Sent) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for PingPolicy<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut stream = frame(TYPE_HEADERS, 0x4, 1, b"abc");
        stream.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
        stream.extend(frame(TYPE_DATA, FLAG_END_STREAM, 1, &[7; 300]));
        for cut in 1..stream.len() {
            let mut f = Frames::default();
            let mut heads = Vec::new();
            f.feed(&stream[..cut], &mut heads);
            assert_eq!(f.to_boundary(&stream[cut..]) > 0, !f.at_boundary());
            f.feed(&stream[cut..], &mut heads);
            let kinds: Vec<_> = heads.iter().map(|h| (h.kind, h.stream, h.len)).collect();
            assert_eq!(
                kinds,
                vec![(TYPE_HEADERS, 1, 3), (TYPE_PING, 0, 8), (TYPE_DATA, 1, 300)]
            );
            assert!(f.at_boundary());
        }
        // From a cut inside the second frame, to_boundary reaches its end.
        let mut f = Frames::default();
        let first = 9 + 3;
        f.feed(&stream[..first + 4], &mut Vec::new());
        assert_eq!(f.to_boundary(&stream[first + 4..]), 9 + 8 - 4);
    }

    #[test]
    fn pings_earn_strikes_as_grpc_go_counts_them() {
        let mut p = PingPolicy::new((), Some(Duration::from_secs(5)));
        let mut client = PREFACE.to_vec();
        client.extend(frame(TYPE_HEADERS, 0x4, 1, b""));
        p.client_bytes(&client);
        let ping = frame(TYPE_PING, 0, 0, &[0; 8]);
        // The first ping is free; then each early one is a strike.
        for _ in 0..3 {
            p.client_bytes(&ping);
            assert!(matches!(p.goaway, GoAway::No));
        }
        // Data from the server forgives.
        p.server_bytes(&frame(TYPE_DATA, 0, 1, b"x"));
        p.client_bytes(&ping);
        assert_eq!(p.strikes, 0);
        for _ in 0..2 {
            p.client_bytes(&ping);
        }
        assert!(matches!(p.goaway, GoAway::No));
        p.client_bytes(&ping);
        assert!(matches!(p.goaway, GoAway::Due));
        let g = p.goaway_frame();
        assert_eq!(&g[3..5], &[TYPE_GOAWAY, 0]);
        assert_eq!(&g[9..13], &1u32.to_be_bytes());
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&g[17..], TOO_MANY_PINGS);
        // Ping ACKs never count, and HTTP/1.1 is never policed.
        let mut q = PingPolicy::new((), Some(Duration::from_secs(5)));
        q.client_bytes(b"GET /health HTTP/1.1\r\n\r\n");
        assert!(q.min_time.is_none());
    }
}
