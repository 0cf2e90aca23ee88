//! The tensor path (what a CUDA device runs) computes the same function as the host path:
//! run here on the CPU in f32, its logits match the host path's on a batch mixing prefill
//! chunks, decode tokens and adapters of different ranks, both with the paged decode kernel
//! (head size 64, power-of-two blocks) and with the gathered fallback (head size 8), and
//! each sequence alone (one-row steps).

use openledger_testkit as common;

use candle_core::{DType, Device};
use common::batch::{self, seqs, slots, wide_config, SPECS};
use common::{write_adapter, write_model, write_model_with};
use openledger_engine::{
    BlockTable, Engine, EngineConfig, EngineError, GenerationRequest, KvCache, KvCacheConfig,
    LoraSlots, Model, SamplingParams, SeqChunk,
};

fn compare(config: &serde_json::Value, block_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), config, 5);
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let tensor = Model::load_hf_tensors(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(tensor.tensor_dtype(), Some(DType::F32));
    let lora = slots(dir.path(), &cfg, &Device::Cpu);
    let want = batch::run(&host, &lora, &seqs(), 4, 6, block_size, None);
    let got = batch::run(&tensor, &lora, &seqs(), 4, 6, block_size, Some(&want.generated));
    let err = batch::max_relative_error(&want, &got);
    assert!(err < 1e-4, "tensor path differs from the host path: {err:e}");
    // The schedule really mixed phases and adapters.
    assert!(want.rows.iter().any(|r| r.step == 2 && r.seq == 0 && r.len == 8));
}

#[test]
fn tensor_path_matches_host_path_with_paged_decode_kernel() {
    compare(&wide_config(), 4);
}

#[test]
fn tensor_path_matches_host_path_for_each_sequence_alone() {
    // One-row decode steps: a stacked projection's columns (q, k, v; gate, up) are then
    // contiguous, and the adapters' deltas go into them in place.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), 5);
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let tensor = Model::load_hf_tensors(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let lora = slots(dir.path(), &cfg, &Device::Cpu);
    for seq in seqs() {
        let alone = [seq];
        let want = batch::run(&host, &lora, &alone, 4, 6, 4, None);
        let got = batch::run(&tensor, &lora, &alone, 4, 6, 4, Some(&want.generated));
        let err = batch::max_relative_error(&want, &got);
        assert!(err < 1e-4, "adapter {:?}: tensor path differs: {err:e}", alone[0].slot);
    }
}

#[test]
fn tensor_path_matches_host_path_with_gathered_attention() {
    // Head size 8 and blocks of 3: no paged kernel, every chunk gathers its positions.
    compare(&common::config_json(), 3);
}

#[test]
fn engine_on_tensor_path_generates_what_the_host_path_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 8);
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 4, num_blocks: 64 },
        ..EngineConfig::default()
    };
    let tok = openledger_engine::load_tokenizer(&dir.path().join("tokenizer.json"));
    let engines = [
        Model::load_hf(dir.path(), &Device::Cpu).unwrap(),
        Model::load_hf_tensors(dir.path(), &Device::Cpu, DType::F32).unwrap(),
    ]
    .map(|m| {
        let mut e = Engine::new(m, tok.as_ref().unwrap().clone(), config.clone()).unwrap();
        for (i, spec) in SPECS.iter().enumerate() {
            let a = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 30 + i as u64);
            e.register_adapter(&format!("a{i}"), &a).unwrap();
        }
        e
    });
    let outputs: Vec<Vec<Vec<u32>>> = engines
        .into_iter()
        .map(|mut e| {
            let rx: Vec<_> = ["hello", "a longer prompt here", "x", "adapters!"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let req = GenerationRequest {
                        prompt: p.to_string(),
                        adapter: (i < 3).then(|| format!("a{i}")),
                        params: SamplingParams {
                            max_tokens: 8,
                            ignore_eos: true,
                            ..Default::default()
                        },
                    };
                    e.submit(req).unwrap().1
                })
                .collect();
            e.run_until_idle().unwrap();
            common::streamed_tokens(&rx)
        })
        .collect();
    assert_eq!(outputs[0].iter().map(Vec::len).collect::<Vec<_>>(), vec![8; 4]);
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_kv_cache_made_for_another_model_or_backend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 2);
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let tensor = Model::load_hf_tensors(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let lora = LoraSlots::new(&cfg, &Device::Cpu, 1, false);
    let kc = KvCacheConfig { block_size: 4, num_blocks: 4 };
    let (l, kv, hd) = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim);
    let caches = [
        (&host, KvCache::on_device(kc, l, kv, hd, &Device::Cpu, DType::F32).unwrap()),
        (&tensor, KvCache::new(kc, l, kv, hd)),
        (&tensor, KvCache::on_device(kc, l + 1, kv, hd, &Device::Cpu, DType::F32).unwrap()),
        (&tensor, KvCache::on_device(kc, l, kv, hd, &Device::Cpu, DType::BF16).unwrap()),
    ];
    for (i, (model, mut cache)) in caches.into_iter().enumerate() {
        let mut table = BlockTable::default();
        cache.reserve(&mut table, 2).unwrap();
        let chunk = SeqChunk { tokens: &[1, 2], table: &table, start: 0, adapter: None };
        match model.forward(&[chunk], &mut cache, &lora) {
            Err(EngineError::Backend(m)) => assert!(m.contains("KvCache::for_model"), "{m}"),
            other => panic!("case {i}: expected a backend error, got {:?}", other.map(|_| ())),
        }
    }
}

/// The adapter deltas an activation commitment takes (the middle layer, each adapter's first
/// target: q for a0 and a1, gate for a2) are the same function on both paths: asked in an
/// order whose first row is a gate row (so the groups are not in the layer's order), the
/// tensor path's delta rows match the host path's row for row, and the entries returned
/// for them are the encoding of those rows.
#[test]
fn tensor_path_gives_the_host_paths_adapter_deltas() {
    use openledger_engine::commitment::row_words;
    use openledger_engine::{Projection, StepRows};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), 5);
    let specs = seqs();
    let mut ranges = Vec::new();
    let mut offset = 0u32;
    for s in &specs {
        ranges.push(offset..offset + s.prompt.len() as u32);
        offset += s.prompt.len() as u32;
    }
    // Sequence 3 (adapter a2, gate) first, each sequence's rows backwards.
    assert_eq!(specs[3].slot, Some(2));
    let asked: Vec<u32> = [3, 0, 1, 4].iter().flat_map(|&i| ranges[i].clone().rev()).collect();
    let mut results = Vec::new();
    for tensors in [false, true] {
        let model = if tensors {
            Model::load_hf_tensors(dir.path(), &Device::Cpu, DType::F32).unwrap()
        } else {
            Model::load_hf(dir.path(), &Device::Cpu).unwrap()
        };
        let lora = slots(dir.path(), &cfg, &Device::Cpu);
        let kc = KvCacheConfig { block_size: 16, num_blocks: 32 };
        let half = asked.len() / 2;
        let rows = StepRows { delta: &asked[..half], delta_commit: &asked, ..StepRows::default() };
        let out = batch::prompt_step(&model, &lora, &specs, kc, rows);
        let words = out.delta_entries.wait().unwrap();
        assert_eq!((out.delta.len(), words.len()), (half, asked.len()));
        for (row, w) in out.delta.iter().zip(&words) {
            assert!(row.iter().any(|v| *v != 0.0), "a zero delta row");
            assert_eq!(&row_words(row).unwrap(), w, "entries of the delta row");
        }
        let gate = cfg.proj_dims(Projection::Gate).1;
        assert_eq!(out.delta[0].len(), gate, "the first asked row is a gate row");
        results.push(out.delta);
    }
    for (h, t) in results[0].iter().zip(&results[1]) {
        assert_eq!(h.len(), t.len());
        let scale = h.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = h.iter().zip(t).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "tensor path delta differs from the host path's: {err:e}");
    }
}
