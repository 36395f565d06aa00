//! Placeholder, replaced by the real provider.
#![allow(missing_docs)]
use super::{ChatRequest, DeltaStream, LlmProvider};

#[derive(Debug, Clone)]
pub struct AnthropicProvider;

impl AnthropicProvider {
    pub fn from_env() -> crate::Result<Self> {
        unimplemented!()
    }
}

impl LlmProvider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }
    fn default_model(&self) -> &str {
        "anthropic"
    }
    fn stream(&self, _request: ChatRequest) -> DeltaStream {
        unimplemented!()
    }
}
