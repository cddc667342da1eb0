//! What a change in the plugin directory means, decided without touching anything: the pure half of hot
//! reload. The watcher (`plugins/watch.rs`) notices files that changed and loads each new build up to its
//! self-description; [`decide`] turns that, plus what is serving now, into a list of [`Decision`]s; the
//! runtime (`runtime/reloader/`) applies them. Keeping the decision apart makes every case a row of a table
//! test.
//!
//! The rules:
//! - a new file whose plugin is not served yet starts it, unless one of its queues is already served;
//! - a new build in the file a plugin is served from, describing the same plugin, replaces it (the new
//!   version must not take a queue another plugin serves);
//! - a broken new build in a serving plugin's file is refused: the serving version keeps running;
//! - a file removed stops the plugin served from it, unless a new file of the same plugin arrives in the same
//!   change (deploying `libx-1.3.so` while removing `libx-1.2.so`): that is a replacement;
//! - a second file describing a plugin already served from another file is refused, and so is a file whose
//!   new build describes another plugin than the one served from it (remove it, then add the new one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use plugin_api::loader::LoadStage;

/// A plugin being served now, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    /// Plugin name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The file in the plugin directory it was loaded from.
    pub file: PathBuf,
    /// The queues it serves.
    pub queues: Vec<String>,
}

/// What became of one file of the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// The file is gone.
    Removed,
    /// A new build that loaded and described itself.
    Built {
        /// Plugin name.
        name: String,
        /// Its version.
        version: String,
        /// The queues it would serve.
        queues: Vec<String>,
    },
    /// A new build that failed a load stage.
    Broken {
        /// The stage.
        stage: LoadStage,
        /// Why.
        reason: String,
    },
}

/// One thing to do, in the order [`decide`] returns them: stops, then replacements, then starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Drain and stop a plugin whose file is gone; its jobs wait in Redis.
    Stop {
        /// Plugin name.
        name: String,
    },
    /// Start the new version from `file` first, then retire `name`'s serving version.
    Replace {
        /// The new build's file.
        file: PathBuf,
        /// Plugin name.
        name: String,
    },
    /// Start a plugin that is not served yet.
    Start {
        /// Its file.
        file: PathBuf,
        /// Plugin name.
        name: String,
    },
    /// A new build that will not be used. When `replacing` names a serving plugin, that plugin keeps its
    /// version; otherwise the file is listed as disabled.
    Refuse {
        /// The new build's file.
        file: PathBuf,
        /// The new build's plugin name, when it described itself.
        name: Option<String>,
        /// The new build's version, when it described itself.
        version: Option<String>,
        /// The serving plugin the file would have replaced.
        replacing: Option<String>,
        /// The stage that refused it.
        stage: LoadStage,
        /// Why.
        reason: String,
        /// A refusal that may resolve by itself when another file goes (a conflict): the file is offered
        /// again when files are removed.
        retry_on_removal: bool,
    },
    /// A removed file that served nothing: forget its disabled entry.
    Forget {
        /// The file.
        file: PathBuf,
    },
}

/// Decides what the `changes` (file → what became of it) mean for the plugins in `serving`.
pub fn decide(serving: &[Serving], changes: &BTreeMap<PathBuf, FileChange>) -> Vec<Decision> {
    let by_file: BTreeMap<&PathBuf, &Serving> = serving.iter().map(|s| (&s.file, s)).collect();
    let by_name: BTreeMap<&str, &Serving> = serving.iter().map(|s| (s.name.as_str(), s)).collect();
    // Plugins whose file is gone (candidates to stop unless a new file replaces them).
    let mut leaving: BTreeSet<String> = BTreeSet::new();
    let mut forget = Vec::new();
    for (file, change) in changes {
        if *change == FileChange::Removed {
            match by_file.get(file) {
                Some(s) => {
                    leaving.insert(s.name.clone());
                }
                None => forget.push(Decision::Forget { file: file.clone() }),
            }
        }
    }
    // Queue → plugin holding it once the decisions apply; plugins leaving or replaced release theirs.
    let mut claims: BTreeMap<String, String> = serving
        .iter()
        .filter(|s| !leaving.contains(&s.name))
        .flat_map(|s| s.queues.iter().map(move |q| (q.clone(), s.name.clone())))
        .collect();
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut replaces = Vec::new();
    let mut starts = Vec::new();
    let mut refusals = Vec::new();
    for (file, change) in changes {
        let serving_here = by_file.get(file).copied();
        let (name, version, queues) = match change {
            FileChange::Removed => continue,
            FileChange::Broken { stage, reason } => {
                refusals.push(Decision::Refuse {
                    file: file.clone(),
                    name: None,
                    version: None,
                    replacing: serving_here.map(|s| s.name.clone()),
                    stage: *stage,
                    reason: reason.clone(),
                    retry_on_removal: false,
                });
                continue;
            }
            FileChange::Built {
                name,
                version,
                queues,
            } => (name, version, queues),
        };
        let refuse = |replacing: Option<&Serving>, stage, reason: String, retry| Decision::Refuse {
            file: file.clone(),
            name: Some(name.clone()),
            version: Some(version.clone()),
            replacing: replacing.map(|s| s.name.clone()),
            stage,
            reason,
            retry_on_removal: retry,
        };
        // Which serving plugin this build would replace, if any.
        let target = match (serving_here, by_name.get(name.as_str()).copied()) {
            (Some(here), _) if here.name != *name => {
                let reason = format!(
                    "the new build in this file is plugin {name}, but the file serves plugin {}: remove the \
                     file first, then add {name} under its own file name",
                    here.name
                );
                refusals.push(refuse(Some(here), LoadStage::QueueConflict, reason, false));
                continue;
            }
            (Some(here), _) => Some(here),
            (None, Some(other)) if leaving.contains(&other.name) => Some(other),
            (None, Some(other)) => {
                let reason = format!(
                    "plugin {name} is already served from {}; replace that file (copy to a temporary name, \
                     then rename onto it) or remove it",
                    file_name(&other.file)
                );
                refusals.push(refuse(None, LoadStage::QueueConflict, reason, true));
                continue;
            }
            (None, None) => None,
        };
        if replaced.contains(name) || started.contains(name) {
            let reason = format!("another new file of plugin {name} was taken in the same change");
            refusals.push(refuse(target, LoadStage::QueueConflict, reason, true));
            continue;
        }
        let taken = queues.iter().find_map(|q| {
            claims
                .get(q)
                .filter(|owner| *owner != name)
                .map(|owner| (q, owner))
        });
        if let Some((queue, owner)) = taken {
            let reason = format!("queue {queue} is already served by plugin {owner}");
            refusals.push(refuse(target, LoadStage::QueueConflict, reason, true));
            continue;
        }
        // The new build's queues replace the old version's claims.
        claims.retain(|_, owner| owner != name);
        for q in queues {
            claims.insert(q.clone(), name.clone());
        }
        match target {
            Some(_) => {
                leaving.remove(name);
                replaced.insert(name.clone());
                replaces.push(Decision::Replace {
                    file: file.clone(),
                    name: name.clone(),
                });
            }
            None => {
                started.insert(name.clone());
                starts.push(Decision::Start {
                    file: file.clone(),
                    name: name.clone(),
                });
            }
        }
    }
    let mut decisions: Vec<Decision> = leaving
        .into_iter()
        .map(|name| Decision::Stop { name })
        .collect();
    decisions.extend(replaces);
    decisions.extend(starts);
    decisions.extend(refusals);
    decisions.extend(forget);
    decisions
}

/// The file name alone, for messages.
pub fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(name: &str, file: &str, queues: &[&str]) -> Serving {
        Serving {
            name: name.into(),
            version: "1.0.0".into(),
            file: PathBuf::from(file),
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }
    }

    fn built(name: &str, queues: &[&str]) -> FileChange {
        FileChange::Built {
            name: name.into(),
            version: "2.0.0".into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }
    }

    fn broken() -> FileChange {
        FileChange::Broken {
            stage: LoadStage::File,
            reason: "truncated".into(),
        }
    }

    /// A decision reduced to a short text, so rows stay readable.
    fn brief(d: &Decision) -> String {
        match d {
            Decision::Stop { name } => format!("stop {name}"),
            Decision::Replace { file, name } => format!("replace {name} from {}", file.display()),
            Decision::Start { file, name } => format!("start {name} from {}", file.display()),
            Decision::Refuse {
                file,
                replacing,
                stage,
                retry_on_removal,
                ..
            } => format!(
                "refuse {} at {stage}{}{}",
                file.display(),
                replacing
                    .as_ref()
                    .map(|r| format!(", {r} keeps"))
                    .unwrap_or_default(),
                if *retry_on_removal { ", retry" } else { "" }
            ),
            Decision::Forget { file } => format!("forget {}", file.display()),
        }
    }

    #[test]
    fn what_a_directory_change_means() {
        let sms = serving("sms", "a.so", &["sms-q"]);
        let mail = serving("mail", "m.so", &["mail-q"]);
        type Row<'a> = (
            &'a str,
            Vec<Serving>,
            Vec<(&'a str, FileChange)>,
            Vec<&'a str>,
        );
        let table: Vec<Row> = vec![
            (
                "new plugin",
                vec![sms.clone()],
                vec![("n.so", built("new", &["new-q"]))],
                vec!["start new from n.so"],
            ),
            (
                "new build of a serving plugin in its file",
                vec![sms.clone()],
                vec![("a.so", built("sms", &["sms-q"]))],
                vec!["replace sms from a.so"],
            ),
            (
                "the new version may serve more queues",
                vec![sms.clone()],
                vec![("a.so", built("sms", &["sms-q", "sms-2"]))],
                vec!["replace sms from a.so"],
            ),
            (
                "broken new build: old keeps",
                vec![sms.clone()],
                vec![("a.so", broken())],
                vec!["refuse a.so at file, sms keeps"],
            ),
            (
                "broken new file: disabled",
                vec![sms.clone()],
                vec![("x.so", broken())],
                vec!["refuse x.so at file"],
            ),
            (
                "removed",
                vec![sms.clone(), mail.clone()],
                vec![("a.so", FileChange::Removed)],
                vec!["stop sms"],
            ),
            (
                "removed file that served nothing",
                vec![sms.clone()],
                vec![("x.so", FileChange::Removed)],
                vec!["forget x.so"],
            ),
            (
                "new plugin taking a served queue",
                vec![sms.clone()],
                vec![("n.so", built("thief", &["sms-q"]))],
                vec!["refuse n.so at queue-conflict, retry"],
            ),
            (
                "new version taking another plugin's queue: old keeps",
                vec![sms.clone(), mail.clone()],
                vec![("a.so", built("sms", &["sms-q", "mail-q"]))],
                vec!["refuse a.so at queue-conflict, sms keeps, retry"],
            ),
            (
                "second file of a served plugin",
                vec![sms.clone()],
                vec![("b.so", built("sms", &["sms-q"]))],
                vec!["refuse b.so at queue-conflict, retry"],
            ),
            (
                "versioned file names: new file in, old file out",
                vec![sms.clone()],
                vec![
                    ("a.so", FileChange::Removed),
                    ("b.so", built("sms", &["sms-q"])),
                ],
                vec!["replace sms from b.so"],
            ),
            (
                "a removed plugin's queue taken by a new one in the same change",
                vec![sms.clone()],
                vec![
                    ("a.so", FileChange::Removed),
                    ("n.so", built("other", &["sms-q"])),
                ],
                vec!["stop sms", "start other from n.so"],
            ),
            (
                "another plugin written over a serving plugin's file",
                vec![sms.clone()],
                vec![("a.so", built("mail", &["mail-q"]))],
                vec!["refuse a.so at queue-conflict, sms keeps"],
            ),
            (
                "two new plugins wanting one queue: first file wins",
                vec![],
                vec![
                    ("n1.so", built("one", &["q"])),
                    ("n2.so", built("two", &["q"])),
                ],
                vec![
                    "start one from n1.so",
                    "refuse n2.so at queue-conflict, retry",
                ],
            ),
            (
                "two new files of one plugin",
                vec![],
                vec![
                    ("n1.so", built("one", &["q"])),
                    ("n2.so", built("one", &["q"])),
                ],
                vec![
                    "start one from n1.so",
                    "refuse n2.so at queue-conflict, retry",
                ],
            ),
            (
                "swap of queues between a stop and a replacement",
                vec![sms.clone(), mail.clone()],
                vec![
                    ("m.so", FileChange::Removed),
                    ("a.so", built("sms", &["sms-q", "mail-q"])),
                ],
                vec!["stop mail", "replace sms from a.so"],
            ),
        ];
        for (case, serving, changes, want) in table {
            let changes: BTreeMap<PathBuf, FileChange> = changes
                .into_iter()
                .map(|(f, c)| (PathBuf::from(f), c))
                .collect();
            let got: Vec<String> = decide(&serving, &changes).iter().map(brief).collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn a_refusal_names_the_versions_and_the_reason() {
        let sms = serving("sms", "a.so", &["sms-q"]);
        let mail = serving("mail", "m.so", &["mail-q"]);
        let changes = BTreeMap::from([(PathBuf::from("a.so"), built("sms", &["mail-q"]))]);
        let decisions = decide(&[sms, mail], &changes);
        let Decision::Refuse {
            name,
            version,
            replacing,
            reason,
            ..
        } = &decisions[0]
        else {
            panic!("{decisions:?}");
        };
        assert_eq!(name.as_deref(), Some("sms"));
        assert_eq!(version.as_deref(), Some("2.0.0"));
        assert_eq!(replacing.as_deref(), Some("sms"));
        assert_eq!(reason, "queue mail-q is already served by plugin mail");
    }
}
