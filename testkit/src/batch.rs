//! A fixed batch schedule driven straight through `Model::forward`: sequences join one step
//! apart, prefill in chunks and then decode, so most steps mix prefill chunks with decode
//! tokens and several adapters. Used to compare two backends on identical inputs.

use candle_core::Device;
use openledger_engine::{
    BlockTable, KvCache, KvCacheConfig, LoraAdapter, LoraSlots, Model, ModelConfig, Projection,
    SeqChunk, StepOutput, StepRows,
};

use crate::{write_adapter, AdapterSpec};

/// One sequence of the schedule: its prompt and adapter slot.
#[derive(Clone)]
pub struct SeqSpec {
    pub prompt: Vec<u32>,
    pub slot: Option<u32>,
}

/// The logits row of one chunk's last token.
pub struct Row {
    pub step: usize,
    pub seq: usize,
    /// Tokens of the sequence processed after this step.
    pub len: usize,
    pub logits: Vec<f32>,
}

/// What a run produced: every chunk's logits and the tokens generated per sequence.
pub struct Run {
    pub rows: Vec<Row>,
    pub generated: Vec<Vec<u32>>,
    /// Per sequence and generated token: (top-1 - top-2 logit) / max |logit| of the row it
    /// was chosen from, how far the greedy choice is from a tie.
    pub margins: Vec<Vec<f64>>,
    /// Per sequence and generated token: the index in `rows` of the row it was chosen from.
    pub gen_rows: Vec<Vec<usize>>,
}

/// `(top1 - top2) / max |v|`.
pub fn margin(v: &[f32]) -> f64 {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let scale = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    (s[0] - s.get(1).copied().unwrap_or(f32::NEG_INFINITY)) as f64 / scale.max(1e-30)
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Runs `seqs` (sequence `i` joins at step `i`, prefills `chunk` tokens per step, then
/// decodes) until each has generated `generate` tokens. Generated tokens are the greedy
/// choice of this run's logits, or `forced[i]` when given (so that a second backend sees
/// exactly the first one's inputs).
pub fn run(
    model: &Model,
    lora: &LoraSlots,
    seqs: &[SeqSpec],
    chunk: usize,
    generate: usize,
    block_size: usize,
    forced: Option<&[Vec<u32>]>,
) -> Run {
    let longest = seqs.iter().map(|s| s.prompt.len()).max().unwrap_or(0) + generate;
    let blocks = seqs.len() * longest.div_ceil(block_size);
    let mut cache =
        KvCache::for_model(KvCacheConfig { block_size, num_blocks: blocks + 1 }, model).unwrap();
    let mut tokens: Vec<Vec<u32>> = seqs.iter().map(|s| s.prompt.clone()).collect();
    let mut tables: Vec<BlockTable> = vec![BlockTable::default(); seqs.len()];
    for (t, s) in tables.iter_mut().zip(seqs) {
        cache.reserve(t, s.prompt.len() + generate).unwrap();
    }
    let mut done = vec![0usize; seqs.len()];
    let mut generated = vec![Vec::new(); seqs.len()];
    let mut margins = vec![Vec::new(); seqs.len()];
    let mut gen_rows = vec![Vec::new(); seqs.len()];
    let mut rows = Vec::new();
    for step in 0.. {
        let plan: Vec<(usize, usize)> = (0..seqs.len())
            .filter(|&i| i <= step && generated[i].len() < generate)
            .map(|i| (i, (tokens[i].len() - done[i]).min(chunk)))
            .collect();
        if plan.is_empty() {
            break;
        }
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|&(i, n)| SeqChunk {
                tokens: &tokens[i][done[i]..done[i] + n],
                table: &tables[i],
                start: done[i],
                adapter: seqs[i].slot,
            })
            .collect();
        let logits = model.forward(&chunks, &mut cache, lora).unwrap().to_vec2::<f32>().unwrap();
        drop(chunks);
        for (&(i, n), row) in plan.iter().zip(logits) {
            done[i] += n;
            if done[i] == tokens[i].len() {
                let next = match forced {
                    Some(f) => f[i][generated[i].len()],
                    None => argmax(&row),
                };
                generated[i].push(next);
                margins[i].push(margin(&row));
                gen_rows[i].push(rows.len());
                tokens[i].push(next);
            }
            rows.push(Row { step, seq: i, len: done[i], logits: row });
        }
    }
    Run { rows, generated, margins, gen_rows }
}

/// Per row of two runs of the same schedule: `max |a - b| / max |a|`.
pub fn row_errors(a: &Run, b: &Run) -> Vec<f64> {
    assert_eq!(a.rows.len(), b.rows.len(), "the runs have different schedules");
    a.rows
        .iter()
        .zip(&b.rows)
        .map(|(x, y)| {
            assert_eq!((x.step, x.seq, x.len), (y.step, y.seq, y.len));
            let scale = x.logits.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let diff = x
                .logits
                .iter()
                .zip(&y.logits)
                .fold(0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()));
            diff / scale.max(1e-30)
        })
        .collect()
}

/// Largest `max |a - b| / max |a|` over the rows of two runs of the same schedule.
pub fn max_relative_error(a: &Run, b: &Run) -> f64 {
    row_errors(a, b).into_iter().fold(0.0, f64::max)
}

/// Root mean square of `(a - b) / max |a|` over every logit of every row.
pub fn rms_relative_error(a: &Run, b: &Run) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in a.rows.iter().zip(&b.rows) {
        let scale = x.logits.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
        for (p, q) in x.logits.iter().zip(&y.logits) {
            sum += ((*p as f64 - *q as f64) / scale).powi(2);
            n += 1;
        }
    }
    (sum / n.max(1) as f64).sqrt()
}

/// Per sequence of `reference`, how many of its first generated tokens are well-conditioned:
/// chosen from a row whose top-2 margin exceeds twice that row's error in `other` (the same
/// schedule on the same inputs), so that no error of that size could have flipped them.
pub fn well_conditioned_prefix(reference: &Run, other: &Run) -> Vec<usize> {
    let errors = row_errors(reference, other);
    reference
        .margins
        .iter()
        .zip(&reference.gen_rows)
        .map(|(m, rows)| m.iter().zip(rows).take_while(|(m, &r)| **m > 2.0 * errors[r]).count())
        .collect()
}

/// A shape the paged decode kernel takes: 4 query heads of 64 over 2 KV heads.
pub fn wide_config() -> serde_json::Value {
    let mut c = super::config_json();
    c["hidden_size"] = 256.into();
    c["intermediate_size"] = 384.into();
    c["num_attention_heads"] = 4.into();
    c["num_key_value_heads"] = 2.into();
    c
}

/// Three adapters of ranks 4, 8 and 16 on different projections.
pub const SPECS: [AdapterSpec<'static>; 3] = [
    AdapterSpec { r: 4, alpha: 8.0, rslora: false, targets: &Projection::ALL },
    AdapterSpec { r: 8, alpha: 8.0, rslora: false, targets: &[Projection::Q, Projection::V] },
    AdapterSpec {
        r: 16,
        alpha: 16.0,
        rslora: true,
        targets: &[Projection::Gate, Projection::Up, Projection::Down],
    },
];

/// The adapters of [`SPECS`] (written from seeds 20, 21, 22) in slots 0-2 on `device`.
pub fn slots(dir: &std::path::Path, cfg: &ModelConfig, device: &Device) -> LoraSlots {
    let mut lora = LoraSlots::new(cfg, device, 4, false);
    for (i, spec) in SPECS.iter().enumerate() {
        let a = write_adapter(&dir.join(format!("a{i}")), cfg, spec, 20 + i as u64);
        lora.install(i as u32, &LoraAdapter::load(&a, cfg, &Device::Cpu).unwrap()).unwrap();
    }
    lora
}

/// Five sequences of different prompt lengths over the three adapters and none.
pub fn seqs() -> Vec<SeqSpec> {
    let prompt = |n: usize, k: u32| (0..n as u32).map(|i| (i * 37 + k * 11) % 256).collect();
    vec![
        SeqSpec { prompt: prompt(7, 1), slot: Some(0) },
        SeqSpec { prompt: prompt(12, 2), slot: Some(1) },
        SeqSpec { prompt: prompt(1, 3), slot: None },
        SeqSpec { prompt: prompt(9, 4), slot: Some(2) },
        SeqSpec { prompt: prompt(5, 5), slot: Some(0) },
    ]
}

/// Every sequence's whole prompt as one step (each with its adapter slot) through
/// `Model::forward_rows`, eagerly, on a fresh cache of `kc` made for `model` with each
/// prompt's positions reserved: the batch that the tests comparing a step's rows across
/// backends set up.
pub fn prompt_step(
    model: &Model,
    lora: &LoraSlots,
    seqs: &[SeqSpec],
    kc: KvCacheConfig,
    rows: StepRows<'_>,
) -> StepOutput {
    let mut cache = KvCache::for_model(kc, model).unwrap();
    let mut tables = vec![BlockTable::default(); seqs.len()];
    for (t, s) in tables.iter_mut().zip(seqs) {
        cache.reserve(t, s.prompt.len()).unwrap();
    }
    let chunks: Vec<SeqChunk<'_>> = seqs
        .iter()
        .zip(&tables)
        .map(|(s, t)| SeqChunk { tokens: &s.prompt, table: t, start: 0, adapter: s.slot })
        .collect();
    model.forward_rows(&chunks, &mut cache, lora, rows, false).unwrap()
}
