//! # TLS for clients and peers (rustls, ring), as etcd's security flags
//! configure it
//!
//! - [`flags`]: the flags; [`auto`]: `--auto-tls` certificates;
//!   [`ciphers`]: `--cipher-suites`; [`verify`]: the checks on a client's
//!   certificate; [`incoming`]: accepting connections; [`dial`]: peer
//!   channels.
//!
//! ## Rules (etcd 3.4's)
//! - A listener serves TLS exactly when its URL is `https://`; an
//!   `https://` URL without a certificate (given, or made by auto TLS)
//!   is refused at start.
//! - With a trusted CA file or `--client-cert-auth`, every client must
//!   present a certificate that chains to that CA (the system's roots when
//!   no CA file is given); the allowed CN or hostname is checked on top.
//! - A revocation list refuses the connections whose chain holds a listed
//!   serial; it is read again when it changes.
//! - A member's peer certificate is also its client certificate towards
//!   its peers, and a peer listener checks a client certificate's SANs
//!   against the address it connects from unless
//!   `--experimental-peer-skip-client-san-verification`.
//! - With auto TLS, peers encrypt but do not verify each other (nothing
//!   signed the certificates), as etcd.

pub mod auto;
pub mod ciphers;
pub mod dial;
pub mod flags;
pub mod incoming;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use dial::Dialer;
pub use flags::TlsFlags;
pub use incoming::ConnInfo;

/// A TLS setting that cannot be used, named by its flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0} and {1} must both be present")]
    Pair(&'static str, &'static str),
    #[error("TLS key/cert ({0}) must be provided for {1} with HTTPS scheme")]
    HttpsWithoutCert(&'static str, String),
    #[error("{0} is set, but no {1} URL is https://: it would do nothing (use https:// URLs, or unset it)")]
    NoHttps(&'static str, &'static str),
    #[error("{0} is set, but no client certificate is asked for: it would do nothing (add {1})")]
    NoClientCerts(&'static str, &'static str),
    #[error("--cipher-suites is set, but no URL is https://: it would do nothing")]
    CiphersWithoutTls,
    #[error("{0} needs {1} with auto TLS (a self-signed certificate cannot be verified)")]
    AutoWithCertAuth(&'static str, &'static str),
    #[error("AllowedCN and AllowedHostname are mutually exclusive (cn={0:?}, hostname={1:?})")]
    AllowedBoth(String, String),
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipher(String),
    #[error("--cipher-suites: {0} is not offered by kvserver; use the forward-secret AEAD suites ({offered})", offered = ciphers::offered())]
    CipherNotOffered(String),
    #[error("--auto-tls: cannot make a certificate: {0}")]
    AutoTls(rcgen::Error),
    #[error("{0}: {1}")]
    Rustls(&'static str, String),
}

/// The server side of one listener's TLS.
pub struct ServerSide {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub crl: Option<verify::Crl>,
    /// Check a client certificate's SANs against the remote address.
    pub check_san: bool,
}

/// What the flags ask for, resolved: files read, certificates made.
#[derive(Default)]
pub struct Tls {
    /// For `https://` client URLs.
    pub client: Option<Arc<ServerSide>>,
    /// For `https://` peer URLs.
    pub peer: Option<Arc<ServerSide>>,
    pub dialer: Dialer,
}

/// One side's files and checks (etcd's TLSInfo).
struct Info {
    side: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trusted_ca: Option<PathBuf>,
    cert_auth: bool,
    crl: Option<PathBuf>,
    allowed: Option<verify::Allowed>,
    self_signed: bool,
}

fn provider(cipher_suites: &str) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(suites) = ciphers::parse(cipher_suites)? {
        p.cipher_suites = suites;
    }
    Ok(Arc::new(p))
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The CA roots: the file's, or the system's when none is given.
fn roots(flag: &'static str, ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in read_certs(flag, path)? {
                roots.add(c).map_err(|e| TlsError::File {
                    flag,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

impl Info {
    fn flag(&self, client: &'static str, peer: &'static str) -> &'static str {
        if self.side == "client" {
            client
        } else {
            peer
        }
    }

    fn server(
        &self,
        provider: &Arc<CryptoProvider>,
        check_san: bool,
    ) -> Result<ServerSide, TlsError> {
        let cert_flag = self.flag("--cert-file", "--peer-cert-file");
        let key_flag = self.flag("--key-file", "--peer-key-file");
        let ca_flag = self.flag("--trusted-ca-file", "--peer-trusted-ca-file");
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(TlsError::Pair(cert_flag, key_flag));
        };
        let certs = read_certs(cert_flag, cert)?;
        let key = read_key(key_flag, key)?;
        let rustls_err = |e: rustls::Error| TlsError::Rustls(cert_flag, e.to_string());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?;
        let builder = if self.trusted_ca.is_some() || self.cert_auth {
            let roots = roots(ca_flag, self.trusted_ca.as_deref())?;
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(ca_flag, e.to_string()))?;
            let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match &self.allowed
            {
                Some(allowed) => Arc::new(verify::AllowedVerifier {
                    inner,
                    allowed: allowed.clone(),
                }),
                None => inner,
            };
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder.with_single_cert(certs, key).map_err(rustls_err)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        if self.side == "client" {
            // The client port's HTTP side (`crate::http`).
            cfg.alpn_protocols.push(b"http/1.1".to_vec());
        }
        let crl_flag = self.flag("--client-crl-file", "--peer-crl-file");
        let crl = match &self.crl {
            Some(path) => Some(verify::Crl::open(path).map_err(|reason| TlsError::File {
                flag: crl_flag,
                path: path.clone(),
                reason,
            })?),
            None => None,
        };
        Ok(ServerSide {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            crl,
            check_san,
        })
    }

    /// The client side towards peers.
    fn client(&self, provider: &Arc<CryptoProvider>) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls("--peer-cert-file", e.to_string()))?;
        let builder = if self.self_signed {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
        } else {
            builder.with_root_certificates(roots(
                "--peer-trusted-ca-file",
                self.trusted_ca.as_deref(),
            )?)
        };
        let mut cfg = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    read_certs("--peer-cert-file", cert)?,
                    read_key("--peer-key-file", key)?,
                )
                .map_err(|e| TlsError::Rustls("--peer-cert-file", e.to_string()))?,
            _ => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// A client config for `https://` peers when no peer TLS flag is set.
pub(crate) fn default_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls("peer TLS", e.to_string()))?
            .with_root_certificates(roots("--peer-trusted-ca-file", None)?)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The hosts of `urls` (for a self-signed certificate's SANs).
fn hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| {
            let rest = u.split_once("://")?.1.trim_end_matches('/');
            let host = match rest.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => rest,
            };
            Some(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
        })
        .collect()
}

fn any_https(urls: &[String]) -> bool {
    urls.iter().any(|u| u.starts_with("https://"))
}

impl Tls {
    /// Resolves the TLS flags for a member whose data dir is `data_dir`
    /// and whose listen URLs are given; refuses what etcd refuses, and
    /// what would be accepted and do nothing.
    pub fn from_flags(
        f: &TlsFlags,
        skip_peer_san_check: bool,
        data_dir: &Path,
        client_urls: &[String],
        peer_urls: &[String],
    ) -> Result<Tls, TlsError> {
        let provider = provider(&f.cipher_suites)?;
        let allowed_peer = match (&f.peer_cert_allowed_cn, &f.peer_cert_allowed_hostname) {
            (Some(cn), Some(host)) => return Err(TlsError::AllowedBoth(cn.clone(), host.clone())),
            (Some(cn), None) => Some(verify::Allowed::CommonName(cn.clone())),
            (None, Some(host)) => Some(verify::Allowed::Hostname(host.clone())),
            (None, None) => None,
        };
        let mut client = Info {
            side: "client",
            cert: f.cert_file.clone(),
            key: f.key_file.clone(),
            trusted_ca: f.trusted_ca_file.clone(),
            cert_auth: f.client_cert_auth,
            crl: f.client_crl_file.clone(),
            allowed: f
                .client_cert_allowed_hostname
                .clone()
                .map(verify::Allowed::Hostname),
            self_signed: false,
        };
        let mut peer = Info {
            side: "peer",
            cert: f.peer_cert_file.clone(),
            key: f.peer_key_file.clone(),
            trusted_ca: f.peer_trusted_ca_file.clone(),
            cert_auth: f.peer_client_cert_auth,
            crl: f.peer_crl_file.clone(),
            allowed: allowed_peer,
            self_signed: false,
        };
        let mut tls = Tls::default();
        for (info, urls, auto, what) in [
            (&mut client, client_urls, f.auto_tls, "--listen-client-urls"),
            (&mut peer, peer_urls, f.peer_auto_tls, "--listen-peer-urls"),
        ] {
            let cert_flags =
                info.flag("--cert-file/--key-file", "--peer-cert-file/--peer-key-file");
            let auto_flag = info.flag("--auto-tls", "--peer-auto-tls");
            let ca_flag = info.flag("--trusted-ca-file", "--peer-trusted-ca-file");
            if info.cert.is_some() != info.key.is_some() {
                let (c, k) = cert_flags.split_once('/').unwrap_or((cert_flags, ""));
                return Err(TlsError::Pair(c, k));
            }
            if auto && info.cert.is_none() {
                if !any_https(urls) {
                    return Err(TlsError::NoHttps(auto_flag, what));
                }
                if info.cert_auth && info.trusted_ca.is_none() {
                    return Err(TlsError::AutoWithCertAuth(
                        info.flag("--client-cert-auth", "--peer-client-cert-auth"),
                        ca_flag,
                    ));
                }
                let (c, k) =
                    auto::self_cert(&data_dir.join("fixtures").join(info.side), &hosts(urls))?;
                info.cert = Some(c);
                info.key = Some(k);
                info.self_signed = true;
            } else if auto {
                tracing::warn!("ignoring {} auto TLS since certs given", info.side);
            }
            // A revocation list or an allowed name only checks client
            // certificates, which are asked for only with a CA or cert auth.
            if !(info.trusted_ca.is_some() || info.cert_auth) {
                let unused = if info.crl.is_some() {
                    Some(info.flag("--client-crl-file", "--peer-crl-file"))
                } else if info.allowed.is_some() {
                    Some(info.flag(
                        "--client-cert-allowed-hostname",
                        "--peer-cert-allowed-cn/--peer-cert-allowed-hostname",
                    ))
                } else {
                    None
                };
                if let Some(flag) = unused {
                    return Err(TlsError::NoClientCerts(
                        flag,
                        info.flag("--client-cert-auth", "--peer-client-cert-auth"),
                    ));
                }
            }
            let set = info.cert.is_some()
                || info.trusted_ca.is_some()
                || info.cert_auth
                || info.crl.is_some()
                || info.allowed.is_some();
            if !any_https(urls) {
                // The peer side's certificate also serves as a client
                // certificate towards https:// peers: not nothing.
                if set && info.side == "client" {
                    return Err(TlsError::NoHttps(cert_flags, what));
                }
                continue;
            }
            if info.cert.is_none() {
                let url = urls
                    .iter()
                    .find(|u| u.starts_with("https://"))
                    .cloned()
                    .unwrap_or_default();
                return Err(TlsError::HttpsWithoutCert(cert_flags, url));
            }
            let check_san = info.side == "peer" && !skip_peer_san_check;
            let side = Arc::new(info.server(&provider, check_san)?);
            if info.side == "client" {
                tls.client = Some(side);
            } else {
                tls.peer = Some(side);
            }
        }
        if !f.cipher_suites.trim().is_empty() && !any_https(client_urls) && !any_https(peer_urls) {
            return Err(TlsError::CiphersWithoutTls);
        }
        let peer_client_set = peer.cert.is_some() || peer.trusted_ca.is_some();
        if peer_client_set {
            tls.dialer = Dialer::new(Some(Arc::new(peer.client(&provider)?)));
        }
        Ok(tls)
    }
}

/// A server verifier that checks the handshake's signatures but not the
/// certificate chain: for peers with self-signed certificates (auto TLS).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
