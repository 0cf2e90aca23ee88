//! With an adapter, the engine's logits match a straightforward f64 reference that merges the
//! LoRA delta into the base weights and recomputes the whole prefix without a cache.

use openledger_testkit as common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use common::{write_adapter, write_model, AdapterSpec};
use openledger_engine::{
    BlockTable, KvCache, KvCacheConfig, LoraAdapter, LoraSlots, Model, ModelConfig, Projection,
    SeqChunk,
};

type Mat = Vec<Vec<f64>>;

/// `v` rounded to bf16 (nearest even), as a value.
fn to_bf16(v: f64) -> f64 {
    half::bf16::from_f32(v as f32).to_f32() as f64
}

fn load(path: &Path) -> HashMap<String, Mat> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    t.into_iter()
        .map(|(k, v)| {
            let m = match v.rank() {
                1 => vec![v.to_vec1::<f32>().unwrap()],
                _ => v.to_vec2::<f32>().unwrap(),
            };
            (k, m.into_iter().map(|r| r.into_iter().map(f64::from).collect()).collect())
        })
        .collect()
}

/// `x @ w^T` with `w` `[out][in]`.
fn linear(x: &Mat, w: &Mat) -> Mat {
    x.iter()
        .map(|r| w.iter().map(|wr| r.iter().zip(wr).map(|(a, b)| a * b).sum()).collect())
        .collect()
}

fn rms_norm(x: &Mat, w: &[f64], eps: f64) -> Mat {
    x.iter()
        .map(|r| {
            let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            r.iter().zip(w).map(|(v, g)| v * inv * g).collect()
        })
        .collect()
}

/// Rotates each head (pairs `i`, `i + d/2`, as Hugging Face Llama does).
fn rope(x: &mut Mat, heads: usize, d: usize, theta: f64) {
    for (pos, row) in x.iter_mut().enumerate() {
        for h in 0..heads {
            for i in 0..d / 2 {
                let f = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
                let (a, b) = (row[h * d + i], row[h * d + i + d / 2]);
                row[h * d + i] = a * f.cos() - b * f.sin();
                row[h * d + i + d / 2] = a * f.sin() + b * f.cos();
            }
        }
    }
}

/// Logits of the last position of `tokens`, with weights `w + scale * B @ A` merged in.
fn reference(
    cfg: &ModelConfig,
    base: &HashMap<String, Mat>,
    adapter: Option<(&HashMap<String, Mat>, f64)>,
    tokens: &[u32],
) -> Vec<f64> {
    let weight = |l: usize, p: Projection| -> Mat {
        let mut w = base[&format!("model.layers.{l}.{}.weight", p.hf_path())].clone();
        if let Some((a, scale)) = adapter {
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            if let (Some(la), Some(lb)) =
                (a.get(&format!("{pre}.lora_A.weight")), a.get(&format!("{pre}.lora_B.weight")))
            {
                for (o, row) in w.iter_mut().enumerate() {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v += scale * (0..la.len()).map(|j| lb[o][j] * la[j][i]).sum::<f64>();
                    }
                }
            }
        }
        w
    };
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let emb = &base["model.embed_tokens.weight"];
    let mut x: Mat = tokens.iter().map(|&t| emb[t as usize].clone()).collect();
    let n = tokens.len();
    for l in 0..cfg.num_layers {
        let h = rms_norm(
            &x,
            &base[&format!("model.layers.{l}.input_layernorm.weight")][0],
            cfg.rms_norm_eps,
        );
        let mut q = linear(&h, &weight(l, Projection::Q));
        let mut k = linear(&h, &weight(l, Projection::K));
        let v = linear(&h, &weight(l, Projection::V));
        rope(&mut q, nh, d, cfg.rope_theta as f64);
        rope(&mut k, nkv, d, cfg.rope_theta as f64);
        let mut attn = vec![vec![0.0; nh * d]; n];
        for i in 0..n {
            for hh in 0..nh {
                let kv = hh / (nh / nkv);
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d).map(|e| q[i][hh * d + e] * k[j][kv * d + e]).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    for e in 0..d {
                        attn[i][hh * d + e] += (s - m).exp() / z * v[j][kv * d + e];
                    }
                }
            }
        }
        let o = linear(&attn, &weight(l, Projection::O));
        for (xr, or) in x.iter_mut().zip(&o) {
            xr.iter_mut().zip(or).for_each(|(a, b)| *a += b);
        }
        let h = rms_norm(
            &x,
            &base[&format!("model.layers.{l}.post_attention_layernorm.weight")][0],
            cfg.rms_norm_eps,
        );
        let g = linear(&h, &weight(l, Projection::Gate));
        let u = linear(&h, &weight(l, Projection::Up));
        let act: Mat = g
            .iter()
            .zip(&u)
            .map(|(gr, ur)| gr.iter().zip(ur).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect())
            .collect();
        let dn = linear(&act, &weight(l, Projection::Down));
        for (xr, dr) in x.iter_mut().zip(&dn) {
            xr.iter_mut().zip(dr).for_each(|(a, b)| *a += b);
        }
    }
    let last =
        rms_norm(&[x[n - 1].clone()].to_vec(), &base["model.norm.weight"][0], cfg.rms_norm_eps);
    linear(&last, &base["lm_head.weight"]).remove(0)
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

/// Runs `tokens` through the engine as prefill chunks of `chunk` then single decode steps
/// from `decode_from`, returning the logits after each step.
fn engine_logits(
    model: &Model,
    lora: &LoraSlots,
    slot: Option<u32>,
    tokens: &[u32],
    chunk: usize,
) -> Vec<(usize, Vec<f32>)> {
    let cfg = model.config();
    let mut cache = KvCache::new(
        KvCacheConfig { block_size: 4, num_blocks: 16 },
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    let mut table = BlockTable::default();
    cache.reserve(&mut table, tokens.len()).unwrap();
    let mut out = Vec::new();
    let mut done = 0;
    while done < tokens.len() {
        let n = if done == 0 { chunk.min(tokens.len()) } else { 1 };
        let c =
            SeqChunk { tokens: &tokens[done..done + n], table: &table, start: done, adapter: slot };
        let logits = model.forward(&[c], &mut cache, lora).unwrap();
        done += n;
        out.push((done, logits.to_vec2::<f32>().unwrap().remove(0)));
    }
    out
}

#[test]
fn adapter_logits_match_merged_f32_reference() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 1);
    let model = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let base = load(&dir.path().join("model.safetensors"));
    let tokens: Vec<u32> = vec![72, 101, 108, 108, 111, 44, 32, 119, 111, 114];
    let cases = [
        (AdapterSpec { r: 4, alpha: 8.0, rslora: false, targets: &Projection::ALL }, 2.0),
        (
            AdapterSpec {
                r: 9,
                alpha: 6.0,
                rslora: true,
                targets: &[Projection::V, Projection::Up],
            },
            2.0,
        ),
    ];
    let mut lora = LoraSlots::new(&cfg, &Device::Cpu, 4, false);
    for (i, (spec, scale)) in cases.iter().enumerate() {
        let adir = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 10 + i as u64);
        let adapter = LoraAdapter::load(&adir, &cfg, &Device::Cpu).unwrap();
        assert!((adapter.scale() as f64 - scale).abs() < 1e-6, "scale {}", adapter.scale());
        lora.install(i as u32 + 1, &adapter).unwrap();
        // The engine keeps adapters in bf16: the reference uses the same rounded weights.
        let aw: HashMap<String, Mat> = load(&adir.join("adapter_model.safetensors"))
            .into_iter()
            .map(|(k, m)| {
                (k, m.into_iter().map(|r| r.into_iter().map(to_bf16).collect()).collect())
            })
            .collect();
        for chunk in [tokens.len(), 6, 1] {
            for (len, got) in engine_logits(&model, &lora, Some(i as u32 + 1), &tokens, chunk) {
                let want = reference(&cfg, &base, Some((&aw, *scale)), &tokens[..len]);
                let without = reference(&cfg, &base, None, &tokens[..len]);
                let tol = 1e-3 * want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let err = max_diff(&got, &want);
                assert!(
                    err < tol,
                    "adapter {i}, chunk {chunk}, len {len}: max error {err} > {tol}"
                );
                let effect = max_diff(&got, &without);
                assert!(effect > 20.0 * tol, "adapter {i} barely changes the logits ({effect})");
            }
        }
    }
    // No adapter: the base model alone matches the unmerged reference.
    for (len, got) in engine_logits(&model, &lora, None, &tokens, 4) {
        let want = reference(&cfg, &base, None, &tokens[..len]);
        let tol = 1e-3 * want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(max_diff(&got, &want) < tol, "base, len {len}");
    }
}
