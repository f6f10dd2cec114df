//! Shared field checks: object names, label keys and values, annotation sizes, quantities.
//! Each returns field errors with the path it was given, so callers collect every problem at once.

use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use crate::status::{FieldError, FieldErrorKind};

/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Total size allowed for all annotations of one object (Kubernetes' limit).
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Checks a DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn dns1123_label(path: &str, value: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errors.push(FieldError {
            path: path.into(),
            kind: FieldErrorKind::TooLong(DNS1123_LABEL_MAX),
            detail: String::new(),
        });
    }
    if !is_label_shape(value) {
        errors.push(FieldError::invalid(
            path,
            value,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')",
        ));
    }
    errors
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(path: &str, value: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(FieldError {
            path: path.into(),
            kind: FieldErrorKind::TooLong(DNS1123_SUBDOMAIN_MAX),
            detail: String::new(),
        });
    }
    if value.is_empty() || !value.split('.').all(is_label_shape) {
        errors.push(FieldError::invalid(
            path,
            value,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com')",
        ));
    }
    errors
}

fn is_label_shape(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A qualified name (`prefix/name` or `name`) as label and annotation keys use.
pub fn qualified_name(path: &str, key: &str) -> Vec<FieldError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errors = Vec::new();
    if let Some(prefix) = prefix {
        if !dns1123_subdomain(path, prefix).is_empty() {
            errors.push(FieldError::invalid(
                path,
                key,
                "prefix part must be a lowercase RFC 1123 subdomain",
            ));
        }
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    if !ok {
        errors.push(FieldError::invalid(
            path,
            key,
            "name part must consist of at most 63 alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character",
        ));
    }
    errors
}

/// A label value: empty, or at most 63 characters of alphanumerics, '-', '_', '.' with alphanumeric ends.
pub fn label_value(path: &str, value: &str) -> Vec<FieldError> {
    let b = value.as_bytes();
    let ok = b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric());
    if ok {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            value,
            "a valid label must be an empty string or consist of at most 63 alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character",
        )]
    }
}

/// Checks the user-settable parts of metadata: name (subdomain or label rules), labels, annotations.
pub fn object_meta(meta: &ObjectMeta, namespaced: bool, name_is_label: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if meta.name.is_empty() && meta.generate_name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    if !meta.name.is_empty() {
        errors.extend(if name_is_label {
            dns1123_label("metadata.name", &meta.name)
        } else {
            dns1123_subdomain("metadata.name", &meta.name)
        });
    }
    if namespaced {
        if !meta.namespace.is_empty() {
            errors.extend(dns1123_label("metadata.namespace", &meta.namespace));
        }
    } else if !meta.namespace.is_empty() {
        errors.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    for (key, value) in &meta.labels {
        let path = format!("metadata.labels[{key}]");
        errors.extend(qualified_name(&path, key));
        errors.extend(label_value(&path, value));
    }
    let mut annotation_bytes = 0;
    for (key, value) in &meta.annotations {
        errors.extend(qualified_name(&format!("metadata.annotations[{key}]"), key));
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errors.push(FieldError {
            path: "metadata.annotations".into(),
            kind: FieldErrorKind::TooLong(ANNOTATIONS_MAX_BYTES),
            detail: String::new(),
        });
    }
    for (i, owner) in meta.owner_references.iter().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        for (field, value) in [
            ("apiVersion", &owner.api_version),
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                errors.push(FieldError::required(format!("{path}.{field}"), ""));
            }
        }
    }
    if meta
        .owner_references
        .iter()
        .filter(|o| o.controller == Some(true))
        .count()
        > 1
    {
        errors.push(FieldError::invalid(
            "metadata.ownerReferences",
            "",
            "only one reference can have Controller set to true",
        ));
    }
    errors
}

/// Parses a quantity field, naming the path on failure.
pub fn quantity(path: &str, value: &str) -> Result<Quantity, FieldError> {
    Quantity::parse(value).map_err(|e| FieldError::invalid(path, value, e.to_string()))
}

/// A quantity that must be present and above zero.
pub fn positive_quantity(
    path: &str,
    value: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Quantity> {
    match quantity(path, value) {
        Ok(q) if q.is_negative() || q.is_zero() => {
            errors.push(FieldError::invalid(
                path,
                value,
                "must be greater than zero",
            ));
            None
        }
        Ok(q) => Some(q),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns1123() {
        assert!(dns1123_subdomain("p", "vm-1.example").is_empty());
        assert!(!dns1123_subdomain("p", "VM_1").is_empty());
        assert!(!dns1123_subdomain("p", "-a").is_empty());
        assert!(!dns1123_subdomain("p", &"a".repeat(254)).is_empty());
        assert!(!dns1123_label("p", "a.b").is_empty());
        assert!(!dns1123_label("p", &"a".repeat(64)).is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name("p", "kubevirt.io/domain").is_empty());
        assert!(qualified_name("p", "app").is_empty());
        assert!(!qualified_name("p", "Bad Key").is_empty());
        assert!(!qualified_name("p", "UPPER.io/x").is_empty());
        assert!(label_value("p", "").is_empty());
        assert!(!label_value("p", "has space").is_empty());
    }
}
