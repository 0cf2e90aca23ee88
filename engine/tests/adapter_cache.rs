//! The compute tier's byte budget (GPU memory on a GPU): least recently used unpinned
//! adapters make room, a pinned one never does, and an adapter larger than the whole budget
//! is refused by name.

use openledger_testkit as common;

use candle_core::Device;
use common::{write_adapter, write_model, AdapterSpec};
use openledger_engine::{
    AdapterCache, AdapterCacheConfig, EngineError, LoraAdapter, ModelConfig, Projection,
};

/// A one-layer model in a fresh directory, and the adapters' shape: rank 4 on every
/// projection.
fn one_layer_model() -> (tempfile::TempDir, ModelConfig, AdapterSpec<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 1);
    (dir, cfg, AdapterSpec { r: 4, alpha: 8.0, rslora: false, targets: &Projection::ALL })
}

#[test]
fn byte_budget_evicts_least_recently_used_unpinned_adapters_only() {
    let (dir, cfg, spec) = one_layer_model();
    let dirs: Vec<_> =
        (0..3).map(|i| write_adapter(&dir.path().join(format!("a{i}")), &cfg, &spec, i)).collect();
    let one = LoraAdapter::load(&dirs[0], &cfg, &Device::Cpu).unwrap().weight_bytes();
    assert!(one > 0);
    // Room for two adapters' weights, slots for ten.
    let config = AdapterCacheConfig {
        compute_slots: 10,
        compute_bytes: 2 * one,
        host_bytes: 0,
        ..Default::default()
    };
    let mut cache = AdapterCache::new(config, &cfg, &Device::Cpu, false);
    for (i, d) in dirs.iter().enumerate() {
        cache.register(&format!("a{i}"), d).unwrap();
    }
    let s0 = cache.acquire("a0").unwrap();
    let s1 = cache.acquire("a1").unwrap();
    assert_eq!(cache.compute_bytes_used(), 2 * one);
    // Both pinned: a2 waits, and nothing was evicted.
    assert!(matches!(cache.acquire("a2"), Err(EngineError::AdapterSlotsFull { .. })));
    assert_eq!(cache.compute_bytes_used(), 2 * one);
    // a0 finishes first, then a1: a0 is the least recently used and goes.
    cache.release(s0);
    cache.release(s1);
    let s2 = cache.acquire("a2").unwrap();
    let resident: Vec<_> = cache.resident().into_iter().flatten().collect();
    assert!(resident.contains(&"a1") && resident.contains(&"a2"), "{resident:?}");
    assert!(!resident.contains(&"a0"), "{resident:?}");
    assert_eq!(cache.compute_bytes_used(), 2 * one);
    // A resident adapter is pinned again without any install.
    assert_eq!(cache.acquire("a2").unwrap(), s2);
}

/// The host tier counts what a parsed adapter holds in memory (bf16), not its file's size:
/// a budget of two parsed adapters keeps two of f32 files, twice that size on disk, and the
/// least recently used of three goes.
#[test]
fn host_budget_counts_parsed_bf16_bytes_not_the_file() {
    let (dir, cfg, spec) = one_layer_model();
    let dirs: Vec<_> =
        (0..3).map(|i| write_adapter(&dir.path().join(format!("a{i}")), &cfg, &spec, i)).collect();
    let parsed = LoraAdapter::load(&dirs[0], &cfg, &Device::Cpu).unwrap();
    assert_eq!(parsed.host_bytes(), parsed.weight_bytes());
    assert!(parsed.bytes() > parsed.host_bytes() * 3 / 2, "the test files hold f32 values");
    let config = AdapterCacheConfig {
        compute_slots: 10,
        compute_bytes: 1 << 30,
        host_bytes: 2 * parsed.host_bytes(),
        ..Default::default()
    };
    let mut cache = AdapterCache::new(config, &cfg, &Device::Cpu, false);
    for (i, d) in dirs.iter().enumerate() {
        cache.register(&format!("a{i}"), d).unwrap();
    }
    for name in ["a0", "a1"] {
        let slot = cache.acquire(name).unwrap();
        cache.release(slot);
    }
    let mut held = cache.host_resident();
    held.sort_unstable();
    assert_eq!(held, ["a0", "a1"]);
    let slot = cache.acquire("a2").unwrap();
    cache.release(slot);
    let mut held = cache.host_resident();
    held.sort_unstable();
    assert_eq!(held, ["a1", "a2"]);
}

#[test]
fn an_adapter_larger_than_the_whole_budget_is_refused_by_name() {
    let (dir, cfg, spec) = one_layer_model();
    let a = write_adapter(&dir.path().join("big"), &cfg, &spec, 7);
    let config = AdapterCacheConfig {
        compute_slots: 4,
        compute_bytes: 1024,
        host_bytes: 0,
        ..Default::default()
    };
    let mut cache = AdapterCache::new(config, &cfg, &Device::Cpu, false);
    cache.register("big", &a).unwrap();
    let err = cache.acquire("big").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("big") && text.contains("compute budget"), "{text}");
    assert_eq!(cache.compute_bytes_used(), 0);
}

/// A CPU engine's adapter cache parses lora_B into rank-major storage, the layout CPU SGMV
/// tables compute with, so that installing an adapter shares its memory instead of copying
/// lora_B: the conversion keeps every value, and the PEFT layout stays the default.
#[test]
fn rank_major_lora_b_keeps_every_value() {
    let (dir, cfg, spec) = one_layer_model();
    let adir = write_adapter(&dir.path().join("a"), &cfg, &spec, 3);
    let peft = LoraAdapter::load(&adir, &cfg, &Device::Cpu).unwrap();
    let rank_major =
        LoraAdapter::load(&adir, &cfg, &Device::Cpu).unwrap().with_rank_major_b().unwrap();
    assert!(!peft.b_is_rank_major());
    assert!(rank_major.b_is_rank_major());
    assert_eq!(peft.weight_bytes(), rank_major.weight_bytes());
    for layer in 0..cfg.num_layers {
        for p in Projection::ALL {
            let a = peft.merged_delta(layer, p).unwrap().unwrap();
            let b = rank_major.merged_delta(layer, p).unwrap().unwrap();
            assert_eq!(a.dims(), b.dims());
            let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
            assert_eq!(a, b, "layer {layer} {p:?}");
        }
    }
}
