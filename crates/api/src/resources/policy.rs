//! weft's own kinds, `policy.weft.dev/v1alpha1`.

use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use crate::config::policy::BackendPolicySpec;
use crate::config::server::ServerPolicySpec;

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

/// Server-side policy for the pods `spec.selector` picks (same namespace): mTLS mode,
/// authorization rules and an inbound rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServerPolicySpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}
