//! How an [`Outcome`] is read back from its JSON (the host reads one per job, from the plugin and, in process
//! isolation, from the plugin process's frame).
//!
//! On the wire an outcome is an object tagged by `status`. serde's derived reading of such an enum buffers
//! the whole object into an intermediate tree before it looks at the tag, then reads the variant from that
//! tree: every value stored once more (each object and array of the result allocated twice) and visited
//! twice. Every writer of outcomes (this crate's derived `Serialize`, in every plugin built so far) puts
//! `status` first, so when it comes first the variant's fields are read straight into their types here. Any
//! other shape (`status` later in the object, or the sequence form serde also accepts) goes to the derived
//! reading. What is accepted, and the value it gives, are what they were with the derived reading alone, and
//! a refusal names the same fault (the tests compare the two); the direct reading's error also says where
//! the fault stands, and of two faults in one object it names the first it meets.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::types::{FailureDetail, Outcome, RetryScope};

/// serde's derived reading of [`Outcome`] (a mirror of its definition, checked against it by the compiler
/// through `remote`), for the shapes the direct reading below does not take.
#[derive(Deserialize)]
#[serde(
    remote = "Outcome",
    rename = "Outcome",
    tag = "status",
    rename_all = "camelCase"
)]
enum Derived {
    Completed {
        result: Value,
    },
    Failed {
        message: String,
        unrecoverable: bool,
        #[serde(default)]
        detail: Option<FailureDetail>,
    },
    #[serde(rename_all = "camelCase")]
    RetryLater {
        delay_ms: u64,
        scope: RetryScope,
        reason: String,
    },
}

/// The names of the statuses, as serde's errors list them.
const STATUSES: &[&str] = &["completed", "failed", "retryLater"];

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OutcomeVisitor)
    }
}

struct OutcomeVisitor;

impl<'de> Visitor<'de> for OutcomeVisitor {
    type Value = Outcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("internally tagged enum Outcome")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outcome, A::Error> {
        match map.next_key_seed(FirstKey)? {
            Some(None) => {
                let status = map.next_value()?;
                read_fields(status, map)
            }
            first => Derived::deserialize(MapAccessDeserializer::new(Resumed {
                first: first.flatten(),
                map,
            })),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Outcome, A::Error> {
        Derived::deserialize(SeqAccessDeserializer::new(seq))
    }
}

/// Reads the rest of an object whose `status` came first: the variant's own fields into their types, any
/// other field skipped unread (as the derived reading ignores unknown fields, whatever their value).
fn read_fields<'de, A: MapAccess<'de>>(status: Status, mut map: A) -> Result<Outcome, A::Error> {
    match status {
        Status::Completed => {
            let mut result = None;
            while let Some(field) = map.next_key()? {
                match field {
                    Field::Result => fill(&mut result, "result", &mut map)?,
                    other => skip(other, &mut map)?,
                }
            }
            Ok(Outcome::Completed {
                result: required(result, "result")?,
            })
        }
        Status::Failed => {
            let (mut message, mut unrecoverable, mut detail) = (None, None, None);
            while let Some(field) = map.next_key()? {
                match field {
                    Field::Message => fill(&mut message, "message", &mut map)?,
                    Field::Unrecoverable => fill(&mut unrecoverable, "unrecoverable", &mut map)?,
                    Field::Detail => fill(&mut detail, "detail", &mut map)?,
                    other => skip(other, &mut map)?,
                }
            }
            Ok(Outcome::Failed {
                message: required(message, "message")?,
                unrecoverable: required(unrecoverable, "unrecoverable")?,
                detail: detail.flatten(),
            })
        }
        Status::RetryLater => {
            let (mut delay_ms, mut scope, mut reason) = (None, None, None);
            while let Some(field) = map.next_key()? {
                match field {
                    Field::DelayMs => fill(&mut delay_ms, "delayMs", &mut map)?,
                    Field::Scope => fill(&mut scope, "scope", &mut map)?,
                    Field::Reason => fill(&mut reason, "reason", &mut map)?,
                    other => skip(other, &mut map)?,
                }
            }
            Ok(Outcome::RetryLater {
                delay_ms: required(delay_ms, "delayMs")?,
                scope: required(scope, "scope")?,
                reason: required(reason, "reason")?,
            })
        }
    }
}

/// Reads the value of field `name` into `slot`; a field given twice is an error, as in derived readings.
fn fill<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// Skips the value of a field that is not the variant's; a second `status` is an error, as in the derived
/// reading of a tagged enum.
fn skip<'de, A: MapAccess<'de>>(field: Field, map: &mut A) -> Result<(), A::Error> {
    if field == Field::Status {
        return Err(de::Error::duplicate_field("status"));
    }
    map.next_value::<IgnoredAny>().map(drop)
}

fn required<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(name))
}

/// The variant named by `status`, read as serde reads a variant's name (its string, or its index).
enum Status {
    Completed,
    Failed,
    RetryLater,
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(StatusVisitor)
    }
}

struct StatusVisitor;

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = Status;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Status, E> {
        match index {
            0 => Ok(Status::Completed),
            1 => Ok(Status::Failed),
            2 => Ok(Status::RetryLater),
            _ => Err(E::invalid_value(
                de::Unexpected::Unsigned(index),
                &"variant index 0 <= i < 3",
            )),
        }
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Status, E> {
        match name {
            "completed" => Ok(Status::Completed),
            "failed" => Ok(Status::Failed),
            "retryLater" => Ok(Status::RetryLater),
            _ => Err(E::unknown_variant(name, STATUSES)),
        }
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Status, E> {
        match std::str::from_utf8(name) {
            Ok(name) => self.visit_str(name),
            Err(_) => Err(E::unknown_variant(&String::from_utf8_lossy(name), STATUSES)),
        }
    }
}

/// A key of an outcome object: the tag, one of the variants' fields, or anything else.
#[derive(PartialEq)]
enum Field {
    Status,
    Result,
    Message,
    Unrecoverable,
    Detail,
    DelayMs,
    Scope,
    Reason,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(match key {
            "status" => Field::Status,
            "result" => Field::Result,
            "message" => Field::Message,
            "unrecoverable" => Field::Unrecoverable,
            "detail" => Field::Detail,
            "delayMs" => Field::DelayMs,
            "scope" => Field::Scope,
            "reason" => Field::Reason,
            _ => Field::Other,
        })
    }

    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Field, E> {
        std::str::from_utf8(key).map_or(Ok(Field::Other), |key| self.visit_str(key))
    }
}

/// Reads an object's first key: `Some(None)` for `status`, `Some(Some(key))` for any other (kept, to be
/// handed to the derived reading).
struct FirstKey;

impl<'de> DeserializeSeed<'de> for FirstKey {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FirstKey {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((key != "status").then(|| key.to_owned()))
    }
}

/// An object whose first key was already read, handed on whole: that key again, then the rest.
struct Resumed<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Resumed<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => seed.deserialize(StringDeserializer::new(key)).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        let first = usize::from(self.first.is_some());
        self.map.size_hint().map(|rest| rest + first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The derived reading alone: what every host and plugin before this module accepted.
    fn derived(json: &str) -> Result<Outcome, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let outcome = Derived::deserialize(&mut de)?;
        de.end()?;
        Ok(outcome)
    }

    /// An error's message without the position serde_json appends (the direct reading knows where the
    /// offending value stands; the derived one, reading its buffer, does not for a field's value).
    fn without_position(e: &serde_json::Error) -> String {
        let text = e.to_string();
        match text.rfind(" at line ") {
            Some(at) => text[..at].to_owned(),
            None => text,
        }
    }

    /// Every variant serialises to the bytes it always did and reads back to itself.
    #[test]
    fn every_variant_round_trips_byte_for_byte() {
        let table: [(Outcome, &str); 7] = [
            (
                Outcome::completed(json!({"b": 1, "a": [true, null]})),
                r#"{"status":"completed","result":{"b":1,"a":[true,null]}}"#,
            ),
            (
                Outcome::completed(Value::Null),
                r#"{"status":"completed","result":null}"#,
            ),
            (
                Outcome::failed("nope"),
                r#"{"status":"failed","message":"nope","unrecoverable":false}"#,
            ),
            (
                Outcome::unrecoverable("bad \"number\""),
                r#"{"status":"failed","message":"bad \"number\"","unrecoverable":true}"#,
            ),
            (
                Outcome::Failed {
                    message: "boom".into(),
                    unrecoverable: false,
                    detail: Some(FailureDetail {
                        kind: Some("E".into()),
                        sources: vec!["cause".into()],
                        panicked: true,
                        location: Some("src/lib.rs:3:5".into()),
                    }),
                },
                r#"{"status":"failed","message":"boom","unrecoverable":false,"detail":{"kind":"E","sources":["cause"],"panicked":true,"location":"src/lib.rs:3:5"}}"#,
            ),
            (
                Outcome::retry_job_later(1500, "busy"),
                r#"{"status":"retryLater","delayMs":1500,"scope":"job","reason":"busy"}"#,
            ),
            (
                Outcome::retry_queue_later(u64::MAX, "429"),
                r#"{"status":"retryLater","delayMs":18446744073709551615,"scope":"queue","reason":"429"}"#,
            ),
        ];
        for (outcome, wire) in table {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), wire);
            assert_eq!(
                serde_json::from_str::<Outcome>(wire).unwrap(),
                outcome,
                "{wire}"
            );
            assert_eq!(derived(wire).unwrap(), outcome, "{wire}");
            let value = serde_json::to_value(&outcome).unwrap();
            assert_eq!(serde_json::from_value::<Outcome>(value).unwrap(), outcome);
        }
    }

    /// Outcomes as plugins built before write them, and every other shape, are accepted or refused exactly as
    /// by the derived reading, with the same value or the same error.
    #[test]
    fn reads_what_the_derived_reading_reads_and_refuses_what_it_refuses() {
        let accepted = [
            // Plugins from before `detail`: no detail at all.
            r#"{"status":"failed","message":"m","unrecoverable":false}"#,
            r#"{"status":"failed","message":"m","unrecoverable":true,"detail":null}"#,
            r#"{"status":"failed","message":"m","unrecoverable":false,"detail":{}}"#,
            // Fields in any order after the status, unknown fields of any type ignored, other variants' too.
            r#"{"status":"failed","unrecoverable":false,"message":"m","extra":{"x":[1,{"y":2}]}}"#,
            r#"{"status":"completed","result":1,"message":5,"delayMs":"soon","detail":[]}"#,
            r#"{"status":"retryLater","reason":"r","scope":"queue","delayMs":0,"result":{}}"#,
            r#" { "status" : "completed" , "result" : "caf\u00e9 \"x\"" } "#,
            // The status later in the object, and serde's sequence form: the derived reading's shapes.
            r#"{"result":{"a":1},"status":"completed"}"#,
            r#"{"message":"m","unrecoverable":true,"status":"failed"}"#,
            r#"{"delayMs":5,"status":"retryLater","scope":"job","reason":"r"}"#,
            r#"["completed",{"a":1}]"#,
            r#"["failed","m",true]"#,
        ];
        for wire in accepted {
            let old = derived(wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
            assert_eq!(
                serde_json::from_str::<Outcome>(wire).unwrap(),
                old,
                "{wire}"
            );
            let value: Value = serde_json::from_str(wire).unwrap();
            assert_eq!(
                serde_json::from_value::<Outcome>(value).unwrap(),
                old,
                "{wire}"
            );
        }
        let refused = [
            (r#"{"status":"done","result":1}"#, "unknown variant `done`"),
            (r#"{"status":"Completed","result":1}"#, "unknown variant"),
            (r#"{"status":null,"result":1}"#, "invalid type: null"),
            (r#"{"status":0,"result":1}"#, "invalid type: integer"),
            (r#"{"status":"completed"}"#, "missing field `result`"),
            (
                r#"{"status":"failed","message":"m"}"#,
                "missing field `unrecoverable`",
            ),
            (
                r#"{"status":"failed","unrecoverable":false}"#,
                "missing field `message`",
            ),
            (
                r#"{"status":"retryLater","delayMs":1,"scope":"job"}"#,
                "missing field `reason`",
            ),
            (
                r#"{"status":"retryLater","scope":"job","reason":"r"}"#,
                "missing field `delayMs`",
            ),
            (
                r#"{"status":"failed","message":5,"unrecoverable":false}"#,
                "invalid type: integer `5`",
            ),
            (
                r#"{"status":"failed","message":"m","unrecoverable":"no"}"#,
                "invalid type: string",
            ),
            (
                r#"{"status":"failed","message":"m","unrecoverable":false,"detail":3}"#,
                "invalid type",
            ),
            (
                r#"{"status":"retryLater","delayMs":-1,"scope":"job","reason":"r"}"#,
                "invalid value",
            ),
            (
                r#"{"status":"retryLater","delayMs":1.5,"scope":"job","reason":"r"}"#,
                "invalid type",
            ),
            (
                r#"{"status":"retryLater","delayMs":1,"scope":"all","reason":"r"}"#,
                "unknown variant `all`",
            ),
            (
                r#"{"status":"completed","result":1,"result":2}"#,
                "duplicate field `result`",
            ),
            (
                r#"{"status":"completed","result":1,"status":"failed"}"#,
                "duplicate field `status`",
            ),
            (r#"{"result":1}"#, "missing field `status`"),
            (r#"{}"#, "missing field `status`"),
            (r#"[]"#, "missing field `status`"),
            (r#""completed""#, "expected internally tagged enum Outcome"),
            (r#"null"#, "expected internally tagged enum Outcome"),
            (r#"{"status":"completed","result":1"#, "EOF"),
            (
                r#"{"status":"completed","result":1} x"#,
                "trailing characters",
            ),
        ];
        for (wire, says) in refused {
            let old = derived(wire).expect_err(wire);
            let new = serde_json::from_str::<Outcome>(wire).expect_err(wire);
            assert!(without_position(&new).contains(says), "{wire}: {new}");
            assert_eq!(without_position(&new), without_position(&old), "{wire}");
            assert_eq!(new.classify(), old.classify(), "{wire}");
        }
    }

    /// With `status` first the fields are read as they come, without buffering the object first: a wrong
    /// value is reported where it stands, where the derived reading, reading its buffer, knows no position.
    #[test]
    fn status_first_is_read_without_buffering_the_object() {
        let wire = r#"{"status":"failed","message":5,"unrecoverable":false,"padding":"xxxxxxxx"}"#;
        let direct = serde_json::from_str::<Outcome>(wire).unwrap_err();
        let buffered = derived(wire).unwrap_err();
        assert_eq!(direct.column(), 30, "{direct}");
        assert_eq!(buffered.column(), 0, "{buffered}");
    }
}
