//! Collecting validation problems, each with the path of the field that holds it, and the
//! name checks every kind shares.

/// One problem, with the path of its field (`spec.rules[0].backendRefs[1].weight`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Problems found so far. Validation keeps going after the first, so that an operator sees
/// everything wrong at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// gRPC status codes by name, as operators write them (`UNAVAILABLE`, `unavailable`,
/// `resource-exhausted`) or by number.
pub fn grpc_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let norm = name.trim().to_ascii_uppercase().replace('-', "_");
    if let Ok(n) = norm.parse::<u8>() {
        return (usize::from(n) < NAMES.len()).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| *n == norm)
        .and_then(|i| u8::try_from(i).ok())
}

/// An RFC 1123 label: lowercase alphanumerics and `-`, at most 63, not starting or ending
/// with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Dot-separated RFC 1123 labels.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_codes_by_name_or_number() {
        assert_eq!(super::grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(super::grpc_code("resource-exhausted"), Some(8));
        assert_eq!(super::grpc_code("4"), Some(4));
        assert_eq!(super::grpc_code("17"), None);
        assert_eq!(super::grpc_code("NOPE"), None);
    }
}
