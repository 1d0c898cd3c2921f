//! An instance's value in etcd's `naming/endpoints` format, so that etcd's own tools read
//! Concord's registry and Concord reads theirs.
//!
//! etcd's Go client (`client/v3/naming/endpoints`) writes `json.Marshal` of a struct without
//! tags, `{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}`, and reads with Go's rules: field
//! names match whatever their case, unknown fields are ignored, `Op` is not looked at (a put
//! adds or replaces; removal is a delete), and a value that is not a JSON object is skipped.
//! Concord writes exactly those three fields, plus `"State":"draining"` for an instance being
//! drained (Go's decoder ignores it), and reads the same way.

use serde::Serialize;
use serde_json::{Map, Value};

/// What an instance's key holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The address clients dial (`Addr`).
    pub addr: String,
    /// Free-form JSON the instance registered with (`Metadata`): zone, weight, version, tags...
    pub metadata: Option<Value>,
    /// Registered but not to be picked: it is about to leave (Kubernetes' `terminating`).
    pub draining: bool,
}

/// The wire form, in etcd's field order.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: &'a Option<Value>,
    #[serde(rename = "State", skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

/// The `State` of an instance being drained.
const DRAINING: &str = "draining";

impl Endpoint {
    /// The value to store.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            op: 0,
            addr: &self.addr,
            metadata: &self.metadata,
            state: self.draining.then_some(DRAINING),
        };
        // Strings and JSON values always serialise.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The endpoint a stored value describes, read as etcd's Go client reads it; `None` for a
    /// value that is not a JSON object (skipped, as etcd's resolver skips it).
    pub fn decode(value: &[u8]) -> Option<Endpoint> {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(value) else {
            return None;
        };
        let addr = match field(&fields, "Addr") {
            Some(Value::String(addr)) => addr.clone(),
            Some(Value::Null) | None => String::new(),
            Some(_) => return None,
        };
        let metadata = field(&fields, "Metadata").filter(|m| !m.is_null()).cloned();
        let draining =
            matches!(field(&fields, "State"), Some(Value::String(s)) if s.eq_ignore_ascii_case(DRAINING));
        Some(Endpoint {
            addr,
            metadata,
            draining,
        })
    }
}

/// Field `name` of a JSON object, matched whatever its case (Go's rule).
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_exactly_etcds() {
        let plain = Endpoint {
            addr: "10.0.0.5:50051".into(),
            metadata: None,
            draining: false,
        };
        assert_eq!(
            String::from_utf8(plain.encode()).unwrap(),
            r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#
        );
        let rich = Endpoint {
            addr: "10.0.0.6:80".into(),
            metadata: Some(json!({"zone": "a", "weight": 3})),
            draining: true,
        };
        assert_eq!(
            String::from_utf8(rich.encode()).unwrap(),
            r#"{"Op":0,"Addr":"10.0.0.6:80","Metadata":{"weight":3,"zone":"a"},"State":"draining"}"#
        );
        for endpoint in [plain, rich] {
            assert_eq!(Endpoint::decode(&endpoint.encode()), Some(endpoint));
        }
    }

    #[test]
    fn values_are_read_as_gos_decoder_reads_them() {
        let written_by_go = br#"{"Op":0,"Addr":"1.2.3.4:5","Metadata":{"a":1}}"#;
        let endpoint = Endpoint::decode(written_by_go).unwrap();
        assert_eq!(
            (endpoint.addr.as_str(), endpoint.metadata),
            ("1.2.3.4:5", Some(json!({"a": 1})))
        );
        let other_case = Endpoint::decode(br#"{"addr":"h:1","op":7,"extra":true}"#).unwrap();
        assert_eq!(other_case.addr, "h:1");
        assert!(!other_case.draining);
        assert_eq!(Endpoint::decode(b"10.0.0.1:80"), None, "not JSON");
        assert_eq!(Endpoint::decode(b"[1,2]"), None, "not an object");
        assert_eq!(Endpoint::decode(br#"{"Addr":5}"#), None, "not a string");
        assert_eq!(
            Endpoint::decode(b"{}").unwrap().addr,
            "",
            "as Go: a missing field is empty"
        );
    }
}
