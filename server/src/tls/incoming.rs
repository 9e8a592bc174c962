//! Accepting connections on a client or peer listener, in plaintext or
//! with TLS.
//!
//! Each TLS handshake runs in its own task with a deadline, so a client
//! that stalls, speaks plaintext to a TLS port, or presents a certificate
//! the member refuses costs one task and one log line, never the listener
//! or another client (as etcd's tlsListener). The checks etcd makes after
//! the handshake (revocation list, the peer's SANs) run there too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::ServerSide;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted and not yet taken by the server.
const BACKLOG: usize = 128;

/// What a handler may learn about the connection a request came on
/// (`tonic::Request::extensions`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The common name of the client's verified certificate.
    pub common_name: Option<Arc<str>>,
}

/// An accepted connection.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, ConnInfo),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                common_name: None,
            },
            Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    tokio::spawn(async move {
        loop {
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
                    if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(side) => {
                    let side = side.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&side, tcp, remote))
                            .await
                        {
                            Ok(Ok(conn)) => {
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

async fn handshake(side: &ServerSide, tcp: TcpStream, remote: SocketAddr) -> Result<Conn, String> {
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
    Ok(Conn::Tls(
        Box::new(stream),
        ConnInfo {
            remote: Some(remote),
            common_name,
        },
    ))
}
