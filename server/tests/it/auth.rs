//! Authentication and authorization through a real client: users with each
//! kind of key permission against each operation (allowed exactly where
//! etcd allows), admin operations, permissions and passwords changed under
//! a client that holds a token, the auth store across restarts and members,
//! and a flood of wrong passwords.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, GetOptions, LockOptions, Permission, PutOptions, Txn,
    TxnOp, WatchOptions,
};

use crate::Server;

const ROOT_PW: &str = "root-pw";

fn code_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => (tonic::Code::Unknown, other.to_string()),
    }
}

fn is_denied<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: allowed ({v:?}), expected permission denied"),
        Err(e) => assert_eq!(
            code_of(e),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied".to_string()
            ),
            "{what}"
        ),
    }
}

fn is_allowed<T>(r: Result<T, etcd_client::Error>, what: &str) {
    if let Err(e) = r {
        panic!("{what}: refused: {e}");
    }
}

async fn as_user(endpoint: &str, user: &str, pw: &str) -> Client {
    Client::connect([endpoint], Some(ConnectOptions::new().with_user(user, pw)))
        .await
        .unwrap_or_else(|e| panic!("log in as {user}: {e}"))
}

/// Adds root (with the root role) and enables auth; returns root's client.
async fn enable(endpoint: &str) -> Client {
    let mut anon = Client::connect([endpoint], None).await.unwrap();
    anon.user_add("root", ROOT_PW, None).await.unwrap();
    anon.role_add("root").await.unwrap();
    anon.user_grant_role("root", "root").await.unwrap();
    anon.auth_enable().await.unwrap();
    as_user(endpoint, "root", ROOT_PW).await
}

async fn add_user(root: &mut Client, user: &str, perms: &[Permission]) {
    root.user_add(user, "pw", None).await.unwrap();
    for (i, p) in perms.iter().enumerate() {
        let role = format!("{user}-{i}");
        root.role_add(role.as_str()).await.unwrap();
        root.role_grant_permission(role.as_str(), p.clone())
            .await
            .unwrap();
        root.user_grant_role(user, role.as_str()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permission_allows_exactly_what_etcd_allows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d")).await;
    let ep = s.endpoint.as_str();
    let mut root = enable(ep).await;
    add_user(&mut root, "key", &[Permission::read("k1")]).await;
    add_user(
        &mut root,
        "range",
        &[Permission::write("r/a").with_range_end("r/m")],
    )
    .await;
    add_user(
        &mut root,
        "prefix",
        &[Permission::read_write("p/").with_prefix()],
    )
    .await;
    add_user(&mut root, "from", &[Permission::read("z/").with_from_key()]).await;
    add_user(&mut root, "none", &[]).await;
    add_user(
        &mut root,
        "joined",
        &[
            Permission::read("a").with_range_end("f"),
            Permission::read("f").with_range_end("m"),
        ],
    )
    .await;
    for k in ["k1", "k2", "r/b", "p/x", "q/1", "z/1", "y", "a", "g"] {
        root.put(k, "v", None).await.unwrap();
    }

    let mut key = as_user(ep, "key", "pw").await;
    is_allowed(key.get("k1", None).await, "key: get k1");
    is_denied(key.get("k2", None).await, "key: get k2");
    is_denied(key.put("k1", "x", None).await, "key: put k1");
    is_denied(
        key.get("k1", Some(GetOptions::new().with_range("k2")))
            .await,
        "key: a range from k1",
    );

    let mut range = as_user(ep, "range", "pw").await;
    is_allowed(range.put("r/b", "x", None).await, "range: put inside");
    is_denied(range.put("r/z", "x", None).await, "range: put past the end");
    is_allowed(
        range
            .delete("r/a", Some(DeleteOptions::new().with_range("r/c")))
            .await,
        "range: delete a range inside",
    );
    is_denied(
        range
            .delete("r/b", Some(DeleteOptions::new().with_prev_key()))
            .await,
        "range: delete with prev_kv needs read",
    );
    is_denied(range.get("r/b", None).await, "range: get (write only)");
    is_denied(
        range
            .put("r/b", "x", Some(PutOptions::new().with_prev_key()))
            .await,
        "range: put with prev_kv needs read",
    );

    let mut prefix = as_user(ep, "prefix", "pw").await;
    is_allowed(prefix.put("p/y", "v", None).await, "prefix: put");
    is_allowed(
        prefix
            .get("p/", Some(GetOptions::new().with_prefix()))
            .await,
        "prefix: get the prefix",
    );
    is_denied(prefix.get("p", None).await, "prefix: the key before it");
    is_denied(prefix.put("q/1", "x", None).await, "prefix: put elsewhere");
    is_denied(
        prefix.get("p", Some(GetOptions::new().with_prefix())).await,
        "prefix: a wider prefix",
    );

    let mut from = as_user(ep, "from", "pw").await;
    is_allowed(from.get("z/1", None).await, "from: a key past it");
    is_allowed(
        from.get("z/", Some(GetOptions::new().with_from_key()))
            .await,
        "from: everything from it",
    );
    is_denied(from.get("y", None).await, "from: a key before it");

    let mut none = as_user(ep, "none", "pw").await;
    is_denied(none.get("k1", None).await, "none: get");
    is_denied(none.put("k1", "x", None).await, "none: put");

    // Grants of two roles join into one range.
    let mut joined = as_user(ep, "joined", "pw").await;
    is_allowed(
        joined
            .get("a", Some(GetOptions::new().with_range("m")))
            .await,
        "joined: [a, m)",
    );
    is_denied(
        joined
            .get("a", Some(GetOptions::new().with_range("n")))
            .await,
        "joined: [a, n)",
    );

    // A transaction is refused whole when any part is not allowed.
    let ok = Txn::new()
        .when([etcd_client::Compare::value(
            "p/x",
            etcd_client::CompareOp::Equal,
            "v",
        )])
        .and_then([TxnOp::put("p/t1", "1", None)]);
    is_allowed(prefix.txn(ok).await, "prefix: txn inside");
    let mixed = Txn::new().and_then([TxnOp::put("p/t2", "1", None), TxnOp::put("q/t2", "1", None)]);
    is_denied(prefix.txn(mixed).await, "prefix: txn writing outside");
    let forbidden_compare = Txn::new()
        .when([etcd_client::Compare::value(
            "q/1",
            etcd_client::CompareOp::Equal,
            "v",
        )])
        .and_then([TxnOp::put("p/t3", "1", None)]);
    is_denied(
        prefix.txn(forbidden_compare).await,
        "prefix: txn comparing outside",
    );
    let else_branch = Txn::new().or_else([TxnOp::delete("q/1", None)]);
    is_denied(
        prefix.txn(else_branch).await,
        "prefix: the other branch counts too",
    );
    let read_only = Txn::new().and_then([TxnOp::get("q/1", None)]);
    is_denied(prefix.txn(read_only).await, "prefix: read-only txn outside");
    let nested = Txn::new().and_then([TxnOp::txn(
        Txn::new().and_then([TxnOp::put("q/nested", "1", None)]),
    )]);
    is_denied(
        prefix.txn(nested).await,
        "prefix: a nested txn writing outside",
    );
    assert_eq!(root.get("p/t2", None).await.unwrap().count(), 0);
    assert_eq!(root.get("p/t3", None).await.unwrap().count(), 0);
    assert_eq!(root.get("q/nested", None).await.unwrap().count(), 0);

    // Watches: on a forbidden range the watch is canceled with the reason.
    let mut w = prefix
        .watch("q/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    assert!(first.canceled(), "{first:?}");
    // etcd 3.4 words it as Go prints a gRPC status.
    assert_eq!(
        first.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let mut w = prefix
        .watch("p/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = w.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled());
    prefix.put("p/watched", "1", None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    assert_eq!(ev.events()[0].kv().unwrap().key(), b"p/watched");

    // Leases: revoking needs write on every attached key; so does a put
    // attaching a key to a lease that holds forbidden ones.
    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("q/leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    is_denied(
        prefix.lease_revoke(lease).await,
        "prefix: revoke a lease with q/ keys",
    );
    is_denied(
        prefix
            .put("p/l", "v", Some(PutOptions::new().with_lease(lease)))
            .await,
        "prefix: attach to a lease with q/ keys",
    );
    let own = prefix.lease_grant(60, None).await.unwrap().id();
    prefix
        .put("p/l", "v", Some(PutOptions::new().with_lease(own)))
        .await
        .unwrap();
    is_allowed(
        prefix.lease_revoke(own).await,
        "prefix: revoke its own lease",
    );

    // Locks: under the prefix only.
    let l = prefix.lease_grant(60, None).await.unwrap().id();
    is_allowed(
        prefix
            .lock("p/lock", Some(LockOptions::new().with_lease(l)))
            .await,
        "prefix: lock under p/",
    );
    is_denied(
        prefix
            .lock("q/lock", Some(LockOptions::new().with_lease(l)))
            .await,
        "prefix: lock elsewhere",
    );

    // Admin operations: root only.
    is_denied(prefix.user_list().await, "prefix: user list");
    is_denied(prefix.role_add("x").await, "prefix: role add");
    is_denied(prefix.compact(1, None).await, "prefix: compact");
    // etcd 3.4's maintenance server returns the auth store's own error
    // for these (Unknown, "auth: ..."), checked against the real one.
    let maintenance_denied = (tonic::Code::Unknown, "auth: permission denied".to_string());
    let denied = |r: Result<(), etcd_client::Error>, what: &str| {
        assert_eq!(
            r.map_err(code_of).err(),
            Some(maintenance_denied.clone()),
            "{what}"
        );
    };
    denied(prefix.defragment().await.map(|_| ()), "prefix: defragment");
    denied(prefix.hash_kv(0).await.map(|_| ()), "prefix: hash kv");
    let snapshot = match prefix.snapshot().await {
        Ok(mut s) => s.message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    denied(snapshot, "prefix: snapshot");
    is_denied(
        prefix.member_add(["http://127.0.0.1:1"], None).await,
        "prefix: member add",
    );
    is_denied(prefix.auth_disable().await, "prefix: auth disable");
    // A user may read its own roles, and a role it holds.
    assert_eq!(
        prefix.user_get("prefix").await.unwrap().roles(),
        ["prefix-0"]
    );
    is_denied(prefix.user_get("key").await, "prefix: another user");
    is_allowed(prefix.role_get("prefix-0").await, "prefix: its own role");
    is_allowed(root.user_list().await, "root: user list");
    is_allowed(root.hash_kv(0).await, "root: hash kv");

    // No credentials at all.
    let mut anon = Client::connect([ep], None).await.unwrap();
    assert_eq!(
        code_of(anon.get("k1", None).await.unwrap_err()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_permission_or_a_changed_password_takes_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("d")).await;
    let ep = s.endpoint.clone();
    let mut root = enable(&ep).await;
    add_user(
        &mut root,
        "u",
        &[Permission::read_write("x/").with_prefix()],
    )
    .await;
    let mut u = as_user(&ep, "u", "pw").await;
    u.put("x/1", "v", None).await.unwrap();

    root.role_revoke_permission(
        "u-0",
        "x/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    is_denied(u.put("x/2", "v", None).await, "after the revoke");
    root.role_grant_permission("u-0", Permission::read_write("x/").with_prefix())
        .await
        .unwrap();
    is_allowed(u.put("x/3", "v", None).await, "granted again");
    root.user_revoke_role("u", "u-0").await.unwrap();
    is_denied(u.put("x/4", "v", None).await, "after the role went");
    root.user_grant_role("u", "u-0").await.unwrap();
    is_allowed(u.put("x/5", "v", None).await, "role back");

    // A new password: the token held is dropped, the old password fails.
    root.user_change_password("u", "new-pw").await.unwrap();
    let (code, _) = code_of(u.put("x/6", "v", None).await.unwrap_err());
    assert!(
        matches!(
            code,
            tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
        ),
        "{code:?}"
    );
    let bad = Client::connect(
        [ep.as_str()],
        Some(ConnectOptions::new().with_user("u", "pw")),
    )
    .await;
    assert_eq!(
        code_of(bad.err().expect("the old password is refused")),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".to_string()
        )
    );
    let mut u = as_user(&ep, "u", "new-pw").await;
    is_allowed(u.put("x/7", "v", None).await, "the new password");

    // A forged token, and one with a login index far ahead.
    use server::pb::etcdserverpb::{kv_client::KvClient, RangeRequest};
    let mut raw = KvClient::connect(format!("http://{ep}")).await.unwrap();
    for token in [
        "ABCDEFGHIJKLMNOP.3",
        "ABCDEFGHIJKLMNOP.99999999",
        "no-index",
    ] {
        let mut req = tonic::Request::new(RangeRequest {
            key: b"x/1".to_vec(),
            ..Default::default()
        });
        req.metadata_mut().insert("token", token.parse().unwrap());
        let e = raw.range(req).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token"
            ),
            "{token}"
        );
    }

    // The auth store survives a restart; tokens do not (clients log in
    // again).
    s.restart().await;
    let mut u = as_user(&ep, "u", "new-pw").await;
    is_allowed(u.get("x/7", None).await, "after a restart");
    is_denied(u.get("k", None).await, "outside, after a restart");
    let mut anon = Client::connect([ep.as_str()], None).await.unwrap();
    assert!(anon.get("x/7", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_enforces_the_same_auth_store() {
    let c = crate::cluster::Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    let mut root = enable(&eps[0]).await;
    add_user(
        &mut root,
        "u",
        &[Permission::read_write("x/").with_prefix()],
    )
    .await;
    for ep in &eps {
        let mut u = as_user(ep, "u", "pw").await;
        is_allowed(u.put("x/k", "v", None).await, "put inside on each member");
        is_denied(u.put("y", "v", None).await, "put outside on each member");
        is_allowed(u.get("x/k", None).await, "get inside on each member");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_is_refused_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d")).await;
    let ep = s.endpoint.clone();
    let mut root = enable(&ep).await;
    root.put("k", "v", None).await.unwrap();
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..10 {
                    let r = Client::connect(
                        [ep.as_str()],
                        Some(ConnectOptions::new().with_user("root", "wrong")),
                    )
                    .await;
                    match r {
                        Err(e) => {
                            assert_eq!(
                                code_of(e).1,
                                "etcdserver: authentication failed, invalid user ID or password"
                            );
                            refused += 1;
                        }
                        Ok(_) => panic!("a wrong password was accepted"),
                    }
                }
                refused
            })
        })
        .collect();
    // Meanwhile a client holding a token is served.
    let started = Instant::now();
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    while flood.iter().any(|f| !f.is_finished()) {
        let t = Instant::now();
        root.get("k", None).await.unwrap();
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    let mut refused = 0;
    for f in flood {
        refused += f.await.unwrap();
    }
    assert_eq!(refused, 40);
    assert!(served > 0);
    eprintln!(
        "40 wrong passwords in {:.1?}; meanwhile {served} reads, the slowest {slowest:.1?}",
        started.elapsed()
    );
    is_allowed(root.get("k", None).await, "after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_expire_and_refuse_tampering_other_keys_and_old_revisions() {
    use server::pb::etcdserverpb::{
        auth_client::AuthClient, kv_client::KvClient, AuthenticateRequest, PutRequest, RangeRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, b"the cluster's secret").unwrap();
    let opt = format!("jwt,priv-key={},sign-method=HS256,ttl=3s", key.display());
    let s = Server::start_with(&dir.path().join("d"), &["--auth-token", &opt]).await;
    let ep = s.endpoint.clone();
    let mut root = enable(&ep).await;
    add_user(
        &mut root,
        "u",
        &[Permission::read_write("x/").with_prefix()],
    )
    .await;

    let url = format!("http://{ep}");
    let login = |name: &'static str, pw: &'static str| {
        let url = url.clone();
        async move {
            let mut a = AuthClient::connect(url).await.unwrap();
            a.authenticate(AuthenticateRequest {
                name: name.into(),
                password: pw.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
        }
    };
    let put_with = |token: String| {
        let url = url.clone();
        async move {
            let mut kv = KvClient::connect(url).await.unwrap();
            let mut req = tonic::Request::new(PutRequest {
                key: b"x/k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            });
            req.metadata_mut().insert("token", token.parse().unwrap());
            kv.put(req).await.map(|_| ())
        }
    };
    let token = login("u", "pw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    put_with(token.clone()).await.unwrap();

    #[derive(serde::Serialize)]
    struct Claims {
        username: String,
        revision: u64,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            username: "root".into(),
            revision: 1000,
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    let tampered = parts.join(".");
    for bad in [other, tampered] {
        let e = put_with(bad).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token"
            )
        );
    }

    // A token made before the auth store changed.
    root.role_add("unrelated").await.unwrap();
    let e = put_with(token.clone()).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )
    );
    // A fresh one works, until it expires.
    let fresh = login("u", "pw").await;
    put_with(fresh.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let mut kv = KvClient::connect(url.clone()).await.unwrap();
    let mut req = tonic::Request::new(RangeRequest {
        key: b"x/k".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert("token", fresh.parse().unwrap());
    let e = kv.range(req).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token"
        )
    );
}
