//! The real default base model: SmolLM2-135M-Instruct, Q4_1 GGUF (`scripts/fetch-model.sh`).

use openledger_testkit::procs::model_if_present;

use candle_core::{DType, Device};
use openledger_engine::{
    BlockTable, Engine, EngineConfig, FinishReason, GenerationRequest, KvCache, KvCacheConfig,
    LoraAdapter, LoraSlots, Model, ModelSource, SamplingParams, SeqChunk, StreamEvent,
};
use openledger_model::Projection;

fn generate(engine: &mut Engine, prompt: &str) -> (Vec<u32>, String, FinishReason) {
    let params = SamplingParams { max_tokens: 24, ..Default::default() };
    let (_, rx) = engine
        .submit(GenerationRequest { prompt: prompt.into(), adapter: None, params })
        .expect("submit");
    engine.run_until_idle().expect("run");
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in rx.try_iter() {
        match ev {
            StreamEvent::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t);
            },
            StreamEvent::Finished { reason, .. } => return (ids, text, reason),
            StreamEvent::Failed(e) => panic!("request failed: {e}"),
            StreamEvent::Verified(r) => panic!("a generation answered with {r:?}"),
        }
    }
    panic!("no Finished event");
}

#[test]
fn smollm2_q4_1_generates_deterministic_text() {
    let Some(path) = model_if_present() else { return };
    let mut engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let cfg = engine.model().config().clone();
    assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads), (30, 576, 9, 3));
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let (ids, text, reason) = generate(&mut engine, prompt);
    eprintln!("generated {:?} ({reason:?}): {text:?}", ids.len());
    assert!(!text.trim().is_empty(), "empty text, tokens {ids:?}");
    assert!(text.contains("Paris"), "a working model names Paris: {text:?}");
    let again = generate(&mut engine, prompt);
    assert_eq!((ids, text), (again.0, again.1));
}

/// Logits of `seqs` (tokens and adapter slot each) in one forward pass from position 0.
fn logits(model: &Model, lora: &LoraSlots, seqs: &[(&[u32], Option<u32>)]) -> Vec<Vec<f32>> {
    let cfg = model.config();
    let mut cache = KvCache::new(
        KvCacheConfig { block_size: 16, num_blocks: 8 },
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    let tables: Vec<BlockTable> = seqs
        .iter()
        .map(|(s, _)| {
            let mut t = BlockTable::default();
            cache.reserve(&mut t, s.len()).unwrap();
            t
        })
        .collect();
    let chunks: Vec<SeqChunk<'_>> = seqs
        .iter()
        .zip(&tables)
        .map(|((s, adapter), t)| SeqChunk { tokens: s, table: t, start: 0, adapter: *adapter })
        .collect();
    model.forward(&chunks, &mut cache, lora).unwrap().to_vec2::<f32>().unwrap()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn quantized_logits_are_bitwise_identical_alone_and_batched() {
    let Some(path) = model_if_present() else { return };
    let engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let model = engine.model();
    let lora = LoraSlots::new(model.config(), &Device::Cpu, 1, false);
    let ids = |s: &str| engine.tokenizer().encode(s, false).unwrap().get_ids().to_vec();
    let (a, b) =
        (ids("The quick brown fox jumps"), ids("Once upon a time in a land far away, there"));
    let alone = logits(model, &lora, &[(&a, None)]);
    let batched = logits(model, &lora, &[(&b, None), (&a, None)]);
    assert!(same_bits(&alone[0], &batched[1]));
    assert_ne!(batched[0], batched[1]);
}

/// Row-quantized adapter tables (what a CPU engine on a GGUF model installs): a request's
/// logits are the same bits alone and batched beside another adapter's request, the adapter
/// changes them, and they stay close to the bf16 tables' logits.
#[test]
fn quantized_adapter_tables_keep_logits_batch_independent_and_close_to_bf16() {
    let Some(path) = model_if_present() else { return };
    let engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let model = engine.model();
    let cfg = model.config();
    let dir = tempfile::tempdir().unwrap();
    let mut tables = [true, false].map(|q| LoraSlots::new(cfg, &Device::Cpu, 2, q));
    for slot in 0..2u32 {
        let path = dir.path().join(format!("a{slot}"));
        openledger_engine::write_random_adapter(&path, cfg, 16, &Projection::ALL, 7 + slot as u64)
            .unwrap();
        let adapter =
            LoraAdapter::load(&path, cfg, &Device::Cpu).unwrap().with_rank_major_b().unwrap();
        for t in &mut tables {
            t.install(slot, &adapter).unwrap();
        }
    }
    let [q8, bf16] = &tables;
    let ids = |s: &str| engine.tokenizer().encode(s, false).unwrap().get_ids().to_vec();
    let (a, b) =
        (ids("The quick brown fox jumps"), ids("Once upon a time in a land far away, there"));
    let alone = logits(model, q8, &[(&a, Some(0))]);
    let batched = logits(model, q8, &[(&b, Some(1)), (&a, Some(0))]);
    assert!(same_bits(&alone[0], &batched[1]), "alone and batched differ");
    let base = logits(model, q8, &[(&a, None)]);
    assert!(!same_bits(&alone[0], &base[0]), "the adapter changed nothing");
    let reference = logits(model, bf16, &[(&a, Some(0))]);
    let (diff, delta) = alone[0]
        .iter()
        .zip(&reference[0])
        .zip(&base[0])
        .fold((0f32, 0f32), |(d, e), ((q, r), b)| (d.max((q - r).abs()), e.max((r - b).abs())));
    // The quantization moves the logits by a small part of what the adapter moves them.
    assert!(diff < 0.1 * delta, "q8 vs bf16 {diff}, adapter's own effect {delta}");
}

/// The quantized CPU path (8-bit activations, integer block dot products) produces the same
/// greedy tokens as the same weights dequantized to f32 and multiplied in f32.
#[test]
fn quantized_greedy_tokens_match_the_f32_reference() {
    let Some(path) = model_if_present() else { return };
    let engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let reference = engine.model().f32_reference().unwrap();
    let tokenizer = engine.tokenizer().clone();
    let mut reference = Engine::new(reference, tokenizer, EngineConfig::default()).unwrap();
    let mut engine = engine;
    for prompt in [
        "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
        "The history of the Roman Empire begins",
    ] {
        let params = || SamplingParams { max_tokens: 32, ignore_eos: true, ..Default::default() };
        let run = |e: &mut Engine| {
            let (_, rx) = e
                .submit(GenerationRequest {
                    prompt: prompt.into(),
                    adapter: None,
                    params: params(),
                })
                .unwrap();
            e.run_until_idle().unwrap();
            rx.try_iter()
                .filter_map(|ev| match ev {
                    StreamEvent::Token { id, .. } => Some(id),
                    _ => None,
                })
                .collect::<Vec<u32>>()
        };
        let (ours, want) = (run(&mut engine), run(&mut reference));
        assert_eq!(want.len(), 32);
        assert_eq!(ours, want, "prompt {prompt:?}");
    }
}

/// The tensor path (what a GPU runs: weights dequantized at load, interleaved RoPE as GGUF
/// lays it out, GQA 9 over 3 heads through the paged decode kernel) computes what the host
/// path does with the same dequantized weights: run here on the CPU in f32.
#[test]
fn tensor_path_from_gguf_matches_the_f32_reference() {
    let Some(path) = model_if_present() else { return };
    let engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let reference = engine.model().f32_reference().unwrap();
    let tensors = engine.model().to_tensors(&Device::Cpu, DType::F32).unwrap();
    assert!(tensors.to_tensors(&Device::Cpu, DType::F32).is_err());
    let cfg = engine.model().config();
    let lora = LoraSlots::new(cfg, &Device::Cpu, 1, false);
    let prompt = engine.tokenizer().encode("The quick brown fox jumps over", false).unwrap();
    let prompt = prompt.get_ids();
    // A prefill chunk, then two decode steps: both attention paths.
    let run = |model: &Model| {
        let config = KvCacheConfig { block_size: 16, num_blocks: 4 };
        let mut cache = KvCache::for_model(config, model).unwrap();
        let mut table = BlockTable::default();
        cache.reserve(&mut table, prompt.len()).unwrap();
        let (head, tail) = prompt.split_at(prompt.len() - 2);
        let mut rows = Vec::new();
        let mut start = 0;
        for tokens in [head, &tail[..1], &tail[1..]] {
            let chunk = SeqChunk { tokens, table: &table, start, adapter: None };
            let logits = model.forward(&[chunk], &mut cache, &lora).unwrap();
            rows.push(logits.to_vec2::<f32>().unwrap().remove(0));
            start += tokens.len();
        }
        rows
    };
    for (want, got) in run(&reference).iter().zip(run(&tensors)) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-4 * scale, "max error {err} at logit scale {scale}");
    }
}

/// The incremental detokenizer against the model's own byte-level tokenizer: pieces fed one
/// token at a time join to the decode of all the tokens, and no piece carries the U+FFFD of
/// a character split between tokens.
#[test]
fn streamed_pieces_join_to_the_whole_decode() {
    let Some(path) = model_if_present() else { return };
    let engine =
        Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap();
    let tok = engine.tokenizer();
    for text in [
        "Grüße aus Köln, 你好世界 🙂🚀 — ça va? naïve café",
        "plain ascii words only",
        "日本語のテキスト",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        let mut d = openledger_engine::Detokenizer::default();
        let mut joined = String::new();
        for n in 1..=ids.len() {
            let piece = d.next(tok, &ids[..n]);
            assert!(!piece.contains('\u{FFFD}'), "piece {piece:?} after {n} tokens of {text:?}");
            joined.push_str(&piece);
        }
        joined.push_str(&d.flush(tok, &ids));
        assert_eq!(joined, tok.decode(&ids, true).unwrap());
        assert_eq!(joined, text);
    }
}
