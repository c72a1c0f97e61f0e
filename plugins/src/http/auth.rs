//! The API token: where it comes from, what it may look like, and the
//! check of `Authorization: Bearer …` (and of the WebSocket subprotocol
//! `bearer.…`) in constant time.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// The file, under `data_dir`, that keeps the generated token.
pub const TOKEN_FILE: &str = "api-token";

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is not 16–256 characters of `A-Za-z0-9._~-`.
    #[error("{0}")]
    Invalid(String),
    /// The token file could not be read or written.
    #[error("cannot use the token file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Checks a token's shape: 16–256 characters of `A-Za-z0-9._~-`. The
/// message never repeats the token.
pub fn check_token(token: &str) -> Result<(), String> {
    if !(16..=256).contains(&token.len()) {
        return Err(format!(
            "must be 16 to 256 characters long (it has {})",
            token.len()
        ));
    }
    if let Some(position) = token
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b"._~-".contains(&b)))
    {
        return Err(format!(
            "may hold only A-Za-z0-9 and . _ ~ - (character {} does not)",
            position + 1
        ));
    }
    Ok(())
}

/// Where a server's token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The sink's `token` option.
    Config,
    /// Read from this file.
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// The token a server checks, compared in constant time. Its `Debug` never
/// shows it.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

impl ApiToken {
    /// The configured token, or (when `configured` is empty or absent) the
    /// one in `DATA_DIR/api-token`, created with 32 random bytes in
    /// base64url and mode 0600 if missing.
    pub fn resolve(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> Result<(ApiToken, TokenSource), TokenError> {
        if let Some(token) = configured.filter(|t| !t.is_empty()) {
            check_token(token).map_err(TokenError::Invalid)?;
            return Ok((ApiToken(token.into()), TokenSource::Config));
        }
        let path = data_dir.join(TOKEN_FILE);
        let file_error = |source| TokenError::File {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                check_token(token).map_err(|e| {
                    TokenError::Invalid(format!("the token in {}: {e}", path.display()))
                })?;
                Ok((ApiToken(token.into()), TokenSource::File(path.clone())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(file_error)?;
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                write_private(&path, &token).map_err(file_error)?;
                Ok((ApiToken(token.into()), TokenSource::Generated(path.clone())))
            }
            Err(e) => Err(file_error(e)),
        }
    }

    /// Whether `offered` is the token, in time independent of where they
    /// differ.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }

    /// Whether an `Authorization` header value carries the token.
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        // The scheme is case-insensitive (RFC 7235); the token is not.
        authorization
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, offered)| self.matches(offered.trim()))
    }

    /// Whether a `Sec-WebSocket-Protocol` offer carries the token as
    /// `bearer.TOKEN` (beside `flowpulse`).
    pub fn authorizes_subprotocols(&self, protocols: Option<&str>) -> bool {
        protocols.is_some_and(|list| {
            list.split(',')
                .filter_map(|p| p.trim().strip_prefix("bearer."))
                .any(|offered| self.matches(offered))
        })
    }

    /// The token itself, to show once at start.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// Writes `text` to a file readable by its owner only, atomically: a
/// temporary file beside it, synced, then renamed over it, so a crash never
/// leaves an empty token file.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_16_to_256_safe_characters() {
        assert!(check_token("abcdefghijklmnop").is_ok());
        assert!(check_token("a.b_c~d-e0123456789").is_ok());
        assert!(check_token("short").unwrap_err().contains("16 to 256"));
        assert!(check_token(&"a".repeat(257)).is_err());
        let e = check_token("abcdefghijklmnop/").unwrap_err();
        assert!(
            e.contains("character 17") && !e.contains("abcdefghijklmnop"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_token_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = ApiToken::resolve(Some(""), dir.path()).unwrap();
        assert_eq!(source, TokenSource::Generated(dir.path().join(TOKEN_FILE)));
        assert_eq!(first.reveal().len(), 43, "32 bytes in base64url");
        assert!(check_token(first.reveal()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = ApiToken::resolve(None, dir.path()).unwrap();
        assert_eq!(source, TokenSource::File(dir.path().join(TOKEN_FILE)));
        assert_eq!(again.reveal(), first.reveal());
    }

    #[test]
    fn bearer_and_subprotocol_offers_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (token, _) = ApiToken::resolve(Some("0123456789abcdef"), dir.path()).unwrap();
        assert!(token.authorizes(Some("Bearer 0123456789abcdef")));
        assert!(token.authorizes(Some("bearer 0123456789abcdef")));
        assert!(!token.authorizes(Some("Basic 0123456789abcdef")));
        assert!(!token.authorizes(Some("Bearer 0123456789abcdeg")));
        assert!(!token.authorizes(Some("0123456789abcdef")));
        assert!(!token.authorizes(None));
        assert!(token.authorizes_subprotocols(Some("flowpulse, bearer.0123456789abcdef")));
        assert!(!token.authorizes_subprotocols(Some("flowpulse")));
        assert!(!format!("{token:?}").contains("0123"));
    }

    #[test]
    fn a_bad_configured_token_is_refused_without_being_shown() {
        let dir = tempfile::tempdir().unwrap();
        let e = ApiToken::resolve(Some("secret"), dir.path()).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
}
