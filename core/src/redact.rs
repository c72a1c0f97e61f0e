//! Keeping credentials out of logs and messages.

/// A URL with its password (and a user-only credential) replaced by `***`,
/// fit to log: `redis://app:hunter2@host:6379/0` → `redis://app:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let credentials = &authority[..at];
    let redacted = match credentials.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!(
        "{}{redacted}{}",
        &url[..authority_start],
        &url[authority_start + at..]
    )
}

/// A URL whose path and query are its secret (a Slack incoming webhook, a
/// receiver with a token in its path) with them replaced by `***`, and its
/// credentials hidden as [`redact_url`] does:
/// `https://hooks.slack.com/services/T0/B0/XXXX` → `https://hooks.slack.com/***`.
pub fn redact_url_path(url: &str) -> String {
    let url = redact_url(url);
    let Some(scheme_end) = url.find("://") else {
        return "***".to_owned();
    };
    let authority_start = scheme_end + 3;
    match url[authority_start..].find(['/', '?', '#']) {
        Some(i) => format!("{}/***", &url[..authority_start + i]),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, redact_url_path};

    #[test]
    fn hides_a_url_path_and_query() {
        assert_eq!(
            redact_url_path("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            redact_url_path("https://u:pw@h.example:8443/hook?token=s3cret"),
            "https://u:***@h.example:8443/***"
        );
        assert_eq!(
            redact_url_path("http://127.0.0.1:9000?key=abc"),
            "http://127.0.0.1:9000/***"
        );
        assert_eq!(redact_url_path("https://h.example"), "https://h.example");
        assert_eq!(redact_url_path("not a url/secret"), "***");
    }

    #[test]
    fn hides_passwords_and_keeps_the_rest() {
        assert_eq!(
            redact_url("rediss://app:hunter2@cache:6380/0"),
            "rediss://app:***@cache:6380/0"
        );
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
