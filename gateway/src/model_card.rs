//! What the gateway knows of a base model.

use crate::openai::ApiError;

/// What the gateway knows of a base model: enough to count a prompt's tokens exactly as the
/// worker will and check them against the model's context before anything is paid.
#[derive(Clone)]
pub struct ModelCard {
    /// The on-chain base model id it describes.
    pub base_model: u32,
    /// The model's tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// The model's context, in positions.
    pub context: usize,
}

impl ModelCard {
    /// The card of the model at `path` (a GGUF file or a Hugging Face directory), read
    /// without its weights.
    pub fn read(base_model: u32, path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (config, tokenizer) = openledger_engine::ModelConfig::read_with_tokenizer(path)
            .with_context(|| format!("cannot read the model {}", path.display()))?;
        Ok(Self { base_model, tokenizer, context: config.max_position })
    }

    /// The prompt's token count, or the error a prompt (with its `max_tokens`) that does not
    /// fit the context gets.
    pub(crate) fn prompt_tokens(&self, prompt: &str, max_tokens: u32) -> Result<usize, ApiError> {
        let tokens = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?
            .len();
        if tokens >= self.context {
            return Err(ApiError::bad_request(
                "prompt_too_long",
                format!(
                    "the prompt has {tokens} tokens, which leaves no room for an answer in the \
                     model's context of {} positions; nothing was submitted or paid",
                    self.context
                ),
            ));
        }
        if tokens.saturating_add(max_tokens as usize) > self.context {
            return Err(ApiError::bad_request(
                "max_tokens_exceeds_context",
                format!(
                    "the prompt's {tokens} tokens plus max_tokens {max_tokens} exceed the model's \
                     context of {} positions: ask for at most {} tokens; nothing was submitted \
                     or paid",
                    self.context,
                    self.context - tokens
                ),
            ));
        }
        Ok(tokens)
    }
}
