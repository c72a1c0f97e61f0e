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

    /// Replaces every substituted value in `message` with `***`.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for value in &self.values {
            out = out.replace(value.as_str(), "***");
        }
        out
    }
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

    #[test]
    fn comments_and_double_dollars_are_left_alone() {
        let (out, errors) = interpolate("# ${NOPE}\nx = \"$$HOME $5\"\n", env);
        assert!(errors.is_empty());
        assert_eq!(out.text, "# ${NOPE}\nx = \"$HOME $5\"\n");
    }
}
