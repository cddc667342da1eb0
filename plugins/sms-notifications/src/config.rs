//! Plugin configuration, read once at init under FrostGuard's own variable names.
//!
//! The host hands us a key/value map (env vars, possibly `PLUGIN_SMS_NOTIFICATIONS_<KEY>` overrides). We
//! parse it into typed settings here so that every mistake is reported at init, where it disables the plugin
//! with a reason (its queue is then not consumed and jobs wait), instead of failing jobs one by one.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

pub const TELNYX_API_KEY: &str = "TELNYX_API_KEY";
pub const TELNYX_PHONE_NUMBER: &str = "TELNYX_PHONE_NUMBER";
pub const TELNYX_MESSAGING_PROFILE_ID: &str = "TELNYX_MESSAGING_PROFILE_ID";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const TELNYX_API_BASE_URL: &str = "TELNYX_API_BASE_URL";
pub const SMS_DRY_RUN: &str = "SMS_DRY_RUN";
pub const SMS_REQUEST_TIMEOUT_MS: &str = "SMS_REQUEST_TIMEOUT_MS";
pub const SMS_AUTH_RETRY_DELAY_MS: &str = "SMS_AUTH_RETRY_DELAY_MS";

/// Every key we read; declared in `PluginInfo::config_keys` so the host passes them through.
pub const KEYS: [&str; 8] = [
    TELNYX_API_KEY,
    TELNYX_PHONE_NUMBER,
    TELNYX_MESSAGING_PROFILE_ID,
    DATABASE_URL,
    TELNYX_API_BASE_URL,
    SMS_DRY_RUN,
    SMS_REQUEST_TIMEOUT_MS,
    SMS_AUTH_RETRY_DELAY_MS,
];

pub const DEFAULT_BASE_URL: &str = "https://api.telnyx.com";
/// The Node original built its Telnyx client with a 30 s timeout and no SDK retries (BullMQ retries).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the queue pauses after Telnyx rejects our credentials: long enough not to hammer the API with a
/// bad key, short enough that fixing the key resumes sending within a minute.
pub const DEFAULT_AUTH_RETRY_DELAY: Duration = Duration::from_secs(60);

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What is needed to really send; absent only in dry-run mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelnyxSettings {
    pub api_key: Secret,
    pub from: String,
    pub messaging_profile_id: Option<String>,
    /// `{base}/v2/messages`, already joined.
    pub messages_url: Url,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsConfig {
    /// `None` in dry-run mode: no provider call is ever made then.
    pub telnyx: Option<TelnyxSettings>,
    pub dry_run: bool,
    /// `None`: no delivery tracking (logged once at init).
    pub database_url: Option<Secret>,
    pub auth_retry_delay: Duration,
}

impl SmsConfig {
    /// Parses the settings from a lookup function (the host's `PluginConfig::get`, or a map in tests).
    /// Empty values count as unset, as they do in a compose file with `VAR=`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<SmsConfig, String> {
        let read = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let dry_run = match read(SMS_DRY_RUN) {
            None => false,
            Some(v) => parse_bool(&v).ok_or_else(|| {
                format!("{SMS_DRY_RUN} must be true or false (also 1/0, yes/no), got {v:?}")
            })?,
        };
        let request_timeout = read_ms(&read, SMS_REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT)?;
        let auth_retry_delay = read_ms(&read, SMS_AUTH_RETRY_DELAY_MS, DEFAULT_AUTH_RETRY_DELAY)?;
        let base = read(TELNYX_API_BASE_URL).unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let messages_url = messages_url(&base)?;
        let api_key = read(TELNYX_API_KEY);
        let from = read(TELNYX_PHONE_NUMBER);
        let messaging_profile_id = read(TELNYX_MESSAGING_PROFILE_ID);

        let telnyx = if dry_run {
            None
        } else {
            let missing: Vec<&str> = [
                (TELNYX_API_KEY, api_key.is_none()),
                (TELNYX_PHONE_NUMBER, from.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, absent)| absent.then_some(k))
            .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} not set: cannot send SMS (set {SMS_DRY_RUN}=true to run without Telnyx)",
                    missing.join(" and ")
                ));
            }
            Some(TelnyxSettings {
                api_key: Secret(api_key.unwrap_or_default()),
                from: from.unwrap_or_default(),
                messaging_profile_id,
                messages_url,
                request_timeout,
            })
        };
        Ok(SmsConfig {
            telnyx,
            dry_run,
            database_url: read(DATABASE_URL).map(Secret),
            auth_retry_delay,
        })
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn read_ms(
    read: &dyn Fn(&str) -> Option<String>,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    match read(key) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{key} must be a positive number of milliseconds, got {v:?}"
            )),
        },
    }
}

/// `{base}/v2/messages`. The SDK's own base URL ends in `/v2`; we accept either form so an operator who
/// copies `https://api.telnyx.com/v2` does not end up posting to `/v2/v2/messages`.
fn messages_url(base: &str) -> Result<Url, String> {
    let url = Url::parse(base).map_err(|e| format!("{TELNYX_API_BASE_URL} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{TELNYX_API_BASE_URL} must be an http(s) URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{TELNYX_API_BASE_URL} must not have a query or fragment"
        ));
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v2").unwrap_or(path);
    let mut joined = url.clone();
    joined.set_path(&format!("{path}/v2/messages"));
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<SmsConfig, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SmsConfig::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn full_configuration() {
        let c = parse(&[
            (TELNYX_API_KEY, "KEY123"),
            (TELNYX_PHONE_NUMBER, "+15550001111"),
            (TELNYX_MESSAGING_PROFILE_ID, "prof-1"),
            (DATABASE_URL, "postgres://u@h/db"),
            (SMS_REQUEST_TIMEOUT_MS, "1500"),
        ])
        .unwrap();
        let t = c.telnyx.unwrap();
        assert_eq!(t.api_key.expose(), "KEY123");
        assert_eq!(
            t.messages_url.as_str(),
            "https://api.telnyx.com/v2/messages"
        );
        assert_eq!(t.messaging_profile_id.as_deref(), Some("prof-1"));
        assert_eq!(t.request_timeout, Duration::from_millis(1500));
        assert!(!c.dry_run);
        assert!(c.database_url.is_some());
        assert_eq!(c.auth_retry_delay, DEFAULT_AUTH_RETRY_DELAY);
    }

    #[test]
    fn key_and_sender_are_required_unless_dry_run() {
        let err = parse(&[(TELNYX_PHONE_NUMBER, "+15550001111")]).unwrap_err();
        assert!(err.starts_with("TELNYX_API_KEY not set"), "{err}");
        let err = parse(&[(TELNYX_API_KEY, "k"), (TELNYX_PHONE_NUMBER, "  ")]).unwrap_err();
        assert!(err.starts_with("TELNYX_PHONE_NUMBER not set"), "{err}");
        let err = parse(&[]).unwrap_err();
        assert!(
            err.starts_with("TELNYX_API_KEY and TELNYX_PHONE_NUMBER not set"),
            "{err}"
        );

        let c = parse(&[(SMS_DRY_RUN, "true")]).unwrap();
        assert!(c.dry_run && c.telnyx.is_none() && c.database_url.is_none());
    }

    #[test]
    fn dry_run_flag_is_strict() {
        assert!(parse(&[(SMS_DRY_RUN, "YES")]).unwrap().dry_run);
        let err = parse(&[(SMS_DRY_RUN, "ture")]).unwrap_err();
        assert!(err.contains("SMS_DRY_RUN must be true or false"), "{err}");
        let err = parse(&[(SMS_DRY_RUN, "false")]).unwrap_err();
        assert!(err.contains("TELNYX_API_KEY"), "{err}");
    }

    #[test]
    fn base_url_forms() {
        let url = |base: &str| {
            parse(&[
                (TELNYX_API_KEY, "k"),
                (TELNYX_PHONE_NUMBER, "+1555"),
                (TELNYX_API_BASE_URL, base),
            ])
            .map(|c| c.telnyx.unwrap().messages_url.to_string())
        };
        assert_eq!(
            url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/v2/messages"
        );
        assert_eq!(
            url("https://api.telnyx.com/v2/").unwrap(),
            "https://api.telnyx.com/v2/messages"
        );
        assert_eq!(
            url("http://proxy/telnyx").unwrap(),
            "http://proxy/telnyx/v2/messages"
        );
        assert!(url("ftp://x").is_err());
        assert!(url("not a url").is_err());
    }

    #[test]
    fn timeouts_must_be_positive_integers() {
        let err = parse(&[(SMS_DRY_RUN, "1"), (SMS_REQUEST_TIMEOUT_MS, "0")]).unwrap_err();
        assert!(err.contains(SMS_REQUEST_TIMEOUT_MS));
        let err = parse(&[(SMS_DRY_RUN, "1"), (SMS_AUTH_RETRY_DELAY_MS, "soon")]).unwrap_err();
        assert!(err.contains(SMS_AUTH_RETRY_DELAY_MS));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = parse(&[
            (TELNYX_API_KEY, "KEYSECRET"),
            (TELNYX_PHONE_NUMBER, "+1555"),
            (DATABASE_URL, "postgres://u:pw@h/d"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("KEYSECRET") && !dbg.contains("pw@"), "{dbg}");
    }
}
