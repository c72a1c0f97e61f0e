//! Serde forms that keep the snapshot layout of version 2 while the state
//! uses enums and `Option`s: an `EventKind` as its index, a missing name as
//! `u16::MAX`, an outcome as 0–3.

/// An [`EventKind`](flowpulse_core::event::EventKind) as its index in
/// `EventKind::ALL`.
pub mod kind {
    use flowpulse_core::event::EventKind;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(kind: &EventKind, s: S) -> Result<S::Ok, S::Error> {
        let code = EventKind::ALL.iter().position(|k| k == kind).unwrap_or(0) as u8;
        code.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventKind, D::Error> {
        let code = u8::deserialize(d)? as usize;
        EventKind::ALL
            .get(code)
            .copied()
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event kind {code}")))
    }
}

/// An optional name index, `u16::MAX` for none.
pub mod name_index {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    const NONE: u16 = u16::MAX;

    pub fn serialize<S: Serializer>(index: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
        index.unwrap_or(NONE).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        let index = u16::deserialize(d)?;
        Ok((index != NONE).then_some(index))
    }
}

/// An optional outcome as 0 (none), 1 (completed), 2 (failed), 3 (cancelled).
pub mod outcome {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::super::lifecycle::Outcome;

    pub fn serialize<S: Serializer>(outcome: &Option<Outcome>, s: S) -> Result<S::Ok, S::Error> {
        let code: u8 = match outcome {
            None => 0,
            Some(Outcome::Completed) => 1,
            Some(Outcome::Failed) => 2,
            Some(Outcome::Cancelled) => 3,
        };
        code.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Outcome>, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(None),
            1 => Ok(Some(Outcome::Completed)),
            2 => Ok(Some(Outcome::Failed)),
            3 => Ok(Some(Outcome::Cancelled)),
            other => Err(serde::de::Error::custom(format!("unknown outcome {other}"))),
        }
    }
}
