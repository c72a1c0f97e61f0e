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

#[cfg(test)]
mod tests {
    use super::redact_url;

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
