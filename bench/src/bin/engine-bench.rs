//! CPU serving benchmark of the engine (issue 11, `docs/benchmarks.md`): prefill of one long
//! prompt, single-sequence decode, aggregate decode of many concurrent sequences, with and
//! without one distinct LoRA adapter per sequence. Prints one JSON object per measurement
//! (what `scripts/bench-cpu.sh` tabulates next to llama.cpp's figures).
//!
//! Every figure is the median of `--repeat` runs on a freshly loaded engine state (KV cache
//! emptied between runs). Prompts are token ids, so lengths are exact.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use openledger_bench::harness::{median, peak_rss_mib, phases_json};
use openledger_engine::write_random_adapter;
use openledger_engine::{
    AdapterCacheConfig, Engine, EngineConfig, KvCacheConfig, ModelSource, Projection,
    SamplingParams, StepPhases, StreamEvent,
};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Engine CPU benchmark: prefill, decode, aggregate decode, adapters")]
struct Args {
    /// GGUF model (default: the embedded SmolLM2-135M-Instruct Q4_1).
    #[arg(long, env = "OPENLEDGER_MODEL")]
    model: PathBuf,
    /// Worker threads (rayon).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt tokens of the prefill and single-decode runs.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 128)]
    generate: usize,
    /// Prompt tokens per sequence in the aggregate runs.
    #[arg(long, default_value_t = 64)]
    batch_prompt: usize,
    /// Concurrent sequences of the aggregate runs.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    batch: Vec<usize>,
    /// Rank of the synthetic adapters (one per sequence, all seven projections).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Do not commit to the activations (the default commits, as a worker does): run both
    /// ways to measure the commitment's cost.
    #[arg(long)]
    no_commit: bool,
    /// Sampling temperature of the decode runs (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling's `top_p` of the decode runs (with a temperature).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Only these measurements (prefill, decode, aggregate, adapters).
    #[arg(long, value_delimiter = ',', default_value = "prefill,decode,aggregate,adapters")]
    only: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let max_seqs = args.batch.iter().copied().max().unwrap_or(1).max(1);
    let per_seq = args.prompt.max(args.batch_prompt) + args.generate + 16;
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: max_seqs * per_seq.div_ceil(16) },
        adapters: AdapterCacheConfig {
            compute_slots: max_seqs,
            host_bytes: 4 << 30,
            ..AdapterCacheConfig::default()
        },
        max_batch_tokens: args.prompt.max(512),
        max_prefill_chunk: 0,
        max_running: max_seqs,
        threads: args.threads,
        commit_activations: !args.no_commit,
        ..EngineConfig::default()
    };
    let t = Instant::now();
    let mut engine = Engine::load(&ModelSource::Gguf(args.model.clone()), config, &Device::Cpu)
        .with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!("loaded {} in {:.1} s", args.model.display(), t.elapsed().as_secs_f64());
    let vocab = engine.model().config().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut prompt =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(100..vocab)).collect() };
    let wants = |m: &str| args.only.iter().any(|o| o == m);

    if wants("prefill") {
        let p = prompt(args.prompt);
        let runs = (0..args.repeat)
            .map(|_| {
                let params =
                    SamplingParams { max_tokens: 1, ignore_eos: true, ..Default::default() };
                let rx = vec![engine.submit_tokens(p.clone(), None, params)?.1];
                let t = Instant::now();
                engine.run_until_idle()?;
                let secs = t.elapsed().as_secs_f64();
                check_finished(&rx, 1)?;
                Ok(args.prompt as f64 / secs)
            })
            .collect::<Result<Vec<f64>>>()?;
        report("prefill", 1, false, args.prompt, &runs, args.threads, None);
    }
    if wants("decode") {
        let p = prompt(args.prompt);
        let runs = (0..args.repeat)
            .map(|_| decode_rate(&mut engine, vec![(p.clone(), None)], &args))
            .collect::<Result<Vec<_>>>()?;
        report_decode("decode", 1, false, args.prompt, &runs, args.threads);
    }
    let adapters = if wants("adapters") {
        let dir = tempfile::tempdir()?;
        let cfg = engine.model().config().clone();
        for i in 0..max_seqs {
            let path = dir.path().join(format!("a{i}"));
            write_random_adapter(&path, &cfg, args.rank, &Projection::ALL, i as u64)?;
            engine.register_adapter(&format!("a{i}"), &path)?;
        }
        Some(dir)
    } else {
        None
    };
    for &n in &args.batch {
        for with_adapters in [false, true] {
            if !(if with_adapters { adapters.is_some() } else { wants("aggregate") }) {
                continue;
            }
            let seqs: Vec<_> = (0..n)
                .map(|i| (prompt(args.batch_prompt), with_adapters.then(|| format!("a{i}"))))
                .collect();
            let runs = (0..args.repeat)
                .map(|_| decode_rate(&mut engine, seqs.clone(), &args))
                .collect::<Result<Vec<_>>>()?;
            report_decode("aggregate", n, with_adapters, args.batch_prompt, &runs, args.threads);
        }
    }
    println!(
        "{{\"engine\":\"openledger\",\"peak_rss_mib\":{:.1},\"threads\":{}}}",
        peak_rss_mib(),
        args.threads
    );
    Ok(())
}

/// Decode tokens per second of all `seqs` together: generated tokens after each sequence's
/// first, over the time from the step that completed the last prefill to the end; and the
/// phases of those steps, summed, with their count.
fn decode_rate(
    engine: &mut Engine,
    seqs: Vec<(Vec<u32>, Option<String>)>,
    args: &Args,
) -> Result<(f64, StepPhases, usize)> {
    let generate = args.generate;
    let params = SamplingParams {
        max_tokens: generate,
        ignore_eos: true,
        temperature: args.temperature,
        top_p: args.top_p,
        ..Default::default()
    };
    let n = seqs.len();
    let rx = seqs
        .into_iter()
        .map(|(p, a)| Ok(engine.submit_tokens(p, a, params.clone())?.1))
        .collect::<Result<Vec<_>>>()?;
    let mut got = vec![0usize; n];
    let mut start = None;
    let (mut phases, mut steps) = (StepPhases::default(), 0);
    while !engine.is_idle() {
        let report = engine.step()?;
        if start.is_some() {
            phases += report.phases;
            steps += 1;
        }
        for (g, r) in got.iter_mut().zip(&rx) {
            *g += r.try_iter().filter(|e| matches!(e, StreamEvent::Token { .. })).count();
        }
        if start.is_none() && got.iter().all(|&g| g >= 1) {
            start = Some((Instant::now(), got.iter().sum::<usize>()));
        }
    }
    let Some((t0, base)) = start else { bail!("no sequence produced a token") };
    let secs = t0.elapsed().as_secs_f64();
    let total: usize = got.iter().sum();
    if total != n * generate {
        bail!("{total} tokens generated, {} expected", n * generate);
    }
    Ok(((total - base) as f64 / secs, phases, steps))
}

fn check_finished(rx: &[Receiver<StreamEvent>], tokens: usize) -> Result<()> {
    for r in rx {
        let n = r.try_iter().filter(|e| matches!(e, StreamEvent::Token { .. })).count();
        if n != tokens {
            bail!("{n} tokens streamed, {tokens} expected");
        }
    }
    Ok(())
}

/// One JSON line: the median rate of `runs`, the runs, and (decode) the steps' phases.
fn report(
    what: &str,
    seqs: usize,
    adapters: bool,
    prompt: usize,
    runs: &[f64],
    threads: usize,
    phases: Option<String>,
) {
    let mut sorted = runs.to_vec();
    let median = median(&mut sorted);
    let phases = phases.map(|p| format!(",\"phases_us\":{p}")).unwrap_or_default();
    println!(
        "{{\"engine\":\"openledger\",\"measure\":\"{what}\",\"sequences\":{seqs},\"adapters\":{adapters},\"prompt\":{prompt},\"tok_per_s\":{median:.1},\"runs\":{sorted:?},\"threads\":{threads}{phases}}}"
    );
}

/// [`report`] of decode runs, with the mean phases of all their measured steps.
fn report_decode(
    what: &str,
    seqs: usize,
    adapters: bool,
    prompt: usize,
    runs: &[(f64, StepPhases, usize)],
    threads: usize,
) {
    let (mut phases, mut steps) = (StepPhases::default(), 0);
    for &(_, p, n) in runs {
        phases += p;
        steps += n;
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
    report(what, seqs, adapters, prompt, &rates, threads, Some(phases_json(&phases, steps)));
}
