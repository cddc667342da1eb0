//! The plugin call with the outcome as JSON text, for a caller that passes it on as JSON: the plugin
//! process, which reads the job out of a frame and writes the outcome into one. The job is either lent
//! ([`LoadedPlugin::process_to_json`], for a plugin that takes jobs lent: the process parses the frame's job
//! once, straight into a `JobView`) or handed on as the JSON text it arrived as
//! ([`LoadedPlugin::process_json`], for a plugin built before); the outcome is checked, not parsed into its
//! type and written out again, which [`LoadedPlugin::process`] would do for nothing there.

use std::sync::Arc;

use abi_stable::std_types::RString;
use serde_json::value::RawValue;

use super::{JobCallbacks, LoadedPlugin};
use crate::types::{JobView, Outcome};

/// A job's outcome as JSON text that parses as an [`Outcome`]: the plugin's own text when it did, else the
/// JSON of the failure [`LoadedPlugin::process`] makes of it. A reader of the text therefore gets exactly
/// the outcome `process` would have returned.
#[derive(Debug)]
pub struct OutcomeJson(Box<RawValue>);

impl OutcomeJson {
    /// The JSON of `outcome` (an outcome the caller made itself).
    pub fn of(outcome: &Outcome) -> Self {
        // An outcome holds strings, numbers and a JSON value: nothing that can fail to serialise.
        Self(serde_json::value::to_raw_value(outcome).expect("an outcome serialises to JSON"))
    }

    /// The plugin's `text` if it is an outcome; otherwise the failure `malformed` names.
    fn checked(text: RString, malformed: impl FnOnce(&serde_json::Error) -> String) -> Self {
        let checked = serde_json::from_str::<Outcome>(text.as_str())
            .and_then(|_| RawValue::from_string(text.into_string()));
        match checked {
            Ok(raw) => Self(raw),
            Err(e) => Self::of(&Outcome::failed(malformed(&e))),
        }
    }

    /// The JSON value, to embed in another message.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The outcome itself (parsed: for callers that look into it).
    pub fn outcome(&self) -> Outcome {
        serde_json::from_str(self.as_str()).expect("checked to parse as an outcome when made")
    }
}

impl LoadedPlugin {
    /// [`Self::process`] for a job given as JSON of [`crate::JobView`], handed to the plugin as it is; the
    /// outcome comes back as JSON text, the plugin's own when it is a well-formed outcome. Blocks for as long
    /// as the plugin works; never panics.
    pub fn process_json(&self, job_json: &str, callbacks: Arc<dyn JobCallbacks>) -> OutcomeJson {
        if !self.is_initialised() {
            return OutcomeJson::of(&Outcome::failed(self.not_initialised()));
        }
        let text = self.call_process(job_json, callbacks);
        OutcomeJson::checked(text, |e| self.malformed_outcome(e))
    }

    /// [`Self::process`] with the outcome kept as the plugin's JSON text (checked to be an outcome), the job
    /// lent when the plugin takes jobs lent. Blocks for as long as the plugin works; never panics.
    pub fn process_to_json(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>) -> OutcomeJson {
        match self.call_with(job, callbacks) {
            Ok(text) => OutcomeJson::checked(text, |e| self.malformed_outcome(e)),
            Err(refusal) => OutcomeJson::of(&refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU8;
    use std::sync::Mutex;

    use abi_stable::prefix_type::PrefixTypeTrait;
    use abi_stable::std_types::{RResult, RStr};

    use super::*;
    use crate::abi::{HostServicesBox, JobServicesBox, PluginModule};
    use crate::types::{JobView, PluginInfo, QueueInfo};

    /// Every job text the stand-in plugin was given.
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// A well-formed outcome as a plugin may write it (spaces, a field order of its own, a newline).
    const WELL_FORMED: &str =
        " {\"result\": {\"b\": 1, \"a\": [true]}, \"status\": \"completed\"}\n";

    extern "C" fn describe() -> RResult<RString, RString> {
        RResult::RErr(RString::from("not used"))
    }

    extern "C" fn init(_host: HostServicesBox, _config: RStr<'_>) -> RResult<(), RString> {
        RResult::ROk(())
    }

    /// Answers a job named `malformed` with a status no outcome has, any other with [`WELL_FORMED`].
    extern "C" fn process(job_json: RStr<'_>, _job: JobServicesBox) -> RString {
        SEEN.lock().unwrap().push(job_json.as_str().to_owned());
        let job: JobView = serde_json::from_str(job_json.as_str()).unwrap();
        match job.name.as_str() {
            "malformed" => RString::from(r#"{"status":"done","result":1}"#),
            _ => RString::from(WELL_FORMED),
        }
    }

    extern "C" fn shutdown(_deadline_ms: u64) {}

    /// A plugin whose entry points are the functions above, started (`state` 1) or not.
    fn stand_in(state: u8) -> LoadedPlugin {
        let module = PluginModule {
            describe,
            init,
            process,
            shutdown,
        }
        .leak_into_prefix();
        LoadedPlugin {
            path: PathBuf::from("stand-in"),
            module,
            info: PluginInfo {
                name: "stand-in".into(),
                version: "0.0.0".into(),
                queues: vec![QueueInfo {
                    queue: "q".into(),
                    job_names: vec!["complete".into(), "malformed".into()],
                    default_concurrency: 1,
                    rate_limit: None,
                    handles_unknown_names: false,
                    timeout_ms: None,
                    inline_jobs: vec![],
                    pending_jobs: vec![],
                }],
                config_keys: vec![],
            },
            state: AtomicU8::new(state),
            pending: None,
            direct: None,
        }
    }

    struct Quiet;

    impl JobCallbacks for Quiet {
        fn progress(&self, _json: &str) {}
        fn log(&self, _line: &str) {}
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    fn job(name: &str) -> JobView {
        JobView {
            id: format!("{name}-1"),
            name: name.into(),
            queue: "q".into(),
            data: RawValue::from_string(r#"{"z":1.50,"a":"\u00e9"}"#.into()).unwrap(),
            attempts_made: 0,
            attempts_started: 1,
            opts: Default::default(),
            timestamp: 1,
            deadline_ms: None,
        }
    }

    #[test]
    fn a_malformed_outcome_is_the_same_retryable_failure_either_way() {
        let plugin = stand_in(1);
        let job = job("malformed");
        let parsed = plugin.process(&job, Arc::new(Quiet));
        let text = plugin.process_json(&serde_json::to_string(&job).unwrap(), Arc::new(Quiet));
        assert_eq!(text.outcome(), parsed);
        match parsed {
            Outcome::Failed {
                message,
                unrecoverable: false,
                detail: None,
            } => assert!(
                message.starts_with("plugin stand-in returned a malformed outcome ("),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_job_and_a_well_formed_outcome_pass_as_they_are() {
        let plugin = stand_in(1);
        // Text no serialiser of a JobView writes (spaces, the number as the producer wrote it): what the
        // caller holds is what the plugin gets.
        let job_json = r#"{"id":"text-1", "name":"complete","queue":"q","data":{"z":1.50},"attemptsMade":0,"timestamp":1}"#;
        let text = plugin.process_json(job_json, Arc::new(Quiet));
        assert!(SEEN.lock().unwrap().iter().any(|seen| seen == job_json));
        assert_eq!(text.as_str(), WELL_FORMED.trim());
        assert_eq!(
            text.outcome(),
            plugin.process(&job("complete"), Arc::new(Quiet))
        );
    }

    #[test]
    fn a_plugin_not_started_fails_the_job_either_way() {
        let plugin = stand_in(0);
        let job = job("complete");
        let parsed = plugin.process(&job, Arc::new(Quiet));
        let text = plugin.process_json(&serde_json::to_string(&job).unwrap(), Arc::new(Quiet));
        assert_eq!(text.outcome(), parsed);
        assert_eq!(
            parsed,
            Outcome::failed("plugin stand-in is not initialised")
        );
    }
}
