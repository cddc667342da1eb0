//! Which isolation mode each plugin runs in: `PLUGIN_ISOLATION` for all, `PLUGIN_ISOLATION_<NAME>` per
//! plugin (`<NAME>` in the same upper-snake form as the plugin settings' prefix).

use std::collections::BTreeMap;
use std::fmt;

use crate::config::vars;
use crate::config::Env;
use crate::config::{queue_env_name, ConfigError};

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// In a child process of its own: a crash fails the jobs it held and the child is restarted.
    Process,
    /// Inside the host process: cheapest, but a crash ends the whole host.
    InProcess,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Process => "process",
            Isolation::InProcess => "in-process",
        })
    }
}

impl Isolation {
    /// Parses `process` or `in-process` (also `in_process`, `inprocess`), case-insensitively.
    pub fn parse(value: &str) -> Result<Isolation, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "process" => Ok(Isolation::Process),
            "in-process" | "in_process" | "inprocess" => Ok(Isolation::InProcess),
            other => Err(format!("expected process or in-process, got {other:?}")),
        }
    }
}

/// The isolation of every plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationSettings {
    default: Isolation,
    /// `<NAME>` → mode.
    per_plugin: BTreeMap<String, Isolation>,
}

impl IsolationSettings {
    /// Reads `PLUGIN_ISOLATION` and `PLUGIN_ISOLATION_<NAME>`.
    pub fn read(env: &Env) -> Result<Self, ConfigError> {
        let parse = |var: &str, value: &str| {
            Isolation::parse(value).map_err(|reason| ConfigError::Invalid {
                var: var.to_owned(),
                reason,
            })
        };
        let default = match env.get_or_default(&vars::PLUGIN_ISOLATION) {
            Some(value) => parse(vars::PLUGIN_ISOLATION.name, &value)?,
            None => Isolation::Process,
        };
        let mut per_plugin = BTreeMap::new();
        for (var, name, value) in env.family(&vars::PLUGIN_ISOLATION_NAME) {
            per_plugin.insert(name, parse(&var, &value)?);
        }
        Ok(Self {
            default,
            per_plugin,
        })
    }

    /// The mode of the plugin named `plugin`.
    pub fn for_plugin(&self, plugin: &str) -> Isolation {
        self.per_plugin
            .get(&queue_env_name(plugin))
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<IsolationSettings, ConfigError> {
        IsolationSettings::read(&Env::from_vars(vars.iter().copied()))
    }

    #[test]
    fn the_plugins_own_variable_wins_over_the_default() {
        // (environment, plugin, expected mode)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            Isolation,
        );
        let table: [Case; 5] = [
            (&[], "sms-notifications", Isolation::Process),
            (
                &[("PLUGIN_ISOLATION", "in-process")],
                "sms-notifications",
                Isolation::InProcess,
            ),
            (
                &[
                    ("PLUGIN_ISOLATION", "in-process"),
                    ("PLUGIN_ISOLATION_SMS_NOTIFICATIONS", "process"),
                ],
                "sms-notifications",
                Isolation::Process,
            ),
            (
                &[("PLUGIN_ISOLATION_SMS_NOTIFICATIONS", "IN_PROCESS")],
                "email-digests",
                Isolation::Process,
            ),
            (
                &[("PLUGIN_ISOLATION_EMAIL_DIGESTS", " In-Process ")],
                "email-digests",
                Isolation::InProcess,
            ),
        ];
        for (vars, plugin, want) in table {
            assert_eq!(
                settings(vars).unwrap().for_plugin(plugin),
                want,
                "{vars:?} {plugin}"
            );
        }
    }

    #[test]
    fn unknown_modes_name_the_variable() {
        for (var, value) in [
            ("PLUGIN_ISOLATION", "fork"),
            ("PLUGIN_ISOLATION_X", "sandbox"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(err.contains("process or in-process"), "{err}");
        }
    }
}
