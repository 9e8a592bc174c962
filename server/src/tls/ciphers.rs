//! `--cipher-suites`: Go's names for TLS 1.2 cipher suites, mapped onto
//! what rustls offers.
//!
//! Go (and so etcd) applies the list to TLS 1.2 only; TLS 1.3's suites
//! are always on. rustls offers only the forward-secret AEAD suites of
//! TLS 1.2, so Go's CBC, RC4, 3DES and static-RSA suites are refused by
//! name rather than silently left out.

use rustls::crypto::ring::cipher_suite as rs;
use rustls::SupportedCipherSuite;

use super::TlsError;

/// The TLS 1.2 suites rustls has, by Go's names (and etcd's two aliases
/// without `_SHA256`).
const SUPPORTED: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        rs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        rs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        rs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        rs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        rs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        rs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        rs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        rs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3's suites: Go accepts their names and ignores them (they cannot
/// be turned off), and so does kvserver.
const TLS13: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's other suite names: valid for etcd, not offered by rustls.
const NOT_OFFERED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The suites a `--cipher-suites` value asks for (None: the defaults).
/// The result holds the chosen TLS 1.2 suites followed by all of TLS
/// 1.3's.
pub fn parse(list: &str) -> Result<Option<Vec<SupportedCipherSuite>>, TlsError> {
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let mut suites = Vec::new();
    for name in names {
        if let Some((_, s)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
            if !suites.contains(s) {
                suites.push(*s);
            }
        } else if TLS13.contains(&name) {
        } else if NOT_OFFERED.contains(&name) {
            return Err(TlsError::CipherNotOffered(name.to_string()));
        } else {
            return Err(TlsError::UnknownCipher(name.to_string()));
        }
    }
    suites.extend([
        rs::TLS13_AES_128_GCM_SHA256,
        rs::TLS13_AES_256_GCM_SHA384,
        rs::TLS13_CHACHA20_POLY1305_SHA256,
    ]);
    Ok(Some(suites))
}

/// The names `--cipher-suites` may take (for the refusal's message).
pub fn offered() -> String {
    SUPPORTED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_map_or_are_refused() {
        assert!(parse("").unwrap().is_none());
        let s =
            parse("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305")
                .unwrap()
                .unwrap();
        assert_eq!(s.len(), 2 + 3);
        assert_eq!(s[0], rs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
        assert_eq!(s[1], rs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256);
        assert!(matches!(
            parse("TLS_RSA_WITH_AES_128_CBC_SHA"),
            Err(TlsError::CipherNotOffered(_))
        ));
        assert_eq!(
            parse("TLS_NOPE").unwrap_err().to_string(),
            "unexpected TLS cipher suite \"TLS_NOPE\""
        );
    }
}
