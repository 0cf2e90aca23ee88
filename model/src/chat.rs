//! Chat templates: the Jinja template a model ships, which turns a conversation into the one
//! prompt the model was fine-tuned on, rendered with `minijinja` the way Hugging Face
//! `transformers` renders it (`trim_blocks`, `lstrip_blocks`, Python string methods, and
//! `raise_exception` for conversations the template refuses).
//!
//! A model's template is read from a GGUF file's `tokenizer.chat_template`, or from a Hugging
//! Face directory's `chat_template.jinja` or `tokenizer_config.json` (`chat_template` as a
//! string, or a list of `{name, template}` of which `default` is taken). A model that ships
//! none gets [`ChatTemplate::chatml`], the ChatML layout of SmolLM2-Instruct, Qwen and many
//! other instruction-tuned models.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::gguf::Gguf;

/// The name the template is compiled under (appears in rendering errors with a line number).
const NAME: &str = "chat_template";

/// One turn of a conversation, as clients send it (OpenAI's `messages`) and as it travels to
/// the worker in a job's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, or refuse them).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template and the special tokens it is rendered with.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// Where it came from, for errors (`path (tokenizer.chat_template)`, `ChatML`).
    origin: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Written in Rust: needs no compilation, so it cannot fail.
    ChatMl,
    Jinja(Box<Jinja>),
}

/// A template compiled in its own environment, with the special tokens it is rendered with.
#[derive(Clone, Debug)]
struct Jinja {
    source: String,
    bos_token: String,
    eos_token: String,
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `bos_token` and `eos_token` are the text of the
    /// model's special tokens, which templates insert (Llama 3 starts with `{{ bos_token }}`).
    pub fn from_source(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        Self::compile("the given source".into(), source.into(), bos_token.into(), eos_token.into())
    }

    /// ChatML, the fallback for models that ship no template: each message as
    /// `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n` when a
    /// generation prompt is asked for. No system prompt is added.
    pub fn chatml() -> Self {
        Self { origin: "ChatML".into(), kind: Kind::ChatMl }
    }

    fn compile(
        origin: String,
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self> {
        let error =
            |e: JinjaError| ModelError::Template { origin: origin.clone(), message: describe(&e) };
        let mut env = Environment::new();
        // As transformers renders templates (`ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True)`); authors write them for that.
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.map_err(error)?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.clone()).map_err(error)?;
        let jinja = Jinja { source, bos_token, eos_token, env };
        Ok(Self { origin, kind: Kind::Jinja(Box::new(jinja)) })
    }

    /// The template a model ships, from a GGUF file or a Hugging Face directory; `None` when
    /// it ships none.
    pub fn read(model: &Path) -> Result<Option<Self>> {
        if model.is_dir() {
            Self::from_hf_dir(model)
        } else {
            Self::from_gguf(&Gguf::read(model)?)
        }
    }

    /// A GGUF file's `tokenizer.chat_template`, with the text of its BOS and EOS tokens.
    pub fn from_gguf(gguf: &Gguf) -> Result<Option<Self>> {
        let key = "tokenizer.chat_template";
        let source = match gguf.string(key) {
            Ok(source) => source,
            Err(ModelError::MissingKey { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let token = |id_key: &str| -> Result<String> {
            match gguf.u32(id_key) {
                Ok(id) => tokens.get(id as usize).map(|t| t.to_string()).ok_or_else(|| {
                    ModelError::metadata(
                        gguf.path(),
                        id_key,
                        format!("token {id} is outside the vocabulary of {}", tokens.len()),
                    )
                }),
                Err(ModelError::MissingKey { .. }) => Ok(String::new()),
                Err(e) => Err(e),
            }
        };
        let (bos, eos) =
            (token("tokenizer.ggml.bos_token_id")?, token("tokenizer.ggml.eos_token_id")?);
        let origin = format!("{} ({key})", gguf.path().display());
        Self::compile(origin, source.into(), bos, eos).map(Some)
    }

    /// A Hugging Face directory's template: `chat_template.jinja` if present (newer
    /// transformers save it there), else `chat_template` in `tokenizer_config.json`; the
    /// special tokens come from `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str::<TokenizerConfig>(&text)
                .map_err(|e| ModelError::config(&config_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenizerConfig::default(),
            Err(e) => return Err(ModelError::io(&config_path, e)),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (origin, source) = match std::fs::read_to_string(&jinja_path) {
            Ok(source) => (jinja_path.display().to_string(), source),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let origin = format!("{} (chat_template)", config_path.display());
                match config.chat_template {
                    None => return Ok(None),
                    Some(TemplateField::One(source)) => (origin, source),
                    Some(TemplateField::Named(list)) => {
                        let names: Vec<String> = list.iter().map(|t| t.name.clone()).collect();
                        let Some(default) = list.into_iter().find(|t| t.name == "default") else {
                            return Err(ModelError::config(
                                &config_path,
                                format!("chat_template has no `default` among {names:?}"),
                            ));
                        };
                        (origin, default.template)
                    },
                }
            },
            Err(e) => return Err(ModelError::io(&jinja_path, e)),
        };
        let text = |t: Option<SpecialToken>| t.map(SpecialToken::into_text).unwrap_or_default();
        Self::compile(origin, source, text(config.bos_token), text(config.eos_token)).map(Some)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source (`None` for the built-in ChatML).
    pub fn source(&self) -> Option<&str> {
        match &self.kind {
            Kind::ChatMl => None,
            Kind::Jinja(jinja) => Some(&jinja.source),
        }
    }

    /// The conversation as one prompt; with `add_generation_prompt`, ending where the
    /// assistant's answer begins. Templates see `messages` (each with `role` and `content`),
    /// `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception(message)`,
    /// which fails the rendering with that message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let (bos_token, eos_token, env) = match &self.kind {
            Kind::ChatMl => return Ok(chatml(messages, add_generation_prompt)),
            Kind::Jinja(jinja) => (&jinja.bos_token, &jinja.eos_token, &jinja.env),
        };
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let context = Value::from(BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(bos_token.as_str())),
            ("eos_token", Value::from(eos_token.as_str())),
        ]));
        env.get_template(NAME).and_then(|t| t.render(context)).map_err(|e| ModelError::Template {
            origin: self.origin.clone(),
            message: describe(&e),
        })
    }
}

fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut prompt = String::new();
    for m in messages {
        prompt.push_str("<|im_start|>");
        prompt.push_str(&m.role);
        prompt.push('\n');
        prompt.push_str(&m.content);
        prompt.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        prompt.push_str("<|im_start|>assistant\n");
    }
    prompt
}

/// A minijinja error with its causes, on one line.
fn describe(e: &JinjaError) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What this crate uses of `tokenizer_config.json`.
#[derive(Default, Deserialize)]
struct TokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token as a string, or as an added token (`{"content": "<s>", ...}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn into_text(self) -> String {
        match self {
            Self::Text(t) | Self::Added { content: t } => t,
        }
    }
}

#[cfg(test)]
mod tests;
