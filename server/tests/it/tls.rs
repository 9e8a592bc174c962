//! TLS for clients and peers, checked with the real etcdctl and with
//! certificates these tests make (rcgen): who is let in, who is refused,
//! and that the member keeps serving the others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

use crate::cluster::Cluster;
use crate::free_port;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A certificate authority made for a test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate for `cn` valid for 127.0.0.1 (expired when asked),
    /// with its serial; returns (cert PEM, key PEM).
    fn issue(&self, cn: &str, serial: u64, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        if expired {
            p.not_before = (now - 3 * DAY).into();
            p.not_after = (now - DAY).into();
        } else {
            p.not_before = (now - DAY).into();
            p.not_after = (now + DAY).into();
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A revocation list of `serials`, signed by this CA.
    fn crl(&self, serials: &[u64]) -> String {
        let now = SystemTime::now();
        CertificateRevocationListParams {
            this_update: now.into(),
            next_update: (now + DAY).into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// Writes `text` to `dir/name`; returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// A (cert, key) pair written into `dir` as `<name>.pem`, `<name>-key.pem`.
fn write_pair(dir: &Path, name: &str, (cert, key): &(String, String)) -> (String, String) {
    (
        write(dir, &format!("{name}.pem"), cert),
        write(dir, &format!("{name}-key.pem"), key),
    )
}

/// The real etcdctl against `endpoint` with `tls` flags; (ok, output).
fn ctl(endpoint: &str, tls: &[&str], args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "--endpoints",
        endpoint,
        "--dial-timeout",
        "2s",
        "--command-timeout",
        "3s",
    ];
    all.extend_from_slice(tls);
    all.extend_from_slice(args);
    crate::etcdctl(&all)
}

/// Waits (at most 10 s) until `c` reads `value` at `key` serializably.
async fn wait_value(c: &mut etcd_client::Client, key: &str, value: &[u8]) {
    let opts = etcd_client::GetOptions::new().with_serializable();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(key, Some(opts.clone())).await.unwrap();
        if r.kvs().first().map(|kv| kv.value()) == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{key} did not become {value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` over HTTP/1.1 and TLS, with a client certificate.
fn https_get(
    endpoint: &str,
    ca_pem: &str,
    (cert, key): &(String, String),
    path: &str,
) -> crate::http::Answer {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = endpoint.trim_start_matches("https://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        crate::http::request_on(tls, "GET", path, "").await
    })
}

/// One kvserver with TLS on its client URL; killed when dropped.
struct TlsMember {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl TlsMember {
    fn spawn(dir: &Path, flags: &[&str]) -> TlsMember {
        TlsMember::spawn_env(dir, flags, &[])
    }

    /// [`TlsMember::spawn`] with `env` set too.
    fn spawn_env(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> TlsMember {
        let client = format!("https://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = dir.join("kvserver.log");
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(flags)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kvserver");
        TlsMember {
            child,
            endpoint: client,
            log,
        }
    }

    /// Waits (at most 30 s) until etcdctl with `tls` flags gets an answer.
    fn wait(&mut self, tls: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ctl(&self.endpoint, tls, &["endpoint", "status"]).0 {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("kvserver exited: {s}\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not serving:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_flags<'a>(ca: &'a str, (cert, key): &'a (String, String)) -> Vec<&'a str> {
    vec!["--cacert", ca, "--cert", cert, "--key", key]
}

#[test]
fn client_certificates_are_checked_and_name_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("test CA");
    let other = Ca::new("another CA");
    let ca_file = write(d, "ca.pem", &ca.pem);
    let server = write_pair(d, "server", &ca.issue("server", 1, false));
    let root = write_pair(d, "root", &ca.issue("root", 2, false));
    let alice = write_pair(d, "alice", &ca.issue("alice", 3, false));
    let bob = write_pair(d, "bob", &ca.issue("bob", 4, false));
    let revoked = write_pair(d, "revoked", &ca.issue("revoked", 5, false));
    let expired = write_pair(d, "expired", &ca.issue("expired", 6, true));
    let stranger = write_pair(d, "stranger", &other.issue("root", 7, false));
    let crl = write(d, "crl.pem", &ca.crl(&[5]));

    // Through etcd's variables (which kvserver once ignored) and a flag.
    let metrics = format!("https://127.0.0.1:{}", crate::free_port());
    let mut m = TlsMember::spawn_env(
        d,
        &["--client-crl-file", &crl, "--listen-metrics-urls", &metrics],
        &[
            ("ETCD_CERT_FILE", &server.0),
            ("ETCD_KEY_FILE", &server.1),
            ("ETCD_TRUSTED_CA_FILE", &ca_file),
            ("ETCD_CLIENT_CERT_AUTH", "true"),
        ],
    );
    let ep = m.endpoint.clone();
    m.wait(&tls_flags(&ca_file, &root));

    let (ok, out) = ctl(&ep, &tls_flags(&ca_file, &root), &["put", "a", "1"]);
    assert!(ok, "a client with a good certificate: {out}");

    // The HTTP side is behind the same TLS (ALPN http/1.1).
    let health = https_get(&ep, &ca.pem, &ca.issue("curl", 20, false), "/health");
    assert_eq!(health.body, "{\"health\":\"true\"}");
    // So are the metrics listeners, with the client side's certificates.
    let scrape = https_get(
        &metrics,
        &ca.pem,
        &ca.issue("prometheus", 21, false),
        "/metrics",
    );
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.body.contains("\netcd_server_has_leader 1\n"),
        "{}",
        scrape.body
    );

    // Refused cleanly, one after the other: no certificate, plaintext on
    // the TLS port, a certificate from another CA, a revoked one, an
    // expired one.
    let http = ep.replace("https://", "http://");
    let refused: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "no client certificate",
            ep.clone(),
            vec!["--cacert", &ca_file],
        ),
        ("plaintext", http.clone(), vec![]),
        ("another CA", ep.clone(), tls_flags(&ca_file, &stranger)),
        ("revoked", ep.clone(), tls_flags(&ca_file, &revoked)),
        ("expired", ep.clone(), tls_flags(&ca_file, &expired)),
    ];
    for (what, endpoint, flags) in &refused {
        let (ok, out) = ctl(endpoint, flags, &["get", "a"]);
        assert!(!ok, "{what}: let in: {out}");
        assert!(m.running(), "{what}: the member stopped");
    }
    // A server certificate the client does not trust.
    let other_ca = write(d, "other-ca.pem", &other.pem);
    let (ok, _) = ctl(&ep, &tls_flags(&other_ca, &stranger), &["get", "a"]);
    assert!(!ok, "the client trusted a server it had no CA for");
    let log = m.log();
    assert!(
        log.contains("rejected connection") && log.contains("revoked"),
        "the refusals are logged:\n{log}"
    );

    // Revoking bob takes effect without a restart (the list is read again
    // when it changes).
    assert!(ctl(&ep, &tls_flags(&ca_file, &bob), &["get", "a"]).0);
    std::thread::sleep(Duration::from_millis(20));
    write(d, "crl.pem", &ca.crl(&[4, 5]));
    assert!(!ctl(&ep, &tls_flags(&ca_file, &bob), &["get", "a"]).0);

    // CommonName authentication: with auth on and no token, the
    // certificate's CN is the user.
    let rt = tls_flags(&ca_file, &root);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "a-only"],
        &["role", "grant-permission", "a-only", "readwrite", "a"],
        &["user", "grant-role", "alice", "a-only"],
        &["auth", "enable"],
    ] {
        let (ok, out) = ctl(&ep, &rt, args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    let al = tls_flags(&ca_file, &alice);
    let (ok, out) = ctl(&ep, &al, &["put", "a", "2"]);
    assert!(ok, "alice by her certificate, on her key: {out}");
    let (ok, out) = ctl(&ep, &al, &["put", "b", "2"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = ctl(&ep, &rt, &["get", "b"]);
    assert!(ok, "root by its certificate: {out}");
    // A token wins over the certificate (etcd's order): root's password
    // through alice's connection may write b.
    let mut with_user = al.clone();
    with_user.extend(["--user", "root:rootpw"]);
    let (ok, out) = ctl(&ep, &with_user, &["put", "b", "3"]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&ep, &al, &["get", "b"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    assert!(m.running());
}

#[test]
fn auto_tls_makes_and_keeps_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let insecure = ["--insecure-transport=false", "--insecure-skip-tls-verify"];
    let cert = d.join("data/fixtures/client/cert.pem");
    let first = {
        let mut m = TlsMember::spawn(d, &["--auto-tls"]);
        m.wait(&insecure);
        let (ok, out) = ctl(&m.endpoint, &insecure, &["put", "k", "v"]);
        assert!(ok, "{out}");
        // Encrypted, and not trusted without the certificate.
        assert!(!ctl(&m.endpoint, &[], &["get", "k"]).0);
        let cert_file = cert.to_string_lossy().into_owned();
        let (ok, out) = ctl(&m.endpoint, &["--cacert", &cert_file], &["get", "k"]);
        assert!(ok && out.contains('v'), "{out}");
        std::fs::read(&cert).unwrap()
    };
    // The same through etcd's variable.
    let mut m = TlsMember::spawn_env(d, &[], &[("ETCD_AUTO_TLS", "true")]);
    m.wait(&insecure);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "a restart keeps the certificate"
    );
}

#[test]
fn tls_flags_that_would_do_nothing_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("test CA");
    let (cert, key) = write_pair(d, "server", &ca.issue("server", 1, false));
    let refuse = |args: &[&str], expect: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .arg("--data-dir")
            .arg(d.join("data"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.lines().count() <= 3, "one clear line: {err}");
    };
    let port = free_port();
    let https = format!("https://127.0.0.1:{port}");
    let http = format!("http://127.0.0.1:{port}");
    refuse(
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--listen-client-urls",
            &http,
        ],
        "--cert-file/--key-file is set, but no --listen-client-urls URL is https://",
    );
    refuse(
        &[
            "--listen-client-urls",
            &https,
            "--advertise-client-urls",
            &https,
        ],
        "TLS key/cert (--cert-file/--key-file) must be provided",
    );
    refuse(
        &["--cert-file", &cert, "--listen-client-urls", &https],
        "--cert-file and --key-file must both be present",
    );
    refuse(
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &cert,
            "--listen-client-urls",
            &https,
        ],
        "--key-file",
    );
    refuse(
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--listen-client-urls",
            &https,
            "--cipher-suites",
            "TLS_BOGUS",
        ],
        "unexpected TLS cipher suite \"TLS_BOGUS\"",
    );
    refuse(
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--listen-client-urls",
            &https,
            "--cipher-suites",
            "TLS_RSA_WITH_AES_128_CBC_SHA",
        ],
        "TLS_RSA_WITH_AES_128_CBC_SHA is not offered",
    );
    refuse(
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--listen-client-urls",
            &https,
            "--client-crl-file",
            &cert,
        ],
        "--client-crl-file is set, but no client certificate is asked for",
    );
    refuse(
        &["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
        "--cipher-suites is set, but no URL is https://",
    );
    refuse(
        &[
            "--peer-cert-allowed-cn",
            "a",
            "--peer-cert-allowed-hostname",
            "b",
        ],
        "AllowedCN and AllowedHostname are mutually exclusive",
    );
    refuse(
        &["--auto-tls", "--listen-client-urls", &http],
        "--auto-tls is set, but no --listen-client-urls URL is https://",
    );
}

/// Flags for peer TLS with `pair` as the member's certificate.
fn peer_flags(ca: &str, pair: &(String, String)) -> Vec<String> {
    [
        "--peer-trusted-ca-file",
        ca,
        "--peer-cert-file",
        &pair.0,
        "--peer-key-file",
        &pair.1,
        "--peer-client-cert-auth",
        "--peer-cert-allowed-cn",
        "peer",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_tls_cluster_replicates_and_refuses_wrong_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("peer CA");
    let other = Ca::new("another CA");
    let ca_file = write(d, "ca.pem", &ca.pem);
    let good = write_pair(d, "peer", &ca.issue("peer", 10, false));
    let wrong_ca = write_pair(d, "wrong-ca", &other.issue("peer", 11, false));
    let wrong_cn = write_pair(d, "wrong-cn", &ca.issue("intruder", 12, false));
    let good_flags = peer_flags(&ca_file, &good);
    let wrong_flags = peer_flags(&ca_file, &wrong_ca);
    let g: Vec<&str> = good_flags.iter().map(String::as_str).collect();
    let w: Vec<&str> = wrong_flags.iter().map(String::as_str).collect();
    // Member 3 starts with a certificate from another CA.
    let mut c = Cluster::spawn_all_with(3, &[], &[&g, &g, &w], "https");
    c.wait_serving(0).await;
    c.wait_serving(1).await;
    let mut c0 = c.client(0).await;
    c0.put("k", "v1", None)
        .await
        .expect("a put through a TLS quorum");
    wait_value(&mut c.client(1).await, "k", b"v1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = c.log(0) + &c.log(1);
    assert!(
        log.contains("rejected connection"),
        "member 3 was let in:\n{log}"
    );
    assert!(
        !c.log(2).contains("serving clients"),
        "member 3 served with a certificate from another CA:\n{}",
        c.log_tail(2)
    );

    // The right CA, the wrong common name: refused too.
    let wn = peer_flags(&ca_file, &wrong_cn);
    let wn: Vec<&str> = wn.iter().map(String::as_str).collect();
    c.restart_with(2, &wn);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!c.log(2).contains("serving clients"), "{}", c.log_tail(2));
    assert!(
        (c.log(0) + &c.log(1)).contains("client certificate authentication failed"),
        "the wrong CN is named in the log"
    );

    // With the right certificate it joins and catches up.
    c.restart_with(2, &g);
    c.wait_serving(2).await;
    wait_value(&mut c.client(2).await, "k", b"v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_auto_tls_cluster_elects_and_replicates() {
    let mut c = Cluster::spawn_all_with(3, &["--peer-auto-tls"], &[], "https");
    for i in 0..3 {
        c.wait_serving(i).await;
    }
    let mut c0 = c.client(0).await;
    c0.put("k", "v", None).await.expect("put");
    let mut c2 = c.client(2).await;
    let r = c2
        .get("k", None)
        .await
        .expect("a linearizable read on another member");
    assert_eq!(r.kvs()[0].value(), b"v");
}
