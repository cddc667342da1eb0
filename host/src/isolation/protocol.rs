//! The framed protocol between the host and a plugin process: each message is a 4-byte big-endian length
//! followed by that many bytes of JSON (serde_json, as everything else that crosses the plugin boundary),
//! except the host's job frames, which have a binary form of their own ([`encode_job_frame`]).
//!
//! Host → plugin process on its stdin: [`ToChild`]; plugin process → host on its stdout: [`FromChild`].
//! Requests carry a host-chosen `id`, so any number of jobs can be in flight at once and replies come back
//! in whatever order the plugin finishes them.

use std::io::{self, Read, Write};

use plugin_api::loader::{ForwardedLog, LogLevel};
use plugin_api::{JobOpts, JobView, Outcome, PluginConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest frame either side accepts (a job's data, an outcome's result).
pub const MAX_FRAME: usize = 64 << 20;

/// What the host sends. Externally tagged (`{"job": {...}}`): an internally tagged enum would buffer its
/// fields and lose the job's raw JSON data.
///
/// `J` is how a job is held: the host writes a [`JobView`] (in the binary form of [`encode_job_frame`]), the
/// plugin process reads it into one and holds it as it hands it on.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ToChild<J = Box<JobView>> {
    /// First message: start the plugin with this configuration; forward log records up to `max_level`.
    Init {
        /// The plugin's resolved settings.
        config: PluginConfig,
        /// The most verbose level worth forwarding.
        max_level: LogLevel,
    },
    /// Run one job.
    Job {
        /// Request id, echoed in every message about this job.
        id: u64,
        /// The job as the plugin sees it (boxed: it is by far the largest message).
        job: J,
    },
    /// The job's `is_cancelled()` turns true (shutdown, deadline, library cancellation).
    Cancel {
        /// Request id.
        id: u64,
    },
    /// Call the plugin's `shutdown` with this budget, answer, and exit.
    Shutdown {
        /// The budget in milliseconds.
        deadline_ms: u64,
    },
}

impl<J> ToChild<J> {
    /// The same message with its job (if it is one) held as `hold` makes it.
    pub fn try_map_job<K, E>(self, hold: impl FnOnce(J) -> Result<K, E>) -> Result<ToChild<K>, E> {
        Ok(match self {
            ToChild::Job { id, job } => ToChild::Job {
                id,
                job: hold(job)?,
            },
            ToChild::Init { config, max_level } => ToChild::Init { config, max_level },
            ToChild::Cancel { id } => ToChild::Cancel { id },
            ToChild::Shutdown { deadline_ms } => ToChild::Shutdown { deadline_ms },
        })
    }
}

/// What the plugin process sends.
///
/// `O` is how an outcome is held: the host reads an [`Outcome`]; the plugin process writes the outcome's
/// JSON text as the plugin returned it, once checked to be one ([`ChildOutput`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FromChild<O = Outcome> {
    /// `init` succeeded: jobs may come.
    Ready,
    /// `init` refused (or the library could not be loaded); the process exits.
    InitFailed {
        /// Why, in one line.
        reason: String,
    },
    /// `ctx.progress` (JSON text).
    Progress {
        /// Request id.
        id: u64,
        /// The progress value as JSON text.
        json: String,
    },
    /// `ctx.log`.
    JobLog {
        /// Request id.
        id: u64,
        /// The line.
        line: String,
    },
    /// A `tracing` record from plugin code.
    Log {
        /// The record.
        record: ForwardedLog,
    },
    /// The job's outcome.
    Outcome {
        /// Request id.
        id: u64,
        /// What the plugin returned.
        outcome: O,
    },
    /// `shutdown` returned.
    ShutdownDone,
}

/// [`FromChild`] as the plugin process writes it: an outcome as JSON text.
pub type ChildOutput<'a> = FromChild<&'a RawValue>;

/// Writes one frame (one `write_all` of length and body, so concurrent writers under a lock never interleave).
pub fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> io::Result<()> {
    w.write_all(&encode_frame(msg)?)?;
    w.flush()
}

/// One frame's bytes: the length, then the JSON body.
pub fn encode_frame(msg: &impl Serialize) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds the frame limit", body.len()),
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The first byte of a job frame's body in its binary form ([`encode_job_frame`]); no JSON text starts with it.
pub const BINARY_JOB: u8 = 0x01;

/// A [`ToChild::Job`] frame in its binary form, which is what the host writes for every job: after
/// [`BINARY_JOB`], the request id and the job's fields as MessagePack values in a fixed order, the job's data
/// and a backoff setting as their JSON text. Both ends are this binary, so the form needs no version; it
/// spares the JSON writer's escaping of every string on the host's side and the JSON reader's scan of every
/// string on the plugin process's.
pub fn encode_job_frame(id: u64, job: &JobView) -> io::Result<Vec<u8>> {
    let backoff = match &job.opts.backoff {
        Some(backoff) => Some(serde_json::to_string(backoff).map_err(io::Error::other)?),
        None => None,
    };
    let texts = job.id.len() + job.name.len() + job.queue.len() + job.data.get().len();
    let mut frame =
        Vec::with_capacity(4 + 1 + 64 + texts + backoff.as_ref().map_or(0, String::len));
    frame.extend_from_slice(&[0; 4]);
    frame.push(BINARY_JOB);
    let write = |frame: &mut Vec<u8>| -> Result<(), rmp::encode::ValueWriteError> {
        rmp::encode::write_uint(frame, id)?;
        for text in [&job.id, &job.name, &job.queue] {
            rmp::encode::write_str(frame, text)?;
        }
        rmp::encode::write_str(frame, job.data.get())?;
        for n in [job.attempts_made, job.attempts_started, job.opts.attempts] {
            rmp::encode::write_uint(frame, u64::from(n))?;
        }
        match &backoff {
            Some(text) => rmp::encode::write_str(frame, text)?,
            None => write_nil(frame)?,
        }
        for n in [job.opts.delay, job.opts.priority] {
            write_optional(frame, n)?;
        }
        rmp::encode::write_uint(frame, job.timestamp)?;
        write_optional(frame, job.deadline_ms)
    };
    write(&mut frame).map_err(io::Error::other)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the frame limit"),
        ));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// A number, or nil for none.
fn write_optional(frame: &mut Vec<u8>, n: Option<u64>) -> Result<(), rmp::encode::ValueWriteError> {
    match n {
        Some(n) => rmp::encode::write_uint(frame, n).map(drop),
        None => write_nil(frame),
    }
}

fn write_nil(frame: &mut Vec<u8>) -> Result<(), rmp::encode::ValueWriteError> {
    rmp::encode::write_nil(frame).map_err(rmp::encode::ValueWriteError::InvalidMarkerWrite)
}

/// The request id and job of a binary job frame's body, after its [`BINARY_JOB`] byte.
pub fn decode_job(body: &[u8]) -> io::Result<(u64, JobView)> {
    let mut fields = Fields(body);
    let id = fields.number()?;
    let (job_id, name, queue) = (fields.text()?, fields.text()?, fields.text()?);
    let data = RawValue::from_string(fields.text()?.to_owned()).map_err(invalid)?;
    let attempts_made = fields.small_number()?;
    let attempts_started = fields.small_number()?;
    let attempts = fields.small_number()?;
    let backoff = match fields.nil() {
        true => None,
        false => Some(serde_json::from_str(fields.text()?).map_err(invalid)?),
    };
    let delay = fields.optional_number()?;
    let priority = fields.optional_number()?;
    let timestamp = fields.number()?;
    let deadline_ms = fields.optional_number()?;
    if !fields.0.is_empty() {
        return Err(invalid("bytes after the job's last field"));
    }
    let job = JobView {
        id: job_id.to_owned(),
        name: name.to_owned(),
        queue: queue.to_owned(),
        data,
        attempts_made,
        attempts_started,
        opts: JobOpts {
            attempts,
            backoff,
            delay,
            priority,
        },
        timestamp,
        deadline_ms,
    };
    Ok((id, job))
}

/// The rest of a binary job frame, read field by field.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn text(&mut self) -> io::Result<&'a str> {
        let (text, rest) =
            rmp::decode::read_str_from_slice(self.0).map_err(|e| invalid(e.to_string()))?;
        self.0 = rest;
        Ok(text)
    }

    fn number(&mut self) -> io::Result<u64> {
        let mut bytes = rmp::decode::Bytes::new(self.0);
        let n = rmp::decode::read_int(&mut bytes).map_err(|e| invalid(e.to_string()))?;
        self.0 = bytes.remaining_slice();
        Ok(n)
    }

    fn small_number(&mut self) -> io::Result<u32> {
        u32::try_from(self.number()?).map_err(invalid)
    }

    /// Whether the next field is nil (then taken).
    fn nil(&mut self) -> bool {
        let nil = self.0.first() == Some(&rmp::Marker::Null.to_u8());
        if nil {
            self.0 = &self.0[1..];
        }
        nil
    }

    fn optional_number(&mut self) -> io::Result<Option<u64>> {
        if self.nil() {
            return Ok(None);
        }
        self.number().map(Some)
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads one frame; `Ok(None)` at a clean end of stream (the other side closed between frames).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    read_frame_body(r)?
        .map(|body| decode_body(&body))
        .transpose()
}

/// Reads one frame's body; `Ok(None)` at a clean end of stream.
pub fn read_frame_body(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// A frame's body read as its message. The body is checked as UTF-8 once, then read as text: reading the
/// bytes directly would check every string of the message on its own, which costs more than the one pass.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    let text =
        std::str::from_utf8(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    serde_json::from_str(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_order() {
        let job = JobView {
            id: "7".into(),
            name: "complete".into(),
            queue: "q".into(),
            data: RawValue::from_string(r#"{"to":"+1","n":[1,2]}"#.into()).unwrap(),
            attempts_made: 1,
            attempts_started: 2,
            opts: Default::default(),
            timestamp: 5,
            deadline_ms: Some(9),
        };
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            &ToChild::Job {
                id: 3,
                job: Box::new(job),
            },
        )
        .unwrap();
        write_frame(&mut wire, &ToChild::<Box<JobView>>::Cancel { id: 3 }).unwrap();
        let mut r = wire.as_slice();
        match read_frame::<ToChild>(&mut r).unwrap() {
            Some(ToChild::Job { id: 3, job }) => {
                // The job's data is passed through byte for byte.
                assert_eq!(job.data.get(), r#"{"to":"+1","n":[1,2]}"#);
                assert_eq!((job.attempts_made, job.deadline_ms), (1, Some(9)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<ToChild>(&mut r).unwrap(),
            Some(ToChild::Cancel { id: 3 })
        ));
        assert!(read_frame::<ToChild>(&mut r).unwrap().is_none());
    }

    /// An outcome frame carries every variant of `Outcome` as the plugin returned it, and the frame of a
    /// plugin process built before failure details (no `detail`) still reads.
    #[test]
    fn outcome_frames_carry_every_outcome() {
        use plugin_api::{FailureDetail, RetryScope};
        let outcomes = [
            Outcome::completed(serde_json::json!({"b": 1, "a": [null]})),
            Outcome::failed("nope"),
            Outcome::Failed {
                message: "boom".into(),
                unrecoverable: true,
                detail: Some(FailureDetail::panic(Some("src/lib.rs:1:2".into()))),
            },
            Outcome::RetryLater {
                delay_ms: 250,
                scope: RetryScope::Queue,
                reason: "429".into(),
            },
        ];
        let mut wire = Vec::new();
        for (id, outcome) in outcomes.iter().enumerate() {
            let outcome = outcome.clone();
            write_frame(
                &mut wire,
                &FromChild::Outcome {
                    id: id as u64,
                    outcome,
                },
            )
            .unwrap();
        }
        let older = br#"{"outcome":{"id":9,"outcome":{"status":"failed","message":"m","unrecoverable":false}}}"#;
        wire.extend_from_slice(&(older.len() as u32).to_be_bytes());
        wire.extend_from_slice(older);
        let mut r = wire.as_slice();
        for (want_id, want) in outcomes.iter().enumerate() {
            match read_frame::<FromChild>(&mut r).unwrap() {
                Some(FromChild::Outcome { id, outcome }) => {
                    assert_eq!((id, &outcome), (want_id as u64, want));
                }
                other => panic!("{other:?}"),
            }
        }
        match read_frame::<FromChild>(&mut r).unwrap() {
            Some(FromChild::Outcome { id: 9, outcome }) => {
                assert_eq!(outcome, Outcome::failed("m"));
            }
            other => panic!("{other:?}"),
        }
        let unknown = br#"{"outcome":{"id":1,"outcome":{"status":"done"}}}"#;
        let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(unknown);
        assert!(read_frame::<FromChild>(&mut frame.as_slice()).is_err());
    }

    #[test]
    fn an_outcome_written_as_text_is_the_frame_of_the_outcome() {
        let outcome = Outcome::completed(serde_json::json!({"b": 1, "a": [true, null]}));
        let text = serde_json::value::to_raw_value(&outcome).unwrap();
        let as_text = encode_frame(&ChildOutput::Outcome {
            id: 9,
            outcome: &text,
        })
        .unwrap();
        let as_value = encode_frame(&FromChild::Outcome { id: 9, outcome }).unwrap();
        assert_eq!(as_text, as_value);
        // Text as a plugin may write it (spaces, its own field order) reads as the same outcome.
        let spaced = RawValue::from_string(
            r#"{ "result": {"a": [true, null], "b": 1}, "status": "completed" }"#.into(),
        )
        .unwrap();
        let frame = encode_frame(&ChildOutput::Outcome {
            id: 9,
            outcome: &spaced,
        })
        .unwrap();
        match read_frame::<FromChild>(&mut frame.as_slice()).unwrap() {
            Some(FromChild::Outcome { id: 9, outcome }) => assert_eq!(
                outcome,
                Outcome::completed(serde_json::json!({"a": [true, null], "b": 1}))
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &FromChild::<Outcome>::Ready).unwrap();
        let cut = &wire[..wire.len() - 1];
        assert!(read_frame::<FromChild>(&mut &cut[..]).is_err());
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(read_frame::<FromChild>(&mut &huge[..]).is_err());
        let garbage = [0, 0, 0, 2, b'{', b'x'];
        assert!(read_frame::<FromChild>(&mut &garbage[..]).is_err());
    }

    #[test]
    fn job_frames_in_the_binary_form_give_back_every_field() {
        let job = |id: &str, data: &str, opts: JobOpts, deadline_ms: Option<u64>| JobView {
            id: id.into(),
            name: "sms:send".into(),
            queue: "sms-notifications".into(),
            data: RawValue::from_string(data.into()).unwrap(),
            attempts_made: 4_000_000_000,
            attempts_started: 0,
            opts,
            timestamp: u64::MAX,
            deadline_ms,
        };
        let full = JobOpts {
            attempts: 5,
            backoff: Some(serde_json::json!({"type": "exponential", "delay": 2000})),
            delay: Some(0),
            priority: Some(u64::MAX),
        };
        let number = JobOpts {
            backoff: Some(serde_json::json!(1000)),
            ..JobOpts::default()
        };
        let jobs = [
            job("1", r#"{"result":1}"#, JobOpts::default(), None),
            job(
                "sms:ü-42",
                r#"{"body":"Temp \"high\" ❄\n\u0001","n":[1,-3e2,null]}"#,
                full,
                Some(7),
            ),
            job("", "[]", number, Some(0)),
        ];
        for (n, job) in jobs.iter().enumerate() {
            let frame = encode_job_frame(n as u64 + 40, job).unwrap();
            let body = read_frame_body(&mut frame.as_slice()).unwrap().unwrap();
            assert_eq!(body[0], BINARY_JOB);
            let (id, back) = decode_job(&body[1..]).unwrap();
            assert_eq!(id, n as u64 + 40);
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(job).unwrap()
            );
            // Cut anywhere, or with a byte more, the job is refused, never misread.
            for cut in 0..body.len() - 1 {
                assert!(decode_job(&body[1..1 + cut]).is_err(), "cut at {cut}");
            }
            let mut longer = body[1..].to_vec();
            longer.push(0);
            assert!(decode_job(&longer).is_err());
        }
    }

    #[test]
    fn a_body_is_read_as_utf8_text_or_refused() {
        // (body, the job log line it must give, or None: refused as invalid data)
        let table: [(&[u8], Option<&str>); 5] = [
            (br#"{"jobLog":{"id":1,"line":"ok"}}"#, Some("ok")),
            (
                "{\"jobLog\":{\"id\":1,\"line\":\"caf\u{e9} \\u00e9 \\n\"}}".as_bytes(),
                Some("café é \n"),
            ),
            (b"{\"jobLog\":{\"id\":1,\"line\":\"\xff\"}}", None),
            (b"{\"jobLog\":{\"id\":1,\"line\":\"a\"}", None),
            (b"", None),
        ];
        for (body, want) in table {
            let got = decode_body::<FromChild>(body);
            match (got, want) {
                (Ok(FromChild::JobLog { id: 1, line }), Some(want)) => assert_eq!(line, want),
                (Err(e), None) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
                (got, want) => panic!(
                    "{:?}: got {got:?}, want {want:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
    }
}
