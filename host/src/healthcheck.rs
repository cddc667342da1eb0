//! `frostguard-worker healthcheck`: asks the worker running in this container (or on this host) whether it
//! is alive, for a container `HEALTHCHECK` in an image that has no curl or wget.
//!
//! It sends `GET /healthz` to `$HTTP_ADDR:$HTTP_PORT` (the loopback address when the worker binds every
//! interface, its default) and exits 0 only when the answer is `200` with the body
//! `ok`; anything else (nothing listening, a timeout, another status, another program answering on the port)
//! exits 1 with one line saying why. The whole check is bounded by [`BUDGET`] (2 s), so it finishes well
//! inside any sensible `HEALTHCHECK --timeout`. A worker that is draining after SIGTERM still answers
//! healthy: it is alive and finishing its jobs, and an orchestrator must not restart it for that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::cli::HealthcheckArgs;
use crate::output::out;

/// Upper bound on the whole check: connect, request and answer.
pub const BUDGET: Duration = Duration::from_secs(2);
/// The endpoint answers a few bytes; more than this is not our worker.
const MAX_BODY: usize = 4096;

/// What the check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The worker answered that it is alive.
    Healthy,
    /// Anything else, with the reason.
    Unhealthy(String),
}

/// Judges one `/healthz` answer. Only the exact answer of our endpoint counts: a `200` with another body
/// means some other program holds the port, which is not a live worker.
pub fn judge(status: u16, body: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match status {
        200 if text == "ok" => Verdict::Healthy,
        200 => Verdict::Unhealthy(format!(
            "/healthz answered 200 but not with \"ok\" ({:?}): is another program on HTTP_PORT?",
            preview(text)
        )),
        _ => Verdict::Unhealthy(format!("/healthz answered HTTP {status}")),
    }
}

fn preview(text: &str) -> String {
    text.chars().take(60).collect()
}

/// Where to ask a worker whose endpoint binds `bind`:`port`. A worker bound to every interface (`0.0.0.0`,
/// `::`) is asked on the loopback address of the same family; one bound to a particular address (e.g.
/// `127.0.0.2` or a pod IP, set through `HTTP_ADDR`) listens nowhere else, so it is asked there.
pub fn probe_addr(bind: IpAddr, port: u16) -> SocketAddr {
    let ip = match bind {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}

/// Runs the check and prints the verdict (stdout when healthy, stderr otherwise).
pub fn main(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let verdict = match args.port {
        0 => Verdict::Unhealthy(
            "HTTP_PORT is 0: the health endpoint is disabled, so there is nothing to check"
                .to_owned(),
        ),
        port => check(probe_addr(args.addr, port))?,
    };
    Ok(match verdict {
        Verdict::Healthy => {
            out!(
                "healthy: /healthz on {} answered ok",
                probe_addr(args.addr, args.port)
            );
            ExitCode::SUCCESS
        }
        Verdict::Unhealthy(reason) => {
            eprintln!("unhealthy: {reason}");
            ExitCode::FAILURE
        }
    })
}

/// Asks `addr` within [`BUDGET`]. Errors only when the check itself cannot run (no runtime).
fn check(addr: SocketAddr) -> anyhow::Result<Verdict> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime for the health check")?;
    Ok(rt.block_on(async {
        match tokio::time::timeout(BUDGET, ask(addr)).await {
            Ok(Ok((status, body))) => judge(status, &body),
            Ok(Err(e)) => Verdict::Unhealthy(format!("{addr}: {e:#}")),
            Err(_) => Verdict::Unhealthy(format!(
                "{addr}: no answer from /healthz within {} s",
                BUDGET.as_secs()
            )),
        }
    }))
}

/// One HTTP/1.1 `GET /healthz`; returns the status and the (bounded) body.
async fn ask(addr: SocketAddr) -> anyhow::Result<(u16, Vec<u8>)> {
    get(addr, "/healthz", MAX_BODY).await
}

/// `GET path` on the local worker's endpoint (bound to `bind`:`port`, asked as [`probe_addr`] says) within
/// [`BUDGET`]: the status and at most `max_body` bytes of the body. What `plugins --running` reads `/readyz`
/// with.
pub fn get_local(
    bind: IpAddr,
    port: u16,
    path: &str,
    max_body: usize,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = probe_addr(bind, port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime for the request")?;
    rt.block_on(async {
        tokio::time::timeout(BUDGET, get(addr, path, max_body))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{addr}: no answer from {path} within {} s",
                    BUDGET.as_secs()
                )
            })?
            .with_context(|| addr.to_string())
    })
}

async fn get(addr: SocketAddr, path: &str, max_body: usize) -> anyhow::Result<(u16, Vec<u8>)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("nothing accepts connections (is the worker running with this HTTP_PORT?)")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(String::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("sending GET {path}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    connection.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_where_the_worker_listens() {
        let table: &[(&str, &str)] = &[
            ("0.0.0.0", "127.0.0.1:9090"),
            ("::", "[::1]:9090"),
            ("127.0.0.1", "127.0.0.1:9090"),
            ("127.0.0.2", "127.0.0.2:9090"),
            ("10.1.2.3", "10.1.2.3:9090"),
            ("::1", "[::1]:9090"),
            ("fd00::7", "[fd00::7]:9090"),
        ];
        for (bind, asked) in table {
            let got = probe_addr(bind.parse().unwrap(), 9090);
            assert_eq!(got.to_string(), *asked, "HTTP_ADDR={bind}");
        }
    }

    #[test]
    fn only_our_exact_answer_is_healthy() {
        let table: &[(u16, &[u8], bool)] = &[
            (200, b"ok\n", true),
            (200, b"ok", true),
            (200, b"", false),
            (200, b"<html>welcome</html>", false),
            (503, b"ok\n", false),
            (500, b"", false),
            (404, b"not found", false),
            (301, b"", false),
        ];
        for (status, body, healthy) in table {
            let verdict = judge(*status, body);
            assert_eq!(
                verdict == Verdict::Healthy,
                *healthy,
                "{status} {:?} -> {verdict:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn reasons_name_what_was_seen() {
        assert_eq!(
            judge(503, b""),
            Verdict::Unhealthy("/healthz answered HTTP 503".into())
        );
        match judge(200, b"hello") {
            Verdict::Unhealthy(r) => assert!(
                r.contains("\"hello\"") && r.contains("another program"),
                "{r}"
            ),
            v => panic!("{v:?}"),
        }
    }
}
