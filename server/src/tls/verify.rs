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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str], serial: u64) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn allowed_names_and_common_names() {
        let c = cert("peer", &["127.0.0.1", "node1.example"], 1);
        assert_eq!(common_name(&c).as_deref(), Some("peer"));
        assert!(Allowed::CommonName("peer".into()).admits(&c));
        assert!(!Allowed::CommonName("Peer".into()).admits(&c));
        assert!(Allowed::Hostname("node1.example".into()).admits(&c));
        assert!(Allowed::Hostname("127.0.0.1".into()).admits(&c));
        assert!(!Allowed::Hostname("node2.example".into()).admits(&c));
    }

    #[tokio::test]
    async fn a_peer_certificate_must_name_its_address() {
        let ip = cert("peer", &["127.0.0.1"], 1);
        assert!(check_san(&ip, "127.0.0.1".parse().unwrap()).await.is_ok());
        assert!(check_san(&ip, "::ffff:127.0.0.1".parse().unwrap())
            .await
            .is_ok());
        let e = check_san(&ip, "10.0.0.9".parse().unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("not 10.0.0.9"), "{e}");
        assert!(
            check_san(&cert("peer", &[], 2), "10.0.0.9".parse().unwrap())
                .await
                .is_ok()
        );
        let named = cert("peer", &["localhost"], 3);
        assert!(check_san(&named, "127.0.0.1".parse().unwrap())
            .await
            .is_ok());
    }

    #[test]
    fn revocation_lists_are_read_again_when_they_change() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let list = |serials: &[u64]| {
            let now = SystemTime::now();
            rcgen::CertificateRevocationListParams {
                this_update: now.into(),
                next_update: (now + std::time::Duration::from_secs(3600)).into(),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(*s),
                        revocation_time: now.into(),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap()
            .pem()
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::fs::write(&path, list(&[200])).unwrap();
        let crl = Crl::open(&path).unwrap();
        let (a, b) = (cert("a", &[], 200), cert("b", &[], 7));
        let e = crl.check(std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(e, "transport: certificate serial c8 revoked");
        assert!(crl.check(std::slice::from_ref(&b)).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, list(&[7])).unwrap();
        assert!(crl.check(std::slice::from_ref(&a)).is_ok());
        assert!(crl.check(std::slice::from_ref(&b)).is_err());
        std::fs::write(&path, "not a list").unwrap();
        assert!(Crl::open(&path).is_err());
    }
}
