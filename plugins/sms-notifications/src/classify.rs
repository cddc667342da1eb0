//! What a Telnyx error means for the job: decided from the HTTP status **and** `errors[0].code`.
//!
//! The Node original read a field the SDK never sets, so every error was "unknown" and retried five times,
//! opt-outs and bad credentials included. Here a known code decides, with the HTTP status as the fallback
//! when the code is absent or unknown. Only refused credentials hold the whole queue; everything else is
//! about this one message.
//!
//! The codes, re-checked against Telnyx's published documentation:
//! * Messaging error code reference — <https://developers.telnyx.com/docs/messaging/messages/error-codes>:
//!   carrier/delivery errors 40001–40015 with their cause and action (e.g. 40002 "reduce sending rate",
//!   40004 "retry after delay", 40006 "retry with exponential backoff", 40008 undeliverable "check number
//!   validity; try alternate route"), and the 403xx *configuration* errors (number / messaging profile
//!   set-up), which the API returns at once for the request.
//! * Per-code pages — <https://developers.telnyx.com/api/errors/40300> (40300, blocked by the recipient's STOP,
//!   answered with HTTP 409), <https://developers.telnyx.com/api/errors/40014> (expired in queue, not billed).
//! * API error codes — <https://developers.telnyx.com/development/api-fundamentals/api-errors>: 10001 inactive
//!   number, 10002 invalid number, 10004 missing parameter, 10007 unexpected error, 10008 request timeout,
//!   10009 authentication failed, 10010 authorization failed, 10011 too many requests, 10015 bad request,
//!   10016 not +E.164.
//! * Telnyx support, "Telnyx Messaging Error Codes" —
//!   <https://support.telnyx.com/en/articles/6505121-telnyx-messaging-error-codes>.
//!
//! | code(s) | meaning (Telnyx) | class here |
//! |---|---|---|
//! | 10009, 10010 | authentication / authorization of the API key failed | credentials: hold the queue |
//! | 10011 (or HTTP 429) | too many requests | rate limited: hold the queue for the hint |
//! | 10001, 10002, 10004, 10015, 10016 | inactive/invalid number, missing parameter, bad request, not E.164 | permanent |
//! | 20012, 20013, 20100 | account inactive, account blocked, insufficient funds: the account as configured, not this message | permanent |
//! | 40001, 40003, 40009, 40012, 40013, 40015 | not routable, spam (permanent), invalid body, invalid destination, invalid source, internal spam filter | permanent |
//! | 40010, 40019 | not described on the pages above; classed final like the carrier codes around them | permanent |
//! | 40300–40333 listed below | configuration errors of the number / profile (40300 recipient sent STOP) | permanent |
//! | 40002, 40004, 40005, 40006, 40008, 40011, 40014, 40016–40018, 40020, 40318, 40320 | temporary carrier states, expiry, upstream throttling, undeliverable | retryable |
//! | 10007, 10008, 50000, 50001 | unexpected error, request timeout, internal error, unavailable | retryable |
//!
//! A 403 is credentials only with 10009/10010; any other 403 (with another code, or none) rejects this
//! message and fails the job by its code — holding the queue for it would stop every other alarm.

use std::time::Duration;

/// The four ways a rejected send can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Resending the same message cannot succeed: fail unrecoverably, delivery row `failed`.
    Permanent,
    /// Provider throttling (HTTP 429 / 10011): wait for its hint, no attempt consumed.
    RateLimited,
    /// Our credentials were refused (HTTP 401, or 10009/10010): a configuration problem, not the job's
    /// fault. Hold the queue, no attempt consumed, never fail the job for it.
    Auth,
    /// Server errors, timeouts, connection failures, temporary carrier states: normal retry with backoff.
    Transient,
}

/// Codes for which the same request will never succeed: the recipient (opted out, invalid, unroutable,
/// landline), the content (invalid, blocked) or the sender/profile/account as configured.
const PERMANENT: &[&str] = &[
    "10001", "10002", "10004", "10015", "10016", // number, parameters, request shape
    "20012", "20013", "20100", // account inactive, blocked, insufficient funds
    "40001", "40003", "40009", "40010", "40012", "40013", "40015", "40019", // carrier: final
    "40300", "40301", "40302", "40304", "40305", "40306", "40307", "40308", "40309", "40310",
    "40311", "40312", "40313", "40314", "40315", "40316", "40317", "40319", "40321", "40322",
    "40325", "40329", "40330", "40331", "40333", // configuration of number / profile
];

/// Codes that may clear on their own or after a wait, plus Telnyx's generic server-side codes.
const RETRYABLE: &[&str] = &[
    "10007", "10008", // unexpected error, request timeout
    "40002", "40004", "40005", "40006", "40008", "40011", "40014", "40016", "40017", "40018",
    "40020", "40318", "40320", "50000", "50001",
];

/// Authentication (10009) and authorisation (10010) failures of the API key.
const AUTH: &[&str] = &["10009", "10010"];

/// Telnyx's "too many requests".
const RATE_LIMITED: &str = "10011";

/// Classifies a non-2xx answer. Order matters:
/// 1. throttling (429 or 10011) always waits for the provider's hint;
/// 2. a 401, or an authentication/authorisation code, is our credentials;
/// 3. a code we know decides next — on any status, 403 included (e.g. 40310 is about this message);
/// 4. otherwise the status: 5xx and 408 are transient; 400/403/409/410/413/422 reject this request as
///    written; anything else (404 from a wrong base URL, a proxy's 407, …) is retried rather than dropping
///    an alert.
pub fn classify(status: u16, code: Option<&str>) -> ErrorClass {
    let code = code.map(str::trim);
    if status == 429 || code == Some(RATE_LIMITED) {
        return ErrorClass::RateLimited;
    }
    if status == 401 || code.is_some_and(|c| AUTH.contains(&c)) {
        return ErrorClass::Auth;
    }
    if let Some(c) = code {
        if PERMANENT.contains(&c) {
            return ErrorClass::Permanent;
        }
        if RETRYABLE.contains(&c) {
            return ErrorClass::Transient;
        }
    }
    match status {
        408 | 500..=599 => ErrorClass::Transient,
        400 | 403 | 409 | 410 | 413 | 422 => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// Longest pause we accept from a provider hint; a bogus header must not stall the queue for hours.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(600);
/// Pause when Telnyx throttles without saying for how long (its SDK backs off 0.5–8 s).
pub const DEFAULT_RATE_LIMIT_DELAY: Duration = Duration::from_secs(2);

/// The wait a 429 asks for, from (in order) `retry-after-ms`, `retry-after` (seconds; an HTTP date is not
/// used by Telnyx and falls through), `x-ratelimit-reset` (seconds until the window resets), else the
/// default. Clamped to [100 ms, 10 min].
pub fn retry_hint(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    ratelimit_reset: Option<&str>,
) -> Duration {
    let parse = |v: Option<&str>| {
        v.and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x >= 0.0)
    };
    let hint = parse(retry_after_ms)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| parse(retry_after).map(Duration::from_secs_f64))
        .or_else(|| parse(ratelimit_reset).map(Duration::from_secs_f64))
        .unwrap_or(DEFAULT_RATE_LIMIT_DELAY);
    hint.clamp(Duration::from_millis(100), MAX_RETRY_HINT)
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::*;
    use super::*;

    #[test]
    fn rate_limits_win_over_everything() {
        assert_eq!(classify(429, None), RateLimited);
        assert_eq!(classify(429, Some("40300")), RateLimited);
        assert_eq!(classify(400, Some("10011")), RateLimited);
    }

    #[test]
    fn only_credentials_problems_are_auth() {
        assert_eq!(classify(401, None), Auth);
        assert_eq!(classify(401, Some("10009")), Auth);
        assert_eq!(classify(401, Some("40300")), Auth);
        assert_eq!(classify(403, Some("10010")), Auth);
        assert_eq!(classify(403, Some("10009")), Auth);
        assert_eq!(classify(400, Some("10009")), Auth);
    }

    #[test]
    fn any_other_403_is_about_the_message_and_classified_by_its_code() {
        // No code, or a code we do not know: the request was refused as written; fail it, hold nothing.
        assert_eq!(classify(403, None), Permanent);
        assert_eq!(classify(403, Some("")), Permanent);
        assert_eq!(classify(403, Some("99999")), Permanent);
        assert_eq!(classify(403, Some("40300")), Permanent);
        assert_eq!(classify(403, Some("40310")), Permanent);
        // A code that says "try again" keeps its meaning on a 403.
        assert_eq!(classify(403, Some("50000")), Transient);
        assert_eq!(classify(403, Some("40006")), Transient);
    }

    #[test]
    fn permanent_codes_from_telnyx_guidance() {
        for code in [
            "40300", "40310", "40305", "40309", "40312", "40314", "40322", "40333", "40001",
            "40003", "40010", "10002", "40009", "40012", "20013",
        ] {
            assert_eq!(classify(400, Some(code)), Permanent, "{code}");
            assert_eq!(classify(422, Some(code)), Permanent, "{code}");
            assert_eq!(classify(500, Some(code)), Permanent, "{code}");
        }
    }

    #[test]
    fn retryable_codes_even_on_4xx() {
        // FreshTrack listed 40008 as permanent; Telnyx says it may clear on retry.
        for code in [
            "40006", "40008", "40318", "40002", "40005", "40018", "10007", "50000",
        ] {
            assert_eq!(classify(400, Some(code)), Transient, "{code}");
        }
    }

    #[test]
    fn status_decides_unknown_codes() {
        assert_eq!(classify(500, None), Transient);
        assert_eq!(classify(503, Some("99999")), Transient);
        assert_eq!(classify(408, None), Transient);
        assert_eq!(classify(422, None), Permanent);
        assert_eq!(classify(400, Some("12345")), Permanent);
        assert_eq!(classify(409, None), Permanent);
        assert_eq!(classify(404, None), Transient);
        assert_eq!(classify(407, None), Transient);
    }

    #[test]
    fn retry_hints() {
        assert_eq!(retry_hint(None, Some("3"), None), Duration::from_secs(3));
        assert_eq!(
            retry_hint(Some("1500"), Some("3"), None),
            Duration::from_millis(1500)
        );
        assert_eq!(retry_hint(None, None, Some("7")), Duration::from_secs(7));
        assert_eq!(
            retry_hint(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), Some("4")),
            Duration::from_secs(4)
        );
        assert_eq!(retry_hint(None, None, None), DEFAULT_RATE_LIMIT_DELAY);
        assert_eq!(
            retry_hint(None, Some("0"), None),
            Duration::from_millis(100)
        );
        assert_eq!(retry_hint(None, Some("86400"), None), MAX_RETRY_HINT);
        assert_eq!(retry_hint(None, Some("-5"), None), DEFAULT_RATE_LIMIT_DELAY);
    }
}
