//! The JSON-RPC 2.0 envelope with raw payloads.

use std::fmt;

use serde::de::{Deserializer, Error as _};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::{LimitError, Limits, scan};

/// JSON-RPC and MCP error codes used by the gateway.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Upstream unavailable, crashed, or timed out (implementation-defined range).
    pub const UPSTREAM_UNAVAILABLE: i64 = -32001;
    /// Request cancelled or its upstream went away.
    pub const REQUEST_CANCELLED: i64 = -32002;
    /// Gateway overloaded.
    pub const OVERLOADED: i64 = -32003;
    /// Refused by a gateway policy or check.
    pub const FORBIDDEN: i64 = -32004;
    /// Over a rate limit (HTTP 429 with `Retry-After`).
    pub const RATE_LIMITED: i64 = -32005;
}

/// A JSON-RPC request id: a string or an integer, kept as its exact JSON text.
///
/// MCP forbids `null` ids; fractional numbers are refused too, so the raw text
/// is a canonical key for maps.
#[derive(Clone)]
pub struct Id(Box<RawValue>);

impl PartialEq for Id {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Id {}

impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.get().hash(state);
    }
}

impl Id {
    /// Validates a raw JSON value as an MCP request id.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, &'static str> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => Ok(Id(raw)),
            Some(b'-' | b'0'..=b'9') if serde_json::from_str::<i64>(text).is_ok() => Ok(Id(raw)),
            Some(b'n') => Err("id must not be null"),
            _ => Err("id must be a string or an integer"),
        }
    }

    /// A numeric id minted by the gateway.
    pub fn number(n: u64) -> Self {
        // A u64 always serializes to a valid JSON number.
        Id(RawValue::from_string(n.to_string()).unwrap_or_else(|_| unreachable_raw()))
    }

    /// The exact JSON text of the id, e.g. `7` or `"abc"`.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The id as a raw JSON value.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

fn unreachable_raw() -> Box<RawValue> {
    // Only reached if serde_json rejected a decimal integer, which it does not.
    RawValue::from_string("0".to_owned()).expect("literal JSON")
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

/// What a message is, by the JSON-RPC rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Error,
}

/// A decoded JSON-RPC message whose payload stays raw.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: Option<Id>,
    pub method: Option<String>,
    pub params: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<Box<RawValue>>,
}

/// Why bytes are not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub code: i64,
    pub message: String,
    /// The request id, when it could be read, so the error can answer it.
    pub id: Option<Id>,
    /// Set when the refusal was a size or shape limit rather than bad syntax.
    pub limit: Option<LimitError>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
            limit: None,
        }
    }
}

fn raw_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    // Keeps `null` as a present value instead of collapsing it into `None`.
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    jsonrpc: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_any")]
    id: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_any")]
    method: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_any")]
    params: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_any")]
    result: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_any")]
    error: Option<Box<RawValue>>,
}

/// Decodes one JSON-RPC message under `limits`.
///
/// Batches (top-level arrays) are refused: MCP removed them in 2025-06-18.
pub fn parse_message(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    let suspect = match scan(bytes, limits) {
        Ok(s) => s,
        Err(e) => {
            let mut err = DecodeError::new(codes::INVALID_REQUEST, e.to_string());
            err.limit = Some(e);
            return Err(err);
        }
    };
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(DecodeError::new(
                codes::INVALID_REQUEST,
                "JSON-RPC batches are not supported",
            ));
        }
        None => return Err(DecodeError::new(codes::PARSE_ERROR, "empty body")),
        Some(_) => {
            return Err(DecodeError::new(
                codes::INVALID_REQUEST,
                "a JSON-RPC message must be a JSON object",
            ));
        }
    }
    // serde_json checks UTF-8 only in what it decodes: an unknown member it
    // skips could carry invalid bytes (found by fuzz/wire_parse_message).
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::new(codes::PARSE_ERROR, "malformed JSON-RPC message: not valid UTF-8"))?;
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            codes::INVALID_REQUEST
        } else {
            codes::PARSE_ERROR
        };
        DecodeError::new(code, format!("malformed JSON-RPC message: {e}"))
    })?;
    // The envelope keeps params/result/error raw. A lone surrogate escape or a
    // number beyond f64 passes that parse but not a `Value` parse, and every
    // check that reads the payload as a `Value` would then see nothing: refuse
    // such messages here (found while fuzzing the decoder).
    if suspect && let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return Err(DecodeError::new(
            codes::PARSE_ERROR,
            format!("malformed JSON-RPC message: {e}"),
        ));
    }
    validate(env)
}

fn validate(env: Envelope) -> Result<Message, DecodeError> {
    let id = match env.id {
        None => None,
        Some(raw) => Some(Id::from_raw(raw).map_err(|m| DecodeError::new(codes::INVALID_REQUEST, m))?),
    };
    let with_id = |mut e: DecodeError| {
        e.id.clone_from(&id);
        e
    };
    if env.jsonrpc.as_deref().map(RawValue::get) != Some("\"2.0\"") {
        return Err(with_id(DecodeError::new(
            codes::INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        )));
    }
    let method = match env.method {
        None => None,
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(m) if !m.is_empty() => Some(m),
            _ => {
                return Err(with_id(DecodeError::new(
                    codes::INVALID_REQUEST,
                    "method must be a non-empty string",
                )));
            }
        },
    };
    if let Some(p) = &env.params
        && !matches!(p.get().as_bytes().first(), Some(b'{' | b'['))
    {
        return Err(with_id(DecodeError::new(
            codes::INVALID_REQUEST,
            "params must be an object or array",
        )));
    }
    let msg = Message {
        id: id.clone(),
        method,
        params: env.params,
        result: env.result,
        error: env.error,
    };
    let ok = match (&msg.method, &msg.id) {
        (Some(_), _) => msg.result.is_none() && msg.error.is_none(),
        (None, Some(_)) => msg.result.is_some() != msg.error.is_some() && msg.params.is_none(),
        (None, None) => false,
    };
    if !ok {
        return Err(with_id(DecodeError::new(
            codes::INVALID_REQUEST,
            "not a valid JSON-RPC request, notification or response",
        )));
    }
    if let Some(err) = &msg.error
        && serde_json::from_str::<ErrorObject>(err.get()).is_err()
    {
        return Err(with_id(DecodeError::new(
            codes::INVALID_REQUEST,
            "error must be an object with an integer code and a message",
        )));
    }
    Ok(msg)
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Message {
    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, _) if self.error.is_some() => Kind::Error,
            (None, _) => Kind::Response,
        }
    }

    /// A new request.
    pub fn request(id: Id, method: &str, params: Option<Box<RawValue>>) -> Self {
        Message {
            id: Some(id),
            method: Some(method.to_owned()),
            params,
            result: None,
            error: None,
        }
    }

    /// A new notification.
    pub fn notification(method: &str, params: Option<Box<RawValue>>) -> Self {
        Message {
            id: None,
            method: Some(method.to_owned()),
            params,
            result: None,
            error: None,
        }
    }

    /// A success response.
    pub fn response(id: Id, result: Box<RawValue>) -> Self {
        Message {
            id: Some(id),
            method: None,
            params: None,
            result: Some(result),
            error: None,
        }
    }

    /// An error response.
    pub fn error(id: Option<Id>, code: i64, message: &str, data: Option<serde_json::Value>) -> Self {
        let obj = ErrorObject {
            code,
            message: message.to_owned(),
            data,
        };
        let raw = serde_json::value::to_raw_value(&obj).ok();
        Message {
            id,
            method: None,
            params: None,
            result: None,
            error: raw,
        }
    }

    /// The method, or `""` for responses.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// Deserializes `params` into a view type; `None` if absent or not matching.
    pub fn params_as<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_str(self.params.as_deref()?.get()).ok()
    }

    /// Deserializes `result` into a view type.
    pub fn result_as<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_str(self.result.as_deref()?.get()).ok()
    }

    /// The decoded error object of an error response.
    pub fn error_object(&self) -> Option<ErrorObject> {
        serde_json::from_str(self.error.as_deref()?.get()).ok()
    }

    /// Serialized bytes, ready for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing raw values and strings into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("jsonrpc", "2.0")?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", &id.0)?;
        } else if self.method.is_none() {
            // Error responses to unreadable requests carry `id: null`.
            map.serialize_entry("id", &())?;
        }
        if let Some(m) = &self.method {
            map.serialize_entry("method", m)?;
        }
        if let Some(p) = &self.params {
            map.serialize_entry("params", p)?;
        }
        if let Some(r) = &self.result {
            map.serialize_entry("result", r)?;
        }
        if let Some(e) = &self.error {
            map.serialize_entry("error", e)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Id::from_raw(raw).map_err(D::Error::custom)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Bytes of an error response for a decode failure or refusal.
pub fn error_response(id: Option<Id>, code: i64, message: &str) -> Vec<u8> {
    Message::error(id, code, message, None).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, DecodeError> {
        parse_message(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn request_round_trip_keeps_raw_params() {
        let m = parse(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"a":1.50}}}"#)
            .unwrap();
        assert_eq!(m.kind(), Kind::Request);
        assert_eq!(m.id.as_ref().unwrap().as_str(), "7");
        let out = String::from_utf8(m.to_bytes()).unwrap();
        assert!(out.contains(r#""arguments":{"a":1.50}"#), "{out}");
    }

    #[test]
    fn classifies_kinds() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .kind(),
            Kind::Notification
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap().kind(),
            Kind::Response
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"a","error":{"code":-1,"message":"m"}}"#)
                .unwrap()
                .kind(),
            Kind::Error
        );
    }

    #[test]
    fn refuses_bad_envelopes() {
        let cases = [
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, codes::INVALID_REQUEST),
            (r#"{"id":1,"method":"x"}"#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1,"method":""}"#, codes::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}"#,
                codes::INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0"}"#, codes::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
                codes::INVALID_REQUEST,
            ),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#, codes::INVALID_REQUEST),
            (r#""hello""#, codes::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1,"method":"x""#, codes::PARSE_ERROR),
            ("", codes::PARSE_ERROR),
            ("{not json}", codes::PARSE_ERROR),
        ];
        for (input, code) in cases {
            let err = parse(input).expect_err(input);
            assert_eq!(err.code, code, "{input}: {err}");
        }
    }

    #[test]
    fn refuses_invalid_utf8() {
        let bytes = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}";
        let err = parse_message(bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.code, codes::PARSE_ERROR);
    }

    /// Unknown members are skipped by serde_json without a UTF-8 check; the
    /// message was accepted with invalid bytes there (fuzz/wire_parse_message).
    #[test]
    fn refuses_payloads_a_value_cannot_hold() {
        let l = Limits::default();
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"x":"\ud800"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"n":1e400}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"n":-2E+999}}"#,
        ] {
            assert!(parse_message(bad.as_bytes(), &l).is_err(), "{bad}");
        }
        let long = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"n":{}}}}}"#, "9".repeat(400));
        assert!(parse_message(long.as_bytes(), &l).is_err());
        // Valid pairs, exponents in range and hex digests still pass.
        for good in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"t":"\ud83d\ude00","n":1.5e10,"h":"a1e4"}}"#,
            r#"{"jsonrpc":"2.0","id":2,"result":{"t":"\u00e9"}}"#,
        ] {
            assert!(parse_message(good.as_bytes(), &l).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_invalid_utf8_in_unknown_members() {
        let bytes = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"x\":{\"\xa7\x8d\":1}}";
        let err = parse_message(bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.code, codes::PARSE_ERROR);
        let bytes = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"x\":\"\xff\"}";
        let err = parse_message(bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.code, codes::PARSE_ERROR);
    }

    #[test]
    fn error_keeps_id_when_readable() {
        let err = parse(r#"{"jsonrpc":"1.0","id":"q","method":"x"}"#).unwrap_err();
        assert_eq!(err.id.unwrap().as_str(), "\"q\"");
        let body = error_response(None, codes::PARSE_ERROR, "bad");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["id"].is_null());
        assert_eq!(v["error"]["code"], codes::PARSE_ERROR);
    }

    #[test]
    fn limits_are_reported() {
        let deep = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        let err = parse(&deep).unwrap_err();
        assert!(matches!(err.limit, Some(LimitError::TooDeep { .. })));
    }

    #[test]
    fn minted_ids_are_numbers() {
        assert_eq!(Id::number(42).as_str(), "42");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic; accepted messages re-encode to valid JSON.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = parse_message(&bytes, &Limits::default()) {
                let out = m.to_bytes();
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            }
        }

        /// JSON-shaped input (structural characters and strings) never panics either,
        /// and nothing deeper than the limit is accepted.
        #[test]
        fn json_shaped_input_respects_depth(s in "[\\[\\]{}\",:a-z0-9 ]{0,300}") {
            let limits = Limits { max_depth: 8, ..Limits::default() };
            if let Ok(m) = parse_message(s.as_bytes(), &limits) {
                let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
                prop_assert!(depth(&v) <= 8);
            }
        }

        /// A valid request round-trips with its id and raw params intact.
        #[test]
        fn requests_round_trip(id in any::<i64>(), method in "[a-z/]{1,20}", text in ".{0,40}") {
            let v = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"t": text}});
            let m = parse_message(v.to_string().as_bytes(), &Limits::default()).unwrap();
            prop_assert_eq!(m.kind(), Kind::Request);
            let back: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
            prop_assert_eq!(back, v);
        }
    }

    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}
