//! The support library against the real servers it starts (no worker involved).

use frostguard_tests::{json, FakeHttp, NodeQueue, Postgres, RedisServer, Reply, Resp};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn redis_starts_on_a_free_port_and_survives_a_restart_on_the_same_port() {
    let mut redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    assert_ne!(port, 6379);
    assert_eq!(
        redis.cmd(&["SET", "k", "v"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(redis.cmd(&["GET", "k"]).unwrap().as_str(), Some("v"));

    redis.kill();
    assert!(!redis.is_running());
    assert!(
        redis.cmd(&["PING"]).is_err(),
        "a killed server must refuse connections"
    );

    redis.restart().expect("restart");
    assert_eq!(redis.port(), port);
    assert!(redis.is_running());
    // Nothing persisted.
    assert_eq!(redis.cmd(&["GET", "k"]).unwrap(), Resp::Bulk(None));
}

#[test]
fn redis_with_a_password_requires_it() {
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cret"]).expect("start");
    // `cmd` authenticates with the configured password.
    assert_eq!(redis.cmd(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    let mut raw = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    raw.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("-NOAUTH"),
        "unauthenticated PING must be refused"
    );
}

#[test]
fn postgres_starts_with_the_frostguard_schema() {
    let pg = Postgres::start().expect("start postgres");
    assert_ne!(pg.port(), 5432);
    let tables: Vec<String> = pg
        .query_json(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name",
        )
        .unwrap()
        .into_iter()
        .map(|r| r["table_name"].as_str().unwrap().to_string())
        .collect();
    for t in ["notification_deliveries", "organizations"] {
        assert!(tables.contains(&t.to_string()), "{t} missing in {tables:?}");
    }
    pg.execute("INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme')")
        .unwrap();
    assert_eq!(
        pg.query_scalar("SELECT count(*) FROM organizations")
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert!(pg.url().starts_with("postgres://postgres@127.0.0.1:"));
}

#[test]
fn postgres_stop_and_restart_keep_the_data() {
    let mut pg = Postgres::start().expect("start postgres");
    pg.execute("INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme')")
        .unwrap();
    pg.stop();
    assert!(pg.query_json("SELECT 1 AS one").is_err());
    pg.restart().expect("restart");
    assert_eq!(
        pg.query_scalar("SELECT slug FROM organizations")
            .unwrap()
            .as_deref(),
        Some("acme")
    );
}

#[test]
fn fake_http_records_requests_and_answers_from_its_script() {
    let server = FakeHttp::scripted(
        vec![
            Reply::json(200, &json!({"data": {"id": "m1"}})),
            Reply::status(429).header("Retry-After", "2"),
        ],
        Reply::json(500, &json!({"errors": [{"code": "10007"}]})),
    )
    .unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = r#"{"to":"+15550001111"}"#;
    // Two requests on one kept-alive connection, then a third on a new one.
    for _ in 0..2 {
        let req = format!(
            "POST /v2/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).unwrap();
        let resp = read_response(&mut conn);
        assert!(resp.starts_with("HTTP/1.1 "), "{resp}");
    }
    let mut conn2 = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    conn2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    conn2
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let third = read_response(&mut conn2);
    assert!(third.starts_with("HTTP/1.1 500"), "{third}");

    let reqs = server.wait_for_requests(3, Duration::from_secs(5)).unwrap();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v2/messages");
    assert_eq!(reqs[0].header("authorization"), Some("Bearer k"));
    assert_eq!(reqs[0].json()["to"], "+15550001111");
    assert_eq!(reqs[0].connection, reqs[1].connection);
    assert_ne!(reqs[1].connection, reqs[2].connection);
    assert_eq!(reqs[2].path, "/health");
}

#[test]
fn fake_http_chunked_bodies_and_hanging_replies() {
    let server = FakeHttp::scripted(vec![Reply::status(204)], Reply::hang()).unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    conn.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n",
    )
    .unwrap();
    assert!(read_response(&mut conn).starts_with("HTTP/1.1 204"));
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    let err = conn
        .read(&mut buf)
        .expect_err("a hanging reply must not answer");
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    let reqs = server.requests();
    assert_eq!(reqs[0].body_str(), "abcdef");
    assert_eq!(reqs[1].path, "/slow");
    // Dropping the server must not wait for the hanging client.
    drop(server);
}

fn read_response(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn node_driver_adds_jobs_and_a_node_worker_completes_them() {
    let redis = RedisServer::start().unwrap();
    let q = NodeQueue::new(&redis, "selftest");
    let ids = q
        .add_bulk(json!([
            {"name": "complete", "data": {"n": 1}},
            {"name": "fail", "data": {"message": "nope"}, "opts": {"attempts": 1}},
        ]))
        .unwrap();
    assert_eq!(ids.len(), 2);
    let jobs = q.jobs(&ids, false).unwrap();
    assert!(jobs
        .iter()
        .all(|j| j.state == "waiting" && j.attempts_made == 0));
    let out = q
        .call("node-worker", json!({"count": 2, "timeoutMs": 20000}))
        .unwrap();
    assert_eq!(out["timedOut"], json!(false));
    let jobs = q.wait_finished(&ids).unwrap();
    assert_eq!(jobs[0].state, "completed");
    assert_eq!(jobs[0].returnvalue["echo"], json!({"n": 1}));
    assert_eq!(jobs[1].state, "failed");
    assert_eq!(jobs[1].failed_reason.as_deref(), Some("nope"));
    let events = q.events().unwrap();
    assert!(events
        .iter()
        .any(|e| e["event"] == "completed" && e["jobId"] == ids[0].as_str()));
}
