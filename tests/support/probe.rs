//! Plain `GET` requests from a test to the host's operations endpoint (`/healthz`, `/readyz`, `/metrics`).
//!
//! A blocking one-shot HTTP/1.1 client is all a test needs: it polls the endpoint while the host starts,
//! drains or recovers, so "nothing answers yet" is an ordinary answer (`None`), not an error.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` on 127.0.0.1:`port`: the status and the body, or `None` while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The body of `GET path` on 127.0.0.1:`port` whatever the status, or `None` while nothing answers.
pub fn http_get_body(port: u16, path: &str) -> Option<String> {
    http_get(port, path).map(|(_, body)| body)
}
