//! Accept HTTP/2 requests whose `:authority` carries a URL scheme.
//!
//! # Why
//!
//! etcdctl 3.4 (a grpc-go client) sometimes puts a whole URL into the
//! HTTP/2 `:authority` pseudo-header, for example
//! `:authority: http://127.0.0.1:32379`. It does so when it dials the
//! client URLs taken from a member list, as in
//! `etcdctl endpoint status --cluster`. Real etcd (grpc-go on the server
//! side) accepts such a request. The `h2` crate under tonic and hyper does
//! not: it parses the value as an `http::uri::Authority`, fails, and answers
//! with `RST_STREAM(PROTOCOL_ERROR)` ("malformed headers: malformed
//! authority"). That check is inside `h2` and cannot be configured.
//!
//! # What this layer does
//!
//! [`AuthorityFix`] wraps an accepted connection before it is handed to the
//! HTTP/2 server. Writes pass through untouched. On the read side it follows
//! the client-to-server byte stream:
//!
//! 1. The 24-byte connection preface is passed on as it arrives. If the bytes
//!    are not the HTTP/2 preface (HTTP/1, TLS, garbage), the layer switches to
//!    plain passthrough at once and lets the server deal with them.
//! 2. Frames are then parsed by their 9-byte headers. Frames other than
//!    HEADERS and CONTINUATION are passed on verbatim and never buffered.
//! 3. The first header block (a HEADERS frame plus its CONTINUATION frames)
//!    is held back and decoded with an HPACK decoder. If no `:authority` in it
//!    has a scheme, the original frames are released unchanged and the layer
//!    switches to passthrough for the rest of the connection.
//! 4. Otherwise the connection is rewritten from then on: every header block
//!    is decoded (with the same decoder, so the client's dynamic table is
//!    tracked), each `:authority` that has a scheme is cut down to
//!    `host[:port]`, and the block is re-encoded with an HPACK encoder owned
//!    by this connection. Because every block the server sees now comes from
//!    that one encoder, the server's HPACK decoder stays in step with it.
//!
//! # Cost for normal clients
//!
//! A normal client pays for parsing the frame headers before its first
//! request and for decoding that one header block. After that the layer is
//! in passthrough mode: `poll_read` goes straight to the inner stream, with
//! no copy and no parsing, for the rest of the connection.
//!
//! # Failure handling
//!
//! The layer never panics on client input. Before anything has been
//! rewritten, any input it does not understand (a frame sequence that breaks
//! the protocol, an HPACK error, a header block over [`MAX_HEADER_BLOCK`]
//! bytes or over [`MAX_DECODED_HEADERS`] bytes once decoded) makes it
//! release what it held, in order, and switch to passthrough. The server then
//! sees exactly what the client sent and reports the error itself.
//!
//! Once blocks have been re-encoded, falling back to passthrough is no longer
//! safe: the client's raw HPACK bytes refer to the client's dynamic table,
//! while the server's decoder now mirrors this layer's encoder, so the server
//! could decode wrong headers without noticing. In that state the layer
//! instead sends one HEADERS frame whose HPACK block uses index 0, which
//! RFC 7541 section 6.1 says a decoder must treat as a decoding error. The
//! server then closes the connection with a connection error (h2 sends
//! GOAWAY), which is what it would have done with the bad input anyway, and
//! the layer drops every later byte from the client.
//!
//! # Limits
//!
//! * The HPACK decoder accepts dynamic table size updates up to
//!   [`HEADER_TABLE_SIZE`] (4096, the HTTP/2 default), and the encoder uses
//!   a table of that size without announcing it. This assumes the server
//!   advertises the default `SETTINGS_HEADER_TABLE_SIZE`. If it is ever
//!   configured to advertise another value, change the constant to match.
//! * The layer must sit where the server reads plain HTTP/2: on the TCP
//!   stream for h2c, or on the decrypted stream when TLS is used.
//! * Output frames are at most 16384 bytes long, the smallest
//!   `SETTINGS_MAX_FRAME_SIZE` a server may use, so they fit any server
//!   setting.
//! * Re-encoding loses the "never indexed" marking of header fields. This
//!   only matters to intermediaries that forward the block further; here the
//!   block goes straight to the server in the same process.
//! * Only the first header block decides whether the connection is
//!   rewritten. grpc-go uses one authority for every stream of a
//!   connection, so this is enough for etcdctl.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::decoder::DecoderError;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of an HTTP/2 frame header.
pub(crate) const FRAME_HEAD_LEN: usize = 9;

pub(crate) const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;

pub(crate) const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Length of the PRIORITY fields of a HEADERS frame (stream dependency and
/// weight).
const PRIORITY_LEN: usize = 5;

/// Largest frame payload this layer emits: the default and smallest allowed
/// `SETTINGS_MAX_FRAME_SIZE`, which every server accepts.
const MAX_OUT_FRAME: usize = 16_384;

/// Dynamic table size for both the HPACK decoder and the encoder: the
/// HTTP/2 default `SETTINGS_HEADER_TABLE_SIZE`, which the server uses unless
/// configured otherwise.
pub const HEADER_TABLE_SIZE: usize = 4_096;

/// Largest header block, counted as the sum of the HEADERS and CONTINUATION
/// payload lengths, that is collected for inspection or rewriting.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Largest decoded header list, counted as in RFC 9113 section 6.5.2 (name
/// plus value plus 32 per field). This bounds memory when a small block
/// refers many times to a large dynamic table entry.
pub const MAX_DECODED_HEADERS: usize = 1 << 20;

/// Returns `host[:port]` when `authority` starts with a URL scheme such as
/// `http://`, dropping the scheme and any path, query or fragment. Returns
/// `None` when there is no scheme (the value is left alone), when the part
/// before `://` is not a valid scheme, or when nothing is left after it.
///
/// ```text
/// http://127.0.0.1:32379      -> Some("127.0.0.1:32379")
/// https://example.com/a/b?c   -> Some("example.com")
/// 127.0.0.1:2379              -> None
/// ```
pub fn strip_scheme(authority: &[u8]) -> Option<Vec<u8>> {
    let sep = authority.windows(3).position(|w| w == b"://")?;
    let (scheme, rest) = authority.split_at(sep);
    let rest = rest.get(3..)?;
    // RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let (first, tail) = scheme.split_first()?;
    let valid_scheme = first.is_ascii_alphabetic()
        && tail
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return None;
    }
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = rest.get(..end)?;
    if host.is_empty() {
        return None;
    }
    Some(host.to_vec())
}

/// Wraps the IO of an accepted connection so that the HTTP/2 server reading
/// from it never sees an `:authority` with a URL scheme. See the module
/// documentation for how and why.
///
/// Writes are passed to the inner stream unchanged.
pub struct AuthorityFix<S> {
    inner: S,
    parser: Parser,
    /// Bytes ready for the reader, from `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// The inner stream has reported end of file.
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps `inner`, a freshly accepted connection (nothing read from it
    /// yet).
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            parser: Parser::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    /// The wrapped stream, for example to ask for its peer address.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream. Reading from it directly bypasses this layer.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the stream. Bytes this layer has read but not yet handed out
    /// are lost.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// True once the connection has been seen to need rewriting (its first
    /// request had an `:authority` with a scheme).
    pub fn is_rewriting(&self) -> bool {
        self.parser.rewriting
    }

    /// True once the layer has stopped looking at the byte stream and just
    /// passes reads through (the normal case after the first request).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.parser.stage, Stage::Passthrough)
    }

    /// Copies pending output into `buf`. Returns true if anything was copied.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = self.out.get(self.out_pos..).unwrap_or_default();
        let n = pending.len().min(buf.remaining());
        if n == 0 {
            return false;
        }
        buf.put_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            shrink(&mut self.out);
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.drain_into(buf) || this.eof {
                // Either some bytes were delivered, or end of file is
                // reported by returning with nothing filled.
                return Poll::Ready(Ok(()));
            }
            if this.parser.is_passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Read straight into the caller's buffer. The parser tells how
            // many leading bytes can stay there unchanged; it takes the rest
            // and puts whatever must follow them into `out`.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let after = buf.filled().len();
            if after == before {
                this.parser.finish(&mut this.out);
                this.eof = true;
                continue;
            }
            let keep = this.parser.feed(
                buf.filled().get(before..after).unwrap_or_default(),
                &mut this.out,
            );
            buf.set_filled(before + keep);
            if keep > 0 {
                this.drain_into(buf);
                return Poll::Ready(Ok(()));
            }
            // Everything was taken by the parser: deliver `out` if it has
            // something, otherwise read more.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Releases the memory of a buffer that grew large for one big header block.
fn shrink(buf: &mut Vec<u8>) {
    const KEEP: usize = 64 * 1024;
    if buf.capacity() > KEEP {
        buf.shrink_to(KEEP);
    }
}

/// Where the read side is in the connection.
enum Stage {
    /// Checking the connection preface; the number of bytes matched so far.
    Preface(usize),
    /// Parsing frames, either inspecting the first header block or
    /// rewriting every block (see `Parser::rewriting`).
    Frames,
    /// Passing every byte through without looking at it.
    Passthrough,
    /// Rewriting failed and the server was told to close the connection:
    /// client bytes are dropped.
    Discard,
}

/// Where the parser is inside the frame sequence.
#[derive(Clone, Copy)]
enum FrameState {
    /// Waiting for a frame header; partial bytes of it are in `pending`.
    Head,
    /// Passing on this many more payload bytes of a frame that is not
    /// changed.
    Forward(usize),
    /// Collecting a HEADERS or CONTINUATION frame into `pending`, which holds
    /// its header and, once complete, `FRAME_HEAD_LEN + head.len` bytes.
    Collect(FrameHead),
}

#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(bytes: &[u8]) -> Option<FrameHead> {
        let head: &[u8; FRAME_HEAD_LEN] = bytes.get(..FRAME_HEAD_LEN)?.try_into().ok()?;
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *head;
        Some(FrameHead {
            len: (usize::from(l0) << 16) | (usize::from(l1) << 8) | usize::from(l2),
            kind,
            flags,
            // The top bit is reserved and ignored on receipt.
            stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        })
    }
}

/// A header block being collected.
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    /// The concatenated HPACK fragments.
    fragment: Vec<u8>,
    /// Sum of the payload lengths of the frames seen so far.
    frame_bytes: usize,
}

/// What to do with a frame, decided from its header.
enum Action {
    Forward,
    Collect,
    Fail,
}

/// HPACK state of a connection that is being inspected or rewritten.
struct Hpack {
    /// Mirrors the client's encoder.
    decoder: Decoder<'static>,
    /// Produces every block the server sees once rewriting has started.
    encoder: Encoder<'static>,
}

/// The read-side state machine. It is fed the bytes read from the client and
/// decides, byte range by byte range, what the server gets.
struct Parser {
    stage: Stage,
    fstate: FrameState,
    /// True once the first header block had a schemed `:authority`.
    rewriting: bool,
    /// Bytes of the current frame that were taken but not yet passed on.
    pending: Vec<u8>,
    /// While inspecting: the raw frames of the header block collected so far,
    /// to pass on unchanged if no rewriting is needed.
    raw: Vec<u8>,
    block: Option<Block>,
    /// Dropped when the connection switches to passthrough.
    hpack: Option<Box<Hpack>>,
}

/// Collects the parser's output for one `feed` call. Input bytes that go out
/// unchanged and in order at the very start are only counted (`keep`), so
/// they can stay in the caller's buffer without a copy; everything else goes
/// to `out`, which the reader gets after those `keep` bytes.
struct Sink<'a> {
    data: &'a [u8],
    keep: usize,
    out: &'a mut Vec<u8>,
}

impl Sink<'_> {
    /// Passes on `data[range]` unchanged.
    fn input(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        if self.out.is_empty() && range.start == self.keep {
            self.keep = range.end;
        } else if let Some(bytes) = self.data.get(range) {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Passes on bytes that are not a plain slice of the current input.
    fn owned(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}

impl Parser {
    fn new() -> Parser {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(HEADER_TABLE_SIZE);
        Parser {
            stage: Stage::Preface(0),
            fstate: FrameState::Head,
            rewriting: false,
            pending: Vec::new(),
            raw: Vec::new(),
            block: None,
            hpack: Some(Box::new(Hpack { decoder, encoder })),
        }
    }

    fn is_passthrough(&self) -> bool {
        matches!(self.stage, Stage::Passthrough)
    }

    /// Processes `data`, newly read from the client. Returns how many leading
    /// bytes of `data` go to the server unchanged; what follows them is
    /// appended to `out`. `out` must be empty when this is called, so that
    /// those leading bytes really come first.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut sink = Sink { data, keep: 0, out };
        let mut pos = 0;
        while pos < data.len() {
            match self.stage {
                Stage::Passthrough => {
                    sink.input(pos..data.len());
                    pos = data.len();
                }
                Stage::Discard => pos = data.len(),
                Stage::Preface(matched) => {
                    let n = (PREFACE.len() - matched).min(data.len() - pos);
                    if data.get(pos..pos + n) == PREFACE.get(matched..matched + n) {
                        sink.input(pos..pos + n);
                        pos += n;
                        self.stage = if matched + n == PREFACE.len() {
                            Stage::Frames
                        } else {
                            Stage::Preface(matched + n)
                        };
                    } else {
                        // Not HTTP/2 with prior knowledge. The bytes matched
                        // so far were already passed on.
                        self.enter_passthrough();
                    }
                }
                Stage::Frames => pos = self.step_frames(data, pos, &mut sink),
            }
        }
        sink.keep
    }

    /// Called at end of file: passes on what is held, unless the connection
    /// was being rewritten (then the held bytes are an incomplete header
    /// block in the client's encoding, which must not reach the server).
    fn finish(&mut self, out: &mut Vec<u8>) {
        if matches!(self.stage, Stage::Frames) && !self.rewriting {
            out.extend_from_slice(&self.raw);
            out.extend_from_slice(&self.pending);
        }
        self.enter_passthrough();
    }

    /// One step of frame parsing at `data[pos..]`; returns the new position.
    fn step_frames(&mut self, data: &[u8], mut pos: usize, sink: &mut Sink<'_>) -> usize {
        let avail = data.len() - pos;
        match self.fstate {
            FrameState::Forward(left) => {
                let n = left.min(avail);
                sink.input(pos..pos + n);
                pos += n;
                self.fstate = if left == n {
                    FrameState::Head
                } else {
                    FrameState::Forward(left - n)
                };
            }
            FrameState::Head if self.pending.is_empty() && avail >= FRAME_HEAD_LEN => {
                // The whole frame header is in this input: look at it in
                // place, so that forwarded frames need no copy.
                let Some(head) = data.get(pos..).and_then(FrameHead::parse) else {
                    self.fail(sink, 0);
                    return pos;
                };
                match self.classify(&head) {
                    Action::Forward => {
                        sink.input(pos..pos + FRAME_HEAD_LEN);
                        self.fstate = forward(head.len);
                    }
                    Action::Collect => {
                        self.pending
                            .extend_from_slice(&data[pos..pos + FRAME_HEAD_LEN]);
                        self.fstate = FrameState::Collect(head);
                    }
                    Action::Fail => {
                        // The frame header is not consumed: it is passed on
                        // after the held bytes, if the stage is passthrough.
                        self.fail(sink, head.stream_id);
                        return pos;
                    }
                }
                pos += FRAME_HEAD_LEN;
            }
            FrameState::Head => {
                let n = (FRAME_HEAD_LEN - self.pending.len()).min(avail);
                self.pending.extend_from_slice(&data[pos..pos + n]);
                pos += n;
                if self.pending.len() == FRAME_HEAD_LEN {
                    let Some(head) = FrameHead::parse(&self.pending) else {
                        self.fail(sink, 0);
                        return pos;
                    };
                    match self.classify(&head) {
                        Action::Forward => {
                            sink.owned(&self.pending);
                            self.pending.clear();
                            self.fstate = forward(head.len);
                        }
                        Action::Collect => self.fstate = FrameState::Collect(head),
                        Action::Fail => self.fail(sink, head.stream_id),
                    }
                }
            }
            FrameState::Collect(head) => {
                let want = FRAME_HEAD_LEN + head.len - self.pending.len();
                let n = want.min(avail);
                self.pending.extend_from_slice(&data[pos..pos + n]);
                pos += n;
            }
        }
        // A collected frame may be complete now (also when its payload is
        // empty and it has just been started).
        if let FrameState::Collect(head) = self.fstate {
            if self.pending.len() == FRAME_HEAD_LEN + head.len {
                self.complete_frame(head, sink);
            }
        }
        pos
    }

    /// Decides from a frame header what to do with the frame.
    fn classify(&self, head: &FrameHead) -> Action {
        if let Some(block) = &self.block {
            // Only CONTINUATION frames of the same stream may follow a
            // HEADERS frame without END_HEADERS (RFC 9113 section 6.10).
            if head.kind != TYPE_CONTINUATION || head.stream_id != block.stream_id {
                return Action::Fail;
            }
            if block.frame_bytes + head.len > MAX_HEADER_BLOCK {
                return Action::Fail;
            }
            return Action::Collect;
        }
        match head.kind {
            TYPE_HEADERS if head.len <= MAX_HEADER_BLOCK => Action::Collect,
            // Too big, a CONTINUATION with no block open, or a PUSH_PROMISE
            // (which only servers may send, and whose header block would
            // touch the HPACK state).
            TYPE_HEADERS | TYPE_CONTINUATION | TYPE_PUSH_PROMISE => Action::Fail,
            _ => Action::Forward,
        }
    }

    /// Handles a complete HEADERS or CONTINUATION frame held in `pending`.
    fn complete_frame(&mut self, head: FrameHead, sink: &mut Sink<'_>) {
        let payload = self.pending.get(FRAME_HEAD_LEN..).unwrap_or_default();
        if head.kind == TYPE_HEADERS {
            let Some((priority, fragment)) = split_headers_payload(head.flags, payload) else {
                self.fail(sink, head.stream_id);
                return;
            };
            self.block = Some(Block {
                stream_id: head.stream_id,
                end_stream: head.flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                frame_bytes: head.len,
            });
        } else if let Some(block) = self.block.as_mut() {
            block.fragment.extend_from_slice(payload);
            block.frame_bytes += head.len;
        } else {
            // `classify` only collects a CONTINUATION while a block is open.
            self.fail(sink, head.stream_id);
            return;
        }
        if !self.rewriting {
            self.raw.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        self.fstate = FrameState::Head;
        if head.flags & FLAG_END_HEADERS != 0 {
            self.finish_block(sink);
        }
    }

    /// Handles a complete header block: decides about the connection while
    /// inspecting, and rewrites the block while rewriting.
    fn finish_block(&mut self, sink: &mut Sink<'_>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let Some(hpack) = self.hpack.as_mut() else {
            self.fail(sink, block.stream_id);
            return;
        };
        let Some(mut headers) = decode_block(&mut hpack.decoder, &block.fragment) else {
            self.fail(sink, block.stream_id);
            return;
        };
        let mut schemed = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(stripped) = strip_scheme(value) {
                    *value = stripped;
                    schemed = true;
                }
            }
        }
        if !self.rewriting {
            if !schemed {
                // A normal client: release its frames as they were and stop
                // looking.
                sink.owned(&self.raw);
                self.enter_passthrough();
                return;
            }
            self.rewriting = true;
            self.raw = Vec::new();
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let fields = headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()));
        if hpack.encoder.encode_into(fields, &mut encoded).is_err() {
            self.fail(sink, block.stream_id);
            return;
        }
        write_block(sink.out, &block, &encoded);
        shrink(&mut self.pending);
    }

    /// Gives up on input that cannot be handled. While inspecting, what is
    /// held is passed on unchanged and the stage becomes passthrough, so the
    /// server sees the client's bytes as they were. While rewriting, the
    /// server is made to close the connection (see the module
    /// documentation) and later client bytes are dropped.
    fn fail(&mut self, sink: &mut Sink<'_>, stream_id: u32) {
        if self.rewriting {
            sink.owned(&poison_frame(stream_id));
            self.stage = Stage::Discard;
            self.release();
        } else {
            sink.owned(&self.raw);
            sink.owned(&self.pending);
            self.enter_passthrough();
        }
    }

    fn enter_passthrough(&mut self) {
        self.stage = Stage::Passthrough;
        self.release();
    }

    /// Frees all parsing state.
    fn release(&mut self) {
        self.pending = Vec::new();
        self.raw = Vec::new();
        self.block = None;
        self.hpack = None;
        self.fstate = FrameState::Head;
    }
}

/// The state after the header of a frame that is passed on unchanged.
fn forward(payload_len: usize) -> FrameState {
    if payload_len == 0 {
        FrameState::Head
    } else {
        FrameState::Forward(payload_len)
    }
}

/// Splits a HEADERS payload into its PRIORITY fields and its header block
/// fragment, dropping padding. `None` if the payload is too short for the
/// flags it has.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; PRIORITY_LEN]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&pad_len, tail) = rest.split_first()?;
        pad = usize::from(pad_len);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = rest.split_first_chunk::<PRIORITY_LEN>()?;
        priority = Some(*fields);
        rest = tail;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, rest.get(..end)?))
}

/// Decodes a header block, tracking the client's dynamic table. `None` on an
/// HPACK error or if the decoded list is over `MAX_DECODED_HEADERS`.
fn decode_block(
    decoder: &mut Decoder<'static>,
    fragment: &[u8],
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut headers = Vec::new();
    let mut size = 0usize;
    let mut too_big = false;
    let result = decoder.decode_with_cb(fragment, |name, value| {
        size = size.saturating_add(name.len() + value.len() + 32);
        if size > MAX_DECODED_HEADERS {
            // Keep decoding so the error is found, but store nothing more.
            too_big = true;
        } else {
            headers.push((name.into_owned(), value.into_owned()));
        }
    });
    match result {
        // The decoder rejects a block that ends with a dynamic table size
        // update, but it has applied the update and decoded every field by
        // then; h2 accepts such a block, so it is accepted here too.
        Ok(()) | Err(DecoderError::SizeUpdateAtEnd) if !too_big => Some(headers),
        _ => None,
    }
}

/// Appends a re-encoded header block as a HEADERS frame, followed by
/// CONTINUATION frames if it does not fit into one frame.
fn write_block(out: &mut Vec<u8>, block: &Block, encoded: &[u8]) {
    let priority: &[u8] = match &block.priority {
        Some(fields) => fields,
        None => &[],
    };
    let mut rest = encoded;
    let mut first = true;
    loop {
        let room = if first {
            MAX_OUT_FRAME - priority.len()
        } else {
            MAX_OUT_FRAME
        };
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        let mut flags = 0;
        if tail.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let (kind, extra) = if first {
            if block.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if block.priority.is_some() {
                flags |= FLAG_PRIORITY;
            }
            (TYPE_HEADERS, priority)
        } else {
            (TYPE_CONTINUATION, &[][..])
        };
        write_frame_head(out, extra.len() + chunk.len(), kind, flags, block.stream_id);
        out.extend_from_slice(extra);
        out.extend_from_slice(chunk);
        if tail.is_empty() {
            break;
        }
        rest = tail;
        first = false;
    }
}

fn write_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // `len` is at most MAX_OUT_FRAME, so it fits the 24-bit length field.
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// A complete HEADERS frame whose HPACK block is the indexed field with index
/// 0, which RFC 7541 section 6.1 makes a decoding error: the server must
/// answer with a connection error.
fn poison_frame(stream_id: u32) -> Vec<u8> {
    let stream_id = if stream_id == 0 { 1 } else { stream_id };
    let mut frame = Vec::with_capacity(FRAME_HEAD_LEN + 1);
    write_frame_head(
        &mut frame,
        1,
        TYPE_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        stream_id,
    );
    frame.push(0x80);
    frame
}

/// tonic asks every accepted connection who is on the other end.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SCHEMED: &[u8] = b"http://127.0.0.1:32379";
    const PLAIN: &[u8] = b"127.0.0.1:32379";

    // ----- helpers to build client byte streams -----

    /// Huffman codes (RFC 7541 appendix B) of the characters used in test
    /// authorities.
    const HUFFMAN: &[(u8, u32, u8)] = &[
        (b'.', 0x17, 6),
        (b'/', 0x18, 6),
        (b'0', 0x0, 5),
        (b'1', 0x1, 5),
        (b'2', 0x2, 5),
        (b'3', 0x19, 6),
        (b'7', 0x1d, 6),
        (b'9', 0x1f, 6),
        (b':', 0x5c, 7),
        (b'h', 0x27, 6),
        (b'p', 0x2b, 6),
        (b't', 0x9, 5),
    ];

    fn huffman(s: &[u8]) -> Vec<u8> {
        let mut bits: u64 = 0;
        let mut nbits = 0;
        let mut out = Vec::new();
        for c in s {
            let &(_, code, len) = HUFFMAN
                .iter()
                .find(|(ch, _, _)| ch == c)
                .expect("character missing from the test Huffman table");
            bits = (bits << len) | u64::from(code);
            nbits += len;
            while nbits >= 8 {
                nbits -= 8;
                out.push((bits >> nbits) as u8);
            }
        }
        if nbits > 0 {
            // Pad with the most significant bits of EOS (all ones).
            let pad = 8 - nbits;
            out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    /// An HPACK string literal, raw or Huffman-coded.
    fn string(s: &[u8], huff: bool) -> Vec<u8> {
        let body = if huff { huffman(s) } else { s.to_vec() };
        let mut out = loona_hpack::encoder::encode_integer(body.len(), 7);
        if huff {
            out[0] |= 0x80;
        }
        out.extend_from_slice(&body);
        out
    }

    /// Literal with incremental indexing, name indexed.
    fn lit_indexed_name(index: usize, value: &[u8], huff: bool) -> Vec<u8> {
        let mut out = loona_hpack::encoder::encode_integer(index, 6);
        out[0] |= 0x40;
        out.extend(string(value, huff));
        out
    }

    /// Literal with incremental indexing, new name.
    fn lit_new_name(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        out.extend(string(name, false));
        out.extend(string(value, false));
        out
    }

    fn indexed(index: usize) -> Vec<u8> {
        let mut out = loona_hpack::encoder::encode_integer(index, 7);
        out[0] |= 0x80;
        out
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = (payload.len() as u32).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// First request block, as grpc-go would encode it: `:method POST`,
    /// `:scheme http`, a new `:path`, the `:authority` Huffman-coded with
    /// incremental indexing, then `content-type`, `user-agent` and `te`.
    fn first_block(authority: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(indexed(3)); // :method POST
        b.extend(indexed(6)); // :scheme http
        b.extend(lit_indexed_name(
            4,
            b"/etcdserverpb.Maintenance/Status",
            false,
        ));
        b.extend(lit_indexed_name(1, authority, true));
        b.extend(lit_indexed_name(31, b"application/grpc", false));
        b.extend(lit_indexed_name(58, b"grpc-go/1.26.0", false));
        b.extend(lit_new_name(b"te", b"trailers"));
        b
    }

    /// Second request block, referring to the first block's dynamic table
    /// entries. After the first block the table is, newest first:
    /// te (62), user-agent (63), content-type (64), :authority (65),
    /// :path (66).
    fn second_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(indexed(3));
        b.extend(indexed(6));
        b.extend(lit_indexed_name(4, b"/etcdserverpb.KV/Range", false));
        b.extend(indexed(66)); // :authority, shifted by the new :path entry
        b.extend(indexed(65)); // content-type
        b.extend(indexed(64)); // user-agent
        b.extend(indexed(63)); // te
        b.extend(lit_new_name(b"grpc-timeout", b"4999m"));
        b
    }

    /// A client byte stream: preface, SETTINGS, WINDOW_UPDATE, two requests,
    /// the second one split over HEADERS (padded, with priority) and
    /// CONTINUATION, each request followed by a DATA frame.
    fn client_stream(authority: &[u8]) -> Vec<u8> {
        let mut s = PREFACE.to_vec();
        s.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        s.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 1])); // WINDOW_UPDATE
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &first_block(authority),
        ));
        s.extend(frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 2, 8, 1]));
        let block = second_block();
        let (a, b) = block.split_at(7);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority fields
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]); // padding
        s.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            3,
            &payload,
        ));
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
        s.extend(frame(0x0, FLAG_END_STREAM, 3, &[0, 0, 0, 0, 0]));
        s.extend(frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])); // PING
        s
    }

    // ----- helpers to read a server-side byte stream -----

    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(mut s: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !s.is_empty() {
            let head = FrameHead::parse(s).expect("truncated frame header");
            let payload = s[FRAME_HEAD_LEN..FRAME_HEAD_LEN + head.len].to_vec();
            frames.push(Frame {
                kind: head.kind,
                flags: head.flags,
                stream_id: head.stream_id,
                payload,
            });
            s = &s[FRAME_HEAD_LEN + head.len..];
        }
        frames
    }

    /// A decoded request: its header blocks' fields, with the HEADERS flags.
    struct Request {
        stream_id: u32,
        flags: u8,
        priority: Option<[u8; PRIORITY_LEN]>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    }

    /// Groups frames into header blocks and decodes them with one decoder;
    /// returns the requests and the other frames, in order.
    fn decode_stream(frames: &[Frame]) -> (Vec<Request>, Vec<&Frame>) {
        let mut decoder = Decoder::new();
        let mut requests = Vec::new();
        let mut others = Vec::new();
        // The request being collected, and its HPACK fragments so far.
        let mut open: Option<(Request, Vec<u8>)> = None;
        for f in frames {
            let done = match f.kind {
                TYPE_HEADERS => {
                    assert!(open.is_none(), "HEADERS inside a header block");
                    let (priority, frag) = split_headers_payload(f.flags, &f.payload).unwrap();
                    let req = Request {
                        stream_id: f.stream_id,
                        flags: f.flags,
                        priority,
                        headers: Vec::new(),
                    };
                    open = Some((req, frag.to_vec()));
                    f.flags & FLAG_END_HEADERS != 0
                }
                TYPE_CONTINUATION => {
                    let (req, frag) = open.as_mut().expect("CONTINUATION outside a block");
                    assert_eq!(req.stream_id, f.stream_id);
                    frag.extend_from_slice(&f.payload);
                    f.flags & FLAG_END_HEADERS != 0
                }
                _ => {
                    assert!(open.is_none(), "frame inside a header block");
                    others.push(f);
                    false
                }
            };
            if done {
                let (mut req, frag) = open.take().unwrap();
                req.headers = decoder.decode(&frag).expect("output does not decode");
                requests.push(req);
            }
        }
        assert!(open.is_none(), "unfinished header block");
        (requests, others)
    }

    fn authority(req: &Request) -> &[u8] {
        &req.headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .unwrap()
            .1
    }

    /// An `AsyncRead` that hands out its data in chunks of the given sizes
    /// (cycling), to exercise every partial state of the parser.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `input` through `AuthorityFix` with the given read chunk sizes
    /// and a reader buffer of `read_size` bytes.
    async fn run(input: &[u8], sizes: &[usize], read_size: usize) -> (Vec<u8>, bool) {
        let (out, rewriting, _) = run_full(input, sizes, read_size).await;
        (out, rewriting)
    }

    /// Like `run`, also telling whether the fix ended in passthrough mode.
    async fn run_full(input: &[u8], sizes: &[usize], read_size: usize) -> (Vec<u8>, bool, bool) {
        let mut fix = AuthorityFix::new(Chunked {
            data: input.to_vec(),
            pos: 0,
            sizes: sizes.to_vec(),
            turn: 0,
        });
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, fix.is_rewriting(), fix.is_passthrough())
    }

    const CHUNKINGS: &[(&[usize], usize)] = &[
        (&[1 << 20], 1 << 16),
        (&[1], 1 << 16),
        (&[1 << 20], 1),
        (&[3, 7, 1, 9, 24, 2], 5),
        (&[10, 100, 1000], 4096),
        (&[8, 9, 10], 17),
    ];

    // ----- strip_scheme -----

    #[test]
    fn strip_scheme_removes_scheme_and_path() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"http://127.0.0.1:32379", Some(b"127.0.0.1:32379")),
            (b"https://example.com", Some(b"example.com")),
            (b"https://example.com:443/", Some(b"example.com:443")),
            (b"http://[::1]:2379/v3/kv?x#y", Some(b"[::1]:2379")),
            (b"unix://localhost:2379", Some(b"localhost:2379")),
            (b"unixs://localhost:2379", Some(b"localhost:2379")),
            (b"git+ssh://h:1", Some(b"h:1")),
            (b"http://h?q", Some(b"h")),
            (b"127.0.0.1:32379", None),
            (b"example.com", None),
            (b"", None),
            (b"http://", None),
            (b"http:///path", None),
            (b"://host", None),
            (b"1http://host", None),
            (b"ht tp://host", None),
            (b"http:/host", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                strip_scheme(input).as_deref(),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn test_huffman_encoder_matches_the_decoder() {
        let coded = huffman(SCHEMED);
        let decoded = loona_hpack::huffman::HuffmanDecoder::new().decode(&coded);
        assert_eq!(decoded.unwrap(), SCHEMED);
    }

    // ----- byte stream tests -----

    #[tokio::test]
    async fn schemed_authority_is_rewritten() {
        let input = client_stream(SCHEMED);
        let in_frames = parse_frames(&input[PREFACE.len()..]);
        let (in_reqs, in_others) = decode_stream(&in_frames);
        assert_eq!(authority(&in_reqs[0]), SCHEMED);
        assert_eq!(authority(&in_reqs[1]), SCHEMED);

        for &(sizes, read_size) in CHUNKINGS {
            let (output, rewriting) = run(&input, sizes, read_size).await;
            assert!(rewriting);
            assert_eq!(&output[..PREFACE.len()], PREFACE);
            let out_frames = parse_frames(&output[PREFACE.len()..]);
            let (out_reqs, out_others) = decode_stream(&out_frames);
            assert_eq!(out_reqs.len(), 2);
            for (got, orig) in out_reqs.iter().zip(&in_reqs) {
                assert_eq!(authority(got), PLAIN);
                assert_eq!(got.stream_id, orig.stream_id);
                assert_eq!(got.priority, orig.priority);
                assert_eq!(got.flags & FLAG_END_STREAM, orig.flags & FLAG_END_STREAM);
                assert_eq!(got.headers.len(), orig.headers.len());
                for (g, o) in got.headers.iter().zip(&orig.headers) {
                    if g.0 == b":authority" {
                        continue;
                    }
                    assert_eq!(g, o);
                }
            }
            assert_eq!(out_reqs[1].priority, Some([0, 0, 0, 0, 15]));
            // Every other frame is unchanged and in the same order.
            assert_eq!(out_others.len(), in_others.len());
            for (g, o) in out_others.iter().zip(&in_others) {
                assert_eq!(
                    (g.kind, g.flags, g.stream_id, &g.payload),
                    (o.kind, o.flags, o.stream_id, &o.payload)
                );
            }
            // The order of frames across streams is kept too.
            let kinds: Vec<u8> = out_frames.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [0x4, 0x8, 0x1, 0x0, 0x1, 0x0, 0x6]);
        }
    }

    #[tokio::test]
    async fn normal_authority_passes_through_unchanged() {
        let input = client_stream(PLAIN);
        for &(sizes, read_size) in CHUNKINGS {
            let (output, rewriting, passthrough) = run_full(&input, sizes, read_size).await;
            assert!(!rewriting);
            assert!(passthrough);
            assert_eq!(output, input);
        }
    }

    #[tokio::test]
    async fn non_http2_input_passes_through() {
        let inputs: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\nmore",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP",
            b"",
        ];
        for input in inputs {
            for &(sizes, read_size) in CHUNKINGS {
                let (output, _) = run(input, sizes, read_size).await;
                assert_eq!(&output, input);
            }
        }
    }

    /// Inputs that break the protocol before anything was rewritten reach the
    /// server unchanged.
    #[tokio::test]
    async fn malformed_input_passes_through_unchanged() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let head = |extra: &[u8]| {
            let mut s = PREFACE.to_vec();
            s.extend(frame(0x4, 0, 0, &[]));
            s.extend_from_slice(extra);
            s
        };
        // HPACK index 0 and an index past the table.
        cases.push(head(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80])));
        cases.push(head(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0x7f],
        )));
        // A truncated literal with a schemed authority.
        let block = first_block(SCHEMED);
        cases.push(head(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block[..block.len() - 3],
        )));
        // Padding longer than the payload.
        cases.push(head(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[9, 0x82],
        )));
        // PRIORITY flag with too few bytes.
        cases.push(head(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY,
            1,
            &[0, 0],
        )));
        // A DATA frame inside a header block, then the rest of the block.
        let mut s = frame(TYPE_HEADERS, 0, 1, &block[..5]);
        s.extend(frame(0x0, 0, 1, b"data"));
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[5..]));
        cases.push(head(&s));
        // A CONTINUATION of another stream.
        let mut s = frame(TYPE_HEADERS, 0, 1, &block[..5]);
        s.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[5..]));
        cases.push(head(&s));
        // A CONTINUATION with no block open, and a PUSH_PROMISE.
        cases.push(head(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)));
        cases.push(head(&frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &block)));
        // A header block cut off by end of file.
        cases.push(head(&frame(TYPE_HEADERS, 0, 1, &block)));
        let mut s = head(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        s.truncate(s.len() - 4);
        cases.push(s);
        // A dynamic table size update above the allowed size.
        let mut big = vec![0x3f, 0xe1, 0x3f]; // size update to 8192
        big.extend_from_slice(&block);
        cases.push(head(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &big)));

        for (i, input) in cases.iter().enumerate() {
            for &(sizes, read_size) in CHUNKINGS {
                let (output, rewriting) = run(input, sizes, read_size).await;
                assert!(!rewriting, "case {i}");
                assert_eq!(&output, input, "case {i}");
            }
        }
    }

    #[tokio::test]
    async fn oversized_blocks_pass_through_unchanged() {
        // A compressed block over MAX_HEADER_BLOCK, split into CONTINUATION
        // frames of 16 KiB, with a schemed authority in front.
        let mut block = first_block(SCHEMED);
        block.extend(lit_new_name(b"x-big", &vec![b'a'; MAX_HEADER_BLOCK]));
        let mut input = PREFACE.to_vec();
        let chunks: Vec<&[u8]> = block.chunks(MAX_OUT_FRAME).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let flags = if i + 1 == chunks.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            input.extend(frame(kind, flags, 1, chunk));
        }
        let (output, rewriting) = run(&input, &[1 << 16], 1 << 16).await;
        assert!(!rewriting);
        assert_eq!(output, input);

        // A small block that decodes to more than MAX_DECODED_HEADERS, by
        // referring again and again to a 4000-byte dynamic table entry.
        let mut block = first_block(SCHEMED);
        block.extend(lit_new_name(b"x-big", &[b'b'; 4000]));
        for _ in 0..(MAX_DECODED_HEADERS / 4000 + 1) {
            block.extend(indexed(62));
        }
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (output, rewriting) = run(&input, &[1 << 16], 1 << 16).await;
        assert!(!rewriting);
        assert_eq!(output, input);
    }

    #[tokio::test]
    async fn large_rewritten_block_is_split_into_continuations() {
        let big = vec![b'v'; 40_000];
        let mut block = first_block(SCHEMED);
        block.extend(lit_new_name(b"x-big", &big));
        let mut input = PREFACE.to_vec();
        let chunks: Vec<&[u8]> = block.chunks(10_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let mut flags = if i + 1 == chunks.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            if i == 0 {
                flags |= FLAG_END_STREAM;
            }
            input.extend(frame(kind, flags, 5, chunk));
        }
        for &(sizes, read_size) in CHUNKINGS {
            let (output, rewriting) = run(&input, sizes, read_size).await;
            assert!(rewriting);
            let frames = parse_frames(&output[PREFACE.len()..]);
            assert!(frames.len() >= 3);
            assert!(frames.iter().all(|f| f.payload.len() <= MAX_OUT_FRAME));
            assert_eq!(frames[0].kind, TYPE_HEADERS);
            assert_eq!(frames[0].flags, FLAG_END_STREAM);
            assert!(frames[1..].iter().all(|f| f.kind == TYPE_CONTINUATION));
            let (reqs, others) = decode_stream(&frames);
            assert!(others.is_empty());
            assert_eq!(reqs.len(), 1);
            assert_eq!(authority(&reqs[0]), PLAIN);
            assert_eq!(reqs[0].stream_id, 5);
            let last = reqs[0].headers.last().unwrap();
            assert_eq!((&last.0[..], &last.1), (&b"x-big"[..], &big));
        }
    }

    /// Once rewriting, a bad block must not reach the server in the client's
    /// encoding: the server gets a block that fails to decode instead, and
    /// nothing after it.
    #[tokio::test]
    async fn bad_block_while_rewriting_poisons_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &first_block(SCHEMED),
        ));
        // Index 200 is past the end of the client's dynamic table.
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &[0x82, 0xff, 0x49],
        ));
        input.extend(frame(0x6, 0, 0, &[0; 8]));
        for &(sizes, read_size) in CHUNKINGS {
            let (output, rewriting) = run(&input, sizes, read_size).await;
            assert!(rewriting);
            let frames = parse_frames(&output[PREFACE.len()..]);
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[1].stream_id, 3);
            assert_eq!(frames[1].payload, [0x80]);
            let mut decoder = Decoder::new();
            decoder.decode(&frames[0].payload).unwrap();
            assert!(decoder.decode(&frames[1].payload).is_err());
        }
    }

    /// Random corruptions of client streams, read with random chunk sizes:
    /// the layer must not panic, must end, and must hand on the input
    /// unchanged whenever it did not start rewriting.
    #[tokio::test]
    async fn corrupted_input_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seeds = [client_stream(SCHEMED), client_stream(PLAIN)];
        let mut rewritten = 0;
        for round in 0..3000 {
            let mut input = seeds[round % 2].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                match next() % 4 {
                    0 => input[at] = next() as u8,
                    1 => input[at] ^= 1 << (next() % 8),
                    2 => input.truncate(at),
                    _ => input.insert(at, next() as u8),
                }
                if input.is_empty() {
                    input.push(0);
                }
            }
            let sizes: Vec<usize> = (0..4).map(|_| (next() % 64 + 1) as usize).collect();
            let read_size = (next() % 100 + 1) as usize;
            let (output, rewriting) = run(&input, &sizes, read_size).await;
            if rewriting {
                rewritten += 1;
            } else {
                assert_eq!(output, input, "round {round}");
            }
        }
        // Some corruptions leave the schemed first request intact.
        assert!(rewritten > 100, "only {rewritten} rounds were rewritten");
    }

    #[test]
    fn authority_fix_is_send_and_unpin() {
        fn check<T: Send + Sync + Unpin>() {}
        check::<AuthorityFix<tokio::net::TcpStream>>();
    }

    // ----- end to end with an h2 server -----

    /// What the raw client got back for a stream.
    #[derive(Debug, PartialEq)]
    enum Answer {
        Status(Vec<u8>),
        Reset(u32),
        GoAway(u32),
    }

    /// Serves HTTP/2 with `h2` on `io`, answering 200 to every request and
    /// recording each request's authority.
    async fn serve<T>(io: T) -> Vec<String>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut seen = Vec::new();
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return seen;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let authority = req.uri().authority().map(|a| a.to_string());
            seen.push(authority.unwrap_or_default());
            let resp = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(resp, true);
        }
        seen
    }

    /// Sends two requests with a schemed authority from a hand-made client
    /// (the second one using the dynamic table), to an h2 server behind
    /// `AuthorityFix` or not. Returns the answers by stream and the
    /// authorities the server saw.
    async fn raw_client_exchange(wrap: bool) -> (Vec<(u32, Answer)>, Vec<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if wrap {
                serve(AuthorityFix::new(tcp)).await
            } else {
                serve(tcp).await
            }
        });

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &first_block(SCHEMED),
        ));
        bytes.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &second_block(),
        ));
        client.write_all(&bytes).await.unwrap();

        let mut answers = Vec::new();
        let mut decoder = Decoder::new();
        let mut buf = Vec::new();
        let read_answers = async {
            while answers.len() < 2 {
                let mut chunk = [0; 4096];
                let n = client.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(head) = FrameHead::parse(&buf) {
                    if buf.len() < FRAME_HEAD_LEN + head.len {
                        break;
                    }
                    let payload: Vec<u8> = buf.drain(..FRAME_HEAD_LEN + head.len).skip(9).collect();
                    let code =
                        |p: &[u8], at: usize| u32::from_be_bytes(p[at..at + 4].try_into().unwrap());
                    match head.kind {
                        TYPE_HEADERS => {
                            assert_ne!(head.flags & FLAG_END_HEADERS, 0);
                            let headers = decoder.decode(&payload).unwrap();
                            let status = headers.into_iter().find(|(n, _)| n == b":status");
                            answers.push((head.stream_id, Answer::Status(status.unwrap().1)));
                        }
                        0x3 => answers.push((head.stream_id, Answer::Reset(code(&payload, 0)))),
                        0x7 => answers.push((0, Answer::GoAway(code(&payload, 4)))),
                        _ => {}
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_answers)
            .await
            .expect("server did not answer");
        drop(client);
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not finish")
            .unwrap();
        answers.sort_by_key(|(id, _)| *id);
        (answers, seen)
    }

    #[tokio::test]
    async fn h2_server_accepts_schemed_authority_behind_the_fix() {
        let (answers, seen) = raw_client_exchange(true).await;
        assert_eq!(
            answers,
            [
                (1, Answer::Status(b"200".to_vec())),
                (3, Answer::Status(b"200".to_vec()))
            ]
        );
        assert_eq!(seen, ["127.0.0.1:32379", "127.0.0.1:32379"]);
    }

    /// Shows the problem the fix is for: without it, h2 resets both streams.
    #[tokio::test]
    async fn h2_server_resets_schemed_authority_without_the_fix() {
        const PROTOCOL_ERROR: u32 = 0x1;
        let (answers, seen) = raw_client_exchange(false).await;
        assert_eq!(
            answers,
            [
                (1, Answer::Reset(PROTOCOL_ERROR)),
                (3, Answer::Reset(PROTOCOL_ERROR))
            ]
        );
        assert!(seen.is_empty());
    }

    /// A normal h2 client works through the fix, for many requests on one
    /// connection, and the fix switches to passthrough.
    #[tokio::test]
    async fn h2_client_works_through_the_fix() {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(AuthorityFix::new(server_io)));
        let (mut send, conn) = h2::client::handshake(client_io).await.unwrap();
        let conn = tokio::spawn(conn);
        for i in 0..20 {
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://127.0.0.1:32379/etcdserverpb.KV/Range{i}"))
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(req, true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200);
        }
        drop(send);
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not finish")
            .unwrap();
        assert_eq!(seen.len(), 20);
        assert!(seen.iter().all(|a| a == "127.0.0.1:32379"));
        let _ = conn.await;
    }
}
