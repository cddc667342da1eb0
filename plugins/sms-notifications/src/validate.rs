//! Validation of `sms:send` job data (FrostGuard's `SmsNotificationJobData`).
//!
//! Bad data can never succeed, so every problem found here ends the job unrecoverably, before any HTTP
//! request. The reason names the field and the problem, never the value (the value may be a phone number).
//! Even for invalid data we try to recover a well-formed `deliveryId`, so the caller can mark that delivery
//! row `failed` with the same reason.

use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};

use lru::LruCache;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The one job name this processor accepts on queue `sms-notifications`.
pub const JOB_NAME: &str = "sms:send";

/// Longest accepted message, in characters. FrostGuard's own test-SMS path allows 1–1600 characters, which
/// is also Telnyx's limit for a (10-part) SMS; longer text would be rejected by the provider anyway.
pub const MAX_MESSAGE_CHARS: usize = 1600;

/// A job that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsJob {
    pub organization_id: String,
    pub phone_number: String,
    pub message: String,
    pub alert_id: Option<String>,
    pub delivery_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub alert_type: Option<String>,
}

/// Why a job was rejected, plus the delivery row to mark failed if one could be identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: String,
    pub delivery_id: Option<Uuid>,
}

/// Validates the job name and data. `data` is the producer's JSON text, verbatim.
pub fn validate(job_name: &str, data: &str) -> Result<SmsJob, Invalid> {
    let value: Option<Value> = serde_json::from_str(data).ok();
    let object = value.as_ref().and_then(Value::as_object);
    let delivery_id = object
        .and_then(|o| o.get("deliveryId"))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let fail = |reason: String| Invalid {
        reason: format!("invalid sms:send job: {reason}"),
        delivery_id,
    };

    if job_name != JOB_NAME {
        return Err(Invalid {
            reason: format!("unknown job name {job_name:?} on queue sms-notifications (expected \"{JOB_NAME}\")"),
            delivery_id,
        });
    }
    let Some(o) = object else {
        return Err(fail(match value {
            None => "job data is not valid JSON".to_owned(),
            Some(v) => format!("job data must be a JSON object, got {}", kind(&v)),
        }));
    };

    let organization_id = required_string(o, "organizationId").map_err(fail)?;
    let phone_number = required_string(o, "phoneNumber").map_err(fail)?;
    let message = required_string(o, "message").map_err(fail)?;
    let alert_id = optional_string(o, "alertId").map_err(fail)?;
    let delivery_id_text = optional_string(o, "deliveryId").map_err(fail)?;
    let user_id = optional_string(o, "userId").map_err(fail)?;
    let alert_type = optional_string(o, "alertType").map_err(fail)?;

    if organization_id.trim().is_empty() {
        return Err(fail("organizationId is empty".to_owned()));
    }
    let phone_number = to_e164(&phone_number).map_err(fail)?;
    if message.trim().is_empty() {
        return Err(fail("message is empty".to_owned()));
    }
    let chars = message.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        return Err(fail(format!(
            "message is too long ({chars} characters, at most {MAX_MESSAGE_CHARS})"
        )));
    }
    let delivery_id = match delivery_id_text {
        None => None,
        Some(text) => match Uuid::parse_str(&text) {
            Ok(id) => Some(id),
            Err(_) => return Err(fail("deliveryId is not a UUID".to_owned())),
        },
    };

    Ok(SmsJob {
        organization_id,
        phone_number,
        message,
        alert_id,
        delivery_id,
        user_id,
        alert_type,
    })
}

/// The number a person typed, as Telnyx needs it: E.164 (`+` and 2-15 digits).
///
/// FrostGuard stores what users typed (up to 50 characters; its only check is a leading `+`), so
/// `+1 555 123 4567`, `+1-555-123-4567`, `+1 (555) 123-4567`, `+1.555.123.4567`, a trailing space or a
/// national trunk prefix after the country code (`+44 (0)7911 123456`) all reach the worker. libphonenumber's
/// rules (the `phonenumber` crate) read them: separators go, the country's trunk prefix after the country code
/// goes, letters of a vanity number become digits. Only what is really not a number fails, with the reason
/// (never the value): no leading `+` (the country would be a guess), not a number, an unknown country code,
/// too short or too long. Whether the number is *assigned* is left to the carrier (Telnyx answers 10002 or
/// 40012), since a stricter local check would drop alarms to numbers that do exist.
pub fn to_e164(typed: &str) -> Result<String, String> {
    let trimmed = typed.trim();
    if trimmed.is_empty() {
        return Err("phoneNumber is empty".to_owned());
    }
    if !trimmed.starts_with('+') {
        return Err(
            "phoneNumber has no country code: it must start with \"+\" and the country code (E.164)"
                .to_owned(),
        );
    }
    let remembered = lock_read_numbers().get(trimmed).cloned();
    if let Some(answer) = remembered {
        return answer;
    }
    let answer = read_number(trimmed);
    lock_read_numbers().put(trimmed.to_owned(), answer.clone());
    answer
}

/// How many typed numbers [`to_e164`] remembers the answer for (a few hundred bytes each at most).
pub const READ_NUMBERS_KEPT: usize = 1024;

/// The answers of libphonenumber's rules for the numbers read lately, by the text as typed. Reading a number
/// runs the rules' regular expressions region by region, about a quarter of a dry-run job's CPU, while the
/// answer depends on the text alone and alarm SMS go to the same few on-call numbers again and again.
static READ_NUMBERS: LazyLock<Mutex<LruCache<String, Result<String, String>>>> =
    LazyLock::new(|| {
        let kept = NonZeroUsize::new(READ_NUMBERS_KEPT).expect("a non-zero capacity");
        Mutex::new(LruCache::new(kept))
    });

/// The remembered answers (a panic while the lock was held cannot leave the cache half-written: every
/// operation on it is one call).
fn lock_read_numbers() -> std::sync::MutexGuard<'static, LruCache<String, Result<String, String>>> {
    READ_NUMBERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A trimmed number starting with `+`, read with libphonenumber's rules into E.164.
fn read_number(trimmed: &str) -> Result<String, String> {
    let parsed = phonenumber::parse(None, trimmed)
        .map_err(|e| format!("phoneNumber is not a phone number ({e})"))?;
    let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
    if !is_e164(&e164) {
        return Err("phoneNumber is not a phone number (more than 15 digits)".to_owned());
    }
    Ok(e164)
}

/// E.164 as FrostGuard checks it: `^\+[1-9]\d{1,14}$`.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    let bytes = digits.as_bytes();
    (2..=15).contains(&bytes.len()) && bytes[0] != b'0' && bytes.iter().all(u8::is_ascii_digit)
}

fn required_string(o: &Map<String, Value>, field: &str) -> Result<String, String> {
    match o.get(field) {
        None | Some(Value::Null) => Err(format!("{field} is missing")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{field} must be a string, got {}", kind(other))),
    }
}

/// Optional fields may be absent or null; when present they must be strings (FrostGuard sends them so).
fn optional_string(o: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{field} must be a string, got {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERY: &str = "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b";

    fn data(extra: &str) -> String {
        format!(
            r#"{{"organizationId":"org-1","phoneNumber":"+15551234567","message":"CRITICAL: unit 4"{extra}}}"#
        )
    }

    #[test]
    fn accepts_the_producers_shape() {
        let job = validate(
            "sms:send",
            &data(&format!(r#","alertId":"a1","deliveryId":"{DELIVERY}","userId":"u1","alertType":"alarm_active""#)),
        )
        .unwrap();
        assert_eq!(job.phone_number, "+15551234567");
        assert_eq!(job.delivery_id, Some(Uuid::parse_str(DELIVERY).unwrap()));
        assert_eq!(job.alert_type.as_deref(), Some("alarm_active"));
        assert_eq!(job.user_id.as_deref(), Some("u1"));
    }

    #[test]
    fn optional_fields_may_be_null_or_absent_and_unknown_fields_are_ignored() {
        let job = validate(
            "sms:send",
            &data(r#","deliveryId":null,"alertId":null,"future":1"#),
        )
        .unwrap();
        assert_eq!(job.delivery_id, None);
        assert_eq!(job.alert_id, None);
    }

    #[test]
    fn e164_rules() {
        for ok in ["+15551234567", "+12", "+999999999999999"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "15551234567",
            "+0555123",
            "+1",
            "+1234567890123456",
            "+1 555 123",
            "+1555abc",
            "",
            "+",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    /// The forms people type, as FrostGuard stores them, and the E.164 number Telnyx gets.
    #[test]
    fn typed_numbers_become_e164() {
        for (typed, e164) in [
            ("+15551234567", "+15551234567"),
            ("+1 555 123 4567", "+15551234567"),
            ("+1-555-123-4567", "+15551234567"),
            ("+1 (555) 123-4567", "+15551234567"),
            ("+1.555.123.4567", "+15551234567"),
            ("+15551234567 ", "+15551234567"),
            ("  +1 555 123 4567\t", "+15551234567"),
            ("+44 (0)7911 123456", "+447911123456"),
            ("+44 (0) 7911 123 456", "+447911123456"),
            ("+447911123456", "+447911123456"),
            ("+49 (0)30 123456", "+4930123456"),
            ("+33 (0)6 12 34 56 78", "+33612345678"),
        ] {
            assert_eq!(to_e164(typed).as_deref(), Ok(e164), "{typed:?}");
        }
    }

    /// A number read before is answered from the remembered answers, the same as a fresh read, valid or not;
    /// and the remembered answers stay bounded however many numbers go by.
    #[test]
    fn remembered_numbers_are_answered_as_a_fresh_read_and_stay_bounded() {
        for typed in [
            "+1 (555) 123-4567",
            "+44 (0)7911 123456",
            "+not a number",
            "+999 123456",
        ] {
            let first = to_e164(typed);
            assert!(lock_read_numbers().contains(typed.trim()), "{typed:?}");
            assert_eq!(to_e164(typed), first, "{typed:?}");
            assert_eq!(read_number(typed.trim()), first, "{typed:?}");
        }
        for n in 0..READ_NUMBERS_KEPT + 50 {
            let typed = format!("+1 555 {:07}", n);
            assert_eq!(to_e164(&typed), Ok(format!("+1555{:07}", n)));
        }
        assert!(lock_read_numbers().len() <= READ_NUMBERS_KEPT);
    }

    /// Only what is really not a number fails, and the reason says why without repeating the value.
    #[test]
    fn non_numbers_fail_with_the_reason() {
        for (typed, reason) in [
            ("", "phoneNumber is empty"),
            ("   ", "phoneNumber is empty"),
            ("5551234567", "has no country code"),
            ("(555) 123-4567", "has no country code"),
            ("+", "not a phone number"),
            ("+1", "not a phone number"),
            ("call me", "has no country code"),
            ("+not a number", "not a phone number"),
            ("+999 123456", "not a phone number"),
            ("+1 555 123 4567 8901 2345 6789", "not a phone number"),
        ] {
            let err = to_e164(typed).unwrap_err();
            assert!(err.contains(reason), "{typed:?}: {err}");
            if typed.trim().len() > 3 {
                assert!(
                    !err.contains(typed.trim()),
                    "the reason repeats the value: {err}"
                );
            }
        }
    }

    #[test]
    fn the_job_carries_the_normalised_number() {
        let job = validate("sms:send", &data(r#","phoneNumber":"+1 (555) 123-4567 ""#)).unwrap();
        assert_eq!(job.phone_number, "+15551234567");
    }

    #[test]
    fn rejects_with_a_reason_naming_the_field_and_keeps_the_delivery_id() {
        let cases = [
            (
                data(r#","phoneNumber":"5551234567""#),
                "phoneNumber has no country code",
            ),
            (
                r#"{"phoneNumber":"+15551234567","message":"m"}"#.to_owned(),
                "organizationId is missing",
            ),
            (
                r#"{"organizationId":"o","message":"m"}"#.to_owned(),
                "phoneNumber is missing",
            ),
            (
                r#"{"organizationId":"o","phoneNumber":15551234567,"message":"m"}"#.to_owned(),
                "phoneNumber must be a string, got a number",
            ),
            (
                r#"{"organizationId":"o","phoneNumber":"+15551234567"}"#.to_owned(),
                "message is missing",
            ),
            (
                r#"{"organizationId":"o","phoneNumber":"+15551234567","message":"   "}"#.to_owned(),
                "message is empty",
            ),
            (
                r#"{"organizationId":"","phoneNumber":"+15551234567","message":"m"}"#.to_owned(),
                "organizationId is empty",
            ),
            (
                data(r#","alertType":7"#),
                "alertType must be a string, got a number",
            ),
        ];
        for (json, want) in cases {
            let with_delivery = json.replacen('{', &format!(r#"{{"deliveryId":"{DELIVERY}","#), 1);
            let err = validate("sms:send", &with_delivery).unwrap_err();
            assert!(
                err.reason.starts_with("invalid sms:send job: "),
                "{}",
                err.reason
            );
            assert!(
                err.reason.contains(want),
                "{} does not contain {want}",
                err.reason
            );
            assert_eq!(
                err.delivery_id,
                Some(Uuid::parse_str(DELIVERY).unwrap()),
                "{json}"
            );
            assert!(
                !err.reason.contains("5551234567"),
                "reason leaks the number: {}",
                err.reason
            );
        }
    }

    #[test]
    fn rejects_over_long_messages_but_counts_characters_not_bytes() {
        let ok = "é".repeat(MAX_MESSAGE_CHARS);
        assert!(validate("sms:send", &data(&format!(r#","message":"{ok}""#))).is_ok());
        let long = "a".repeat(MAX_MESSAGE_CHARS + 1);
        let err = validate("sms:send", &data(&format!(r#","message":"{long}""#))).unwrap_err();
        assert!(
            err.reason
                .contains("message is too long (1601 characters, at most 1600)"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn rejects_bad_delivery_ids_without_a_row_to_mark() {
        let err = validate("sms:send", &data(r#","deliveryId":"not-a-uuid""#)).unwrap_err();
        assert!(err.reason.contains("deliveryId is not a UUID"));
        assert_eq!(err.delivery_id, None);
    }

    #[test]
    fn rejects_non_objects_and_unknown_job_names() {
        assert!(validate("sms:send", "[1,2]")
            .unwrap_err()
            .reason
            .contains("must be a JSON object, got an array"));
        assert!(validate("sms:send", "{oops")
            .unwrap_err()
            .reason
            .contains("not valid JSON"));
        let err =
            validate("sms:bulk", &data(&format!(r#","deliveryId":"{DELIVERY}""#))).unwrap_err();
        assert!(
            err.reason.starts_with("unknown job name \"sms:bulk\""),
            "{}",
            err.reason
        );
        assert!(err.delivery_id.is_some());
    }
}
