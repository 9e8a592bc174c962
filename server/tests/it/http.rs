//! The client port's HTTP side: the same answers as etcd 3.4.23's, asked
//! of both side by side, and /health following etcd's rule.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cluster::Cluster;
use crate::{free_port, Server};

/// An HTTP/1.1 answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// One HTTP/1.1 request on `io` (the connection closed after it).
pub async fn request_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    io.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut raw))
        .await
        .expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One plaintext HTTP/1.1 request to `addr`.
pub async fn request(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    request_on(tcp, method, path, body).await
}

/// Real etcd on free ports; killed when dropped.
struct Etcd {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &format!("http://{addr}")])
            .args(["--advertise-client-urls", &format!("http://{addr}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await {
                if request_on(tcp, "GET", "/health", "").await.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Etcd {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The headers both must send alike (not Date or Content-Length).
const COMPARED: &[&str] = &[
    "content-type",
    "allow",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_and_errors_answer_as_etcd() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kv = Server::start(&dir.path().join("kv")).await;
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/health?exclude=NOSPACE"),
        ("GET", "/version"),
        ("POST", "/health"),
        ("POST", "/version"),
        ("OPTIONS", "/health"),
        ("GET", "/no/such/path"),
        ("GET", "/v2/keys"),
    ] {
        let e = request(&etcd.addr, method, path, "").await;
        let k = request(&kv.endpoint, method, path, "").await;
        assert_eq!(k.status, e.status, "{method} {path}");
        assert_eq!(k.body, e.body, "{method} {path}");
        for h in COMPARED {
            assert_eq!(k.headers.get(*h), e.headers.get(*h), "{method} {path}: {h}");
        }
    }
    // etcd 3.5's probes.
    assert_eq!(
        request(&kv.endpoint, "GET", "/livez", "").await.body,
        "ok\n"
    );
    assert_eq!(
        request(&kv.endpoint, "GET", "/readyz", "").await.status,
        200
    );
    // gRPC still works on the same port.
    let mut c = kv.client().await;
    c.put("k", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_false_with_an_alarm_or_without_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Server::start(&dir.path().join("kv")).await;
    let mut c = kv.client().await;
    let id = c.status().await.unwrap().header().unwrap().member_id();
    let mut opts = etcd_client::AlarmOptions::new();
    opts.with_member(id);
    c.alarm(
        etcd_client::AlarmAction::Activate,
        etcd_client::AlarmType::Nospace,
        Some(opts),
    )
    .await
    .unwrap();
    let a = request(&kv.endpoint, "GET", "/health", "").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (503, "{\"health\":\"false\"}\n")
    );
    assert_eq!(
        request(&kv.endpoint, "GET", "/readyz", "").await.status,
        503
    );
    let a = request(&kv.endpoint, "GET", "/health?exclude=NOSPACE", "").await;
    assert_eq!(a.status, 200, "an excluded alarm: {}", a.body);
    assert_eq!(request(&kv.endpoint, "GET", "/livez", "").await.status, 200);

    // A member that lost its quorum has no leader.
    let mut cl = Cluster::start(3, &[]).await;
    cl.leader(Duration::from_secs(10)).await;
    let ep = cl.members[0].endpoint();
    assert_eq!(request(&ep, "GET", "/health", "").await.status, 200);
    cl.kill(1);
    cl.kill(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = request(&ep, "GET", "/health", "").await;
        if a.status == 503 {
            assert_eq!(a.body, "{\"health\":\"false\"}\n");
            break;
        }
        assert!(Instant::now() < deadline, "still healthy without a quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
