//! Decoding events from every form of CONTRACT §1, detected automatically:
//! a stream entry (`topic` + `payload` fields), the envelope `{"key","msg"}`,
//! a bare message `{"message_id","metadata","payload"}`, and the flat form.

use std::borrow::Cow;

use serde::Deserialize;

use super::{parse_rfc3339_ms, EventKind, WorkflowEvent};

/// The topic whose stream entries carry workflow events.
pub const WORKFLOW_TOPIC: &str = "workflow:events";

/// Why a well-formed input was skipped rather than decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoredReason {
    /// A stage (or flat `type`) that Flowpulse does not track.
    UnknownStage(String),
    /// A stream entry of another topic.
    OtherTopic(String),
}

/// The outcome of decoding one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A workflow event.
    Event(WorkflowEvent),
    /// Valid input that Flowpulse does not track (counted as ignored).
    Ignored(IgnoredReason),
}

/// Why an input is not a valid event. Each variant is one kind of bad input
/// (counted and logged once per kind, see [`DecodeError::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or a field of the wrong type.
    #[error("invalid JSON at column {column}: {message}")]
    Json {
        /// 1-based column of the problem.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// Neither `metadata.stage` nor a flat `type`.
    #[error("missing metadata.stage (or flat `type`)")]
    MissingStage,
    /// A tracked stage without `workflow_id`.
    #[error("{stage}: missing workflow_id")]
    MissingWorkflowId {
        /// The event's stage.
        stage: &'static str,
    },
    /// No timestamp at all.
    #[error("{stage}: missing timestamp")]
    MissingTimestamp {
        /// The event's stage.
        stage: &'static str,
    },
    /// A timestamp that is not RFC 3339.
    #[error("unparseable timestamp {value:?} (expected RFC 3339)")]
    BadTimestamp {
        /// The offending text (truncated).
        value: String,
    },
    /// A stream entry without its `payload` field.
    #[error("stream entry has no `payload` field")]
    MissingPayloadField,
    /// A stream entry field that is not UTF-8.
    #[error("stream entry field `{field}` is not UTF-8")]
    NotUtf8 {
        /// The field's name.
        field: String,
    },
}

impl DecodeError {
    /// A stable short name of the kind of problem, for counting and for
    /// logging once per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json { .. } => "invalid_json",
            DecodeError::MissingStage => "missing_stage",
            DecodeError::MissingWorkflowId { .. } => "missing_workflow_id",
            DecodeError::MissingTimestamp { .. } => "missing_timestamp",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::MissingPayloadField => "missing_payload",
            DecodeError::NotUtf8 { .. } => "not_utf8",
        }
    }
}

#[derive(Deserialize, Default)]
struct RawMetadata<'a> {
    #[serde(borrow, default)]
    stage: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct RawPayload<'a> {
    #[serde(borrow, default)]
    workflow_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    workflow_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stage: Option<Cow<'a, str>>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<RawMetadata<'a>>,
    #[serde(borrow, default)]
    payload: Option<RawPayload<'a>>,
}

/// Every field of every JSON form, so one parse decides the form.
#[derive(Deserialize)]
struct RawAny<'a> {
    // Envelope.
    #[serde(borrow, default)]
    msg: Option<RawMessage<'a>>,
    // Bare message.
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<RawMetadata<'a>>,
    // `payload` is an object in a bare message; stage fields sit beside it in
    // the flat form.
    #[serde(borrow, default)]
    payload: Option<RawPayload<'a>>,
    // Flat form.
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    type_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    workflow_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    workflow_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stage: Option<Cow<'a, str>>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

/// Decodes one JSON document in any of the JSON forms.
///
/// `fallback_id` is the identity to use when the document has none of its own
/// (a stream entry id).
pub fn decode_json(bytes: &[u8], fallback_id: Option<&str>) -> Result<Decoded, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => decode_json_str(text, fallback_id),
        // Parsed as bytes only to say where the bad bytes are.
        Err(_) => match serde_json::from_slice::<RawAny<'_>>(bytes) {
            Err(e) => Err(json_error(&e)),
            Ok(_) => Err(DecodeError::NotUtf8 {
                field: "document".into(),
            }),
        },
    }
}

fn json_error(e: &serde_json::Error) -> DecodeError {
    DecodeError::Json {
        column: e.column(),
        message: strip_position(e.to_string()),
    }
}

/// [`decode_json`] of a document known to be UTF-8. It is checked once, as
/// a whole: given bytes, serde_json checks every string on its own, and
/// strings this short miss the standard library's word-at-a-time path
/// (that was an eighth of decoding's instructions).
fn decode_json_str(text: &str, fallback_id: Option<&str>) -> Result<Decoded, DecodeError> {
    let raw: RawAny<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    let message = match raw.msg {
        Some(msg) => msg,
        None if raw.metadata.is_some() => RawMessage {
            message_id: raw.message_id,
            metadata: raw.metadata,
            payload: raw.payload,
        },
        None => {
            let stage = raw.type_name.ok_or(DecodeError::MissingStage)?;
            let Some(kind) = EventKind::from_type_name(&stage) else {
                return Ok(Decoded::Ignored(IgnoredReason::UnknownStage(
                    stage.into_owned(),
                )));
            };
            let flat = RawPayload {
                workflow_id: raw.workflow_id,
                workflow_type: raw.workflow_type,
                agent_type: raw.agent_type,
                stage: raw.stage,
                duration_ms: raw.duration_ms,
                error: raw.error,
            };
            return build(kind, raw.id.map(Cow::into_owned), raw.timestamp, flat);
        }
    };
    let metadata = message.metadata.unwrap_or_default();
    let stage = metadata.stage.ok_or(DecodeError::MissingStage)?;
    let Some(kind) = EventKind::from_stage_name(&stage) else {
        return Ok(Decoded::Ignored(IgnoredReason::UnknownStage(
            stage.into_owned(),
        )));
    };
    let id = message
        .message_id
        .map(Cow::into_owned)
        .or_else(|| fallback_id.map(str::to_owned));
    build(
        kind,
        id,
        metadata.timestamp,
        message.payload.unwrap_or_default(),
    )
}

/// Decodes one stream entry: its `topic` must be `workflow:events` (others are
/// ignored) and its `payload` field holds the envelope JSON. The entry id is
/// the identity of an event without `message_id`.
pub fn decode_stream_entry<K, V>(entry_id: &str, fields: &[(K, V)]) -> Result<Decoded, DecodeError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut payload = None;
    for (key, value) in fields {
        match key.as_ref() {
            b"topic" if value.as_ref() != WORKFLOW_TOPIC.as_bytes() => {
                let topic = String::from_utf8_lossy(value.as_ref()).into_owned();
                return Ok(Decoded::Ignored(IgnoredReason::OtherTopic(topic)));
            }
            b"payload" => payload = Some(value.as_ref()),
            _ => {}
        }
    }
    let payload = payload.ok_or(DecodeError::MissingPayloadField)?;
    let payload = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8 {
        field: "payload".into(),
    })?;
    decode_json_str(payload, Some(entry_id))
}

fn build(
    kind: EventKind,
    id: Option<String>,
    timestamp: Option<Cow<'_, str>>,
    payload: RawPayload<'_>,
) -> Result<Decoded, DecodeError> {
    let stage_name = kind.stage_name();
    let workflow_id = payload
        .workflow_id
        .filter(|id| !id.is_empty())
        .ok_or(DecodeError::MissingWorkflowId { stage: stage_name })?;
    let timestamp = timestamp.ok_or(DecodeError::MissingTimestamp { stage: stage_name })?;
    let timestamp_ms = parse_rfc3339_ms(&timestamp).ok_or_else(|| DecodeError::BadTimestamp {
        value: timestamp.chars().take(64).collect(),
    })?;
    Ok(Decoded::Event(WorkflowEvent {
        id,
        kind,
        timestamp_ms,
        workflow_id: workflow_id.into_owned(),
        workflow_type: payload.workflow_type.map(Cow::into_owned),
        agent_type: payload.agent_type.map(Cow::into_owned),
        stage: payload.stage.map(Cow::into_owned),
        duration_ms: payload.duration_ms,
        error: payload.error.map(Cow::into_owned),
    }))
}

/// serde_json appends " at line L column C"; the column is reported apart.
fn strip_position(message: String) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &str = r#"{"key":null,"msg":{"message_id":"6b1f0c2e-0d3a-4f7e-9a51-2f3c1d9e8a77","metadata":{"stage":"orchestrator:workflow:stage:completed","timestamp":"2026-11-27T10:15:02.123Z"},"payload":{"workflow_id":"wf-000123","workflow_type":"feature","agent_type":"scaffold","stage":"scaffolding","duration_ms":1834,"error":null}}}"#;

    fn contract_example() -> WorkflowEvent {
        WorkflowEvent {
            id: Some("6b1f0c2e-0d3a-4f7e-9a51-2f3c1d9e8a77".into()),
            kind: EventKind::StageCompleted,
            timestamp_ms: 1_795_774_502_123,
            workflow_id: "wf-000123".into(),
            workflow_type: Some("feature".into()),
            agent_type: Some("scaffold".into()),
            stage: Some("scaffolding".into()),
            duration_ms: Some(1834),
            error: None,
        }
    }

    #[test]
    fn envelope_form_decodes_to_the_contract_event() {
        let decoded = decode_json(ENVELOPE.as_bytes(), None).unwrap();
        assert_eq!(decoded, Decoded::Event(contract_example()));
    }

    #[test]
    fn flat_form_decodes_to_the_same_event() {
        let flat = r#"{"id":"6b1f0c2e-0d3a-4f7e-9a51-2f3c1d9e8a77","type":"workflow.stage.completed","timestamp":"2026-11-27T10:15:02.123Z","workflow_id":"wf-000123","workflow_type":"feature","agent_type":"scaffold","stage":"scaffolding","duration_ms":1834,"error":null}"#;
        assert_eq!(
            decode_json(flat.as_bytes(), None).unwrap(),
            Decoded::Event(contract_example())
        );
    }

    #[test]
    fn flat_form_round_trips_through_serialize() {
        let event = contract_example();
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            decode_json(text.as_bytes(), None).unwrap(),
            Decoded::Event(event)
        );
    }

    #[test]
    fn envelope_round_trips_through_to_envelope_json() {
        let event = contract_example();
        let text = event.to_envelope_json().to_string();
        assert_eq!(
            decode_json(text.as_bytes(), None).unwrap(),
            Decoded::Event(event)
        );
    }

    #[test]
    fn stream_entry_without_message_id_takes_the_entry_id() {
        let payload = ENVELOPE.replace(
            r#""message_id":"6b1f0c2e-0d3a-4f7e-9a51-2f3c1d9e8a77","#,
            "",
        );
        let fields = [("topic", WORKFLOW_TOPIC), ("payload", payload.as_str())];
        let Decoded::Event(event) = decode_stream_entry("1700000000000-0", &fields).unwrap() else {
            panic!("expected an event");
        };
        assert_eq!(event.id.as_deref(), Some("1700000000000-0"));
    }

    #[test]
    fn stream_entry_of_another_topic_is_ignored() {
        let fields = [("topic", "billing:events"), ("payload", "{}")];
        assert_eq!(
            decode_stream_entry("1-0", &fields).unwrap(),
            Decoded::Ignored(IgnoredReason::OtherTopic("billing:events".into()))
        );
    }

    #[test]
    fn unknown_stage_is_ignored_not_an_error() {
        let text = ENVELOPE.replace("stage:completed", "stage:started");
        assert!(matches!(
            decode_json(text.as_bytes(), None).unwrap(),
            Decoded::Ignored(IgnoredReason::UnknownStage(_))
        ));
    }

    #[test]
    fn bad_inputs_name_their_problem() {
        let cases = [
            ("{not json", "invalid_json"),
            (r#"{"metadata":{}}"#, "missing_stage"),
            (
                r#"{"type":"workflow.created","timestamp":"2026-11-27T10:15:02Z"}"#,
                "missing_workflow_id",
            ),
            (
                r#"{"type":"workflow.created","workflow_id":"w","timestamp":"noon"}"#,
                "bad_timestamp",
            ),
            (
                r#"{"type":"workflow.created","workflow_id":"w"}"#,
                "missing_timestamp",
            ),
            (
                r#"{"type":"workflow.completed","workflow_id":"w","timestamp":"2026-11-27T10:15:02Z","duration_ms":"slow"}"#,
                "invalid_json",
            ),
        ];
        for (input, kind) in cases {
            let err = decode_json(input.as_bytes(), None).unwrap_err();
            assert_eq!(err.kind(), kind, "{input}: {err}");
        }
    }

    #[test]
    fn wrong_field_type_reports_its_column() {
        let input = r#"{"type":"workflow.completed","duration_ms":"slow"}"#;
        let DecodeError::Json { column, message } =
            decode_json(input.as_bytes(), None).unwrap_err()
        else {
            panic!("expected a JSON error");
        };
        assert!(message.contains("invalid type"), "{message}");
        assert!(column > 40, "column {column}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_reported_where_they_are() {
        // A valid event but for one byte of its workflow id.
        let mut input =
            br#"{"type":"workflow.created","workflow_id":"wf-X","timestamp":"2026-11-27T10:15:02Z"}"#
                .to_vec();
        let at = input.iter().position(|&b| b == b'X').unwrap();
        input[at] = 0xff;
        let DecodeError::Json { column, message } = decode_json(&input, None).unwrap_err() else {
            panic!("expected a JSON error");
        };
        assert!(message.contains("unicode"), "{message}");
        assert!(
            column >= at && column <= at + 2,
            "column {column}, byte {}",
            at + 1
        );
        // As a stream entry's payload, the field is named.
        let fields = [
            ("topic", WORKFLOW_TOPIC.as_bytes()),
            ("payload", &input[..]),
        ];
        let err = decode_stream_entry("1-0", &fields).unwrap_err();
        assert_eq!(err.kind(), "not_utf8", "{err}");
    }
}
