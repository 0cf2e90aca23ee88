//! A request's output is bitwise identical alone and batched with other adapters, lengths and
//! phases (prefill next to decode).

use openledger_testkit as common;

use candle_core::Device;
use common::{write_adapter, write_model, AdapterSpec};
use openledger_engine::{
    BlockTable, Engine, EngineConfig, GenerationRequest, KvCache, KvCacheConfig, LoraAdapter,
    LoraSlots, Model, ModelSource, Projection, SamplingParams, SeqChunk, StreamEvent,
};

struct Seq {
    tokens: Vec<u32>,
    table: BlockTable,
    done: usize,
    slot: Option<u32>,
}

/// Steps `seqs` together (prefill in chunks of 5, then decode of fixed tokens) and returns
/// the logits rows of sequence 0 at every step.
fn run(model: &Model, lora: &LoraSlots, seqs: &mut [Seq]) -> Vec<Vec<f32>> {
    let cfg = model.config();
    let mut cache = KvCache::new(
        KvCacheConfig { block_size: 4, num_blocks: 64 },
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    for s in seqs.iter_mut() {
        cache.reserve(&mut s.table, s.tokens.len()).unwrap();
    }
    let mut out = Vec::new();
    while seqs[0].done < seqs[0].tokens.len() {
        let plan: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.done < s.tokens.len())
            .map(|(i, s)| (i, if s.done < 5 { (s.tokens.len() - s.done).min(5) } else { 1 }))
            .collect();
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &seqs[i];
                SeqChunk {
                    tokens: &s.tokens[s.done..s.done + n],
                    table: &s.table,
                    start: s.done,
                    adapter: s.slot,
                }
            })
            .collect();
        let logits = model.forward(&chunks, &mut cache, lora).unwrap().to_vec2::<f32>().unwrap();
        drop(chunks);
        for &(i, n) in &plan {
            seqs[i].done += n;
        }
        out.push(logits[0].clone());
    }
    out
}

fn seq(tokens: Vec<u32>, slot: Option<u32>) -> Seq {
    Seq { tokens, table: BlockTable::default(), done: 0, slot }
}

#[test]
fn logits_are_bitwise_identical_alone_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 3);
    let model = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let mut lora = LoraSlots::new(&cfg, &Device::Cpu, 4, false);
    let specs = [
        AdapterSpec { r: 8, alpha: 16.0, rslora: false, targets: &Projection::ALL },
        AdapterSpec {
            r: 3,
            alpha: 3.0,
            rslora: false,
            targets: &[Projection::Q, Projection::Down],
        },
        AdapterSpec {
            r: 16,
            alpha: 8.0,
            rslora: true,
            targets: &[Projection::K, Projection::O, Projection::Gate],
        },
    ];
    for (i, spec) in specs.iter().enumerate() {
        let a = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 20 + i as u64);
        lora.install(i as u32, &LoraAdapter::load(&a, &cfg, &Device::Cpu).unwrap()).unwrap();
    }
    let target: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % 256).collect();
    for slot in [Some(0), Some(1), None] {
        let alone = run(&model, &lora, &mut [seq(target.clone(), slot)]);
        let batched = run(
            &model,
            &lora,
            &mut [
                seq(target.clone(), slot),
                seq((0..21).map(|i| (i * 11 + 1) % 256).collect(), Some(2)),
                seq(vec![7, 8], None),
                seq((0..9).map(|i| (i * 5 + 3) % 256).collect(), Some(0)),
                seq((0..17).map(|i| (i * 3 + 9) % 256).collect(), Some(1)),
            ],
        );
        assert_eq!(alone.len(), batched.len());
        for (step, (a, b)) in alone.iter().zip(&batched).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "adapter {slot:?}, step {step}: logits differ when batched");
        }
    }
    // The other sequences do affect the batch: a different adapter gives different logits.
    let other = run(&model, &lora, &mut [seq(target.clone(), Some(2))]);
    let base = run(&model, &lora, &mut [seq(target, None)]);
    assert_ne!(other, base);
}

fn collect(rx: std::sync::mpsc::Receiver<StreamEvent>) -> (Vec<u32>, String) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in rx.try_iter() {
        match ev {
            StreamEvent::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t);
            },
            StreamEvent::Finished { .. } => return (ids, text),
            StreamEvent::Failed(e) => panic!("failed: {e}"),
            StreamEvent::Verified(r) => panic!("a generation answered with {r:?}"),
        }
    }
    panic!("unfinished request");
}

#[test]
fn engine_streams_identical_tokens_alone_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 4);
    let a = write_adapter(
        &dir.path().join("a"),
        &cfg,
        &AdapterSpec { r: 4, alpha: 8.0, rslora: false, targets: &Projection::ALL },
        5,
    );
    let b = write_adapter(
        &dir.path().join("b"),
        &cfg,
        &AdapterSpec {
            r: 12,
            alpha: 12.0,
            rslora: false,
            targets: &[Projection::V, Projection::Up],
        },
        6,
    );
    let config = EngineConfig { max_batch_tokens: 16, ..Default::default() };
    let mut engine =
        Engine::load(&ModelSource::HuggingFace(dir.path().into()), config, &Device::Cpu).unwrap();
    engine.register_adapter("a", &a).unwrap();
    engine.register_adapter("b", &b).unwrap();
    let req = |prompt: &str, adapter: Option<&str>, seed: u64| GenerationRequest {
        prompt: prompt.into(),
        adapter: adapter.map(String::from),
        params: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 50,
            seed,
            max_tokens: 12,
            stop: vec![],
            ignore_eos: false,
        },
    };
    let (_, rx) = engine.submit(req("hello there, adapter", Some("a"), 9)).unwrap();
    engine.run_until_idle().unwrap();
    let alone = collect(rx);
    assert_eq!(alone.0.len(), 12);

    let (_, r1) = engine
        .submit(req("a much longer prompt that needs several prefill chunks", Some("b"), 1))
        .unwrap();
    let (_, rx) = engine.submit(req("hello there, adapter", Some("a"), 9)).unwrap();
    let (_, r3) = engine.submit(req("x", None, 2)).unwrap();
    engine.step().unwrap();
    let (_, r4) = engine.submit(req("joins later", Some("a"), 3)).unwrap();
    engine.run_until_idle().unwrap();
    assert_eq!(collect(rx), alone);
    for r in [r1, r3, r4] {
        assert!(!collect(r).0.is_empty());
    }
}
