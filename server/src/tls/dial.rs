//! Dialling peers: plaintext for `http://` peer URLs, TLS for `https://`
//! ones, with this member's peer certificate as its client certificate.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// How long a TCP connect plus TLS handshake to a peer may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Makes channels to peer URLs.
#[derive(Clone, Default, Debug)]
pub struct Dialer {
    /// The client side of peer TLS (None: `https://` peers are dialled
    /// with the system's roots and no client certificate, as etcd does
    /// without peer TLS flags).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Dialer {
        Dialer { tls }
    }

    /// A channel to `url` (connected on first use).
    pub fn channel(&self, url: &str, endpoint: Endpoint) -> Result<Channel, super::TlsError> {
        if !url.starts_with("https://") {
            return Ok(endpoint.connect_lazy());
        }
        let cfg = match &self.tls {
            Some(c) => c.clone(),
            None => super::default_client_config()?,
        };
        let connector = tower::service_fn(move |uri: tonic::codegen::http::Uri| {
            let cfg = cfg.clone();
            async move {
                tokio::time::timeout(DIAL_TIMEOUT, dial(cfg, uri))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out")
                    })?
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

async fn dial(
    cfg: Arc<rustls::ClientConfig>,
    uri: tonic::codegen::http::Uri,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let host = uri.host().ok_or_else(|| bad("a peer URL without a host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host).map_err(|_| bad("a peer URL host that is no name"))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}
