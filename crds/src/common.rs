//! Types shared by every Overseer API group.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The category every Overseer kind belongs to (`kubectl get overseer`).
pub const CATEGORY: &str = "overseer";

/// The label every object created by Overseer carries, with the value `overseer`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on Overseer's objects.
pub const MANAGED_BY_VALUE: &str = "overseer";

/// Condition type for the kstatus-compatible readiness summary every kind reports.
pub const CONDITION_READY: &str = "Ready";

/// A reference to a Secret key in a namespace chosen by the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a Secret key that may live in another namespace (cluster-scoped referrers).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedSecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Key inside the Secret's `data`. Defaults to `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl NamespacedSecretKeyRef {
    /// The key to read, applying the documented default.
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or("value")
    }
}

/// Status conditions, following the Kubernetes API conventions.
pub type Conditions = Vec<Condition>;

/// Find a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
