//! The engine on a CUDA device (feature `cuda`; runs on the GPU machine, never in CI): the
//! bf16 tensor path against the host f32 path on the same batch (prefill chunks next to
//! decode tokens, adapters of ranks 4, 8 and 16 on different projections, a sequence
//! without adapter), and the whole engine (scheduler, GPU adapter tier with eviction,
//! sampling) against the CPU engine.
//!
//! Tolerance. A bf16 rounding errs by at most 2^-9 of the value, about 0.11% rms. On the way
//! from embedding to logits a value passes some 30 roundings (weights of each projection and
//! its output, the adapters' outputs, norms, residual adds, the KV cache, the logits), which,
//! independent, give about 0.11% x sqrt(30) = 0.6% rms of the logit scale; the tensor path
//! run in bf16 on the CPU measured 0.5-1.0% rms on these models (max over the 15,000 logits
//! of a run: 5-6%, tails from adapters whose deltas are several times the base output).
//! Bounds: rms below 1.5e-2 and no logit off by more than 1e-1 of its row's largest logit;
//! removing the adapters moves the logits by far more (checked, so the bounds can fail).
//! Greedy tokens are compared where they are well-defined: where the CPU's top-2 margin
//! exceeds twice that row's measured error, no error of that size can flip the choice.
#![cfg(feature = "cuda")]

use openledger_testkit as common;

use candle_core::Tensor;
use candle_core::{DType, Device};
use common::batch::{self, seqs, slots, wide_config, SeqSpec, SPECS};
use common::{write_adapter, write_model_with, AdapterSpec};
use openledger_engine::commitment::{row_words, DIM_BITS, MAX_DIMS};
use openledger_engine::{
    ActivationCommitment, AdapterCacheConfig, Engine, EngineConfig, KvCacheConfig, LoraAdapter,
    LoraSlots, Model, ModelConfig, Projection, SamplingParams, StepRows,
};
use openledger_kernels::{
    add_rms_norm, packed_top2, rope_store_kv, scatter_rows, silu_mul, QkvHeads, RotaryPairs,
    RowIndex,
};

/// Root-mean-square logit error allowed, relative to each row's largest logit.
const RMS_TOLERANCE: f64 = 1.5e-2;
/// Largest single logit error allowed, relative to its row's largest logit.
const MAX_TOLERANCE: f64 = 1e-1;
/// Seed of the random model of the logits test.
const MODEL_SEED: u64 = 5;
/// Seed of the tied-embedding model of the greedy tests: its greedy choices are far from
/// ties (the tensor path in bf16 on the CPU left 34 of the 40 tokens well-conditioned),
/// where an untied random LM head gives margins of a few tenths of a percent.
const GREEDY_SEED: u64 = 3;
/// Tokens generated per sequence.
const GENERATE: usize = 8;
/// Well-conditioned greedy tokens the tests with adapters need at least (of 5 x 8).
const HALF_THE_TOKENS: usize = 20;

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device (these tests run on the GPU machine)")
}

/// The errors of a GPU run against the CPU reference, checked against the bounds.
fn check_errors(what: &str, want: &batch::Run, got: &batch::Run) {
    let rms = batch::rms_relative_error(want, got);
    let max = batch::max_relative_error(want, got);
    eprintln!("{what}: |cuda - cpu| / row scale: rms {rms:.3e}, max {max:.3e}");
    assert!(rms < RMS_TOLERANCE, "{what}: rms relative logit error {rms:e}");
    assert!(max < MAX_TOLERANCE, "{what}: max relative logit error {max:e}");
}

#[test]
fn cuda_logits_match_cpu_f32_within_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    assert_eq!(model.tensor_dtype(), Some(DType::BF16));
    let lora_cpu = slots(dir.path(), &cfg, &Device::Cpu);
    let lora_gpu = slots(dir.path(), &cfg, &gpu);
    for block_size in [16, 4] {
        let want = batch::run(&host, &lora_cpu, &seqs(), 4, GENERATE, block_size, None);
        let got =
            batch::run(&model, &lora_gpu, &seqs(), 4, GENERATE, block_size, Some(&want.generated));
        check_errors(&format!("block size {block_size}"), &want, &got);
        if block_size == 16 {
            // The same inputs without adapters: far outside the bounds, so a lost or
            // misrouted adapter could not pass.
            let bare: Vec<_> = seqs().into_iter().map(|s| SeqSpec { slot: None, ..s }).collect();
            let off = batch::run(&model, &lora_gpu, &bare, 4, GENERATE, 16, Some(&want.generated));
            let moved = batch::max_relative_error(&want, &off);
            eprintln!("without adapters: max {moved:.3e}");
            assert!(moved > 3.0 * MAX_TOLERANCE, "adapters barely matter here ({moved:e})");
        }
    }
}

/// One SGMV launch for the adapted projections of a stacked output (q, k and v) gives every
/// element the bits of one `lora_delta` per projection into its columns: three tables of
/// different widths (256, 128, 72 columns) with adapters of ranks 8 to 80 (past 64 the
/// launch cannot use clusters of 4), each projection with its own mix of adapters and rows
/// without any, at 1, 5, 40 and 64 rows (segments of several 16-row tiles); the columns of
/// a projection without adapters, and the rows in no segment, stay as they were.
#[test]
fn cuda_stacked_lora_launch_gives_each_projections_bits() {
    use openledger_kernels::{
        lora_delta, lora_delta_stacked, AdapterSlot, AdapterTable, BatchSegments, SegmentMap,
        StackedPart,
    };
    let gpu = cuda();
    let (d_in, widths, slots) = (256, [256, 128, 72], 4u32);
    let ranks = [8usize, 16, 64, 80];
    let rand = |shape: (usize, usize), std: f32| {
        Tensor::randn(0f32, std, shape, &gpu).unwrap().to_dtype(DType::BF16).unwrap()
    };
    let mut tables = Vec::new();
    for &d_out in &widths {
        let mut t = AdapterTable::new(&gpu, DType::BF16, d_in, d_out, slots as usize);
        for (s, &r) in ranks.iter().enumerate() {
            t.insert(s as u32, &rand((r, d_in), 0.1), &rand((d_out, r), 0.1)).unwrap();
        }
        tables.push(t);
    }
    let total: usize = widths.iter().sum();
    let offsets = [0, widths[0], widths[0] + widths[1]];
    let mut checked = 0;
    for rows in [1usize, 5, 40, 64] {
        // Per projection, which adapter slot each row takes (None: no adapter); the second
        // and third projections' mixes leave rank 80 out (so a launch of those two may use
        // clusters of 4), the first has every rank.
        let keys: Vec<Vec<Option<u32>>> = (0..3)
            .map(|k| {
                (0..rows)
                    .map(|r| match (r * 7 + k * 3) % 6 {
                        5 => None,
                        m if k >= 1 => Some((m % 3) as u32),
                        m => Some((m % 4) as u32),
                    })
                    .collect()
            })
            .collect();
        for active in [[true, true, true], [true, false, true], [false, true, true]] {
            let segments: Vec<BatchSegments> = keys
                .iter()
                .map(|k| {
                    let resolve = |slot: u32| {
                        Some(AdapterSlot { slot, rank: ranks[slot as usize] as u32, scale: 0.7 })
                    };
                    BatchSegments::new(SegmentMap::new(k, &vec![1; rows], resolve).unwrap())
                })
                .collect();
            let x = rand((rows, d_in), 1.0);
            let y = rand((rows, total), 1.0);
            let parts: Vec<StackedPart<'_>> = (0..3)
                .filter(|&k| active[k])
                .map(|k| StackedPart {
                    offset: offsets[k],
                    segments: &segments[k],
                    table: &tables[k],
                })
                .collect();
            let separate = y.copy().unwrap();
            for p in &parts {
                let cols = separate.narrow(1, p.offset, p.table.d_out()).unwrap();
                lora_delta(&x, &cols, p.segments, p.table).unwrap();
            }
            let stacked = y.copy().unwrap();
            lora_delta_stacked(&x, &stacked, &parts).unwrap();
            let bits = |t: &Tensor| {
                t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let (before, want, got) = (bits(&y), bits(&separate), bits(&stacked));
            let moved =
                want.iter().zip(&before).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert!(moved > 0, "{rows} rows: the adapters changed nothing");
            let differ = want.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{rows} rows, parts {active:?}: {differ} elements differ");
            checked += 1;
        }
    }
    eprintln!("{checked} stacked launches = one launch per projection, bit for bit");
}

/// `to_f32` (the logits' cast: 16-byte vectors on CUDA) gives candle's cast bit for bit, on
/// the kernel's path (bf16 and f16 of whole 8-element vectors, the 8B shape's vocabulary at
/// batch 64 among them) and on the fallbacks (a length not a multiple of 8, a view starting
/// off a 16-byte boundary, f32 in), with infinities, NaN, zeros of both signs and subnormals.
#[test]
fn cuda_widened_logits_are_candles_cast_bit_for_bit() {
    use openledger_kernels::to_f32;
    use rand::{Rng, SeedableRng};
    let gpu = cuda();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (rows, cols) in [(64, 128_256), (1, 49_152), (3, 5), (7, 8)] {
        let mut v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-30.0f32..30.0)).collect();
        let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, 1e-40, -3e-39];
        let len = v.len();
        for (i, x) in special.iter().enumerate().take(len) {
            v[i * 3 % len] = *x;
        }
        let base = Tensor::from_vec(v, (rows, cols), &gpu).unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let t = base.to_dtype(dtype).unwrap();
            // Whole; strided (every row but its first column); off a 16-byte boundary (from
            // the second element); from the second row (aligned when a row is 16-byte whole).
            let n = rows * cols;
            let mut views = vec![t.clone(), t.narrow(1, 1, cols - 1).unwrap()];
            if n > 9 {
                views.push(t.flatten_all().unwrap().narrow(0, 1, n - 9).unwrap());
            }
            if rows > 1 {
                views.push(t.narrow(0, 1, rows - 1).unwrap());
            }
            for view in &views {
                let want = view.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                let got = to_f32(view).unwrap().flatten_all().unwrap();
                let (want, got) = (want.to_vec1::<f32>().unwrap(), got.to_vec1::<f32>().unwrap());
                assert_eq!(want.len(), got.len());
                let differ = want
                    .iter()
                    .zip(&got)
                    .filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
                    .count();
                assert_eq!(differ, 0, "{dtype:?} {:?}: {differ} values differ", view.dims());
            }
        }
    }
    eprintln!("to_f32 = candle's cast, bit for bit (kernel and fallbacks)");
}

#[test]
fn cuda_row_scatter_matches_cpu() {
    let gpu = cuda();
    // bf16 rows of 128 (16-byte vectors), f32 rows of 3 (4-byte), bf16 rows of 3 (2-byte).
    for (dtype, width) in [(DType::BF16, 128), (DType::F32, 3), (DType::BF16, 3)] {
        let src = candle_core::Tensor::randn(0f32, 1.0, (5, width), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let index = RowIndex::new(vec![7, 0, 3, 9, 4]);
        let cpu = candle_core::Tensor::zeros((10, width), dtype, &Device::Cpu).unwrap();
        scatter_rows(&cpu, &index, &src).unwrap();
        let dst = candle_core::Tensor::zeros((10, width), dtype, &gpu).unwrap();
        scatter_rows(&dst, &index, &src.to_device(&gpu).unwrap()).unwrap();
        let (a, b) = (cpu.to_dtype(DType::F32).unwrap(), dst.to_dtype(DType::F32).unwrap());
        assert_eq!(
            a.to_vec2::<f32>().unwrap(),
            b.to_device(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap(),
            "{dtype:?} x {width}"
        );
    }
}

/// Elements of `got` that differ from `want` (both bf16, compared as f32), and the largest
/// difference relative to the largest magnitude of `want`.
fn differences(what: &str, want: &Tensor, got: &Tensor) -> (usize, f32) {
    let flat = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let (a, b) = (flat(want), flat(got));
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    // By value (+0 and -0 equal); the outputs are checked finite below.
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale;
    assert!(b.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    eprintln!("{what}: {differ} of {} elements differ, largest difference {max:.2e}", a.len());
    (differ, max)
}

/// The fused layer steps (`add_rms_norm`, `silu_mul`, `rope_store_kv`) against the candle
/// operations the tensor path ran before them, on CUDA in bf16, at a small and the 8B
/// width (rmsnorm's 32- and 1024-thread reductions; the 8B width on the kernel's path that
/// keeps a row in registers, 10,240 on its loop past 8 values a thread). They are written
/// to round as those do: the residual add, the norm, rope and the cache writes give candle's
/// bits; SiLU x up is bounded by one bf16 rounding of the output's scale.
#[test]
fn cuda_fused_layer_steps_match_the_candle_ops_they_replace() {
    let gpu = cuda();
    let randn = |shape: &[usize]| {
        Tensor::randn(0f32, 1.0, shape, &gpu).unwrap().to_dtype(DType::BF16).unwrap()
    };
    let bound = 2f32.powi(-8);
    {
        let (rows, hidden) = (3, 10_240);
        let (x, d, w) = (randn(&[rows, hidden]), randn(&[rows, hidden]), randn(&[hidden]));
        let (_, h) = add_rms_norm(&x, &d, &w, 1e-5).unwrap();
        let want = candle_nn::ops::rms_norm(&(&x + &d).unwrap(), &w, 1e-5).unwrap();
        assert_eq!(differences(&format!("add + rms_norm {rows}x{hidden}"), &want, &h).0, 0);
    }
    for (rows, hidden, ffn) in [(5, 256, 704), (64, 4096, 14336)] {
        let (x, d, w) = (randn(&[rows, hidden]), randn(&[rows, hidden]), randn(&[hidden]));
        let (res, h) = add_rms_norm(&x, &d, &w, 1e-5).unwrap();
        let sum = (&x + &d).unwrap();
        let want = candle_nn::ops::rms_norm(&sum, &w, 1e-5).unwrap();
        assert_eq!(differences(&format!("residual add {rows}x{hidden}"), &sum, &res).0, 0);
        assert_eq!(differences(&format!("add + rms_norm {rows}x{hidden}"), &want, &h).0, 0);

        let gu = randn(&[rows, 2 * ffn]);
        let (g, u) = (gu.narrow(1, 0, ffn).unwrap(), gu.narrow(1, ffn, ffn).unwrap());
        let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        let got = silu_mul(&gu).unwrap();
        assert!(differences(&format!("silu x up {rows}x{ffn}"), &want, &got).1 <= bound);
        // The same values one element off a 16-byte boundary take the scalar kernel; the
        // 16-byte one above must give its bits.
        let flat = Tensor::cat(&[&randn(&[1]), &gu.flatten_all().unwrap()], 0).unwrap();
        let unaligned = flat.narrow(0, 1, rows * 2 * ffn).unwrap().reshape((rows, 2 * ffn));
        let scalar = silu_mul(&unaligned.unwrap()).unwrap();
        assert_eq!(differences(&format!("silu x up scalar {rows}x{ffn}"), &scalar, &got).0, 0);
    }
    for (pairs, heads) in [
        (RotaryPairs::Halves, QkvHeads { heads: 32, kv_heads: 8, head_dim: 128 }),
        (RotaryPairs::Adjacent, QkvHeads { heads: 4, kv_heads: 2, head_dim: 64 }),
    ] {
        let (nh, nkv, hd) = (heads.heads, heads.kv_heads, heads.head_dim);
        let rows = 7;
        let qkv = randn(&[rows, (nh + 2 * nkv) * hd]);
        let (cos, sin) = (randn(&[rows, hd / 2]), randn(&[rows, hd / 2]));
        let slots = RowIndex::new(vec![11, 3, 0, 19, 7, 8, 2]);
        let zeros = || Tensor::zeros((20, nkv * hd), DType::BF16, &gpu).unwrap();
        let (keys, values, want_keys, want_values) = (zeros(), zeros(), zeros(), zeros());
        let q = rope_store_kv(&qkv, &cos, &sin, pairs, heads, &slots, &keys, &values).unwrap();
        let rope = |x: Tensor, h: usize| {
            let x4 = x.reshape((rows, h, 1, hd)).unwrap();
            let (c, s) =
                (cos.reshape((rows, 1, hd / 2)).unwrap(), sin.reshape((rows, 1, hd / 2)).unwrap());
            let out = match pairs {
                RotaryPairs::Halves => candle_nn::rotary_emb::rope(&x4, &c, &s),
                RotaryPairs::Adjacent => candle_nn::rotary_emb::rope_i(&x4, &c, &s),
            };
            out.unwrap().reshape((rows, h * hd)).unwrap()
        };
        let part = |s: usize, l: usize| qkv.narrow(1, s, l).unwrap().contiguous().unwrap();
        let want_q = rope(part(0, nh * hd), nh);
        scatter_rows(&want_keys, &slots, &rope(part(nh * hd, nkv * hd), nkv)).unwrap();
        scatter_rows(&want_values, &slots, &part((nh + nkv) * hd, nkv * hd)).unwrap();
        let what = format!("{pairs:?} {nh}/{nkv}x{hd}");
        assert_eq!(differences(&format!("rope q {what}"), &want_q, &q).0, 0);
        assert_eq!(differences(&format!("rope k to cache {what}"), &want_keys, &keys).0, 0);
        assert_eq!(differences(&format!("v to cache {what}"), &want_values, &values).0, 0);
    }
}

/// The tied model of the greedy tests, its CPU greedy run of `specs`, and per sequence how
/// many of its first tokens are well-conditioned (see the module doc), at least
/// `min_checked` in all.
fn greedy_reference(
    dir: &std::path::Path,
    gpu: &Device,
    specs: &[SeqSpec],
    min_checked: usize,
) -> (ModelConfig, batch::Run, Vec<usize>) {
    let mut config = wide_config();
    config["tie_word_embeddings"] = true.into();
    let cfg = write_model_with(dir, &config, GREEDY_SEED);
    let host = Model::load_hf(dir, &Device::Cpu).unwrap();
    let model = Model::load_hf(dir, gpu).unwrap();
    let want = batch::run(&host, &slots(dir, &cfg, &Device::Cpu), specs, 4, GENERATE, 16, None);
    let lora_gpu = slots(dir, &cfg, gpu);
    let got = batch::run(&model, &lora_gpu, specs, 4, GENERATE, 16, Some(&want.generated));
    // The logits test bounds the largest error; here only the typical one matters (the
    // prefix below uses each row's own error).
    let rms = batch::rms_relative_error(&want, &got);
    let max = batch::max_relative_error(&want, &got);
    eprintln!("tied model: |cuda - cpu| / row scale: rms {rms:.3e}, max {max:.3e}");
    assert!(rms < RMS_TOLERANCE, "tied model: rms relative logit error {rms:e}");
    let prefix = batch::well_conditioned_prefix(&want, &got);
    let checked: usize = prefix.iter().sum();
    eprintln!("tied model: well-conditioned greedy tokens per sequence {prefix:?}");
    assert!(checked >= min_checked, "too few well-conditioned tokens ({checked})");
    (cfg, want, prefix)
}

#[test]
fn cuda_greedy_tokens_match_cpu_on_a_well_conditioned_model() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = cuda();
    let (cfg, want, prefix) = greedy_reference(dir.path(), &gpu, &seqs(), HALF_THE_TOKENS);
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    let free = batch::run(&model, &slots(dir.path(), &cfg, &gpu), &seqs(), 4, GENERATE, 16, None);
    for (i, &n) in prefix.iter().enumerate() {
        assert_eq!(free.generated[i][..n], want.generated[i][..n], "sequence {i}, first {n}");
    }
}

/// Adapters loaded the way a GPU engine keeps them (one packed bf16 buffer in page-locked
/// memory, `LoraAdapter::load_for`) and copied with one asynchronous copy on the upload
/// stream give the logits of adapters installed from CPU tensors tensor by tensor, bit for
/// bit (the same bf16 values at other addresses).
#[test]
fn cuda_packed_page_locked_adapters_give_the_tensor_installs_logits_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    let tensors = slots(dir.path(), &cfg, &gpu);
    let mut packed = LoraSlots::new(&cfg, &gpu, 4, false);
    for i in 0..SPECS.len() {
        // The files `slots` wrote.
        let a = LoraAdapter::load_for(&dir.path().join(format!("a{i}")), &cfg, &gpu).unwrap();
        packed.install(i as u32, &a).unwrap();
    }
    let want = batch::run(&model, &tensors, &seqs(), 4, GENERATE, 16, None);
    let got = batch::run(&model, &packed, &seqs(), 4, GENERATE, 16, None);
    assert_eq!(want.rows.len(), got.rows.len());
    let mut differ = 0usize;
    for (w, g) in want.rows.iter().zip(&got.rows) {
        differ +=
            w.logits.iter().zip(&g.logits).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    }
    eprintln!("packed vs tensor installs: {differ} logits differ in {} rows", want.rows.len());
    assert_eq!(differ, 0);
    // Without the adapters the logits move: the comparison sees them.
    let none = LoraSlots::new(&cfg, &gpu, 4, false);
    let plain: Vec<SeqSpec> = seqs().into_iter().map(|s| SeqSpec { slot: None, ..s }).collect();
    let base = batch::run(&model, &none, &plain, 4, GENERATE, 16, Some(&want.generated));
    let moved = want
        .rows
        .iter()
        .zip(&base.rows)
        .filter(|(w, b)| w.seq != 2 && w.logits != b.logits)
        .count();
    assert!(moved > 0, "the adapters change no logit");
}

#[test]
fn cuda_engine_generates_what_the_cpu_engine_does_with_gpu_adapter_eviction() {
    engine_against_cpu(AdapterCacheConfig { compute_slots: 2, ..AdapterCacheConfig::default() });
}

/// The same with no host budget: every adapter a queued request names is read from disk
/// on a prefetch thread into page-locked memory and copied on the upload stream while the
/// batch keeps stepping (the request held back until the copy has ended).
#[test]
fn cuda_engine_with_adapters_prefetched_from_disk_generates_what_the_cpu_engine_does() {
    engine_against_cpu(AdapterCacheConfig {
        compute_slots: 2,
        host_bytes: 0,
        ..AdapterCacheConfig::default()
    });
}

/// The same with each adapter's copy cut into runs of one layer (`copy_runs`), requests
/// admitted while their adapter is copied (the default): the step that first reads an
/// adapter waits for each layer's copy just before that layer, and decode graphs replayed
/// after it wait for whatever is left.
#[test]
fn cuda_engine_with_adapter_copies_cut_by_layer_generates_what_the_cpu_engine_does() {
    engine_against_cpu(AdapterCacheConfig {
        compute_slots: 2,
        host_bytes: 0,
        copy_runs: 64,
        ..AdapterCacheConfig::default()
    });
}

fn engine_against_cpu(adapters: AdapterCacheConfig) {
    let dir = tempfile::tempdir().unwrap();
    let gpu = cuda();
    let (cfg, reference, prefix) = greedy_reference(dir.path(), &gpu, &seqs(), HALF_THE_TOKENS);
    let tok = openledger_engine::load_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
    let mut outputs = Vec::new();
    for device in [Device::Cpu, gpu] {
        let model = Model::load_hf(dir.path(), &device).unwrap();
        // Two compute slots for three adapters and two running sequences: adapters are
        // evicted from the GPU and uploaded again while the batch runs.
        let config = EngineConfig {
            kv_cache: KvCacheConfig { block_size: 16, num_blocks: 32 },
            adapters,
            max_running: 2,
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(model, tok.clone(), config).unwrap();
        for (i, spec) in SPECS.iter().enumerate() {
            // The same files (seeds 20..22) as `slots` installs.
            let a = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 20 + i as u64);
            engine.register_adapter(&format!("a{i}"), &a).unwrap();
        }
        let params =
            SamplingParams { max_tokens: GENERATE, ignore_eos: true, ..Default::default() };
        let rx: Vec<_> = seqs()
            .into_iter()
            .map(|s| {
                let adapter = s.slot.map(|k| format!("a{k}"));
                engine.submit_tokens(s.prompt, adapter, params.clone()).unwrap().1
            })
            .collect();
        engine.run_until_idle().unwrap();
        assert!(engine.adapters().compute_bytes_used() > 0);
        outputs.push(common::streamed_tokens(&rx));
    }
    for (i, n) in prefix.iter().enumerate() {
        assert_eq!(outputs[0][i].len(), GENERATE);
        assert_eq!(outputs[1][i].len(), GENERATE);
        // The CPU engine is bitwise batch-invariant: it reproduces the reference schedule.
        assert_eq!(outputs[0][i], reference.generated[i], "request {i}: CPU engine");
        assert_eq!(outputs[1][i][..*n], outputs[0][i][..*n], "request {i}: CUDA engine");
    }
}

/// The CUDA engine's decode steps without adapters replayed from CUDA graphs (the default;
/// the GPU script runs the engine tests again with `OPENLEDGER_CUDA_GRAPHS=0`): five requests
/// without adapters that ask for 8, 7, 6, 5 and 4 tokens, so after the prefill step the batch
/// shrinks 5, 4, 3, 2, 1 through the buckets 8, 4, 2 and 1 with padding rows, generate what
/// the CPU engine does where the choice is well-conditioned, and the CUDA engine holds
/// graphs exactly when they are on.
#[test]
fn cuda_engine_without_adapters_generates_what_the_cpu_engine_does() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = cuda();
    let bare: Vec<SeqSpec> = seqs().into_iter().map(|s| SeqSpec { slot: None, ..s }).collect();
    let (_, reference, prefix) = greedy_reference(dir.path(), &gpu, &bare, 10);
    let tok = openledger_engine::load_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
    let (mut outputs, mut graphs) = (Vec::new(), Vec::new());
    for device in [Device::Cpu, gpu] {
        let model = Model::load_hf(dir.path(), &device).unwrap();
        let config = EngineConfig {
            kv_cache: KvCacheConfig { block_size: 16, num_blocks: 32 },
            max_running: bare.len(),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(model, tok.clone(), config).unwrap();
        let rx: Vec<_> = bare
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let max_tokens = GENERATE - i;
                let params = SamplingParams { max_tokens, ignore_eos: true, ..Default::default() };
                engine.submit_tokens(s.prompt.clone(), None, params).unwrap().1
            })
            .collect();
        engine.run_until_idle().unwrap();
        graphs.push(engine.model().decode_graphs());
        outputs.push(common::streamed_tokens(&rx));
    }
    let on = openledger_kernels::options::options().cuda_graphs;
    eprintln!("CUDA engine: {} decode graphs held (graphs on: {on}); prefix {prefix:?}", graphs[1]);
    assert_eq!(graphs[0], 0, "the CPU engine captures nothing");
    assert_eq!(graphs[1] > 0, on, "the CUDA engine holds graphs exactly when they are on");
    for (i, &n) in prefix.iter().enumerate() {
        let len = GENERATE - i;
        assert_eq!((outputs[0][i].len(), outputs[1][i].len()), (len, len), "request {i}");
        assert_eq!(outputs[0][i], reference.generated[i][..len], "request {i}: CPU engine");
        let k = n.min(len);
        assert_eq!(outputs[1][i][..k], outputs[0][i][..k], "request {i}: CUDA engine");
    }
}

/// Isolation on the GPU: each request's logits alone equal, within the bf16 bounds, its
/// logits inside the batch of the other four (other adapters, other lengths, prefill chunks
/// next to decode tokens). cuBLAS picks its algorithm by row count, so the bits may differ;
/// the rows of the same request must not move by more than bf16 rounding can explain.
#[test]
fn cuda_requests_get_the_same_logits_alone_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    let lora = slots(dir.path(), &cfg, &gpu);
    let all = seqs();
    let batched = batch::run(&model, &lora, &all, 4, GENERATE, 16, None);
    let (mut worst_rms, mut worst_max) = (0f64, 0f64);
    for (i, spec) in all.iter().enumerate() {
        let forced = [batched.generated[i].clone()];
        let alone =
            batch::run(&model, &lora, std::slice::from_ref(spec), 4, GENERATE, 16, Some(&forced));
        let mine: Vec<&batch::Row> = batched.rows.iter().filter(|r| r.seq == i).collect();
        assert_eq!(mine.len(), alone.rows.len(), "request {i}: the same chunks alone");
        let (mut sum_sq, mut count) = (0f64, 0usize);
        for (b, a) in mine.iter().zip(&alone.rows) {
            assert_eq!(b.len, a.len, "request {i}: rows in the same order");
            let scale = a.logits.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            for (x, y) in a.logits.iter().zip(&b.logits) {
                let e = (*x as f64 - *y as f64).abs() / scale;
                worst_max = worst_max.max(e);
                sum_sq += e * e;
                count += 1;
            }
        }
        worst_rms = worst_rms.max((sum_sq / count as f64).sqrt());
    }
    eprintln!("alone vs batched on CUDA: worst rms {worst_rms:.3e}, worst max {worst_max:.3e}");
    assert!(worst_rms < RMS_TOLERANCE, "rms relative logit change {worst_rms:e}");
    assert!(worst_max < MAX_TOLERANCE, "max relative logit change {worst_max:e}");
}

/// Decode steps replayed from CUDA graphs (`Model::forward_step_graphed`) give the eager
/// steps' logits and asked final-norm rows (activation commitments) bit for bit: the same
/// launches read the inputs written into the captured buffers, and the padding rows that
/// fill a step up to its batch-size bucket (1, 2, 4, 8, ...) touch none of the real rows.
/// Eight sequences of 3 to 600 cached positions (one past a 512-position attention
/// partition, so the merge runs), crossing block boundaries as they grow. The batch shrinks
/// and grows across buckets: 8 (bucket 8, no padding), 3 (bucket 4, one padding row), 5 and
/// 6 (the bucket-8 graph again, with 3 and 2 padding rows, other sequences in other orders),
/// 2, 1, then 4 and 7. Every batch but the 4-row one holds the long sequence, so their
/// graphs are captured for a context bound of 1024 (two partitions: the merge runs, and
/// skips the sequences of one partition); the 4-row batch leaves it out, so its bound is 512
/// (one partition, no merge launch) and it captures a graph of its own rather than replaying
/// the bucket-4 graph of the 3-row batch. The eager steps run unpadded on one cache, the
/// graphed on another with the same contents. Five graphs at the end: buckets 8, 4, 2 and 1
/// at bound 1024 and bucket 4 at 512 (a graph per batch size would be seven).
#[test]
fn cuda_decode_graphs_give_the_eager_logits_bit_for_bit() {
    let schedule = graph_schedule(&[3]);
    let (compared, graphs) = graphed_vs_eager(16, &GRAPH_LENS, &schedule, None);
    assert_eq!(graphs, 5, "one graph per bucket (8, 4, 2, 1) at bound 1024, one at 512");
    eprintln!("{compared} decode steps, graphed (padded to buckets) = eager bit for bit");
}

/// Cached positions of the graph tests' eight sequences before their first decode step.
const GRAPH_LENS: [usize; 8] = [3, 17, 130, 600, 31, 64, 9, 250];

/// The graph tests' batches (indices into [`GRAPH_LENS`]), six decode steps each: 8, 3, 5,
/// 6, 2 sequences, then `alone`, then 4 and 7.
fn graph_schedule(alone: &'static [usize]) -> [&'static [usize]; 8] {
    [
        &[0, 1, 2, 3, 4, 5, 6, 7],
        &[0, 2, 3],
        &[0, 1, 2, 3, 4],
        &[7, 5, 6, 0, 1, 3],
        &[1, 3],
        alone,
        &[0, 1, 2, 4],
        &[6, 5, 4, 3, 2, 1, 0],
    ]
}

/// Decode steps with adapters replay graphs too, the adapter mix as data: the batches of
/// the test above (the one-sequence batch on sequence 2, which has no adapter: a graph of
/// no adapted projection) with the sequences on [`SPECS`]' three adapters (ranks 4, 8 and 16; all
/// seven projections, q and v, gate/up/down) and none, so that batches mix adapters,
/// rows without one and padding rows, and the same bucket meets other mixes over the same
/// projections. After two batches, slot 1's adapter is replaced by another of rank 16 on the
/// same projections: the bucket-8 graph captured before it, replayed by the next two
/// batches, reads the new weights (each table's pointer array rewritten in place). Before
/// the last batch, slot 2's by one of rank 80: past the rank bound of 64 the earlier graphs
/// were captured for, so that batch captures anew.
/// The steps commit to adapter deltas as a generator's do (every adapted row, the odd ones
/// backwards, or none, in turn: [`committed_deltas`]), whose entries the graphs compute too.
/// Logits, final-norm rows, entries and delta entries equal to the eager unpadded steps bit
/// for bit; one graph per bucket, set of adapted projections, set of committed projections,
/// rank bound and context bound.
#[test]
fn cuda_decode_graphs_with_adapters_give_the_eager_logits_bit_for_bit() {
    let schedule = graph_schedule(&[2]);
    let adapters = [Some(0), Some(1), None, Some(2), Some(1), Some(0), None, Some(2)];
    // The projection an adapter's delta is committed at: the first it targets.
    let first_target = |slot: u32| {
        let targets = SPECS[slot as usize].targets;
        Projection::ALL.into_iter().find(|p| targets.contains(p)).unwrap()
    };
    // Bucket, adapted projections, committed projections (each step's pattern), rank bound
    // (the ranks of SPECS, slot 2's 80 in the last batch) and context bound (1024 with the
    // 600-position sequence 3 in the batch, else 512: no sequence grows past 512 otherwise)
    // of each batch: the graphs the run must hold.
    let mut expected = std::collections::BTreeSet::new();
    for (b, seqs) in schedule.iter().enumerate() {
        let bucket = seqs.len().next_power_of_two();
        let context = if seqs.contains(&3) { 1024 } else { 512 };
        let (mut mask, mut rank) = (0u8, 0);
        for &i in seqs.iter() {
            if let Some(slot) = adapters[i] {
                let spec = &SPECS[slot as usize];
                mask |= spec.targets.iter().fold(0, |m, p| m | 1 << p.index());
                rank = rank.max(if slot == 2 && b == schedule.len() - 1 { 80 } else { spec.r });
            }
        }
        let bound = match rank {
            0 => 0,
            1..=64 => 64,
            _ => 128,
        };
        let slots: Vec<Option<u32>> = seqs.iter().map(|&i| adapters[i]).collect();
        for step in 0..3 {
            let committed = committed_deltas(&slots, step)
                .iter()
                .fold(0u8, |m, &r| m | 1 << first_target(slots[r as usize].unwrap()).index());
            expected.insert((bucket, mask, committed, bound, context));
        }
    }
    let (compared, graphs) = graphed_vs_eager(16, &GRAPH_LENS, &schedule, Some(&adapters));
    assert_eq!(graphs, expected.len(), "a graph per bucket, projections, rank and context bound");
    eprintln!(
        "{compared} decode steps with adapters, graphed (padded to buckets, {graphs} graphs) = \
         eager bit for bit"
    );
}

/// With cache blocks of a size the paged decode kernel does not take (not a power of two),
/// `forward_graphed` runs every step eagerly (the gathering attention), captures nothing,
/// and gives `forward`'s logits.
#[test]
fn cuda_decode_graphs_leave_other_block_sizes_eager() {
    let schedule: [&[usize]; 2] = [&[0, 1, 2], &[0, 2]];
    let (compared, graphs) = graphed_vs_eager(12, &[5, 40, 13], &schedule, None);
    assert_eq!(graphs, 0, "no graph for 12-position blocks");
    eprintln!("{compared} decode steps with 12-position blocks, eager either way");
}

/// Prefills sequences of `lens` tokens into two caches of `block_size`-position blocks, then
/// runs six decode steps for each batch of `schedule` (indices into `lens`) through
/// `Model::forward_step` on one cache and `Model::forward_step_graphed` on the other,
/// asking all, some or none of the final-norm rows and (with adapters) committing to all,
/// some or none of the adapted rows' deltas, asserting equal logits, rows and entries bit
/// for bit; returns the steps compared and the graphs held at the end. With `adapters`, sequence
/// `i` runs on [`SPECS`]' adapter in slot `adapters[i]`; slot 1 gets another adapter (rank
/// 16) before the third batch, and slot 2 one of rank 80 before the last batch.
fn graphed_vs_eager(
    block_size: usize,
    lens: &[usize],
    schedule: &[&[usize]],
    adapters: Option<&[Option<u32>]>,
) -> (usize, usize) {
    use openledger_engine::{BlockTable, KvCache, LoraSlots, SeqChunk};
    const STEPS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut json = wide_config();
    json["max_position_embeddings"] = 2048.into();
    let cfg = write_model_with(dir.path(), &json, MODEL_SEED);
    let gpu = cuda();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    let mut lora = match adapters {
        Some(_) => slots(dir.path(), &cfg, &gpu),
        None => LoraSlots::new(&cfg, &gpu, 1, false),
    };
    let adapter_of = |i: usize| adapters.and_then(|a| a[i]);
    let kc = KvCacheConfig { block_size, num_blocks: 2048 / block_size + 8 };
    let mut eager_cache = KvCache::for_model(kc, &model).unwrap();
    let mut graph_cache = KvCache::for_model(kc, &model).unwrap();
    let mut eager_tables = vec![BlockTable::default(); lens.len()];
    let mut graph_tables = vec![BlockTable::default(); lens.len()];
    let mut next = vec![0u32; lens.len()];
    for (i, &len) in lens.iter().enumerate() {
        let prompt: Vec<u32> = (0..len).map(|p| ((p * 31 + i * 7) % 256) as u32).collect();
        let steps = STEPS * schedule.iter().filter(|s| s.contains(&i)).count();
        for (cache, table) in
            [(&mut eager_cache, &mut eager_tables[i]), (&mut graph_cache, &mut graph_tables[i])]
        {
            cache.reserve(table, len + steps).unwrap();
            let chunk =
                SeqChunk { tokens: &prompt, table: &*table, start: 0, adapter: adapter_of(i) };
            let logits = model.forward(&[chunk], cache, &lora).unwrap();
            next[i] = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        }
    }
    let mut pos = lens.to_vec();
    let mut compared = 0;
    for (b, &seqs) in schedule.iter().enumerate() {
        let swap = match b {
            _ if adapters.is_none() => None,
            2 => Some((1, 16)),
            b if b == schedule.len() - 1 => Some((2, 80)),
            _ => None,
        };
        if let Some((slot, r)) = swap {
            let spec = AdapterSpec { r, ..SPECS[slot] };
            let a = write_adapter(&dir.path().join(format!("swap{slot}")), &cfg, &spec, 40);
            lora.install(slot as u32, &LoraAdapter::load(&a, &cfg, &Device::Cpu).unwrap()).unwrap();
        }
        let slot_of: Vec<Option<u32>> = (0..lens.len()).map(adapter_of).collect();
        for _ in 0..STEPS {
            let tokens: Vec<[u32; 1]> = seqs.iter().map(|&i| [next[i]]).collect();
            // The final-norm rows asked (a verifier's) and the rows committed to (activation
            // commitments, whose entries the graph computes): every row both, the odd rows
            // backwards both (gathered), or no rows and the first half committed (a prefix
            // of the graph's entries), in turn.
            let n = seqs.len() as u32;
            let (hidden_rows, commit_rows): (Vec<u32>, Vec<u32>) = match compared % 3 {
                0 => ((0..n).collect(), (0..n).collect()),
                1 => {
                    let odd: Vec<u32> = (0..n).filter(|r| r % 2 == 1).rev().collect();
                    (odd.clone(), odd)
                },
                _ => (Vec::new(), (0..n.div_ceil(2)).collect()),
            };
            // The adapter deltas committed to, as a generator asks them.
            let step_slots: Vec<Option<u32>> = seqs.iter().map(|&i| slot_of[i]).collect();
            let delta_commit = committed_deltas(&step_slots, compared);
            let rows = StepRows {
                hidden: &hidden_rows,
                commit: &commit_rows,
                delta_commit: &delta_commit,
                ..StepRows::default()
            };
            let want = model
                .forward_rows(
                    &decode_chunks(seqs, &tokens, &eager_tables, &pos, &slot_of),
                    &mut eager_cache,
                    &lora,
                    rows,
                    false,
                )
                .unwrap();
            let got = model
                .forward_rows(
                    &decode_chunks(seqs, &tokens, &graph_tables, &pos, &slot_of),
                    &mut graph_cache,
                    &lora,
                    rows,
                    true,
                )
                .unwrap();
            let (want_deltas, got_deltas) =
                (want.delta_entries.wait().unwrap(), got.delta_entries.wait().unwrap());
            assert_eq!(want_deltas.len(), delta_commit.len(), "step {compared}: committed deltas");
            assert_eq!(got_deltas, want_deltas, "step {compared}: graphed vs eager delta entries");
            // No rows asked gives a `[0, hidden]` tensor: candle's CUDA cast of zero elements
            // launches an empty grid (CUDA_ERROR_INVALID_VALUE), so it is not converted (the
            // engine's run_plan reads no rows then either).
            let f32_rows = |t: &Tensor| {
                if t.elem_count() == 0 {
                    return vec![Vec::new(); t.dim(0).unwrap()];
                }
                t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
            };
            let (want_hidden, got_hidden) = (f32_rows(&want.hidden), f32_rows(&got.hidden));
            assert_eq!(got_hidden.len(), hidden_rows.len(), "step {compared}: hidden rows");
            for (r, (w, g)) in want_hidden.iter().zip(&got_hidden).enumerate() {
                let differ = w.iter().zip(g).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "step {compared}, hidden row {r}: {differ} values differ");
            }
            // The entries computed on the device, graphed and eager, are the CPU encoding
            // of the very rows (where the rows were asked too).
            let (want_words, got_words) =
                (want.entries.wait().unwrap(), got.entries.wait().unwrap());
            assert_eq!(want_words.len(), commit_rows.len(), "step {compared}: committed rows");
            assert_eq!(got_words, want_words, "step {compared}: graphed vs eager entries");
            if hidden_rows == commit_rows {
                for (row, words) in want_hidden.iter().zip(&want_words) {
                    assert_eq!(&row_words(row).unwrap(), words, "step {compared}: encoding");
                }
            }
            let (want, got) = (f32_rows(&want.logits), f32_rows(&got.logits));
            for (r, (w, g)) in want.iter().zip(&got).enumerate() {
                let differ = w.iter().zip(g).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "step {compared}, row {r}: {differ} logits differ");
            }
            for (r, &i) in seqs.iter().enumerate() {
                let row = &want[r];
                next[i] = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32;
                pos[i] += 1;
            }
            compared += 1;
        }
    }
    (compared, model.decode_graphs())
}

/// The rows of a decode step (of rows on adapter `slots`) whose adapter deltas it commits to
/// at its `step % 3`: every adapted row, the adapted rows at odd indices backwards, none.
fn committed_deltas(slots: &[Option<u32>], step: usize) -> Vec<u32> {
    let adapted = (0..slots.len() as u32).filter(|&r| slots[r as usize].is_some());
    match step % 3 {
        0 => adapted.collect(),
        1 => adapted.filter(|r| r % 2 == 1).rev().collect(),
        _ => Vec::new(),
    }
}

/// One one-token chunk per sequence of `seqs`, at its position, on its adapter slot.
fn decode_chunks<'a>(
    seqs: &[usize],
    tokens: &'a [[u32; 1]],
    tables: &'a [openledger_engine::BlockTable],
    pos: &[usize],
    slots: &[Option<u32>],
) -> Vec<openledger_engine::SeqChunk<'a>> {
    seqs.iter()
        .zip(tokens)
        .map(|(&i, t)| openledger_engine::SeqChunk {
            tokens: t,
            table: &tables[i],
            start: pos[i],
            adapter: slots[i],
        })
        .collect()
}

/// The commitment entries computed on the device (`packed_top2`, what decode steps commit)
/// are the CPU encoding (`commitment::row_words`) of the same rows, bit for bit, in f32,
/// bf16 and f16, at widths from 2 to the encoding's widest (16,384 columns, the last one
/// addressed by all 14 index bits): random rows, rows with their largest magnitude twice
/// (a tie, + and -, far apart so that different threads hold them), NaN, infinities, zeros
/// of both signs, and values whose shortening rounds up (a tie to even included).
#[test]
fn cuda_commitment_entries_match_the_cpu_encoding() {
    use rand::{Rng, SeedableRng};
    let gpu = cuda();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let mut checked = 0;
    for &width in &[2usize, 3, 255, 256, 257, 576, 4096, 5000, MAX_DIMS] {
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for kind in 0..8 {
            let mut row: Vec<f32> = (0..width).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            let (a, b) = (rng.random_range(0..width), rng.random_range(0..width));
            match kind {
                // The largest magnitude at two columns, opposite signs.
                1 => {
                    row[a] = 9.5;
                    row[b] = -9.5;
                },
                // Every entry the same magnitude: the first two columns win.
                2 => row
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = if i % 2 == 0 { 1.5 } else { -1.5 }),
                3 => {
                    row[a] = f32::NAN;
                    row[b] = f32::INFINITY;
                },
                4 => row
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = if i % 3 == 0 { -0.0 } else { 0.0 }),
                // Shortening rounds: 1 + 2^-10 is a tie (to even), 1 + 3 x 2^-10 rounds up.
                5 => {
                    row[a] = 7.0 * (1.0 + 1.0 / 1024.0);
                    row[b] = -7.0 * (1.0 + 3.0 / 1024.0);
                },
                6 => row.iter_mut().for_each(|v| *v = f32::NAN),
                _ => {},
            }
            rows.push(row);
        }
        let flat: Vec<f32> = rows.concat();
        let host = Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            // The rows as the device holds them (rounded to the dtype), widened back.
            let held = host.to_dtype(dtype).unwrap();
            let want: Vec<Vec<f32>> = held.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            let words = packed_top2(&held.to_device(&gpu).unwrap(), DIM_BITS).unwrap();
            let got: Vec<Vec<u32>> = words.to_vec2().unwrap();
            for (k, (row, words)) in want.iter().zip(&got).enumerate() {
                assert_eq!(&row_words(row).unwrap(), words, "width {width}, {dtype:?}, row {k}");
                checked += 1;
            }
        }
    }
    // Rows the encoding cannot take are refused, not truncated.
    let wide = Tensor::zeros((1, MAX_DIMS + 1), DType::BF16, &gpu).unwrap();
    assert!(packed_top2(&wide, DIM_BITS).is_err());
    let narrow = Tensor::zeros((1, 1), DType::BF16, &gpu).unwrap();
    assert!(packed_top2(&narrow, DIM_BITS).is_err());
    eprintln!("{checked} rows: device entries = CPU encoding bit for bit");
}

/// Adapted requests on the GPU commit to their adapters' delta rows (at the middle layer, each
/// adapter's first target: q for a0 and a1, gate for a2). One prefill step of the five
/// sequences: the device's delta entries are the CPU encoding of the delta rows the same step
/// returns whole, and those rows are the host f32 path's within bf16 rounding (the same layer,
/// projection and adapter). Then the engine: every honest claim verifies in a prefill on the
/// same GPU within the bf16 tolerance, with its delta picks compared, while a zero delta (the
/// adapter skipped) or another adapter's claim is refused on the delta entries.
#[test]
fn cuda_adapter_delta_commitments_verify_and_catch_skipped_or_swapped_adapters() {
    use openledger_engine::commitment::{encoded_len, DELTA_PICKS, TOP_K};
    use openledger_engine::{NumericFormat, StreamEvent, Tolerance};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    let specs = seqs();
    let mut asked = Vec::new();
    let mut offset = 0u32;
    for s in &specs {
        if s.slot.is_some() {
            asked.extend(offset..offset + s.prompt.len() as u32);
        }
        offset += s.prompt.len() as u32;
    }
    asked.reverse();
    let mut deltas = Vec::new();
    for device in [Device::Cpu, gpu.clone()] {
        let model = Model::load_hf(dir.path(), &device).unwrap();
        let lora = slots(dir.path(), &cfg, &device);
        let kc = KvCacheConfig { block_size: 16, num_blocks: 32 };
        let rows = StepRows { delta: &asked, delta_commit: &asked, ..StepRows::default() };
        let out = batch::prompt_step(&model, &lora, &specs, kc, rows);
        let words = out.delta_entries.wait().unwrap();
        assert_eq!((out.delta.len(), words.len()), (asked.len(), asked.len()));
        for (row, w) in out.delta.iter().zip(&words) {
            assert!(row.iter().any(|v| *v != 0.0), "a zero delta row");
            assert_eq!(&row_words(row).unwrap(), w, "{device:?}: entries of the delta row");
        }
        let widths: std::collections::BTreeSet<usize> = out.delta.iter().map(Vec::len).collect();
        let (q, gate) = (cfg.proj_dims(Projection::Q).1, cfg.proj_dims(Projection::Gate).1);
        assert_eq!(widths, [q, gate].into_iter().collect(), "q rows and gate rows");
        deltas.push(out.delta);
    }
    let (mut err, mut norm) = (0f64, 0f64);
    for (c, g) in deltas[0].iter().zip(&deltas[1]) {
        assert_eq!(c.len(), g.len());
        for (a, b) in c.iter().zip(g) {
            err += f64::from(a - b).powi(2);
            norm += f64::from(*a).powi(2);
        }
    }
    let rel = (err / norm).sqrt();
    eprintln!("GPU delta rows vs the host f32 path: rms relative error {rel:.3e}");
    assert!(rel < 0.05, "the GPU's delta rows are not the host's: {rel}");

    let tok = openledger_engine::load_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: 64 },
        max_running: 8,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, tok, config).unwrap();
    for i in 0..SPECS.len() {
        engine.register_adapter(&format!("a{i}"), &dir.path().join(format!("a{i}"))).unwrap();
    }
    const TOKENS: usize = 40;
    let params = SamplingParams { max_tokens: TOKENS, ignore_eos: true, ..Default::default() };
    let adapter = |s: &SeqSpec| s.slot.map(|k| format!("a{k}"));
    let rxs: Vec<_> = specs
        .iter()
        .map(|s| engine.submit_tokens(s.prompt.clone(), adapter(s), params.clone()).unwrap().1)
        .collect();
    engine.run_until_idle().unwrap();
    let mut served = Vec::new();
    for (rx, s) in rxs.iter().zip(&specs) {
        let mut output = Vec::new();
        let mut commitment = None;
        for ev in rx.try_iter() {
            match ev {
                StreamEvent::Token { id, .. } => output.push(id),
                StreamEvent::Finished { activations, .. } => commitment = activations,
                other => panic!("unexpected {other:?}"),
            }
        }
        let c = commitment.expect("a commitment");
        assert_eq!(output.len(), TOKENS);
        assert_eq!(c.is_adapted(), s.slot.is_some());
        assert_eq!(c.as_bytes().len(), encoded_len(TOKENS, s.slot.is_some()));
        served.push((output, c));
    }
    let tol = Tolerance::for_format(NumericFormat::CudaBf16);
    let zero = row_words(&[0.0; 8]).unwrap();
    // Claims: each honest one, then the adapted ones with a zero delta, then each adapted
    // output claimed with the next adapter.
    let mut claims = Vec::new();
    for ((o, c), s) in served.iter().zip(&specs) {
        claims.push(("honest", s, o, adapter(s), c.clone()));
    }
    for ((o, c), s) in served.iter().zip(&specs).filter(|(_, s)| s.slot.is_some()) {
        claims.push(("adapter skipped", s, o, adapter(s), c.with_every_delta(o, &zero)));
        let next = s.slot.map(|k| format!("a{}", (k + 1) % SPECS.len() as u32));
        let other = ActivationCommitment::from_bytes(c.as_bytes().to_vec(), true).unwrap();
        claims.push(("another adapter", s, o, next, other));
    }
    let rxs: Vec<_> = claims
        .iter()
        .map(|(_, s, o, a, c)| {
            engine.submit_verification(&s.prompt, o, a.clone(), c.clone(), tol, None).unwrap().1
        })
        .collect();
    engine.run_until_idle().unwrap();
    for ((what, s, ..), rx) in claims.iter().zip(&rxs) {
        let r = match rx.try_iter().next() {
            Some(StreamEvent::Verified(r)) => r,
            other => panic!("expected a verification report, got {other:?}"),
        };
        eprintln!("{what} (adapter {:?}): {}", s.slot, r.summary());
        match *what {
            "honest" => {
                // Two chunks, DELTA_PICKS delta rows each.
                let deltas = if s.slot.is_some() { 2 * DELTA_PICKS * TOP_K } else { 0 };
                assert_eq!(r.delta_entries, deltas, "{r:?}");
                assert!(r.passes(&tol), "an honest claim refused: {r:?}");
            },
            _ => {
                assert_eq!(r.delta_entries, 2 * DELTA_PICKS * TOP_K, "{r:?}");
                assert!(
                    r.delta_index_mismatches + r.delta_value_mismatches >= r.delta_entries / 2,
                    "{r:?}"
                );
                assert!(!r.passes(&tol), "{what} passed: {r:?}");
            },
        }
    }
}

/// Decode steps launched before the previous step's picks are read (on by default on a
/// GPU; with graphs the follower takes its tokens from the device): the five requests of
/// `seqs()` with their adapters and commitments, asking 24 to 20 tokens, stream exactly the
/// events (tokens, text, commitments) they stream with overlap off, and with graphs on
/// every decode step but the first after each change of the batch is launched ahead.
#[test]
fn cuda_overlapped_decode_streams_what_it_does_without() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = cuda();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let tok_path = dir.path().join("tokenizer.json");
    let (mut events, mut overlapped) = (Vec::new(), Vec::new());
    for overlap in [false, true] {
        let model = Model::load_hf(dir.path(), &gpu).unwrap();
        let tok = openledger_engine::load_tokenizer(&tok_path).unwrap();
        let config = EngineConfig {
            kv_cache: KvCacheConfig { block_size: 16, num_blocks: 64 },
            overlap_decode: Some(overlap),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(model, tok, config).unwrap();
        for (i, spec) in SPECS.iter().enumerate() {
            let a = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 20 + i as u64);
            engine.register_adapter(&format!("a{i}"), &a).unwrap();
        }
        let rx: Vec<_> = seqs()
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let params =
                    SamplingParams { max_tokens: 24 - i, ignore_eos: true, ..Default::default() };
                let adapter = s.slot.map(|k| format!("a{k}"));
                engine.submit_tokens(s.prompt, adapter, params).unwrap().1
            })
            .collect();
        engine.run_until_idle().unwrap();
        let status = engine.status();
        assert_eq!(status.kv_free_blocks + 1, status.kv_blocks, "all but the padding block");
        overlapped.push(status.overlapped_steps);
        events.push(rx.iter().map(|r| r.try_iter().collect::<Vec<_>>()).collect::<Vec<_>>());
    }
    let graphs = openledger_kernels::options::options().cuda_graphs;
    eprintln!(
        "steps launched ahead: off {}, on {} (graphs {graphs})",
        overlapped[0], overlapped[1]
    );
    assert_eq!(overlapped[0], 0);
    assert_eq!(overlapped[1] > 10, graphs, "steps launched ahead exactly when graphs are on");
    for (i, (a, b)) in events[0].iter().zip(&events[1]).enumerate() {
        assert_eq!(a.len(), 24 - i + 1, "request {i}: its tokens and the final event");
        assert_eq!(a, b, "request {i}");
    }
}
