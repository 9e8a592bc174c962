//! etcd's security flags (`etcd --help`, "Security"), each also read from
//! its `ETCD_*` variable.

use std::path::PathBuf;

/// The TLS flags for the client and the peer side.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// Path to the client server TLS cert file.
    #[arg(help_heading = "Security", long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(help_heading = "Security", long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Enable client cert authentication: a client must present a
    /// certificate signed by --trusted-ca-file (with auth enabled, its
    /// common name is the user when it sends no token).
    #[arg(help_heading = "Security", long, env = "ETCD_CLIENT_CERT_AUTH", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Path to the client certificate revocation list file (read again for
    /// every connection).
    #[arg(help_heading = "Security", long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// Allowed TLS hostname for client cert authentication.
    #[arg(
        help_heading = "Security",
        long,
        env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME"
    )]
    pub client_cert_allowed_hostname: Option<String>,

    /// Path to the client server TLS trusted CA cert file (client
    /// certificates are then required).
    #[arg(help_heading = "Security", long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Client TLS using generated certificates (kept in
    /// <data-dir>/fixtures/client) when --cert-file and --key-file are not
    /// given.
    #[arg(help_heading = "Security", long, env = "ETCD_AUTO_TLS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: bool,

    /// Path to the peer server TLS cert file (also this member's client
    /// certificate towards its peers).
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Enable peer client cert authentication.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// Path to the peer server TLS trusted CA file.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Required CN for client certs connecting to the peer endpoint.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// Allowed TLS hostname for inter peer authentication.
    #[arg(
        help_heading = "Security",
        long,
        env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME"
    )]
    pub peer_cert_allowed_hostname: Option<String>,

    /// Peer TLS using self-generated certificates (kept in
    /// <data-dir>/fixtures/peer) if --peer-key-file and --peer-cert-file
    /// are not provided.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_AUTO_TLS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_auto_tls: bool,

    /// Path to the peer certificate revocation list file.
    #[arg(help_heading = "Security", long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// Comma-separated list of supported TLS 1.2 cipher suites between
    /// client/server and peers, by their Go names (empty: rustls's
    /// defaults). TLS 1.3 suites are always offered, as in Go.
    #[arg(
        help_heading = "Security",
        long,
        env = "ETCD_CIPHER_SUITES",
        default_value = ""
    )]
    pub cipher_suites: String,
}
