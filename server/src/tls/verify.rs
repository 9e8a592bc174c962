//! Checks on a client's certificate beyond its chain, as etcd makes them:
//! an allowed common name or hostname (`--peer-cert-allowed-cn`,
//! `--peer-cert-allowed-hostname`, `--client-cert-allowed-hostname`), a
//! revocation list (`--client-crl-file`, `--peer-crl-file`), the peer's
//! address among its certificate's SANs, and the common name a client
//! logs in with.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What a client certificate must name besides chaining to the CA.
#[derive(Debug, Clone)]
pub enum Allowed {
    CommonName(String),
    Hostname(String),
}

impl Allowed {
    fn admits(&self, der: &CertificateDer<'_>) -> bool {
        match self {
            Allowed::CommonName(cn) => common_name(der).as_deref() == Some(cn.as_str()),
            Allowed::Hostname(host) => {
                let Ok(name) = rustls::pki_types::ServerName::try_from(host.as_str()) else {
                    return false;
                };
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
            }
        }
    }
}

/// A client-certificate verifier that also requires [`Allowed`].
#[derive(Debug)]
pub struct AllowedVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: Allowed,
}

impl ClientCertVerifier for AllowedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.admits(end_entity) {
            Ok(ok)
        } else {
            Err(rustls::Error::General(
                "client certificate authentication failed".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The serial numbers a revocation list names.
type Serials = Arc<Vec<Vec<u8>>>;

/// A revocation list file, read again whenever it changes (etcd reads it
/// at every connection), so that revoking a certificate needs no restart.
#[derive(Debug)]
pub struct Crl {
    path: PathBuf,
    /// The file's modification time and the serials it revokes.
    cached: Mutex<Option<(SystemTime, Serials)>>,
}

impl Crl {
    /// Reads `path` once now, so that a bad file is refused at start.
    pub fn open(path: &Path) -> Result<Crl, String> {
        let crl = Crl {
            path: path.to_path_buf(),
            cached: Mutex::new(None),
        };
        crl.serials()?;
        Ok(crl)
    }

    fn serials(&self) -> Result<Serials, String> {
        let what = |e: &dyn std::fmt::Display| format!("{}: {e}", self.path.display());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| what(&e))?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, serials)) = cached.as_ref() {
            if *at == modified {
                return Ok(serials.clone());
            }
        }
        let bytes = std::fs::read(&self.path).map_err(|e| what(&e))?;
        let der = match x509_parser::pem::parse_x509_pem(&bytes) {
            Ok((_, pem)) if pem.label.contains("CRL") => pem.contents,
            _ => bytes,
        };
        let (_, list) = x509_parser::parse_x509_crl(&der).map_err(|e| what(&e))?;
        let serials: Vec<Vec<u8>> = list
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        let serials = Arc::new(serials);
        *cached = Some((modified, serials.clone()));
        Ok(serials)
    }

    /// Refuses a chain any certificate of which the list revokes.
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let serials = self.serials()?;
        for der in chain {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let serial = cert.raw_serial();
            if serials.iter().any(|s| trim(s) == trim(serial)) {
                return Err(format!(
                    "transport: certificate serial {} revoked",
                    hex(trim(serial))
                ));
            }
        }
        Ok(())
    }
}

/// A DER integer's bytes without the sign padding.
fn trim(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// etcd's check of a peer's client certificate against the address it
/// connects from: with IP SANs, one must be that address; else with DNS
/// SANs, one must resolve to it. A certificate with neither passes.
pub async fn check_san(der: &[u8], remote: IpAddr) -> Result<(), String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Err("cannot parse the peer's certificate".into());
    };
    let mut ips = Vec::new();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    if ips.is_empty() && names.is_empty() {
        return Ok(());
    }
    let remote = canonical(remote);
    if ips.iter().any(|ip| canonical(*ip) == remote) {
        return Ok(());
    }
    if names.is_empty() {
        return Err(format!(
            "x509: certificate is valid for {}, not {remote}",
            ips.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for name in &names {
        let host = name.trim_start_matches("*.");
        if let Ok(addrs) = tokio::net::lookup_host((host, 0)).await {
            if addrs.map(|a| canonical(a.ip())).any(|ip| ip == remote) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "tls: {:?} does not match any of DNSNames {names:?}",
        remote.to_string()
    ))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
