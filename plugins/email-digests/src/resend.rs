//! The Resend client: one `POST {base}/emails` per digest, and what each answer means for the job.
//!
//! Plain reqwest instead of an SDK: the request is a handful of fields plus the `Idempotency-Key` header,
//! and owning the HTTP call lets us read the status, Resend's error `name` and the rate-limit headers. The
//! client never retries by itself: BullMQ owns retries, and the idempotency key makes them safe.

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause we accept from a provider hint; a bogus header must not stall the queue for hours.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(600);
/// Pause when Resend throttles without saying for how long (its default limit is 2 requests/s).
pub const DEFAULT_RATE_LIMIT_DELAY: Duration = Duration::from_secs(1);
/// How long a job waits when Resend is still processing an earlier request with the same key.
pub const IN_PROGRESS_DELAY: Duration = Duration::from_secs(5);

/// What an answer (or its absence) means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request as built can never be accepted (400/422 validation, a key reused with another body).
    Permanent,
    /// Our key or sending setup was refused (401/403): pause the queue, never fail the job for it.
    Auth,
    /// 429: pause the queue for the hint, no attempt used.
    RateLimited,
    /// 409 while the first request with this key is still in flight: this job waits, no attempt used.
    InProgress,
    /// 5xx, timeouts, connection errors, anything unexpected: retried under the job's attempts.
    Transient,
}

/// Classifies a non-2xx answer from its status and Resend's error `name`.
pub fn classify(status: u16, name: Option<&str>) -> ErrorClass {
    match (status, name) {
        (429, _) => ErrorClass::RateLimited,
        (401 | 403, _) => ErrorClass::Auth,
        (409, Some("invalid_idempotent_request")) => ErrorClass::Permanent,
        (409, _) => ErrorClass::InProgress,
        (400 | 422, _) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// The wait a 429 asks for: `retry-after` (seconds), else `ratelimit-reset` (seconds until the window
/// resets), else [`DEFAULT_RATE_LIMIT_DELAY`]; clamped to [100 ms, [`MAX_RETRY_HINT`]].
pub fn retry_hint(retry_after: Option<&str>, ratelimit_reset: Option<&str>) -> Duration {
    let parse = |v: Option<&str>| {
        v.and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x >= 0.0)
    };
    parse(retry_after)
        .or_else(|| parse(ratelimit_reset))
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_RATE_LIMIT_DELAY)
        .clamp(Duration::from_millis(100), MAX_RETRY_HINT)
}

/// Why a send did not get an email id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    Rejected {
        status: u16,
        name: Option<String>,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    Timeout(Duration),
    Transport(String),
    /// A 2xx without an `id`: retried; the idempotency key keeps a retry from sending a second email.
    NoEmailId {
        status: u16,
    },
}

impl SendError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SendError::Rejected { status, name, .. } => classify(*status, name.as_deref()),
            _ => ErrorClass::Transient,
        }
    }

    /// One line: "`<name>: <message>` (HTTP <status>)" for a rejection.
    pub fn describe(&self) -> String {
        match self {
            SendError::Rejected {
                status,
                name,
                message,
                ..
            } => match (name, message) {
                (Some(n), Some(m)) => format!("{n}: {m} (HTTP {status})"),
                (None, Some(m)) => format!("{m} (HTTP {status})"),
                (Some(n), None) => format!("{n} (HTTP {status})"),
                (None, None) => format!("HTTP {status}"),
            },
            SendError::Timeout(d) => format!("no answer from Resend within {} ms", d.as_millis()),
            SendError::Transport(e) => format!("cannot reach Resend: {e}"),
            SendError::NoEmailId { status } => {
                format!("Resend answered HTTP {status} without an email id")
            }
        }
    }
}

pub struct ResendClient {
    http: reqwest::Client,
    api_key: Secret,
    emails_url: Url,
    request_timeout: Duration,
}

impl ResendClient {
    pub fn new(
        api_key: Secret,
        emails_url: Url,
        request_timeout: Duration,
    ) -> Result<ResendClient, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "frostguard-worker-email/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ResendClient {
            http,
            api_key,
            emails_url,
            request_timeout,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn endpoint(&self) -> &Url {
        &self.emails_url
    }

    /// Posts `body` (the email as JSON) with `idempotency_key`; the id Resend gave the email on success.
    pub async fn send(
        &self,
        body: &Value,
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<String, SendError> {
        let response = self
            .http
            .post(self.emails_url.clone())
            .header(AUTHORIZATION, format!("Bearer {}", self.api_key.expose()))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key)
            .timeout(timeout)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport(e, timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport(e, timeout))?;
        interpret(status, &headers, &bytes)
    }
}

fn transport(e: reqwest::Error, timeout: Duration) -> SendError {
    if e.is_timeout() {
        SendError::Timeout(timeout)
    } else {
        // The source chain says what went wrong (refused, reset, DNS), the top level only "error sending".
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        SendError::Transport(text)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    name: Option<String>,
    message: Option<String>,
}

/// Maps a complete answer to the email id or a [`SendError`].
pub fn interpret(status: u16, headers: &HeaderMap, body: &[u8]) -> Result<String, SendError> {
    if (200..300).contains(&status) {
        let id = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .filter(|id| !id.is_empty());
        return id.ok_or(SendError::NoEmailId { status });
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let (name, message) = match parsed {
        Some(b) => (b.name, b.message),
        None => {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            (
                None,
                (!text.is_empty()).then(|| text.chars().take(300).collect()),
            )
        }
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let retry_after =
        (status == 429).then(|| retry_hint(header("retry-after"), header("ratelimit-reset")));
    Err(SendError::Rejected {
        status,
        name,
        message,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::*;
    use super::*;

    #[test]
    fn classes() {
        let cases: [(u16, Option<&str>, ErrorClass); 13] = [
            (400, Some("validation_error"), Permanent),
            (400, Some("invalid_idempotency_key"), Permanent),
            (422, Some("invalid_parameter"), Permanent),
            (422, None, Permanent),
            (401, Some("missing_api_key"), Auth),
            (403, Some("invalid_api_key"), Auth),
            (403, Some("validation_error"), Auth),
            (409, Some("concurrent_idempotent_requests"), InProgress),
            (409, Some("invalid_idempotent_request"), Permanent),
            (429, Some("daily_quota_exceeded"), RateLimited),
            (500, Some("internal_server_error"), Transient),
            (503, None, Transient),
            (404, None, Transient),
        ];
        for (status, name, class) in cases {
            assert_eq!(classify(status, name), class, "{status} {name:?}");
        }
    }

    #[test]
    fn retry_hints() {
        assert_eq!(retry_hint(Some("3"), Some("9")), Duration::from_secs(3));
        assert_eq!(retry_hint(None, Some("9")), Duration::from_secs(9));
        assert_eq!(retry_hint(Some("soon"), None), DEFAULT_RATE_LIMIT_DELAY);
        assert_eq!(retry_hint(Some("0"), None), Duration::from_millis(100));
        assert_eq!(retry_hint(Some("86400"), None), MAX_RETRY_HINT);
    }

    #[test]
    fn answers() {
        let none = HeaderMap::new();
        assert_eq!(
            interpret(200, &none, br#"{"id":"em-1"}"#),
            Ok("em-1".into())
        );
        assert_eq!(
            interpret(200, &none, b"{}"),
            Err(SendError::NoEmailId { status: 200 })
        );
        let err = interpret(
            422,
            &none,
            br#"{"statusCode":422,"name":"invalid_parameter","message":"Invalid `to` field."}"#,
        )
        .unwrap_err();
        assert_eq!(err.class(), Permanent);
        assert_eq!(
            err.describe(),
            "invalid_parameter: Invalid `to` field. (HTTP 422)"
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        match interpret(429, &h, b"").unwrap_err() {
            SendError::Rejected { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            interpret(502, &none, b"Bad Gateway")
                .unwrap_err()
                .describe(),
            "Bad Gateway (HTTP 502)"
        );
    }
}
