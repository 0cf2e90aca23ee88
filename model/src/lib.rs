//! What a base model is, read from its files, without loading its weights or linking a
//! tensor library: its hyper-parameters ([`ModelConfig`]), its tokenizer and its chat
//! template ([`ChatTemplate`]), from a Hugging Face directory or a GGUF file. [`ModelCard`]
//! reads all three at once.
//!
//! Who uses it:
//! - the worker's engine, for the config, tokenizer and template of the model it loads (the
//!   engine reads the weights itself, with candle);
//! - the HTTP gateway, to count a prompt's tokens exactly as the worker will and refuse
//!   prompts too long for the context before a job is paid for; the gateway must not compile
//!   candle, so neither does this crate (`cargo tree -p openledger-model | grep -i candle`
//!   prints nothing);
//! - the worker, to render a chat request's [`ChatMessage`]s with the model's own template.
//!
//! GGUF files are read by this crate's own reader ([`gguf`]), which stops before the tensor
//! data and refuses absurd counts and lengths instead of allocating for them. Every error
//! ([`ModelError`]) names the file, and the metadata key or template it is about.

pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod tokenizer;

mod card;

pub use card::ModelCard;
pub use chat::{ChatMessage, ChatTemplate};
pub use config::{ModelConfig, Projection, RopeStyle};
pub use error::{ModelError, Result};
pub use tokenizer::load_tokenizer;
pub use tokenizers::Tokenizer;
