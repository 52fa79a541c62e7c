//! weft's own kinds, `policy.weft.dev/v1alpha1`.

use serde::{Deserialize, Serialize};

use super::ObjectMeta;
use crate::config::policy::BackendPolicySpec;

/// Client-side traffic policy for the Services in `spec.targetRefs` (same namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: BackendPolicySpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}
