//! Accepting connections on a client or peer listener, in plaintext or
//! with TLS.
//!
//! Each TLS handshake runs in its own task with a deadline, so a client
//! that stalls, speaks plaintext to a TLS port, or presents a certificate
//! the member refuses costs one task and one log line, never the listener
//! or another client (as etcd's tlsListener). The checks etcd makes after
//! the handshake (revocation list, the peer's SANs) run there too.
//!
//! A listener holds at most [`MAX_CONNECTIONS`] connections (handshakes
//! included) and runs at most [`MAX_HANDSHAKES`] handshakes at once: past
//! that it stops accepting until one closes, and further clients wait in
//! the kernel's backlog, so no number of clients exhausts the member's
//! descriptors, memory or CPU.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::ServerSide;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted and not yet taken by the server.
const BACKLOG: usize = 128;

/// Connections one listener holds at once, at most.
pub const MAX_CONNECTIONS: usize = 10_000;

/// TLS handshakes one listener runs at once, at most (each costs a
/// signature or two of CPU).
pub const MAX_HANDSHAKES: usize = 256;

/// What a handler may learn about the connection a request came on
/// (`tonic::Request::extensions`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The common name of the client's verified certificate.
    pub common_name: Option<Arc<str>>,
}

/// An accepted connection, holding its place among the listener's
/// [`MAX_CONNECTIONS`] until it is dropped.
pub struct Conn {
    io: Io,
    info: Option<ConnInfo>,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match (&self.io, &self.info) {
            (_, Some(info)) => info.clone(),
            (Io::Plain(s), None) => ConnInfo {
                remote: s.peer_addr().ok(),
                common_name: None,
            },
            (Io::Tls(s), None) => ConnInfo {
                remote: s.get_ref().0.peer_addr().ok(),
                common_name: None,
            },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections `listener` accepts, with TLS when `tls` is given.
/// Accepting stops when the receiver is dropped (the server stopped).
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<ServerSide>>,
) -> mpsc::Receiver<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut warned: Option<std::time::Instant> = None;
        loop {
            // A place for the next connection first: at the bound, nothing
            // more is accepted until a connection closes.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            "{MAX_CONNECTIONS} connections are open: accepting more once one closes"
                        );
                        warned = Some(std::time::Instant::now());
                    }
                    tokio::select! {
                        s = slots.clone().acquire_owned() => match s {
                            Ok(s) => s,
                            Err(_) => return,
                        },
                        _ = tx.closed() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little and go on, as
                    // Go's server does.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    let conn = Conn {
                        io: Io::Plain(tcp),
                        info: None,
                        _slot: slot,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(side) => {
                    let side = side.clone();
                    let tx = tx.clone();
                    let Ok(turn) = handshakes.clone().acquire_owned().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        let done =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&side, tcp, remote))
                                .await;
                        drop(turn);
                        match done {
                            Ok(Ok((io, info))) => {
                                let conn = Conn {
                                    io,
                                    info: Some(info),
                                    _slot: slot,
                                };
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => tracing::warn!(
                                remote_addr = %remote,
                                "rejected connection: {e}"
                            ),
                            Err(_) => tracing::warn!(
                                remote_addr = %remote,
                                "rejected connection: TLS handshake timed out"
                            ),
                        }
                    });
                }
            }
        }
    });
    rx
}

async fn handshake(
    side: &ServerSide,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<(Io, ConnInfo), String> {
    let stream = side.acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let (_, session) = stream.get_ref();
    let chain: Vec<_> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if let Some(crl) = &side.crl {
        crl.check(&chain)?;
    }
    if side.check_san {
        if let Some(leaf) = chain.first() {
            super::verify::check_san(leaf, remote.ip()).await?;
        }
    }
    let common_name = chain
        .first()
        .and_then(|c| super::verify::common_name(c))
        .map(Arc::from);
    Ok((
        Io::Tls(Box::new(stream)),
        ConnInfo {
            remote: Some(remote),
            common_name,
        },
    ))
}
