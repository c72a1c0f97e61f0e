//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in config text.
//!
//! Substitution happens on the raw text so that a variable can stand for any
//! value, but positions stay those of the file the user wrote: every
//! substitution is recorded so an offset in the substituted text maps back.
//! Substituted values are remembered too, so that no error ever prints one.

/// Config text after substitution.
#[derive(Debug, Clone, Default)]
pub struct Interpolated {
    /// The text to parse.
    pub text: String,
    /// (start in `text`, end in `text`, start in original, end in original).
    substitutions: Vec<(usize, usize, usize, usize)>,
    /// Every non-empty substituted value, for redaction.
    values: Vec<String>,
}

/// A problem with one `${…}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// Byte range of the reference in the original text.
    pub span: std::ops::Range<usize>,
    /// What is wrong (never the variable's value).
    pub message: String,
}

impl Interpolated {
    /// Maps a byte offset in the substituted text to the original text.
    pub fn original_offset(&self, offset: usize) -> usize {
        let mut shift: isize = 0;
        for &(new_start, new_end, orig_start, orig_end) in &self.substitutions {
            if offset < new_start {
                break;
            }
            if offset < new_end {
                return orig_start;
            }
            shift = orig_end as isize - new_end as isize;
        }
        (offset as isize + shift).max(0) as usize
    }

    /// The range in the original text of the `${…}` reference whose value
    /// sits at `offset` of the substituted text, if one does.
    pub fn reference_at(&self, offset: usize) -> Option<std::ops::Range<usize>> {
        self.substitutions
            .iter()
            .find(|&&(new_start, new_end, _, _)| new_start <= offset && offset < new_end)
            .map(|&(_, _, orig_start, orig_end)| orig_start..orig_end)
    }

    /// Replaces the substituted values in `message` with `***`: a value of
    /// [`MASK_ANYWHERE_LEN`] characters or more wherever it appears, a
    /// shorter one where it stands as a whole word (between characters that
    /// are not letters or digits: `:pw@` in a URL, `"pw"`). Masking a short
    /// value inside words garbles the message (`tak***s` for `e`) and, by
    /// where the stars fall, tells what the value is.
    pub fn redact(&self, message: &str) -> String {
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        // Longest first: a value inside another is masked with it.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = message.to_owned();
        for value in values {
            out = mask(&out, value, value.chars().count() >= MASK_ANYWHERE_LEN);
        }
        out
    }
}

/// Values at least this long (in characters) are masked even inside words.
const MASK_ANYWHERE_LEN: usize = 8;

/// `text` with `value` masked where it appears (`anywhere`) or where it
/// is a whole word.
fn mask(text: &str, value: &str, anywhere: bool) -> String {
    if value.is_empty() {
        return text.to_owned();
    }
    let in_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(value) {
        out.push_str(&rest[..at]);
        let before = out.chars().next_back();
        let after = rest[at + value.len()..].chars().next();
        if anywhere || !(in_word(before) || in_word(after)) {
            out.push_str("***");
        } else {
            out.push_str(value);
        }
        rest = &rest[at + value.len()..];
    }
    out.push_str(rest);
    out
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Escapes a value so that, inside a TOML basic string, it stays one string.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Substitutes every reference in `text`, looking variables up with `lookup`.
/// `$$` stands for a literal `$`. Comment lines are left alone.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> (Interpolated, Vec<InterpolationError>) {
    let mut result = Interpolated::default();
    let mut errors = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            result.text.push_str(line);
            line_start += line.len();
            continue;
        }
        let mut rest = line;
        let mut pos = line_start;
        while let Some(at) = rest.find('$') {
            result.text.push_str(&rest[..at]);
            let tail = &rest[at..];
            let orig_start = pos + at;
            if let Some(after) = tail.strip_prefix("$$") {
                let new_start = result.text.len();
                result.text.push('$');
                result
                    .substitutions
                    .push((new_start, new_start + 1, orig_start, orig_start + 2));
                rest = after;
                pos = orig_start + 2;
                continue;
            }
            if !tail.starts_with("${") {
                result.text.push('$');
                rest = &tail[1..];
                pos = orig_start + 1;
                continue;
            }
            let Some(close) = tail.find('}') else {
                errors.push(InterpolationError {
                    span: orig_start..orig_start + tail.trim_end().len(),
                    message: "unterminated `${`: write `${NAME}`, or `$$` for a literal `$`".into(),
                });
                result.text.push_str(tail);
                rest = "";
                break;
            };
            let inner = &tail[2..close];
            let span = orig_start..orig_start + close + 1;
            let (name, op, arg) = match inner.find([':']) {
                Some(i) if inner[i..].starts_with(":-") => {
                    (&inner[..i], Some('-'), &inner[i + 2..])
                }
                Some(i) if inner[i..].starts_with(":?") => {
                    (&inner[..i], Some('?'), &inner[i + 2..])
                }
                _ => (inner, None, ""),
            };
            let value = if !is_name(name) {
                errors.push(InterpolationError {
                    span: span.clone(),
                    message: format!(
                        "`${{{inner}}}` is not a variable reference: use ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
                    ),
                });
                String::new()
            } else {
                match (lookup(name).filter(|v| !v.is_empty()), op) {
                    (Some(value), _) => {
                        result.values.push(value.clone());
                        value
                    }
                    (None, Some('-')) => arg.to_owned(),
                    (None, Some('?')) => {
                        errors.push(InterpolationError {
                            span: span.clone(),
                            message: format!("environment variable {name} is not set: {arg}"),
                        });
                        String::new()
                    }
                    (None, _) => {
                        errors.push(InterpolationError {
                            span: span.clone(),
                            message: format!(
                                "environment variable {name} is not set (give a default with ${{{name}:-default}})"
                            ),
                        });
                        String::new()
                    }
                }
            };
            let new_start = result.text.len();
            result.text.push_str(&escape(&value));
            result
                .substitutions
                .push((new_start, result.text.len(), span.start, span.end));
            rest = &tail[close + 1..];
            pos = span.end;
        }
        result.text.push_str(rest);
        line_start += line.len();
    }
    (result, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "PASSWORD" => Some("s3cr\"et".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let (out, errors) = interpolate("a = \"${HOST}:${PORT:-6379}\"\n", env);
        assert!(errors.is_empty());
        assert_eq!(out.text, "a = \"db.internal:6379\"\n");
    }

    #[test]
    fn empty_variable_takes_the_default() {
        let (out, _) = interpolate("${EMPTY:-x}", env);
        assert_eq!(out.text, "x");
    }

    #[test]
    fn values_are_escaped_for_basic_strings() {
        let (out, _) = interpolate("p = \"${PASSWORD}\"", env);
        assert_eq!(out.text, r#"p = "s3cr\"et""#);
    }

    #[test]
    fn missing_variable_is_an_error_naming_it_with_its_span() {
        let text = "url = \"${REDIS_URL}\"";
        let (_, errors) = interpolate(text, env);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("REDIS_URL is not set"));
        assert_eq!(&text[errors[0].span.clone()], "${REDIS_URL}");
    }

    #[test]
    fn required_variable_reports_its_message() {
        let (_, errors) = interpolate("${TOKEN:?set TOKEN to the Slack bot token}", env);
        assert!(errors[0]
            .message
            .ends_with("set TOKEN to the Slack bot token"));
    }

    #[test]
    fn offsets_after_a_substitution_map_back_to_the_original() {
        let text = "a = \"${HOST}\" b";
        let (out, _) = interpolate(text, env);
        let b_new = out.text.find(" b").unwrap() + 1;
        assert_eq!(out.original_offset(b_new), text.find(" b").unwrap() + 1);
        assert_eq!(
            out.original_offset(out.text.find("db").unwrap()),
            text.find('$').unwrap()
        );
    }

    #[test]
    fn redact_hides_every_substituted_value() {
        let (out, _) = interpolate("x = \"${HOST}\"", env);
        assert_eq!(out.redact("cannot reach db.internal"), "cannot reach ***");
    }

    /// A short value is masked as a word, not inside other words: the
    /// message stays readable and does not spell the value out.
    #[test]
    fn redact_masks_a_short_value_only_as_a_whole_word() {
        let values = |v: &[&str]| Interpolated {
            values: v.iter().map(|s| s.to_string()).collect(),
            ..Interpolated::default()
        };
        let short = values(&["e", "pw1"]);
        assert_eq!(
            short.redact("sink \"out\" takes alerts, not e"),
            "sink \"out\" takes alerts, not ***"
        );
        assert_eq!(
            short.redact("redis://:pw1@host and pw12"),
            "redis://:***@host and pw12"
        );
        // Eight characters or more: everywhere, inside words too.
        let long = values(&["hunter22", "hunter2233"]);
        assert_eq!(long.redact("xhunter22y and hunter2233"), "x***y and ***");
    }

    #[test]
    fn comments_and_double_dollars_are_left_alone() {
        let (out, errors) = interpolate("# ${NOPE}\nx = \"$$HOME $5\"\n", env);
        assert!(errors.is_empty());
        assert_eq!(out.text, "# ${NOPE}\nx = \"$HOME $5\"\n");
    }
}
