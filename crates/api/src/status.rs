//! Errors as the API returns them: a Kubernetes `Status` with an HTTP code, a reason and, for invalid
//! objects, every bad field by path. Clients (the `vmo` CLI, kubectl) print these as the server phrased them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A Kubernetes `Status` object (`kind: Status`, `apiVersion: v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default = "status_kind")]
    pub kind: String,
    #[serde(default = "v1")]
    pub api_version: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(default)]
    pub code: u16,
}

fn status_kind() -> String {
    "Status".into()
}
fn v1() -> String {
    "v1".into()
}

/// What a `Status` is about, and the causes (bad fields) behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// One cause: a field path and what is wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusCause {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field: String,
}

impl Status {
    /// A failure with the given HTTP code, reason and message.
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: status_kind(),
            api_version: v1(),
            metadata: Default::default(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            details: None,
            code,
        }
    }

    /// A success status (used by delete).
    pub fn success() -> Self {
        Self {
            status: "Success".into(),
            code: 200,
            ..Self::failure(200, "", "")
        }
    }

    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::failure(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(resource, name)
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::failure(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(resource, name)
    }

    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        Self::failure(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
        .with_details(resource, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::failure(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::failure(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::failure(410, "Expired", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::failure(
            413,
            "RequestEntityTooLarge",
            format!("request entity too large: limit is {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::failure(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(503, "ServiceUnavailable", message)
    }

    /// 422 Invalid for an object with bad fields; the message lists every field, as Kubernetes does.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let list = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let shown = if errors.len() == 1 {
            list
        } else {
            format!("[{list}]")
        };
        let mut status = Self::failure(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {shown}"),
        );
        status.details = Some(StatusDetails {
            name: name.into(),
            group: group.into(),
            kind: kind.into(),
            causes: errors
                .iter()
                .map(|e| StatusCause {
                    reason: e.kind.reason().into(),
                    message: e.body(),
                    field: e.path.clone(),
                })
                .collect(),
            ..Default::default()
        });
        status
    }

    fn with_details(mut self, resource: &str, name: &str) -> Self {
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        self.details = Some(StatusDetails {
            name: name.into(),
            kind: kind.into(),
            group: group.into(),
            ..Default::default()
        });
        self
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{} ({})", self.reason, self.code)
        } else {
            write!(f, "{}", self.message)
        }
    }
}

impl std::error::Error for Status {}

/// What is wrong with a field, in Kubernetes' vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    Invalid(String),
    Required,
    NotSupported(Vec<String>),
    Duplicate(String),
    Forbidden,
    TooLong(usize),
}

impl FieldErrorKind {
    fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "FieldValueInvalid",
            Self::Required => "FieldValueRequired",
            Self::NotSupported(_) => "FieldValueNotSupported",
            Self::Duplicate(_) => "FieldValueDuplicate",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong(_) => "FieldValueTooLong",
        }
    }
}

/// One invalid field: `spec.template.spec.domain.memory.guest: Invalid value: "12QB": <detail>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

impl FieldError {
    pub fn invalid(
        path: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Invalid(value.into()),
            detail: detail.into(),
        }
    }
    pub fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }
    pub fn not_supported(path: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::NotSupported(allowed.iter().map(|s| s.to_string()).collect()),
            detail: format!("{value:?}"),
        }
    }
    pub fn duplicate(path: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Duplicate(value.into()),
            detail: String::new(),
        }
    }
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }
}

impl FieldError {
    /// The message without the field path (`Invalid value: "12QB": ...`), as a `StatusCause` carries
    /// it next to its `field`.
    pub fn body(&self) -> String {
        let full = self.to_string();
        full.strip_prefix(&format!("{}: ", self.path))
            .map(str::to_string)
            .unwrap_or(full)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |f: &mut fmt::Formatter<'_>| {
            if self.detail.is_empty() {
                Ok(())
            } else {
                write!(f, ": {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Invalid(v) => {
                write!(f, "{}: Invalid value: {v:?}", self.path)?;
                tail(f)
            }
            FieldErrorKind::Required => {
                write!(f, "{}: Required value", self.path)?;
                tail(f)
            }
            FieldErrorKind::NotSupported(allowed) => {
                let allowed = allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(
                    f,
                    "{}: Unsupported value: {}: supported values: {allowed}",
                    self.path, self.detail
                )
            }
            FieldErrorKind::Duplicate(v) => write!(f, "{}: Duplicate value: {v:?}", self.path),
            FieldErrorKind::Forbidden => {
                write!(f, "{}: Forbidden", self.path)?;
                tail(f)
            }
            FieldErrorKind::TooLong(max) => write!(
                f,
                "{}: Too long: may not be more than {max} bytes",
                self.path
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_names_each_field() {
        let errors = vec![
            FieldError::invalid(
                "spec.template.spec.domain.memory.guest",
                "12QB",
                "bad suffix",
            ),
            FieldError::required("metadata.name", "name or generateName is required"),
        ];
        let status = Status::invalid("VirtualMachine", "kubevirt.io", "vm1", &errors);
        assert_eq!(status.code, 422);
        assert!(status
            .message
            .contains(r#"spec.template.spec.domain.memory.guest: Invalid value: "12QB""#));
        assert_eq!(status.details.unwrap().causes.len(), 2);
    }
}
