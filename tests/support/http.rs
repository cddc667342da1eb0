//! A scripted HTTP/1.1 server standing in for an external provider (e.g. Telnyx): it records every request and
//! answers each from a script. Keep-alive is supported, so a client that reuses connections works.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including any query string, e.g. `/v2/messages`.
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Index of the TCP connection it came on (0, 1, …): equal indexes mean a reused connection.
    pub connection: usize,
}

impl RecordedRequest {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (hold the connection until the server is dropped), to exercise client timeouts.
    pub hang: bool,
}

impl Reply {
    /// An empty response with this status.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            body: body.to_string().into_bytes(),
            ..Reply::status(status)
        }
        .header("Content-Type", "application/json")
    }

    /// A response that never comes.
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(504)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(usize, &RecordedRequest) -> Reply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Condvar,
    stop: AtomicBool,
    handler: Box<Handler>,
}

/// The server. Dropping it stops accepting, releases hanging requests and joins its threads.
pub struct FakeHttp {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHttp")
            .field("port", &self.port)
            .finish()
    }
}

impl FakeHttp {
    /// Starts a server whose answer to the n-th request (0-based, over all connections) is
    /// `handler(n, &request)`.
    pub fn start(
        handler: impl Fn(usize, &RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<FakeHttp> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            handler: Box::new(handler),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        Ok(FakeHttp {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Answers request n with `replies[n]`, and every request after the script with `then`.
    pub fn scripted(replies: Vec<Reply>, then: Reply) -> anyhow::Result<FakeHttp> {
        FakeHttp::start(move |n, _| replies.get(n).cloned().unwrap_or_else(|| then.clone()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock().expect("requests lock");
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "expected {n} requests within {timeout:?}, got {}",
                    reqs.len()
                );
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .expect("requests lock")
                .0;
        }
        Ok(reqs.clone())
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let mut index = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                let conn = index;
                index += 1;
                connections.push(std::thread::spawn(move || {
                    let _ = serve(stream, conn, &shared);
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Serves requests on one connection until the client closes it or the server stops.
fn serve(stream: TcpStream, conn: usize, shared: &Shared) -> std::io::Result<()> {
    // Short read timeouts so that the thread notices `stop` while idle on a kept-alive connection.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader, conn, shared)? else {
            return Ok(());
        };
        let n = {
            let mut reqs = shared.requests.lock().expect("requests lock");
            reqs.push(request.clone());
            shared.arrived.notify_all();
            reqs.len() - 1
        };
        let reply = (shared.handler)(n, &request);
        if reply.hang {
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        let until = Instant::now() + reply.delay;
        while Instant::now() < until {
            if shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(&reply.body)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Reads a line, retrying read timeouts while the server runs. `None` at end of stream or on stop.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    shared: &Shared,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<()>> {
    buf.clear();
    loop {
        match reader.read_until(b'\n', buf) {
            Ok(0) => return Ok(None),
            Ok(_) if buf.ends_with(b"\n") => return Ok(Some(())),
            Ok(_) => continue,
            Err(e) => {
                if !keep_waiting(e, shared)? {
                    return Ok(None);
                }
            }
        }
    }
}

/// After a failed read: `Ok(true)` to read again (a read timeout while the server runs), `Ok(false)` when the
/// server is stopping, and the error itself for anything else.
fn keep_waiting(e: std::io::Error, shared: &Shared) -> std::io::Result<bool> {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Ok(!shared.stop.load(Ordering::SeqCst))
        }
        _ => Err(e),
    }
}

fn read_exact_patiently(
    reader: &mut BufReader<TcpStream>,
    shared: &Shared,
    out: &mut Vec<u8>,
    mut len: usize,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 8192];
    while len > 0 {
        let want = len.min(chunk.len());
        match reader.read(&mut chunk[..want]) {
            Ok(0) => return Ok(false),
            Ok(got) => {
                out.extend_from_slice(&chunk[..got]);
                len -= got;
            }
            Err(e) => {
                if !keep_waiting(e, shared)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    conn: usize,
    shared: &Shared,
) -> std::io::Result<Option<RecordedRequest>> {
    let mut line = Vec::new();
    // Skip blank lines between requests.
    loop {
        if read_line(reader, shared, &mut line)?.is_none() {
            return Ok(None);
        }
        if !String::from_utf8_lossy(&line).trim().is_empty() {
            break;
        }
    }
    let request_line = String::from_utf8_lossy(&line).trim().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        if read_line(reader, shared, &mut line)?.is_none() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            break;
        }
        if let Some((k, v)) = text.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if read_line(reader, shared, &mut line)?.is_none() {
                return Ok(None);
            }
            let size_text = String::from_utf8_lossy(&line);
            let size_hex = size_text.trim().split(';').next().unwrap_or("0");
            let size = usize::from_str_radix(size_hex, 16).unwrap_or(0);
            if size == 0 {
                // Trailers end with a blank line.
                loop {
                    if read_line(reader, shared, &mut line)?.is_none()
                        || String::from_utf8_lossy(&line).trim().is_empty()
                    {
                        break;
                    }
                }
                break;
            }
            if !read_exact_patiently(reader, shared, &mut body, size)? {
                return Ok(None);
            }
            // The CRLF after each chunk.
            if read_line(reader, shared, &mut line)?.is_none() {
                return Ok(None);
            }
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if !read_exact_patiently(reader, shared, &mut body, len)? {
            return Ok(None);
        }
    }
    Ok(Some(RecordedRequest {
        method,
        path,
        headers,
        body,
        connection: conn,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
