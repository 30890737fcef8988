//! Inference runway, the pure parts: one `InferenceRuntime` spec rendered for five inference
//! backends (vLLM, KAITO, llm-d, NVIDIA Dynamo, KServe), with no IO and no kube client.
//!
//! - [`revision_hash`] / [`revision_name`]: the identity of what a revision runs.
//! - [`Backend`]: validate a spec, render a revision's objects, judge their readiness from their
//!   status, name the pods and port behind the endpoint, and list the APIs it needs. Look a
//!   backend up with [`backend_for`].
//! - [`endpoint`]: the stable endpoint Service and the weighted Gateway API `HTTPRoute` the
//!   controller keeps in front of the revisions.
//!
//! Every renderer is pure and deterministic: the same input renders byte-identical objects
//! (`serde_json` objects with sorted keys, engine arguments in sorted order). Bad input is
//! answered with [`ValidationIssue`]s, never a panic.

mod backend;
mod backends;
pub mod endpoint;
mod meta;
mod model;
mod pod;
mod readiness;
pub mod revision;

pub use backend::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue, backend_for, validate_spec,
};
pub use backends::{Dynamo, Kaito, Kserve, LlmD, Vllm};
pub use meta::{
    BACKEND_LABEL, COMPONENT_LABEL, REVISION_LABEL, RUNTIME_LABEL, label_value, revision_labels,
};
pub use model::{ModelSource, served_name};
pub use revision::{MAX_REVISION_NAME_LEN, is_dns1035_label, revision_hash, revision_name};
