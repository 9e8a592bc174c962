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
        // Leases the servers chose (Campaign's own).
        "lease",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    if VARYING.contains(&k.as_str()) && !v.is_object() {
                        (k, Value::String("_".into()))
                    } else if k == "members" {
                        // Listed by ID, and the IDs differ.
                        let mut list = match normalized(v) {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        list.sort_by_key(|m| m.to_string());
                        (k, Value::Array(list))
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

/// (path, body): a history etcd and kvserver are given in the same order.
const HISTORY: &[(&str, &str)] = &[
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
    (
        "/v3/auth/role/grant",
        r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
    ),
    ("/v3/auth/role/get", r#"{"role":"r"}"#),
    (
        "/v3/auth/role/revoke",
        r#"{"role":"r","key":"YQ==","range_end":"Yg=="}"#,
    ),
    ("/v3/auth/role/list", "{}"),
    ("/v3/auth/user/add", r#"{"name":"alice","password":"pw"}"#),
    ("/v3/auth/user/grant", r#"{"user":"alice","role":"r"}"#),
    ("/v3/auth/user/list", "{}"),
    ("/v3/auth/user/get", r#"{"name":"alice"}"#),
    ("/v3/auth/user/revoke", r#"{"name":"alice","role":"r"}"#),
    (
        "/v3/auth/user/changepw",
        r#"{"name":"alice","password":"pw2"}"#,
    ),
    ("/v3/auth/user/delete", r#"{"name":"alice"}"#),
    ("/v3/auth/role/delete", r#"{"role":"r"}"#),
    ("/v3/auth/role/delete", r#"{"role":"r"}"#),
    ("/v3/auth/disable", "{}"),
    ("/v3/maintenance/defragment", "{}"),
    ("/v3/maintenance/hash", "{}"),
    ("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
    (
        "/v3/cluster/member/update",
        r#"{"ID":"1","peerURLs":["http://127.0.0.1:1"]}"#,
    ),
    ("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
    ("/v3/cluster/member/promote", r#"{"ID":"1"}"#),
    ("/v3/lock/lock", r#"{"name":"bA=="}"#),
    ("/v3/election/leader", r#"{"name":"ZQ=="}"#),
];

/// Asks `calls` of etcd at `etcd` and of kvserver at `kv` in turn; their
/// answers must match (status, content type, normalized JSON).
async fn same_answers(etcd: &str, kv: &str, calls: &[(&str, &str)]) {
    for (path, body) in calls {
        let e = request(etcd, "POST", path, body).await;
        let k = request(kv, "POST", path, body).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_answers_as_etcds() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kv = Server::start(&dir.path().join("kv")).await;
    same_answers(&etcd.addr, &kv.endpoint, HISTORY).await;
    // Calls that name what an earlier answer returned: the leader of an
    // election, a lock's key, a new member's ID.
    let json = |a: &Answer| -> serde_json::Value {
        serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body))
    };
    let mut answers = Vec::new();
    for addr in [&etcd.addr, &kv.endpoint] {
        let post = |path: &'static str, body: String| async move {
            let a = request(addr, "POST", path, &body).await;
            (path, a.status, normalized(json(&a)))
        };
        let c = request(
            addr,
            "POST",
            "/v3/election/campaign",
            r#"{"name":"Zmxvdw==","value":"MQ=="}"#,
        )
        .await;
        let leader = json(&c)["leader"].to_string();
        let l = request(addr, "POST", "/v3/lock/lock", r#"{"name":"bG9jaw=="}"#).await;
        let key = json(&l)["key"].to_string();
        let add = r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#;
        let m = request(addr, "POST", "/v3/cluster/member/add", add).await;
        assert_eq!(m.status, 200, "{}", m.body);
        let id = json(&m)["member"]["ID"].as_str().unwrap().to_string();
        answers.push(vec![
            ("campaign", c.status, normalized(json(&c))),
            post(
                "/v3/election/proclaim",
                format!(r#"{{"leader":{leader},"value":"Mg=="}}"#),
            )
            .await,
            post("/v3/election/resign", format!(r#"{{"leader":{leader}}}"#)).await,
            post("/v3/lock/unlock", format!(r#"{{"key":{key}}}"#)).await,
            ("member/add", m.status, normalized(json(&m))),
            post("/v3/cluster/member/promote", format!(r#"{{"ID":"{id}"}}"#)).await,
            post("/v3/cluster/member/remove", format!(r#"{{"ID":"{id}"}}"#)).await,
        ]);
    }
    assert_eq!(answers[1], answers[0]);
    // A request over --max-request-bytes, and one over gRPC's limit
    // (512 KiB more): etcd's errors.
    for size in [1600 * 1024, 2200 * 1024] {
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; size]);
        let put = format!(r#"{{"key":"Ymln","value":"{value}"}}"#);
        let e = request(&etcd.addr, "POST", "/v3/kv/put", &put).await;
        let k = request(&kv.endpoint, "POST", "/v3/kv/put", &put).await;
        assert_eq!(
            (k.status, json(&k)),
            (e.status, json(&e)),
            "a value of {size} bytes"
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
    same_answers(
        &etcd.addr,
        &kv.endpoint,
        &[
            ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
            ("/v3/auth/enable", "{}"),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
            (
                "/v3/auth/authenticate",
                r#"{"name":"root","password":"nope"}"#,
            ),
        ],
    )
    .await;
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
    // A stream refused before its first message: grpc-gateway's stream
    // error, with the status of its code.
    for (path, body) in [
        ("/v3/maintenance/snapshot", "{}"),
        ("/v3/watch", r#"{"create_request":{"key":"Zm9v"}}"#),
    ] {
        let mut e = Streamed::post(&etcd.addr, path, body).await;
        let mut k = Streamed::post(&kv.endpoint, path, body).await;
        let (kl, el) = (k.next_json().await, e.next_json().await);
        assert_eq!((k.status, kl), (e.status, el), "{path}");
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

/// A streamed HTTP/1.1 answer read as it comes: the status, then the
/// body's lines (one JSON object each, as grpc-gateway streams them).
pub struct Streamed {
    tcp: tokio::net::TcpStream,
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// Raw bytes read and not yet taken apart.
    raw: Vec<u8>,
    /// The body's data (chunked framing removed) not yet returned as lines.
    data: String,
    chunked: bool,
    ended: bool,
}

impl Streamed {
    /// POSTs `body` to `path` and reads the answer's head.
    pub async fn post(addr: &str, path: &str, body: &str) -> Streamed {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut s = Streamed {
            tcp,
            status: 0,
            headers: BTreeMap::new(),
            raw: Vec::new(),
            data: String::new(),
            chunked: false,
            ended: false,
        };
        let end = loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(s.read_more().await, "the connection closed before the head");
        };
        let head = String::from_utf8_lossy(&s.raw[..end]).into_owned();
        s.raw.drain(..end + 4);
        let mut lines = head.lines();
        s.status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        s.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        s.chunked = s
            .headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        s
    }

    /// Reads more bytes; false at the end of the connection.
    async fn read_more(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut buf))
            .await
            .expect("more of the answer within 5 s")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves whole chunks from `raw` to `data`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.data.push_str(&String::from_utf8_lossy(&self.raw));
            self.raw.clear();
            let length = self
                .headers
                .get("content-length")
                .and_then(|l| l.parse().ok());
            if length.is_some_and(|n: usize| self.data.len() >= n) {
                self.ended = true;
            }
            return;
        }
        while let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = String::from_utf8_lossy(&self.raw[..i]).into_owned();
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if n == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < i + 2 + n + 2 {
                return;
            }
            self.data
                .push_str(&String::from_utf8_lossy(&self.raw[i + 2..i + 2 + n]));
            self.raw.drain(..i + 2 + n + 2);
        }
    }

    /// The next line of the body, or whatever is left at its end (None
    /// when nothing is).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            self.dechunk();
            if let Some(i) = self.data.find('\n') {
                let line = self.data[..i].to_string();
                self.data.drain(..=i);
                return Some(line);
            }
            if self.ended || !self.read_more().await {
                self.dechunk();
                let rest = std::mem::take(&mut self.data);
                return (!rest.is_empty()).then_some(rest);
            }
        }
    }

    /// The next line as JSON, normalized.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = self.next().await.expect("another message");
        normalized(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")))
    }
}

/// A metric's value as `/metrics` at `addr` reports it (0 if absent).
pub async fn metric(addr: &str, name: &str) -> f64 {
    let a = request(addr, "GET", "/metrics", "").await;
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_http_answer_as_etcds() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kv = Server::start(&dir.path().join("kv")).await;
    for addr in [&etcd.addr, &kv.endpoint] {
        request(
            addr,
            "POST",
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"MQ=="}"#,
        )
        .await;
    }
    // A watch from revision 1 delivers what happened, then what happens.
    let watch = r#"{"create_request":{"key":"Zm9v","start_revision":"1","prev_kv":true}}"#;
    let mut e = Streamed::post(&etcd.addr, "/v3/watch", watch).await;
    let mut k = Streamed::post(&kv.endpoint, "/v3/watch", watch).await;
    assert_eq!((k.status, e.status), (200, 200));
    assert_eq!(k.headers.get("content-type"), e.headers.get("content-type"));
    assert_eq!(k.next_json().await, e.next_json().await, "created");
    assert_eq!(k.next_json().await, e.next_json().await, "the past event");
    for addr in [&etcd.addr, &kv.endpoint] {
        request(
            addr,
            "POST",
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"Mg=="}"#,
        )
        .await;
        request(addr, "POST", "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#).await;
    }
    assert_eq!(
        k.next_json().await,
        e.next_json().await,
        "a put as it happens"
    );
    assert_eq!(k.next_json().await, e.next_json().await, "a delete");
    // The client going away ends the watch on the member.
    assert_eq!(
        metric(&kv.endpoint, "etcd_debugging_mvcc_watch_stream_total").await,
        1.0
    );
    drop(k);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&kv.endpoint, "etcd_debugging_mvcc_watch_stream_total").await != 0.0 {
        assert!(Instant::now() < deadline, "the watch outlived its client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&kv.endpoint, "etcd_debugging_mvcc_watcher_total").await,
        0.0
    );

    // Keep-alives: one answer per object in the body, then the end.
    for addr in [&etcd.addr, &kv.endpoint] {
        request(addr, "POST", "/v3/lease/grant", r#"{"TTL":"60","ID":"7"}"#).await;
    }
    for body in [
        r#"{"ID":"7"} {"ID":"7"}"#,
        r#"{"ID":"8"}"#,
        "",
        r#"{"ID":"7""#,
        "xx",
    ] {
        let mut e = Streamed::post(&etcd.addr, "/v3/lease/keepalive", body).await;
        let mut k = Streamed::post(&kv.endpoint, "/v3/lease/keepalive", body).await;
        assert_eq!(k.status, e.status, "keepalive {body}");
        loop {
            let (kl, el) = (k.next().await, e.next().await);
            let parse = |l: Option<String>| {
                l.map(|l| {
                    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                    // grpc-gateway's decoding errors are Go's words.
                    let mut v = normalized(v);
                    if v.get("code").is_some() {
                        v["error"] = "_".into();
                        v["message"] = "_".into();
                    }
                    v
                })
            };
            let (kv_, ev) = (parse(kl), parse(el));
            assert_eq!(kv_, ev, "keepalive {body}");
            if ev.is_none() {
                break;
            }
        }
    }

    // A snapshot: the database in chunks, then its SHA-256.
    let mut k = Streamed::post(&kv.endpoint, "/v3/maintenance/snapshot", "{}").await;
    let mut e = Streamed::post(&etcd.addr, "/v3/maintenance/snapshot", "{}").await;
    assert_eq!((k.status, e.status), (200, 200));
    for s in [&mut k, &mut e] {
        use base64::Engine as _;
        let mut blobs = Vec::new();
        while let Some(line) = s.next().await {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let r = &v["result"];
            assert!(r.get("header").is_none(), "{line}");
            let blob = base64::engine::general_purpose::STANDARD
                .decode(r["blob"].as_str().unwrap())
                .unwrap();
            blobs.push(blob);
        }
        let sum = blobs.pop().unwrap();
        let db: Vec<u8> = blobs.concat();
        use sha2::Digest as _;
        assert_eq!(sha2::Sha256::digest(&db).as_slice(), sum.as_slice());
    }

    // Observe: the leader now, then each new one.
    let campaign = r#"{"name":"ZWw=","value":"djE=","lease":"7"}"#;
    for addr in [&etcd.addr, &kv.endpoint] {
        let a = request(addr, "POST", "/v3/election/campaign", campaign).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let mut e = Streamed::post(&etcd.addr, "/v3/election/observe", r#"{"name":"ZWw="}"#).await;
    let mut k = Streamed::post(&kv.endpoint, "/v3/election/observe", r#"{"name":"ZWw="}"#).await;
    assert_eq!(k.next_json().await, e.next_json().await, "the leader");
    for addr in [&etcd.addr, &kv.endpoint] {
        request(addr, "POST", "/v3/lease/revoke", r#"{"ID":"7"}"#).await;
        request(
            addr,
            "POST",
            "/v3/election/campaign",
            r#"{"name":"ZWw=","value":"djI="}"#,
        )
        .await;
    }
    assert_eq!(k.next_json().await, e.next_json().await, "the next leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_gateway_answers_as_etcds() {
    let etcd = Etcd::start().await;
    let mut cl = Cluster::start(3, &[]).await;
    let leader = cl.leader(Duration::from_secs(10)).await;
    let follower = cl.members[(leader + 1) % 3].endpoint();
    let other = cl.members[(leader + 2) % 3].endpoint();
    // The key space and lease calls of the history, through a follower
    // (which forwards to the leader what only it may answer). Member
    // lists, statuses and auth differ with the member count.
    let calls: Vec<(&str, &str)> = HISTORY
        .iter()
        .copied()
        .filter(|(p, _)| {
            !p.contains("/cluster/") && !p.contains("/maintenance/") && !p.contains("/auth/")
        })
        .collect();
    same_answers(&etcd.addr, &follower, &calls).await;
    // A watch on one follower sees a put made through the other.
    let watch = r#"{"create_request":{"key":"d2F0Y2g="}}"#;
    let mut e = Streamed::post(&etcd.addr, "/v3/watch", watch).await;
    let mut k = Streamed::post(&follower, "/v3/watch", watch).await;
    assert_eq!(k.next_json().await, e.next_json().await, "created");
    for addr in [&etcd.addr, &other] {
        let put = r#"{"key":"d2F0Y2g=","value":"MQ=="}"#;
        assert_eq!(request(addr, "POST", "/v3/kv/put", put).await.status, 200);
    }
    assert_eq!(k.next_json().await, e.next_json().await, "the put");
    // Keep-alives on a follower reach the leader's lease clock.
    for addr in [&etcd.addr, &follower] {
        request(addr, "POST", "/v3/lease/grant", r#"{"TTL":"30","ID":"99"}"#).await;
    }
    let mut e = Streamed::post(&etcd.addr, "/v3/lease/keepalive", r#"{"ID":"99"}"#).await;
    let mut k = Streamed::post(&follower, "/v3/lease/keepalive", r#"{"ID":"99"}"#).await;
    assert_eq!(k.next_json().await, e.next_json().await, "a renewal");
}
