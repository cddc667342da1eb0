//! Where a plugin's configuration comes from: the environment, with a per-plugin prefix.
//!
//! For each key a plugin declares in `config_keys`, `PLUGIN_<NAME>_<KEY>` wins over the unprefixed `<KEY>`.
//! The unprefixed form keeps FrostGuard's existing variable names (`TELNYX_API_KEY`, `DATABASE_URL`, …)
//! working; the prefixed form lets two plugins that read the same key get different values. Only declared
//! keys are passed, so a plugin never sees unrelated secrets from the host's environment.

use plugin_api::{PluginConfig, PluginInfo};

use crate::config::{queue_env_name, Env};

/// `sms-notifications` → `PLUGIN_SMS_NOTIFICATIONS_` (the same upper-snake form as `QUEUE_<Q>_*`).
pub fn env_prefix(plugin_name: &str) -> String {
    format!("PLUGIN_{}_", queue_env_name(plugin_name))
}

/// Builds the configuration of the plugin described by `info` from `env`. Fails when a variable is set but
/// unusable (not UTF-8), naming the variable.
pub fn resolve(info: &PluginInfo, env: &Env) -> Result<PluginConfig, String> {
    let prefix = env_prefix(&info.name);
    let mut config = PluginConfig::new();
    for key in &info.config_keys {
        let prefixed = format!("{prefix}{key}");
        for var in [prefixed.as_str(), key.as_str()] {
            match env.plugin_key(var) {
                Ok(value) => {
                    config.insert(key.clone(), value);
                    break;
                }
                Err(std::env::VarError::NotPresent) => continue,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {var} is not valid UTF-8"))
                }
            }
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(keys: &[&str]) -> PluginInfo {
        PluginInfo {
            name: "sms-notifications".into(),
            version: "1.0.0".into(),
            queues: vec![],
            config_keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn prefixed_variable_wins_and_undeclared_keys_are_not_passed() {
        let env = Env::from_vars([
            ("TELNYX_API_KEY", "plain"),
            ("PLUGIN_SMS_NOTIFICATIONS_TELNYX_API_KEY", "prefixed"),
            ("DATABASE_URL", "postgres://db"),
            ("AWS_SECRET", "nope"),
        ]);
        let config = resolve(
            &info(&["TELNYX_API_KEY", "DATABASE_URL", "SMS_DRY_RUN"]),
            &env,
        )
        .unwrap();
        assert_eq!(config.get("TELNYX_API_KEY"), Some("prefixed"));
        assert_eq!(config.get("DATABASE_URL"), Some("postgres://db"));
        assert_eq!(config.get("SMS_DRY_RUN"), None);
        assert_eq!(config.keys().count(), 2);
    }

    #[test]
    fn an_empty_value_is_passed_and_one_not_utf8_is_refused_by_name() {
        let env = Env::from_vars([("SMS_DRY_RUN", "")]).with_not_unicode(&["DATABASE_URL"]);
        let config = resolve(&info(&["SMS_DRY_RUN"]), &env).unwrap();
        // Passed as set (blank); `PluginConfig::get` reads a blank value as unset.
        assert_eq!(config.keys().count(), 1);
        let err = resolve(&info(&["DATABASE_URL"]), &env).unwrap_err();
        assert_eq!(err, "environment variable DATABASE_URL is not valid UTF-8");
    }

    #[test]
    fn prefix_is_upper_snake() {
        assert_eq!(env_prefix("email-digests.v2"), "PLUGIN_EMAIL_DIGESTS_V2_");
    }
}
