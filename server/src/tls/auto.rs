//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate made at
//! the first start and kept in the data dir (etcd's `fixtures/client` and
//! `fixtures/peer`), for the hosts of the listen URLs.
//!
//! As etcd, a peer dialling a member with such a certificate cannot verify
//! it (nobody signed it): it encrypts but does not authenticate. Use
//! certificates from a CA where that matters.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::TlsError;

/// The certificate and key files for `hosts` in `dir`, made now unless
/// both are there from an earlier start.
pub fn self_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io {
            what: "writing a self-signed certificate",
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(TlsError::AutoTls)?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, "etcd");
    params.distinguished_name = name;
    for host in hosts {
        params.subject_alt_names.push(match host.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(host.clone().try_into().map_err(TlsError::AutoTls)?),
        });
    }
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    // A peer's certificate is its client certificate too.
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::AutoTls)?;
    let cert = params.self_signed(&key).map_err(TlsError::AutoTls)?;
    // The key first, readable by this user only, each file written whole
    // and renamed into place.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
    tracing::info!("made a self-signed certificate {}", cert_path.display());
    Ok((cert_path, key_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
