//! The Telnyx Messages API v2 client: one `POST {base}/v2/messages` per job.
//!
//! Plain reqwest instead of an SDK: the request is three fields, and owning the HTTP call lets us read the
//! status and `errors[0].code` directly (the Node original lost both inside the SDK's error type). One
//! `reqwest::Client` lives for the plugin's lifetime so connections (and TLS sessions) are reused across jobs.
//! The client never retries by itself: BullMQ owns retries and backoff.

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::classify::{classify, retry_hint, ErrorClass};
use crate::config::TelnyxSettings;
use crate::redact::scrub_text;

/// Time allowed to open a TCP/TLS connection, at most; a dead route should fail fast and retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Telnyx accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `data.id`, the id Telnyx's delivery webhooks refer to.
    pub message_id: String,
    /// `data.to[0].status`, normally `queued`.
    pub status: String,
}

/// Why a send did not get a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Telnyx answered with a non-2xx status.
    Rejected {
        status: u16,
        code: Option<String>,
        title: Option<String>,
        detail: Option<String>,
        /// Only filled for throttling answers.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the request timeout (the message may or may not have been accepted).
    Timeout(Duration),
    /// Could not connect at all: the request never left, nothing was sent.
    Unreachable(String),
    /// The connection broke after the request may have been written (the message may have been accepted).
    Transport(String),
    /// A 2xx whose body has no `data.id`. We cannot tell whether a message went out, so the caller must not
    /// resend blindly (that could text the recipient twice) and must not claim success either.
    NoMessageId { status: u16 },
}

impl SendError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SendError::Rejected { status, code, .. } => classify(*status, code.as_deref()),
            SendError::Timeout(_) | SendError::Unreachable(_) | SendError::Transport(_) => {
                ErrorClass::Transient
            }
            SendError::NoMessageId { .. } => ErrorClass::Permanent,
        }
    }

    /// Whether Telnyx may have accepted the message although we got no answer saying so (a timeout, a
    /// connection broken mid-request). Every other error is an answer, or a connection that never opened.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, SendError::Timeout(_) | SendError::Transport(_))
    }

    /// A one-line description, scrubbed of phone numbers. For a rejection with a code this is exactly
    /// "`<code>: <detail>`" (title when there is no detail), the form stored in `error_message`.
    pub fn describe(&self) -> String {
        let text = match self {
            SendError::Rejected {
                status,
                code,
                title,
                detail,
                ..
            } => {
                let what = detail
                    .as_deref()
                    .or(title.as_deref())
                    .filter(|s| !s.trim().is_empty());
                match (code, what) {
                    (Some(c), Some(w)) => format!("{c}: {w}"),
                    (Some(c), None) => format!("{c}: HTTP {status}"),
                    (None, Some(w)) => format!("HTTP {status}: {w}"),
                    (None, None) => format!("HTTP {status}"),
                }
            }
            SendError::Timeout(d) => format!("no answer from Telnyx within {} ms", d.as_millis()),
            SendError::Unreachable(e) => format!("cannot reach Telnyx: {e}"),
            SendError::Transport(e) => format!("connection to Telnyx failed: {e}"),
            SendError::NoMessageId { status } => {
                format!("Telnyx answered HTTP {status} without a message id; not resent to avoid a duplicate SMS")
            }
        };
        scrub_text(&text)
    }
}

pub struct TelnyxClient {
    http: reqwest::Client,
    settings: TelnyxSettings,
}

impl TelnyxClient {
    pub fn new(settings: TelnyxSettings) -> Result<TelnyxClient, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("frostguard-worker-sms/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT.min(settings.request_timeout))
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(TelnyxClient { http, settings })
    }

    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// The JSON body Telnyx gets: `{from, to, text}` plus `messaging_profile_id` when configured.
    pub fn request_body(&self, to: &str, text: &str) -> Value {
        let mut body = json!({ "from": self.settings.from, "to": to, "text": text });
        if let Some(profile) = &self.settings.messaging_profile_id {
            body["messaging_profile_id"] = json!(profile);
        }
        body
    }

    /// Sends one SMS. `timeout` is the request timeout, already shortened to the job's remaining time.
    pub async fn send(
        &self,
        to: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<Accepted, SendError> {
        let response = self
            .http
            .post(self.settings.messages_url.clone())
            .header(
                AUTHORIZATION,
                format!("Bearer {}", self.settings.api_key.expose()),
            )
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(self.request_body(to, text).to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        interpret(status, &headers, &body)
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    data: Option<SuccessData>,
}

#[derive(Deserialize)]
struct SuccessData {
    id: Option<String>,
    #[serde(default)]
    to: Vec<Recipient>,
}

#[derive(Deserialize)]
struct Recipient {
    status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    /// Documented as a string; accept a number too.
    code: Option<Value>,
    title: Option<String>,
    detail: Option<String>,
}

/// Turns a status, headers and body into the send's result.
fn interpret(status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        let parsed: Option<SuccessData> = serde_json::from_slice::<SuccessBody>(body)
            .ok()
            .and_then(|b| b.data);
        return match parsed {
            Some(SuccessData { id: Some(id), to }) if !id.trim().is_empty() => Ok(Accepted {
                message_id: id,
                status: to
                    .into_iter()
                    .next()
                    .and_then(|r| r.status)
                    .unwrap_or_else(|| "queued".to_owned()),
            }),
            _ => Err(SendError::NoMessageId { status }),
        };
    }
    let first = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    let (code, title, detail) = match first {
        Some(e) => {
            let code = match e.code {
                Some(Value::String(s)) => Some(s),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (code, e.title, e.detail)
        }
        None => (None, None, None),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut error = SendError::Rejected {
        status,
        code,
        title,
        detail,
        retry_after: None,
    };
    if error.class() == ErrorClass::RateLimited {
        if let SendError::Rejected { retry_after, .. } = &mut error {
            *retry_after = Some(retry_hint(
                header("retry-after-ms"),
                header("retry-after"),
                header("x-ratelimit-reset"),
            ));
        }
    }
    Err(error)
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> SendError {
    if e.is_timeout() {
        return SendError::Timeout(timeout);
    }
    // The innermost cause says what actually happened ("connection refused", "invalid peer certificate").
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        SendError::Unreachable(cause.to_string())
    } else {
        SendError::Transport(cause.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn success_reads_id_and_first_recipient_status() {
        let body =
            br#"{"data":{"id":"msg-1","to":[{"phone_number":"+15551234567","status":"queued"}]}}"#;
        assert_eq!(
            interpret(200, &HeaderMap::new(), body),
            Ok(Accepted {
                message_id: "msg-1".into(),
                status: "queued".into()
            })
        );
        let body = br#"{"data":{"id":"msg-2"}}"#;
        assert_eq!(
            interpret(200, &HeaderMap::new(), body).unwrap().status,
            "queued"
        );
    }

    #[test]
    fn success_without_id_is_not_success() {
        for body in [
            &b"<html>ok</html>"[..],
            br#"{"data":{}}"#,
            br#"{"data":{"id":""}}"#,
        ] {
            let err = interpret(200, &HeaderMap::new(), body).unwrap_err();
            assert_eq!(err, SendError::NoMessageId { status: 200 });
            assert_eq!(err.class(), ErrorClass::Permanent);
        }
    }

    #[test]
    fn errors_read_the_first_entry_code_and_detail() {
        let body = br#"{"errors":[{"code":"40310","title":"Invalid 'to' address","detail":"The 'to' address +15551234567 is invalid."},{"code":"1"}]}"#;
        let err = interpret(422, &HeaderMap::new(), body).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(
            err.describe(),
            "40310: The 'to' address +1555*****67 is invalid."
        );

        let err = interpret(
            400,
            &HeaderMap::new(),
            br#"{"errors":[{"code":40300,"title":"Blocked due to STOP message"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.describe(), "40300: Blocked due to STOP message");
    }

    #[test]
    fn errors_without_a_readable_body_fall_back_to_status() {
        let err = interpret(502, &HeaderMap::new(), b"Bad Gateway").unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient);
        assert_eq!(err.describe(), "HTTP 502");
    }

    #[test]
    fn throttling_carries_the_providers_hint() {
        let err = interpret(
            429,
            &headers(&[("retry-after", "5")]),
            br#"{"errors":[{"code":"10011","title":"Too many requests"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::RateLimited);
        match err {
            SendError::Rejected { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(5)))
            }
            other => panic!("{other:?}"),
        }
        let err = interpret(429, &headers(&[("x-ratelimit-reset", "9")]), b"").unwrap_err();
        assert!(
            matches!(err, SendError::Rejected { retry_after: Some(d), .. } if d == Duration::from_secs(9))
        );
    }

    #[test]
    fn transport_descriptions() {
        assert_eq!(
            SendError::Timeout(Duration::from_millis(1500)).describe(),
            "no answer from Telnyx within 1500 ms"
        );
        assert_eq!(
            SendError::Unreachable("connection refused".into()).describe(),
            "cannot reach Telnyx: connection refused"
        );
    }
}
