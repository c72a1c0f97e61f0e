//! Config values that must never be shown: their `Debug` hides them, so a
//! config printed by mistake leaks nothing.

use serde::Deserialize;

/// A secret string (a signing secret, a header value, an SMTP URL with its
/// password): `Debug` shows `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A URL whose path and query are a secret (a Slack incoming webhook):
/// `Debug` and `Display` show `https://hooks.slack.com/***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl SecretUrl {
    /// The URL, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&flowpulse_core::redact::redact_url_path(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&flowpulse_core::redact::redact_url_path(&self.0))
    }
}

/// Checks that `url` is an absolute `http` or `https` URL with a host; the
/// message never repeats the URL.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, not {}://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let s = Secret("whsec_abc".into());
        assert_eq!(format!("{s:?}"), "***");
        let u = SecretUrl("https://hooks.slack.com/services/T/B/X".into());
        assert_eq!(format!("{u:?}"), "https://hooks.slack.com/***");
        assert_eq!(u.to_string(), "https://hooks.slack.com/***");
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_http_url("https://hooks.slack.com/services/x").is_ok());
        let e = check_http_url("ftp://h/secret-path").unwrap_err();
        assert!(e.contains("ftp://") && !e.contains("secret-path"), "{e}");
        let e = check_http_url("hooks.slack.com/secret-path").unwrap_err();
        assert!(!e.contains("secret-path"), "{e}");
    }
}
