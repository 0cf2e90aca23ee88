//! What the gateway knows of a base model.

use crate::openai::ApiError;

/// What the gateway knows of a base model: enough to render a chat with the model's own
/// template, count a prompt's tokens exactly as the worker will, and check them against the
/// model's context before anything is paid. Read with `openledger-model`, without candle.
#[derive(Clone)]
pub struct ModelCard {
    /// The on-chain base model id it describes.
    pub base_model: u32,
    /// The model's config, tokenizer and chat template.
    pub card: openledger_model::ModelCard,
}

impl ModelCard {
    /// The card of the model at `path` (a GGUF file or a Hugging Face directory), read
    /// without its weights.
    pub fn read(base_model: u32, path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let card = openledger_model::ModelCard::read(path)
            .with_context(|| format!("cannot read the model {}", path.display()))?;
        Ok(Self { base_model, card })
    }

    /// The model's context, in positions.
    pub fn context(&self) -> usize {
        self.card.config.max_position
    }

    /// The prompt's token count, or the error a prompt (with its `max_tokens`) that does not
    /// fit the context gets.
    pub(crate) fn prompt_tokens(&self, prompt: &str, max_tokens: u32) -> Result<usize, ApiError> {
        let context = self.context();
        let tokens = self
            .card
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?
            .len();
        if tokens >= context {
            return Err(ApiError::bad_request(
                "prompt_too_long",
                format!(
                    "the prompt has {tokens} tokens, which leaves no room for an answer in the \
                     model's context of {} positions; nothing was submitted or paid",
                    context
                ),
            ));
        }
        if tokens.saturating_add(max_tokens as usize) > context {
            return Err(ApiError::bad_request(
                "max_tokens_exceeds_context",
                format!(
                    "the prompt's {tokens} tokens plus max_tokens {max_tokens} exceed the model's \
                     context of {} positions: ask for at most {} tokens; nothing was submitted \
                     or paid",
                    context,
                    context - tokens
                ),
            ));
        }
        Ok(tokens)
    }
}
