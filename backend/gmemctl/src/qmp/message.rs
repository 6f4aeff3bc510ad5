//! One line from QEMU: greeting, reply, error or event.

use serde_json::Value;

use super::*;

/// One parsed message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Message {
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
}

impl Message {
    pub(super) fn from_value(v: Value) -> Result<Self, QmpError> {
        let Value::Object(mut map) = v else {
            return Err(QmpError::Protocol(format!("not a JSON object: {v}")));
        };
        let id = map.remove("id");
        if let Some(value) = map.remove("return") {
            return Ok(Self::Return { id, value });
        }
        if let Some(err) = map.remove("error") {
            let s = |k: &str| {
                err.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            return Ok(Self::Error {
                id,
                class: s("class"),
                desc: s("desc"),
            });
        }
        let v = Value::Object(map);
        QmpEvent::from_value(&v)
            .map(Self::Event)
            .ok_or_else(|| QmpError::Protocol(truncate(&v.to_string())))
    }
}
