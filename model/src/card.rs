//! Everything about a base model that can be known without its weights.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gguf::Gguf;

/// A base model's shape, tokenizer and chat template, read from a Hugging Face directory
/// (`config.json`, `tokenizer.json`, `tokenizer_config.json` or `chat_template.jinja`) or
/// from a GGUF file's metadata (read once; no tensor is read).
#[derive(Clone, Debug)]
pub struct ModelCard {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    /// The template the model ships; `None` if it ships none (then [`Self::render_chat`]
    /// uses ChatML).
    pub chat_template: Option<ChatTemplate>,
}

impl ModelCard {
    /// Reads the card of the model at `model`: a Hugging Face directory or a GGUF file.
    pub fn read(model: &Path) -> Result<Self> {
        let card = if model.is_dir() {
            Self {
                config: ModelConfig::from_hf_file(&model.join("config.json"))?,
                tokenizer: crate::tokenizer::load_tokenizer(model)?,
                chat_template: ChatTemplate::from_hf_dir(model)?,
            }
        } else {
            let gguf = Gguf::read(model)?;
            Self {
                config: ModelConfig::from_gguf(&gguf)?,
                tokenizer: crate::tokenizer::from_gguf(&gguf)?,
                chat_template: ChatTemplate::from_gguf(&gguf)?,
            }
        };
        tracing::debug!(
            model = %model.display(),
            vocab = card.config.vocab_size,
            context = card.config.max_position,
            template = card.chat_template.as_ref().map(ChatTemplate::origin).unwrap_or("none (ChatML)"),
            "read model card"
        );
        Ok(card)
    }

    /// The conversation as one prompt in the model's own template, or in ChatML if it ships
    /// none (see [`ChatTemplate::render`]).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.chat_template {
            Some(template) => template.render(messages, add_generation_prompt),
            None => ChatTemplate::chatml().render(messages, add_generation_prompt),
        }
    }
}
