//! What a gateway hands a worker for a job, and how both sides check it.
//!
//! The payload is the JSON encoding of [`JobPayload`]; the chain records its BLAKE2b-256 hash
//! (`input_hash`) when the job is submitted, and the worker refuses a payload whose hash
//! differs. The output hash a receipt carries is the BLAKE2b-256 of the completion's UTF-8
//! text.

pub use openledger_model::ChatMessage;
use serde::{Deserialize, Serialize};

/// A generation request as it travels from gateway to worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPayload {
    /// The prompt of a completion request (empty for a chat request).
    #[serde(default)]
    pub prompt: String,
    /// The conversation of a chat request, which the worker renders with its model's own chat
    /// template (absent from the JSON of a completion request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// DataNets whose records were retrieved as context for the answer, with their shares:
    /// the worker signs them into the job's receipt, and the chain pays each its share of the
    /// charge's DataNet part (absent from the JSON when there is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<ContextShare>,
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

/// One DataNet of a payload's retrieval context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextShare {
    /// The DataNet's on-chain id.
    pub datanet: u32,
    /// Its share of the context part, in parts per million (the shares sum to at most
    /// 1,000,000).
    pub share_ppm: u32,
}

fn one() -> f32 {
    1.0
}

impl JobPayload {
    /// The context as the receipt carries it: (DataNet, share in parts per million).
    pub fn context_shares(&self) -> Vec<(u32, u32)> {
        self.context.iter().map(|c| (c.datanet, c.share_ppm)).collect()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_its_hash_covers_every_field() {
        let p = JobPayload {
            prompt: "Hi".into(),
            messages: Vec::new(),
            context: Vec::new(),
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
        // A completion's JSON has no `messages` key: payloads built by other clients
        // (polkadot.js users hashing their own JSON) keep their hash.
        assert!(!String::from_utf8_lossy(&p.to_bytes()).contains("messages"));
    }

    #[test]
    fn a_chat_payload_carries_its_messages_not_a_rendered_prompt() {
        let json = r#"{"messages":[{"role":"user","content":"Hello"}],"max_tokens":4}"#;
        let p = JobPayload::from_bytes(json.as_bytes()).expect("parses");
        assert_eq!(p.messages, vec![ChatMessage::new("user", "Hello")]);
        assert_eq!(p.prompt, "");
        assert_eq!(JobPayload::from_bytes(&p.to_bytes()).expect("round trip"), p);
    }
}
