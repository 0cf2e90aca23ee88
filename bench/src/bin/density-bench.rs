//! Adapter density (issue 21 item 5, `docs/benchmarks.md` "Adapter density"): thousands of
//! rank-16 adapters registered with one engine, far fewer compute slots on the device, and
//! a closed loop of requests whose adapters are drawn uniformly or by a Zipf law across
//! them, against the same load over 32 adapters that stay installed.
//!
//! The model is Llama-3-8B's shape with random bf16 weights on a CUDA device (a build with
//! `--features cuda`; `--cpu-dry-run`: f32 on the CPU, for tiny shapes, in any build). `--files` random q/k/v/o adapter files are written and registered
//! under `--adapters` names, name `i` from file `i % files`: every name is parsed, held in
//! host memory, installed in a slot and copied to the device on its own (the cache keys
//! adapters by name, not by content), so the work is that of distinct adapters while the
//! disk holds only `--files` of them.
//!
//! Each load keeps `--running` requests in flight (a finished one is replaced by a new one
//! at once) until `--requests` have been submitted; `--warmup` requests of the same load
//! run first, unmeasured. Prints one JSON object per load and round:
//! - `tok_per_s`: tokens streamed per second while the loop was full (from the step that
//!   gave every first request its first token to the submission of the last request);
//! - `ttft_ms`: submit to first token of every request submitted inside the loop (the
//!   first burst excluded), p50 / p90 / p99 / max;
//! - `adapters_used`: distinct adapters the measured requests named;
//!
//! and a summary comparing each load with `warm32` (throughput ratio, p99 first-token ratio).

use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use openledger_bench::harness::{median, peak_rss_mib, percentile};
use openledger_bench::shapes::LlamaShape;
use openledger_engine::{
    write_random_adapter, AdapterCacheConfig, Engine, EngineConfig, KvCacheConfig, LoraAdapter,
    Model, Projection, SamplingParams, StreamEvent,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Adapter density: many adapters, few slots, uniform and Zipf request loads")]
struct Args {
    #[command(flatten)]
    shape: LlamaShape,
    /// Adapters registered.
    #[arg(long, default_value_t = 2000)]
    adapters: usize,
    /// Distinct adapter files written (name i is registered from file i % files).
    #[arg(long, default_value_t = 16)]
    files: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Compute slots (adapters installed on the device at once).
    #[arg(long, default_value_t = 128)]
    slots: usize,
    /// Adapters the host tier holds, parsed; the others are read from disk again when a
    /// request needs them (default: every adapter).
    #[arg(long)]
    host_adapters: Option<usize>,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    running: usize,
    /// Hold a request whose adapter is still being copied to the GPU back until the copy
    /// has ended, instead of admitting it at once, the step waiting on the copy (the
    /// engine's default, `AdapterCacheConfig::admit_while_copying`).
    #[arg(long)]
    hold_while_copying: bool,
    /// Copy each adapter to the GPU in this many runs of consecutive layers, the first
    /// step reading it waiting for each run only before its first layer
    /// (`AdapterCacheConfig::copy_runs`; 1: one copy, waited for before the step).
    #[arg(long, default_value_t = AdapterCacheConfig::default().copy_runs)]
    copy_runs: usize,
    /// Requests per measured load.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Unmeasured requests of the same load before each measured one.
    #[arg(long, default_value_t = 128)]
    warmup: usize,
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    #[arg(long, default_value_t = 32)]
    generate: usize,
    /// Loads, in this order each round: `warm32` (uniform over 32 adapters), `uniform`
    /// (uniform over all), `zipf` (Zipf over all, exponent `--zipf-s`).
    #[arg(long, value_delimiter = ',', default_value = "warm32,uniform,zipf")]
    loads: Vec<String>,
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Rounds of every load.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Serve without activation commitments.
    #[arg(long)]
    no_commit: bool,
    /// Serve without decode steps launched ahead of the previous step's read
    /// (`EngineConfig::overlap_decode`, on here unless this flag).
    #[arg(long)]
    no_overlap: bool,
    /// Run on the CPU in f32 (a check of the benchmark's logic; use tiny shapes).
    #[arg(long)]
    cpu_dry_run: bool,
}

/// How a load picks each request's adapter (an index into the registered names).
enum Pick {
    Uniform(usize),
    /// Cumulative weights of ranks 1..=n (rank r weighted 1 / r^s), and the adapter each
    /// rank names (a random permutation, so popularity is unrelated to registration order).
    Zipf {
        cumulative: Vec<f64>,
        adapter_of_rank: Vec<usize>,
    },
}

impl Pick {
    fn new(load: &str, n: usize, s: f64, rng: &mut StdRng) -> Result<Self> {
        Ok(match load {
            "warm32" => Self::Uniform(n.min(32)),
            "uniform" => Self::Uniform(n),
            "zipf" => {
                let mut total = 0.0;
                let cumulative = (1..=n)
                    .map(|r| {
                        total += (r as f64).powf(-s);
                        total
                    })
                    .collect();
                let mut adapter_of_rank: Vec<usize> = (0..n).collect();
                adapter_of_rank.shuffle(rng);
                Self::Zipf { cumulative, adapter_of_rank }
            },
            other => bail!("unknown load {other:?} (expected warm32, uniform or zipf)"),
        })
    }

    fn draw(&self, rng: &mut StdRng) -> usize {
        match self {
            Self::Uniform(n) => rng.random_range(0..*n),
            Self::Zipf { cumulative, adapter_of_rank } => {
                let total = cumulative.last().copied().unwrap_or(0.0);
                let u = rng.random::<f64>() * total;
                let rank = cumulative.partition_point(|&c| c <= u).min(adapter_of_rank.len() - 1);
                adapter_of_rank[rank]
            },
        }
    }
}

/// One request in flight.
struct Live {
    rx: Receiver<StreamEvent>,
    submitted: Instant,
    /// Submitted inside the loop (not in the first burst): its first token is measured.
    measured: bool,
    first_seen: bool,
}

struct LoadResult {
    tok_per_s: f64,
    ttft_ms: Vec<f64>,
    adapters_used: usize,
    steps: usize,
    median_step_ms: f64,
    /// Mean and 99th percentile of the step times, and the mean of the queue's length after
    /// each step (requests submitted but not yet admitted).
    mean_step_ms: f64,
    p99_step_ms: f64,
    mean_waiting: f64,
}

/// Runs `requests` requests of `pick`'s load through `engine`, `running` at a time.
fn run_load(
    engine: &mut Engine,
    names: &[String],
    pick: &Pick,
    args: &Args,
    requests: usize,
    rng: &mut StdRng,
) -> Result<LoadResult> {
    let vocab = engine.model().config().vocab_size as u32;
    let params =
        SamplingParams { max_tokens: args.generate, ignore_eos: true, ..Default::default() };
    let mut used = std::collections::HashSet::new();
    let mut submit = |engine: &mut Engine, measured: bool, rng: &mut StdRng| -> Result<Live> {
        let a = pick.draw(rng);
        used.insert(a);
        let prompt: Vec<u32> =
            (0..args.prompt).map(|_| rng.random_range(100.min(vocab - 1)..vocab)).collect();
        let (_, rx) = engine.submit_tokens(prompt, Some(names[a].clone()), params.clone())?;
        Ok(Live { rx, submitted: Instant::now(), measured, first_seen: false })
    };
    let burst = args.running.min(requests);
    let mut live = Vec::with_capacity(burst);
    for _ in 0..burst {
        live.push(submit(engine, false, rng)?);
    }
    let mut submitted = burst;
    // The first burst's requests that have streamed a token (finished ones included): the
    // loop is full from the step in which the last of them does.
    let mut burst_started = 0usize;
    let (mut tokens, mut window_start, mut window_end) = (0usize, None, None);
    let (mut ttft_ms, mut step_ms, mut steps) = (Vec::new(), Vec::new(), 0usize);
    let mut waiting = 0usize;
    while !live.is_empty() {
        let t = Instant::now();
        waiting += engine.step()?.waiting;
        let now = Instant::now();
        step_ms.push((now - t).as_secs_f64() * 1e3);
        steps += 1;
        let mut finished = 0;
        let mut i = 0;
        while i < live.len() {
            let mut done = false;
            let l = &mut live[i];
            let events: Vec<StreamEvent> = l.rx.try_iter().collect();
            for event in events {
                match event {
                    StreamEvent::Token { .. } => {
                        tokens += 1;
                        if !l.first_seen {
                            l.first_seen = true;
                            if l.measured {
                                ttft_ms.push((now - l.submitted).as_secs_f64() * 1e3);
                            } else {
                                burst_started += 1;
                            }
                        }
                    },
                    StreamEvent::Finished { .. } => done = true,
                    StreamEvent::Failed(m) => bail!("a request failed: {m}"),
                    StreamEvent::Verified(_) => bail!("a verification report for a generation"),
                }
            }
            if done {
                live.swap_remove(i);
                finished += 1;
            } else {
                i += 1;
            }
        }
        // Not "every live request has its first token": under Zipf churn a hot adapter's
        // request can finish, and be replaced, before a cold one's first token, so that
        // moment may never come.
        if window_start.is_none() && burst_started == burst {
            window_start = Some((now, tokens));
        }
        for _ in 0..finished {
            if submitted < requests {
                live.push(submit(engine, true, rng)?);
                submitted += 1;
                if submitted == requests {
                    window_end = Some((Instant::now(), tokens));
                }
            }
        }
        if live.is_empty() && !engine.is_idle() {
            bail!("every request finished but the engine is not idle");
        }
    }
    let tok_per_s = match (window_start, window_end) {
        (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        _ => 0.0,
    };
    ttft_ms.sort_by(f64::total_cmp);
    let mean_step_ms = step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64;
    let median_step_ms = median(&mut step_ms);
    step_ms.sort_by(f64::total_cmp);
    Ok(LoadResult {
        tok_per_s,
        ttft_ms,
        adapters_used: used.len(),
        steps,
        median_step_ms,
        mean_step_ms,
        p99_step_ms: percentile(&step_ms, 99.0),
        mean_waiting: waiting as f64 / steps.max(1) as f64,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.adapters == 0 || args.files == 0 || args.running == 0 {
        bail!("--adapters, --files and --running must be at least 1");
    }
    let (device, dtype) = if args.cpu_dry_run {
        (Device::Cpu, DType::F32)
    } else {
        (
            Device::new_cuda(0).context("no CUDA device (--cpu-dry-run runs on the CPU)")?,
            DType::BF16,
        )
    };
    let name = match &device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().name().unwrap_or_default(),
        _ => "cpu".to_string(),
    };
    println!("{{\"measure\":\"device\",\"name\":\"{name}\"}}");
    let cfg = args.shape.config();
    let t = Instant::now();
    let model = Model::random_tensors(cfg.clone(), &device, dtype, 7)?;
    device.synchronize()?;
    println!("{{\"measure\":\"model\",\"generated_s\":{:.1}}}", t.elapsed().as_secs_f64());

    let dir = tempfile::tempdir()?;
    let qkvo = [Projection::Q, Projection::K, Projection::V, Projection::O];
    let files: Vec<_> = (0..args.files).map(|f| dir.path().join(format!("f{f}"))).collect();
    for (f, path) in files.iter().enumerate() {
        write_random_adapter(path, &cfg, args.rank, &qkvo, 100 + f as u64)?;
    }
    let adapter_bytes = LoraAdapter::load(&files[0], &cfg, &Device::Cpu)?.weight_bytes();
    let host_adapters = args.host_adapters.unwrap_or(args.adapters);
    let config = EngineConfig {
        kv_cache: KvCacheConfig {
            block_size: 16,
            num_blocks: args.running * (args.prompt + args.generate + 16).div_ceil(16) + 64,
        },
        adapters: AdapterCacheConfig {
            compute_slots: args.slots,
            compute_bytes: args.slots * adapter_bytes,
            // A parsed adapter holds its weights and a little alignment padding.
            host_bytes: host_adapters * (adapter_bytes + adapter_bytes / 100),
            admit_while_copying: !args.hold_while_copying,
            copy_runs: args.copy_runs,
        },
        max_batch_tokens: args.prompt.max(512),
        max_prefill_chunk: 0,
        max_running: args.running,
        threads: 2,
        commit_activations: !args.no_commit,
        overlap_decode: (!args.cpu_dry_run).then_some(!args.no_overlap),
    };
    let tokenizer = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    let mut engine = Engine::new(model, tokenizer, config)?;
    let names: Vec<String> = (0..args.adapters).map(|i| format!("a{i}")).collect();
    let t = Instant::now();
    for (i, n) in names.iter().enumerate() {
        engine.register_adapter(n, &files[i % files.len()])?;
    }
    let register_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"measure\":\"registered\",\"adapters\":{},\"files\":{},\"adapter_mib\":{:.1},\"host_adapters\":{host_adapters},\"slots\":{},\"seconds\":{register_s:.1},\"ms_per_adapter\":{:.2},\"peak_rss_mib\":{:.0}}}",
        args.adapters,
        args.files,
        adapter_bytes as f64 / (1 << 20) as f64,
        args.slots,
        register_s * 1e3 / args.adapters as f64,
        peak_rss_mib()
    );

    let mut rng = StdRng::seed_from_u64(11);
    let mut results: Vec<(String, LoadResult)> = Vec::new();
    for round in 0..args.rounds {
        for load in &args.loads {
            let pick = Pick::new(load, args.adapters, args.zipf_s, &mut rng)?;
            run_load(&mut engine, &names, &pick, &args, args.warmup, &mut rng)?;
            let r = run_load(&mut engine, &names, &pick, &args, args.requests, &mut rng)?;
            let p = |q| percentile(&r.ttft_ms, q);
            println!(
                "{{\"measure\":\"load\",\"load\":\"{load}\",\"round\":{round},\"adapters\":{},\"slots\":{},\"running\":{},\"requests\":{},\"prompt\":{},\"generate\":{},\"commit\":{},\"tok_per_s\":{:.1},\"ttft_ms\":{{\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"max\":{:.2},\"n\":{}}},\"adapters_used\":{},\"steps\":{},\"median_step_ms\":{:.3},\"mean_step_ms\":{:.3},\"p99_step_ms\":{:.3},\"mean_waiting\":{:.2},\"admit_while_copying\":{},\"copy_runs\":{}}}",
                if load == "warm32" { args.adapters.min(32) } else { args.adapters },
                args.slots,
                args.running,
                args.requests,
                args.prompt,
                args.generate,
                !args.no_commit,
                r.tok_per_s,
                p(50.0),
                p(90.0),
                p(99.0),
                p(100.0),
                r.ttft_ms.len(),
                r.adapters_used,
                r.steps,
                r.median_step_ms,
                r.mean_step_ms,
                r.p99_step_ms,
                r.mean_waiting,
                !args.hold_while_copying,
                args.copy_runs,
            );
            results.push((load.clone(), r));
        }
    }
    // Medians over rounds, each load against warm32.
    let summary = |load: &str| -> Option<(f64, f64)> {
        let mut rate: Vec<f64> =
            results.iter().filter(|(l, _)| l == load).map(|(_, r)| r.tok_per_s).collect();
        let mut p99: Vec<f64> = results
            .iter()
            .filter(|(l, _)| l == load)
            .map(|(_, r)| percentile(&r.ttft_ms, 99.0))
            .collect();
        (!rate.is_empty()).then(|| (median(&mut rate), median(&mut p99)))
    };
    println!("| load | adapters | tok/s (median of rounds) | vs warm32 | p99 first token ms | vs warm32 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let warm = summary("warm32");
    for load in &args.loads {
        let Some((rate, p99)) = summary(load) else { continue };
        let (vr, vp) = match warm {
            Some((wr, wp)) => (format!("{:.3}x", rate / wr), format!("{:.2}x", p99 / wp)),
            None => ("-".into(), "-".into()),
        };
        let n = if load == "warm32" { args.adapters.min(32) } else { args.adapters };
        println!("| {load} | {n} | {rate:.1} | {vr} | {p99:.2} | {vp} |");
    }
    Ok(())
}
