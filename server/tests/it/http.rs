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
    io: S,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    request_on_with(io, method, path, "", body).await
}

/// [`request_on`] with `extra` header lines (each ending in `\r\n`).
async fn request_on_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> Answer {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    io.write_all(req.as_bytes()).await.unwrap();
    read_answer(io).await
}

/// Reads one HTTP/1.1 answer to the end of the connection.
async fn read_answer<S: AsyncRead + Unpin>(mut io: S) -> Answer {
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
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v: &String| v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A chunked body's data (its trailers dropped).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
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

/// `v` with the values that differ between any two members (IDs, URLs,
/// sizes, hashes) replaced, so that etcd's and kvserver's answers compare.
fn normalized(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    const VARYING: &[&str] = &[
        "cluster_id",
        "member_id",
        "ID",
        "leader",
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftAppliedIndex",
        "peerURLs",
        "clientURLs",
        "hash",
        "name",
        "token",
        "key",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    if VARYING.contains(&k.as_str()) && !v.is_object() {
                        (k, Value::String("_".into()))
                    } else {
                        (k, normalized(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normalized).collect()),
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_answers_as_etcds() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kv = Server::start(&dir.path().join("kv")).await;
    // (path, body): a history both are given in the same order.
    let calls: &[(&str, &str)] = &[
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        (
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","serializable":true,"keys_only":true}"#,
        ),
        (
            "/v3/kv/range",
            r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","no_such_field":1}"#),
        ("/v3/kv/range", ""),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"Zm9v","value":"cXV4"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"LESS","version":"1"}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        ("/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"1"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60"}"#),
        ("/v3/lease/revoke", r#"{"ID":"12345"}"#),
        ("/v3/kv/lease/timetolive", r#"{"ID":"12345"}"#),
        ("/v3/cluster/member/list", "{}"),
        ("/v3/maintenance/status", "{}"),
        ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        ("/v3/auth/user/get", r#"{"name":"nobody"}"#),
        ("/v3/auth/enable", "{}"),
        ("/v3/auth/role/add", r#"{"name":"r"}"#),
        ("/v3/auth/role/get", r#"{"role":"r"}"#),
        ("/v3/lock/lock", r#"{"name":"bA=="}"#),
        ("/v3/election/leader", r#"{"name":"ZQ=="}"#),
    ];
    for (path, body) in calls {
        let e = request(&etcd.addr, "POST", path, body).await;
        let k = request(&kv.endpoint, "POST", path, body).await;
        assert_eq!(
            k.status, e.status,
            "POST {path} {body}: {} vs etcd's {}",
            k.body, e.body
        );
        assert_eq!(
            k.headers.get("content-type"),
            e.headers.get("content-type"),
            "{path}"
        );
        let parse = |s: &str| {
            serde_json::from_str::<serde_json::Value>(s)
                .unwrap_or_else(|_| panic!("{path}: not JSON: {s}"))
        };
        assert_eq!(
            normalized(parse(&k.body)),
            normalized(parse(&e.body)),
            "POST {path} {body}"
        );
    }
    // A wrong method and malformed input: the gateway's status and code.
    let (e, k) = (
        request(&etcd.addr, "GET", "/v3/kv/range", "").await,
        request(&kv.endpoint, "GET", "/v3/kv/range", "").await,
    );
    assert_eq!((k.status, k.body.as_str()), (e.status, e.body.as_str()));
    for bad in [
        r#"{"key":"#,
        r#"{"key":"@@@"}"#,
        r#"{"key":"Zm9v","limit":"x"}"#,
        "[1]",
    ] {
        let e = request(&etcd.addr, "POST", "/v3/kv/range", bad).await;
        let k = request(&kv.endpoint, "POST", "/v3/kv/range", bad).await;
        assert_eq!(k.status, e.status, "{bad}: {} vs {}", k.body, e.body);
        let code = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["code"].clone();
        assert_eq!(code(&k.body), code(&e.body), "{bad}");
    }
    // Auth through the gateway: the token in the Authorization header is
    // checked as over gRPC.
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        (
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"nope"}"#,
        ),
    ] {
        let e = request(&etcd.addr, "POST", path, body).await;
        let k = request(&kv.endpoint, "POST", path, body).await;
        assert_eq!(
            k.status, e.status,
            "{path}: {} vs etcd's {}",
            k.body, e.body
        );
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            normalized(parse(&k.body)),
            normalized(parse(&e.body)),
            "{path}"
        );
    }
    let token = |a: &Answer| {
        serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let login = r#"{"name":"root","password":"pw"}"#;
    let et = token(&request(&etcd.addr, "POST", "/v3/auth/authenticate", login).await);
    let kt = token(&request(&kv.endpoint, "POST", "/v3/auth/authenticate", login).await);
    for (addr, t) in [(&etcd.addr, "bogus"), (&kv.endpoint, "bogus")] {
        let a = request_with(addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#, t).await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(
            a.body.contains("etcdserver: invalid auth token"),
            "{}",
            a.body
        );
    }
    let put = r#"{"key":"YQ==","value":"Yg=="}"#;
    let e = request_with(&etcd.addr, "/v3/kv/put", put, &et).await;
    let k = request_with(&kv.endpoint, "/v3/kv/put", put, &kt).await;
    assert_eq!((k.status, e.status), (200, 200), "{} / {}", k.body, e.body);

    // The member is unharmed.
    let mut c = kv.client().await;
    let _ = c.status().await.unwrap();
}

/// A POST with `token` in the Authorization header.
async fn request_with(addr: &str, path: &str, body: &str, token: &str) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = format!("Authorization: {token}\r\n");
    request_on_with(tcp, "POST", path, &auth, body).await
}
