//! `kvtool migrate from-etcd`: the bbolt reader on files built by hand, bad
//! input refused with nothing written, and a history written to the real
//! etcd 3.4 carried over whole (every revision from the compacted one up,
//! leases, users and permissions, HashKV), from a snapshot file, from a
//! stopped member's data directory, and into a 3-member cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mvcc::KeyValue;
use server::pb::etcdserverpb as pb;
use tonic::transport::Channel;
use tools::bbolt::{Bbolt, BboltError};

use super::bolt_file::{self, branch_bytes, bucket_value, inline_bucket, leaf_bytes, Elem};
use super::{describe, free_port, json_line, kvtool_async, Member};

fn elems(n: usize, prefix: &str) -> Vec<Elem> {
    (0..n)
        .map(|i| (0, format!("{prefix}{i:04}").into_bytes(), vec![b'v'; 20]))
        .collect()
}

/// Top-level buckets `big` (a branch page over two leaves, the second
/// with a value spanning overflow pages) and `small` (inline).
fn layered_file() -> Vec<u8> {
    let mut second = elems(50, "b");
    second[10].2 = vec![b'x'; 6000];
    let root = leaf_bytes(
        3,
        &[
            (1, b"big".to_vec(), bucket_value(4, &[])),
            (1, b"small".to_vec(), inline_bucket(&elems(3, "s"))),
        ],
    );
    let branch = branch_bytes(4, &[(b"a0000".to_vec(), 5), (b"b0000".to_vec(), 6)]);
    bolt_file::file(vec![
        root,
        branch,
        leaf_bytes(5, &elems(40, "a")),
        leaf_bytes(6, &second),
    ])
}

#[test]
fn the_bbolt_reader_walks_branch_overflow_and_inline_pages() {
    let f = layered_file();
    let db = Bbolt::open(&f).unwrap();
    assert_eq!(db.meta().txid, 4, "the newer meta wins");
    let big = db.bucket(b"big").unwrap().unwrap();
    let mut it = db.entries(big);
    let keys: Vec<Vec<u8>> = it.by_ref().map(|e| e.unwrap().key.to_vec()).collect();
    assert_eq!(keys.len(), 90);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(it.branch_pages(), 1);
    assert_eq!(it.overflow_pages(), 1);
    let big_value = db
        .entries(big)
        .map(|e| e.unwrap())
        .find(|e| e.key == b"b0010")
        .unwrap();
    assert_eq!(big_value.value, vec![b'x'; 6000]);
    let small = db.bucket(b"small").unwrap().unwrap();
    let got: Vec<_> = db.entries(small).map(|e| e.unwrap().key.to_vec()).collect();
    assert_eq!(
        got,
        vec![b"s0000".to_vec(), b"s0001".to_vec(), b"s0002".to_vec()]
    );
    assert!(db.bucket(b"none").unwrap().is_none());

    // A torn meta 0: meta 1 (the older transaction) is used.
    let mut torn = layered_file();
    torn[16 + 48] ^= 1;
    let db = Bbolt::open(&torn).unwrap();
    assert_eq!((db.meta().page, db.meta().txid), (1, 3));
    assert_eq!(db.entries(db.bucket(b"big").unwrap().unwrap()).count(), 90);

    // A child past the end of the database, and a page reached twice.
    let mut bad = layered_file();
    let child = 4 * bolt_file::PS + 16 + 16 + 8;
    bad[child..child + 8].copy_from_slice(&99u64.to_le_bytes());
    let db = Bbolt::open(&bad).unwrap();
    let e = db
        .entries(db.bucket(b"big").unwrap().unwrap())
        .find_map(Result::err);
    assert!(
        matches!(e, Some(BboltError::PageOutOfRange { page: 99, .. })),
        "{e:?}"
    );
    bad[child..child + 8].copy_from_slice(&4u64.to_le_bytes());
    let db = Bbolt::open(&bad).unwrap();
    let e = db
        .entries(db.bucket(b"big").unwrap().unwrap())
        .find_map(Result::err);
    assert!(
        e.as_ref()
            .is_some_and(|e| e.to_string().contains("reached twice")),
        "{e:?}"
    );
}

/// Runs `migrate from-etcd` on `source` into `parent/out`; returns the
/// failure's stderr after checking nothing was written.
async fn refused(source: &Path, parent: &Path) -> String {
    let before: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = parent.join("out");
    let o = kvtool_async(&[
        "migrate",
        "from-etcd",
        source.to_str().unwrap(),
        "--data-dir",
        out.to_str().unwrap(),
    ])
    .await;
    assert!(!o.status.success(), "{}", describe(&o));
    let after: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "nothing is written: {}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_one_line_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good = layered_file();
    let truncated = write("truncated.db", &good[..good.len() - bolt_file::PS]);
    assert!(refused(&truncated, dir.path())
        .await
        .contains("out of range"));
    let random: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
    let random = write("random.db", &random);
    assert!(refused(&random, dir.path())
        .await
        .contains("not a bbolt database"));
    let mut metas = good.clone();
    for m in [0, bolt_file::PS] {
        metas[m + 16 + 40] ^= 0xff; // the high-water mark, under the checksum
    }
    let metas = write("metas.db", &metas);
    let err = refused(&metas, dir.path()).await;
    assert!(
        err.contains("both meta pages are invalid") && err.contains("checksum"),
        "{err}"
    );
    let other = write(
        "other.db",
        &bolt_file::one_bucket(b"other", &[(b"k", b"v")]),
    );
    let err = refused(&other, dir.path()).await;
    assert!(
        err.contains("no `key` bucket (its buckets: other)"),
        "{err}"
    );
    // An etcd layout with a record that is not a revision.
    let not_rev = write(
        "badrev.db",
        &bolt_file::one_bucket(b"key", &[(b"short", b"v")]),
    );
    let err = refused(&not_rev, dir.path()).await;
    assert!(err.contains("where a revision"), "{err}");
    let missing = dir.path().join("missing");
    assert!(refused(&missing, dir.path()).await.contains("no such file"));
}

/// Real etcd, one member, on free ports; killed when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
}

impl Etcd {
    async fn start(data_dir: &Path) -> Etcd {
        let endpoint = format!("127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &format!("http://{endpoint}")])
            .args(["--advertise-client-urls", &format!("http://{endpoint}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; scripts/test.sh installs it)");
        let e = Etcd {
            child,
            endpoint,
            data_dir: data_dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while connect(&e.endpoint)
            .await
            .status(pb::StatusRequest {})
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        e
    }

    /// SIGTERM, and waits (bounded) for it to exit.
    fn stop(&mut self) {
        // SAFETY: kill(2) on the PID of a child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "etcd did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs etcd's own etcdctl against `endpoint` (bounded to 60 s).
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("etcdctl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "etcdctl {args:?}: {}", describe(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A client of one endpoint, with a token once authenticated.
#[derive(Clone, Debug)]
struct Client {
    ch: Channel,
    token: Option<String>,
}

async fn connect(endpoint: &str) -> pb::maintenance_client::MaintenanceClient<Channel> {
    pb::maintenance_client::MaintenanceClient::new(
        Channel::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect_lazy(),
    )
}

impl Client {
    fn new(endpoint: &str) -> Client {
        Client {
            ch: Channel::from_shared(format!("http://{endpoint}"))
                .unwrap()
                .connect_lazy(),
            token: None,
        }
    }

    async fn login(endpoint: &str, user: &str, password: &str) -> Result<Client, tonic::Status> {
        let mut c = Client::new(endpoint);
        let r = pb::auth_client::AuthClient::new(c.ch.clone())
            .authenticate(pb::AuthenticateRequest {
                name: user.into(),
                password: password.into(),
            })
            .await?;
        c.token = Some(r.into_inner().token);
        Ok(c)
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.parse().unwrap());
        }
        r
    }

    fn kv(&self) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.ch.clone())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> i64 {
        let r = self
            .kv()
            .put(self.req(pb::PutRequest {
                key: key.into(),
                value,
                lease,
                ..Default::default()
            }))
            .await
            .expect("put");
        r.into_inner().header.unwrap().revision
    }

    async fn range(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
    ) -> Result<Vec<KeyValue>, tonic::Status> {
        let r = self
            .kv()
            .range(self.req(pb::RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                revision: rev,
                ..Default::default()
            }))
            .await?;
        Ok(r.into_inner().kvs)
    }

    async fn hash_kv(&self, rev: i64) -> u32 {
        pb::maintenance_client::MaintenanceClient::new(self.ch.clone())
            .hash_kv(self.req(pb::HashKvRequest { revision: rev }))
            .await
            .expect("hash kv")
            .into_inner()
            .hash
    }

    /// Every event from `from` up to revision `to`, from one watch.
    async fn events(&self, from: i64, to: i64) -> Vec<(i32, KeyValue)> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: from,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let mut stream = pb::watch_client::WatchClient::new(self.ch.clone())
            .watch(self.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .expect("watch")
            .into_inner();
        let mut out = Vec::new();
        let deadline = Duration::from_secs(30);
        while out
            .last()
            .is_none_or(|(_, kv): &(i32, KeyValue)| kv.mod_revision < to)
        {
            let msg = tokio::time::timeout(deadline, stream.message())
                .await
                .expect("events within 30 s")
                .expect("watch stream")
                .expect("the stream stays open");
            assert!(!msg.canceled, "watch canceled: {}", msg.cancel_reason);
            for e in msg.events {
                out.push((e.r#type, e.kv.unwrap()));
            }
        }
        drop(tx);
        out
    }
}

fn put_op(key: String, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        })),
    }
}

/// Writes a history to etcd: thousands of keys (so the `key` bucket has
/// branch pages), values larger than a page (overflow pages), overwrites,
/// deletes, transactions both ways, leases with keys, a compaction, and
/// writes after it. Returns the compacted revision.
async fn write_history(c: &Client) -> i64 {
    let kv = c.kv();
    for t in 0..40 {
        let ops = (0..50)
            .map(|i| {
                put_op(
                    format!("k/{:05}", t * 50 + i),
                    format!("value {t} {i} {}", "x".repeat(120)).into_bytes(),
                )
            })
            .collect();
        kv.clone()
            .txn(c.req(pb::TxnRequest {
                success: ops,
                ..Default::default()
            }))
            .await
            .expect("txn");
    }
    for i in 0..10 {
        c.put(
            &format!("big/{i}"),
            vec![b'0' + i as u8; 10_000 + i * 1000],
            0,
        )
        .await;
    }
    for i in (0..2000).step_by(7) {
        c.put(
            &format!("k/{i:05}"),
            format!("overwritten {i}").into_bytes(),
            0,
        )
        .await;
    }
    for i in (0..2000).step_by(13) {
        kv.clone()
            .delete_range(c.req(pb::DeleteRangeRequest {
                key: format!("k/{i:05}").into_bytes(),
                ..Default::default()
            }))
            .await
            .expect("delete");
    }
    // A range delete, then a transaction whose compare fails.
    kv.clone()
        .delete_range(c.req(pb::DeleteRangeRequest {
            key: b"k/0150".to_vec(),
            range_end: b"k/0160".to_vec(),
            ..Default::default()
        }))
        .await
        .expect("delete range");
    kv.clone()
        .txn(c.req(pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"k/00001".to_vec(),
                target: pb::compare::CompareTarget::Version as i32,
                result: pb::compare::CompareResult::Equal as i32,
                target_union: Some(pb::compare::TargetUnion::Version(99)),
                ..Default::default()
            }],
            success: vec![put_op("never".into(), b"x".to_vec())],
            failure: vec![
                put_op("txn/else".into(), b"1".to_vec()),
                put_op("txn/else2".into(), b"2".to_vec()),
            ],
        }))
        .await
        .expect("txn");
    let lease = pb::lease_client::LeaseClient::new(c.ch.clone());
    let mut leases = Vec::new();
    for ttl in [600, 900] {
        let l = lease
            .clone()
            .lease_grant(c.req(pb::LeaseGrantRequest { ttl, id: 0 }))
            .await
            .expect("grant")
            .into_inner();
        leases.push(l.id);
    }
    for i in 0..5 {
        c.put(&format!("leased/a{i}"), b"a".to_vec(), leases[0])
            .await;
        c.put(&format!("leased/b{i}"), b"b".to_vec(), leases[1])
            .await;
    }
    let compacted = c.put("k/00002", b"before the compaction".to_vec(), 0).await - 3;
    kv.clone()
        .compact(c.req(pb::CompactionRequest {
            revision: compacted,
            physical: true,
        }))
        .await
        .expect("compact");
    for i in 0..200 {
        c.put(
            &format!("after/{:03}", i % 50),
            format!("after {i}").into_bytes(),
            0,
        )
        .await;
    }
    compacted
}

/// Starts the member a migrated data directory holds.
async fn start_migrated(data_dir: &Path, name: &str, peer: &str, cluster: &str) -> Member {
    Member::start_with_peer(
        data_dir,
        peer,
        &[
            "--name",
            name,
            "--initial-cluster",
            cluster,
            "--initial-advertise-peer-urls",
            peer,
        ],
    )
    .await
}

/// Everything a client can see of the history from `compacted` up and of
/// the leases is the same on `a` as on `b`.
async fn same_history(a: &Client, b: &Client, compacted: i64, current: i64) {
    let all = |c: &Client, rev| {
        let c = c.clone();
        async move { c.range(&[0], &[0], rev).await.expect("range") }
    };
    // The state at the compacted revision, and every change after it.
    assert_eq!(all(a, compacted).await, all(b, compacted).await);
    let (ea, eb) = (
        a.events(compacted + 1, current).await,
        b.events(compacted + 1, current).await,
    );
    assert_eq!(ea.len(), eb.len());
    assert!(ea == eb, "the events after the compaction differ");
    for rev in (compacted..=current).step_by(37).chain([current]) {
        assert_eq!(all(a, rev).await, all(b, rev).await, "at {rev}");
        if rev > compacted {
            assert_eq!(a.hash_kv(rev).await, b.hash_kv(rev).await, "hash at {rev}");
        }
    }
    assert_eq!(a.hash_kv(0).await, b.hash_kv(0).await);
    // Below the compacted revision both refuse.
    let e = b.range(b"k/", b"k0", compacted - 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

async fn leases(c: &Client) -> Vec<(i64, i64, Vec<Vec<u8>>)> {
    let lease = pb::lease_client::LeaseClient::new(c.ch.clone());
    let list = lease
        .clone()
        .lease_leases(c.req(pb::LeaseLeasesRequest {}))
        .await
        .expect("leases")
        .into_inner();
    let mut out = Vec::new();
    for l in list.leases {
        let t = lease
            .clone()
            .lease_time_to_live(c.req(pb::LeaseTimeToLiveRequest {
                id: l.id,
                keys: true,
            }))
            .await
            .expect("ttl")
            .into_inner();
        let mut keys = t.keys;
        keys.sort();
        out.push((t.id, t.granted_ttl, keys));
    }
    out.sort();
    out
}

async fn ttl_left(c: &Client, id: i64) -> i64 {
    pb::lease_client::LeaseClient::new(c.ch.clone())
        .lease_time_to_live(c.req(pb::LeaseTimeToLiveRequest { id, keys: false }))
        .await
        .expect("ttl")
        .into_inner()
        .ttl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_history_is_carried_over_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(&dir.path().join("etcd")).await;
    let ep = etcd.endpoint.clone();
    let compacted = write_history(&Client::new(&ep)).await;
    for args in [
        &["user", "add", "root:rootpw", "--interactive=false"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "k/",
            "--prefix=true",
        ],
        &[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "after/000",
        ],
        &["user", "add", "alice:alicepw", "--interactive=false"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        etcdctl(&ep, args);
    }
    let snap = dir.path().join("etcd.snapshot");
    etcdctl(
        &ep,
        &[
            "--user",
            "root:rootpw",
            "snapshot",
            "save",
            snap.to_str().unwrap(),
        ],
    );
    let etcd_root = Client::login(&ep, "root", "rootpw").await.unwrap();
    let current = etcd_root.range(b"after/", b"after0", 0).await.unwrap()[0]
        .mod_revision
        .max(1);
    let current = {
        // The newest revision: the header of any read.
        let r = etcd_root
            .kv()
            .range(etcd_root.req(pb::RangeRequest {
                key: b"x".to_vec(),
                ..Default::default()
            }))
            .await
            .unwrap();
        r.into_inner().header.unwrap().revision.max(current)
    };

    // The snapshot really has what the reader must handle.
    {
        let data = std::fs::read(&snap).unwrap();
        let e = tools::etcd::EtcdBackend::open(&data).unwrap();
        let mut it = e.entries(b"key").unwrap();
        let n = it.by_ref().count();
        assert!(n > 1500, "{n} revisions");
        assert!(it.branch_pages() > 0 && it.overflow_pages() > 0);
    }

    // From the snapshot file, into one member.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("m1={peer}");
    let d1 = dir.path().join("m1");
    let o = kvtool_async(&[
        "-w",
        "json",
        "migrate",
        "from-etcd",
        snap.to_str().unwrap(),
        "--data-dir",
        d1.to_str().unwrap(),
        "--initial-cluster",
        &cluster,
    ])
    .await;
    assert!(o.status.success(), "{}", describe(&o));
    let summary = json_line(&o);
    assert_eq!(summary["revision"], current, "{summary}");
    assert_eq!(summary["compact_revision"], compacted);
    assert_eq!(summary["leases"], 2);
    assert_eq!(summary["users"], 2);
    // etcd stores no record for the built-in root role.
    assert_eq!(summary["roles"], 1);
    assert_eq!(summary["auth_enabled"], true);
    assert_eq!(summary["sha256_checked"], true);
    let m = start_migrated(&d1, "m1", &peer, &cluster).await;
    let kv_root = Client::login(&m.endpoint, "root", "rootpw")
        .await
        .expect("root logs in");
    same_history(&etcd_root, &kv_root, compacted, current).await;
    let etcd_leases = leases(&etcd_root).await;
    assert_eq!(etcd_leases.len(), 2);
    assert_eq!(leases(&kv_root).await, etcd_leases);
    // The leases count down on kvserver.
    let id = etcd_leases[0].0;
    let first = ttl_left(&kv_root, id).await;
    // A member that starts leading extends every lease by an election
    // timeout, as etcd does.
    assert!(first > 0 && first <= etcd_leases[0].1 + 2, "{first}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(ttl_left(&kv_root, id).await < first);
    // The same users, passwords and permissions.
    let e = Client::login(&m.endpoint, "alice", "wrong")
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let alice = Client::login(&m.endpoint, "alice", "alicepw")
        .await
        .expect("alice logs in");
    assert!(!alice.range(b"k/00003", b"", 0).await.unwrap().is_empty());
    let e = alice.range(b"big/1", b"", 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    alice.put("after/000", b"alice".to_vec(), 0).await;
    assert!(
        Client::new(&m.endpoint).range(b"k/", b"", 0).await.is_err(),
        "auth is on"
    );
    m.stop().await;

    // A running etcd's data directory is refused, nothing written.
    let d2 = dir.path().join("m2");
    let o = kvtool_async(&[
        "migrate",
        "from-etcd",
        etcd.data_dir.to_str().unwrap(),
        "--data-dir",
        d2.to_str().unwrap(),
    ])
    .await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("locked by a running etcd"),
        "{}",
        describe(&o)
    );
    assert!(!d2.exists());
    let etcd_hash = etcd_root.hash_kv(0).await;
    etcd.stop();
    // Stopped, its data directory migrates directly.
    let peer2 = format!("http://127.0.0.1:{}", free_port());
    let cluster2 = format!("m2={peer2}");
    let o = kvtool_async(&[
        "migrate",
        "from-etcd",
        etcd.data_dir.to_str().unwrap(),
        "--data-dir",
        d2.to_str().unwrap(),
        "--initial-cluster",
        &cluster2,
    ])
    .await;
    assert!(o.status.success(), "{}", describe(&o));
    let m = start_migrated(&d2, "m2", &peer2, &cluster2).await;
    let c = Client::login(&m.endpoint, "root", "rootpw").await.unwrap();
    assert_eq!(c.hash_kv(0).await, etcd_hash);
    m.stop().await;

    // One snapshot, three members of a new cluster.
    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let cluster3 = (0..3)
        .map(|i| format!("n{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let d3 = dir.path().join("three");
    let o = kvtool_async(&[
        "-w",
        "json",
        "migrate",
        "from-etcd",
        snap.to_str().unwrap(),
        "--data-dir",
        d3.to_str().unwrap(),
        "--initial-cluster",
        &cluster3,
    ])
    .await;
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(json_line(&o)["data_dirs"].as_array().unwrap().len(), 3);
    let start = |i: usize| {
        let (d, peer, cluster) = (d3.join(format!("n{i}")), peers[i].clone(), cluster3.clone());
        async move { start_migrated(&d, &format!("n{i}"), &peer, &cluster).await }
    };
    let (a, b, c) = tokio::join!(start(0), start(1), start(2));
    let snap_hash = {
        let data = std::fs::read(&snap).unwrap();
        assert!(!data.is_empty());
        etcd_hash
    };
    for m in [&a, &b, &c] {
        let cl = Client::login(&m.endpoint, "root", "rootpw").await.unwrap();
        assert_eq!(cl.hash_kv(current).await, snap_hash);
    }
    let ca = Client::login(&a.endpoint, "root", "rootpw").await.unwrap();
    let rev = ca.put("after/new", b"x".to_vec(), 0).await;
    let cc = Client::login(&c.endpoint, "root", "rootpw").await.unwrap();
    assert_eq!(
        cc.range(b"after/new", b"", 0).await.unwrap()[0].mod_revision,
        rev
    );
    for m in [a, b, c] {
        m.stop().await;
    }
}
