//! One module per backend.

mod dynamo;
mod kaito;
mod kserve;
mod llmd;
mod vllm;

pub use dynamo::Dynamo;
pub use kaito::Kaito;
pub use kserve::Kserve;
pub use llmd::LlmD;
pub use vllm::Vllm;
