//! The crate against the real model the project embeds (SmolLM2-135M-Instruct, Q4_1 GGUF).

use std::path::PathBuf;

use openledger_model::{ChatMessage, ModelCard, ModelConfig, RopeStyle};

/// The embedded model (`scripts/setup.sh` fetches it; `scripts/env.sh` exports the path).
fn model() -> PathBuf {
    let path = std::env::var_os("OPENLEDGER_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/openledger/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.exists(), "the model {} is missing: run scripts/setup.sh", path.display());
    path
}

fn card() -> ModelCard {
    let path = model();
    ModelCard::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn the_config_is_smollm2_135m() {
    let config = ModelConfig::read(&model()).expect("reads");
    assert_eq!(
        config,
        ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5f32 as f64,
            rope_theta: 100_000.0,
            rope_style: RopeStyle::Interleaved,
            max_position: 8192,
            tie_word_embeddings: true,
            // The declared EOS is <|im_end|> (2); <|endoftext|> (0) ends a turn too.
            eos_token_ids: vec![2, 0],
            bos_token_id: Some(1),
        }
    );
    assert_eq!(card().config, config);
}

/// Ids printed by the worker's existing GGUF tokenizer code (`tokenizer_from_metadata` in
/// worker/src/engine/gguf.rs, run verbatim over candle's `gguf_file::Content` in a scratch
/// crate outside the repository) for the same file and strings.
#[test]
fn the_tokenizer_encodes_as_the_engine_does() {
    let cases: [(&str, &[u32]); 5] = [
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "The year 2024 had 366 days.",
            &[504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30],
        ),
        (
            "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
            &[
                1, 4093, 198, 1780, 314, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 47, 2,
                198, 1, 520, 9531, 198,
            ],
        ),
        (
            "  leading spaces\tand tabs\n\nnew lines",
            &[216, 2899, 5600, 197, 397, 29416, 198, 198, 2241, 3204],
        ),
        (
            "naïve café — 東京 🤖",
            &[3546, 46494, 37366, 1841, 17097, 247, 126, 16736, 122, 15107, 114, 240],
        ),
    ];
    let card = card();
    for (text, expected) in cases {
        let encoding = card.tokenizer.encode(text, true).expect("encodes");
        assert_eq!(encoding.get_ids(), expected, "{text:?}");
        let decoded = card.tokenizer.decode(expected, false).expect("decodes");
        assert_eq!(decoded, text);
    }
}

#[test]
fn smollm2s_template_renders_a_system_and_user_turn_as_the_gateways_chatml() {
    let card = card();
    let template = card.chat_template.as_ref().expect("SmolLM2's GGUF ships a template");
    assert!(template.origin().ends_with("(tokenizer.chat_template)"), "{}", template.origin());
    let messages =
        [ChatMessage::new("system", "You are a pirate."), ChatMessage::new("user", "Hello")];
    // What `chat_prompt` in worker/src/job_payload.rs builds for these messages.
    let chat_prompt = "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
                       <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(template.render(&messages, true).expect("renders"), chat_prompt);
    assert_eq!(card.render_chat(&messages, true).expect("renders"), chat_prompt);
}

#[test]
fn smollm2s_template_adds_its_own_system_prompt_when_none_is_given() {
    let card = card();
    let prompt = card.render_chat(&[ChatMessage::new("user", "Hello")], true).expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
}
