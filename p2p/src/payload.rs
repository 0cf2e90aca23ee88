//! What a gateway hands a worker for a job, and how both sides check it.
//!
//! The payload is the JSON encoding of [`JobPayload`]; the chain records its BLAKE2b-256 hash
//! (`input_hash`) when the job is submitted, and the worker refuses a payload whose hash
//! differs. The output hash a receipt carries is the BLAKE2b-256 of the completion's UTF-8
//! text.

use serde::{Deserialize, Serialize};

/// A generation request as it travels from gateway to worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPayload {
    /// The full prompt (chat requests arrive with their template applied).
    pub prompt: String,
    /// Most tokens to generate (also the job's `max_output_tokens`).
    pub max_tokens: u32,
    /// 0 for greedy.
    #[serde(default)]
    pub temperature: f32,
    /// Nucleus sampling mass (1.0: off).
    #[serde(default = "one")]
    pub top_p: f32,
    /// Top-k (0: off).
    #[serde(default)]
    pub top_k: u32,
    /// Sampling seed.
    #[serde(default)]
    pub seed: u64,
    /// Stop strings.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn one() -> f32 {
    1.0
}

impl JobPayload {
    /// The bytes whose hash goes on chain.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a payload received from a gateway.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// BLAKE2b-256, as the chain hashes payloads and outputs.
pub fn hash(bytes: &[u8]) -> [u8; 32] {
    sp_crypto_hashing::blake2_256(bytes)
}

/// A chat conversation as one prompt, in the ChatML template of SmolLM2-Instruct and many
/// other instruction-tuned models, ending where the assistant's answer begins.
pub fn chat_prompt(messages: &[(String, String)]) -> String {
    let mut prompt = String::new();
    for (role, content) in messages {
        prompt.push_str("<|im_start|>");
        prompt.push_str(role);
        prompt.push('\n');
        prompt.push_str(content);
        prompt.push_str("<|im_end|>\n");
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_its_hash_covers_every_field() {
        let p = JobPayload {
            prompt: "Hi".into(),
            max_tokens: 8,
            temperature: 0.5,
            top_p: 0.9,
            top_k: 40,
            seed: 7,
            stop: vec!["\n".into()],
        };
        assert_eq!(JobPayload::from_bytes(&p.to_bytes()).expect("parses"), p);
        let mut q = p.clone();
        q.seed = 8;
        assert_ne!(hash(&p.to_bytes()), hash(&q.to_bytes()));
    }

    #[test]
    fn chat_template_ends_at_the_assistant_turn() {
        let prompt = chat_prompt(&[("user".into(), "Hello".into())]);
        assert_eq!(prompt, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
    }
}
