//! Secret values: held in `secrecy` boxes (zeroed on drop), never printable. The only way
//! to the plaintext is [`SecretValue::expose`], called where a value leaves for the
//! upstream.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretBox, SecretString};
use subtle::ConstantTimeEq;

/// A credential. Cloning shares the box. `Debug` prints no value; there is no `Display`.
#[derive(Clone)]
pub struct SecretValue(Arc<SecretString>);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(Arc::new(SecretString::from(value.into())))
    }

    /// The plaintext. Call only to hand the value to the upstream request.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// Picks a field of a JSON object value. Errors name the key, never the content.
    pub fn json_field(&self, key: &str) -> Result<SecretValue, String> {
        let parsed: serde_json::Value = serde_json::from_str(self.expose())
            .map_err(|_| format!("json_key {key:?}: the value is not a JSON object"))?;
        match parsed.get(key) {
            Some(serde_json::Value::String(s)) => Ok(SecretValue::new(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(SecretValue::new(n.to_string())),
            Some(serde_json::Value::Bool(b)) => Ok(SecretValue::new(b.to_string())),
            Some(_) => Err(format!("json_key {key:?}: the field is not a string")),
            None => Err(format!("json_key {key:?}: no such field in the value")),
        }
    }

    /// Whether the value could not travel in a header (CR, LF, NUL and other controls).
    pub fn has_control_chars(&self) -> bool {
        self.expose()
            .bytes()
            .any(|b| b < 0x20 && b != b'\t' || b == 0x7f)
    }
}

impl PartialEq for SecretValue {
    /// Constant time in the length of the shorter value.
    fn eq(&self, other: &Self) -> bool {
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl Eq for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A request body that carries a credential (after a proxy-token swap).
#[derive(Clone)]
pub struct SecretBytes(Arc<SecretBox<[u8]>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Arc::new(SecretBox::new(bytes.into_boxed_slice())))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.expose().len())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.expose().ct_eq(other.expose()).into()
    }
}

impl Eq for SecretBytes {}

/// Why a source could not produce a value. Built only from names, statuses and backend
/// error codes — never from a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new("s3cr3t-value");
        assert_eq!(format!("{v:?}"), "SecretValue(<redacted>)");
        assert_eq!(
            format!("{:?}", Some(v.clone())),
            "Some(SecretValue(<redacted>))"
        );
        let b = SecretBytes::new(b"s3cr3t-body".to_vec());
        assert!(!format!("{b:?}").contains("s3cr3t"));
    }

    #[test]
    fn json_fields_and_errors_without_content() {
        let v = SecretValue::new(r#"{"token":"tok-1","n":7,"o":{}}"#);
        assert_eq!(v.json_field("token").unwrap().expose(), "tok-1");
        assert_eq!(v.json_field("n").unwrap().expose(), "7");
        assert!(v.json_field("o").unwrap_err().contains("not a string"));
        let err = v.json_field("missing").unwrap_err();
        assert!(!err.contains("tok-1"), "{err}");
        let err = SecretValue::new("not-json-s3cr3t")
            .json_field("k")
            .unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn equality_and_controls() {
        assert_eq!(SecretValue::new("a"), SecretValue::new("a"));
        assert_ne!(SecretValue::new("a"), SecretValue::new("ab"));
        assert!(SecretValue::new("a\r\nX-Evil: 1").has_control_chars());
        assert!(!SecretValue::new("ghp_abc-DEF.123:x").has_control_chars());
    }
}
