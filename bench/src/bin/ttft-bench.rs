//! Time to first token of short requests beside a long prompt (`docs/benchmarks.md`, "Time
//! to first token beside a long prompt"), on the CPU engine.
//!
//! Three figures: the time to first token of a short request on an idle engine; the time of
//! each step of a long prompt's prefill alone (one prefill chunk each); and the time to first
//! token of short requests that arrive while the long prompt is being prefilled.
//!
//! Arrivals are simulated the way the worker's engine thread sees them: a request that
//! arrives during a step is admitted when the step ends, and its time to first token runs
//! from its arrival (so it includes the rest of the step in flight) to the end of the step
//! that samples its first token. Prompts are random token ids, so lengths are exact.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use openledger_bench::harness::{median, ms};
use openledger_engine::{
    Engine, EngineConfig, KvCacheConfig, ModelSource, SamplingParams, StreamEvent,
};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Time to first token of short requests beside a long prompt's prefill")]
struct Args {
    /// GGUF model (default: the embedded SmolLM2-135M-Instruct Q4_1).
    #[arg(long, env = "OPENLEDGER_MODEL")]
    model: PathBuf,
    /// Engine threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt tokens of the long request (it generates one token).
    #[arg(long, default_value_t = 8000)]
    long: usize,
    /// Prompt tokens of each short request (each generates one token).
    #[arg(long, default_value_t = 16)]
    short: usize,
    /// Short requests arriving during the long prefill, one every `--every` seconds.
    #[arg(long, default_value_t = 4)]
    shorts: usize,
    /// Seconds between short arrivals (the first arrives this long after the long prompt).
    #[arg(long, default_value_t = 5.3)]
    every: f64,
    /// Token rows per step (the engine's `max_batch_tokens`).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Prompt tokens one sequence may prefill per step (0: the whole step budget).
    #[arg(long, default_value_t = 0)]
    max_prefill_chunk: usize,
    /// Idle runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let blocks = (args.long + args.shorts * (args.short + 2) + 64).div_ceil(16);
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: blocks },
        max_batch_tokens: args.max_batch_tokens,
        max_prefill_chunk: args.max_prefill_chunk,
        threads: args.threads,
        ..EngineConfig::default()
    };
    let mut engine = Engine::load(&ModelSource::Gguf(args.model.clone()), config, &Device::Cpu)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let vocab = engine.model().config().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut prompt =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(100..vocab)).collect() };
    let one = SamplingParams { max_tokens: 1, ignore_eos: true, ..Default::default() };

    // A short request alone.
    let mut idle = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let (_, rx) = engine.submit_tokens(prompt(args.short), None, one.clone())?;
        let t = Instant::now();
        while !has_token(&rx) {
            if engine.is_idle() {
                bail!("the idle request ended without a token");
            }
            engine.step()?;
        }
        idle.push(ms(t.elapsed()));
        engine.run_until_idle()?;
    }
    let idle_ttft = median(&mut idle);

    // The long prompt, with short requests arriving during its prefill.
    let (_, long_rx) = engine.submit_tokens(prompt(args.long), None, one.clone())?;
    let start = Instant::now();
    let mut arrivals: Vec<Duration> =
        (1..=args.shorts).map(|k| Duration::from_secs_f64(args.every * k as f64)).collect();
    arrivals.reverse();
    let mut shorts: Vec<(Duration, Receiver<StreamEvent>, Option<Duration>)> = Vec::new();
    // Steps with the long prompt's chunk in them: (tokens in the step, seconds).
    let mut long_steps: Vec<(usize, f64)> = Vec::new();
    let mut long_first_token = None;
    while !engine.is_idle() {
        let t = Instant::now();
        let report = engine.step()?;
        let secs = t.elapsed().as_secs_f64();
        let now = start.elapsed();
        if long_first_token.is_none() {
            long_steps.push((report.tokens, secs));
            if has_token(&long_rx) {
                long_first_token = Some(now);
            }
        }
        for (_, rx, first) in shorts.iter_mut().filter(|s| s.2.is_none()) {
            if has_token(rx) {
                *first = Some(now);
            }
        }
        // Requests that arrived during this step join now, as on the engine thread.
        while arrivals.last().is_some_and(|&a| a <= now) && long_first_token.is_none() {
            if let Some(at) = arrivals.pop() {
                let (_, rx) = engine.submit_tokens(prompt(args.short), None, one.clone())?;
                shorts.push((at, rx, None));
            }
        }
    }
    let Some(long_done) = long_first_token else { bail!("the long prompt gave no token") };
    let mut beside = Vec::new();
    for (at, _, first) in &shorts {
        let Some(first) = first else { bail!("a short request gave no token") };
        beside.push(first.saturating_sub(*at));
    }
    // The long prompt's chunk steps: those before its last (which may be a partial chunk).
    let chunk_secs: Vec<f64> = long_steps.iter().map(|&(_, s)| s).collect();
    let chunk_max = chunk_secs.iter().copied().fold(0.0, f64::max);
    let chunk_mean = chunk_secs.iter().sum::<f64>() / chunk_secs.len().max(1) as f64;
    let worst = beside.iter().max().copied().unwrap_or_default();
    let target = 2.0 * idle_ttft * 1e-3 + chunk_max;
    println!(
        "{{\"measure\":\"ttft\",\"long\":{},\"short\":{},\"max_batch_tokens\":{},\"max_prefill_chunk\":{},\"threads\":{},\"idle_ttft_ms\":{:.1},\"long_prefill_s\":{:.2},\"long_steps\":{},\"chunk_step_ms_mean\":{:.1},\"chunk_step_ms_max\":{:.1},\"ttft_beside_ms\":{:?},\"ttft_beside_ms_max\":{:.1},\"target_ms\":{:.1},\"within_target\":{}}}",
        args.long,
        args.short,
        args.max_batch_tokens,
        args.max_prefill_chunk,
        args.threads,
        idle_ttft,
        long_done.as_secs_f64(),
        long_steps.len(),
        chunk_mean * 1e3,
        chunk_max * 1e3,
        beside.iter().map(|d| (ms(*d) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        ms(worst),
        target * 1e3,
        worst.as_secs_f64() <= target,
    );
    Ok(())
}

/// Whether a token has arrived (events stay queued for a later call only up to the first).
fn has_token(rx: &Receiver<StreamEvent>) -> bool {
    rx.try_iter().any(|e| matches!(e, StreamEvent::Token { .. }))
}
