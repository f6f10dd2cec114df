//! Decoding request bodies and manifest files: JSON or YAML, one or many documents, with limits that
//! refuse hostile input (oversized bodies, alias bombs, very deep nesting) before it costs memory.

use serde::Deserialize;
use serde_json::Value;

/// Largest request body or manifest accepted, as Kubernetes' API server (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Deepest nesting of maps and lists accepted in an object.
pub const MAX_DEPTH: usize = 64;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid YAML (document {document}): {source}")]
    Yaml {
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("object nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("document {document} is not an object (found {found})")]
    NotAnObject {
        document: usize,
        found: &'static str,
    },
}

/// Decodes one or more objects. JSON when the first character is `{` or `[`, YAML otherwise
/// (documents separated by `---`). Empty YAML documents are skipped; a `kind: List` is expanded.
pub fn decode_documents(input: &[u8]) -> Result<Vec<Value>, DecodeError> {
    if input.len() > MAX_BODY_BYTES {
        return Err(DecodeError::TooLarge {
            size: input.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    let first = input.iter().find(|b| !b.is_ascii_whitespace());
    let mut docs = Vec::new();
    if matches!(first, Some(b'{') | Some(b'[')) {
        let mut stream = serde_json::Deserializer::from_slice(input).into_iter::<Value>();
        for value in stream.by_ref() {
            docs.push(value.map_err(DecodeError::Json)?);
        }
    } else {
        for (index, doc) in serde_yaml_ng::Deserializer::from_slice(input).enumerate() {
            let value = Value::deserialize(doc).map_err(|source| DecodeError::Yaml {
                document: index + 1,
                source,
            })?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    let mut objects = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        check_depth(&doc, 0)?;
        match doc {
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = map.get("items") {
                    objects.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => objects.push(doc),
            Value::Array(items) => objects.extend(items),
            other => {
                return Err(DecodeError::NotAnObject {
                    document: index + 1,
                    found: type_name(&other),
                })
            }
        }
    }
    Ok(objects)
}

/// Decodes exactly one object from a request body.
pub fn decode_one(input: &[u8]) -> Result<Value, DecodeError> {
    let mut docs = decode_documents(input)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(DecodeError::NotAnObject {
            document: 1,
            found: "nothing",
        }),
        _ => Err(DecodeError::NotAnObject {
            document: 2,
            found: "a second document",
        }),
    }
}

fn check_depth(value: &Value, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    match value {
        Value::Object(map) => map.values().try_for_each(|v| check_depth(v, depth + 1)),
        Value::Array(items) => items.iter().try_for_each(|v| check_depth(v, depth + 1)),
        _ => Ok(()),
    }
}

/// A short name for a JSON value's type, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_json() {
        let yaml = b"a: 1\n---\n---\nb: 2\n";
        assert_eq!(decode_documents(yaml).unwrap().len(), 2);
        let json = br#"{"a":1} {"b":2}"#;
        assert_eq!(decode_documents(json).unwrap().len(), 2);
        let list = br#"{"kind":"List","items":[{"a":1},{"b":2},{"c":3}]}"#;
        assert_eq!(decode_documents(list).unwrap().len(), 3);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            bomb.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = n;
        }
        let err = decode_documents(bomb.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Yaml { .. }), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(decode_documents(deep.as_bytes()).is_err());
        let deep_yaml = "a:\n".to_string()
            + &(1..80)
                .map(|i| format!("{}b{i}:\n", "  ".repeat(i)))
                .collect::<String>()
            + &"  ".repeat(80)
            + "c: 1\n";
        assert!(decode_documents(deep_yaml.as_bytes()).is_err());
    }

    #[test]
    fn oversized_and_scalar_bodies_are_refused() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            decode_documents(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_documents(b"just a string"),
            Err(DecodeError::NotAnObject { .. })
        ));
    }
}
