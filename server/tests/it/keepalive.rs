//! etcd's ping policy (`--grpc-keepalive-min-time`): a client that pings
//! too often gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and loses its
//! connection; one that keeps to the policy keeps it.

use std::time::Duration;

/// One HTTP/2 frame: length, type, flags, stream 0, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinging_too_often_is_told_too_many_pings_and_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let s = crate::Server::start_with(
        &dir.path().join("m"),
        &["--grpc-keepalive-min-time", "300ms"],
    )
    .await;

    // With no stream open, grpc-go allows one ping in two hours: the
    // fourth in a row ends the connection with etcd's GOAWAY.
    let mut tcp = tokio::net::TcpStream::connect(&s.endpoint).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, b""));
    for _ in 0..4 {
        hello.extend(frame(0x6, &[1; 8]));
    }
    tcp.write_all(&hello).await.unwrap();
    let goaway = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head)
                .await
                .expect("a GOAWAY before the end");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            tcp.read_exact(&mut payload).await.unwrap();
            if head[3] == 0x7 {
                return payload;
            }
        }
    })
    .await
    .expect("no GOAWAY within 10 s");
    assert_eq!(&goaway[4..8], &0xbu32.to_be_bytes(), "ENHANCE_YOUR_CALM");
    assert_eq!(&goaway[8..], b"too_many_pings");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection stays open after the GOAWAY");
    assert!(s.log().contains("too_many_pings"), "{}", s.log());

    // With a stream open, pings further apart than the minimum are fine;
    // pings closer together end the connection.
    let tcp = tokio::net::TcpStream::connect(&s.endpoint).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/etcdserverpb.Watch/Watch", s.endpoint))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let (resp, _body) = send.send_request(req, false).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        pings
            .ping(h2::Ping::opaque())
            .await
            .expect("a ping after the minimum time is answered");
    }
    let mut failed = false;
    for _ in 0..10 {
        if pings.ping(h2::Ping::opaque()).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "pings in a row were all answered");
    let e = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .expect_err("the connection ends with an error");
    assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}");
    // etcdctl, whose client pings at most every 10 s, is never bothered.
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_an_idle_client_and_drops_it_when_no_answer_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let s = crate::Server::start_with(
        &dir.path().join("m"),
        &[
            "--grpc-keepalive-interval",
            "300ms",
            "--grpc-keepalive-timeout",
            "400ms",
        ],
    )
    .await;

    // A client that opens a connection and then never answers: the
    // server's PING comes after the interval, and the connection ends
    // once the timeout passes without its acknowledgement.
    let mut tcp = tokio::net::TcpStream::connect(&s.endpoint).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, b""));
    tcp.write_all(&hello).await.unwrap();
    let opened = std::time::Instant::now();
    let mut pinged = None;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            // PING without ACK: the server asking.
            if head[3] == 0x6 && head[4] & 1 == 0 && pinged.is_none() {
                pinged = Some(opened.elapsed());
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection outlived 10 s unanswered");
    let pinged = pinged.expect("the server pinged before ending the connection");
    assert!(
        pinged >= Duration::from_millis(250),
        "pinged after {pinged:?}"
    );
    let lasted = opened.elapsed();
    assert!(
        lasted >= pinged + Duration::from_millis(350),
        "ended {lasted:?} in, the ping at {pinged:?}"
    );

    // A client that answers (as every HTTP/2 client does) keeps its
    // connection across many intervals.
    let tcp = tokio::net::TcpStream::connect(&s.endpoint).await.unwrap();
    let (_send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !conn.is_finished(),
        "an answering client lost its connection"
    );
    conn.abort();
}
