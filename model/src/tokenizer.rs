//! The base model's tokenizer: `tokenizer.json` of a Hugging Face directory, or a byte-level
//! BPE tokenizer rebuilt from a GGUF file's metadata the way llama.cpp builds it.

use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{ModelError, Result};
use crate::gguf::Gguf;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`).
const CONTROL: i32 = 3;

/// The tokenizer of the model at `model`: `tokenizer.json` inside a Hugging Face directory,
/// a `tokenizer.json` file itself, or else the metadata of a GGUF file.
pub fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    if model.is_dir() {
        from_json_file(&model.join("tokenizer.json"))
    } else if model.extension().is_some_and(|e| e == "json") {
        from_json_file(model)
    } else {
        from_gguf(&Gguf::read(model)?)
    }
}

fn from_json_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::tokenizer(path, e))
}

/// Builds the byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) a GGUF file
/// describes: its tokens and merges, control tokens (type 3) matched whole and skipped when
/// decoding, and SmolLM's digit splitting when `tokenizer.ggml.pre` is `smollm`.
pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer> {
    let path = gguf.path();
    let model = gguf.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::config(
            path,
            format!(
                "tokenizer.ggml.model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        ));
    }
    let tokens = gguf.strings("tokenizer.ggml.tokens")?;
    let merges = gguf
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(ModelError::metadata(
                path,
                "tokenizer.ggml.merges",
                format!("malformed merge `{m}`"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    // Without types every token is a normal one.
    let types = match gguf.i32s("tokenizer.ggml.token_type") {
        Err(ModelError::MissingKey { .. }) => vec![1; tokens.len()],
        other => other?,
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::tokenizer(path, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = match gguf.string("tokenizer.ggml.pre") {
        Err(ModelError::MissingKey { .. }) => None,
        other => Some(other?),
    };
    let pre_tokenizer: PreTokenizerWrapper = if pre == Some("smollm") {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL)
        .map(|(s, _)| AddedToken::from(s.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| ModelError::tokenizer(path, e))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testing::{string, strings, GgufWriter};
    use crate::gguf::Value;

    fn tiny() -> GgufWriter {
        GgufWriter::default()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.pre", string("smollm"))
            .kv("tokenizer.ggml.tokens", strings(&["<|im_end|>", "a", "b", "ab", "1", "2", "Ġ"]))
            .kv("tokenizer.ggml.merges", strings(&["a b"]))
            .kv(
                "tokenizer.ggml.token_type",
                Value::Array([3, 1, 1, 1, 1, 1, 1].into_iter().map(Value::I32).collect()),
            )
    }

    #[test]
    fn gguf_bpe_merges_splits_digits_and_matches_control_tokens_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tok = load_tokenizer(&tiny().write(dir.path(), "t.gguf")).expect("builds");
        let ids = tok.encode("ab12<|im_end|>", true).expect("encodes");
        assert_eq!(ids.get_ids(), &[3, 4, 5, 0]);
        assert_eq!(tok.decode(&[3, 0], true).ok().as_deref(), Some("ab"));
    }

    #[test]
    fn unsupported_models_and_bad_merges_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = |w: GgufWriter, name| {
            load_tokenizer(&w.write(dir.path(), name))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(GgufWriter::default().kv("tokenizer.ggml.model", string("llama")), "spm.gguf");
        assert!(e.ends_with("spm.gguf: tokenizer.ggml.model `llama` is not supported (only byte-level BPE, `gpt2`)"), "{e}");
        let e = err(tiny().kv("tokenizer.ggml.merges", strings(&["ab"])), "m.gguf");
        assert!(e.contains("appears twice"), "{e}");
        let w = GgufWriter::default()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.tokens", strings(&["a"]))
            .kv("tokenizer.ggml.merges", strings(&["ab"]));
        let e = err(w, "bad.gguf");
        assert!(
            e.ends_with("bad.gguf: metadata `tokenizer.ggml.merges`: malformed merge `ab`"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_without_tokenizer_json_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load_tokenizer(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("tokenizer.json: tokenizer:"), "{e}");
    }
}
