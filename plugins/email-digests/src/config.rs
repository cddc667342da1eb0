//! Plugin configuration, read once at init under FrostGuard's own variable names.
//!
//! Every mistake is reported at init, where it disables the plugin with a reason (the `email-digests` queue
//! is then not consumed and the scheduler's jobs wait in Redis) instead of failing digests one by one.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

pub const RESEND_API_KEY: &str = "RESEND_API_KEY";
pub const EMAIL_FROM_ADDRESS: &str = "EMAIL_FROM_ADDRESS";
pub const APP_URL: &str = "APP_URL";
pub const UNSUBSCRIBE_SECRET: &str = "UNSUBSCRIBE_SECRET";
pub const JWT_SECRET: &str = "JWT_SECRET";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const RESEND_API_BASE_URL: &str = "RESEND_API_BASE_URL";
pub const EMAIL_DRY_RUN: &str = "EMAIL_DRY_RUN";
pub const EMAIL_DRY_RUN_DIR: &str = "EMAIL_DRY_RUN_DIR";
pub const EMAIL_REQUEST_TIMEOUT_MS: &str = "EMAIL_REQUEST_TIMEOUT_MS";
pub const EMAIL_AUTH_RETRY_DELAY_MS: &str = "EMAIL_AUTH_RETRY_DELAY_MS";

/// Every key we read; declared in `PluginInfo::config_keys` so the host passes them through.
pub const KEYS: [&str; 11] = [
    RESEND_API_KEY,
    EMAIL_FROM_ADDRESS,
    APP_URL,
    UNSUBSCRIBE_SECRET,
    JWT_SECRET,
    DATABASE_URL,
    RESEND_API_BASE_URL,
    EMAIL_DRY_RUN,
    EMAIL_DRY_RUN_DIR,
    EMAIL_REQUEST_TIMEOUT_MS,
    EMAIL_AUTH_RETRY_DELAY_MS,
];

pub const DEFAULT_BASE_URL: &str = "https://api.resend.com";
/// FrostGuard's email service default sender.
pub const DEFAULT_FROM: &str = "noreply@freshtrack.app";
/// FrostGuard's code default for `APP_URL`.
pub const DEFAULT_APP_URL: &str = "https://app.freshtrack.app";
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the queue pauses after Resend rejects our key: long enough not to hammer the API with a bad key,
/// short enough that fixing it resumes sending within a minute.
pub const DEFAULT_AUTH_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Where dry-run emails go unless `EMAIL_DRY_RUN_DIR` says otherwise (under the system temp directory).
pub const DEFAULT_DRY_RUN_SUBDIR: &str = "frostguard-email-digests";

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a rendered digest goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// `POST {base}/emails` with this key.
    Resend {
        api_key: Secret,
        /// `{base}/emails`, already joined.
        emails_url: Url,
        request_timeout: Duration,
        auth_retry_delay: Duration,
    },
    /// `EMAIL_DRY_RUN=true`: written to this directory, never sent.
    DryRun { dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestConfig {
    pub delivery: Delivery,
    pub from: String,
    /// Without a trailing slash.
    pub app_url: String,
    /// `None` only in dry-run mode (the plugin then signs with a throwaway secret and says so).
    pub unsubscribe_secret: Option<Secret>,
    pub database_url: Secret,
}

impl DigestConfig {
    /// Parses the settings from a lookup function (the host's `PluginConfig::get`, or a map in tests).
    /// Empty values count as unset, as they do in a compose file with `VAR=`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<DigestConfig, String> {
        let read = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let dry_run = match read(EMAIL_DRY_RUN) {
            None => false,
            Some(v) => parse_bool(&v).ok_or_else(|| {
                format!("{EMAIL_DRY_RUN} must be true or false (also 1/0, yes/no), got {v:?}")
            })?,
        };
        let request_timeout = read_ms(&read, EMAIL_REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT)?;
        let auth_retry_delay = read_ms(&read, EMAIL_AUTH_RETRY_DELAY_MS, DEFAULT_AUTH_RETRY_DELAY)?;
        let base = read(RESEND_API_BASE_URL).unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let emails_url = emails_url(&base)?;
        let app_url = app_url(&read(APP_URL).unwrap_or_else(|| DEFAULT_APP_URL.to_owned()))?;
        let from = read(EMAIL_FROM_ADDRESS).unwrap_or_else(|| DEFAULT_FROM.to_owned());
        let unsubscribe_secret = read(UNSUBSCRIBE_SECRET).or_else(|| read(JWT_SECRET));
        let api_key = read(RESEND_API_KEY);
        let database_url = read(DATABASE_URL);

        // A digest is built from the database even in a dry run: without it there is nothing to render.
        let mut missing = Vec::new();
        if database_url.is_none() {
            missing.push(DATABASE_URL.to_owned());
        }
        if !dry_run {
            if api_key.is_none() {
                missing.push(RESEND_API_KEY.to_owned());
            }
            if unsubscribe_secret.is_none() {
                missing.push(format!("{UNSUBSCRIBE_SECRET} (or {JWT_SECRET})"));
            }
        }
        if !missing.is_empty() {
            let hint = if dry_run {
                "a digest is built from the database, also in a dry run"
            } else {
                "cannot send digests; set EMAIL_DRY_RUN=true to render them to files instead"
            };
            return Err(format!("{} not set: {hint}", missing.join(" and ")));
        }

        let delivery = if dry_run {
            let dir = read(EMAIL_DRY_RUN_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join(DEFAULT_DRY_RUN_SUBDIR));
            Delivery::DryRun { dir }
        } else {
            Delivery::Resend {
                api_key: Secret(api_key.unwrap_or_default()),
                emails_url,
                request_timeout,
                auth_retry_delay,
            }
        };
        Ok(DigestConfig {
            delivery,
            from,
            app_url,
            unsubscribe_secret: unsubscribe_secret.map(Secret),
            database_url: Secret(database_url.unwrap_or_default()),
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

fn http_url(key: &str, value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{key} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{key} must be an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key} must not have a query or fragment"));
    }
    Ok(url)
}

/// `{base}/emails`; a base with or without a trailing slash or a path prefix (a proxy) both work.
fn emails_url(base: &str) -> Result<Url, String> {
    let mut url = http_url(RESEND_API_BASE_URL, base)?;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{path}/emails"));
    Ok(url)
}

/// The application's base URL without a trailing slash, so links are `{app}/alerts` and `{app}/unsubscribe`.
fn app_url(value: &str) -> Result<String, String> {
    let url = http_url(APP_URL, value)?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<DigestConfig, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DigestConfig::from_lookup(&move |k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 3] = [
        (RESEND_API_KEY, "re_123"),
        (UNSUBSCRIBE_SECRET, "s3cret"),
        (DATABASE_URL, "postgres://u:pw@h/db"),
    ];

    #[test]
    fn defaults_follow_frostguard() {
        let c = parse(&FULL).unwrap();
        assert_eq!(c.from, DEFAULT_FROM);
        assert_eq!(c.app_url, DEFAULT_APP_URL);
        match c.delivery {
            Delivery::Resend {
                emails_url,
                request_timeout,
                auth_retry_delay,
                api_key,
            } => {
                assert_eq!(emails_url.as_str(), "https://api.resend.com/emails");
                assert_eq!(request_timeout, DEFAULT_REQUEST_TIMEOUT);
                assert_eq!(auth_retry_delay, DEFAULT_AUTH_RETRY_DELAY);
                assert_eq!(api_key.expose(), "re_123");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_falls_back_to_jwt_secret() {
        let c = parse(&[
            (RESEND_API_KEY, "re_1"),
            (JWT_SECRET, "jwt"),
            (DATABASE_URL, "postgres://h/db"),
        ])
        .unwrap();
        assert_eq!(c.unsubscribe_secret.unwrap().expose(), "jwt");
        let c = parse(&[
            (RESEND_API_KEY, "re_1"),
            (JWT_SECRET, "jwt"),
            (UNSUBSCRIBE_SECRET, "unsub"),
            (DATABASE_URL, "postgres://h/db"),
        ])
        .unwrap();
        assert_eq!(c.unsubscribe_secret.unwrap().expose(), "unsub");
    }

    #[test]
    fn refuses_without_key_secret_or_database() {
        let err = parse(&[]).unwrap_err();
        assert!(
            err.starts_with(
                "DATABASE_URL and RESEND_API_KEY and UNSUBSCRIBE_SECRET (or JWT_SECRET) not set"
            ),
            "{err}"
        );
        let err = parse(&[(RESEND_API_KEY, "k"), (DATABASE_URL, "postgres://h/d")]).unwrap_err();
        assert!(
            err.starts_with("UNSUBSCRIBE_SECRET (or JWT_SECRET) not set"),
            "{err}"
        );
        let err =
            parse(&[(UNSUBSCRIBE_SECRET, "s"), (DATABASE_URL, "postgres://h/d")]).unwrap_err();
        assert!(err.starts_with("RESEND_API_KEY not set"), "{err}");
        let err = parse(&[(RESEND_API_KEY, "k"), (JWT_SECRET, "s")]).unwrap_err();
        assert!(err.starts_with("DATABASE_URL not set"), "{err}");
    }

    #[test]
    fn dry_run_needs_only_the_database() {
        let c = parse(&[
            (EMAIL_DRY_RUN, "true"),
            (DATABASE_URL, "postgres://h/d"),
            (EMAIL_DRY_RUN_DIR, "/tmp/out"),
        ])
        .unwrap();
        assert_eq!(
            c.delivery,
            Delivery::DryRun {
                dir: PathBuf::from("/tmp/out")
            }
        );
        assert!(c.unsubscribe_secret.is_none());
        let err = parse(&[(EMAIL_DRY_RUN, "yes")]).unwrap_err();
        assert!(err.starts_with("DATABASE_URL not set"), "{err}");
        let err = parse(&[(EMAIL_DRY_RUN, "maybe")]).unwrap_err();
        assert!(err.contains("EMAIL_DRY_RUN must be true or false"), "{err}");
    }

    #[test]
    fn urls_are_checked_and_joined() {
        let with = |k: &'static str, v: &'static str| {
            let mut pairs = FULL.to_vec();
            pairs.push((k, v));
            parse(&pairs)
        };
        let emails = |c: DigestConfig| match c.delivery {
            Delivery::Resend { emails_url, .. } => emails_url.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            emails(with(RESEND_API_BASE_URL, "http://127.0.0.1:9/").unwrap()),
            "http://127.0.0.1:9/emails"
        );
        assert_eq!(
            emails(with(RESEND_API_BASE_URL, "http://proxy/resend").unwrap()),
            "http://proxy/resend/emails"
        );
        assert!(with(RESEND_API_BASE_URL, "ftp://x").is_err());
        assert_eq!(
            with(APP_URL, "https://app.example.com/").unwrap().app_url,
            "https://app.example.com"
        );
        assert!(with(APP_URL, "app.example.com").is_err());
        assert!(with(EMAIL_REQUEST_TIMEOUT_MS, "0").is_err());
        assert!(with(EMAIL_AUTH_RETRY_DELAY_MS, "soon").is_err());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let dbg = format!("{:?}", parse(&FULL).unwrap());
        assert!(
            !dbg.contains("re_123") && !dbg.contains("s3cret") && !dbg.contains("pw@"),
            "{dbg}"
        );
    }
}
