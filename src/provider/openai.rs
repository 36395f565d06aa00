//! Placeholder, replaced by the real provider.
#![allow(missing_docs)]
use super::{ChatRequest, DeltaStream, LlmProvider};

#[derive(Debug, Clone)]
pub struct OpenAiProvider;

impl OpenAiProvider {
    pub fn from_env() -> crate::Result<Self> {
        unimplemented!()
    }
}

impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }
    fn default_model(&self) -> &str {
        "openai"
    }
    fn stream(&self, _request: ChatRequest) -> DeltaStream {
        unimplemented!()
    }
}
