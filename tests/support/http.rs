//! A scripted HTTP/1.1 server standing in for an external provider (e.g. Telnyx): it records every request and
//! answers each from a script. Keep-alive is supported, so a client that reuses connections works.
//!
//! The HTTP side (parsing, keep-alive, Content-Length and chunked bodies, `Expect: 100-continue`) is
//! [`tiny_http`]; this module adds the recording, the script and the delayed / hanging answers, one thread per
//! request.
//!
//! Dropping the server closes its port and ends its own threads, but connections a client keeps open are the
//! client's to close: tiny_http's thread for such a connection ends when the client closes it, and a request
//! sent on it after the drop is never answered. To simulate a provider outage, answer with an error status
//! or [`Reply::hang`] rather than dropping the server.

use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// Index of the TCP connection it came on (0, 1, … in the order of their first requests; a connection is
    /// identified by the client's socket address): equal indexes mean a reused connection.
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
    /// Never answer (not even when the server is dropped), to exercise client timeouts.
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

    /// Adds a response header. `Content-Length` comes from the body, and tiny_http adds `Date` and `Server`;
    /// `Connection`, `Transfer-Encoding`, `Trailer` and `Upgrade` are tiny_http's to set and ignored here.
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
    state: Mutex<State>,
    /// Notified when a request is recorded, a request thread ends, or the server stops.
    changed: Condvar,
    handler: Box<Handler>,
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    /// Client socket address → connection index.
    connections: HashMap<SocketAddr, usize>,
    /// Request threads still running.
    active: usize,
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long dropping the server waits for request threads stuck on a client (one that stalls mid-body or
/// does not read its answer); hanging and delayed requests are released at once.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// The server. Dropping it stops accepting and answering, releases hanging and delayed requests (they stay
/// unanswered) and waits for its request threads (see the module docs for connections the client keeps open).
pub struct FakeHttp {
    port: u16,
    server: Arc<tiny_http::Server>,
    shared: Arc<Shared>,
    dispatcher: Option<JoinHandle<()>>,
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
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("fake HTTP server: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| anyhow::anyhow!("fake HTTP server: not an IP address"))?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            handler: Box::new(handler),
        });
        let dispatcher = {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                // `recv` fails once `unblock` is called (on drop).
                while let Ok(request) = server.recv() {
                    {
                        let mut state = shared.lock();
                        if state.stopped {
                            break;
                        }
                        state.active += 1;
                    }
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || {
                        answer(request, &shared);
                        shared.lock().active -= 1;
                        shared.changed.notify_all();
                    });
                }
            })
        };
        Ok(FakeHttp {
            port,
            server,
            shared,
            dispatcher: Some(dispatcher),
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
        self.shared.lock().requests.clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.requests.len() < n {
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "expected {n} requests within {timeout:?}, got {}",
                    state.requests.len()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(state.requests.clone())
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        self.server.unblock();
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
        let deadline = Instant::now() + DROP_GRACE;
        let mut state = self.shared.lock();
        while state.active > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // The `tiny_http::Server` (its listener and accept thread) goes when the last `Arc` does, which is
        // this one now that the dispatcher has ended.
    }
}

/// Reads the request's body, records it, and answers it as the handler says (or never, for a hang).
fn answer(mut request: tiny_http::Request, shared: &Shared) {
    let mut body = Vec::new();
    if request.as_reader().read_to_end(&mut body).is_err() {
        return; // The client went away mid-body; tiny_http closes the connection.
    }
    let (n, recorded) = {
        let mut state = shared.lock();
        let next = state.connections.len();
        let connection = match request.remote_addr() {
            Some(addr) => *state.connections.entry(*addr).or_insert(next),
            None => next,
        };
        let recorded = RecordedRequest {
            method: request.method().as_str().to_string(),
            path: request.url().to_string(),
            headers: request
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_ascii_lowercase(),
                        h.value.as_str().trim().to_string(),
                    )
                })
                .collect(),
            body,
            connection,
        };
        state.requests.push(recorded.clone());
        shared.changed.notify_all();
        (state.requests.len() - 1, recorded)
    };
    let reply = (shared.handler)(n, &recorded);
    // Wait out a hang (until the server stops) or a delay (or until the server stops first).
    let until = (!reply.hang).then(|| Instant::now() + reply.delay);
    let mut state = shared.lock();
    loop {
        if state.stopped {
            drop(state);
            // Give up the response writer without writing: the request stays unanswered (dropping the
            // `Request` itself would send a 500).
            drop(request.into_writer());
            return;
        }
        let wait = match until {
            Some(until) => {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                until - now
            }
            None => Duration::from_secs(3600),
        };
        state = shared
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    drop(state);
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in &reply.headers {
        match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(header) => response.add_header(header),
            Err(()) => eprintln!("FakeHttp: invalid reply header {name:?}: {value:?}"),
        }
    }
    let _ = request.respond(response);
}
